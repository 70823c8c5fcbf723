"""Projection overlays: range points drawn on a camera image, coloured by range, to check an
extrinsic calibration by eye (points on an object's edges should stop at its edges)."""

from __future__ import annotations

import cv2
import numpy as np

from edgefuse.calib.model import CameraIntrinsics


def project_points(
    points: np.ndarray, T_cam_sensor: np.ndarray, camera: CameraIntrinsics
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (M, 2) of the points (N, 3, sensor frame) in front of the camera and inside its
    image, with the index (M,) of each into ``points``. Uses the camera's lens model."""
    p = np.asarray(points, np.float64) @ T_cam_sensor[:3, :3].T + T_cam_sensor[:3, 3]
    front = np.flatnonzero(p[:, 2] > 0.1)
    if not len(front):
        return np.zeros((0, 2)), front
    q = p[front]
    # Beyond ~56 degrees off axis a lens polynomial stops being monotonic: such points are
    # outside the image anyway, so keep them out of the projection.
    xy = q[:, :2] / q[:, 2:3]
    near_axis = np.linalg.norm(xy, axis=1) < 1.5
    front, q = front[near_axis], q[near_axis]
    if camera.distortion_model == "equidistant":
        uv = cv2.fisheye.projectPoints(
            q.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), camera.K, camera.D
        )[0]
    else:
        uv = cv2.projectPoints(q, np.zeros(3), np.zeros(3), camera.K, camera.D)[0]
    uv = uv.reshape(-1, 2)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0)
    inside &= uv[:, 1] < camera.height
    return uv[inside], front[inside]


def draw_overlay(
    image: np.ndarray,
    points: np.ndarray,
    T_cam_sensor: np.ndarray,
    camera: CameraIntrinsics,
    *,
    max_range_m: float | None = None,
    radius_px: int = 2,
    title: str = "",
) -> np.ndarray:
    """A copy of ``image`` (BGR or grey) with ``points`` drawn where they project, coloured by
    range from the sensor (turbo colour map, near = blue, far = red; ``max_range_m`` defaults to
    the 98th percentile of the drawn points' ranges)."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    uv, idx = project_points(points, T_cam_sensor, camera)
    if len(idx):
        rng = np.linalg.norm(np.asarray(points, np.float64)[idx, :3], axis=1)
        top = max_range_m or float(np.percentile(rng, 98)) or 1.0
        level = np.clip(rng / top * 255, 0, 255).astype(np.uint8)
        colours = cv2.applyColorMap(level.reshape(-1, 1), cv2.COLORMAP_TURBO).reshape(-1, 3)
        for i in np.argsort(-rng):  # far first, so near points stay on top
            c = colours[i]
            center = (round(float(uv[i, 0])), round(float(uv[i, 1])))
            cv2.circle(out, center, radius_px, (int(c[0]), int(c[1]), int(c[2])), -1)
    if title:
        cv2.putText(out, title, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    return out
