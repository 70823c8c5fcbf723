"""Intrinsic calibration on OpenCV's real stereo sample images and on rendered boards."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefuse.calib.boards import Board, CalibrationError, detect_all
from edgefuse.calib.coverage import coverage
from edgefuse.calib.intrinsics import calibrate_intrinsics, calibrate_views
from tests.calib.synth import K_TRUE, poses, write_views
from tests.conftest import SHARED_DATA

CHESS = SHARED_DATA / "opencv-stereo-chessboard"
LEFT = str(CHESS / "left*.jpg")
BOARD = Board(cols=9, rows=6, square_m=0.025)


def plain_opencv_left() -> tuple[float, float]:
    """OpenCV's own recipe (findChessboardCorners, cornerSubPix 11x11, calibrateCamera)."""
    objp = np.zeros((54, 3), np.float32)
    objp[:, :2] = np.mgrid[0:9, 0:6].T.reshape(-1, 2)
    obj, img = [], []
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 30, 0.001)
    for f in sorted(CHESS.glob("left*.jpg")):
        gray = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        found, corners = cv2.findChessboardCorners(gray, (9, 6))
        assert found, f
        obj.append(objp)
        img.append(cv2.cornerSubPix(gray, corners, (11, 11), (-1, -1), crit))
    rms, K, *_ = cv2.calibrateCamera(obj, img, gray.shape[::-1], None, None)
    return float(rms), float(K[0, 0])


def test_left_images_match_plain_opencv() -> None:
    rms_ref, fx_ref = plain_opencv_left()
    assert 0.35 < rms_ref < 0.45 and 530 < fx_ref < 542  # the sample's known figures
    result, det = calibrate_intrinsics(LEFT, BOARD)
    assert len(det.views) == 13 and det.no_board == [] and det.image_size == (640, 480)
    assert result.rms_px <= 0.45
    assert abs(result.camera.K[0, 0] - fx_ref) / fx_ref < 0.01
    assert len(result.per_view_rms_px) == len(result.views) == 13
    assert max(result.per_view_rms_px) < 0.5
    cam = result.camera
    assert cam.distortion_model == "plumb_bob" and len(cam.distortion) == 5
    assert (cam.width, cam.height) == (640, 480)


@pytest.mark.parametrize("model", ["rational_polynomial", "fisheye"])
def test_other_models_agree(model: str) -> None:
    result, _ = calibrate_intrinsics(LEFT, BOARD, model)  # type: ignore[arg-type]
    assert result.rms_px <= 0.45
    assert result.camera.K[0, 0] == pytest.approx(536, rel=0.015)
    n = {"rational_polynomial": 8, "fisheye": 4}[model]
    assert len(result.camera.distortion) == n
    want = "equidistant" if model == "fisheye" else model
    assert result.camera.distortion_model == want


def test_a_corrupted_view_is_rejected_and_the_rest_kept() -> None:
    det = detect_all(LEFT, BOARD)
    views = list(det.views)
    bad = views[4]
    rng = np.random.default_rng(1)
    noisy = bad.image_points + rng.normal(0, 3.0, bad.image_points.shape).astype(np.float32)
    views[4] = replace(bad, image_points=noisy)
    result = calibrate_views(views, det.image_size)
    assert [name for name, _ in result.rejected] == [bad.name]
    assert result.rejected[0][1] > 2.0
    assert len(result.views) == 12 and result.rms_px < 0.45
    kept = calibrate_views(views, det.image_size, reject=False)
    assert kept.rms_px > 1.0  # what the rejection saved


def test_coverage_reports_missing_regions_and_tilts() -> None:
    result, det = calibrate_intrinsics(LEFT, BOARD)
    cov = result.coverage
    assert cov is not None
    assert cov.grid.sum() == 13 * 54
    # The sample never puts the board in the top-left of the image (the person holds it centre).
    assert any("top-left" in h for h in cov.hints)
    assert 0.5 < cov.covered_fraction < 1.0
    assert np.ptp(cov.tilt_x_deg) > 30 and np.ptp(cov.tilt_y_deg) > 30
    assert not any("tilt it more" in h for h in cov.hints)
    # The same board without its tilted views: now the hint asks for tilt.
    flat = [
        i
        for i, (tx, ty) in enumerate(zip(cov.tilt_x_deg, cov.tilt_y_deg, strict=True))
        if abs(tx) < 12
    ]
    sub = coverage([result.views[i] for i in flat], det.image_size, [result.rvecs[i] for i in flat])
    assert any("tilt it more around the horizontal axis" in h for h in sub.hints)


def test_charuco_and_chessboard_recover_a_known_camera(tmp_path: Path) -> None:
    for board in (
        Board(kind="charuco", cols=8, rows=6, square_m=0.05, dictionary="DICT_5X5_100"),
        Board(cols=7, rows=5, square_m=0.03),
    ):
        folder = write_views(board, tmp_path / board.kind, poses(12))
        result, det = calibrate_intrinsics(folder, board)
        assert det.no_board == [], board.kind
        K = result.camera.K
        assert K[0, 0] == pytest.approx(K_TRUE[0, 0], rel=0.01), board.kind
        assert K[0, 2] == pytest.approx(K_TRUE[0, 2], abs=6), board.kind
        assert result.rms_px < 0.3, board.kind


def test_video_source(tmp_path: Path) -> None:
    video = tmp_path / "calib.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    for f in sorted(CHESS.glob("left*.jpg")):
        img = cv2.imread(str(f))
        for _ in range(2):  # two frames per view: --every 2 takes one of each
            writer.write(img)
    writer.release()
    result, det = calibrate_intrinsics(video, BOARD, every=2)
    assert len(det.views) == 13 and det.views[1].name == "frame_000002"
    assert result.camera.K[0, 0] == pytest.approx(536, rel=0.01)


# --- bad input: a message that names the problem and what to do ---------------------------


def test_no_board_anywhere(tmp_path: Path) -> None:
    shutil.copy(SHARED_DATA / "kitti-object-000000" / "image_2" / "000000.png", tmp_path)
    with pytest.raises(CalibrationError, match=r"no 9x6 chessboard .* found in any of the 1 image"):
        calibrate_intrinsics(tmp_path, BOARD)


def test_wrong_board_size_suggests_the_right_one() -> None:
    with pytest.raises(CalibrationError) as exc:
        calibrate_intrinsics(LEFT, Board(cols=10, rows=7))
    msg = str(exc.value)
    assert "no 10x7 chessboard" in msg and "--cols 9 --rows 6" in msg
    assert "inner corners" in msg


def test_too_few_views_says_how_many_more(tmp_path: Path) -> None:
    for f in sorted(CHESS.glob("left0[1-4].jpg")):
        shutil.copy(f, tmp_path)
    with pytest.raises(CalibrationError, match=r"too few views: .* 4 of 4 .* take 2 more"):
        calibrate_intrinsics(tmp_path, BOARD)


def test_the_same_pose_over_and_over(tmp_path: Path) -> None:
    for i in range(8):
        shutil.copy(CHESS / "left01.jpg", tmp_path / f"img{i}.jpg")
    with pytest.raises(CalibrationError, match=r"degenerate poses: all 8 views .* same pose"):
        calibrate_intrinsics(tmp_path, BOARD)


def test_a_board_never_tilted(tmp_path: Path) -> None:
    board = Board(cols=7, rows=5, square_m=0.03)
    folder = write_views(board, tmp_path, poses(8, tilt_deg=0.5))
    with pytest.raises(CalibrationError, match="degenerate poses: the board faces the camera"):
        calibrate_intrinsics(folder, board)


def test_mixed_resolutions_and_bad_sources(tmp_path: Path) -> None:
    shutil.copy(CHESS / "left01.jpg", tmp_path / "a.jpg")
    small = cv2.resize(cv2.imread(str(CHESS / "left02.jpg")), (320, 240))
    cv2.imwrite(str(tmp_path / "b.jpg"), small)
    with pytest.raises(CalibrationError, match="same camera at the same resolution"):
        calibrate_intrinsics(tmp_path, BOARD)
    with pytest.raises(CalibrationError, match="no such folder or video"):
        calibrate_intrinsics(tmp_path / "nope", BOARD)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="no images in this folder"):
        calibrate_intrinsics(tmp_path / "empty", BOARD)
