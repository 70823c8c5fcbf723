"""Stereo calibration on OpenCV's real left/right sample pairs."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefuse.calib.boards import Board, CalibrationError
from edgefuse.calib.stereo import calibrate_stereo, stereo_rig
from tests.conftest import SHARED_DATA

CHESS = SHARED_DATA / "opencv-stereo-chessboard"
BOARD = Board(cols=9, rows=6, square_m=0.025)


@pytest.fixture(scope="module")
def result():  # type: ignore[no-untyped-def]
    return calibrate_stereo(str(CHESS / "left*.jpg"), str(CHESS / "right*.jpg"), BOARD)


def test_baseline_is_consistent_with_every_view(result) -> None:  # type: ignore[no-untyped-def]
    T = result.T_right_left
    t = T[:3, 3]
    # Side by side: the right camera is along +x of the left, so p_right = p_left - b·x.
    assert t[0] < 0 and abs(t[0]) / result.baseline_m > 0.99
    assert 0.05 < result.baseline_m < 0.12  # ~3.3 squares of 25 mm
    assert result.rotation_deg < 3
    assert result.rms_px < 0.45 and result.epipolar_rms_px < 0.3
    assert len(result.pairs) >= 10
    # Each pair on its own (board pose by PnP in each camera) gives the same baseline.
    obj = BOARD.object_points()
    for lname, rname in result.pairs:
        poses = []
        for name, res in ((lname, result.left), (rname, result.right)):
            v = next(v for v in res.views if v.name == name)
            ok, rv, tv = cv2.solvePnP(obj, v.image_points, res.camera.K, res.camera.D)
            assert ok
            P = np.eye(4)
            P[:3, :3], P[:3, 3] = cv2.Rodrigues(rv)[0], tv.ravel()
            poses.append(P)
        T_view = poses[1] @ np.linalg.inv(poses[0])  # T_right_board · T_board_left
        assert np.linalg.norm(T_view[:3, 3]) == pytest.approx(result.baseline_m, rel=0.03)
        assert np.linalg.norm(T_view[:3, 3] - t) < 0.05 * result.baseline_m


def test_rig_places_the_right_camera(result) -> None:  # type: ignore[no-untyped-def]
    rig = stereo_rig(result)
    np.testing.assert_allclose(rig.T("right", "left"), result.T_right_left, atol=1e-9)
    np.testing.assert_allclose(rig.sensors["left"].T, np.eye(4))


def test_too_few_pairs(tmp_path: Path) -> None:
    left, right = tmp_path / "l", tmp_path / "r"
    left.mkdir()
    right.mkdir()
    for f in CHESS.glob("left*.jpg"):
        shutil.copy(f, left)
    for f in sorted(CHESS.glob("right*.jpg"))[:3]:
        shutil.copy(f, right)
    with pytest.raises(CalibrationError, match="too few views"):
        calibrate_stereo(left, right, BOARD)
