"""``edgefuse calibrate time``: the correlation and event estimators on signals with a known
lag, bad input exits 2 naming the stream, and simulated sessions rendered with known time
offsets (slow): the busy scene (correlation) and the timing scene (events, every stream within
1 ms)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgefuse.calib.model import load_calibration
from edgefuse.calib.temporal import (
    Signal,
    TemporalCalibrationError,
    estimate_offset,
    estimate_offsets,
)
from edgefuse.calib.temporal_events import click_onsets, match_events, move_events
from edgefuse.sim.generate import generate
from edgefuse.sim.rig import SimParams
from tests.conftest import REPO

#: Offsets the test session is rendered with (ns); the estimator gets calibration/sim_rig.yaml
#: (camera 5, depth 3, lidar 0, mic -1.5 ms) and must find these relative to the camera's.
RENDER_OFFSETS_NS = {
    "camera": 12_000_000,
    "depth": 25_000_000,
    "lidar": -7_000_000,
    "mic": 9_000_000,
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefuse.calib.cli", "calibrate", "time", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _activity(t_s: np.ndarray, tiles: int, seed: int) -> np.ndarray:
    """Steps switching on and off at random instants per tile (edges crossing tiles)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(t_s), tiles))
    for b in range(tiles):
        edges = np.sort(rng.uniform(-2.0, 33.0, 40))  # fixed: the world does not move with t
        out[:, b] = np.searchsorted(edges, t_s) % 2
    return out


def _signal(name: str, rate_hz: float, lag_s: float, dt_s: np.ndarray, seed: int) -> Signal:
    """Samples at ``rate_hz`` of a world seen ``lag_s`` late (the stream's data describe
    mapped time + lag_s), tile ``b`` at ``t + dt_s[b]``."""
    t = np.arange(0.0, 30.0, 1 / rate_hz) + 0.0123
    world = np.stack([_activity(t + d + lag_s, len(dt_s), 7)[:, i] for i, d in enumerate(dt_s)], 1)
    noise = np.random.default_rng(seed).normal(0, 0.05, world.shape)
    return Signal(
        stream=name,
        kind="camera",
        t_ns=np.round(t * 1e9).astype(np.int64),
        values=world + noise,
        dt_ns=np.round(np.asarray(dt_s) * 1e9).astype(np.int64),
    )


def test_known_lag_recovered_with_sign_and_per_tile_instants() -> None:
    # A 30 Hz reference and a 10 Hz "lidar" whose tiles are scanned 80-98 ms into the sweep.
    # Data at mapped time m describe m + offset (the aligner: t_ns = mapped + offset): with
    # offsets 12 ms (camera) and -7 ms (lidar) the lidar's is the camera's - 19 ms.
    tiles = 16
    ref = _signal("camera", 30.0, 0.012, np.zeros(tiles), seed=1)
    lidar = _signal("lidar", 10.0, -0.007, np.linspace(0.080, 0.098, tiles), seed=2)
    e = estimate_offset(lidar, ref)
    assert abs(e.offset_ns * 1e-6 - (-19.0)) < 0.5, e
    assert e.reliable and e.confidence > 0.3
    back = estimate_offset(ref, lidar)  # the other way round: the opposite offset
    assert abs(back.offset_ns * 1e-6 - 19.0) < 0.5, back


def test_unrelated_signals_are_flagged_unreliable() -> None:
    a = _signal("camera", 30.0, 0.0, np.zeros(8), seed=1)
    b = Signal(
        stream="mic",
        kind="audio",
        t_ns=a.t_ns,
        values=np.random.default_rng(5).normal(size=(len(a.t_ns), 1)),
        dt_ns=np.zeros(1, np.int64),
    )
    e = estimate_offset(b, a)
    assert not e.reliable
    assert "mic" in e.reason and "--streams" in e.reason


def test_flat_and_short_signals_name_the_stream() -> None:
    ref = _signal("camera", 30.0, 0.0, np.zeros(4), seed=1)
    flat = Signal(
        stream="depth",
        kind="depth",
        t_ns=ref.t_ns,
        values=np.ones((len(ref.t_ns), 4)),
        dt_ns=np.zeros(1, np.int64),
    )
    with pytest.raises(TemporalCalibrationError, match="depth: its depth signal does not change"):
        estimate_offset(flat, ref)
    short = Signal(
        stream="lidar",
        kind="lidar",
        t_ns=ref.t_ns[:60],
        values=ref.values[:60],
        dt_ns=np.zeros(1, np.int64),
    )
    with pytest.raises(TemporalCalibrationError, match=r"lidar: it overlaps .*\(record longer"):
        estimate_offset(short, ref)


def _moving_bar(t_s: np.ndarray, mids_s: np.ndarray, move_s: float = 0.5) -> np.ndarray:
    """Frames (T, 200) of a 40-cell-wide bright bar on a 1-D image that moves 60 cells at
    constant speed in ``move_s`` around each of ``mids_s``, back and forth, drawn with
    sub-pixel coverage, plus noise."""
    pos = np.full(len(t_s), 50.0)
    for j, m in enumerate(mids_s):
        a = np.clip((t_s - (m - move_s / 2)) / move_s, 0.0, 1.0)
        start, end = (50.0, 110.0) if j % 2 == 0 else (110.0, 50.0)
        pos = np.where(t_s >= m - move_s / 2, start + (end - start) * a, pos)
    x = np.arange(200)[None, :] + 0.5
    lo, hi = pos[:, None], pos[:, None] + 40.0
    cover = np.clip(np.minimum(x + 0.5, hi) - np.maximum(x - 0.5, lo), 0.0, 1.0)
    noise = np.random.default_rng(4).normal(0.0, 2.0, cover.shape)
    return np.asarray(30.0 + 150.0 * cover + noise)


def test_move_events_find_the_halfway_instant_between_frames() -> None:
    # 30 Hz frames, moves halfway at random phases of the frame grid: each is timed to a small
    # fraction of the 33 ms frame period.
    rng = np.random.default_rng(1)
    mids = 1.0 + np.cumsum(rng.uniform(1.3, 1.9, 12))
    t_s = np.arange(0.0, mids[-1] + 1.5, 1 / 30) + 0.0123
    events = move_events(np.round(t_s * 1e9).astype(np.int64), _moving_bar(t_s, mids))
    assert len(events) == len(mids)
    err_ms = (events - np.round(mids * 1e9)) * 1e-6
    assert np.abs(err_ms).max() < 1.0, err_ms
    assert abs(err_ms.mean()) < 0.3, err_ms
    # Nothing moves: no events.
    still = _moving_bar(t_s, np.array([1e6]))
    assert len(move_events(np.round(t_s * 1e9).astype(np.int64), still)) == 0


def test_click_onsets_to_a_fraction_of_a_sample() -> None:
    rate = 16000
    t_s = np.arange(0, 10 * rate) / rate
    onsets = np.array([1.00003, 2.51234, 4.0, 6.77777, 8.123456])
    x = np.random.default_rng(2).normal(0.0, 100.0, len(t_s))
    for o in onsets:
        u = t_s - o
        ring = np.exp(-np.maximum(u, 0.0) / 0.002) * np.cos(2 * np.pi * 2000 * u)
        x += np.where(u >= 0, 8000.0 * ring, 0.0)
    got = click_onsets(np.round(t_s * 1e9).astype(np.int64), x)
    assert len(got) == len(onsets)
    assert np.abs(got * 1e-9 - onsets).max() < 1 / rate  # within one sample (62.5 µs)


def test_match_events_pairs_despite_misses_and_strays() -> None:
    rng = np.random.default_rng(3)
    ref = np.cumsum(rng.uniform(1.2e9, 1.8e9, 20)).astype(np.int64)
    # The stream sees each event 19 ms early (its offset: reference - stream = +19 ms), with
    # 0.5 ms of jitter, misses two and adds a stray.
    sig = ref[2:] - 19_000_000 + rng.normal(0, 5e5, 18).astype(np.int64)
    sig = np.sort(np.append(sig, ref[5] + 400_000_000))
    m = match_events(sig, ref, max_lag_ns=500_000_000)
    assert m.reliable, m
    assert m.pairs == 18 and abs(m.offset_ns - 19_000_000) < 400_000
    unrelated = np.cumsum(rng.uniform(0.2e9, 2.5e9, 20)).astype(np.int64)
    assert not match_events(unrelated, ref, max_lag_ns=500_000_000).reliable


def test_auto_uses_events_when_they_pair_and_correlation_otherwise() -> None:
    tiles = 16
    ref = _signal("camera", 30.0, 0.012, np.zeros(tiles), seed=1)
    lidar = _signal("lidar", 10.0, -0.007, np.linspace(0.080, 0.098, tiles), seed=2)
    est = estimate_offsets({"camera": ref, "lidar": lidar}, "camera")
    assert est["lidar"].method == "correlation"  # no events: correlation
    ev = np.arange(1, 25) * 1_234_000_000
    ref_e = Signal(**{**ref.__dict__, "events_ns": ev})
    lid_e = Signal(**{**lidar.__dict__, "events_ns": ev + 19_000_000})
    est = estimate_offsets({"camera": ref_e, "lidar": lid_e}, "camera")
    e = est["lidar"]
    assert e.method == "events" and e.events == 24 and e.reliable
    assert e.offset_ns == -19_000_000
    # --method correlation ignores the events.
    e = estimate_offsets({"camera": ref_e, "lidar": lid_e}, "camera", method="correlation")
    assert e["lidar"].method == "correlation"
    with pytest.raises(TemporalCalibrationError, match="unknown method"):
        estimate_offsets({"camera": ref_e, "lidar": lid_e}, "camera", method="magic")


@pytest.fixture(scope="module")
def short_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("time") / "cam.mcap"
    generate(path, SimParams(scenario="busy", seed=2), duration_s=3.0, sensors=("camera", "mic"))
    return path


def test_cli_missing_stream_exits_2_naming_it(short_session: Path) -> None:
    r = cli(str(short_session), "--streams", "depth", "--dry-run")
    assert r.returncode == 2, r.stderr
    assert "stream depth: topic 'depth/image' is not in" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_too_short_recording_exits_2(short_session: Path) -> None:
    r = cli(str(short_session), "--streams", "mic", "--dry-run")
    assert r.returncode == 2, r.stderr
    assert "stream mic" in r.stderr and "record longer" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_unknown_stream_and_bad_lag(short_session: Path) -> None:
    r = cli(str(short_session), "--streams", "radar")
    assert r.returncode == 2 and "--streams: radar not in the aligner" in r.stderr
    r = cli(str(short_session), "--max-lag-ms", "0")
    assert r.returncode == 2 and "--max-lag-ms" in r.stderr
    r = cli(str(short_session), "--sound-distance-m", "-3")
    assert r.returncode == 2 and "--sound-distance-m must be in 0..1000 m" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def offset_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 40 s busy session rendered with RENDER_OFFSETS_NS, a pipeline whose aligner has the
    true latencies (12 ms USB + the camera's offset, ...) and the estimator's rig (the
    original sim rig, other offsets)."""
    tmp = tmp_path_factory.mktemp("offsets")
    render, pipeline, est_rig = _render_and_estimator_files(tmp)
    session = tmp / "busy.mcap"
    params = SimParams(scenario="busy", seed=1, rig=str(render), lidar_cut_azimuth_deg=-35)
    generate(session, params, duration_s=40.0, sensors=("camera", "depth", "lidar", "mic"))
    return session, pipeline, est_rig


def _render_and_estimator_files(tmp: Path) -> tuple[Path, Path, Path]:
    """In ``tmp``: the rig to render with (RENDER_OFFSETS_NS), a pipeline whose aligner has
    the render's true latencies and points at the estimator's rig, and that rig (the
    original sim rig, other offsets)."""
    rig = yaml.safe_load((REPO / "calibration/sim_rig.yaml").read_text())
    for name, off in RENDER_OFFSETS_NS.items():
        rig["sensors"][name]["time_offset_ns"] = off
    render = tmp / "render_rig.yaml"
    render.write_text(yaml.safe_dump(rig, sort_keys=False))
    est_rig = tmp / "est_rig.yaml"
    est_rig.write_text((REPO / "calibration/sim_rig.yaml").read_text())
    pipe = yaml.safe_load((REPO / "pipelines/sim.yaml").read_text())
    streams = pipe["nodes"]["sync"]["params"]["streams"]
    # latency_ms: the least delay from the stamped instant (Source.min_delay_ms of the render).
    streams["camera"]["latency_ms"] = 12.0 + 12.0
    streams["depth"]["latency_ms"] = 18.0 + 25.0
    streams["lidar"]["latency_ms"] = 1.5 - 7.0 + 100.0
    pipe["nodes"]["sync"]["params"]["rig"] = str(est_rig)
    pipeline = tmp / "pipe.yaml"
    pipeline.write_text(yaml.safe_dump(pipe, sort_keys=False))
    return render, pipeline, est_rig


@pytest.mark.slow
def test_sim_offsets_estimated_and_written(offset_session: tuple[Path, Path, Path]) -> None:
    session, pipeline, est_rig = offset_session
    r = cli(str(session), "--pipeline", str(pipeline), "--json", "--dry-run")
    # Depth (an 8 m range: few objects near enough) and the microphone (no sound events the
    # camera sees; sound arrives d/343 m/s late) are flagged unreliable: exit 2, nothing written.
    assert r.returncode == 2, r.stderr
    out = {s["stream"]: s for s in json.loads(r.stdout)["streams"]}
    truth_ms = (RENDER_OFFSETS_NS["lidar"] - RENDER_OFFSETS_NS["camera"]) * 1e-6
    assert out["lidar"]["reliable"], out["lidar"]
    assert abs(out["lidar"]["offset_ms"] - truth_ms) < 2.0, out["lidar"]
    assert not out["mic"]["reliable"] and "mic" in r.stderr
    before = est_rig.read_text()
    assert before == (REPO / "calibration/sim_rig.yaml").read_text()  # nothing written
    r = cli(str(session), "--pipeline", str(pipeline), "--streams", "lidar")
    assert r.returncode == 0, r.stderr
    rig = load_calibration(est_rig)
    # Relative to the camera's 5 ms in the estimator's rig: 5 + (-7 - 12) = -14 ms.
    got_ms = rig.sensor("lidar").time_offset_ns * 1e-6
    assert abs(got_ms - (5.0 + truth_ms)) < 2.0, got_ms
    assert rig.sensor("camera").time_offset_ns == 5_000_000


@pytest.fixture(scope="module")
def timing_session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, float]:
    """A 24 s ``timing`` session (the board moved back and forth, a clapper clicking as it
    passes halfway) rendered with RENDER_OFFSETS_NS, the pipeline of ``offset_session``'s
    kind, the estimator's rig and the clapper's distance to the microphone."""
    from edgefuse.record.session import SessionReader
    from edgefuse.sim.time_scene import generate_timing, timing_truth

    tmp = tmp_path_factory.mktemp("timing")
    render, pipeline, est_rig = _render_and_estimator_files(tmp)
    session = tmp / "timing.mcap"
    params = SimParams(seed=5, rig=str(render), lidar_cut_azimuth_deg=-35)
    generate_timing(session, params, duration_s=24.0)
    with SessionReader(session) as r:
        distance_m = timing_truth(r.metadata()).sound_distance_m
    return session, pipeline, est_rig, distance_m


@pytest.mark.slow
def test_timing_scene_every_stream_within_1_ms(
    timing_session: tuple[Path, Path, Path, float],
) -> None:
    # Issue 9's acceptance: on the simulated rig, time offsets within 1 ms, for every stream.
    session, pipeline, est_rig, distance_m = timing_session
    args = [str(session), "--pipeline", str(pipeline), "--sound-distance-m", f"{distance_m:.4f}"]
    r = cli(*args, "--json")  # writes the estimator's rig as well
    assert r.returncode == 0, r.stderr
    out = {s["stream"]: s for s in json.loads(r.stdout)["streams"]}
    assert set(out) == {"depth", "lidar", "mic"}
    rig = load_calibration(est_rig)
    for name, s in out.items():
        truth_ms = (RENDER_OFFSETS_NS[name] - RENDER_OFFSETS_NS["camera"]) * 1e-6
        assert s["method"] == "events" and s["reliable"] and s["events"] >= 10, s
        assert abs(s["offset_ms"] - truth_ms) < 1.0, (name, s["offset_ms"], truth_ms)
        # Written relative to the camera's 5 ms in the estimator's rig.
        got_ms = rig.sensor(name).time_offset_ns * 1e-6
        assert got_ms == pytest.approx(5.0 + s["offset_ms"], abs=1e-3), name
    # Without the sound's travel time the microphone comes out d / 343 m/s (~10.7 ms) late.
    r = cli(*args[:3], "--streams", "mic", "--json", "--dry-run")
    assert r.returncode == 0, r.stderr
    mic = json.loads(r.stdout)["streams"][0]
    late_ms = out["mic"]["offset_ms"] - mic["offset_ms"]
    assert abs(late_ms - distance_m / 343.0 * 1e3) < 0.2, late_ms


def test_depth_for_events_fills_speckle_and_keeps_units() -> None:
    from edgefuse.calib.temporal_signals import _depth_for_events

    z16 = np.full((40, 60), 3300, np.uint16)
    z16[20, 30] = 0  # one dropout on a flat surface
    z16[:, 45:] = 0  # a region with no return stays without one
    out = _depth_for_events(z16)
    assert out.dtype == np.uint16 and out.shape == z16.shape
    assert out[20, 30] == 3300 and (out[:, 50:] == 0).all()
    metres = np.where(z16 > 0, z16 * 1e-3, np.nan).astype(np.float32)
    f = _depth_for_events(metres)
    assert f.dtype == np.float32 and np.isfinite(f).all()
    assert np.allclose(f * 1000.0, out, atol=1e-3)


@pytest.mark.slow
def test_depth_events_the_same_from_32fc1_metres(
    timing_session: tuple[Path, Path, Path, float], tmp_path: Path
) -> None:
    # A 32FC1 depth stream (metres, NaN for no return, no depth_scale_m: ROS's convention) is
    # read in its own units: its events are those of the z16 millimetres it was made from.
    from dataclasses import replace

    from edgefuse.calib.temporal_cli import _pipeline_streams
    from edgefuse.calib.temporal_signals import session_signals
    from edgefuse.record.session import SessionReader, SessionWriter

    session = timing_session[0]
    metres = tmp_path / "metres.mcap"
    with SessionReader(session) as r, SessionWriter(metres) as w:
        for m in r.messages(["camera/image", "depth/image"]):
            arrays = list(m.arrays)
            header = m.header
            if m.topic == "depth/image":
                z = np.asarray(arrays[0])
                arrays = [np.where(z > 0, z * 1e-3, np.nan).astype(np.float32)]
                meta = {k: v for k, v in header.meta.items() if k != "depth_scale_m"}
                header = replace(header, encoding="32FC1", meta=meta)
            w.write(m.topic, header, arrays)
    every, _, _ = _pipeline_streams(timing_session[1])
    streams = {k: every[k] for k in ("camera", "depth")}
    a = session_signals(session, streams)["depth"].events_ns
    b = session_signals(metres, streams)["depth"].events_ns
    assert len(a) >= 10 and len(a) == len(b)
    assert np.abs(a - b).max() < 20_000, np.abs(a - b).max()  # 20 µs: float rounding only
