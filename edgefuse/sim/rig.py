"""The simulated rig: the world, the calibration and the clocks put together as sample sources.

Each sensor is a :class:`Source` whose sample ``k`` is a pure function of the parameters, the
seed and ``k``: the instant it describes, its sensor stamp, when it reaches the host (or that it
never does), and its payload. The live nodes (:mod:`edgefuse.sim.nodes`) pace them in real time,
one process per sensor; the offline generator (:mod:`edgefuse.sim.generate`) merges them by
delivery time as fast as it can. Both produce the same samples, byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.calib.model import RigCalibration, find_calibration, load_calibration
from edgefuse.errors import ConfigError
from edgefuse.sim.audio import MAX_DELAY_S, MicRenderer
from edgefuse.sim.camera import CameraRenderer
from edgefuse.sim.clocks import SENSOR_IDS, ClocksConfig, SimClock, resolve_clock
from edgefuse.sim.raycast import DepthRenderer, LidarModel, LidarRenderer
from edgefuse.sim.scenarios import Scenario, scenario
from edgefuse.sim.truth import CLASS_NAMES, TRUTH_ARRAYS, TruthRenderer
from edgefuse.sim.world import World

DEFAULT_RIG = "calibration/sim_rig.yaml"


@dataclass(frozen=True, kw_only=True)
class SimParams:
    """Parameters shared by every node of the simulated rig (a pipeline's top-level ``params``)."""

    scenario: str = "day"
    seed: int = 0
    clocks: ClocksConfig = field(default_factory=ClocksConfig)
    #: The rig calibration the simulator renders with (relative: to the working directory,
    #: then to the edgefuse checkout).
    rig: str = DEFAULT_RIG
    #: World time 0 is this long after the run starts, so every process is up and subscribed.
    start_delay_s: float = 2.0
    #: Where the lidar's sweeps start and end (degrees from x towards y, like a Velodyne
    #: driver's cut angle); the lidar spins clockwise seen from above. 180: behind the rig, so
    #: the front is scanned mid-sweep; just right of the camera's view (-35 for the sim rig)
    #: puts the front at the end of the sweep, so it is delivered soonest after it is scanned.
    lidar_cut_azimuth_deg: float = 180.0
    #: Live, a sample due on the host more than this long ago is dropped unrendered and
    #: counted (``late_dropped``): a host that falls behind loses frames, as a real sensor's
    #: would, instead of catching up with a burst that keeps everything downstream behind.
    max_lag_s: float = 0.25

    def __post_init__(self) -> None:
        try:
            scenario(self.scenario)
            resolve_rig_path(self.rig)  # a missing calibration fails at validation, not at start
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0 <= self.start_delay_s <= 60:
            raise ValueError(f"start_delay_s must be in 0..60, got {self.start_delay_s}")
        if self.max_lag_s <= 0:
            raise ValueError(f"max_lag_s must be > 0, got {self.max_lag_s}")
        if not -360 <= self.lidar_cut_azimuth_deg <= 360:
            raise ValueError(
                f"lidar_cut_azimuth_deg must be in -360..360, got {self.lidar_cut_azimuth_deg}"
            )


def sim_params_of_pipeline(path: str | Path, **overrides: Any) -> SimParams:
    """The simulated rig's shared parameters as the pipeline file at ``path`` sets them (its
    first simulated sensor's), with ``overrides`` (``scenario=``, ``seed=``) on top: so that
    sessions simulated offline (training data, evaluation) are rendered as the live pipeline
    renders (the lidar's cut angle, the clocks, the rig)."""
    from dataclasses import fields

    from edgefuse.pipeline import load_pipeline

    base: dict[str, Any] = {}
    for node in load_pipeline(path).nodes.values():
        if isinstance(node.params, SimParams):
            base = {f.name: getattr(node.params, f.name) for f in fields(SimParams)}
            break
    return SimParams(**{**base, **overrides})


def resolve_rig_path(path: str) -> Path:
    """Find a rig calibration file (see :func:`edgefuse.calib.model.find_calibration`)."""
    return find_calibration(path)


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One sample of one sensor: what it describes, its stamps and its payload."""

    sensor: str
    stream: str
    k: int
    #: World time (s) of the instant the sample describes (its truth).
    t_world_s: float
    #: World time (s) it reaches the host.
    delivery_s: float
    t_sensor_ns: int
    frame_id: str
    encoding: str
    arrays: list[np.ndarray]
    meta: dict[str, Any]


class Source:
    """A sensor of the simulated rig: samples at its own clock's period."""

    sensor: str = ""
    stream: str = ""
    encoding: str = ""

    def __init__(self, params: SimParams, *, rate_hz: float, rig: RigCalibration) -> None:
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.params = params
        self.scenario: Scenario = scenario(params.scenario)
        self.world = World(self.scenario, seed=params.seed)
        self.rig = rig
        self.cal = rig.sensor(self.sensor)
        self.period_s = 1.0 / rate_hz
        self.clock = SimClock(
            self.sensor,
            resolve_clock(self.sensor, params.clocks, seed=params.seed),
            seed=params.seed,
        )
        # Sensors are not triggered together: each starts at its own phase of its period.
        rng = np.random.default_rng([params.seed, SENSOR_IDS[self.sensor], 0x9A5E])
        self.phase_s = float(rng.uniform(0.0, self.period_s))
        self.time_offset_s = self.cal.time_offset_ns * 1e-9

    def t_world_s(self, k: int) -> float:
        """The instant sample ``k`` describes (world s)."""
        return self.clock.sample_time_s(k, period_s=self.period_s, phase_s=self.phase_s)

    def first_index(self, w_s: float) -> int:
        """The first sample that describes an instant at or after world time ``w_s``."""
        return max(0, math.ceil((w_s - self.phase_s) * self.clock.rate / self.period_s))

    def stamp_ns(self, t_world_s: float) -> int:
        """The stamp of a sample describing ``t_world_s`` (t_ns = host(stamp) + time offset)."""
        return self.clock.stamp_ns(t_world_s - self.time_offset_s)

    def delivery_s(self, k: int) -> float | None:
        """When sample ``k`` reaches the host (world s), None if the sensor drops it."""
        return self.clock.delivery(k, self.t_world_s(k))

    def min_delay_ms(self) -> float:
        """The least delay from a sample's stamped instant to its arrival on the host: what a
        user calibrates as the stream's ``latency_ms`` in the aligner (delivery is counted
        from the instant a sample describes, which is ``time_offset`` after its stamp)."""
        return self.clock.cfg.latency_ms + self.time_offset_s * 1e3

    def timing(self, k: int) -> tuple[float, int, float] | None:
        """``(t_world_s, t_sensor_ns, delivery_s)`` of sample ``k`` without rendering it (what
        clock and aligner benchmarks need); None when it is dropped."""
        delivery = self.delivery_s(k)
        if delivery is None:
            return None
        t = self.t_world_s(k)
        return t, self.stamp_ns(t), delivery

    def sample(self, k: int) -> Sample | None:
        """Sample ``k``, rendered; None when it is dropped (never delivered)."""
        delivery = self.delivery_s(k)
        if delivery is None:
            return None
        t = self.t_world_s(k)
        self.world.forget_before(t - 10.0)
        arrays, meta = self.render(k, t)
        return Sample(
            sensor=self.sensor,
            stream=self.stream,
            k=k,
            t_world_s=t,
            delivery_s=delivery,
            t_sensor_ns=self.stamp_ns(t),
            frame_id=self.cal.frame_id,
            encoding=self.encoding,
            arrays=arrays,
            meta={"index": k, **meta},
        )

    def render(self, k: int, t_s: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        """The payload of sample ``k`` describing world time ``t_s``."""
        raise NotImplementedError


class CameraSource(Source):
    """The colour camera: bgr8 frames."""

    sensor, stream, encoding = "camera", "image", "bgr8"

    def __init__(self, params: SimParams, *, rate_hz: float, rig: RigCalibration) -> None:
        super().__init__(params, rate_hz=rate_hz, rig=rig)
        self.renderer = CameraRenderer(self.cal, lighting=self.scenario.lighting, seed=params.seed)

    def render(self, k: int, t_s: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        return [self.renderer.render(self.world.objects_at(t_s), t_s, k)], {}


class DepthSource(Source):
    """The depth camera: z16 frames in millimetres, 0 = no return."""

    sensor, stream, encoding = "depth", "image", "z16"

    def __init__(self, params: SimParams, *, rate_hz: float, rig: RigCalibration) -> None:
        super().__init__(params, rate_hz=rate_hz, rig=rig)
        self.renderer = DepthRenderer(self.cal, seed=params.seed)

    def render(self, k: int, t_s: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        img = self.renderer.render(self.world.objects_at(t_s), t_s, k)
        return [img], {"depth_scale_m": 0.001}


class LidarSource(Source):
    """The spinning lidar: one sweep per message, points with ring and per-point time."""

    sensor, stream, encoding = "lidar", "points", "xyzit_f32"

    def __init__(self, params: SimParams, *, rate_hz: float, rig: RigCalibration) -> None:
        super().__init__(params, rate_hz=rate_hz, rig=rig)
        self.renderer = LidarRenderer(
            self.cal,
            seed=params.seed,
            model=LidarModel(cut_azimuth_deg=params.lidar_cut_azimuth_deg),
        )

    def min_delay_ms(self) -> float:
        # A sweep is stamped at its start and published once complete.
        return super().min_delay_ms() + self.period_s * 1e3

    def delivery_s(self, k: int) -> float | None:
        # A sweep is published once it is complete.
        d = self.clock.delivery(k, self.t_world_s(k))
        return None if d is None else d + self.period_s / self.clock.rate

    def render(self, k: int, t_s: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        sweep_s = self.period_s / self.clock.rate
        objs = self.world.objects_between(t_s, t_s + sweep_s)
        pts, ring = self.renderer.render(objs, t_s, sweep_s, k, clock_rate=self.clock.rate)
        return [pts, ring], self.sweep_meta()

    def sweep_meta(self) -> dict[str, Any]:
        """The ``meta`` of every sweep message: layout, sweep period and cut angle."""
        return {
            "fields": ["x", "y", "z", "intensity", "t_offset_s"],
            "beams": self.renderer.beams,
            "azimuth_steps": self.renderer.steps,
            "sweep_s": self.period_s,
            "cut_azimuth_deg": self.renderer.model.cut_azimuth_deg,
        }


class MicSource(Source):
    """The microphone: s16le chunks stamped by their first sample's count over the rate."""

    sensor, stream, encoding = "mic", "audio", "s16le"

    def __init__(
        self,
        params: SimParams,
        *,
        rate_hz: float,
        rig: RigCalibration,
        chunk: int = 160,
        channels: int = 1,
    ) -> None:
        super().__init__(params, rate_hz=1.0, rig=rig)
        if not 8000 <= rate_hz <= 192000 or rate_hz != int(rate_hz):
            raise ValueError(f"rate_hz must be an integer in 8000..192000, got {rate_hz}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 sample, got {chunk}")
        self.rate_hz = int(rate_hz)
        self.chunk = chunk
        self.channels = channels
        # Chunks, not samples, are the unit of delivery; a sound card starts at world time 0.
        self.period_s = chunk / self.rate_hz
        self.phase_s = 0.0
        self.renderer = MicRenderer(
            self.cal,
            rate_hz=self.rate_hz,
            channels=channels,
            background_noise=self.scenario.background_noise,
            seed=params.seed,
        )

    def sample_times_s(self, k: int) -> np.ndarray:
        """World times at which chunk ``k``'s samples are taken."""
        n = np.arange(k * self.chunk, (k + 1) * self.chunk)
        return np.asarray(n / (self.rate_hz * self.clock.rate))

    def min_delay_ms(self) -> float:
        # Stamped at its first sample, delivered after its last one.
        return self.clock.cfg.latency_ms + (self.chunk - 1) / self.rate_hz * 1e3

    def delivery_s(self, k: int) -> float | None:
        # A chunk is delivered once its last sample is in.
        return self.clock.delivery(k, float(self.sample_times_s(k)[-1]))

    def stamp_ns(self, t_world_s: float) -> int:
        raise AssertionError("the microphone stamps by sample count (see chunk_stamp_ns)")

    def chunk_stamp_ns(self, k: int) -> int:
        """The stamp of chunk ``k``: its first sample's count over the nominal rate, in exact
        integer ns (the sample counter is the clock, never the wall clock)."""
        assert self.clock.cfg.offset_s is not None
        return round(self.clock.cfg.offset_s * 1e9) + k * self.chunk * 1_000_000_000 // self.rate_hz

    def timing(self, k: int) -> tuple[float, int, float] | None:
        delivery = self.delivery_s(k)
        if delivery is None:
            return None
        taken0 = k * self.chunk / (self.rate_hz * self.clock.rate)
        return taken0 + self.time_offset_s, self.chunk_stamp_ns(k), delivery

    def sample(self, k: int) -> Sample | None:
        delivery = self.delivery_s(k)
        if delivery is None:
            return None
        taken = self.sample_times_s(k)
        described = taken + self.time_offset_s
        self.world.forget_before(float(described[0]) - 10.0)
        objs = self.world.objects_between(float(described[0]) - MAX_DELAY_S, float(described[-1]))
        audio = self.renderer.render(objs, described)
        n0 = k * self.chunk
        stamp = self.chunk_stamp_ns(k)
        return Sample(
            sensor=self.sensor,
            stream=self.stream,
            k=k,
            t_world_s=float(described[0]),
            delivery_s=delivery,
            t_sensor_ns=stamp,
            frame_id=self.cal.frame_id,
            encoding=self.encoding,
            arrays=[audio],
            meta={
                "index": k,
                "rate_hz": self.rate_hz,
                "channels": self.channels,
                "first_sample": n0,
            },
        )


class TruthSource(Source):
    """Ground truth per camera frame, at the camera's instants, delivered with the frame."""

    sensor, stream, encoding = "camera", "truth", "sim_truth"

    def __init__(self, params: SimParams, *, rate_hz: float, rig: RigCalibration) -> None:
        super().__init__(params, rate_hz=rate_hz, rig=rig)
        self.renderer = TruthRenderer(self.cal)
        self.clocks = {
            s: SimClock(s, resolve_clock(s, params.clocks, seed=params.seed), seed=params.seed)
            for s in SENSOR_IDS
        }

    def delivery_s(self, k: int) -> float | None:
        # Truth exists for every frame the camera takes, delivered or dropped.
        d = self.clock.delivery(k, self.t_world_s(k))
        return self.t_world_s(k) + self.clock.cfg.latency_ms * 1e-3 if d is None else d

    def render(self, k: int, t_s: float) -> tuple[list[np.ndarray], dict[str, Any]]:
        truth = self.renderer.frame(self.world.objects_at(t_s), t_s)
        meta = {
            "arrays": list(TRUTH_ARRAYS),
            "classes": list(CLASS_NAMES),
            "scenario": self.scenario.name,
            "lighting": self.scenario.lighting,
            "seed": self.params.seed,
            "camera_delivered": self.clock.delivery(k, t_s) is not None,
        }
        return truth.arrays(), meta

    def clock_truth(self, *, epoch_ns: int, until_s: float) -> dict[str, Any]:
        """The true clock parameters of every sensor (``until_s`` bounds the resets listed)."""
        out = {}
        for s, clock in self.clocks.items():
            clock.resets_until(until_s)
            d = clock.describe(epoch_ns=epoch_ns, time_offset_ns=self.rig.sensor(s).time_offset_ns)
            d["resets_world_s"] = [r for r in d["resets_world_s"] if r <= until_s]
            out[s] = d
        return out


def load_rig(params: SimParams) -> RigCalibration:
    """The rig calibration named by ``params.rig``."""
    return load_calibration(resolve_rig_path(params.rig))
