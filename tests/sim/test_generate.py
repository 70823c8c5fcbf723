"""Offline sessions: byte-for-byte repeatable, complete, and consistent with their own truth."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from edgefuse.record import SessionReader
from edgefuse.sim.generate import GENERATE_EPOCH_NS, generate
from edgefuse.sim.rig import SimParams
from edgefuse.sim.truth import CLASS_NAMES, TruthFrame
from tests.conftest import edgefuse_cli

DURATION_S = 1.5


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "a.mcap"
    generate(path, SimParams(scenario="day", seed=3), duration_s=DURATION_S)
    return path


def test_same_seed_same_bytes(session: Path, tmp_path: Path) -> None:
    again = tmp_path / "b.mcap"
    generate(again, SimParams(scenario="day", seed=3), duration_s=DURATION_S)
    assert again.read_bytes() == session.read_bytes()
    other = tmp_path / "c.mcap"
    generate(other, SimParams(scenario="day", seed=4), duration_s=DURATION_S, sensors=("camera",))
    with SessionReader(other) as a, SessionReader(session) as b:
        first_a = next(a.messages(["camera/image"]))
        first_b = next(b.messages(["camera/image"]))
        assert first_a.arrays[0].tobytes() != first_b.arrays[0].tobytes()


def test_every_stream_at_its_rate(session: Path) -> None:
    with SessionReader(session) as r:
        counts = r.topics()
        meta = r.metadata()
        att = r.attachments()
    # Drops are rare: within a couple of the nominal count.
    assert 42 <= counts["camera/image"] <= 45
    assert 42 <= counts["depth/image"] <= 45
    assert 14 <= counts["lidar/points"] <= 15
    assert 148 <= counts["mic/audio"] <= 151
    assert 44 <= counts["sim/truth"] <= 45
    assert meta["session"]["scenario"] == "day" and meta["session"]["seed"] == "3"
    assert b"camera_optical" in att["calibration/sim_rig.yaml"]


def test_messages_in_delivery_order_with_the_encodings(session: Path) -> None:
    last = 0
    encodings = {}
    index: dict[str, int] = {}
    with SessionReader(session) as r:
        for msg in r.messages():
            assert msg.header.t_host_ns >= last
            last = msg.header.t_host_ns
            # Each stream arrives in order, as through a real pipe (jitter never reorders it).
            assert msg.header.meta["index"] > index.get(msg.topic, -1)
            index[msg.topic] = msg.header.meta["index"]
            encodings[msg.topic] = (msg.header.encoding, msg.arrays[0].dtype, msg.arrays[0].shape)
    assert encodings["camera/image"] == ("bgr8", np.uint8, (480, 640, 3))
    assert encodings["depth/image"] == ("z16", np.uint16, (240, 320))
    assert encodings["lidar/points"][:2] == ("xyzit_f32", np.float32)
    assert encodings["mic/audio"] == ("s16le", np.int16, (160, 1))


def test_stamps_follow_the_true_clocks(session: Path) -> None:
    """Each camera stamp maps back through the published clock truth to its truth instant."""
    with SessionReader(session) as r:
        clocks = json.loads(r.metadata()["clocks"]["json"])
        cam = {m.header.meta["index"]: m for m in r.messages(["camera/image"])}
        truth = {m.header.meta["index"]: m for m in r.messages(["sim/truth"])}
    c = clocks["camera"]
    assert c["epoch_ns"] == GENERATE_EPOCH_NS
    matched = 0
    for k, m in cam.items():
        t = truth[k]
        assert t.header.t_sensor_ns == m.header.t_sensor_ns
        host_ns = (
            c["epoch_ns"]
            + (m.header.t_sensor_ns / 1e9 - c["offset_s"]) / (1 + c["drift_ppm"] * 1e-6) * 1e9
        )
        assert t.header.t_ns is not None
        assert abs(host_ns + c["time_offset_ns"] - t.header.t_ns) < 2_000  # µs stamps
        # Delivery is late, never early: at least the latency after the stamped instant.
        assert m.header.t_host_ns - host_ns >= c["latency_ms"] * 1e6 - 1_000
        matched += 1
    assert matched >= 40


def test_mic_chunks_are_contiguous_in_samples(session: Path) -> None:
    with SessionReader(session) as r:
        msgs = list(r.messages(["mic/audio"]))
    first = [m.header.meta["first_sample"] for m in msgs]
    gaps = np.diff(first)
    assert (gaps % 160 == 0).all() and (gaps >= 160).all()
    stamps = np.array([m.header.t_sensor_ns for m in msgs])
    assert (np.diff(stamps) == gaps * 62_500).all()  # 1e9 / 16000 ns per sample


def test_truth_frames_read_back(session: Path) -> None:
    with SessionReader(session) as r:
        msg = next(r.messages(["sim/truth"]))
    truth = TruthFrame.from_message(msg)
    assert len(truth) >= 1
    assert msg.header.meta["classes"] == list(CLASS_NAMES)
    assert truth.box3d.shape == (len(truth), 7)
    assert set(msg.header.meta["clocks"]) == {"camera", "depth", "lidar", "mic"}


def test_cli_generate_and_errors(tmp_path: Path) -> None:
    out = tmp_path / "s.mcap"
    r = edgefuse_cli(
        "sim",
        "generate",
        "--scenario",
        "night",
        "--seed",
        "1",
        "--duration",
        "0.3",
        "--sensors",
        "camera,truth",
        "-o",
        str(out),
        "--quiet",
        "--ideal-clocks",
    )
    assert r.returncode == 0, r.stderr
    assert "camera/image" in r.stdout and out.exists()
    with SessionReader(out) as s:
        first = next(s.messages(["camera/image"]))
    # Ideal clocks: the stamp is world time of the instant, exactly.
    assert first.header.t_sensor_ns < 34_000_000
    r = edgefuse_cli("sim", "generate", "--scenario", "nite", "--duration", "1", "-o", str(out))
    assert r.returncode == 2 and "unknown scenario 'nite'" in r.stderr
    r = edgefuse_cli("sim", "scenarios")
    assert r.returncode == 0 and "night" in r.stdout


def test_a_stream_stays_in_order_when_its_jitter_exceeds_its_period() -> None:
    from edgefuse.sim.clocks import ClockConfig, ClocksConfig
    from edgefuse.sim.generate import make_sources, samples

    clocks = ClocksConfig(mic=ClockConfig(jitter_ms=20.0, jitter_shape=1.0))
    sources = make_sources(SimParams(seed=1, clocks=clocks), sensors=("mic",))
    raw = [sources["mic"].delivery_s(k) for k in range(200)]
    overtakes = sum(
        1 for a, b in itertools.pairwise(raw) if a is not None and b is not None and b < a
    )
    assert overtakes > 10  # 20 ms of jitter on 10 ms chunks: they would overtake each other
    got = [(s.k, s.delivery_s) for _, s in samples(sources, duration_s=2.0)]
    assert [k for k, _ in got] == sorted(k for k, _ in got)
    assert all(a <= b for (_, a), (_, b) in itertools.pairwise(got))
