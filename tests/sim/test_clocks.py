"""Simulated clocks follow their parameters: offset, drift, jitter, drops, resets, wrap."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from edgefuse import config
from edgefuse.errors import ConfigError
from edgefuse.sim.clocks import ClockConfig, ClocksConfig, SimClock, resolve_clock


def test_stamps_follow_offset_and_drift() -> None:
    cfg = ClockConfig(offset_s=100.0, drift_ppm=50.0, resolution_ns=1000)
    clock = SimClock("camera", cfg, seed=1)
    for w in (0.0, 1.0, 3600.0):
        expected = (100.0 + w * (1 + 50e-6)) * 1e9
        assert abs(clock.stamp_ns(w) - expected) <= 1000
    # Samples at the sensor's own period are period/(1+drift) apart on the world timeline.
    dt = clock.sample_time_s(1001, period_s=0.1) - clock.sample_time_s(1, period_s=0.1)
    assert dt == pytest.approx(100.0 / (1 + 50e-6), abs=1e-9)


def test_jitter_is_one_sided_and_drops_happen_at_their_rate() -> None:
    cfg = ClockConfig(offset_s=0.0, drift_ppm=0.0, latency_ms=10.0, jitter_ms=3.0, drop_rate=0.05)
    clock = SimClock("depth", cfg, seed=2)
    delays, drops = [], 0
    for k in range(4000):
        d = clock.delivery(k, float(k))
        if d is None:
            drops += 1
        else:
            delays.append((d - k) * 1e3)
    assert min(delays) >= 10.0
    assert np.mean(delays) == pytest.approx(13.0, abs=0.3)
    assert drops / 4000 == pytest.approx(0.05, abs=0.015)
    # The same seed gives the same deliveries.
    again = SimClock("depth", cfg, seed=2)
    assert [again.delivery(k, float(k)) for k in range(50)] == [
        clock.delivery(k, float(k)) for k in range(50)
    ]


def test_lidar_stamp_wraps_like_microseconds_past_the_hour() -> None:
    cfg = resolve_clock("lidar", ClocksConfig(), seed=0)
    clock = SimClock("lidar", cfg, seed=0)
    assert cfg.wrap_s == 3600.0
    before, after = clock.stamp_ns(59.9), clock.stamp_ns(60.1)
    assert before > 3599e9 and after < 1e9
    assert before % 1000 == 0 and after % 1000 == 0  # µs resolution


def test_resets_restart_the_clock() -> None:
    cfg = ClockConfig(offset_s=500.0, drift_ppm=0.0, reset_interval_s=20.0)
    clock = SimClock("depth", cfg, seed=3)
    resets = clock.resets_until(200.0)
    assert 3 <= len(resets) <= 25
    r = resets[0]
    assert clock.reading_s(r - 1e-3) == pytest.approx(500.0 + r - 1e-3)
    assert clock.reading_s(r + 0.5) == pytest.approx(0.5)


def test_ideal_switch_turns_everything_off() -> None:
    for sensor in ("camera", "depth", "lidar", "mic"):
        cfg = resolve_clock(sensor, ClocksConfig(ideal=True), seed=9)
        clock = SimClock(sensor, cfg, seed=9)
        assert clock.stamp_ns(12.5) == 12_500_000_000
        assert clock.delivery(3, 12.5) == 12.5
        assert clock.resets_until(1e6) == []


def test_defaults_are_drawn_from_the_seed_within_realistic_ranges() -> None:
    a = resolve_clock("camera", ClocksConfig(), seed=1)
    b = resolve_clock("camera", ClocksConfig(), seed=2)
    assert a.drift_ppm != b.drift_ppm
    assert a.drift_ppm is not None and abs(a.drift_ppm) <= 40
    override = resolve_clock("camera", ClocksConfig(camera=ClockConfig(drift_ppm=7.0)), seed=1)
    assert override.drift_ppm == 7.0


def test_clock_config_typos_are_named() -> None:
    with pytest.raises(
        ConfigError, match=r"camera\.drift_pmm: unknown key \(did you mean 'drift_ppm'"
    ):
        config.build(ClocksConfig, {"camera": {"drift_pmm": 3}})
    with pytest.raises(ConfigError, match="drop_rate"):
        config.build(ClocksConfig, {"lidar": {"drop_rate": 1.5}})


def test_jitter_shape_defaults_to_the_historic_gamma_and_can_be_exponential() -> None:
    cfg = ClockConfig(offset_s=0.0, drift_ppm=0.0, latency_ms=10.0, jitter_ms=3.0, drop_rate=0.01)
    clock = SimClock("camera", cfg, seed=4)
    # The default (shape 2) reproduces the deliveries drawn before the option existed, so
    # recordings made with it do not change.
    for k in range(200):
        rng = np.random.default_rng([4, 1, 0xDE11, k])
        expected = None if rng.random() < 0.01 else k + (10.0 + rng.gamma(2.0, 1.5)) * 1e-3
        assert clock.delivery(k, float(k)) == expected
    # Shape 1 is exponential: same mean, but many more deliveries close to the minimum latency.
    expo = SimClock("camera", replace(cfg, jitter_shape=1.0), seed=4)
    jit = {name: [] for name in ("gamma2", "expo")}
    for k in range(4000):
        for name, c in (("gamma2", clock), ("expo", expo)):
            d = c.delivery(k, float(k))
            if d is not None:
                jit[name].append((d - k) * 1e3 - 10.0)
    assert min(jit["expo"]) >= 0.0
    assert np.mean(jit["expo"]) == pytest.approx(3.0, abs=0.2)
    near = {name: np.mean(np.asarray(v) < 0.3) for name, v in jit.items()}
    assert near["expo"] == pytest.approx(1 - np.exp(-0.1), abs=0.02)  # P(X < 0.1 mean)
    assert near["gamma2"] < near["expo"] / 3


@pytest.mark.parametrize("shape", [0.0, -1.0, float("nan"), float("inf")])
def test_jitter_shape_must_be_positive(shape: float) -> None:
    with pytest.raises(ValueError, match="jitter_shape"):
        ClockConfig(jitter_shape=shape)
