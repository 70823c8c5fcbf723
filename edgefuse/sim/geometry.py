"""Object meshes: each object is a few convex prisms, posed in ``base_link``.

A car is a body and a cabin (side profiles extruded across its width), a pedestrian two
octagonal prisms (body and head), a cyclist a thin frame and a rider. Convex parts keep the
camera's painter's algorithm exact within a part and give Open3D clean triangles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

from edgefuse.sim.world import Shape, WorldObject


@dataclass(frozen=True)
class _Prism:
    #: ``z``: ``poly`` is an (x, y) footprint extruded along z; ``y``: an (x, z) profile
    #: extruded along y. Unit object coordinates: x, y in [-0.5, 0.5], z in [0, 1].
    axis: Literal["y", "z"]
    poly: tuple[tuple[float, float], ...]
    lo: float
    hi: float


def _octagon(cx: float, cy: float, rx: float, ry: float) -> tuple[tuple[float, float], ...]:
    return tuple(
        (cx + rx * math.cos(a), cy + ry * math.sin(a))
        for a in np.linspace(0, 2 * math.pi, 8, endpoint=False) + math.pi / 8
    )


_PARTS: dict[Shape, tuple[_Prism, ...]] = {
    "car": (
        _Prism(
            "y", ((-0.5, 0.12), (0.5, 0.12), (0.5, 0.48), (0.42, 0.56), (-0.5, 0.56)), -0.5, 0.5
        ),
        _Prism("y", ((-0.36, 0.56), (0.24, 0.56), (0.08, 1.0), (-0.3, 1.0)), -0.45, 0.45),
    ),
    "person": (
        _Prism("z", _octagon(0.0, 0.0, 0.5, 0.5), 0.0, 0.84),
        _Prism("z", _octagon(0.0, 0.0, 0.28, 0.28), 0.86, 1.0),
    ),
    "bicycle": (
        _Prism("y", ((-0.5, 0.0), (0.5, 0.0), (0.5, 0.55), (-0.5, 0.55)), -0.08, 0.08),
        _Prism("z", _octagon(-0.08, 0.0, 0.14, 0.5), 0.4, 1.0),
    ),
}


@dataclass(frozen=True)
class UnitMesh:
    """A shape's mesh in unit object coordinates."""

    vertices: np.ndarray  # (V, 3)
    #: Faces as vertex-index polygons (convex), which part each belongs to, their outward
    #: normals and centroids.
    faces: tuple[np.ndarray, ...]
    face_part: np.ndarray
    normals: np.ndarray
    centroids: np.ndarray
    #: Triangles (T, 3) for ray casting.
    triangles: np.ndarray


@cache
def unit_mesh(shape: Shape) -> UnitMesh:
    """The mesh of ``shape`` in unit coordinates (scaled by length, width, height to pose)."""
    verts: list[np.ndarray] = []
    faces: list[np.ndarray] = []
    parts: list[int] = []
    base = 0
    for pi, p in enumerate(_PARTS[shape]):
        poly = np.array(p.poly)
        n = len(poly)
        lo = np.full(n, p.lo)
        hi = np.full(n, p.hi)
        if p.axis == "z":
            ring_lo = np.stack([poly[:, 0], poly[:, 1], lo], 1)
            ring_hi = np.stack([poly[:, 0], poly[:, 1], hi], 1)
        else:
            ring_lo = np.stack([poly[:, 0], lo, poly[:, 1]], 1)
            ring_hi = np.stack([poly[:, 0], hi, poly[:, 1]], 1)
        verts += [ring_lo, ring_hi]
        idx_lo = np.arange(n) + base
        idx_hi = idx_lo + n
        faces += [idx_lo, idx_hi[::-1]]
        faces += [
            np.array([idx_lo[i], idx_lo[(i + 1) % n], idx_hi[(i + 1) % n], idx_hi[i]])
            for i in range(n)
        ]
        parts += [pi] * (n + 2)
        base += 2 * n
    v = np.concatenate(verts)
    face_part = np.array(parts)
    centroids = np.array([v[f].mean(0) for f in faces])
    normals = np.empty_like(centroids)
    for i, f in enumerate(faces):
        n_ = np.cross(v[f[1]] - v[f[0]], v[f[2]] - v[f[0]])
        n_ /= np.linalg.norm(n_)
        centre = centroids[face_part == face_part[i]].mean(0)
        # Convex parts: the outward normal points away from the part's centre.
        normals[i] = n_ if np.dot(n_, centroids[i] - centre) > 0 else -n_
    tris = [np.array([f[0], f[i], f[i + 1]]) for f in faces for i in range(1, len(f) - 1)]
    return UnitMesh(v, tuple(faces), face_part, normals, centroids, np.array(tris, np.int32))


@dataclass(frozen=True)
class PosedMesh:
    """An object's mesh at one instant, in ``base_link``."""

    vertices: np.ndarray  # (V, 3) float64
    faces: tuple[np.ndarray, ...]
    #: Outward unit normal and centroid of each face.
    normals: np.ndarray
    centroids: np.ndarray
    triangles: np.ndarray


def pose_matrix(x: float, y: float, yaw: float) -> np.ndarray:
    """4x4 pose of an object's ground-centre frame in ``base_link``."""
    c, s = math.cos(yaw), math.sin(yaw)
    T = np.eye(4)
    T[:2, :2] = [[c, -s], [s, c]]
    T[0, 3], T[1, 3] = x, y
    return T


def posed_mesh(obj: WorldObject, t_s: float) -> PosedMesh:
    """``obj``'s mesh at world time ``t_s`` in ``base_link``."""
    um = unit_mesh(obj.cls.shape)
    x, y, yaw = obj.pose(t_s)
    T = pose_matrix(x, y, yaw)
    R, t = T[:3, :3], T[:3, 3]
    size = np.array(obj.size_m)
    # Normals of a non-uniformly scaled mesh transform with the inverse scale.
    n = (um.normals / size) @ R.T
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    return PosedMesh(
        (um.vertices * size) @ R.T + t, um.faces, n, (um.centroids * size) @ R.T + t, um.triangles
    )


def box_corners(box: np.ndarray) -> np.ndarray:
    """The 8 corners (8, 3) of a 3D box ``[x, y, z, l, w, h, yaw]`` (z is the centre)."""
    x, y, z, length, w, h, yaw = (float(v) for v in box)
    c, s = math.cos(yaw), math.sin(yaw)
    dx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * length / 2
    dy = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    dz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    return np.stack([x + c * dx - s * dy, y + s * dx + c * dy, z + dz], 1)
