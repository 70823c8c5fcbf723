"""The simulator's ``timing`` scenario: the board moves when the schedule says, the clapper's
click lands on the sample its distance and the mic's time offset put it, and a generated
session records the known answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgefuse.record.session import SessionReader
from edgefuse.sim.audio import SPEED_OF_SOUND_MPS
from edgefuse.sim.rig import SimParams, load_rig
from edgefuse.sim.scenarios import scenario
from edgefuse.sim.time_scene import (
    TimingMicSource,
    TimingScene,
    default_timing_scene,
    generate_timing,
    timing_sources,
    timing_truth,
)
from tests.conftest import edgefuse_cli

PARAMS = SimParams(scenario="timing", seed=3)


def test_schedule_moves_at_constant_speed_between_the_stops() -> None:
    scene = default_timing_scene(seed=3, duration_s=20.0)
    ev = np.asarray(scene.events_s)
    assert len(ev) >= 10 and ev[0] == pytest.approx(1.25)
    gaps = np.diff(ev)
    assert gaps.min() > scene.move_s + 0.69 and gaps.max() < scene.move_s + 1.31
    A, B = scene.poses
    e = float(ev[0])
    # Still until the move starts, halfway at the event, at the other stop once it is over.
    for t, want, still in ((e - 0.26, A, True), (e, (A + B) / 2, False), (e + 0.26, B, True)):
        T, _, is_still = scene.pose_at(t)
        np.testing.assert_allclose(T, want, atol=1e-12)
        assert is_still == still
    T1, T2 = scene.pose_at(e - 0.1)[0], scene.pose_at(e + 0.1)[0]
    speed = np.linalg.norm(T2[:3, 3] - T1[:3, 3]) / 0.2
    assert speed == pytest.approx(np.linalg.norm(B[:3, 3] - A[:3, 3]) / scene.move_s)
    # The second move goes back.
    np.testing.assert_allclose(scene.pose_at(float(ev[1]) + 0.26)[0], A, atol=1e-12)


def test_bad_schedules_are_refused() -> None:
    scene = default_timing_scene(seed=0, duration_s=10.0)
    with pytest.raises(ValueError, match="increase by more than move_s"):
        TimingScene(target=scene.target, poses=scene.poses, events_s=(1.0, 1.3))
    with pytest.raises(ValueError, match="two stops"):
        TimingScene(target=scene.target, poses=scene.poses[:1], events_s=(1.0,))
    assert scenario("timing").spawn_rate_hz == {}  # nothing else in the world


def test_camera_and_depth_see_the_board_move_exactly_when_scheduled() -> None:
    scene = default_timing_scene(seed=3, duration_s=6.0)
    sources = timing_sources(PARAMS, scene, sensors=("camera", "depth"))
    start = scene.events_s[0] - scene.move_s / 2
    for name, src in sources.items():
        # The same frame index (same noise) rendered at other instants: identical while the
        # board holds, different 1 ms into the move.
        held = src.render(7, start - 0.1)[0][0]
        assert np.array_equal(held, src.render(7, start - 0.001)[0][0]), name
        moved = src.render(7, start + 0.001)[0][0]
        assert not np.array_equal(held, moved), name
    # The board is in the depth camera's 8 m range at both stops: about 3.3 m.
    depth = sources["depth"].render(0, 0.5)[0][0]
    near = depth[(depth > 0) & (depth < 5000)]
    assert near.size > 2000 and 3000 < np.median(near) < 3600


def test_click_starts_on_the_sample_the_sound_reaches_the_mic() -> None:
    scene = default_timing_scene(seed=3, duration_s=6.0)
    mic = TimingMicSource(PARAMS, rig=load_rig(PARAMS), scene=scene)
    d = scene.sound_distance_m(mic.rig)
    assert d == pytest.approx(np.linalg.norm(np.array([3.6, -0.25, -0.7])))
    # The mic's samples describe taken + time_offset; the click reaches it d / c after the
    # event: sample n is taken at n / (rate * clock rate).
    arrive_s = scene.events_s[0] + d / SPEED_OF_SOUND_MPS - mic.time_offset_s
    n_click = math.ceil(arrive_s * mic.rate_hz * mic.clock.rate)
    k = n_click // mic.chunk
    chunks = [mic.sample(j) for j in (k - 1, k, k + 1)]
    audio = np.concatenate([c.arrays[0][:, 0] for c in chunks if c is not None]).astype(float)
    first = (k - 1) * mic.chunk
    loud = np.flatnonzero(np.abs(audio) > 2000)  # background: ~130 RMS; click ~2400 peak
    assert first + loud[0] == n_click
    # A cosine burst that starts at its peak: level / d at 1 m, full scale 32767.
    assert audio[loud[0]] == pytest.approx(32767 * 0.3 / d, rel=0.15)


def test_generated_session_records_the_known_answers(tmp_path: Path) -> None:
    path = tmp_path / "timing.mcap"
    counts = generate_timing(path, PARAMS, duration_s=3.0, sensors=("camera", "mic"))
    assert 88 <= counts["camera/image"] <= 90 and 299 <= counts["mic/audio"] <= 301
    with SessionReader(path) as r:
        meta = r.metadata()
        truth = timing_truth(meta)
        assert meta["session"]["scenario"] == "timing"
        assert truth.events_s == (1.25,)  # the one move that ends a second before the end
        assert truth.sound_distance_m == pytest.approx(math.hypot(3.6, 0.25, 0.7))
        assert {m.header.encoding for m in r.messages(["mic/audio"])} == {"s16le"}


def test_sim_generate_renders_the_timing_scenario(tmp_path: Path) -> None:
    out = tmp_path / "t.mcap"
    args = ["sim", "generate", "--scenario", "timing", "--sensors", "mic", "-o", str(out)]
    r = edgefuse_cli(*args, "--duration", "2", "--quiet")
    assert r.returncode == 2 and "needs at least 2.5 s" in r.stderr and "Traceback" not in r.stderr
    r = edgefuse_cli(*args, "--duration", "3", "--quiet")
    assert r.returncode == 0, r.stderr
    default = edgefuse_cli(*args[:-4], "-o", str(tmp_path / "all.mcap"), "--duration", "3")
    assert default.returncode == 0, default.stderr  # every sensor; the answers in metadata
    with SessionReader(out) as reader:
        meta = reader.metadata()
        assert meta["session"]["scenario"] == "timing" and "timing_scene" in meta
        assert set(reader.topics()) == {"mic/audio"}
    with SessionReader(tmp_path / "all.mcap") as reader:
        assert {t.partition("/")[0] for t in reader.topics()} == {"camera", "depth", "lidar", "mic"}
