"""The command line: outputs in each format, the annotated picture, bad input exits 2 with a
message and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefuse.calib.formats import read_rig
from edgefuse.calib.model import load_calibration
from tests.conftest import REPO, SHARED_DATA

CHESS = SHARED_DATA / "opencv-stereo-chessboard"
LEFT = str(CHESS / "left*.jpg")
RIGHT = str(CHESS / "right*.jpg")
BOARD = ["--cols", "9", "--rows", "6", "--square-m", "0.025"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefuse.calib.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_intrinsics_writes_yaml_json_and_picture(tmp_path: Path) -> None:
    out, plot = tmp_path / "cam.yaml", tmp_path / "coverage.png"
    r = cli("calibrate", "intrinsics", LEFT, *BOARD, "-o", str(out), "--plot", str(plot), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rms_px"] <= 0.45 and abs(summary["fx"] - 536) / 536 < 0.01
    assert len(summary["views"]) == 13
    cam = load_calibration(out).sensors["camera"].camera
    assert cam is not None and cam.K[0, 0] == summary["fx"]
    pic = cv2.imread(str(plot))
    assert pic is not None and pic.shape[1] == 2 * 640 and pic.shape[0] > 480


def test_intrinsics_updates_a_rig_and_writes_other_formats(tmp_path: Path) -> None:
    rig_file = tmp_path / "rig.yaml"
    rig_file.write_text((REPO / "calibration" / "sim_rig.yaml").read_text())
    r = cli("calibrate", "intrinsics", LEFT, *BOARD, "--fix-k3", "--rig", str(rig_file))
    assert r.returncode == 0, r.stderr
    before = load_calibration(REPO / "calibration" / "sim_rig.yaml")
    after = load_calibration(rig_file)
    assert after.sensors["camera"].T_base_link_sensor == before.sensors["camera"].T_base_link_sensor
    assert after.sensors["camera"].time_offset_ns == 5_000_000
    cam = after.sensors["camera"].camera
    assert cam is not None and cam.width == 640 and cam.distortion[4] == 0.0  # k3 fixed
    assert after.sensors["lidar"] == before.sensors["lidar"]
    for fmt in ("ros", "kalibr", "opencv"):
        out = tmp_path / f"{fmt}.yaml"
        r = cli(
            "calibrate", "intrinsics", LEFT, *BOARD, "--fix-k3", "--format", fmt, "-o", str(out)
        )
        assert r.returncode == 0, r.stderr
        got = read_rig(out).sensors
        cam2 = next(s.camera for s in got.values() if s.camera is not None)
        np.testing.assert_allclose(cam2.K, cam.K, rtol=1e-9)  # same images, same fit


def test_stereo_cli(tmp_path: Path) -> None:
    out = tmp_path / "stereo.yaml"
    r = cli("calibrate", "stereo", LEFT, RIGHT, *BOARD, "--json", "-o", str(out))
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert 0.05 < s["baseline_m"] < 0.12 and s["epipolar_rms_px"] < 0.3
    rig = load_calibration(out)
    assert np.linalg.norm(rig.T("right", "left")[:3, 3]) == pytest.approx(s["baseline_m"], rel=1e-9)


def test_convert_between_formats(tmp_path: Path) -> None:
    kitti = SHARED_DATA / "kitti-object-000000" / "calib" / "000000.txt"
    r = cli("calib", "convert", str(kitti), str(tmp_path / "kitti.yaml"))
    assert r.returncode == 0, r.stderr
    r = cli(
        "calib", "convert", str(tmp_path / "kitti.yaml"), str(tmp_path / "k.yaml"), "--to", "opencv"
    )
    assert r.returncode == 0, r.stderr
    assert read_rig(tmp_path / "k.yaml") == read_rig(tmp_path / "kitti.yaml")


def test_bad_input_exits_2_with_a_message() -> None:
    cases = [
        (["calibrate", "intrinsics", LEFT, "--cols", "10", "--rows", "7"], "--cols 9 --rows 6"),
        (["calibrate", "intrinsics", str(CHESS / "left0[1-3].jpg"), *BOARD], "take 3 more"),
        (["calibrate", "intrinsics", "/nonexistent", *BOARD], "no such folder"),
        (["calib", "convert", str(REPO / "README.md"), "/tmp/x.yaml"], "cannot tell"),
        (
            ["calib", "convert", str(REPO / "calibration" / "sim_rig.yaml"), "/tmp/x.txt"],
            "distortion",
        ),
    ]
    for args, expected in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert expected in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
