"""The OpenCV camera node, run as a real node process against real video data paths: an MJPG
file written by ``cv2.VideoWriter`` and an MJPEG stream served over HTTP by a local server."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zmq

from edgefuse.config import build
from edgefuse.envelope import Header
from edgefuse.errors import ConfigError
from edgefuse.node import NodeSpec
from edgefuse.sensors.camera import (
    CameraParams,
    Capture,
    SourceKind,
    classify_source,
    grab_together,
)
from edgefuse.transport import Subscriber, TransportOptions
from tests.conftest import REPO
from tests.mjpeg import MjpegServer

W, H = 160, 120
BITS = 12
CELL = 10  # bit cells of 10x10 px: far larger than an 8x8 JPEG block, so they survive coding


def make_frame(k: int) -> np.ndarray:
    """Frame ``k``: a gradient that moves with k, and k written as 12 black/white cells."""
    x = np.arange(W, dtype=np.int32)
    y = np.arange(H, dtype=np.int32)[:, None]
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = (x + 3 * k) % 256
    img[..., 1] = (y * 2) % 256
    img[..., 2] = 128
    for b in range(BITS):
        img[H - CELL :, b * CELL : (b + 1) * CELL] = 255 if (k >> b) & 1 else 0
    return img


def read_number(img: np.ndarray) -> int:
    """The frame number encoded by :func:`make_frame` (cell centres, thresholded)."""
    k = 0
    for b in range(BITS):
        v = img[H - CELL // 2, b * CELL + CELL // 2].mean()
        k |= int(v > 128) << b
    return k


def write_video(path: Path, n: int, fps: float = 20.0) -> None:
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (W, H))
    assert vw.isOpened()
    for k in range(n):
        vw.write(make_frame(k))
    vw.release()


class NodeProcess:
    """A real node process (``python -m edgefuse.node``) with a subscriber on its outputs and a
    control socket receiving its statistics, as the launcher would run it."""

    def __init__(
        self,
        tmp: Path,
        node_type: str,
        params: dict[str, Any],
        topics: list[str],
        *,
        name: str = "cam",
        env: dict[str, str] | None = None,
        queue_depth: int = 64,
    ) -> None:
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.control = self.ctx.socket(zmq.PULL)
        self.control.bind(f"ipc://{tmp}/{name}.ctl")
        run_id = f"t{os.getpid()}{name}"
        endpoint = f"ipc://{tmp}/{name}.sock"
        self.sub = Subscriber(
            endpoint,
            [f"{name}/{t}" for t in topics],
            options=TransportOptions(queue_depth=queue_depth, run_id=run_id),
            copy=True,
            context=self.ctx,
        )
        spec = NodeSpec(
            name=name,
            type=node_type,
            params=params,
            endpoint=endpoint,
            control=f"ipc://{tmp}/{name}.ctl",
            run_id=run_id,
            queue_depth=queue_depth,
            stats_period_s=0.1,
            parent_pid=os.getpid(),
        )
        self.log_path = tmp / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefuse.node"],
            cwd=REPO,
            env={**os.environ, **(env or {}), "EDGEFUSE_NODE_SPEC": spec.to_json()},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.last_stats: dict[str, Any] = {}
        self._join(endpoint)

    def _join(self, endpoint: str) -> None:
        # The subscriber's reconnection back-off grows while the node process imports; once
        # the node reports (its publisher is bound), reconnect at once so that only the first
        # few messages can be missed.
        if self._ready():
            self.last_stats = dict(self.control.recv_json())  # type: ignore[arg-type]
            self.sub.socket.disconnect(endpoint)
            self.sub.socket.connect(endpoint)

    def _ready(self) -> bool:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.control.poll(100):
                return True
        return False

    def recv(self, timeout_s: float) -> tuple[Header, np.ndarray] | None:
        msg = self.sub.recv(timeout_ms=round(timeout_s * 1000))
        if msg is None:
            return None
        return msg.header, np.array(msg.arrays[0])

    def counters(self) -> dict[str, Any]:
        while self.control.poll(0):
            self.last_stats = dict(self.control.recv_json())  # type: ignore[arg-type]
        return dict(self.last_stats.get("counters", {}))

    def wait_for(self, pred: Any, timeout_s: float) -> dict[str, Any]:
        """Poll the node's counters until ``pred(counters)`` holds; return them."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            c = self.counters()
            if c and pred(c):
                return c
            time.sleep(0.05)
        raise AssertionError(f"timed out; counters {self.counters()}; log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.counters()
        self.sub.close()
        self.control.close(linger=0)
        self.ctx.term()
        self._log.close()
        return code


@contextlib.contextmanager
def camera(tmp: Path, **params: Any) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp, "edgefuse.sensors.camera:CameraNode", params, ["image"])
    try:
        yield node
    finally:
        node.close()


def test_params_and_source_kinds() -> None:
    assert classify_source(0) is SourceKind.DEVICE
    assert classify_source("/dev/video2") is SourceKind.DEVICE
    assert classify_source("rtsp://cam/stream") is SourceKind.STREAM
    assert classify_source("http://host:8080/video.mjpg") is SourceKind.STREAM
    assert classify_source("v4l2src ! videoconvert ! appsink") is SourceKind.GSTREAMER
    assert classify_source("clips/a.avi") is SourceKind.FILE
    with pytest.raises(ConfigError, match="width and height"):
        build(CameraParams, {"width": 640})
    with pytest.raises(ConfigError, match="fourcc"):
        build(CameraParams, {"fourcc": "H264"})
    with pytest.raises(ConfigError, match="file_rate"):
        build(CameraParams, {"file_rate": "fast"})
    assert build(CameraParams, {"source": "/dev/video1", "fourcc": "MJPG"}).fourcc == "MJPG"


def test_capture_reads_file_stamps_and_grabs_together(tmp_path: Path) -> None:
    """The capture layer alone: presentation stamps from the file, decoded into a reused buffer,
    and two captures grabbed back to back before either is decoded."""
    path = tmp_path / "a.avi"
    write_video(path, 5, fps=25.0)
    a, b = (Capture(CameraParams(source=str(path))) for _ in range(2))
    assert "160x120" in a.open() and b.open()
    buf = np.zeros((H, W, 3), np.uint8)
    for k in range(5):
        t0 = time.monotonic_ns()
        assert grab_together([a, b]) == [True, True]
        assert t0 <= a.t_host_ns <= b.t_host_ns
        assert a.pos_ms == pytest.approx(40.0 * k)  # 25 fps: 40 ms apart
        img = a.retrieve(buf)
        assert img is not None and np.shares_memory(img, buf)  # no allocation per frame
        img_b = b.retrieve()
        assert img_b is not None and read_number(img) == k and read_number(img_b) == k
    assert not a.grab()
    a.release()
    b.release()


def check_frames(frames: list[tuple[Header, np.ndarray]], period_ns: int) -> None:
    """Content, order and stamps of consecutive frames of the test video."""
    for (h0, _), (h1, _) in itertools.pairwise(frames):
        assert h1.seq == h0.seq + 1
        assert h1.t_sensor_ns - h0.t_sensor_ns == pytest.approx(period_ns, abs=1000)
        assert h1.t_host_ns > h0.t_host_ns
    for h, img in frames:
        k = int(h.meta["index"])
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        assert h.encoding == "bgr8" and h.frame_id == "camera_optical"
        assert h.meta["t_sensor_source"] == "driver"
        assert read_number(img) == k
        diff = np.abs(img.astype(np.int16) - make_frame(k).astype(np.int16))
        assert diff.mean() < 4 and np.percentile(diff, 99) < 40  # JPEG, not another frame


def test_file_native_rate_every_frame_in_order_then_stops(tmp_path: Path, no_leaks: None) -> None:
    path = tmp_path / "clip.avi"
    n, fps = 24, 20.0
    write_video(path, n, fps)
    with camera(tmp_path, source=str(path)) as node:
        frames = []
        while (m := node.recv(3.0)) is not None:
            frames.append(m)
            if int(m[0].meta["index"]) == n - 1:
                break
        code = node.proc.wait(timeout=5)
        counters = node.counters()
        published = node.last_stats["published"]["cam/image"]["messages"]
    assert code == 0, node.log()  # the node stops by itself at the end of the file
    assert counters["frames"] == n and published == n and counters["read_errors"] == 0
    assert f"end of file after {n} frames" in node.log()
    idx = [int(h.meta["index"]) for h, _ in frames]
    # Every frame was published; the subscriber may join a few late, from then on it gets all.
    assert idx[0] <= 6 and idx == list(range(idx[0], n))
    check_frames(frames, round(1e9 / fps))
    assert all(h.t_sensor_ns == round(int(h.meta["index"]) * 1e9 / fps) for h, _ in frames)
    # Native rate: host arrival follows the file's clock (never ahead of it; at "max" the 24
    # frames take milliseconds). Only a loose upper bound: a loaded machine delays frames.
    span_host = frames[-1][0].t_host_ns - frames[0][0].t_host_ns
    span_file = frames[-1][0].t_sensor_ns - frames[0][0].t_sensor_ns
    assert 0.5 * span_file <= span_host <= span_file + 1.5e9


def test_file_loop_at_max_rate_keeps_stamps_increasing(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    n = 10
    write_video(path, n, 20.0)
    with camera(tmp_path, source=str(path), file_rate="max", loop=True) as node:
        frames = [m for _ in range(3 * n) if (m := node.recv(3.0)) is not None]
        node.wait_for(lambda c: c["loops"] >= 2, 5.0)
    assert len(frames) == 3 * n
    idx = [int(h.meta["index"]) for h, _ in frames]
    assert idx == [(idx[0] + i) % n for i in range(3 * n)]  # every frame, lap after lap
    check_frames(frames, 50_000_000)  # lap boundaries included: one period apart
    host_span_s = (frames[-1][0].t_host_ns - frames[0][0].t_host_ns) / 1e9
    assert host_span_s < 1.0  # 'max': much faster than the 1.5 s the file lasts


def test_missing_device_is_named_and_retried(tmp_path: Path) -> None:
    with camera(tmp_path, source="/dev/video97", reconnect_max_s=0.5) as node:
        c = node.wait_for(lambda c: c["open_failures"] >= 3, 8.0)
        assert node.proc.poll() is None  # still running, still trying
    assert c["connected"] == 0 and c["frames"] == 0
    log = node.log()
    assert "/dev/video97: waiting (cannot open: no such device /dev/video97" in log
    assert log.count("waiting") == 1  # one line per state change, not one per attempt


def test_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with camera(tmp_path, source=str(tmp_path / "nope.avi")) as node:
        code = node.proc.wait(timeout=10)
    assert code == 78, node.log()
    assert "video file" in node.log() and "nope.avi' not found" in node.log()


def test_file_unreadable_mid_run_is_reported_and_resumed(tmp_path: Path) -> None:
    """The file is truncated to nothing mid-run, then restored: the node reports the read
    error, keeps trying, and resumes at the frame after the last one it published."""
    path = tmp_path / "clip.avi"
    backup = tmp_path / "backup.avi"
    n, fps = 40, 20.0
    write_video(path, n, fps)
    shutil.copy(path, backup)
    with camera(tmp_path, source=str(path), reconnect_max_s=0.25) as node:
        frames = []
        while (m := node.recv(3.0)) is not None:
            frames.append(m)
            if int(m[0].meta["index"]) == 15:
                path.write_bytes(b"")  # the file vanishes under the reader
                node.wait_for(lambda c: c["read_errors"] >= 1 and c["open_failures"] >= 1, 5.0)
                shutil.copy(backup, path)
            if int(m[0].meta["index"]) == n - 1:
                break
        code = node.proc.wait(timeout=5)
        counters = node.counters()
    assert code == 0, node.log()
    log = node.log()
    assert f"{path}: reconnecting (read error at frame" in log
    assert counters["open_failures"] >= 1 and counters["reconnects"] == 1
    assert log.count("reconnecting") == 1 and log.count("streaming") == 2
    idx = [int(h.meta["index"]) for h, _ in frames]
    # FFmpeg reads ahead, so a few frames past 15 may come from its buffer before the error;
    # whatever arrived is in order, with the right content, and resumes to the last frame.
    assert idx == sorted(set(idx)) and idx[-1] == n - 1
    assert len(idx) >= n - 10 and 15 in idx
    # The packet read as the file was cut may decode partially: FFmpeg conceals the error and
    # OpenCV cannot tell, so the bottom of that one frame can be stale. Every other is exact.
    cut = int(log.split("read error at frame ")[1].split()[0])
    for h, img in frames:
        if int(h.meta["index"]) != cut - 1:
            assert read_number(img) == int(h.meta["index"])
        assert h.t_sensor_ns == round(int(h.meta["index"]) * 1e9 / fps)
    seqs = [h.seq for h, _ in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no frame published twice


def test_mjpeg_over_http_with_reconnect(tmp_path: Path, no_leaks: None) -> None:
    """OpenCV's FFmpeg backend reads multipart MJPEG over HTTP; when the stream ends the node
    reconnects with back-off and the frames of the next connection come through."""
    server = MjpegServer([make_frame(k) for k in range(15)], fps=30.0)
    try:
        with camera(tmp_path, source=server.url, reconnect_max_s=0.25) as node:
            frames: list[tuple[Header, np.ndarray]] = []
            deadline = time.monotonic() + 8.0
            while (time.monotonic() < deadline and server.connections < 2) or len(frames) < 20:
                m = node.recv(3.0)
                assert m is not None, node.log()
                frames.append(m)
            c = node.wait_for(lambda c: c["reconnects"] >= 1, 5.0)
    finally:
        server.close()
    assert c["read_errors"] >= 1
    assert "reconnecting (no frame from the source" in node.log()
    numbers = [read_number(img) for _, img in frames]
    # Each connection replays 0..14: in order within a connection, restarting after a drop.
    restarts = [i for i in range(1, len(numbers)) if numbers[i] < numbers[i - 1]]
    assert len(restarts) >= 1
    for a, b in zip([0, *restarts], [*restarts, len(numbers)], strict=True):
        run = numbers[a:b]
        assert run == sorted(set(run))
    for h, img in frames:
        assert h.meta["t_sensor_source"] == "host"  # MJPEG over HTTP has no sensor stamps
        assert h.t_sensor_ns == h.t_host_ns
        assert np.abs(img.astype(np.int16) - make_frame(read_number(img))).mean() < 4
    assert json.dumps(c)  # counters are plain numbers


def test_bench_camera_publish_delivers_every_frame() -> None:
    from edgefuse.bench.sensors_capture import bench_camera_publish

    r = bench_camera_publish(width=320, height=240, fps=200.0, seconds=0.1)
    assert r["frames"] == 20 and r["received"] == 20 and r["corrupt"] == 0
    assert r["publish_ms"]["p50"] > 0 and r["grab_decode_mjpeg_ms"]["p50"] > 0
