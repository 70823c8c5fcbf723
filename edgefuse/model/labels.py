"""Which labelled objects count, and the training targets made of them (numpy only).

Evaluation and training agree on one rule. An object *counts* when its centre lies on the BEV
grid, in the camera's horizontal field of view (where every modality can see and a 2D box
exists), and at least ``min_visibility`` of its silhouette is visible from the camera (the
lidar and depth camera sit beside it, so what is hidden from one is mostly hidden from all).
An object in view but hidden is *ignored*: neither a miss when not found nor a false positive
when found (nuScenes drops boxes no sensor sees, for the same reason).

Targets (CenterPoint-style) on the head's grid: per class a Gaussian peak at each object's centre
cell, and at that cell its box (see ``network.BOX_CHANNELS``), for the counted objects and for
every object on the grid outside the camera's view (the lidar sees all around: three times the
examples for the geometry, though only the view is scored). A weight map zeroes the loss around
ignored objects.

Numpy and OpenCV only (no torch): the live scorer (:mod:`edgefuse.model.live`) applies the same
rule in a pipeline that has no PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edgefuse.calib.model import RigCalibration
from edgefuse.model.metrics import FrameDetections, FrameTruth
from edgefuse.runtime.postprocess import Detections, GridSpec

#: Share of the silhouette the camera must see for an object to count.
MIN_VISIBILITY = 0.05
#: Distance rings (m) of the audio encoder's auxiliary acoustic-scene target.
AUDIO_RINGS_M = (10.0, 20.0, 40.0)
#: Detections this close to an object nobody can see are not false positives.
IGNORE_RADIUS_M = 2.0


def project_grid(
    rig: RigCalibration, grid: GridSpec, *, z_m: float, camera: str = "camera"
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (cells, 2) of each grid cell's centre raised to height ``z_m`` in
    ``camera``, and whether it is in front of the camera and inside the image's columns."""
    cal = rig.sensor(camera)
    if cal.camera is None:
        raise ValueError(f"sensor {camera!r} has no intrinsics")
    cam = cal.camera
    rows, cols = grid.shape
    x = grid.x_min_m + (np.arange(rows) + 0.5) * grid.cell_m
    y = grid.y_min_m + (np.arange(cols) + 0.5) * grid.cell_m
    gx, gy = np.meshgrid(x, y, indexing="ij")
    T_cam_base = np.linalg.inv(cal.T)
    p = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z_m)], -1)
    pc = p @ T_cam_base[:3, :3].T + T_cam_base[:3, 3]
    front = pc[:, 2] > 0.5
    xy = pc[:, :2] / np.where(front, pc[:, 2], 1.0)[:, None]
    xy = np.clip(xy, -1.5, 1.5)  # beyond this the lens polynomial folds back
    uv, _ = cv2.projectPoints(np.c_[xy, np.ones(len(xy))], np.zeros(3), np.zeros(3), cam.K, cam.D)
    uv = uv.reshape(-1, 2)
    inside = front & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width)
    return uv, inside


def camera_view(rig: RigCalibration, grid: GridSpec, *, camera: str = "camera") -> np.ndarray:
    """(cells,) 1.0 where the cell's bearing (its point 1 m above the ground) is in the image:
    the camera's horizontal view on the grid, which the network also gets as an input."""
    return project_grid(rig, grid, z_m=1.0, camera=camera)[1].astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class Objects:
    """The labelled objects of one frame (rows of the truth topic)."""

    class_id: np.ndarray  # (N,) int
    box3d: np.ndarray  # (N, 7) x, y, z, l, w, h, yaw in base_link
    visibility: np.ndarray  # (N,)

    def __len__(self) -> int:
        return len(self.class_id)


class LabelRules:
    """The counting rule and target maker for one model configuration and camera view."""

    def __init__(self, grid: GridSpec, in_view: np.ndarray) -> None:
        #: The head's grid and class names.
        self.grid = grid
        #: (rows, cols) 1 where the head's cell is in the camera's horizontal view.
        self.in_view = in_view.reshape(grid.shape).astype(bool)

    @classmethod
    def for_rig(cls, grid: GridSpec, rig: RigCalibration, *, camera: str = "camera") -> LabelRules:
        """The rule for ``grid`` and ``rig``'s ``camera``."""
        return cls(grid, camera_view(rig, grid, camera=camera))

    def cells(self, xy_m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fractional cell coordinates (row, col) of ground points and whether on the grid."""
        cell = self.grid.cell_m
        r = (xy_m[:, 0] - self.grid.x_min_m) / cell
        c = (xy_m[:, 1] - self.grid.y_min_m) / cell
        rows, cols = self.grid.shape
        on = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        return r, c, on

    def viewable(self, xy_m: np.ndarray) -> np.ndarray:
        """Whether each ground point is on the grid and in the camera's view."""
        r, c, on = self.cells(xy_m)
        out = np.zeros(len(xy_m), bool)
        idx = np.flatnonzero(on)
        out[idx] = self.in_view[r[idx].astype(int), c[idx].astype(int)]
        return out

    def split(self, objs: Objects) -> tuple[np.ndarray, np.ndarray]:
        """(counted, ignored) boolean masks over ``objs``."""
        view = self.viewable(objs.box3d[:, :2]) if len(objs) else np.zeros(0, bool)
        seen = objs.visibility >= MIN_VISIBILITY
        return view & seen, view & ~seen

    def targets(self, objs: Objects) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(heatmap (K, X, Y), boxes (8, X, Y), box mask (X, Y), loss weight (X, Y))."""
        k = len(self.grid.class_names)
        rows, cols = self.grid.shape
        heat = np.zeros((k, rows, cols), np.float32)
        boxes = np.zeros((8, rows, cols), np.float32)
        box_mask = np.zeros((rows, cols), np.float32)
        weight = np.ones((rows, cols), np.float32)
        if not len(objs):
            return heat, boxes, box_mask, weight
        counted, ignored = self.split(objs)
        r, c, on = self.cells(objs.box3d[:, :2])
        out_of_view = on & ~self.viewable(objs.box3d[:, :2])
        ii, jj = np.mgrid[0:rows, 0:cols]
        cell = self.grid.cell_m
        for n in np.flatnonzero(ignored):
            d2 = (ii + 0.5 - r[n]) ** 2 + (jj + 0.5 - c[n]) ** 2
            radius = max(1.5, 0.5 * float(objs.box3d[n, 3]) / cell + 1.0)
            weight[d2 <= radius**2] = 0.0
        for n in np.flatnonzero(counted | out_of_view):
            _, _, z, length, width, height, yaw = (float(v) for v in objs.box3d[n])
            i, j = int(r[n]), int(c[n])
            # The peak's spread follows the footprint (CenterPoint), at least most of a cell.
            sigma = max(0.6, 0.2 * max(length, width) / cell)
            g = np.exp(-((ii + 0.5 - r[n]) ** 2 + (jj + 0.5 - c[n]) ** 2) / (2 * sigma**2))
            g = g / g[i, j]  # exactly 1 at the centre cell
            ch = int(objs.class_id[n])
            heat[ch] = np.maximum(heat[ch], np.minimum(g, 1.0).astype(np.float32))
            boxes[:, i, j] = (
                r[n] - i,
                c[n] - j,
                z,
                np.log(length),
                np.log(width),
                np.log(height),
                np.sin(yaw),
                np.cos(yaw),
            )
            box_mask[i, j] = 1.0
            weight[i, j] = 1.0
        return heat, boxes, box_mask, weight

    def score_pair(self, det: Detections, objs: Objects) -> tuple[FrameDetections, FrameTruth]:
        """One frame as the mAP takes it: the detections in the camera's view, less those
        whose nearest object within :data:`IGNORE_RADIUS_M` is one nobody can see, and the
        objects that count."""
        counted, ignored = self.split(objs)
        xy = det.box3d[:, :2].astype(np.float64)
        keep = self.viewable(xy) if len(det) else np.zeros(0, bool)
        if ignored.any() and len(det):
            d = np.linalg.norm(xy[:, None] - objs.box3d[None, :, :2], axis=2)
            nearest = d.argmin(axis=1)
            keep &= ~(ignored[nearest] & (d.min(axis=1) < IGNORE_RADIUS_M))
        return (
            FrameDetections(
                class_id=det.class_id[keep], score=det.score[keep], center_xy_m=xy[keep]
            ),
            FrameTruth(class_id=objs.class_id[counted], center_xy_m=objs.box3d[counted, :2]),
        )


def audio_scene(objs: Objects, classes: int) -> np.ndarray:
    """(classes * rings,) multi-hot: whether an object of each class is in each distance ring
    around the rig (all around, hidden or not: sound goes round corners).

    The auxiliary target of the audio encoder: what a listener can tell (which kinds of source,
    roughly how near) without saying where. It gives the audio branch a direct gradient; through
    the detection loss alone it learns car vs ev slowly, as that signal is only a fraction of one
    class pair's heatmap loss."""
    out = np.zeros((classes, len(AUDIO_RINGS_M)), np.float32)
    if len(objs):
        d = np.linalg.norm(objs.box3d[:, :2], axis=1)
        ring = np.searchsorted(np.asarray(AUDIO_RINGS_M), d, side="right")
        near = ring < len(AUDIO_RINGS_M)
        out[objs.class_id[near].astype(int), ring[near]] = 1.0
    return out.reshape(-1)
