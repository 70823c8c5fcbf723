"""Guidance for taking calibration views: which frames to keep and what view to take next.

Pure functions of the views accepted so far and the current detection, as in ROS
``camera_calibration``: each view is reduced to a few numbers (:class:`ViewFeatures`: where the
board is, how big, how tilted, which image cells its corners fall in); a frame is kept only
when the board is still and sharp and the view is not a near-duplicate of one already kept
(:func:`judge`); the progress bars X, Y, Size, Tilt-H, Tilt-V (:func:`progress`) fill as the
kept views spread over the image, over distances and over tilts around both axes; and
:func:`next_hint` says in words what is missing most, until :func:`sufficient`.

Tilts are measured from the board's pose found with a guessed camera (focal length 0.8 of the
image width, principal point at the centre) before any calibration exists: a wrong focal length
scales the angles somewhat but keeps their signs and order, which is all guidance needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from edgefuse.calib.boards import View
from edgefuse.calib.coverage import GRID_COLS, GRID_ROWS, MIN_TILT_RANGE_DEG, region, tilts

#: Focal length guess, fraction of the image width (a 64 deg horizontal field of view).
GUESS_FOCAL = 0.8
#: Views closer than this (see :func:`distance`) to a kept one add nothing: rejected.
DUPLICATE_DISTANCE = 0.15
#: Tilt difference that counts as much as moving the board across the whole image.
TILT_SCALE_DEG = 60.0
#: The board is still when its corners moved less than this (mean, pixels) since the last frame.
STILL_PX = 2.0
#: The board is sharp when its black/white edges are at most this wide (pixels, 10-90 %).
MAX_EDGE_WIDTH_PX = 5.0
#: Spreads that fill the X, Y and Size bars (ROS camera_calibration's ranges).
TARGET_RANGE = {"X": 0.7, "Y": 0.7, "Size": 0.4}
#: Fraction of the coverage grid's cells that must hold corners.
MIN_CELL_FRACTION = 0.8
#: Fewest kept views before coverage can be called sufficient.
MIN_GUIDED_VIEWS = 12
#: A board at most this big (Size) is "far"; at least this big, "close".
FAR_SIZE = 0.3
CLOSE_SIZE = 0.5

BAR_NAMES = ("X", "Y", "Size", "Tilt-H", "Tilt-V")


@dataclass(frozen=True)
class ViewFeatures:
    """What one view contributes to coverage."""

    #: Board position across the image, 0 (board at the left edge) .. 1 (at the right edge).
    x: float
    #: Board position down the image, 0 (top edge) .. 1 (bottom edge).
    y: float
    #: sqrt(board area / image area): 1 when the board fills the image.
    size: float
    #: Tilt around the camera's horizontal axis, degrees; < 0: top edge towards the camera.
    tilt_x_deg: float
    #: Tilt around the camera's vertical axis, degrees; < 0: left edge towards the camera.
    tilt_y_deg: float
    #: Coverage-grid cells (row, col) holding at least one corner.
    cells: frozenset[tuple[int, int]]


def guess_camera(image_size: tuple[int, int]) -> np.ndarray:
    """A plausible camera matrix for an uncalibrated camera of ``image_size`` (w, h)."""
    w, h = image_size
    f = GUESS_FOCAL * w
    return np.array([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])


def _outline(view: View) -> np.ndarray:
    """The convex hull of the view's corners (M, 2)."""
    return np.asarray(cv2.convexHull(view.image_points.astype(np.float32)).reshape(-1, 2))


def view_features(
    view: View, image_size: tuple[int, int], camera_matrix: np.ndarray | None = None
) -> ViewFeatures:
    """The :class:`ViewFeatures` of ``view`` (tilts from its pose under ``camera_matrix``, or
    :func:`guess_camera` when None)."""
    w, h = image_size
    pts = view.image_points.astype(np.float64)
    area = float(cv2.contourArea(_outline(view).astype(np.float32)))
    size = math.sqrt(max(area, 0.0) / (w * h))
    # As ROS: the centre normalised by the room the board leaves, so that a large board
    # touching an edge also reads 0 or 1.
    border = math.sqrt(max(area, 0.0))
    cx, cy = pts.mean(axis=0)
    x = min(1.0, max(0.0, (cx - border / 2) / max(1.0, w - border)))
    y = min(1.0, max(0.0, (cy - border / 2) / max(1.0, h - border)))
    K = guess_camera(image_size) if camera_matrix is None else camera_matrix
    tx = ty = 0.0
    # IPPE is the planar solver, but it returns NaN for an exactly fronto-parallel board.
    for method in (cv2.SOLVEPNP_IPPE, cv2.SOLVEPNP_ITERATIVE):
        ok, rvec, _ = cv2.solvePnP(
            view.object_points.astype(np.float64), pts, K, None, flags=method
        )
        if ok and np.all(np.isfinite(rvec)):
            tx, ty = tilts(rvec)
            break
    cols = np.clip((pts[:, 0] / w * GRID_COLS).astype(int), 0, GRID_COLS - 1)
    rows = np.clip((pts[:, 1] / h * GRID_ROWS).astype(int), 0, GRID_ROWS - 1)
    cells = frozenset(zip(rows.tolist(), cols.tolist(), strict=True))
    return ViewFeatures(x, y, size, tx, ty, cells)


def distance(a: ViewFeatures, b: ViewFeatures) -> float:
    """How different two views are for calibration: position, size and tilt differences
    summed (ROS's parameter distance, with tilts per :data:`TILT_SCALE_DEG`)."""
    return (
        abs(a.x - b.x)
        + abs(a.y - b.y)
        + abs(a.size - b.size)
        + (abs(a.tilt_x_deg - b.tilt_x_deg) + abs(a.tilt_y_deg - b.tilt_y_deg)) / TILT_SCALE_DEG
    )


def is_duplicate(f: ViewFeatures, accepted: Sequence[ViewFeatures]) -> bool:
    """True when ``f`` is within :data:`DUPLICATE_DISTANCE` of a kept view and covers no
    image cell the kept views miss."""
    if not accepted:
        return False
    covered = frozenset().union(*(a.cells for a in accepted))
    if f.cells - covered:
        return False
    return min(distance(f, a) for a in accepted) < DUPLICATE_DISTANCE


def motion_px(view: View, previous: View | None) -> float:
    """Mean movement (pixels) of the corners both views share; inf when they share none."""
    if previous is None:
        return math.inf
    _, ia, ib = np.intersect1d(view.ids, previous.ids, return_indices=True)
    if len(ia) == 0:
        return math.inf
    d = view.image_points[ia].astype(np.float64) - previous.image_points[ib]
    return float(np.mean(np.linalg.norm(d, axis=1)))


def edge_width_px(gray: np.ndarray, view: View) -> float:
    """Width (pixels) of the board's black/white edges: the contrast over the steepest
    gradients inside the board (a sharp edge is 1-2 px wide; blur widens it)."""
    x, y, bw, bh = cv2.boundingRect(_outline(view).astype(np.float32))
    patch = gray[max(0, y) : y + bh, max(0, x) : x + bw].astype(np.float32)
    if patch.size < 16:
        return math.inf
    gx = cv2.Sobel(patch, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(patch, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    grad = np.sqrt(gx * gx + gy * gy)
    lo, hi = np.percentile(patch, [5, 95])
    steep = float(np.percentile(grad, 99))
    if steep <= 0:
        return math.inf
    # Sobel / 8 is the slope per pixel. A step of contrast C blurred by a Gaussian of sigma s
    # has a steepest slope C / (2.5 s) and a 10-90 % width of 2.56 s: width ~ C / slope.
    return float(hi - lo) / steep


Verdict = Literal["accepted", "no board", "moving", "blurred", "duplicate"]


def judge(
    view: View | None,
    features: ViewFeatures | None,
    previous: View | None,
    accepted: Sequence[ViewFeatures],
    edge_px: float,
) -> Verdict:
    """Whether to keep the current frame: ``no board``, ``moving`` (corners moved
    :data:`STILL_PX` or more since the last frame), ``blurred`` (edges wider than
    :data:`MAX_EDGE_WIDTH_PX`), ``duplicate`` (see :func:`is_duplicate`) or ``accepted``."""
    if view is None or features is None:
        return "no board"
    if motion_px(view, previous) >= STILL_PX:
        return "moving"
    if edge_px > MAX_EDGE_WIDTH_PX:
        return "blurred"
    if is_duplicate(features, accepted):
        return "duplicate"
    return "accepted"


def _both_ways(tilts_deg: Sequence[float]) -> float:
    """Tilt progress: half the bar for a tilt of ``MIN_TILT_RANGE_DEG / 2`` one way, half the
    other way (one-sided tilts leave the sign of the error in the principal point open)."""
    half = MIN_TILT_RANGE_DEG / 2
    pos = min(half, max(0.0, max(tilts_deg)))
    neg = min(half, max(0.0, -min(tilts_deg)))
    return (pos + neg) / MIN_TILT_RANGE_DEG


def progress(accepted: Sequence[ViewFeatures]) -> dict[str, float]:
    """Bars in 0..1 (:data:`BAR_NAMES`): spread of X, Y and Size against
    :data:`TARGET_RANGE`; each tilt full at ``MIN_TILT_RANGE_DEG / 2`` (15 deg) both ways."""
    if not accepted:
        return dict.fromkeys(BAR_NAMES, 0.0)
    spans = {
        "X": np.ptp([a.x for a in accepted]) / TARGET_RANGE["X"],
        "Y": np.ptp([a.y for a in accepted]) / TARGET_RANGE["Y"],
        "Size": np.ptp([a.size for a in accepted]) / TARGET_RANGE["Size"],
        "Tilt-H": _both_ways([a.tilt_x_deg for a in accepted]),
        "Tilt-V": _both_ways([a.tilt_y_deg for a in accepted]),
    }
    return {k: float(min(1.0, v)) for k, v in spans.items()}


def cell_fraction(accepted: Sequence[ViewFeatures]) -> float:
    """Fraction of the coverage grid's cells holding corners of some kept view."""
    covered = frozenset().union(*(a.cells for a in accepted)) if accepted else frozenset()
    return len(covered) / (GRID_ROWS * GRID_COLS)


def _empty_cells(accepted: Sequence[ViewFeatures]) -> dict[str, tuple[int, int]]:
    """Per image region (see :func:`~edgefuse.calib.coverage.region`): (empty cells, cells)."""
    covered = frozenset().union(*(a.cells for a in accepted)) if accepted else frozenset()
    out: dict[str, tuple[int, int]] = {}
    for r in range(GRID_ROWS):
        for c in range(GRID_COLS):
            where = region(r, c)
            empty, total = out.get(where, (0, 0))
            out[where] = (empty + ((r, c) not in covered), total + 1)
    return out


def missing_regions(accepted: Sequence[ViewFeatures]) -> list[str]:
    """Image regions ("the top-left corner", "the bottom edge", ...) with empty grid cells:
    regions with no corner at all first, then by the number of empty cells."""
    cells = _empty_cells(accepted)
    missing = [w for w, (empty, _) in cells.items() if empty]
    return sorted(missing, key=lambda w: (cells[w][0] < cells[w][1], -cells[w][0]))


def _wholly_empty(accepted: Sequence[ViewFeatures]) -> list[str]:
    """Regions without any corner, in :func:`missing_regions` order."""
    cells = _empty_cells(accepted)
    return [w for w in missing_regions(accepted) if cells[w][0] == cells[w][1]]


def sufficient(accepted: Sequence[ViewFeatures], min_views: int = MIN_GUIDED_VIEWS) -> bool:
    """Coverage good enough to calibrate: every bar full, :data:`MIN_CELL_FRACTION` of the
    cells covered and at least ``max(min_views, MIN_GUIDED_VIEWS)`` views."""
    return (
        len(accepted) >= max(min_views, MIN_GUIDED_VIEWS)
        and all(v >= 1.0 for v in progress(accepted).values())
        and cell_fraction(accepted) >= MIN_CELL_FRACTION
    )


def next_hint(accepted: Sequence[ViewFeatures], min_views: int = MIN_GUIDED_VIEWS) -> str:
    """What view to take next, in words; ``""`` once :func:`sufficient`. Order: an image region
    without any corner (a corner or edge of the image), then regions with gaps while the cells
    or the X / Y bars are short, then distance (closer, farther), tilt around the horizontal
    then the vertical axis, remaining gaps, then more views."""
    if not accepted:
        return "show the whole board to the camera and hold it still"
    if sufficient(accepted, min_views):
        return ""
    bars = progress(accepted)
    regions = missing_regions(accepted)
    empty = _wholly_empty(accepted)
    if empty or (
        regions and (cell_fraction(accepted) < MIN_CELL_FRACTION or bars["X"] < 1 or bars["Y"] < 1)
    ):
        return f"move the board to {(empty or regions)[0]} of the image"
    sizes = [a.size for a in accepted]
    if bars["Size"] < 1:
        if max(sizes) < CLOSE_SIZE:
            return f"bring the board closer (it fills at most {max(sizes):.0%} of the image size)"
        return "move the board farther away (or take a view with it small in the image)"
    for key, attr, axis, ends in (
        ("Tilt-H", "tilt_x_deg", "horizontal", ("top", "bottom")),
        ("Tilt-V", "tilt_y_deg", "vertical", ("left", "right")),
    ):
        if bars[key] < 1:
            vals = [getattr(a, attr) for a in accepted]
            # Negative tilt: the first-named edge (top / left) is towards the camera.
            towards = ends[0] if abs(max(vals)) > abs(min(vals)) else ends[1]
            return (
                f"tilt the board about its {axis} axis: {towards} edge towards the camera, "
                "about 30 deg"
            )
    if regions:
        return f"move the board to {regions[0]} of the image"
    need = max(min_views, MIN_GUIDED_VIEWS) - len(accepted)
    return f"take {need} more views anywhere, each a little different"


def bar_line(accepted: Sequence[ViewFeatures], width: int = 10) -> str:
    """The progress bars as one line of text: ``X [#####-----] Y [...] ...``."""
    parts = []
    for name, v in progress(accepted).items():
        n = math.floor(v * width)  # a bar shows full only when it is
        parts.append(f"{name} [{'#' * n}{'-' * (width - n)}]")
    return " ".join(parts) + f" cells {cell_fraction(accepted):.0%}"
