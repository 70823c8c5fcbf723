"""Imperfect sensor clocks: offset, drift, one-sided delivery jitter, drops, resets and wrap.

A simulated sensor runs on its own oscillator. Its samples come at a fixed period of *its*
clock, so on the world timeline they are ``period / (1 + drift)`` apart; each is stamped with
the sensor clock's reading (offset + drift, restarted by occasional resets, wrapped by a modulus
like a Velodyne's microseconds past the hour, quantised to the clock's resolution) and delivered
to the host after a fixed latency plus a jitter that is never negative (a gamma distribution:
deliveries are late, never early), or not at all (a drop).

Everything here is a pure function of the configuration, the seed and the sample index, so
every process, and an offline generator, computes the same stamps. World time ``w`` is seconds
since the scenario started; the host timeline is ``epoch_ns + w * 1e9``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

#: Stable ids that key each sensor's random streams (never reuse or renumber).
SENSOR_IDS = {"camera": 1, "depth": 2, "lidar": 3, "mic": 4}


@dataclass(frozen=True, kw_only=True)
class ClockConfig:
    """One sensor clock. ``None`` means: draw a realistic value from the seed."""

    #: Reading of the sensor clock (s) at world time 0, before wrapping.
    offset_s: float | None = None
    #: Oscillator error in parts per million (the clock runs ``1 + drift_ppm·1e-6`` fast).
    drift_ppm: float | None = None
    #: Fixed delay (ms) from the stamped instant to delivery on the host.
    latency_ms: float = 5.0
    #: Mean of the one-sided delivery jitter (ms), gamma-distributed with shape ``jitter_shape``.
    jitter_ms: float = 1.0
    #: Shape of the jitter's gamma distribution: 1.0 is exponential (many deliveries at the
    #: minimum latency), larger is more bell-shaped (few deliveries near the minimum).
    jitter_shape: float = 2.0
    #: Probability that a sample is never delivered.
    drop_rate: float = 0.0
    #: Mean time between clock resets (s), 0 for never. A reset restarts the clock at 0.
    reset_interval_s: float = 0.0
    #: Modulus of the stamp (s), 0 for none. A Velodyne stamps microseconds past the hour: 3600.
    wrap_s: float = 0.0
    #: Stamp resolution (ns).
    resolution_ns: int = 1

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.jitter_ms < 0:
            raise ValueError("latency_ms and jitter_ms must be >= 0")
        if not self.jitter_shape > 0 or not math.isfinite(self.jitter_shape):
            raise ValueError(f"jitter_shape must be a finite number > 0, got {self.jitter_shape}")
        if not 0 <= self.drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.reset_interval_s < 0 or self.wrap_s < 0 or self.resolution_ns < 1:
            raise ValueError("reset_interval_s, wrap_s must be >= 0 and resolution_ns >= 1")
        if self.drift_ppm is not None and abs(self.drift_ppm) > 1000:
            raise ValueError(f"drift_ppm {self.drift_ppm} is not a clock (|drift| <= 1000)")


@dataclass(frozen=True, kw_only=True)
class ClocksConfig:
    """The clocks of the whole simulated rig: one switch, and per-sensor overrides."""

    #: Turn every imperfection off: stamps are world time, no drift, jitter, drop, reset, wrap.
    ideal: bool = False
    camera: ClockConfig | None = None
    depth: ClockConfig | None = None
    lidar: ClockConfig | None = None
    mic: ClockConfig | None = None


#: Realistic defaults per sensor (what ``None`` in :class:`ClocksConfig` means), with the
#: ranges offsets and drifts are drawn from.
DEFAULT_CLOCKS: dict[str, ClockConfig] = {
    # A USB camera: driver stamps on its own clock, a few ms of USB and driver latency.
    "camera": ClockConfig(latency_ms=12.0, jitter_ms=2.0, drop_rate=0.002, resolution_ns=1000),
    # A RealSense-like depth camera: hardware clock in µs, restarted now and then.
    "depth": ClockConfig(
        latency_ms=18.0,
        jitter_ms=3.0,
        drop_rate=0.003,
        reset_interval_s=300.0,
        resolution_ns=1000,
    ),
    # A Velodyne: µs past the hour (the default offset puts the wrap 60 s into the run).
    "lidar": ClockConfig(
        offset_s=3540.0,
        latency_ms=1.5,
        jitter_ms=0.4,
        drop_rate=0.001,
        wrap_s=3600.0,
        resolution_ns=1000,
    ),
    # A sound card: stamps are the sample count over the nominal rate.
    "mic": ClockConfig(latency_ms=4.0, jitter_ms=1.5),
}
_DRIFT_RANGE_PPM = {"camera": 40.0, "depth": 60.0, "lidar": 8.0, "mic": 80.0}
_OFFSET_RANGE_S = {
    "camera": (50.0, 5000.0),
    "depth": (10.0, 2000.0),
    "lidar": (0.0, 0.0),
    "mic": (0.0, 0.0),
}


def resolve_clock(sensor: str, clocks: ClocksConfig, *, seed: int) -> ClockConfig:
    """The concrete clock of ``sensor``: defaults, then overrides, ``None`` drawn from ``seed``."""
    if clocks.ideal:
        return ClockConfig(offset_s=0.0, drift_ppm=0.0, latency_ms=0.0, jitter_ms=0.0)
    base = DEFAULT_CLOCKS[sensor]
    override: ClockConfig | None = getattr(clocks, sensor)
    cfg = base if override is None else override
    rng = np.random.default_rng([seed, SENSOR_IDS[sensor], 0xC10C])
    drift = float(rng.uniform(-1.0, 1.0)) * _DRIFT_RANGE_PPM[sensor]
    lo, hi = _OFFSET_RANGE_S[sensor]
    offset = float(rng.uniform(lo, hi))
    if cfg.offset_s is None and base.offset_s is not None:
        offset = base.offset_s
    return replace(
        cfg,
        offset_s=round(cfg.offset_s if cfg.offset_s is not None else offset, 6),
        drift_ppm=round(cfg.drift_ppm if cfg.drift_ppm is not None else drift, 3),
    )


class SimClock:
    """A sensor's clock and delivery model, from its resolved :class:`ClockConfig`."""

    def __init__(self, sensor: str, cfg: ClockConfig, *, seed: int) -> None:
        if cfg.offset_s is None or cfg.drift_ppm is None:
            raise ValueError("SimClock needs a resolved ClockConfig (see resolve_clock)")
        self.sensor = sensor
        self.cfg = cfg
        self.seed = seed
        self.rate = 1.0 + cfg.drift_ppm * 1e-6
        self._resets: list[float] = []
        self._reset_rng = np.random.default_rng([seed, SENSOR_IDS[sensor], 0x4E5E7])
        self._resets_to = 0.0

    def resets_until(self, w_s: float) -> list[float]:
        """World times of the clock resets up to ``w_s`` (drawn lazily, in order)."""
        if self.cfg.reset_interval_s <= 0:
            return []
        while self._resets_to <= w_s:
            self._resets_to += float(self._reset_rng.exponential(self.cfg.reset_interval_s))
            self._resets.append(self._resets_to)
        return self._resets[: bisect.bisect_right(self._resets, w_s)]

    def reading_s(self, w_s: float) -> float:
        """The sensor clock's reading (s, unwrapped, unquantised) at world time ``w_s``."""
        resets = self.resets_until(w_s)
        if resets:
            return (w_s - resets[-1]) * self.rate
        assert self.cfg.offset_s is not None
        return self.cfg.offset_s + w_s * self.rate

    def stamp_ns(self, w_s: float) -> int:
        """The stamp the sensor puts on something it samples at world time ``w_s``."""
        ns = math.floor(self.reading_s(w_s) * 1e9)
        if self.cfg.wrap_s > 0:
            ns %= round(self.cfg.wrap_s * 1e9)
        return ns - ns % self.cfg.resolution_ns

    def sample_time_s(self, k: int, *, period_s: float, phase_s: float = 0.0) -> float:
        """World time of sample ``k`` of a sensor that samples every ``period_s`` of its clock."""
        return phase_s + k * period_s / self.rate

    def delivery(self, k: int, w_s: float) -> float | None:
        """World time at which sample ``k`` stamped at ``w_s`` reaches the host; None if dropped."""
        cfg = self.cfg
        if cfg.drop_rate == 0 and cfg.jitter_ms == 0:
            return w_s + cfg.latency_ms * 1e-3
        rng = np.random.default_rng([self.seed, SENSOR_IDS[self.sensor], 0xDE11, k])
        if rng.random() < cfg.drop_rate:
            return None
        shape = cfg.jitter_shape
        jitter_ms = float(rng.gamma(shape, cfg.jitter_ms / shape)) if cfg.jitter_ms > 0 else 0.0
        return w_s + (cfg.latency_ms + jitter_ms) * 1e-3

    def describe(self, *, epoch_ns: int, time_offset_ns: int) -> dict[str, Any]:
        """The true parameters, JSON-ready, as ``sim/truth`` publishes them.

        ``epoch_ns`` is the host time of world time 0, so the true mapping of a stamp ``s``
        taken before any reset and wrap is ``host = epoch_ns + (s - offset) / (1 + drift)``
        and the instant the sample describes is that plus ``time_offset_ns``.
        """
        return {
            **asdict(self.cfg),
            "epoch_ns": epoch_ns,
            "time_offset_ns": time_offset_ns,
            "resets_world_s": list(self._resets),
        }
