"""The simulated world: a ground plane and moving objects of several classes, as functions of time.

The rig stands still, so the world frame *is* ``base_link`` (x forward, y left, z up, the ground
at z = 0). Objects enter and leave by a seeded Poisson process per class; each has a shape, a
size, a colour, a lidar reflectivity, a trajectory that is an analytic function of time and a
sound signature. Every sensor process builds its own :class:`World` from the same scenario and
seed and asks for the state at its own sample times: generation is sequential in spawn time and
independent of the queries, so all processes see the same objects in the same places.

Classes ``car`` and ``ev`` are built to look the same to camera, depth and lidar (same shape,
size range, palette and reflectivity): only their sound (an engine's harmonics or an electric
vehicle's warning tones) tells them apart.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from edgefuse.sim.scenarios import Scenario

Shape = Literal["car", "person", "bicycle"]
Motion = Literal["lane", "walk"]


@dataclass(frozen=True, kw_only=True)
class ObjectClass:
    """What every object of a class has in common."""

    name: str
    class_id: int
    shape: Shape
    #: Length, width, height ranges (m); x forward along the object's heading.
    size_min_m: tuple[float, float, float]
    size_max_m: tuple[float, float, float]
    palette_bgr: tuple[tuple[int, int, int], ...]
    #: Lidar reflectivity 0..1 (intensity of a head-on return).
    reflectivity: float
    motion: Motion
    speed_mps: tuple[float, float]
    #: What it sounds like (see :mod:`edgefuse.sim.audio`).
    sound: Literal["engine", "ev_tones", "footsteps", "freewheel"]
    #: Sound pressure amplitude at 1 m, full scale = 1.0 at the microphone.
    sound_level: float


_VEHICLE_PALETTE = ((40, 40, 40), (200, 200, 200), (30, 30, 150), (140, 80, 20), (90, 90, 90))

_CAR = ObjectClass(
    name="car",
    class_id=0,
    shape="car",
    size_min_m=(3.9, 1.7, 1.4),
    size_max_m=(4.8, 1.9, 1.6),
    palette_bgr=_VEHICLE_PALETTE,
    reflectivity=0.55,
    motion="lane",
    speed_mps=(6.0, 14.0),
    sound="engine",
    sound_level=0.12,
)

#: The classes of the simulated world, by id. ``ev`` is a ``car`` that sounds different.
CLASSES: tuple[ObjectClass, ...] = (
    _CAR,
    replace(_CAR, name="ev", class_id=1, sound="ev_tones", sound_level=0.05),
    ObjectClass(
        name="pedestrian",
        class_id=2,
        shape="person",
        size_min_m=(0.45, 0.45, 1.55),
        size_max_m=(0.6, 0.6, 1.9),
        palette_bgr=((60, 90, 160), (150, 60, 60), (50, 120, 50)),
        reflectivity=0.3,
        motion="walk",
        speed_mps=(0.8, 1.6),
        sound="footsteps",
        sound_level=0.02,
    ),
    ObjectClass(
        name="cyclist",
        class_id=3,
        shape="bicycle",
        size_min_m=(1.6, 0.55, 1.6),
        size_max_m=(1.85, 0.7, 1.85),
        palette_bgr=((20, 160, 220), (160, 40, 160)),
        reflectivity=0.35,
        motion="lane",
        speed_mps=(3.0, 7.0),
        sound="freewheel",
        sound_level=0.03,
    ),
)
CLASS_BY_NAME = {c.name: c for c in CLASSES}


@dataclass(frozen=True, kw_only=True)
class Sound:
    """One object's sound signature parameters (see :mod:`edgefuse.sim.audio`)."""

    kind: str
    level: float
    #: Fundamental or tone frequency (Hz), or event rate (Hz) for footsteps and clicks.
    freq_hz: float
    #: Seed of the object's sound details (where it reads the shared noise tables), so its
    #: sound is the same in every process.
    seed: int


@dataclass(frozen=True, kw_only=True)
class WorldObject:
    """One object for its whole life: class, size, looks, trajectory and sound."""

    object_id: int
    cls: ObjectClass
    size_m: tuple[float, float, float]
    color_bgr: tuple[int, int, int]
    t_enter_s: float
    t_exit_s: float
    #: Trajectory waypoints (times s, xy m): linear in between; a single waypoint stands still.
    times_s: np.ndarray = field(repr=False)
    xy_m: np.ndarray = field(repr=False)
    #: Lateral wobble amplitude (m) and frequency (Hz): a cyclist's sway.
    wobble_m: float = 0.0
    wobble_hz: float = 0.0
    sound: Sound

    def __post_init__(self) -> None:
        pts = [(float(r[0]), float(r[1]), float(r[2]) if len(r) > 2 else 0.0) for r in self.xy_m]
        object.__setattr__(self, "_path", ([float(t) for t in self.times_s], pts))

    _path: tuple[list[float], list[tuple[float, float, float]]] = field(
        init=False, repr=False, compare=False
    )

    def alive(self, t_s: float) -> bool:
        """Whether the object is in the world at ``t_s``."""
        return self.t_enter_s <= t_s < self.t_exit_s

    def pose(self, t_s: float) -> tuple[float, float, float]:
        """``(x, y, yaw)`` of the object's ground-centre at ``t_s`` (clamped to its life)."""
        # Plain floats, not numpy: this runs for every object of every sample of every sensor.
        ts, pts = self._path
        if len(ts) == 1:
            return pts[0]
        i = min(max(bisect.bisect_right(ts, t_s) - 1, 0), len(ts) - 2)
        a = min(max((t_s - ts[i]) / (ts[i + 1] - ts[i]), 0.0), 1.0)
        (x0, y0, _), (x1, y1, _) = pts[i], pts[i + 1]
        dx, dy = x1 - x0, y1 - y0
        yaw = math.atan2(dy, dx)
        x, y = x0 + a * dx, y0 + a * dy
        if self.wobble_m:
            s = self.wobble_m * math.sin(2 * math.pi * self.wobble_hz * (t_s - self.t_enter_s))
            x, y = x - s * math.sin(yaw), y + s * math.cos(yaw)
        return float(x), float(y), yaw

    def box(self, t_s: float) -> np.ndarray:
        """The 3D box at ``t_s`` in ``base_link``: center x, y, z, length, width, height, yaw."""
        x, y, yaw = self.pose(t_s)
        length, w, h = self.size_m
        return np.array([x, y, h / 2, length, w, h, yaw])


class World:
    """The objects of a scenario, generated lazily in time order from a seed."""

    #: Objects spawn this long before t = 0, so the world is already busy at the start.
    WARMUP_S = 90.0

    def __init__(self, scenario: Scenario, *, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self._rng = np.random.default_rng([seed, 0x5EED])
        self._objects: list[WorldObject] = []
        self._next_id = 0
        # Per class: the time of its next spawn.
        self._next_spawn: dict[str, float] = {}
        if scenario.static:
            self._place_static()
        else:
            for c in CLASSES:
                rate = scenario.spawn_rate_hz.get(c.name, 0.0)
                if rate > 0:
                    self._next_spawn[c.name] = -self.WARMUP_S + self._rng.exponential(1 / rate)
        self._generated_to = -self.WARMUP_S

    def objects_at(self, t_s: float) -> list[WorldObject]:
        """The objects alive at ``t_s`` (world seconds since the scenario started)."""
        self._generate_until(t_s + 1.0)
        return [o for o in self._objects if o.alive(t_s)]

    def objects_between(self, t0_s: float, t1_s: float) -> list[WorldObject]:
        """The objects alive at some instant of ``[t0_s, t1_s)`` (a sweep, sound in flight)."""
        self._generate_until(t1_s + 1.0)
        return [o for o in self._objects if o.t_enter_s < t1_s and o.t_exit_s > t0_s]

    def forget_before(self, t_s: float) -> None:
        """Drop objects that left before ``t_s`` (keeps a long run's memory bounded)."""
        self._objects = [o for o in self._objects if o.t_exit_s >= t_s]

    # --- generation --------------------------------------------------------------------------
    def _generate_until(self, t_s: float) -> None:
        if t_s <= self._generated_to or not self._next_spawn:
            return
        while True:
            name, t = min(self._next_spawn.items(), key=lambda kv: (kv[1], kv[0]))
            if t > t_s:
                break
            rate = self.scenario.spawn_rate_hz[name]
            self._next_spawn[name] = t + self._rng.exponential(1 / rate)
            self._objects.append(self._spawn(CLASS_BY_NAME[name], t))
        self._generated_to = t_s

    def _looks(self, c: ObjectClass) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
        rng = self._rng
        size = tuple(
            float(rng.uniform(a, b)) for a, b in zip(c.size_min_m, c.size_max_m, strict=True)
        )
        color = c.palette_bgr[int(rng.integers(len(c.palette_bgr)))]
        jitter = rng.integers(-15, 16, 3)
        col = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(color, jitter, strict=True))
        return size, col  # type: ignore[return-value]

    def _sound(self, c: ObjectClass) -> Sound:
        rng = self._rng
        freq = {
            "engine": rng.uniform(28.0, 45.0),  # firing frequency of an idling-to-cruising engine
            "ev_tones": rng.uniform(550.0, 750.0),  # AVAS warning tone
            "footsteps": rng.uniform(1.6, 2.2),  # steps per second
            "freewheel": rng.uniform(8.0, 14.0),  # ratchet clicks per second
        }[c.sound]
        level = c.sound_level * float(rng.uniform(0.7, 1.3))
        return Sound(kind=c.sound, level=level, freq_hz=float(freq), seed=int(rng.integers(2**31)))

    def _spawn(self, c: ObjectClass, t0: float) -> WorldObject:
        rng = self._rng
        size, color = self._looks(c)
        speed = float(rng.uniform(*c.speed_mps))
        wobble = (0.0, 0.0)
        if c.motion == "lane":
            times, xy = self._lane_path(c, t0, speed)
            if c.shape == "bicycle":
                wobble = (float(rng.uniform(0.05, 0.15)), float(rng.uniform(0.3, 0.6)))
        else:
            times, xy = self._walk_path(t0, speed)
        oid = self._next_id
        self._next_id += 1
        return WorldObject(
            object_id=oid,
            cls=c,
            size_m=size,
            color_bgr=color,
            t_enter_s=float(times[0]),
            t_exit_s=float(times[-1]),
            times_s=times,
            xy_m=xy,
            wobble_m=wobble[0],
            wobble_hz=wobble[1],
            sound=self._sound(c),
        )

    def _lane_path(self, c: ObjectClass, t0: float, speed: float) -> tuple[np.ndarray, np.ndarray]:
        rng, sc = self._rng, self.scenario
        half = sc.region_half_m
        if rng.random() < sc.crossing_share:
            # Crossing in front of the rig, along y, at a distance x.
            x = float(rng.uniform(*sc.crossing_x_m))
            if c.shape == "bicycle":
                x = float(rng.uniform(sc.crossing_x_m[0], min(sc.crossing_x_m[1], 25.0)))
            sign = 1.0 if rng.random() < 0.5 else -1.0
            a, b = np.array([x, -sign * half]), np.array([x, sign * half])
        else:
            # Along x (oncoming or overtaking), beside the rig, at lateral offset y.
            y = float(rng.uniform(3.0, 12.0)) * (1.0 if rng.random() < 0.5 else -1.0)
            sign = 1.0 if rng.random() < 0.5 else -1.0
            a, b = np.array([-sign * half, y]), np.array([sign * half, y])
        duration = float(np.linalg.norm(b - a)) / speed
        return np.array([t0, t0 + duration]), np.stack([a, b])

    def _walk_path(self, t0: float, speed: float) -> tuple[np.ndarray, np.ndarray]:
        rng, sc = self._rng, self.scenario
        p = np.array([rng.uniform(*sc.walk_x_m), rng.uniform(-sc.walk_y_m, sc.walk_y_m)])
        heading = float(rng.uniform(-math.pi, math.pi))
        times, pts = [t0], [p]
        for _ in range(int(rng.integers(3, 7))):
            heading += float(rng.normal(0.0, 0.8))
            leg = float(rng.uniform(4.0, 15.0))
            p = p + leg * np.array([math.cos(heading), math.sin(heading)])
            pts.append(p)
            times.append(times[-1] + leg / speed)
        return np.array(times), np.stack(pts)

    def _place_static(self) -> None:
        # Objects at fixed, well separated places in front of the rig, for geometry checks.
        rng = self._rng
        spots = [(7.0, -3.5), (10.0, 3.5), (5.0, 0.5), (14.0, -1.0), (24.0, -5.0), (38.0, 4.0)]
        for i, (x, y) in enumerate(spots):
            c = CLASSES[i % len(CLASSES)]
            size, color = self._looks(c)
            yaw = float(rng.uniform(-math.pi, math.pi))
            self._objects.append(
                WorldObject(
                    object_id=i,
                    cls=c,
                    size_m=size,
                    color_bgr=color,
                    t_enter_s=-math.inf,
                    t_exit_s=math.inf,
                    times_s=np.array([0.0]),
                    xy_m=np.array([[x, y, yaw]]),
                    sound=self._sound(c),
                )
            )
        self._next_id = len(spots)
