"""How well a set of calibration views covers what intrinsics need, and what to take next.

Three things decide whether intrinsics are well constrained (as in ROS ``camera_calibration``'s
X / Y / size / skew bars): corners in every part of the image (distortion is strongest at the
edges), the board seen at several distances, and the board tilted both ways (a fronto-parallel
board cannot separate the focal length from the distance). :func:`coverage` measures them and
says what is missing in words; :func:`coverage_picture` draws them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from edgefuse.calib.boards import View

GRID_COLS = 6
GRID_ROWS = 4
#: Tilt range (degrees, each axis) below which the focal length is poorly constrained.
MIN_TILT_RANGE_DEG = 30.0
#: Enough views for a stable result; fewer get a hint.
GOOD_VIEWS = 15


@dataclass
class CoverageReport:
    """Corner coverage of the image, spread of board tilts and sizes, and hints in words."""

    #: Corners per image cell, GRID_ROWS x GRID_COLS (row 0 at the top).
    grid: np.ndarray
    #: Board tilt around the camera's horizontal (x) and vertical (y) axes, per view, degrees.
    tilt_x_deg: list[float] = field(default_factory=list)
    tilt_y_deg: list[float] = field(default_factory=list)
    #: Board size per view as a fraction of the image width (extent of its corners).
    scale: list[float] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)

    @property
    def covered_fraction(self) -> float:
        """Fraction of image cells with at least one corner."""
        return float(np.count_nonzero(self.grid)) / self.grid.size

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [
            f"coverage: {self.covered_fraction:.0%} of image cells "
            f"({GRID_COLS}x{GRID_ROWS} grid) have corners",
        ]
        if self.tilt_x_deg:
            lines.append(
                f"tilt: {min(self.tilt_x_deg):+.0f}..{max(self.tilt_x_deg):+.0f} deg around the "
                f"horizontal axis, {min(self.tilt_y_deg):+.0f}..{max(self.tilt_y_deg):+.0f} deg "
                f"around the vertical axis; board size {min(self.scale):.0%}.."
                f"{max(self.scale):.0%} of the image width"
            )
        lines += [f"  - {h}" for h in self.hints] or ["  nothing obviously missing"]
        return "\n".join(lines)


_ROW_WORDS = ("top", "", "bottom")
_COL_WORDS = ("left", "", "right")


def _region(r: int, c: int) -> str:
    """Words for grid cell (r, c): the outermost rows and columns are the image's edges, the
    cells where they meet its corners, the rest its centre."""
    rr = 0 if r == 0 else 2 if r == GRID_ROWS - 1 else 1
    cc = 0 if c == 0 else 2 if c == GRID_COLS - 1 else 1
    words = [w for w in (_ROW_WORDS[rr], _COL_WORDS[cc]) if w]
    if not words:
        return "the centre"
    if len(words) == 2:
        return f"the {'-'.join(words)} corner"
    return f"the {words[0]} edge"


def region(r: int, c: int) -> str:
    """Words for coverage-grid cell (r, c): ``the top-left corner``, ``the left edge``,
    ``the centre``."""
    return _region(r, c)


def tilts(rvec: np.ndarray) -> tuple[float, float]:
    """Board tilt (degrees) around the camera's x (horizontal) and y (vertical) axes: the angle
    of the board normal from the optical axis, split per axis."""
    R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64))
    n = R[:, 2]
    if n[2] < 0:
        n = -n
    return math.degrees(math.atan2(n[1], n[2])), math.degrees(math.atan2(n[0], n[2]))


def coverage(
    views: Sequence[View],
    image_size: tuple[int, int],
    rvecs: Sequence[np.ndarray] = (),
) -> CoverageReport:
    """Measure the coverage of ``views`` (with their board rotations ``rvecs`` from a
    calibration, for the tilt spread) and list what is missing, most useful first."""
    w, h = image_size
    grid = np.zeros((GRID_ROWS, GRID_COLS), dtype=np.int64)
    scale = []
    for v in views:
        pts = v.image_points
        cols = np.clip((pts[:, 0] / w * GRID_COLS).astype(int), 0, GRID_COLS - 1)
        rows = np.clip((pts[:, 1] / h * GRID_ROWS).astype(int), 0, GRID_ROWS - 1)
        np.add.at(grid, (rows, cols), 1)
        scale.append(float(np.ptp(pts[:, 0]) / w))
    report = CoverageReport(grid=grid, scale=scale)
    for rv in rvecs:
        tx, ty = tilts(rv)
        report.tilt_x_deg.append(tx)
        report.tilt_y_deg.append(ty)
    hints = report.hints
    missing: dict[str, int] = {}
    for r in range(GRID_ROWS):
        for c in range(GRID_COLS):
            if grid[r, c] == 0:
                where = _region(r, c)
                missing[where] = missing.get(where, 0) + 1
    for where in sorted(missing, key=lambda k: -missing[k]):
        hints.append(f"move the board to {where} of the image (no corners there yet)")
    if report.tilt_x_deg:
        if np.ptp(report.tilt_x_deg) < MIN_TILT_RANGE_DEG:
            hints.append(
                "tilt it more around the horizontal axis (top edge towards, then away from the "
                f"camera; tilts so far span {np.ptp(report.tilt_x_deg):.0f} deg)"
            )
        if np.ptp(report.tilt_y_deg) < MIN_TILT_RANGE_DEG:
            hints.append(
                "tilt it more around the vertical axis (left edge towards, then away from the "
                f"camera; tilts so far span {np.ptp(report.tilt_y_deg):.0f} deg)"
            )
    if scale and max(scale) < 0.5:
        hints.append(
            f"bring the board closer: it spans at most {max(scale):.0%} of the image width"
        )
    if scale and min(scale) > 0.4:
        hints.append("also take views from farther away (the board always fills the image)")
    if len(views) < GOOD_VIEWS:
        hints.append(f"take more views: {len(views)} so far, {GOOD_VIEWS}-30 give a stable result")
    return report


def coverage_picture(
    image: np.ndarray,
    views: Sequence[View],
    report: CoverageReport,
    *,
    board_size: tuple[int, int] | None = None,
    title: str = "",
) -> np.ndarray:
    """An annotated BGR picture: left, ``image`` with the first view's corners drawn; right, the
    coverage heatmap (cells by corner count) with every view's corners; below, the hints."""
    img = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    left = img.copy()
    if views:
        v = views[0]
        if board_size is not None and len(v.image_points) == board_size[0] * board_size[1]:
            cv2.drawChessboardCorners(left, board_size, v.image_points.reshape(-1, 1, 2), True)
        else:
            for p in v.image_points:
                cv2.circle(left, (round(p[0]), round(p[1])), 4, (0, 255, 0), 1, cv2.LINE_AA)
    counts = report.grid.astype(np.float64)
    norm = (255 * counts / max(1.0, counts.max())).astype(np.uint8)
    heat = cv2.applyColorMap(
        cv2.resize(norm, (w, h), interpolation=cv2.INTER_NEAREST), cv2.COLORMAP_JET
    )
    right = cv2.addWeighted(img, 0.4, heat, 0.6, 0)
    for r in range(GRID_ROWS):
        for c in range(GRID_COLS):
            x0, y0 = c * w // GRID_COLS, r * h // GRID_ROWS
            cv2.rectangle(
                right,
                (x0, y0),
                ((c + 1) * w // GRID_COLS, (r + 1) * h // GRID_ROWS),
                (255, 255, 255),
                1,
            )
            if report.grid[r, c] == 0:
                cv2.putText(
                    right,
                    "missing",
                    (x0 + 4, y0 + 18),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    0.45,
                    (255, 255, 255),
                    1,
                    cv2.LINE_AA,
                )
    for i, v in enumerate(views):
        hue = np.array([[[int(179 * i / max(1, len(views))), 255, 255]]], dtype=np.uint8)
        color = tuple(int(x) for x in cv2.cvtColor(hue, cv2.COLOR_HSV2BGR)[0, 0])
        for p in v.image_points:
            cv2.circle(right, (round(p[0]), round(p[1])), 2, color, -1, cv2.LINE_AA)
    lines = ([title] if title else []) + report.summary().splitlines()
    band = np.full((22 * len(lines) + 10, 2 * w, 3), 32, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(
            band,
            line[: 2 * w // 8],
            (8, 22 * (i + 1)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            (230, 230, 230),
            1,
            cv2.LINE_AA,
        )
    return np.vstack([np.hstack([left, right]), band])
