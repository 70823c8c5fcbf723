"""From the network's output maps to detections (numpy and OpenCV only).

The graph ends at ``heatmap`` (classes, X, Y) centre probabilities and ``boxes`` (8, X, Y)
(see ``edgefuse.model.network.BOX_CHANNELS``) on the BEV grid. Decoding keeps the cells that
are the highest of their 3x3 neighbourhood in their best class (a max-pool NMS, as CenterPoint:
a peak per object, no IoU pass needed), scores them by that class and reads the box at the
cell. The 2D box in the camera image is the projection of the 3D box's corners with the rig's
calibrated camera (clipped to the image; NaN when the box is not in front of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgefuse.calib.model import SensorCalibration


@dataclass(frozen=True, kw_only=True)
class GridSpec:
    """Where the output maps lie on the ground plane, and the class names."""

    x_min_m: float
    y_min_m: float
    cell_m: float
    shape: tuple[int, int]
    class_names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the model metadata's ``grid``)."""
        return {
            "x_min_m": self.x_min_m,
            "y_min_m": self.y_min_m,
            "cell_m": self.cell_m,
            "shape": list(self.shape),
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GridSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(
            x_min_m=float(d["x_min_m"]),
            y_min_m=float(d["y_min_m"]),
            cell_m=float(d["cell_m"]),
            shape=(int(d["shape"][0]), int(d["shape"][1])),
            class_names=tuple(d["class_names"]),
        )


@dataclass(frozen=True)
class Detections:
    """The objects found in one set."""

    class_id: np.ndarray  # (N,) int
    score: np.ndarray  # (N,) float32
    #: (N, 7) float32: centre x, y, z, length, width, height, yaw in base_link.
    box3d: np.ndarray
    #: (N, 4) float32: x0, y0, x1, y1 in camera pixels; NaN when not in the image.
    box2d: np.ndarray

    def __len__(self) -> int:
        return len(self.class_id)

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros((0, 7), np.float32),
            np.zeros((0, 4), np.float32),
        )


def decode(
    heatmap: np.ndarray,
    boxes: np.ndarray,
    grid: GridSpec,
    *,
    score_threshold: float = 0.1,
    max_detections: int = 64,
) -> Detections:
    """Detections from one set's output maps (batch dimension already removed)."""
    if heatmap.ndim != 3 or boxes.ndim != 3 or heatmap.shape[1:] != boxes.shape[1:]:
        raise ValueError(f"decode: heatmap {heatmap.shape} and boxes {boxes.shape} do not agree")
    best = heatmap.max(axis=0).astype(np.float32)
    cls = heatmap.argmax(axis=0)
    peak = (best >= cv2.dilate(best, np.ones((3, 3), np.uint8))) & (best >= score_threshold)
    # A plateau (equal neighbours, e.g. a target centred on a cell edge) is one peak: keep the
    # last of its cells in row-major order (the cell the labels' floor puts the centre in).
    p = np.pad(peak, 1)
    peak &= ~(p[1:-1, 2:] | p[2:, :-2] | p[2:, 1:-1] | p[2:, 2:])
    ii, jj = np.nonzero(peak)
    if len(ii) == 0:
        return Detections.empty()
    score = best[ii, jj]
    order = np.argsort(-score, kind="stable")[:max_detections]
    ii, jj, score = ii[order], jj[order], score[order]
    b = boxes[:, ii, jj].astype(np.float64)  # (8, N)
    x = grid.x_min_m + (ii + b[0]) * grid.cell_m
    y = grid.y_min_m + (jj + b[1]) * grid.cell_m
    size = np.exp(np.clip(b[3:6], -3.0, 3.0))
    yaw = np.arctan2(b[6], b[7])
    box3d = np.stack([x, y, b[2], size[0], size[1], size[2], yaw], -1).astype(np.float32)
    return Detections(
        class_id=cls[ii, jj].astype(np.int64),
        score=score.astype(np.float32),
        box3d=box3d,
        box2d=np.full((len(ii), 4), np.nan, np.float32),
    )


def box_corners(box3d: np.ndarray) -> np.ndarray:
    """(N, 8, 3) corners of boxes (centre x, y, z, l, w, h, yaw) in their frame."""
    n = len(box3d)
    sx = np.array([1, 1, 1, 1, -1, -1, -1, -1]) * 0.5
    sy = np.array([1, -1, 1, -1, 1, -1, 1, -1]) * 0.5
    sz = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * 0.5
    local = np.stack(
        [
            sx[None] * box3d[:, 3:4],
            sy[None] * box3d[:, 4:5],
            sz[None] * box3d[:, 5:6],
        ],
        -1,
    )  # (N, 8, 3)
    c, s = np.cos(box3d[:, 6])[:, None], np.sin(box3d[:, 6])[:, None]
    x = c * local[..., 0] - s * local[..., 1] + box3d[:, 0:1]
    y = s * local[..., 0] + c * local[..., 1] + box3d[:, 1:2]
    z = local[..., 2] + box3d[:, 2:3]
    return np.stack([x, y, z], -1).reshape(n, 8, 3)


def project_boxes(box3d: np.ndarray, camera: SensorCalibration) -> np.ndarray:
    """(N, 4) image boxes of 3D boxes in ``base_link``: the projected corners' extent,
    clipped to the image; NaN for a box with a corner behind the camera or off the image."""
    cam = camera.camera
    if cam is None:
        raise ValueError(f"{camera.frame_id} has no camera intrinsics")
    out = np.full((len(box3d), 4), np.nan, np.float32)
    if not len(box3d):
        return out
    T = np.linalg.inv(camera.T)
    pts = box_corners(np.asarray(box3d, np.float64))
    pc = pts @ T[:3, :3].T + T[:3, 3]  # (N, 8, 3) camera optical
    front = (pc[..., 2] > 0.1).all(axis=1)
    for n in np.flatnonzero(front):
        xy = pc[n, :, :2] / pc[n, :, 2:3]
        xy = np.clip(xy, -1.5, 1.5)  # past this the lens polynomial folds back
        uv, _ = cv2.projectPoints(np.c_[xy, np.ones(8)], np.zeros(3), np.zeros(3), cam.K, cam.D)
        uv = uv.reshape(-1, 2)
        x0, y0 = np.clip(uv.min(0), 0, [cam.width, cam.height])
        x1, y1 = np.clip(uv.max(0), 0, [cam.width, cam.height])
        if x1 > x0 and y1 > y0:
            out[n] = (x0, y0, x1, y1)
    return out
