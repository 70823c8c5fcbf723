"""Ground truth of the simulated world, per camera frame, as ``sim/truth`` publishes it.

For every object in the world at the instant a camera frame describes: its id, class, 3D box in
``base_link``, velocity, the 2D box of its full extent in the (distorted) image, clipped to the
image, and how much of it the camera sees. Visibility comes from the same rasteriser as the
camera image, at half resolution: ``truncation`` is the share of the object's silhouette outside
the image, ``occlusion`` the share of the in-image part hidden by nearer objects, ``visibility``
what is left (visible pixels over the whole silhouette).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import cv2
import numpy as np

from edgefuse.calib.model import SensorCalibration
from edgefuse.envelope import Message
from edgefuse.sim.camera import PinholeView, fill_many
from edgefuse.sim.geometry import posed_mesh
from edgefuse.sim.world import CLASSES, WorldObject

#: Payload order of a ``sim/truth`` message (also in its ``meta["arrays"]``).
TRUTH_ARRAYS = (
    "object_id",
    "class_id",
    "box3d",
    "box2d",
    "visibility",
    "occlusion",
    "truncation",
    "velocity_mps",
)
CLASS_NAMES = tuple(c.name for c in CLASSES)


@dataclass(frozen=True)
class TruthFrame:
    """The truth of one camera frame: one row per object."""

    object_id: np.ndarray  # (N,) int32
    class_id: np.ndarray  # (N,) int16, index into CLASS_NAMES
    #: (N, 7) float64: centre x, y, z, length, width, height, yaw in base_link.
    box3d: np.ndarray
    #: (N, 4) float32: x0, y0, x1, y1 in image pixels; NaN when not in the image.
    box2d: np.ndarray
    visibility: np.ndarray  # (N,) float32
    occlusion: np.ndarray  # (N,) float32
    truncation: np.ndarray  # (N,) float32
    velocity_mps: np.ndarray  # (N, 2) float32, ground-plane velocity

    def arrays(self) -> list[np.ndarray]:
        """The payloads of a ``sim/truth`` message, in :data:`TRUTH_ARRAYS` order."""
        return [getattr(self, n) for n in TRUTH_ARRAYS]

    @classmethod
    def from_message(cls, msg: Message) -> TruthFrame:
        """Read a ``sim/truth`` message back (arrays are read-only views)."""
        names = msg.header.meta.get("arrays", list(TRUTH_ARRAYS))
        by_name = dict(zip(names, msg.arrays, strict=True))
        return cls(**{f.name: by_name[f.name] for f in fields(cls)})

    def __len__(self) -> int:
        return len(self.object_id)


class TruthRenderer:
    """Computes :class:`TruthFrame` for the calibrated camera."""

    def __init__(self, cal: SensorCalibration, *, scale: float = 0.5) -> None:
        if cal.camera is None:
            raise ValueError(f"sensor {cal.frame_id} has no camera intrinsics")
        self.cal = cal
        cam = cal.camera
        self.width, self.height = cam.width, cam.height
        self.scale = scale
        # A canvas twice the image in each direction holds silhouettes that leave the image.
        self._pad = round(max(cam.width, cam.height) * scale / 2)
        self.view = PinholeView(cal, scale=scale, pad=self._pad)
        # Which canvas pixels (undistorted, padded) land inside the distorted image.
        xs = (np.arange(self.view.width) - self._pad + 0.5) / scale - 0.5
        ys = (np.arange(self.view.height) - self._pad + 0.5) / scale - 0.5
        u, v = np.meshgrid(xs, ys)
        K = cam.K
        xy = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        r = np.linalg.norm(xy[..., :2], axis=-1)
        uv, _ = cv2.projectPoints(xy.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, cam.D)
        uv = uv.reshape(*u.shape, 2)
        inside = (
            (uv[..., 0] >= 0)
            & (uv[..., 0] < cam.width)
            & (uv[..., 1] >= 0)
            & (uv[..., 1] < cam.height)
            & (r < 1.5)
        )
        self._inside = inside.astype(np.uint8)
        self._T_cam_base = np.linalg.inv(cal.T)

    def frame(self, objects: list[WorldObject], t_s: float) -> TruthFrame:
        """The truth at world time ``t_s`` for ``objects`` (those alive then)."""
        n = len(objects)
        v = self.view
        ids = np.zeros((v.height, v.width), np.uint16)  # 0 = background, i + 1 = object i
        alone_px = np.zeros(n)
        in_image_px = np.zeros(n)
        faces = v.faces(objects, t_s)
        # Faces come far to near, grouped by object: painting each object's silhouette over
        # the ones before gives the same picture as painting face by face.
        by_obj: dict[int, list[np.ndarray]] = {}
        for f in faces:
            by_obj.setdefault(f.obj, []).append(f.pixels)
        for i, polys in by_obj.items():
            allpts = np.concatenate(polys)
            x0, y0 = np.clip(np.floor(allpts.min(0)).astype(int) - 1, 0, [v.width, v.height])
            x1, y1 = np.clip(np.ceil(allpts.max(0)).astype(int) + 2, 0, [v.width, v.height])
            if x1 <= x0 or y1 <= y0:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            fill_many(mask, [p - [x0, y0] for p in polys], [1] * len(polys), aa=False)
            ids[y0:y1, x0:x1][mask > 0] = i + 1
            alone_px[i] = cv2.countNonZero(mask)
            in_image_px[i] = cv2.countNonZero(mask & self._inside[y0:y1, x0:x1])
        seen = np.bincount((ids * self._inside).ravel(), minlength=n + 1)[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            visibility = np.where(alone_px > 0, seen / alone_px, 0.0)
            truncation = np.where(alone_px > 0, 1 - in_image_px / alone_px, 1.0)
            occlusion = np.where(in_image_px > 0, 1 - seen / in_image_px, 0.0)
        box2d = np.full((n, 4), np.nan, np.float32)
        for i, o in enumerate(objects):
            if in_image_px[i] > 0:
                box2d[i] = self.box2d(o, t_s)
        vel = np.zeros((n, 2), np.float32)
        for i, o in enumerate(objects):
            a, b = np.array(o.pose(t_s - 0.05)[:2]), np.array(o.pose(t_s + 0.05)[:2])
            vel[i] = (b - a) / 0.1
        return TruthFrame(
            object_id=np.array([o.object_id for o in objects], np.int32),
            class_id=np.array([o.cls.class_id for o in objects], np.int16),
            box3d=np.array([o.box(t_s) for o in objects], np.float64).reshape(n, 7),
            box2d=box2d,
            visibility=np.clip(visibility, 0, 1).astype(np.float32),
            occlusion=np.clip(occlusion, 0, 1).astype(np.float32),
            truncation=np.clip(truncation, 0, 1).astype(np.float32),
            velocity_mps=vel,
        )

    def box2d(self, obj: WorldObject, t_s: float) -> np.ndarray:
        """The full-extent 2D box of ``obj`` in the distorted image, clipped to it."""
        assert self.cal.camera is not None
        cam = self.cal.camera
        p = posed_mesh(obj, t_s).vertices @ self._T_cam_base[:3, :3].T + self._T_cam_base[:3, 3]
        near = 0.1
        front = p[:, 2] > near
        if not front.all():
            a, b = p[front], p[~front]
            ta = (near - a[:, None, 2]) / (b[None, :, 2] - a[:, None, 2])
            cross = a[:, None, :] + ta[..., None] * (b[None, :, :] - a[:, None, :])
            p = np.concatenate([a, cross.reshape(-1, 3)])
        xy = p[:, :2] / p[:, 2:3]
        # Beyond ~56 degrees off axis the lens polynomial stops being monotonic; such points
        # are far outside the image anyway, so pull them in along their direction.
        r = np.linalg.norm(xy, axis=1, keepdims=True)
        xy = np.where(r > 1.5, xy * 1.5 / np.maximum(r, 1e-9), xy)
        pts = np.c_[xy, np.ones(len(xy))].reshape(-1, 1, 3)
        uv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), cam.K, cam.D)
        uv = uv.reshape(-1, 2)
        x0, y0 = np.clip(uv.min(0), 0, [cam.width, cam.height])
        x1, y1 = np.clip(uv.max(0), 0, [cam.width, cam.height])
        return np.array([x0, y0, x1, y1], np.float32)
