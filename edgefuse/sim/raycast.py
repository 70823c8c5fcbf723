"""The simulated depth camera and lidar: Open3D ray casting against the world's meshes.

The ground is a plane, so its hits are computed in closed form once; per frame only the
objects go into an Open3D ``RaycastingScene`` (single-threaded: the whole rig must fit in one
core), and each ray keeps the nearer of its ground and object hits.

The depth camera returns z (along the optical axis) in millimetres as ``uint16``, 0 where there
is no valid return: beyond its range, at grazing angles, at some depth edges (the dropouts of a
stereo or structured-light camera) and at random; its noise grows with the square of the range.

The lidar spins: column ``j`` of ``azimuth_steps`` fires ``j / azimuth_steps`` of a revolution
after the sweep starts, clockwise seen from above, starting at ``cut_azimuth_deg`` (like a
Velodyne driver's cut angle). Each object is posed at the instant the beams sweep across it, so
a moving object is where it was when it was seen, and every point carries its own time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefuse.calib.model import SensorCalibration
from edgefuse.errors import require_extra
from edgefuse.sim.geometry import posed_mesh
from edgefuse.sim.world import WorldObject

_GROUND_REFLECTIVITY = 0.18


def _scene(meshes: list[tuple[np.ndarray, np.ndarray]]) -> Any:
    o3d: Any = require_extra("open3d", "lidar")
    scene = o3d.t.geometry.RaycastingScene(nthreads=1)
    for verts, tris in meshes:
        scene.add_triangles(
            o3d.core.Tensor(verts.astype(np.float32)), o3d.core.Tensor(tris.astype(np.uint32))
        )
    return scene


def _cast(
    scene: Any, origin: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cast rays (origin shared, directions (N, 3) unit); (t_hit, geometry id, normals)."""
    o3d: Any = require_extra("open3d", "lidar")
    rays = np.empty((len(dirs), 6), np.float32)
    rays[:, :3] = origin
    rays[:, 3:] = dirs
    out = scene.cast_rays(o3d.core.Tensor(rays), nthreads=1)
    return out["t_hit"].numpy(), out["geometry_ids"].numpy(), out["primitive_normals"].numpy()


def _ground_t(origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    down = dirs[:, 2] < -1e-9
    t = np.full(len(dirs), np.inf)
    t[down] = -origin[2] / dirs[down, 2]
    return t


@dataclass(frozen=True, kw_only=True)
class DepthModel:
    """Range, noise and dropouts of the simulated depth camera."""

    range_min_m: float = 0.3
    range_max_m: float = 8.0
    #: Noise sigma (m) = base + quadratic · z².
    sigma_base_m: float = 0.002
    sigma_quadratic_per_m: float = 0.0025
    #: Share of depth-edge pixels and of all pixels that return nothing.
    edge_dropout: float = 0.6
    random_dropout: float = 0.005
    #: Rays hitting a surface more obliquely than this (cosine) return nothing.
    min_cos_incidence: float = 0.12


class DepthRenderer:
    """Renders ``z16`` depth frames (mm) as the calibrated depth camera sees the world."""

    def __init__(
        self, cal: SensorCalibration, *, seed: int, model: DepthModel | None = None
    ) -> None:
        if cal.camera is None:
            raise ValueError(f"sensor {cal.frame_id} has no camera intrinsics")
        self.cal = cal
        self.model = model or DepthModel()
        self.seed = seed
        cam = cal.camera
        self.width, self.height = cam.width, cam.height
        K = cam.K
        u, v = np.meshgrid(np.arange(cam.width) + 0.0, np.arange(cam.height) + 0.0)
        d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
        norm = np.linalg.norm(d_cam, axis=-1)
        #: Optical z of a unit ray (depth = range · this).
        self._z_per_m = (1.0 / norm).ravel()
        self.origin = cal.T[:3, 3].copy()
        self._dirs = ((d_cam / norm[..., None]) @ cal.T[:3, :3].T).reshape(-1, 3)
        self._t_ground = _ground_t(self.origin, self._dirs)
        self._cos_ground = np.abs(self._dirs[:, 2])
        self._K = K

    def _object_rays(self, meshes: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """Pixels whose rays may hit an object (union of projected hulls), and which meshes
        can be seen at all."""
        mask = np.zeros((self.height, self.width), bool)
        T_cam_base = np.linalg.inv(self.cal.T)
        near = 0.05
        seen = []
        for i, verts in enumerate(meshes):
            p = verts @ T_cam_base[:3, :3].T + T_cam_base[:3, 3]
            front = p[:, 2] > near
            if not front.any():
                continue
            if not front.all():
                # Straddles the camera plane: add where the hull's edges cross the near plane.
                a, b = p[front], p[~front]
                ta = (near - a[:, None, 2]) / (b[None, :, 2] - a[:, None, 2])
                cross = a[:, None, :] + ta[..., None] * (b[None, :, :] - a[:, None, :])
                p = np.concatenate([a, cross.reshape(-1, 3)])
            uv = p[:, :2] / p[:, 2:3] * np.diag(self._K)[:2] + self._K[:2, 2]
            x0, y0 = np.clip(np.floor(uv.min(0)).astype(int) - 1, 0, [self.width, self.height])
            x1, y1 = np.clip(np.ceil(uv.max(0)).astype(int) + 2, 0, [self.width, self.height])
            if x1 > x0 and y1 > y0:
                mask[y0:y1, x0:x1] = True
                seen.append(i)
        return np.flatnonzero(mask), seen

    def render(
        self,
        objects: list[WorldObject],
        t_s: float,
        k: int,
        *,
        extra_meshes: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    ) -> np.ndarray:
        """Frame ``k``: the depth image (uint16 mm, 0 = no return) of the world at ``t_s``.
        ``extra_meshes`` are more (vertices in ``base_link``, triangles), e.g. a calibration
        board."""
        m = self.model
        t = self._t_ground.copy()
        cos = self._cos_ground.copy()
        meshes = [(p.vertices, p.triangles) for p in (posed_mesh(o, t_s) for o in objects)]
        meshes += [(v, tri) for v, tri in extra_meshes]
        idx, seen = self._object_rays([v for v, _ in meshes])
        if len(idx):
            scene = _scene([meshes[i] for i in seen])
            t_obj, _, normals = _cast(scene, self.origin, self._dirs[idx])
            closer = t_obj < t[idx]
            sel = idx[closer]
            t[sel] = t_obj[closer]
            cos[sel] = np.abs(np.einsum("ij,ij->i", normals[closer], self._dirs[sel]))
        # No hit: infinitely far, which the range check below turns into "no return".
        z = np.minimum(t * self._z_per_m, 1e6)
        rng = np.random.default_rng([self.seed, 0xDE97, k])
        z = z + rng.standard_normal(z.shape) * (m.sigma_base_m + m.sigma_quadratic_per_m * z * z)
        valid = (z >= m.range_min_m) & (z <= m.range_max_m) & (cos >= m.min_cos_incidence)
        valid &= rng.random(z.shape) >= m.random_dropout
        img = (
            np.where(valid, np.round(z * 1000.0), 0)
            .astype(np.uint16)
            .reshape(self.height, self.width)
        )
        if m.edge_dropout > 0:
            self._drop_edges(img, rng)
        return img

    def _drop_edges(self, img: np.ndarray, rng: np.random.Generator) -> None:
        # Depth discontinuities (> 5 % of the range between neighbours) lose returns, as the
        # occluded side of an edge does on a stereo or structured-light camera.
        z = img.astype(np.float32)
        dx = np.abs(np.diff(z, axis=1)) > 0.05 * np.maximum(z[:, 1:], z[:, :-1])
        dy = np.abs(np.diff(z, axis=0)) > 0.05 * np.maximum(z[1:], z[:-1])
        edge = np.zeros(img.shape, bool)
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:] |= dy
        edge[:-1] |= dy
        drop = edge & (rng.random(img.shape) < self.model.edge_dropout)
        img[drop] = 0


@dataclass(frozen=True, kw_only=True)
class LidarModel:
    """Noise and sweep layout of the simulated lidar."""

    sigma_m: float = 0.015
    random_dropout: float = 0.003
    min_cos_incidence: float = 0.02
    #: Azimuth (degrees, from x towards y) where a sweep starts; behind the rig by default.
    cut_azimuth_deg: float = 180.0


class LidarRenderer:
    """Renders sweeps (x, y, z, intensity, t offset; ring) as the calibrated lidar sees them."""

    def __init__(
        self, cal: SensorCalibration, *, seed: int, model: LidarModel | None = None
    ) -> None:
        if cal.lidar is None:
            raise ValueError(f"sensor {cal.frame_id} has no lidar intrinsics")
        self.cal = cal
        self.model = model or LidarModel()
        self.seed = seed
        li = cal.lidar
        self.beams = len(li.beam_elevations_deg)
        self.steps = li.azimuth_steps
        el = np.radians(np.array(li.beam_elevations_deg))
        j = np.arange(self.steps)
        # Clockwise seen from above: the math azimuth decreases as the sweep goes on.
        az = math.radians(self.model.cut_azimuth_deg) - 2 * math.pi * j / self.steps
        self.column_azimuth = az
        d = np.stack(
            [
                np.cos(el)[:, None] * np.cos(az)[None, :],
                np.cos(el)[:, None] * np.sin(az)[None, :],
                np.repeat(np.sin(el)[:, None], self.steps, 1),
            ],
            -1,
        ).reshape(-1, 3)
        self._dirs_lidar = d
        self.origin = cal.T[:3, 3].copy()
        self._dirs = d @ cal.T[:3, :3].T
        self._t_ground = _ground_t(self.origin, self._dirs)
        self._cos_ground = np.abs(self._dirs[:, 2])
        self._ring = np.repeat(np.arange(self.beams, dtype=np.uint8), self.steps)
        self._col = np.tile(np.arange(self.steps), self.beams)

    def seen_time(self, obj: WorldObject, sweep_start_s: float, sweep_s: float) -> float:
        """When the spinning beams cross ``obj`` during the sweep that starts at the given time."""
        t = sweep_start_s + sweep_s / 2
        T_lidar_base = np.linalg.inv(self.cal.T)
        for _ in range(3):  # fixed point: where is it when the beam gets there
            x, y, _yaw = obj.pose(t)
            p = T_lidar_base[:3, :3] @ np.array([x, y, 0.0]) + T_lidar_base[:3, 3]
            frac = (
                (math.radians(self.model.cut_azimuth_deg) - math.atan2(p[1], p[0])) / (2 * math.pi)
            ) % 1.0
            t = sweep_start_s + frac * sweep_s
        return t

    def render(
        self,
        world_objects: list[WorldObject],
        sweep_start_s: float,
        sweep_s: float,
        k: int,
        *,
        clock_rate: float = 1.0,
        extra_meshes: Sequence[tuple[np.ndarray, np.ndarray, float]] = (),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sweep ``k``: points ``(N, 5)`` float32 [x, y, z, intensity, t_offset_s] in the lidar
        frame and ring ``(N,)``. ``sweep_s`` is the sweep's world duration; ``t_offset_s`` is
        measured from the sweep start on the sensor's clock, which runs ``clock_rate`` fast.
        ``extra_meshes`` are more (vertices in ``base_link``, triangles, reflectivity) that
        stand still during the sweep, e.g. a calibration board."""
        m = self.model
        t = self._t_ground.copy()
        cos = self._cos_ground.copy()
        refl = np.full(len(t), _GROUND_REFLECTIVITY)
        seen = [(o, self.seen_time(o, sweep_start_s, sweep_s)) for o in world_objects]
        objs = [o for o, t_seen in seen if o.alive(t_seen)]
        if objs or extra_meshes:
            posed = [posed_mesh(o, t_seen) for o, t_seen in seen if o.alive(t_seen)]
            meshes = [(p.vertices, p.triangles) for p in posed]
            scene = _scene(meshes + [(v, tri) for v, tri, _ in extra_meshes])
            t_obj, gid, normals = _cast(scene, self.origin, self._dirs)
            closer = t_obj < t
            t[closer] = t_obj[closer]
            cos[closer] = np.abs(np.einsum("ij,ij->i", normals[closer], self._dirs[closer]))
            obj_refl = np.array(
                [o.cls.reflectivity for o in objs] + [r for _, _, r in extra_meshes]
            )
            refl[closer] = obj_refl[gid[closer].astype(np.int64)]
        rng = np.random.default_rng([self.seed, 0x1D4A, k])
        li = self.cal.lidar
        assert li is not None
        r = np.minimum(t, 1e6) + rng.standard_normal(t.shape) * m.sigma_m
        valid = (r >= li.range_min_m) & (r <= li.range_max_m) & (cos >= m.min_cos_incidence)
        valid &= rng.random(t.shape) >= m.random_dropout
        n = int(valid.sum())
        pts = np.empty((n, 5), np.float32)
        pts[:, :3] = self._dirs_lidar[valid] * r[valid, None]
        # Intensity: reflectivity · cos(incidence), 0..255 like a Velodyne's byte.
        pts[:, 3] = np.clip(255.0 * refl[valid] * cos[valid] + rng.normal(0, 2.0, n), 0, 255)
        pts[:, 4] = self._col[valid] * (sweep_s * clock_rate / self.steps)
        return pts, self._ring[valid].copy()
