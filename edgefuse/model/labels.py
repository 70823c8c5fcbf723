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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefuse.model.network import AUDIO_RINGS_M, ModelConfig

#: Share of the silhouette the camera must see for an object to count.
MIN_VISIBILITY = 0.05


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

    def __init__(self, cfg: ModelConfig, in_view: np.ndarray) -> None:
        #: (rows, cols) 1 where the head's cell is in the camera's horizontal view.
        self.cfg = cfg
        self.in_view = in_view.reshape(cfg.grid_shape).astype(bool)

    def cells(self, xy_m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fractional cell coordinates (row, col) of ground points and whether on the grid."""
        sp, cell = self.cfg.spec, self.cfg.grid_cell_m
        r = (xy_m[:, 0] - sp.bev_x_m[0]) / cell
        c = (xy_m[:, 1] - sp.bev_y_m[0]) / cell
        rows, cols = self.cfg.grid_shape
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
        k = len(self.cfg.class_names)
        rows, cols = self.cfg.grid_shape
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
        cell = self.cfg.grid_cell_m
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
