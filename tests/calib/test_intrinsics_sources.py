"""``edgefuse calibrate intrinsics`` from a recorded topic (a real MCAP session of the simulated
calibration scene, whose camera is known) and from a live camera (MJPEG over a local HTTP
server, read by the camera driver's capture) in the guided ``--live`` mode; bad input named."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefuse.calib.boards import CalibrationError
from edgefuse.calib.cli import main
from edgefuse.calib.model import load_calibration
from edgefuse.calib.sources import SessionFrames, open_source, source_kind
from edgefuse.sim.calib_scene import BoardTarget, CalibrationScene, generate_calibration, make_poses
from edgefuse.sim.rig import SimParams, load_rig
from tests.calib.synth import K_TRUE, render
from tests.calib.test_guide import BOARD, pose
from tests.conftest import REPO
from tests.mjpeg import MjpegServer

PARAMS = SimParams(scenario="calibration")
SIM_BOARD = ["--cols", "8", "--rows", "6", "--square-m", "0.1"]
LIVE_BOARD = ["--cols", "9", "--rows", "6", "--square-m", "0.03"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 s of the calibration scene: 20 board poses held 0.4 s, camera at 5 Hz, the truth
    topic beside it (not a picture)."""
    rig = load_rig(PARAMS)
    scene = CalibrationScene(
        target=BoardTarget(), poses=make_poses(rig, n=20, seed=0), hold_s=0.4, move_s=0.2
    )
    path = tmp_path_factory.mktemp("session") / "calibration.mcap"
    generate_calibration(
        path, PARAMS, scene=scene, rates_hz={"camera": 5}, sensors=("camera", "board")
    )
    return path


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["calibrate", "intrinsics", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_recorded_topic_recovers_the_sim_rig_camera(
    session: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_file = tmp_path / "cam.yaml"
    rc, out, err = run_main(
        capsys, str(session), "--topic", "camera/image", *SIM_BOARD, "-o", str(out_file), "--json"
    )
    assert rc == 0, err
    s = json.loads(out)
    truth = load_rig(PARAMS).sensor("camera").camera
    assert truth is not None
    K = truth.K
    err_px = {
        k: s[k] - K[i, j] for k, (i, j) in dict(fx=(0, 0), fy=(1, 1), cx=(0, 2), cy=(1, 2)).items()
    }
    print("recorded topic vs sim rig:", {k: round(v, 2) for k, v in err_px.items()}, s["rms_px"])
    assert abs(err_px["fx"]) / K[0, 0] < 0.01 and abs(err_px["fy"]) / K[1, 1] < 0.01
    assert abs(err_px["cx"]) < 6 and abs(err_px["cy"]) < 6
    assert s["rms_px"] < 0.3
    # One view per held pose: the frames in motion and the repeats of a pose are not kept.
    assert 15 <= len(s["views"]) + len(s["rejected"]) <= 20
    assert s["skipped"]["moving"] >= 20 and s["stopped"] == "end"
    assert all(v.startswith("image_") for v in s["views"])
    cam = load_calibration(out_file).sensors["camera"].camera
    assert cam is not None and cam.K[0, 0] == pytest.approx(s["fx"])
    # The only image topic is found without --topic.
    with SessionFrames(str(session)) as src:
        assert src.topic == "camera/image" and src.kind == "session"


def test_recorded_topic_bad_input_names_the_topics(
    session: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_main(capsys, str(session), "--topic", "camera/imag", *SIM_BOARD)
    assert rc == 2 and "Traceback" not in err
    assert "no topic 'camera/imag'" in err
    assert "camera/image (bgr8" in err and "sim/board (sim_board" in err
    assert "try --topic camera/image" in err
    rc, _, err = run_main(capsys, str(session), "--topic", "sim/board", *SIM_BOARD)
    assert rc == 2 and "topic 'sim/board' holds sim_board messages, not camera pictures" in err
    assert "image topics here: camera/image" in err
    fake = tmp_path / "notes.mcap"
    fake.write_text("not a recording")
    rc, _, err = run_main(capsys, str(fake), *SIM_BOARD)
    assert rc == 2 and "not an MCAP file" in err
    # The wrong board: no board in any frame, and the size that is there.
    rc, _, err = run_main(capsys, str(session), "--cols", "9", "--rows", "7", "--every", "10")
    assert rc == 2 and "no 9x7 chessboard" in err and "try --cols 8 --rows 6" in err


def test_source_kinds(tmp_path: Path) -> None:
    assert source_kind("0") == "live" and source_kind("/dev/video3") == "live"
    assert source_kind("rtsp://cam/stream") == "live" and source_kind("v4l2src ! appsink") == "live"
    assert source_kind("rec.mcap") == "session" and source_kind("x", "camera/image") == "session"
    assert source_kind(str(tmp_path)) == "folder" and source_kind("calib/*.png") == "folder"
    assert source_kind("clip.avi") == "video"
    one = tmp_path / "a.png"
    cv2.imwrite(str(one), np.zeros((8, 8), np.uint8))
    with pytest.raises(CalibrationError, match="one image is not enough"):
        open_source(str(one))


# --- live camera: MJPEG over HTTP --------------------------------------------------------------


# A person following the hints: the board square-on at the centre, tilted both ways about
# both axes, far away at the image's edges and corners, close, then tilted off-centre.
PLAN = (
    [(320, 240, 0.6, 0, 0), (320, 240, 0.6, 30, 0), (320, 240, 0.6, -30, 0)]
    + [(320, 240, 0.6, 0, 30), (320, 240, 0.6, 0, -30)]
    + [(u, v, 1.3, 0, 0) for u in (110, 320, 530) for v in (80, 240, 400) if (u, v) != (320, 240)]
    + [(320, 240, 0.36, 0, 0), (200, 150, 0.8, 20, 20), (440, 330, 0.8, -20, -20)]
)


def plan_frames(hold: int) -> list[np.ndarray]:
    """Each pose of PLAN rendered (K_TRUE) and held for ``hold`` frames."""
    out = []
    for u, v, z, ax, ay in PLAN:
        img = cv2.cvtColor(render(BOARD, *pose(u, v, z, ax, ay)), cv2.COLOR_GRAY2BGR)
        out += [img] * hold
    return out


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return plan_frames(hold=5)


@contextlib.contextmanager
def served(frames: Sequence[np.ndarray], fps: float = 20.0, loops: int = 1) -> Iterator[str]:
    server = MjpegServer(frames, fps, loops)
    try:
        yield server.url
    finally:
        server.close()


def _ctrl_c_as_at_a_terminal() -> None:
    # A non-interactive shell starts background jobs (a CI script run with `&`) with SIGINT
    # ignored, and Python keeps an ignored SIGINT: give the child what a terminal gives it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgefuse.calib.cli", "calibrate", "intrinsics", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_ctrl_c_as_at_a_terminal,
    )


def no_display_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def test_live_guided_mode_over_http_to_a_written_calibration(
    frames: list[np.ndarray], tmp_path: Path
) -> None:
    out_file, plot = tmp_path / "cam.yaml", tmp_path / "coverage.png"
    # Played up to 3 times: a pose missed while the detector was busy comes round again.
    with served(frames, loops=3) as url:
        p = cli(
            url,
            *LIVE_BOARD,
            "-o",
            str(out_file),
            "--plot",
            str(plot),
            "--show",
            env=no_display_env(),
        )
        _, err = p.communicate(timeout=90)
    assert p.returncode == 0, err
    lines = err.splitlines()
    print(err)
    assert lines[0].startswith("--show: no display")  # and no error: runs without a window
    assert lines[1].startswith(f"reading {url}") and "9x6 chessboard" in lines[1]
    assert "next: show the whole board to the camera" in err
    # The hints follow what is missing: places in the image, then the distance.
    assert "next: move the board to the top edge of the image" in err
    assert "next: bring the board closer" in err
    kept = [ln for ln in lines if ln.startswith("view ")]
    # One tilt fills half a tilt bar; the other way fills it.
    assert any("Tilt-H [#####-----]" in ln for ln in kept)
    assert any("Tilt-H [##########]" in ln for ln in kept)
    assert "coverage is sufficient: calibrating with" in err
    assert "stopped: sufficient" in err
    n = len(kept)
    assert 12 <= n <= len(PLAN)
    cam = load_calibration(out_file).sensors["camera"].camera
    assert cam is not None
    K = cam.K
    print("live vs truth:", K[0, 0] - K_TRUE[0, 0], K[0, 2] - K_TRUE[0, 2], K[1, 2] - K_TRUE[1, 2])
    assert K[0, 0] == pytest.approx(600, rel=0.01) and K[1, 1] == pytest.approx(600, rel=0.01)
    assert abs(K[0, 2] - K_TRUE[0, 2]) < 8 and abs(K[1, 2] - K_TRUE[1, 2]) < 8
    assert cv2.imread(str(plot)) is not None


def test_live_ctrl_c_calibrates_with_the_views_so_far(
    frames: list[np.ndarray], tmp_path: Path
) -> None:
    out_file = tmp_path / "cam.yaml"
    # The first ten poses over and over: never enough (no close view), so however late the
    # signal comes (a busy machine), it is what stops the collection.
    with served(frames[: 10 * 5], fps=10.0, loops=1000) as url:
        p = cli(url, *LIVE_BOARD, "-o", str(out_file), "--json")
        assert p.stderr is not None
        seen = []
        for line in p.stderr:
            seen.append(line)
            if line.startswith("view 7 kept"):
                p.send_signal(signal.SIGINT)
                break
        out, err = p.communicate(timeout=60)
    err = "".join(seen) + err
    assert p.returncode == 0, err
    assert "interrupted: calibrating with the" in err and "stopped: interrupted" in err
    s = json.loads(out)
    assert s["stopped"] == "interrupted" and 7 <= len(s["views"]) + len(s["rejected"]) < 12
    assert s["fx"] == pytest.approx(600, rel=0.03)
    assert out_file.exists()


def test_live_source_that_cannot_be_opened(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_main(capsys, "/dev/video77", *LIVE_BOARD)
    assert rc == 2 and "Traceback" not in err
    assert "cannot open the camera /dev/video77: no such device /dev/video77" in err
    assert "ls /dev/video*" in err
    with contextlib.closing(__import__("socket").socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    url = f"http://127.0.0.1:{port}/video.mjpg"
    rc, _, err = run_main(capsys, url, *LIVE_BOARD)
    assert rc == 2 and f"cannot open the camera {url}" in err and "ffplay" in err


def test_live_stream_without_a_board(capsys: pytest.CaptureFixture[str]) -> None:
    blank = [np.full((480, 640, 3), 90 + 10 * k, np.uint8) for k in range(8)]
    with served(blank, fps=40.0) as url:
        rc, _, err = run_main(capsys, url, *LIVE_BOARD)
    assert rc == 2 and "Traceback" not in err
    assert "no 9x6 chessboard (inner corners) found in any of the" in err
    assert "  (no board in view: show the whole board to the camera)" in err


def test_guided_replay_of_a_video_file_without_drops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--live`` with a video file: the same guide, every frame read (no capture thread).
    ``--show`` with a display but an OpenCV without GUI (the headless wheel): a note, no
    window, no error."""
    monkeypatch.setenv("DISPLAY", ":99")
    video = tmp_path / "session.avi"
    frames = plan_frames(hold=2)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 10, (640, 480))
    for f in frames:
        writer.write(f)
    writer.release()
    rc, out, err = run_main(capsys, str(video), "--live", "--show", *LIVE_BOARD, "--json")
    assert rc == 0, err
    gui = next(ln for ln in cv2.getBuildInformation().splitlines() if "GUI:" in ln)
    has_gui = "NONE" not in gui
    assert has_gui or "--show: this OpenCV has no GUI" in err
    s = json.loads(out)
    assert s["stopped"] == "sufficient" and s["frames"] < len(frames)
    # Each pose's first frame follows a jump (moving); its second is the one kept.
    assert s["views"][0] == "frame_000001" and s["views"][1] == "frame_000003"
    assert s["fx"] == pytest.approx(600, rel=0.01)


# --- a running pipeline's camera topic, over ZeroMQ --------------------------------------------

PIPELINE = """\
name: calib
nodes:
  camera:
    type: camera
    params: {{source: {video}, loop: true}}
"""


def test_running_pipeline_topic_in_guided_mode(
    run_dir: Path, tmp_path: Path, no_leaks: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgefuse import introspect

    video = tmp_path / "board.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 20, (640, 480))
    for f in plan_frames(hold=4):
        writer.write(f)
    writer.release()
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(PIPELINE.format(video=video))
    rc, _, err = run_main(capsys, "pipeline:camera/image", *LIVE_BOARD)
    assert rc == 2 and "no running pipeline publishes 'camera/image'" in err
    assert "start the pipeline first" in err
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefuse", "run", str(pipeline), "--status", "off"],
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 15
        while not introspect.list_topics():
            assert time.monotonic() < deadline, "pipeline did not start"
            time.sleep(0.1)
        out_file = tmp_path / "cam.yaml"
        rc, out, err = run_main(
            capsys, "pipeline:camera/image", *LIVE_BOARD, "-o", str(out_file), "--json"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert rc == 0, err
    assert "reading topic camera/image of the running pipeline" in err
    s = json.loads(out)
    assert s["stopped"] == "sufficient" and all(v.startswith("image_") for v in s["views"])
    assert s["fx"] == pytest.approx(600, rel=0.01)
    assert load_calibration(out_file).sensors["camera"].camera is not None
