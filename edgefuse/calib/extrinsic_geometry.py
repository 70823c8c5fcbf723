"""Geometry of target-based extrinsic calibration: transforms, planes fitted along the range
sensor's lines of sight, the board's pose from the camera (PnP) and its points in a range
sensor's data (Open3D RANSAC first, then the board's extent). Used by
:mod:`edgefuse.calib.extrinsic`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edgefuse.calib.boards import Board, CalibrationError, View
from edgefuse.calib.model import CameraIntrinsics
from edgefuse.errors import require_extra

if TYPE_CHECKING:
    from edgefuse.calib.extrinsic import ExtrinsicOptions

#: A normal more than this (plus the search angle) off the expected one is not the board.
_MAX_NORMAL_OFF_DEG = 30.0

# --- small geometry helpers --------------------------------------------------------------------


def transform(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Points (N, 3) through a 4x4 transform."""
    return np.asarray(p @ T[:3, :3].T + T[:3, 3])


def pose_matrix(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3, 1))[0]
    T[:3, 3] = np.asarray(tvec, np.float64).ravel()
    return T


def pose_vector(T: np.ndarray) -> np.ndarray:
    return np.concatenate([cv2.Rodrigues(np.asarray(T[:3, :3], np.float64))[0].ravel(), T[:3, 3]])


def rotation_error_deg(A: np.ndarray, B: np.ndarray) -> float:
    """Angle (degrees) of the rotation between the rotation parts of two transforms."""
    R = A[:3, :3] @ B[:3, :3].T
    return math.degrees(math.acos(float(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


def board_extent(board: Board, margin_m: float) -> tuple[float, float, float, float]:
    """``(x0, x1, y0, y1)`` of the board (outer squares plus ``margin_m``) in its own frame."""
    c, r = board.corners
    sq = board.square_m
    return (-sq - margin_m, c * sq + margin_m, -sq - margin_m, r * sq + margin_m)


def fit_plane(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Plane ``n · x = d`` (``d > 0``) of range points (N, 3) measured along their lines of
    sight from the sensor's origin. A range sensor's noise lies along the ray, not across the
    plane, so an orthogonal fit would tilt the plane; on the plane ``(n / d) · u = 1 / r`` for
    a point at range ``r`` in direction ``u``, which is linear in ``n / d``."""
    r = np.linalg.norm(points, axis=1)
    u = points / r[:, None]
    w, *_ = np.linalg.lstsq(u, 1.0 / r, rcond=None)
    d = 1.0 / float(np.linalg.norm(w))
    return np.asarray(w * d), d


def range_residuals(points: np.ndarray, n: np.ndarray, d: float) -> np.ndarray:
    """Measured minus predicted range (m) of points on the plane ``n · x = d``, along their
    lines of sight."""
    r = np.linalg.norm(points, axis=1)
    cos = np.maximum(points @ n / r, 1e-6)
    return np.asarray(r - d / cos)


def robust_plane(
    points: np.ndarray, floor_m: float = 0.002
) -> tuple[np.ndarray, float, float, np.ndarray]:
    """Plane of ``points`` with outliers gated at 3.5 robust sigmas of the range residual:
    (n, d, sigma, inlier mask)."""
    keep = np.ones(len(points), bool)
    n, d = fit_plane(points)
    sigma = floor_m
    for _ in range(4):
        res = range_residuals(points, n, d)
        sigma = max(floor_m, 1.4826 * float(np.median(np.abs(res[keep] - np.median(res[keep])))))
        new = np.abs(res) < 3.5 * sigma
        if new.sum() < 3:
            break
        keep = new
        n, d = fit_plane(points[keep])
    return n, d, sigma, keep


# --- per-pose measurements ---------------------------------------------------------------------


def solve_pnp(view: View, camera: CameraIntrinsics) -> tuple[np.ndarray, float]:
    """``T_cam_board`` of a view and its reprojection RMS (px)."""
    if camera.distortion_model == "equidistant":
        raise CalibrationError(
            "fisheye (equidistant) cameras are not supported by camera-lidar/depth yet: "
            "calibrate with a pinhole model"
        )
    obj = view.object_points.astype(np.float64)
    img = view.image_points.astype(np.float64)
    # IPPE gives both poses of a planar target (a far, tilted board has two that fit almost
    # equally well); keep the one that fits best after refinement.
    n, rvecs, tvecs, _ = cv2.solvePnPGeneric(obj, img, camera.K, camera.D, flags=cv2.SOLVEPNP_IPPE)
    if not n:
        raise CalibrationError(f"{view.name}: solvePnP failed on the board corners")
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for r0, t0 in zip(rvecs, tvecs, strict=True):
        r, t = cv2.solvePnPRefineLM(obj, img, camera.K, camera.D, r0.copy(), t0.copy())
        uv, _ = cv2.projectPoints(obj, r, t, camera.K, camera.D)
        err = float(np.sum((uv.reshape(-1, 2) - img) ** 2))
        if best is None or err < best[0]:
            best = (err, r, t)
    assert best is not None
    _, rvec, tvec = best
    uv, _ = cv2.projectPoints(obj, rvec, tvec, camera.K, camera.D)
    rms = float(np.sqrt(np.mean(np.sum((uv.reshape(-1, 2) - img) ** 2, axis=1))))
    return pose_matrix(rvec, tvec), rms


def find_board_plane(
    points: np.ndarray,
    T_sensor_board: np.ndarray,
    board: Board,
    opts: ExtrinsicOptions,
) -> np.ndarray | None:
    """Indices of the points on the board near where ``T_sensor_board`` puts it, found by
    Open3D RANSAC plane segmentation (see the module docstring), or None."""
    o3d: Any = require_extra("open3d", "lidar")
    x0, x1, y0, y1 = board_extent(board, opts.margin_m)
    centre = transform(T_sensor_board, np.array([[(x0 + x1) / 2, (y0 + y1) / 2, 0.0]]))[0]
    normal = T_sensor_board[:3, 2]
    radius = 0.5 * math.hypot(x1 - x0, y1 - y0) + opts.search_m
    near = np.flatnonzero(np.linalg.norm(points - centre, axis=1) < radius)
    max_off = math.radians(_MAX_NORMAL_OFF_DEG + opts.search_deg)
    o3d.utility.random.seed(0)
    for _ in range(3):
        if len(near) < opts.min_points:
            return None
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[near]))
        model, inl = pcd.segment_plane(
            distance_threshold=opts.ransac_threshold_m, ransac_n=3, num_iterations=500
        )
        inl = np.asarray(inl, np.int64)
        n = np.asarray(model[:3], np.float64)
        n /= np.linalg.norm(n)
        if len(inl) >= opts.min_points and abs(float(n @ normal)) >= math.cos(max_off):
            return np.asarray(near[inl])
        near = np.delete(near, inl)  # the ground or a wall: try the next plane
    return None


def board_points(
    points: np.ndarray,
    T_sensor_board: np.ndarray,
    board: Board,
    opts: ExtrinsicOptions,
    *,
    tol_m: float,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Indices of the points inside the board's extent (grown by ``tol_m``) and on its plane
    (robust fit), with that plane ``(n, d)`` and its residual sigma (m)."""
    q = transform(np.linalg.inv(T_sensor_board), points)
    x0, x1, y0, y1 = board_extent(board, opts.margin_m)
    inside = (
        (q[:, 0] > x0 - tol_m)
        & (q[:, 0] < x1 + tol_m)
        & (q[:, 1] > y0 - tol_m)
        & (q[:, 1] < y1 + tol_m)
        # Wide across the plane: a narrow gate centred on the current estimate would cut the
        # noise asymmetrically and pull the fit towards that estimate; the robust fit below
        # gates around the fitted plane itself.
        & (np.abs(q[:, 2]) < 0.25)
    )
    idx = np.flatnonzero(inside)
    if len(idx) < 3:
        return idx, np.zeros(3), 0.0, 0.0
    n, d, sigma, keep = robust_plane(points[idx])
    return idx[keep], n, d, sigma
