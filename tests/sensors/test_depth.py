"""The depth node on real data paths: TUM-style PNG sequences, librealsense recordings played
back through pyrealsense2, and the RealSense retry loop with no device attached.

Each node runs in its own process (``python -m edgefuse.node``), as the launcher starts it; the
test subscribes to its topic over the real transport.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edgefuse.envelope import Message
from edgefuse.errors import ConfigError
from edgefuse.node import EXIT_CONFIG, NodeSpec
from edgefuse.sensors.depth import DepthParams
from edgefuse.sensors.tum import (
    TUM_DEPTH_FACTOR,
    DepthFrameError,
    load_depth_png,
    parse_stamp_ns,
    read_list,
)
from edgefuse.transport import Subscriber
from tests.conftest import REPO, SHARED_DATA

FR1XYZ_DEPTH = SHARED_DATA / "tum-fr1xyz" / "depth.txt"


# --- helpers ----------------------------------------------------------------------------------
def fr1xyz_lines(n: int) -> list[tuple[str, str]]:
    """The first ``n`` (stamp text, relative path) entries of the real fr1/xyz depth list."""
    out = []
    for line in FR1XYZ_DEPTH.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        stamp, rel = line.split()[:2]
        out.append((stamp, rel))
        if len(out) == n:
            break
    return out


def write_sequence(root: Path, n: int, *, w: int = 32, h: int = 24) -> list[np.ndarray]:
    """A TUM-style sequence in ``root``: the real fr1/xyz stamps and file names, synthetic
    16-bit PNGs (a ramp with holes, values across the whole uint16 range)."""
    entries = fr1xyz_lines(n)
    (root / "depth").mkdir(parents=True)
    images = []
    rng = np.random.default_rng(5)
    with open(root / "depth.txt", "w") as f:
        f.write("# depth maps\n# file: synthetic, stamps of rgbd_dataset_freiburg1_xyz\n")
        f.write("# timestamp filename\n")
        for i, (stamp, rel) in enumerate(entries):
            img = rng.integers(0, 65536, size=(h, w), dtype=np.uint16)
            img[0, :] = 0  # no return
            img[1, 0] = 65535
            img[1, 1] = 5000 + i  # 1 m and a bit
            assert cv2.imwrite(str(root / rel), img)
            images.append(img)
            f.write(f"{stamp} {rel}\n")
    return images


@dataclass
class NodeProc:
    """A depth node running in its own process, and a subscriber to its topic."""

    proc: subprocess.Popen[str]
    sub: Subscriber

    def collect(self, until_exit_s: float = 10.0, idle_s: float | None = None) -> list[Message]:
        """Receive until the node exits (or ``idle_s`` without a message), at most
        ``until_exit_s``."""
        out: list[Message] = []
        deadline = time.monotonic() + until_exit_s
        last = time.monotonic()
        while time.monotonic() < deadline:
            msg = self.sub.recv(timeout_ms=50)
            if msg is not None:
                # Own the arrays: shared-memory slots are reused.
                out.append(Message(msg.topic, msg.header, [a.copy() for a in msg.arrays]))
                last = time.monotonic()
                continue
            if self.proc.poll() is not None:
                break
            if idle_s is not None and time.monotonic() - last > idle_s:
                break
        return out

    def stop(self) -> tuple[int, str]:
        """SIGTERM the node; its exit code and its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        self.sub.close()
        return self.proc.returncode, err


@pytest.fixture
def depth_node(tmp_path: Path) -> Iterator[Any]:
    """Start ``DepthNode`` processes with given params; stop them all at the end."""
    started: list[NodeProc] = []

    def start(params: dict[str, Any], name: str = "depth") -> NodeProc:
        endpoint = f"ipc://{tmp_path}/{name}.pub"
        spec = NodeSpec(
            name=name,
            type="edgefuse.sensors.depth:DepthNode",
            params=params,
            endpoint=endpoint,
            run_id=f"deptht{os.getpid()}",
            parent_pid=os.getpid(),
        )
        sub = Subscriber(endpoint, [f"{name}/image"])
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgefuse.node"],
            cwd=REPO,
            env={**os.environ, "EDGEFUSE_NODE_SPEC": spec.to_json()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        p = NodeProc(proc, sub)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.returncode is None:
            p.stop()


# --- TUM files --------------------------------------------------------------------------------
def test_stamps_parse_exactly_from_the_real_fr1xyz_list() -> None:
    entries = read_list(FR1XYZ_DEPTH)
    assert len(entries) > 700
    first = entries[0]
    stamp_text = fr1xyz_lines(1)[0][0]
    whole, frac = stamp_text.split(".")
    assert first.t_sensor_ns == int(whole) * 10**9 + int(frac.ljust(9, "0"))
    assert first.path.parent.name == "depth" and first.line == 4  # three comment lines
    assert np.all(np.diff([e.t_sensor_ns for e in entries]) > 0)
    # ~30 Hz, as the dataset says.
    d = np.diff([e.t_sensor_ns for e in entries])
    assert 25e6 < np.median(d) < 40e6
    assert parse_stamp_ns("1305031102.160407") == 1305031102_160407000
    assert parse_stamp_ns("7") == 7_000_000_000
    for bad in ("", "-1.0", "1e9", "12.3.4", "1.0123456789", "abc"):
        with pytest.raises(ValueError, match="not a stamp"):
            parse_stamp_ns(bad)


def test_list_and_png_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "depth.txt"
    bad.write_text("# header\n1305031102.160407 depth/a.png\n1305031102.19 \n")
    with pytest.raises(ConfigError, match=r"depth.txt:3: expected 'stamp path'"):
        read_list(bad)
    bad.write_text("1305031102,160407 depth/a.png\n")
    with pytest.raises(ConfigError, match=r"depth.txt:1: not a stamp"):
        read_list(bad)
    bad.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="no entries"):
        read_list(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_list(tmp_path / "nowhere.txt")
    with pytest.raises(DepthFrameError, match="no such file"):
        load_depth_png(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DepthFrameError, match="corrupt or truncated"):
        load_depth_png(tmp_path / "junk.png")
    cv2.imwrite(str(tmp_path / "eight.png"), np.zeros((4, 4), np.uint8))
    with pytest.raises(DepthFrameError, match="expected a 16-bit single-channel"):
        load_depth_png(tmp_path / "eight.png")


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="source must be one of"):
        DepthParams(source="kinect")
    with pytest.raises(ValueError, match="needs a path"):
        DepthParams(source="tum")
    with pytest.raises(ValueError, match="needs bag_reader: open3d"):
        DepthParams(source="bag", path="x.bag", align_to_color=True)
    with pytest.raises(ValueError, match="retry_s"):
        DepthParams(retry_s=0)


def test_tum_sequence_publishes_exact_depth_with_real_stamps_and_skips_bad_frames(
    tmp_path: Path, no_leaks: None, depth_node: Any
) -> None:
    n = 20
    images = write_sequence(tmp_path / "seq", n)
    entries = fr1xyz_lines(n)
    # Frame 7 is corrupt, frame 12 is missing: both counted and skipped, the rest flows.
    bad_corrupt, bad_missing = tmp_path / "seq" / entries[7][1], tmp_path / "seq" / entries[12][1]
    bad_corrupt.write_bytes(bad_corrupt.read_bytes()[:60])
    bad_missing.unlink()
    node = depth_node({"source": "tum", "path": str(tmp_path / "seq"), "start_delay_s": 0.6})
    msgs = node.collect(until_exit_s=15)
    code, log = node.stop()
    assert code == 0, log  # the sequence ended: the node finished cleanly
    good = [i for i in range(n) if i not in (7, 12)]
    assert len(msgs) == len(good), log
    for m, i in zip(msgs, good, strict=True):
        h = m.header
        assert h.encoding == "z16" and h.frame_id == "depth_optical" and h.stream == "image"
        assert h.t_sensor_ns == parse_stamp_ns(entries[i][0])
        assert h.t_ns is None  # the aligner's job
        img = m.arrays[0]
        assert img.dtype == np.uint16 and np.array_equal(img, images[i])
        scale = h.meta["depth_scale_m"]
        # Metres exactly as TUM defines them (value / 5000), to the last bit of a float64.
        np.testing.assert_allclose(img * scale, img / TUM_DEPTH_FACTOR, rtol=2.3e-16, atol=0)
        assert img[1, 1] * scale == pytest.approx(1.0 + i / 5000, abs=1e-15)
    assert [m.header.seq for m in msgs] == list(range(len(good)))
    # Native rate: host arrival spacing follows the stamps (fr1/xyz is ~30 Hz).
    host = np.array([m.header.t_host_ns for m in msgs], np.int64)
    sensor = np.array([m.header.t_sensor_ns for m in msgs], np.int64)
    drift = (host - host[0]) - (sensor - sensor[0])
    assert np.all(drift > -2e6) and np.median(np.abs(drift)) < 20e6, drift
    # One clear line per bad frame, naming the file and why.
    skipped = [ln for ln in log.splitlines() if "skipped" in ln]
    assert len(skipped) == 2, log
    assert entries[7][1].split("/")[-1] in skipped[0] and "corrupt or truncated" in skipped[0]
    assert entries[12][1].split("/")[-1] in skipped[1] and "no such file" in skipped[1]
    assert "Traceback" not in log


def test_tum_as_fast_as_possible_in_a_loop_keeps_stamps_increasing(
    tmp_path: Path, depth_node: Any
) -> None:
    n = 5
    images = write_sequence(tmp_path / "seq", n)
    stamps = [parse_stamp_ns(s) for s, _ in fr1xyz_lines(n)]
    node = depth_node(
        {
            "source": "tum",
            "path": str(tmp_path / "seq" / "depth.txt"),
            "realtime": False,
            "loop": True,
            "start_delay_s": 0.6,
        }
    )
    msgs = node.collect(until_exit_s=4, idle_s=None)
    t_first = time.monotonic()
    code, log = node.stop()
    assert time.monotonic() - t_first < 5 and code == 0, log
    assert len(msgs) > 3 * n, len(msgs)  # far more than one pass: not paced at 30 Hz
    span = stamps[-1] - stamps[0] + int(np.median(np.diff(stamps)))
    t = [m.header.t_sensor_ns for m in msgs]
    assert np.all(np.diff(t) > 0)
    for m in msgs:
        loop, rest = divmod(m.header.t_sensor_ns - stamps[0], span)
        i = stamps.index(stamps[0] + rest)
        assert np.array_equal(m.arrays[0], images[i]), (loop, i)


def test_missing_sequence_is_a_configuration_error(tmp_path: Path, depth_node: Any) -> None:
    node = depth_node({"source": "tum", "path": str(tmp_path / "nowhere")})
    node.proc.wait(timeout=20)
    code, log = node.stop()
    assert code == EXIT_CONFIG and "nowhere: no such file or folder" in log
    assert "Traceback" not in log
    (tmp_path / "empty").mkdir()
    node = depth_node({"source": "tum", "path": str(tmp_path / "empty")}, name="depth2")
    node.proc.wait(timeout=20)
    code, log = node.stop()
    assert code == EXIT_CONFIG and "empty: depth.txt not found in the folder" in log


# --- RealSense ----------------------------------------------------------------------------------
def test_no_realsense_attached_lists_none_and_the_node_keeps_retrying(
    no_leaks: None, depth_node: Any
) -> None:
    pytest.importorskip("pyrealsense2")
    from edgefuse.sensors._realsense import list_devices

    assert list_devices() == []  # real librealsense enumeration; no device on this machine
    node = depth_node({"source": "realsense", "serial": "123456789012", "retry_s": 0.2})
    time.sleep(2.0)
    assert node.proc.poll() is None, "the node must wait for the device, not exit"
    code, log = node.stop()
    assert code == 0, log
    lines = [ln for ln in log.splitlines() if "no RealSense device found" in ln]
    # One line per outage, not one per attempt (about 10 attempts were made).
    assert len(lines) == 1, log
    assert "(serial 123456789012); retrying every 0.2 s" in lines[0]


def record_depth(path: Path, frames: list[np.ndarray], *, scale_m: float, period_s: float) -> None:
    """Record ``frames`` to a librealsense recording through a software device: the real
    librealsense recorder, with hardware-clock stamps and ``sensor_timestamp`` metadata."""
    import pyrealsense2 as rs

    h, w = frames[0].shape
    dev = rs.software_device()
    dev.register_info(rs.camera_info.name, "edgefuse test depth")
    dev.register_info(rs.camera_info.serial_number, "000111222")
    sensor = dev.add_sensor("Stereo Module")
    intr = rs.intrinsics()
    intr.width, intr.height, intr.fx, intr.fy, intr.ppx, intr.ppy = w, h, 40.0, 41.0, 15.5, 11.5
    vs = rs.video_stream()
    vs.type, vs.index, vs.uid, vs.width, vs.height = rs.stream.depth, 0, 0, w, h
    vs.fps, vs.bpp, vs.fmt, vs.intrinsics = 30, 2, rs.format.z16, intr
    profile = sensor.add_video_stream(vs)
    sensor.add_read_only_option(rs.option.depth_units, scale_m)
    recorder = rs.recorder(str(path), dev)
    rec_sensor = recorder.query_sensors()[0]
    queue = rs.frame_queue(len(frames) + 1)
    rec_sensor.open(profile)
    rec_sensor.start(queue)
    for i, img in enumerate(frames):
        f = rs.software_video_frame()
        f.pixels, f.stride, f.bpp = img, w * 2, 2
        f.timestamp, f.domain = 5000.0 + i * 1000 * period_s, rs.timestamp_domain.hardware_clock
        f.frame_number, f.profile = i, profile.as_video_stream_profile()
        sensor.set_metadata(rs.frame_metadata_value.sensor_timestamp, 4_990_000 + i * 33_333)
        sensor.on_video_frame(f)
        queue.wait_for_frame(1000)
        time.sleep(period_s)
    rec_sensor.stop()
    rec_sensor.close()
    del rec_sensor, recorder, queue


@pytest.mark.parametrize("realtime", [False, True])
def test_realsense_recording_plays_back_every_frame_with_hardware_stamps(
    tmp_path: Path, depth_node: Any, realtime: bool
) -> None:
    pytest.importorskip("pyrealsense2")
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 65536, size=(24, 32), dtype=np.uint16) for _ in range(12)]
    rec = tmp_path / "rec.db3"  # librealsense 2.57+ records ROS 2 (.db3); .bag is read too
    record_depth(rec, frames, scale_m=0.00025, period_s=0.033)
    node = depth_node(
        {"source": "bag", "path": str(rec), "realtime": realtime, "start_delay_s": 0.6}
    )
    msgs = node.collect(until_exit_s=15)
    code, log = node.stop()
    assert code == 0, log
    assert len(msgs) == len(frames), log
    for i, m in enumerate(msgs):
        h = m.header
        assert np.array_equal(m.arrays[0], frames[i])
        assert h.encoding == "z16" and h.frame_id == "depth_optical"
        # The device's own depth unit (a float32 in librealsense), read from the recording.
        assert h.meta["depth_scale_m"] == pytest.approx(0.00025, rel=1e-6)
        # The sensor_timestamp metadata (µs) is preferred over the frame's ms timestamp.
        assert h.meta["t_sensor_source"] == "sensor_timestamp"
        assert h.t_sensor_ns == (4_990_000 + i * 33_333) * 1000
        assert h.meta["frame_number"] == i and h.meta["serial"] == "000111222"
        intr = h.meta["intrinsics"]
        assert (intr["width"], intr["height"], intr["fx"], intr["cy"]) == (32, 24, 40.0, 11.5)
    assert "end of file" in log and "Traceback" not in log
    host_span_s = (msgs[-1].header.t_host_ns - msgs[0].header.t_host_ns) * 1e-9
    if realtime:  # paced as recorded: 11 periods of at least 33 ms
        assert host_span_s > 0.3, host_span_s


def test_missing_recording_is_a_configuration_error(tmp_path: Path, depth_node: Any) -> None:
    node = depth_node({"source": "bag", "path": str(tmp_path / "none.bag")})
    node.proc.wait(timeout=20)
    code, log = node.stop()
    assert code == EXIT_CONFIG and "none.bag: no such file" in log and "Traceback" not in log


def test_open3d_reader_names_what_it_cannot_read(tmp_path: Path, depth_node: Any) -> None:
    # A real librealsense 2.59 recording (ROS 2 layout) under a .bag name: Open3D's reader (ROS 1
    # .bag only) refuses it, and the node says which reader to use instead.
    pytest.importorskip("pyrealsense2")
    pytest.importorskip("open3d")
    rec = tmp_path / "rec.db3"
    record_depth(rec, [np.zeros((24, 32), np.uint16)] * 3, scale_m=0.001, period_s=0.033)
    bag = tmp_path / "rec.bag"
    bag.write_bytes(rec.read_bytes())
    node = depth_node({"source": "bag", "path": str(bag), "bag_reader": "open3d"})
    node.proc.wait(timeout=30)
    code, log = node.stop()
    assert code == EXIT_CONFIG, log
    assert "Open3D cannot open it as a .bag" in log and "bag_reader: pyrealsense2" in log
    assert "Traceback" not in log
