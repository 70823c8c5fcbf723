"""The simulated colour camera: a rasteriser fast enough for 640x480 at 30 Hz on part of a core.

The rig stands still, so the ground and the sky are one precomputed background (a textured
asphalt plane fading into haze, or the rig's lamp pool at night). Each frame paints the
objects' faces far to near (painter's algorithm over convex parts, back faces culled, near-
plane clipped) with Lambert shading, darkens their shadows in daylight, bends the image
through the calibration's lens distortion and adds sensor noise. Projection helpers are shared
with :mod:`edgefuse.sim.truth` so 2D truth boxes and visibility come from the same pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from edgefuse.calib.model import SensorCalibration
from edgefuse.sim.geometry import PosedMesh, posed_mesh, unit_mesh
from edgefuse.sim.world import WorldObject

_NEAR_M = 0.1
_PAD = 48
_SHIFT = 4  # fixed-point bits for cv2 polygon vertices (1/16 px)
_SUN = np.array([-0.45, 0.35, 0.82]) / np.linalg.norm([-0.45, 0.35, 0.82])
_GLASS_BGR = np.array([70.0, 55.0, 45.0])
_SKIN_BGR = np.array([120.0, 150.0, 200.0])
_METAL_BGR = np.array([55.0, 55.0, 60.0])


@dataclass(frozen=True, kw_only=True)
class CameraNoise:
    """Sensor noise of the simulated camera (8-bit grey levels)."""

    day_sigma: float = 2.5
    #: Night: more gain, so more noise.
    night_sigma: float = 9.0
    #: Distinct noise frames kept and cycled (with random shifts).
    bank: int = 6


@dataclass(frozen=True)
class FacePolygon:
    """One visible face in undistorted pixel coordinates, with its object and depth."""

    obj: int
    depth_m: float
    pixels: np.ndarray  # (N, 2) float64
    color_bgr: np.ndarray  # (3,) float64
    normal: np.ndarray  # (3,) in base_link
    centroid: np.ndarray  # (3,) in base_link


class PinholeView:
    """Projection from ``base_link`` into a camera's undistorted pixel grid (no lens model)."""

    def __init__(self, cal: SensorCalibration, *, scale: float = 1.0, pad: int = 0) -> None:
        assert cal.camera is not None
        self.cal = cal
        self.K = cal.camera.K.copy()
        self.K[:2] *= scale
        self.K[:2, 2] += pad
        self.pad = pad
        self.width = round(cal.camera.width * scale) + 2 * pad
        self.height = round(cal.camera.height * scale) + 2 * pad
        self.T_cam_base = np.linalg.inv(cal.T)
        self.position = cal.T[:3, 3]
        # Half angles of the view (with a margin) for culling whole objects cheaply.
        self._half_x = math.atan(max(self.K[0, 2], self.width - self.K[0, 2]) / self.K[0, 0]) + 0.05
        self._half_y = (
            math.atan(max(self.K[1, 2], self.height - self.K[1, 2]) / self.K[1, 1]) + 0.05
        )

    def may_see(self, obj: WorldObject, t_s: float, *, margin_m: float = 0.0) -> bool:
        """False when ``obj`` (grown by ``margin_m``) is certainly outside the view at ``t_s``
        (bounding-sphere test)."""
        x, y, _ = obj.pose(t_s)
        length, w, h = obj.size_m
        radius = 0.5 * math.sqrt(length * length + w * w + h * h) + margin_m
        c = self.to_camera(np.array([[x, y, h / 2]]))[0]
        dist = float(np.linalg.norm(c))
        if dist <= radius or (c[2] <= 0 and -c[2] < radius):
            return dist <= radius or c[2] > -radius
        if c[2] <= -radius:
            return False
        beta = math.asin(min(1.0, radius / dist))
        return (
            abs(math.atan2(c[0], c[2])) - beta <= self._half_x
            and abs(math.atan2(c[1], c[2])) - beta <= self._half_y
        )

    def to_camera(self, p_base: np.ndarray) -> np.ndarray:
        """Points (N, 3) from ``base_link`` into the optical frame."""
        return np.asarray(p_base @ self.T_cam_base[:3, :3].T + self.T_cam_base[:3, 3])

    def polygon(self, p_cam: np.ndarray) -> np.ndarray | None:
        """Clip a convex polygon (camera frame) at the near plane and project; None if gone."""
        q = p_cam if (p_cam[:, 2] >= _NEAR_M).all() else _clip_near(p_cam)
        if q is None:
            return None
        uv = q[:, :2] / q[:, 2:3] * np.array([self.K[0, 0], self.K[1, 1]]) + self.K[:2, 2]
        # Far outside the image cv2's fixed point overflows: clip to a guard band.
        g = 4.0 * max(self.width, self.height)
        if np.abs(uv).max() > g:
            return _clip_box(uv, -g, -g, g + self.width, g + self.height)
        return np.asarray(uv)

    def faces(
        self,
        objects: list[WorldObject],
        t_s: float,
        meshes: dict[int, PosedMesh] | None = None,
    ) -> list[FacePolygon]:
        """Visible faces of ``objects`` at ``t_s``, far to near (painter's order); each face
        names its object by index into ``objects``. ``meshes`` may hold already posed ones."""
        have = meshes or {}
        meshes = {
            i: have[i] if i in have else posed_mesh(o, t_s)
            for i, o in enumerate(objects)
            if self.may_see(o, t_s)
        }
        dist = {
            i: float(np.linalg.norm(m.centroids.mean(0) - self.position)) for i, m in meshes.items()
        }
        out: list[FacePolygon] = []
        for i in sorted(meshes, key=lambda j: -dist[j]):
            out.extend(self._object_faces(i, objects[i], meshes[i]))
        return out

    def _object_faces(self, i: int, obj: WorldObject, m: PosedMesh) -> list[FacePolygon]:
        to_cam = m.centroids - self.position
        facing = np.einsum("ij,ij->i", m.normals, to_cam) < 0
        if not facing.any():
            return []
        v_cam = self.to_camera(m.vertices)
        depth = np.linalg.norm(to_cam, axis=1)
        # Fast path: every vertex in front and near the image, so faces need no clipping.
        uv_all = None
        if (v_cam[:, 2] >= _NEAR_M).all():
            uv_all = v_cam[:, :2] / v_cam[:, 2:3] * np.diag(self.K)[:2] + self.K[:2, 2]
            if np.abs(uv_all).max() > 4.0 * max(self.width, self.height):
                uv_all = None
        out = []
        for f in sorted(np.nonzero(facing)[0], key=lambda j: -depth[j]):
            px = uv_all[m.faces[f]] if uv_all is not None else self.polygon(v_cam[m.faces[f]])
            if px is not None:
                out.append(
                    FacePolygon(
                        i,
                        float(depth[f]),
                        px,
                        _face_albedo(obj, int(f)),
                        m.normals[f],
                        m.centroids[f],
                    )
                )
        return out


def _face_albedo(obj: WorldObject, face: int) -> np.ndarray:
    um = unit_mesh(obj.cls.shape)
    part = int(um.face_part[face])
    shape = obj.cls.shape
    if shape == "car" and part == 1 and um.normals[face][2] < 0.9:  # windows, not the roof
        return _GLASS_BGR
    if shape == "person" and part == 1:
        return _SKIN_BGR
    if shape == "bicycle" and part == 0:
        return _METAL_BGR
    return np.array(obj.color_bgr, dtype=np.float64)


def _clip_near(p: np.ndarray) -> np.ndarray | None:
    out = []
    n = len(p)
    for i in range(n):
        a, b = p[i], p[(i + 1) % n]
        ina, inb = a[2] >= _NEAR_M, b[2] >= _NEAR_M
        if ina:
            out.append(a)
        if ina != inb:
            t = (_NEAR_M - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out) if len(out) >= 3 else None


def _clip_box(uv: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray | None:
    poly = [p for p in uv]
    for axis, limit, keep_above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        out = []
        n = len(poly)
        for i in range(n):
            a, b = poly[i], poly[(i + 1) % n]
            ina = (a[axis] >= limit) if keep_above else (a[axis] <= limit)
            inb = (b[axis] >= limit) if keep_above else (b[axis] <= limit)
            if ina:
                out.append(a)
            if ina != inb:
                t = (limit - a[axis]) / (b[axis] - a[axis])
                out.append(a + t * (b - a))
        poly = out
        if len(poly) < 3:
            return None
    return np.array(poly)


def fill(img: np.ndarray, px: np.ndarray, color: Any, *, aa: bool = True) -> None:
    """Fill a convex polygon given in float pixel coordinates (sub-pixel exact)."""
    pts = np.round(px * (1 << _SHIFT)).astype(np.int32)
    cv2.fillConvexPoly(img, pts, color, cv2.LINE_AA if aa else cv2.LINE_8, _SHIFT)


def fill_many(
    img: np.ndarray, polys: list[np.ndarray], colors: list[Any], *, aa: bool = True
) -> None:
    """Fill convex polygons in order (later ones on top), converting all vertices at once."""
    if not polys:
        return
    pts = np.round(np.concatenate(polys) * (1 << _SHIFT)).astype(np.int32)
    line = cv2.LINE_AA if aa else cv2.LINE_8
    start = 0
    for poly, color in zip(polys, colors, strict=True):
        end = start + len(poly)
        cv2.fillConvexPoly(img, pts[start:end], color, line, _SHIFT)
        start = end


class CameraRenderer:
    """Renders bgr8 frames of the simulated world as the calibrated camera sees them."""

    def __init__(
        self,
        cal: SensorCalibration,
        *,
        lighting: Literal["day", "night"],
        seed: int,
        noise: CameraNoise | None = None,
    ) -> None:
        if cal.camera is None:
            raise ValueError(f"sensor {cal.frame_id} has no camera intrinsics")
        # Rendered with a margin: barrel distortion pulls the image corners from outside it.
        self.view = PinholeView(cal, pad=_PAD)
        self.lighting = lighting
        self.noise = noise or CameraNoise()
        self.seed = seed
        self.background = self._background(seed)
        self._map1, self._map2 = self._distortion_maps(cal)
        sigma = self.noise.day_sigma if lighting == "day" else self.noise.night_sigma
        rng = np.random.default_rng([seed, 0xCA3E7A])
        shape = (cal.camera.height, cal.camera.width, 3)
        bank = [
            np.round(rng.normal(0, sigma, shape)).clip(-127, 127) for _ in range(self.noise.bank)
        ]
        self._noise_pos = [np.maximum(b, 0).astype(np.uint8) for b in bank]
        self._noise_neg = [np.maximum(-b, 0).astype(np.uint8) for b in bank]

    # --- the static part -------------------------------------------------------------------
    def _rays(self) -> np.ndarray:
        v = self.view
        u, w = np.meshgrid(np.arange(v.width) + 0.0, np.arange(v.height) + 0.0)
        d_cam = np.stack(
            [(u - v.K[0, 2]) / v.K[0, 0], (w - v.K[1, 2]) / v.K[1, 1], np.ones_like(u)], -1
        )
        d = d_cam @ v.cal.T[:3, :3].T
        return np.asarray(d / np.linalg.norm(d, axis=-1, keepdims=True))

    def _background(self, seed: int) -> np.ndarray:
        v = self.view
        d = self._rays()
        down = d[..., 2] < -1e-6
        t = np.where(down, -v.position[2] / np.where(down, d[..., 2], -1.0), np.inf)
        g = v.position + d * np.where(np.isfinite(t), t, 0.0)[..., None]
        r = np.where(down, t, np.inf)
        # Asphalt: large patches and fine grain, both fixed in the ground plane.
        rng = np.random.default_rng([seed, 0xA5F])
        coarse = rng.normal(0, 10, (64, 64)).astype(np.float32)
        fine = rng.normal(0, 6, (256, 256)).astype(np.float32)
        gx, gy = g[..., 0].astype(np.float32), g[..., 1].astype(np.float32)
        tex: np.ndarray = cv2.remap(
            coarse, (gx / 2.0) % 64, (gy / 2.0) % 64, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
        )
        tex = tex + cv2.remap(
            fine, (gx * 8.0) % 256, (gy * 8.0) % 256, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
        )
        up = np.clip(d[..., 2], 0, 1)
        if self.lighting == "day":
            ground = (np.array([100.0, 104.0, 108.0]) + tex[..., None]) * (0.45 + 0.6 * _SUN[2])
            sky = (
                np.array([235.0, 210.0, 175.0]) * (1 - up[..., None])
                + np.array([200.0, 150.0, 95.0]) * up[..., None]
            )
            haze = 1 - np.exp(-np.where(down, r, 1e9) / 300.0)[..., None]
            img = np.where(down[..., None], ground * (1 - haze) + sky * haze, sky)
        else:
            lamp = self._lamp(g, np.array([0.0, 0.0, 1.0]))
            ground = (np.array([100.0, 104.0, 108.0]) + tex[..., None]) * (0.03 + lamp[..., None])
            sky = np.array([28.0, 16.0, 10.0]) + 6 * up[..., None]
            img = np.where(down[..., None], ground, sky)
        return np.asarray(np.clip(img, 0, 255).astype(np.uint8))

    def _lamp(self, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        # The rig's lamp beside the camera: a forward cone, inverse-square falloff.
        to = self.view.position - p
        d2 = np.maximum((to**2).sum(-1), 1.0)
        to_u = to / np.sqrt(d2)[..., None]
        cos_n = np.clip((to_u * n).sum(-1), 0, 1)
        fwd = np.clip(-to_u[..., 0], 0, 1) ** 2
        return np.asarray(40.0 * cos_n * fwd / d2)

    @staticmethod
    def _distortion_maps(cal: SensorCalibration) -> tuple[np.ndarray, np.ndarray]:
        assert cal.camera is not None
        w, h = cal.camera.width, cal.camera.height
        K, D = cal.camera.K, cal.camera.D
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        pts = np.stack([u.ravel(), v.ravel()], -1).reshape(-1, 1, 2)
        # For each distorted output pixel, where it lies in the ideal (undistorted) render.
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-6)
        und = cv2.undistortPoints(pts, K, D, R=None, P=K, criteria=crit).reshape(h, w, 2)
        und += _PAD
        m1, m2 = cv2.convertMaps(
            und[..., 0].astype(np.float32), und[..., 1].astype(np.float32), cv2.CV_16SC2
        )
        return m1, m2

    # --- per frame ---------------------------------------------------------------------------
    def shade(self, face: FacePolygon) -> tuple[float, ...]:
        """The colour of a face under the scenario's lighting."""
        normal, centroid = face.normal, face.centroid
        if self.lighting == "day":
            k = 0.42 + 0.62 * max(0.0, float(normal @ _SUN)) + 0.12 * max(0.0, float(normal[2]))
        else:
            k = 0.03 + float(self._lamp(centroid, normal))
        c = np.clip(face.color_bgr * k, 0, 255)
        return (float(c[0]), float(c[1]), float(c[2]))

    def render(
        self,
        objects: list[WorldObject],
        t_s: float,
        k: int,
        *,
        paint: Callable[[np.ndarray, PinholeView], None] | None = None,
    ) -> np.ndarray:
        """Frame ``k``: the world at ``t_s`` as the camera sees it (bgr8, lens-distorted).
        ``paint(canvas, view)`` draws extra content (the calibration board of
        :mod:`edgefuse.sim.calib_scene`) over the objects, on the undistorted canvas."""
        img = self.background.copy()
        v = self.view
        meshes: dict[int, PosedMesh] = {}
        if self.lighting == "day":
            # A low sun casts shadows up to ~2 heights away: widen the view test by that.
            for i, o in enumerate(objects):
                if v.may_see(o, t_s, margin_m=2.0 * o.size_m[2]):
                    meshes[i] = posed_mesh(o, t_s)
            self._shadows(img, list(meshes.values()))
        faces = v.faces(objects, t_s, meshes)
        fill_many(img, [f.pixels for f in faces], [self.shade(f) for f in faces])
        if paint is not None:
            paint(img, v)
        out = cv2.remap(img, self._map1, self._map2, cv2.INTER_LINEAR)
        rng = np.random.default_rng([self.seed, 0xCA3E7A, k])
        i = int(rng.integers(len(self._noise_pos)))
        dy, dx = (int(x) for x in rng.integers(0, 64, 2))
        pos = np.roll(self._noise_pos[i], (dy, dx), (0, 1))
        neg = np.roll(self._noise_neg[i], (dy, dx), (0, 1))
        cv2.add(out, pos, out)
        cv2.subtract(out, neg, out)
        return out

    def _shadows(self, img: np.ndarray, meshes: list[PosedMesh]) -> None:
        v = self.view
        for m in meshes:
            # The shadow is the convex hull of the mesh projected along the sun onto z = 0.
            ground = (m.vertices - (m.vertices[:, 2:3] / _SUN[2]) * _SUN)[:, :2]
            hull = cv2.convexHull(ground.astype(np.float32)).reshape(-1, 2).astype(np.float64)
            px = v.polygon(v.to_camera(np.column_stack([hull, np.zeros(len(hull))])))
            if px is None:
                continue
            x0, y0 = np.floor(px.min(0)).astype(int).clip(0, [v.width, v.height])
            x1, y1 = (np.ceil(px.max(0)).astype(int) + 1).clip(0, [v.width, v.height])
            if x1 <= x0 or y1 <= y0:
                continue
            mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
            fill(mask, px - [x0, y0], 1, aa=False)
            roi = img[y0:y1, x0:x1]
            sel = mask.astype(bool)
            roi[sel] = (roi[sel] * 0.55).astype(np.uint8)


def fov_deg(cal: SensorCalibration) -> float:
    """Horizontal field of view of a calibrated camera (degrees)."""
    assert cal.camera is not None
    return math.degrees(2 * math.atan(cal.camera.width / 2 / cal.camera.K[0, 0]))
