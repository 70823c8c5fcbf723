"""``edgefuse calibrate time --sound-distance-m auto``: the clapper's distance to the microphone
from the board the camera sees, on simulated ``timing`` sessions whose metadata know the truth;
the microphone's offset with it within 1 ms; bad input exits 2 with a message saying what to
do."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgefuse.calib.boards import Board
from edgefuse.calib.model import RigCalibration, load_calibration
from edgefuse.calib.temporal_signals import TemporalCalibrationError
from edgefuse.calib.temporal_sound import _clapper_in_base, estimate_sound_distance
from edgefuse.record.session import SessionReader
from edgefuse.sim.rig import SimParams
from edgefuse.sim.time_scene import TimingTruth, generate_timing, timing_truth
from tests.calib.test_temporal import RENDER_OFFSETS_NS, _render_and_estimator_files, cli
from tests.conftest import REPO

BOARD = Board(kind="chessboard", cols=8, rows=6, square_m=0.1)  # the sim's BoardTarget
BOARD_ARGS = ("--cols", "8", "--rows", "6", "--square-m", "0.1")


def _sim_rig() -> RigCalibration:
    return load_calibration(REPO / "calibration/sim_rig.yaml")


def _truth(session: Path) -> TimingTruth:
    with SessionReader(session) as r:
        return timing_truth(r.metadata())


def _clapper_offset_m(truth: TimingTruth) -> tuple[np.ndarray, np.ndarray]:
    """The clapper's offset from the board's centre midway between the two stops, in the
    board frame of ``--clapper-offset-m`` (X right and Y down along the board as the camera
    sees it, Z away from the camera), and that centre (base_link): from the scene's poses."""
    d = truth.extra
    t = d["target"]
    sq = t["square_m"]
    centre_board = np.array([(t["cols"] - 1) / 2 * sq, (t["rows"] - 1) / 2 * sq, 0.0, 1.0])
    poses = [np.asarray(p) for p in d["poses_T_base_link_board"]]
    mid = np.mean([(p @ centre_board)[:3] for p in poses], axis=0)
    # The scene's board faces the rig (normal +x) and stands upright: X = -y, Y = -z, Z = +x.
    assert np.allclose(poses[0][:3, 2], [1.0, 0.0, 0.0])
    delta = np.asarray(d["clapper_m"]) - mid
    return np.array([-delta[1], -delta[2], delta[0]]), mid


@pytest.fixture(scope="module")
def timing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A 16 s timing session (camera and microphone) rendered with RENDER_OFFSETS_NS, the
    pipeline whose aligner has the render's true latencies, and the estimator's rig."""
    tmp = tmp_path_factory.mktemp("sound")
    render, pipeline, est_rig = _render_and_estimator_files(tmp)
    session = tmp / "timing.mcap"
    generate_timing(
        session, SimParams(seed=5, rig=str(render)), duration_s=16.0, sensors=("camera", "mic")
    )
    return session, pipeline, est_rig


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 s timing session: the board moves once."""
    path = tmp_path_factory.mktemp("sound_short") / "short.mcap"
    generate_timing(path, SimParams(seed=3), duration_s=3.0, sensors=("camera", "mic"))
    return path


def test_offset_frame_does_not_depend_on_corner_order() -> None:
    # A chessboard with an even number of corners both ways may be found either way up (its
    # frame turned 180° about its normal): the clapper must come out at the same place.
    rig = _sim_rig()
    cam = rig.sensor("camera").T
    T = np.eye(4)
    T[:3, :3] = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # upright
    T[:3, 3] = [4.8, 0.3, 1.0]
    flipped = T.copy()
    flipped[:3, :3] = T[:3, :3] @ np.diag([-1.0, -1.0, 1.0])
    flipped[:3, 3] = T[:3, 3] + T[:3, :3] @ np.array([0.7, 0.5, 0.0])  # the far corner
    off = np.array([0.1, 0.35, -0.2])
    a = _clapper_in_base(T, BOARD, off, cam[:3, 3])
    b = _clapper_in_base(flipped, BOARD, off, cam[:3, 3])
    assert np.allclose(a, b)
    centre = T[:3, 3] + T[:3, :3] @ [0.35, 0.25, 0.0]
    # 10 cm to the right as the camera sees it (-y), 35 cm down, 20 cm towards the camera.
    assert np.allclose(a - centre, [-0.2, -0.1, -0.35])


@pytest.mark.slow
def test_distance_within_5_cm_of_the_scene(timing: tuple[Path, Path, Path]) -> None:
    session = timing[0]
    truth = _truth(session)
    offset, mid = _clapper_offset_m(truth)
    rig = _sim_rig()
    kw = {"camera_topic": "camera/image", "camera": "camera", "board": BOARD, "mic": "mic"}
    est = estimate_sound_distance(session, rig, clapper_offset_m=tuple(offset), **kw)
    assert abs(est.distance_m - truth.sound_distance_m) < 0.05, (est, truth.sound_distance_m)
    assert est.moves >= 8 and est.holds == est.moves + 1, est
    assert est.spread_m < 0.02
    assert np.allclose(est.clapper_m, truth.extra["clapper_m"], atol=0.05)
    # Without the offset: the board's centre at mid-travel, 15 cm farther from the mic here.
    at_centre = estimate_sound_distance(session, rig, **kw)
    mic_at = rig.sensor("mic").T[:3, 3]
    assert abs(at_centre.distance_m - np.linalg.norm(mid - mic_at)) < 0.05
    assert at_centre.distance_m - est.distance_m > 0.1
    # The rig attached to the session stands in when none is given.
    attached = estimate_sound_distance(session, None, clapper_offset_m=tuple(offset), **kw)
    assert attached.distance_m == pytest.approx(est.distance_m, abs=1e-6)


@pytest.mark.slow
def test_cli_auto_puts_the_mic_within_1_ms(timing: tuple[Path, Path, Path]) -> None:
    session, pipeline, est_rig = timing
    offset, _ = _clapper_offset_m(_truth(session))
    r = cli(
        str(session),
        "--pipeline",
        str(pipeline),
        "--streams",
        "mic",
        "--sound-distance-m",
        "auto",
        *BOARD_ARGS,
        "--clapper-offset-m",
        ",".join(f"{v:.4f}" for v in offset),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    sound = out["sound_distance"]
    assert sound["source"] == "auto"
    assert abs(sound["distance_m"] - _truth(session).sound_distance_m) < 0.05, sound
    assert f"sound distance {sound['distance_m']:.2f} m from {sound['holds']} board holds" in (
        r.stderr
    )
    mic = out["streams"][0]
    truth_ms = (RENDER_OFFSETS_NS["mic"] - RENDER_OFFSETS_NS["camera"]) * 1e-6
    assert mic["stream"] == "mic" and mic["reliable"], mic
    assert abs(mic["offset_ms"] - truth_ms) < 1.0, (mic["offset_ms"], truth_ms)
    # Written relative to the camera's 5 ms of the estimator's rig.
    got_ms = load_calibration(est_rig).sensor("mic").time_offset_ns * 1e-6
    assert got_ms == pytest.approx(5.0 + mic["offset_ms"], abs=1e-3)


def test_cli_auto_without_board_size_exits_2(short: Path) -> None:
    r = cli(str(short), "--sound-distance-m", "auto", "--cols", "8", "--dry-run")
    assert r.returncode == 2, r.stderr
    assert "--sound-distance-m auto needs the board" in r.stderr and "--square-m" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli(str(short), "--sound-distance-m", "near")
    assert r.returncode == 2 and "expected metres or auto, got 'near'" in r.stderr
    r = cli(str(short), "--sound-distance-m", "auto", *BOARD_ARGS, "--clapper-offset-m", "1,2")
    assert r.returncode == 2 and "expected three numbers X,Y,Z" in r.stderr


def _auto_mic(session: Path, *board: str) -> subprocess.CompletedProcess[str]:
    """``calibrate time`` of the microphone with ``--sound-distance-m auto``, nothing written."""
    return cli(str(session), "--streams", "mic", "--sound-distance-m", "auto", *board, "--dry-run")


def test_cli_board_never_found_names_the_right_size(short: Path) -> None:
    r = _auto_mic(short, "--cols", "9", "--rows", "7", "--square-m", "0.1")
    assert r.returncode == 2, r.stderr
    assert "sound distance: no 9x7 chessboard (inner corners) found" in r.stderr, r.stderr
    # Squares counted instead of inner corners: the message names the board that is there.
    assert "squares minus one" in r.stderr and "try --cols 8 --rows 6" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_camera_must_be_a_camera_stream(short: Path) -> None:
    r = _auto_mic(short, *BOARD_ARGS, "--camera", "mic")
    assert r.returncode == 2, r.stderr
    assert "--camera mic: not a camera stream" in r.stderr and "camera streams: camera" in r.stderr


def test_too_few_moves_and_missing_intrinsics(short: Path) -> None:
    rig = _sim_rig()
    kw = {"camera_topic": "camera/image", "camera": "camera", "board": BOARD, "mic": "mic"}
    # One move in 3 s: too few to average.
    with pytest.raises(TemporalCalibrationError, match=r"too few board moves .*: 1 from 2 holds"):
        estimate_sound_distance(short, rig, **kw)
    one = estimate_sound_distance(short, rig, min_moves=1, **kw)
    assert one.moves == 1 and one.holds == 2
    bare = replace(
        rig, sensors={**rig.sensors, "camera": replace(rig.sensors["camera"], camera=None)}
    )
    with pytest.raises(TemporalCalibrationError, match=r"'camera' .* has no intrinsics: run"):
        estimate_sound_distance(short, bare, **kw)
    with pytest.raises(TemporalCalibrationError, match="rig 'sim_rig' has no sensor 'mic2'"):
        estimate_sound_distance(short, rig, **{**kw, "mic": "mic2"})
    with pytest.raises(TemporalCalibrationError, match="camera topic 'cam/image' is not in"):
        estimate_sound_distance(short, rig, **{**kw, "camera_topic": "cam/image"})
