"""The calibration scenario: a chessboard on a stand, held in known poses before the whole rig.

A :class:`BoardTarget` (default 8x6 inner corners of 0.1 m squares on a 1.0 x 0.8 m white
plate, 1 cm thick, on a pole from the ground to the middle of its back) is moved through
:class:`CalibrationScene` poses: each is held still for ``hold_s``, then the board moves to the
next over ``move_s`` (position and rotation vector interpolated linearly). The poses are drawn
so that the whole plate is in the colour camera's and the depth camera's images, faces all
three sensors and lies within the lidar's beams (distance 2.5-6 m from the camera, tilts up
to ±30° about both board axes, spread across the image).

The sensors render it through the simulator's own renderers: the camera paints the printed
pattern, anti-aliased by 3x3 super-sampling, on its undistorted canvas before the lens model
and noise; the depth camera and lidar ray-cast the plate and pole as extra meshes with their
usual noise and dropouts. The scene's world (scenario ``calibration``) holds nothing else.

Ground truth: :meth:`CalibrationScene.pose_at` (``T_base_link_board`` at any world time), and
in a generated session the ``sim/board`` topic, one message per camera frame with that matrix
as its payload and the pose index and stillness in its meta. The board frame is OpenCV's: the
origin at the first inner corner, x along a row of corners, y down the columns, z into the
board (the printed side faces -z).
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from edgefuse.calib.boards import Board
from edgefuse.calib.model import RigCalibration
from edgefuse.sim.camera import FacePolygon, PinholeView, fill
from edgefuse.sim.generate import (
    GENERATE_EPOCH_NS,
    sample_header,
    session_metadata,
    session_writer,
)
from edgefuse.sim.rig import (
    CameraSource,
    DepthSource,
    LidarSource,
    Sample,
    SimParams,
    Source,
    load_rig,
)

#: Topics of a generated calibration session.
TOPICS = {
    "camera": "camera/image",
    "depth": "depth/image",
    "lidar": "lidar/points",
    "board": "sim/board",
}
_SUPERSAMPLE = 3


@dataclass(frozen=True, kw_only=True)
class BoardTarget:
    """A printed chessboard on a plate, on a pole standing on the ground."""

    cols: int = 8
    rows: int = 6
    square_m: float = 0.1
    plate_w_m: float = 1.0
    plate_h_m: float = 0.8
    thickness_m: float = 0.01
    #: Grey levels of the print's white and black (lit head-on by the sun: about x0.7).
    white: float = 230.0
    black: float = 25.0
    reflectivity: float = 0.6
    pole_m: float = 0.04

    def __post_init__(self) -> None:
        if self.plate_w_m < (self.cols + 1) * self.square_m or (
            self.plate_h_m < (self.rows + 1) * self.square_m
        ):
            raise ValueError("the plate must hold the (cols + 1) x (rows + 1) squares")

    def board(self) -> Board:
        """The board as the calibration tools describe it."""
        return Board(kind="chessboard", cols=self.cols, rows=self.rows, square_m=self.square_m)

    @property
    def centre(self) -> np.ndarray:
        """Centre of the pattern (and plate) in the board frame."""
        return np.array([(self.cols - 1) / 2, (self.rows - 1) / 2, 0.0]) * self.square_m

    def plate_corners(self) -> np.ndarray:
        """The printed face's 4 corners (4, 3) in the board frame."""
        w, h = self.plate_w_m / 2, self.plate_h_m / 2
        return np.asarray(self.centre + np.array([[-w, -h, 0], [w, -h, 0], [w, h, 0], [-w, h, 0]]))

    def grey(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Printed grey level at board coordinates (NaN off the plate)."""
        sq = self.square_m
        a = np.floor(x / sq).astype(np.int64) + 1
        b = np.floor(y / sq).astype(np.int64) + 1
        in_pattern = (a >= 0) & (a <= self.cols) & (b >= 0) & (b <= self.rows)
        val = np.where(in_pattern & ((a + b) % 2 == 0), self.black, self.white)
        c = self.centre
        on = (np.abs(x - c[0]) <= self.plate_w_m / 2) & (np.abs(y - c[1]) <= self.plate_h_m / 2)
        return np.where(on, val, np.nan)

    def meshes(self, T_base_board: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Plate and pole as (vertices in ``base_link``, triangles), for ray casting."""
        front = self.plate_corners()
        back = front + np.array([0.0, 0.0, self.thickness_m])
        plate = _h(T_base_board, np.vstack([front, back]))
        # The pole: vertical in base_link, from the ground to just behind the plate's centre.
        behind = np.array([0.0, 0.0, self.thickness_m + self.pole_m / 2])
        top = _h(T_base_board, (self.centre + behind)[None])[0]
        r = self.pole_m / 2
        sq = np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
        lo = np.column_stack([top[0] + sq[:, 0], top[1] + sq[:, 1], np.zeros(4)])
        hi = np.column_stack([top[0] + sq[:, 0], top[1] + sq[:, 1], np.full(4, top[2])])
        pole = np.vstack([lo, hi])
        return [(plate, _BOX_TRIS), (pole, _BOX_TRIS)]


def _h(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.asarray(p @ T[:3, :3].T + T[:3, 3])


# A box from 4 bottom (0-3) and 4 top (4-7) vertices, both in the same winding.
_BOX_TRIS = np.array(
    [[0, 1, 2], [0, 2, 3], [4, 6, 5], [4, 7, 6]]
    + [[i, (i + 1) % 4, 4 + (i + 1) % 4] for i in range(4)]
    + [[i, 4 + (i + 1) % 4, 4 + i] for i in range(4)],
    np.int32,
)


def _rotvec(R: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.Rodrigues(np.asarray(R, np.float64))[0].ravel())


def _rotation(v: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.Rodrigues(np.asarray(v, np.float64).reshape(3, 1))[0])


@dataclass(frozen=True, kw_only=True, eq=False)
class CalibrationScene:
    """The board's poses over time: pose ``i`` is held during
    ``[i·(hold_s + move_s), i·(hold_s + move_s) + hold_s)``, then it moves to pose ``i + 1``."""

    target: BoardTarget = field(default_factory=BoardTarget)
    #: ``T_base_link_board`` of each pose.
    poses: tuple[np.ndarray, ...]
    hold_s: float = 2.0
    move_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.poses:
            raise ValueError("a calibration scene needs at least one pose")
        if self.hold_s <= 0 or self.move_s < 0:
            raise ValueError(f"need hold_s > 0 and move_s >= 0, got {self.hold_s}, {self.move_s}")

    @property
    def duration_s(self) -> float:
        """From the first pose to the end of the last hold."""
        return len(self.poses) * (self.hold_s + self.move_s) - self.move_s

    def pose_at(self, t_s: float) -> tuple[np.ndarray, int, bool]:
        """``(T_base_link_board, pose index, still)`` at world time ``t_s``; while moving, the
        index is the pose it left."""
        period = self.hold_s + self.move_s
        i = math.floor(max(t_s, 0.0) / period)
        if i >= len(self.poses) - 1:
            return self.poses[-1].copy(), len(self.poses) - 1, True
        into = max(t_s, 0.0) - i * period
        if into < self.hold_s:
            return self.poses[i].copy(), i, True
        a = (into - self.hold_s) / self.move_s
        A, B = self.poses[i], self.poses[i + 1]
        T = np.eye(4)
        # Interpolate the relative rotation, so the path is the short way round.
        T[:3, :3] = A[:3, :3] @ _rotation(a * _rotvec(A[:3, :3].T @ B[:3, :3]))
        T[:3, 3] = (1 - a) * A[:3, 3] + a * B[:3, 3]
        return T, i, False

    def describe(self) -> dict[str, Any]:
        """The scene as plain data (session metadata)."""
        return {
            "target": asdict(self.target),
            "hold_s": self.hold_s,
            "move_s": self.move_s,
            "poses_T_base_link_board": [np.round(p, 12).tolist() for p in self.poses],
        }


def _inside(uv: np.ndarray, w: int, h: int, margin: float) -> bool:
    return bool(
        np.all(uv[:, 0] >= margin)
        and np.all(uv[:, 0] <= w - 1 - margin)
        and np.all(uv[:, 1] >= margin)
        and np.all(uv[:, 1] <= h - 1 - margin)
    )


def make_poses(
    rig: RigCalibration,
    target: BoardTarget | None = None,
    *,
    n: int = 30,
    seed: int = 0,
    distance_m: tuple[float, float] = (2.5, 6.0),
    tilt_deg: float = 30.0,
    height_m: tuple[float, float] = (0.4, 2.6),
    camera: str = "camera",
    depth: str = "depth",
    lidar: str = "lidar",
) -> tuple[np.ndarray, ...]:
    """``n`` board poses ``T_base_link_board`` seen whole by ``camera`` and ``depth``, facing
    them and ``lidar`` and inside its beams: distances stratified over ``distance_m``, tilts
    uniform in ±``tilt_deg`` about both board axes, roll ±10°, centres across the image, the
    plate between ``height_m`` above the ground."""
    target = target or BoardTarget()
    rng = np.random.default_rng([seed, 0xCA11B])
    cam = rig.sensor(camera)
    assert cam.camera is not None
    T_bc = cam.T
    others = [rig.sensor(s) for s in (depth, lidar) if s in rig.sensors]
    poses: list[np.ndarray] = []
    tries = 0
    while len(poses) < n:
        tries += 1
        if tries > 200 * n:
            raise RuntimeError(f"found only {len(poses)} of {n} board poses the rig sees whole")
        stratum = len(poses) % n
        z = distance_m[0] + (distance_m[1] - distance_m[0]) * (stratum + rng.random()) / n
        K = cam.camera.K
        u = rng.uniform(0.15, 0.85) * cam.camera.width
        v = rng.uniform(0.2, 0.8) * cam.camera.height
        centre_cam = np.array([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0]) * z
        ax, ay = np.radians(rng.uniform(-tilt_deg, tilt_deg, 2))
        az = np.radians(rng.uniform(-10.0, 10.0))
        R = _rotation(np.array([ax, 0, 0])) @ _rotation(np.array([0, ay, 0]))
        R = R @ _rotation(np.array([0, 0, az]))
        T_cb = np.eye(4)
        T_cb[:3, :3] = R
        T_cb[:3, 3] = centre_cam - R @ target.centre
        T = T_bc @ T_cb
        heights = _h(T, target.plate_corners())[:, 2]
        if heights.min() < height_m[0] or heights.max() > height_m[1]:
            continue
        if _sees_whole(rig, cam, T, target) and all(_sees_whole(rig, s, T, target) for s in others):
            poses.append(T)
    return tuple(poses)


def _sees_whole(rig: RigCalibration, s: Any, T_base_board: np.ndarray, target: BoardTarget) -> bool:
    T_sb = np.linalg.inv(s.T) @ T_base_board
    corners = _h(T_sb, target.plate_corners())
    centre = _h(T_sb, target.centre[None])[0]
    normal = T_sb[:3, 2]  # into the board: the sensor must be on the -z (printed) side
    cos = float(normal @ centre / np.linalg.norm(centre))
    if cos < 0.4:
        return False
    if s.camera is not None:
        if np.any(corners[:, 2] < 0.3):
            return False
        uv, _ = cv2.projectPoints(corners, np.zeros(3), np.zeros(3), s.camera.K, s.camera.D)
        return _inside(uv.reshape(-1, 2), s.camera.width, s.camera.height, 12.0)
    if s.lidar is not None:
        rng_m = np.linalg.norm(corners, axis=1)
        el = np.degrees(np.arcsin(corners[:, 2] / rng_m))
        beams = s.lidar.beam_elevations_deg
        return bool(
            rng_m.min() > s.lidar.range_min_m + 0.3
            and el.min() > min(beams) + 1.0
            and el.max() < max(beams) - 1.0
        )
    return True


def default_scene(
    rig: RigCalibration, *, n: int = 30, seed: int = 0, hold_s: float = 2.0, move_s: float = 1.0
) -> CalibrationScene:
    """The default target in :func:`make_poses` poses."""
    target = BoardTarget()
    return CalibrationScene(
        target=target,
        poses=make_poses(rig, target, n=n, seed=seed),
        hold_s=hold_s,
        move_s=move_s,
    )


# --- rendering ---------------------------------------------------------------------------------


def board_painter(
    target: BoardTarget, T_base_board: np.ndarray, shade: Callable[[FacePolygon], Any]
) -> Callable[[np.ndarray, PinholeView], None]:
    """A ``paint`` callback for :meth:`CameraRenderer.render` drawing the pole and the
    printed plate (3x3 super-sampled) on the undistorted canvas."""

    def paint(img: np.ndarray, view: PinholeView) -> None:
        verts, _ = target.meshes(T_base_board)[1]
        pole_k = _shade_k(shade, np.array([-1.0, 0.0, 0.0]), verts.mean(0))
        grey = 70.0 * pole_k
        for i in range(4):  # pole sides; the plate is painted over its top
            quad = verts[[i, (i + 1) % 4, 4 + (i + 1) % 4, 4 + i]]
            px = view.polygon(view.to_camera(quad))
            if px is not None:
                fill(img, px, (grey, grey, grey))
        _paint_plate(img, view, target, T_base_board, shade)

    return paint


def _shade_k(
    shade: Callable[[FacePolygon], Any], normal: np.ndarray, centroid: np.ndarray
) -> float:
    face = FacePolygon(0, 0.0, np.zeros((0, 2)), np.full(3, 100.0), normal, centroid)
    return float(shade(face)[0]) / 100.0


def _paint_plate(
    img: np.ndarray,
    view: PinholeView,
    target: BoardTarget,
    T_base_board: np.ndarray,
    shade: Callable[[FacePolygon], Any],
) -> None:
    T_cb = view.T_cam_base @ T_base_board
    corners = _h(T_cb, target.plate_corners())
    if np.any(corners[:, 2] < 0.2):
        return  # partly behind the camera: never in the scene's poses
    uv = corners[:, :2] / corners[:, 2:3] * np.diag(view.K)[:2] + view.K[:2, 2]
    x0, y0 = np.clip(np.floor(uv.min(0)).astype(int) - 1, 0, [view.width, view.height])
    x1, y1 = np.clip(np.ceil(uv.max(0)).astype(int) + 2, 0, [view.width, view.height])
    if x1 <= x0 or y1 <= y0:
        return
    # Canvas pixel -> board plane: the inverse of the plane's homography K [r1 r2 t].
    H = view.K @ np.column_stack([T_cb[:3, 0], T_cb[:3, 1], T_cb[:3, 3]])
    Hinv = np.linalg.inv(H)
    s = _SUPERSAMPLE
    off = (np.arange(s) + 0.5) / s - 0.5
    u, v = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
    su = (u[..., None, None] + off[None, None, None, :]).reshape(*u.shape, -1)
    sv = (v[..., None, None] + off[None, None, :, None]).reshape(*u.shape, -1)
    su, sv = np.broadcast_arrays(su, sv)
    w = Hinv[2, 0] * su + Hinv[2, 1] * sv + Hinv[2, 2]
    bx = (Hinv[0, 0] * su + Hinv[0, 1] * sv + Hinv[0, 2]) / w
    by = (Hinv[1, 0] * su + Hinv[1, 1] * sv + Hinv[1, 2]) / w
    g = target.grey(bx, by)
    on = ~np.isnan(g)
    cover = on.mean(-1)
    printed = np.where(on, g, 0.0).sum(-1) / np.maximum(on.sum(-1), 1)
    front = T_cb[:3, 2] @ T_cb[:3, 3] > 0  # camera on the printed side
    centroid = _h(T_base_board, target.centre[None])[0]
    k = _shade_k(shade, -T_base_board[:3, 2] if front else T_base_board[:3, 2], centroid)
    colour = printed * k if front else np.full_like(printed, 120.0 * k)
    roi = img[y0:y1, x0:x1].astype(np.float64)
    out = roi * (1 - cover[..., None]) + (colour * cover)[..., None]
    img[y0:y1, x0:x1] = np.clip(np.round(out), 0, 255).astype(np.uint8)


class _InScene:
    """A source that renders the calibration scene (given by :func:`_in_scene`)."""

    scene: CalibrationScene


_S = TypeVar("_S", bound=_InScene)


def _in_scene(source: _S, scene: CalibrationScene) -> _S:
    """``source``, rendering ``scene``."""
    source.scene = scene
    return source


class BoardCameraSource(_InScene, CameraSource):
    """The colour camera of the calibration scene."""

    def render(self, k: int, t_s: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        T, _, _ = self.scene.pose_at(t_s)
        paint = board_painter(self.scene.target, T, self.renderer.shade)
        return [self.renderer.render(self.world.objects_at(t_s), t_s, k, paint=paint)], {}


class BoardDepthSource(_InScene, DepthSource):
    """The depth camera of the calibration scene."""

    def render(self, k: int, t_s: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        T, _, _ = self.scene.pose_at(t_s)
        extra = self.scene.target.meshes(T)
        img = self.renderer.render(self.world.objects_at(t_s), t_s, k, extra_meshes=extra)
        return [img], {"depth_scale_m": 0.001}


class BoardLidarSource(_InScene, LidarSource):
    """The lidar of the calibration scene: the board is posed when the beams cross it."""

    def render(self, k: int, t_s: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        sweep_s = self.period_s / self.clock.rate
        T0, _, _ = self.scene.pose_at(t_s)
        c = np.linalg.inv(self.cal.T) @ T0 @ np.append(self.scene.target.centre, 1.0)
        frac = (
            (math.radians(self.renderer.model.cut_azimuth_deg) - math.atan2(c[1], c[0]))
            / (2 * math.pi)
        ) % 1.0
        T, _, _ = self.scene.pose_at(t_s + frac * sweep_s)
        extra = [(v, tri, self.scene.target.reflectivity) for v, tri in self.scene.target.meshes(T)]
        objs = self.world.objects_between(t_s, t_s + sweep_s)
        pts, ring = self.renderer.render(
            objs, t_s, sweep_s, k, clock_rate=self.clock.rate, extra_meshes=extra
        )
        return [pts, ring], self.sweep_meta()


class BoardTruthSource(_InScene, Source):
    """``T_base_link_board`` at each camera frame's instant (delivered with the frame)."""

    sensor, stream, encoding = "camera", "board", "sim_board"

    def delivery_s(self, k: int) -> float | None:
        # Truth exists for every frame the camera takes, delivered or dropped.
        d = self.clock.delivery(k, self.t_world_s(k))
        return self.t_world_s(k) + self.clock.cfg.latency_ms * 1e-3 if d is None else d

    def render(self, k: int, t_s: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        T, i, still = self.scene.pose_at(t_s)
        t = self.scene.target
        meta = {
            "pose": i,
            "still": still,
            "board": {"cols": t.cols, "rows": t.rows, "square_m": t.square_m},
            "camera_delivered": self.clock.delivery(k, t_s) is not None,
        }
        return [T], meta


def calibration_sources(
    params: SimParams,
    scene: CalibrationScene,
    *,
    rates_hz: dict[str, float] | None = None,
    sensors: tuple[str, ...] = tuple(TOPICS),
) -> dict[str, Source]:
    """The sources of a calibration session (keys as :data:`TOPICS`); ``rates_hz`` overrides
    the rig's rates (camera and depth 30, lidar 10; the board truth follows the camera)."""
    rig = load_rig(params)
    rates = {"camera": 30.0, "depth": 30.0, "lidar": 10.0, **(rates_hz or {})}
    rates["board"] = rates["camera"]
    kinds: dict[str, type[_InScene]] = {
        "camera": BoardCameraSource,
        "depth": BoardDepthSource,
        "lidar": BoardLidarSource,
        "board": BoardTruthSource,
    }
    unknown = set(sensors) - set(kinds)
    if unknown:
        raise ValueError(f"unknown sensors {sorted(unknown)}; expected some of {list(kinds)}")
    out: dict[str, Source] = {}
    for name in sensors:
        source = kinds[name](params, rate_hz=rates[name], rig=rig)  # type: ignore[call-arg]
        assert isinstance(source, Source)
        out[name] = _in_scene(source, scene)
    return out


def _samples(sources: dict[str, Source], duration_s: float) -> Iterator[tuple[str, Sample]]:
    """Delivered samples in delivery order (as :func:`edgefuse.sim.generate.samples`)."""

    def one(name: str) -> Iterator[tuple[float, str, int, Sample]]:
        src, last, k = sources[name], -math.inf, 0
        while src.t_world_s(k) < duration_s:
            s = src.sample(k)
            if s is not None:
                last = max(last, s.delivery_s)  # one pipe per sensor: in order
                yield last, name, k, replace(s, delivery_s=last)
            k += 1

    for _, name, _, s in heapq.merge(*(one(n) for n in sources)):
        yield name, s


def generate_calibration(
    path: str | Path,
    params: SimParams | None = None,
    *,
    scene: CalibrationScene | None = None,
    duration_s: float | None = None,
    rates_hz: dict[str, float] | None = None,
    sensors: tuple[str, ...] = tuple(TOPICS),
) -> dict[str, int]:
    """Write a calibration session (scenario ``calibration``) to ``path``: camera, depth and
    lidar seeing the board, the board truth on ``sim/board``, the rig calibration attached and
    the scene in the metadata (``calibration_scene``). Returns messages per topic."""
    params = replace(params or SimParams(), scenario="calibration")
    rig = load_rig(params)
    scene = scene or default_scene(rig, seed=params.seed)
    duration = scene.duration_s if duration_s is None else duration_s
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    sources = calibration_sources(params, scene, rates_hz=rates_hz, sensors=sensors)
    metadata: dict[str, dict[str, str]] = {
        **session_metadata(params, source="edgefuse sim calibration", duration_s=duration),
        "calibration_scene": {"json": json.dumps(scene.describe())},
    }
    seq: dict[str, int] = {}
    with session_writer(path, params, metadata) as out:
        for name, s in _samples(sources, duration):
            topic = TOPICS[name]
            n = seq.get(topic, 0)
            seq[topic] = n + 1
            if name == "board":  # the truth: base_link's, at the instant it describes
                t_ns = GENERATE_EPOCH_NS + round(s.t_world_s * 1e9)
                header = sample_header(topic, n, s, frame_id="base_link", t_ns=t_ns)
            else:
                header = sample_header(topic, n, s)
            out.write(topic, header, s.arrays)
        counts = dict(out.counts)
    return counts


def scene_from_metadata(meta: dict[str, dict[str, str]]) -> CalibrationScene:
    """The scene a generated session recorded in its ``calibration_scene`` metadata."""
    d = json.loads(meta["calibration_scene"]["json"])
    return CalibrationScene(
        target=BoardTarget(**d["target"]),
        poses=tuple(np.array(p, np.float64) for p in d["poses_T_base_link_board"]),
        hold_s=d["hold_s"],
        move_s=d["move_s"],
    )
