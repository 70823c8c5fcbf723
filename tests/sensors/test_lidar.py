"""The lidar node in its own process: Velodyne packets over real loopback UDP, and scan files
(KITTI ``.bin`` from the shared data, PCD and PLY written with Open3D)."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edgefuse.envelope import Message
from edgefuse.node import NodeSpec
from edgefuse.sensors._lidar_files import read_scan
from edgefuse.sensors.velodyne import HOUR_NS
from edgefuse.transport import Subscriber
from tests.conftest import REPO, SHARED_DATA
from tests.sensors.test_velodyne import DUAL, HOUR_US, Spin

pytestmark = pytest.mark.usefixtures("no_leaks")

KITTI_BIN = SHARED_DATA / "kitti-object-000000" / "velodyne" / "000000.bin"
KITTI_STAMPS = SHARED_DATA / "kitti-raw-2011_09_26_0001" / "velodyne_points" / "timestamps.txt"


@dataclass
class LidarProc:
    """A lidar node process, a subscriber to its sweeps and its statistics."""

    proc: subprocess.Popen[str]
    sub: Subscriber
    stats_sock: zmq.Socket[Any]
    stats: dict[str, Any] = field(default_factory=dict)
    log: str = ""

    def counters(self, wait_s: float = 0.0) -> dict[str, Any]:
        """The newest counters the node reported (waiting up to ``wait_s`` for a report)."""
        deadline = time.monotonic() + wait_s
        while True:
            while self.stats_sock.poll(0):
                self.stats = self.stats_sock.recv_json()  # type: ignore[assignment]
            if self.stats or time.monotonic() >= deadline:
                return dict(self.stats.get("counters", {}))
            time.sleep(0.02)

    def sweeps(self, quiet_s: float = 0.3) -> list[Message]:
        """Every sweep received until none came for ``quiet_s``."""
        out = []
        while (msg := self.sub.recv(timeout_ms=int(quiet_s * 1000))) is not None:
            out.append(msg)
        return out


@contextmanager
def lidar_node(tmp_path: Path, params: dict[str, Any]) -> Iterator[LidarProc]:
    """Run ``edgefuse.sensors.lidar:LidarNode`` as the launcher would (``python -m
    edgefuse.node``), reporting statistics to this test every 0.1 s."""
    ctx: zmq.Context[Any] = zmq.Context()
    control = f"ipc://{tmp_path}/control"
    stats_sock = ctx.socket(zmq.PULL)
    stats_sock.bind(control)
    spec = NodeSpec(
        name="lidar",
        type="edgefuse.sensors.lidar:LidarNode",
        params=params,
        endpoint=f"ipc://{tmp_path}/lidar.pub",
        control=control,
        run_id=f"lidartest{uuid.uuid4().hex[:8]}",
        stats_period_s=0.1,
        parent_pid=os.getpid(),
    )
    env = {**os.environ, "EDGEFUSE_NODE_SPEC": spec.to_json(), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefuse.node"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    sub = Subscriber(spec.endpoint, ["lidar/points"], context=ctx)
    lp = LidarProc(proc, sub, stats_sock)
    try:
        yield lp
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, lp.log = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, lp.log = proc.communicate()
        sub.close()
        stats_sock.close(linger=0)
        ctx.term()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(port: int, payloads: list[bytes], *, per_ms: int = 24) -> None:
    """Send datagrams to the node over loopback, ``per_ms`` per millisecond (faster than a
    sensor, slower than a kernel socket buffer fills)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i, p in enumerate(payloads):
            s.sendto(p, ("127.0.0.1", port))
            if i % per_ms == per_ms - 1:
                time.sleep(0.001)


def test_udp_sweeps_with_loss_reordering_dual_return_hour_wrap_and_sensor_gone(
    tmp_path: Path,
) -> None:
    port = free_udp_port()
    params = {
        "source": "udp",
        "host": "127.0.0.1",
        "port": port,
        "model": "VLP-32C",
        "timeout_s": 1.0,
        "poll_ms": 2.0,
    }
    # Dual return; the sensor's hour wraps 0.8 s into the stream.
    spin = Spin("VLP-32C", mode=DUAL, az0_deg=30.0, t0_us=HOUR_US - 800_000)
    per_sweep = round(100_000 / spin.packet_us)
    with lidar_node(tmp_path, params) as node:
        node.counters(wait_s=20)  # the node is up and its socket bound
        assert node.counters()["waiting"] == 1  # nothing sent yet
        # Warm up until the subscription has reached the node (ZeroMQ joins late).
        k = 0
        got: list[Message] = []
        while not got and k < 40 * per_sweep:
            send(port, [spin.packet(i)[1] for i in range(k, k + per_sweep)])
            k += per_sweep
            got = node.sweeps(quiet_s=0.2)
        assert got, "no sweep came from the node"
        before = node.counters(wait_s=0.3)
        # 0.9 s of packets with 4 lost, 2 pairs swapped, a duplicate, a short datagram and a
        # block with a bad flag.
        n = 9 * per_sweep
        stream = [spin.packet(i)[1] for i in range(k, k + n)]
        t_first = spin.packet(k)[0]
        del stream[500:504]
        stream[700], stream[701] = stream[701], stream[700]
        stream[1200], stream[1201] = stream[1201], stream[1200]
        stream.insert(900, stream[899])
        stream.insert(300, b"\x01" * 100)
        bad = bytearray(stream[100])
        bad[300] = 0
        stream[100] = bytes(bad)
        send(port, stream)
        k += n
        sweeps = node.sweeps()
        after = node.counters(wait_s=0.3)
        time.sleep(0.15)
        after = node.counters()
        delta = {key: after[key] - before.get(key, 0) for key in after}
        assert delta["lost"] == 4 + 1  # the bad-flag packet is not decoded either
        assert delta["reordered"] == 2 and delta["late"] == 0
        assert delta["duplicates"] == 1 and delta["bad_size"] == 1 and delta["malformed"] == 1, (
            delta,
            "",
        )
        assert delta["hour_wraps"] == 1
        assert 8 <= len(sweeps) <= 9 and delta["sweeps"] == len(sweeps)
        seqs = [m.header.seq for m in sweeps]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        stamps = [m.header.t_sensor_ns for m in sweeps]
        assert all(0 <= s < HOUR_NS for s in stamps)
        steps = np.diff(stamps) % HOUR_NS
        assert np.all(np.abs(steps - 100_000_000) < 200_000), steps
        assert any(b < a for a, b in itertools.pairwise(stamps))  # wrapped
        # The first of them was open when this stream began, the sweep before its crossing.
        assert (t_first * 1000 - stamps[0]) % HOUR_NS < 100_000_000
        for m in sweeps:
            pts, ring = m.arrays
            assert m.header.encoding == "xyzit_f32" and m.header.frame_id == "lidar"
            assert pts.dtype == np.float32 and pts.shape[1] == 5 and ring.dtype == np.uint8
            assert m.header.meta["return_mode"] == "dual" and m.header.meta["beams"] == 32
            assert m.header.meta["sweep_s"] == pytest.approx(0.1, abs=2e-4)
            # Firing order: in time order but for the two returns of a dual pair of blocks.
            assert np.all(np.diff(pts[:, 4]) > -60e-6) and pts[:, 4].min() >= 0
            assert pts[:, 4].max() < 0.1
            assert len(pts) > 1.8 * 32 * 1800
            assert m.header.t_host_ns <= time.monotonic_ns()
        # The sensor goes away: the node says so, keeps running, and resumes when it is back.
        present = node.counters()
        time.sleep(1.3)
        gone = node.counters(wait_s=0.2)
        assert gone["waiting"] == 1 and gone["outages"] == present["outages"] + 1
        assert node.proc.poll() is None
        later = Spin(
            "VLP-32C", mode=DUAL, az0_deg=spin.rotor_deg(spin.t0_us + 5e6), t0_us=spin.t0_us + 5e6
        )
        send(port, [later.packet(i)[1] for i in range(4 * per_sweep)])
        back = node.sweeps()
        assert len(back) >= 2
        resumed = node.counters(wait_s=0.3)
        time.sleep(0.15)
        resumed = node.counters()
        assert resumed["waiting"] == 0 and resumed["gaps"] == gone["gaps"] + 1
    log = node.log
    assert "no packets on udp 127.0.0.1" in log and "sensor gone?" in log
    assert "lidar packets resumed after" in log
    assert log.count("bad_flag") == 1  # logged once
    assert node.proc.returncode == 0


def test_udp_port_in_use_is_a_clear_config_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        with lidar_node(tmp_path, {"host": "127.0.0.1", "port": port}) as node:
            node.proc.wait(timeout=20)
    assert node.proc.returncode == 78  # EXIT_CONFIG: a restart cannot fix it
    assert f"cannot listen on udp 127.0.0.1:{port}" in node.log


@pytest.fixture
def kitti_folder(tmp_path: Path) -> Path:
    """A KITTI raw style folder: ``data/*.bin`` (copies of the shared scan) and the drive's
    Velodyne ``timestamps.txt`` (first lines) beside ``data``."""
    if not KITTI_BIN.is_file() or not KITTI_STAMPS.is_file():
        pytest.skip(f"shared KITTI data not found under {SHARED_DATA}")
    root = tmp_path / "velodyne_points"
    (root / "data").mkdir(parents=True)
    for i in range(3):
        shutil.copy(KITTI_BIN, root / "data" / f"{i:010d}.bin")
    lines = KITTI_STAMPS.read_text().splitlines()[:3]
    (root / "timestamps.txt").write_text("\n".join(lines) + "\n")
    return root


def test_kitti_bin_folder_paced_by_its_stamps_and_looping(
    tmp_path: Path, kitti_folder: Path
) -> None:
    raw = np.fromfile(KITTI_BIN, np.float32).reshape(-1, 4)
    params = {"source": str(kitti_folder / "data"), "rate_hz": 0.0, "loop": True}
    with lidar_node(tmp_path, params) as node:
        msgs: list[Message] = []
        deadline = time.monotonic() + 20
        while len(msgs) < 6 and time.monotonic() < deadline:
            msg = node.sub.recv(timeout_ms=500)
            if msg is not None:
                msgs.append(msg)
    assert len(msgs) >= 5, node.log
    pts, ring = msgs[0].arrays
    np.testing.assert_array_equal(pts[:, :3], raw[:, :3])
    np.testing.assert_allclose(pts[:, 3], raw[:, 3] * 255, rtol=1e-6)
    assert len(np.unique(ring)) == 64  # the HDL-64's lines, found from the point order
    el = np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1]))
    med = [np.median(el[ring == r]) for r in range(64)]
    assert np.all(np.diff(med) > 0)  # ring 0 is the lowest beam
    stamps = [m.header.t_sensor_ns for m in msgs]
    steps = np.diff(stamps)
    assert np.all((steps > 80_000_000) & (steps < 120_000_000)), steps  # KITTI's ~10 Hz
    # Files go at the stamps' pace (about 0.1 s apart on the host too), and the loop goes on.
    host = np.diff([m.header.t_host_ns for m in msgs])
    assert np.all(np.abs(host - steps) < 50_000_000)
    index = [m.header.meta["index"] for m in msgs]
    assert all(b == (a + 1) % 3 for a, b in itertools.pairwise(index)), index


def test_pcd_and_ply_written_by_open3d_read_back(tmp_path: Path) -> None:
    o3d = pytest.importorskip("open3d", reason="open3d (extra lidar) not installed")
    rng = np.random.default_rng(3)
    xyz = rng.uniform(-20, 20, (500, 3)).astype(np.float32)
    inten = rng.uniform(0, 255, (500, 1)).astype(np.float32)
    pcd = o3d.t.geometry.PointCloud()
    pcd.point.positions = o3d.core.Tensor(xyz)
    pcd.point.intensity = o3d.core.Tensor(inten)
    for name in ("scan.pcd", "scan.ply"):
        path = tmp_path / name
        assert o3d.t.io.write_point_cloud(str(path), pcd)
        scan = read_scan(path, cut_azimuth_deg=90.0, sweep_s=0.1)
        np.testing.assert_allclose(scan.points[:, :3], xyz, atol=1e-6)
        np.testing.assert_allclose(scan.points[:, 3], inten[:, 0], atol=1e-4)
        yaw = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
        np.testing.assert_allclose(scan.points[:, 4], (90 - yaw) % 360 / 3600, atol=1e-6)
    # Through the node: one file, stop after it.
    with lidar_node(tmp_path, {"source": str(tmp_path / "scan.ply"), "rate_hz": 20.0}) as node:
        node.proc.wait(timeout=20)
    assert node.proc.returncode == 0 and "played" in node.log


@pytest.mark.parametrize(
    ("source", "message"),
    [("/nonexistent/scans", "no such file or folder"), ("README.md", "not a scan file")],
)
def test_bad_file_source_is_a_clear_config_error(tmp_path: Path, source: str, message: str) -> None:
    with lidar_node(tmp_path, {"source": source}) as node:
        node.proc.wait(timeout=20)
    assert node.proc.returncode == 78 and message in node.log
