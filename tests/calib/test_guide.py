"""Guidance for the live mode: views reduced to features, near-duplicates, still and sharp
frames, and the hint that names what is missing (region, distance, tilt direction)."""

from __future__ import annotations

import cv2
import numpy as np

from edgefuse.calib import guide
from edgefuse.calib.boards import Board, Detector, View
from edgefuse.calib.collect import annotate
from tests.calib.synth import K_TRUE, SIZE, render

BOARD = Board(cols=9, rows=6, square_m=0.03)
W, H = SIZE


def pose(
    u: float, v: float, z: float, ax: float = 0.0, ay: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(rvec, tvec) of the board's first inner corner so that the centre of its corners is
    at pixel (u, v), ``z`` metres away, tilted ``ax``/``ay`` degrees about the camera's x/y."""
    R = cv2.Rodrigues(np.radians([ax, 0.0, 0.0]))[0] @ cv2.Rodrigues(np.radians([0.0, ay, 0.0]))[0]
    centre = np.array([(BOARD.cols - 1) / 2, (BOARD.rows - 1) / 2, 0.0]) * BOARD.square_m
    t = z * np.linalg.inv(K_TRUE) @ np.array([u, v, 1.0]) - R @ centre
    return cv2.Rodrigues(R)[0].ravel(), t


def view_at(u: float, v: float, z: float, ax: float = 0.0, ay: float = 0.0, name: str = "") -> View:
    """The corners a perfect camera (K_TRUE) sees of the board in :func:`pose`."""
    r, t = pose(u, v, z, ax, ay)
    obj = BOARD.object_points()
    img, _ = cv2.projectPoints(obj.astype(np.float64), r, t, K_TRUE, None)
    return View(name, img.reshape(-1, 2).astype(np.float32), obj, np.arange(len(obj)))


def feats(*views: View) -> list[guide.ViewFeatures]:
    return [guide.view_features(v, SIZE) for v in views]


# Far views in the 3x3 grid of positions (key: row, col), a near one, the four tilts.
POSITIONS = {
    (r, c): (u, v) for r, v in enumerate((80, 240, 400)) for c, u in enumerate((110, 320, 530))
}


def far(r: int, c: int) -> View:
    return view_at(*POSITIONS[r, c], 1.3)


def test_features_place_size_and_tilt_signs() -> None:
    tl, br = feats(far(0, 0), far(2, 2))
    assert tl.x < 0.15 and tl.y < 0.15 and br.x > 0.85 and br.y > 0.85
    (near,) = feats(view_at(320, 240, 0.36))
    assert near.size > 0.5 > 0.2 > tl.size
    # Rotating about the camera's x axis by +30 deg brings the top edge towards the camera.
    (top_in,) = feats(view_at(320, 240, 0.6, ax=30))
    (left_in,) = feats(view_at(320, 240, 0.6, ay=-30))
    assert top_in.tilt_x_deg == np.clip(top_in.tilt_x_deg, -34, -26)
    assert abs(top_in.tilt_y_deg) < 2
    assert left_in.tilt_y_deg == np.clip(left_in.tilt_y_deg, -34, -26)
    # The guessed camera (f = 0.8 w = 512 px, not 600) still gets tilts within a few degrees.
    (with_truth,) = [guide.view_features(view_at(320, 240, 0.6, ax=30), SIZE, K_TRUE)]
    assert abs(with_truth.tilt_x_deg - top_in.tilt_x_deg) < 4


def test_the_missing_top_left_is_named_next() -> None:
    views = [far(r, c) for (r, c) in POSITIONS if (r, c) != (0, 0)]
    hint = guide.next_hint(feats(*views))
    assert hint == "move the board to the top-left corner of the image"
    # Once there, the next gap is the distance: everything so far was far away.
    hint = guide.next_hint(feats(*views, far(0, 0)))
    assert hint.startswith("bring the board closer")


def test_a_near_duplicate_is_rejected_a_new_place_or_tilt_is_not() -> None:
    kept = feats(view_at(320, 240, 0.6))
    same = view_at(323, 242, 0.6)
    f_same = guide.view_features(same, SIZE)
    assert guide.is_duplicate(f_same, kept)
    assert guide.judge(same, f_same, same, kept, edge_px=2.0) == "duplicate"
    moved = view_at(110, 80, 1.3)
    assert guide.judge(moved, guide.view_features(moved, SIZE), moved, kept, 2.0) == "accepted"
    tilted = view_at(320, 240, 0.6, ax=25)
    assert guide.judge(tilted, guide.view_features(tilted, SIZE), tilted, kept, 2.0) == "accepted"


def test_moving_and_blurred_frames_are_not_kept() -> None:
    v = view_at(320, 240, 0.6)
    f = guide.view_features(v, SIZE)
    shifted = View("b", v.image_points + 3.0, v.object_points, v.ids)
    assert guide.motion_px(shifted, v) == np.float32(3.0 * np.sqrt(2))
    assert guide.judge(shifted, f, v, [], 2.0) == "moving"
    assert guide.judge(v, f, None, [], 2.0) == "moving"  # the first frame: not known still
    # Edge width measured on real renders: sharp ~2.4 px; blurred (sigma 3) well over the limit.
    img = render(BOARD, *pose(320, 240, 0.6))
    found = Detector(BOARD).detect(img)
    assert found is not None
    sharp = guide.edge_width_px(img, found)
    blurred = guide.edge_width_px(cv2.GaussianBlur(img, (0, 0), 3.0), found)
    assert sharp < 3.5 < guide.MAX_EDGE_WIDTH_PX < blurred
    assert guide.judge(found, f, found, [], blurred) == "blurred"


def test_tilt_missing_gives_the_tilt_hint_with_a_direction_then_sufficient() -> None:
    flat = [far(r, c) for (r, c) in POSITIONS] + [view_at(320, 240, 0.36)]
    kept = feats(*flat)
    bars = guide.progress(kept)
    assert bars["X"] == bars["Y"] == bars["Size"] == 1.0 and bars["Tilt-H"] < 0.01
    hint = guide.next_hint(kept)
    assert hint.startswith("tilt the board about its horizontal axis")
    # Top edge already towards the camera: ask for the other way.
    kept += feats(view_at(320, 240, 0.6, ax=30))
    assert "bottom edge towards the camera" in guide.next_hint(kept)
    kept += feats(view_at(320, 240, 0.6, ax=-30))
    hint = guide.next_hint(kept)
    assert hint.startswith("tilt the board about its vertical axis")
    kept += feats(view_at(320, 240, 0.6, ay=30), view_at(320, 240, 0.6, ay=-30))
    assert len(kept) >= guide.MIN_GUIDED_VIEWS
    assert guide.sufficient(kept) and guide.next_hint(kept) == ""
    assert guide.bar_line(kept).count("#") == 50


def test_first_hint_and_annotated_frame() -> None:
    assert guide.next_hint([]).startswith("show the whole board")
    assert guide.bar_line([]).startswith("X [----------] Y [----------]")
    img = render(BOARD, *pose(320, 240, 0.6))
    found = Detector(BOARD).detect(img)
    out = annotate(img, found, BOARD, feats(view_at(320, 240, 0.6)), ["hold still"])
    assert out.shape == (H, W, 3)
    assert np.count_nonzero(np.any(out != cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), axis=2)) > 1000
