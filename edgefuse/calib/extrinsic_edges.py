"""Board-edge constraints of target-based extrinsic calibration.

A plane says nothing about where the board lies *within* it: with plane constraints alone, the
in-plane offset of a range sensor is only seen through the spread of the board's tilts (weakly:
with tilts of up to 30 degrees, a few millimetres of plane noise become centimetres sideways).
The board's outline gives it directly. A range sensor samples along scan lines (a lidar's rings,
a depth camera's image rows); where a scan line leaves the board, the board's edge lies between
the last sample on the board and the next one along the line. Both rays are intersected with the
board's fitted plane and the midpoint is one **edge point**: uniform along the line over the gap
between them, so its error across the edge has the sigma ``gap · |cos| / sqrt(12)``. A dropout
at the edge moves the point inwards by a sample; it does so on both sides of the board alike, so
the board's centre stays where it is.

Scan lines are found from the points alone: a lidar's rings share one elevation (in its own
frame), an undistorted depth camera's rows one ``y / z`` (and its columns one ``x / z``);
whichever grouping puts most points on lines of several samples is the sensor's. Points that
fit neither give no edge points, and the calibration goes on with the planes. (A depth image
with strong lens distortion, back-projected, has curved rows: not handled.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: Samples a scan line needs on the board to say where it leaves it.
_MIN_LINE_POINTS = 3
#: Keys closer than this (radians, or normalised image units) are one scan line: a ring's
#: elevation or a pixel row's y / z is the same for all its points up to rounding.
_LINE_TOL = 1e-5
#: A crossing within this angle of running along an edge says little about it: skipped.
_MIN_CROSS_COS = 0.3


@dataclass(frozen=True)
class EdgePoints:
    """Where the board's outline crosses the scan lines (sensor frame)."""

    #: (M, 3) edge points on the board's fitted plane.
    points: np.ndarray
    #: (M, 3) unit vectors along the scan line at each point (the direction of its error).
    scan: np.ndarray
    #: (M,) gap (m) between the last sample on the board and the next one along the line.
    gap_m: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


def _rings(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1])), np.arctan2(p[:, 1], p[:, 0])


def _ring_ray(line: float, s: np.ndarray) -> np.ndarray:
    c = math.cos(line)
    return np.column_stack([c * np.cos(s), c * np.sin(s), np.full(len(s), math.sin(line))])


def _rows(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.where(p[:, 2] > 1e-6, p[:, 2], np.nan)
    return p[:, 1] / z, p[:, 0] / z


def _row_ray(line: float, s: np.ndarray) -> np.ndarray:
    return np.column_stack([s, np.full(len(s), line), np.ones(len(s))])


def _image_columns(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v, u = _rows(p)
    return u, v


def _image_column_ray(line: float, s: np.ndarray) -> np.ndarray:
    return np.column_stack([np.full(len(s), line), s, np.ones(len(s))])


_Key = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
_Ray = Callable[[float, np.ndarray], np.ndarray]
#: A lidar's rings, or an image's rows and columns (the first of each decides which the sensor
#: is). A lidar's columns are left out: its rings are too far apart (over a degree) for them to
#: say much, and a column running on down the board's stand would move its edge a ring.
_FAMILIES: list[list[tuple[_Key, _Ray]]] = [
    [(_rings, _ring_ray)],
    [(_rows, _row_ray), (_image_columns, _image_column_ray)],
]


def _lines(key: np.ndarray) -> list[np.ndarray]:
    """Indices of the points, grouped into scan lines by their key."""
    ok = np.flatnonzero(np.isfinite(key))
    order = ok[np.argsort(key[ok], kind="stable")]
    if not len(order):
        return []
    cuts = np.flatnonzero(np.diff(key[order]) > _LINE_TOL) + 1
    return list(np.split(order, cuts))


def edge_points(points: np.ndarray, n: np.ndarray, d: float) -> EdgePoints:
    """Edge points (see the module docstring) of a board's points ``(N, 3)`` (sensor frame),
    on the board plane ``n · x = d``; empty when the points show no scan lines."""
    empty = EdgePoints(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    best_score, family = 0.6, None
    for fam in _FAMILIES:
        line_key, _ = fam[0][0](points)
        covered = sum(len(ln) for ln in _lines(line_key) if len(ln) >= _MIN_LINE_POINTS)
        # Most points on lines of several samples: that grouping is the sensor's.
        score = covered / max(1, len(points))
        if score > best_score:
            best_score, family = score, fam
    if family is None:
        return empty
    parts = [_crossings(points, n, d, key_of, ray_of) for key_of, ray_of in family]
    return EdgePoints(
        np.concatenate([q.points for q in parts]),
        np.concatenate([q.scan for q in parts]),
        np.concatenate([q.gap_m for q in parts]),
    )


def _crossings(
    points: np.ndarray, n: np.ndarray, d: float, key_of: _Key, ray_of: _Ray
) -> EdgePoints:
    """Edge points where the scan lines of one grouping leave the board."""
    empty = EdgePoints(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    line_key, scan = key_of(points)
    lines = [ln for ln in _lines(line_key) if len(ln) >= _MIN_LINE_POINTS]
    if not lines:
        return empty
    all_steps = np.concatenate([np.diff(np.sort(scan[ln])) for ln in lines])
    all_steps = all_steps[all_steps > 1e-9]
    if not len(all_steps):
        return empty
    step = float(np.median(all_steps))
    out_p, out_s, out_g = [], [], []
    for ln in lines:
        s = np.sort(scan[ln])
        key = float(np.median(line_key[ln]))
        # Last sample on the board and the next one off it, at each end of the line.
        rays = ray_of(key, np.array([s[0], s[-1], s[0] - step, s[-1] + step]))
        cos = rays @ n
        if np.any(np.abs(cos) < 1e-6):
            continue
        hits = rays * (d / cos)[:, None]
        for a, b in ((hits[0], hits[2]), (hits[1], hits[3])):
            gap = b - a
            g = float(np.linalg.norm(gap))
            if g <= 0 or not np.isfinite(g):
                continue
            out_p.append((a + b) / 2)
            out_s.append(gap / g)
            out_g.append(g)
    if not out_p:
        return empty
    return EdgePoints(np.array(out_p), np.array(out_s), np.array(out_g))


@dataclass(frozen=True)
class EdgeAssignment:
    """Which side of the board each edge point is on, fixed for the refinement so that its
    residual is smooth: ``axis`` 0 (x, left/right sides) or 1 (y, top/bottom), at ``edge_m``."""

    points: np.ndarray
    axis: np.ndarray
    edge_m: np.ndarray
    sigma_m: np.ndarray


def assign_edges(
    edges: EdgePoints,
    T_sensor_board: np.ndarray,
    extent: tuple[float, float, float, float],
    *,
    max_off_m: float,
    floor_m: float = 0.001,
) -> EdgeAssignment:
    """Each edge point's nearest side of the board's extent ``(x0, x1, y0, y1)`` under the
    board pose ``T_sensor_board``; points farther than ``max_off_m`` from every side, or
    whose scan line runs almost along it, are left out (a pole, a corner, a stray point)."""
    x0, x1, y0, y1 = extent
    R, t = T_sensor_board[:3, :3], T_sensor_board[:3, 3]
    q = (edges.points - t) @ R  # into the board frame
    sq = edges.scan @ R
    sides = np.array([x0, x1, y0, y1])
    axis_of_side = np.array([0, 0, 1, 1])
    coord = q[:, axis_of_side]  # (M, 4)
    dist = np.abs(coord - sides)
    # Only the part of a side that exists: a point beyond a side's ends is not on it.
    along_ok = np.column_stack(
        [
            (q[:, 1] > y0 - max_off_m) & (q[:, 1] < y1 + max_off_m),
            (q[:, 1] > y0 - max_off_m) & (q[:, 1] < y1 + max_off_m),
            (q[:, 0] > x0 - max_off_m) & (q[:, 0] < x1 + max_off_m),
            (q[:, 0] > x0 - max_off_m) & (q[:, 0] < x1 + max_off_m),
        ]
    )
    dist = np.where(along_ok, dist, np.inf)
    side = np.argmin(dist, axis=1)
    near = dist[np.arange(len(q)), side] < max_off_m
    ax = axis_of_side[side]
    cross = np.abs(sq[np.arange(len(q)), ax])
    keep = near & (cross > _MIN_CROSS_COS)
    sigma = np.sqrt((edges.gap_m * cross) ** 2 / 12.0 + floor_m**2)
    return EdgeAssignment(edges.points[keep], ax[keep], sides[side][keep], sigma[keep])


def edge_residuals(a: EdgeAssignment, T_board_sensor: np.ndarray) -> np.ndarray:
    """Offsets (in sigmas) of the edge points from their side of the board, with the board
    pose ``T_board_sensor`` (sensor frame into board frame)."""
    q = a.points @ T_board_sensor[:3, :3].T + T_board_sensor[:3, 3]
    return np.asarray((q[np.arange(len(q)), a.axis] - a.edge_m) / a.sigma_m)
