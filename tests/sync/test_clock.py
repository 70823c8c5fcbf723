"""ClockModel: sensor stamps onto the host timeline, checked against the simulated clocks' truth.

The streams are built the way the simulator's sources build their samples (see
``edgefuse.sim.rig``: ``Source.t_world_s``/``stamp_ns``/``delivery_s``, ``LidarSource`` and
``MicSource``) straight from :class:`SimClock`, without rendering anything: sample ``k``
describes world time ``w``, is stamped ``clock.stamp_ns(w - time_offset)`` and arrives at
``clock.delivery(k, w)``. The truth of a stamp is the stamped instant on the host timeline,
``EPOCH + (w - time_offset)·1e9``; the configured latency is the minimum delay from that
instant to the arrival (the clock's latency, plus the time offset for the cameras, plus the
sweep for the lidar, plus the chunk for the microphone).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import pytest

from edgefuse.sim.clocks import SENSOR_IDS, ClockConfig, ClocksConfig, SimClock, resolve_clock
from edgefuse.sync.clock import ClockEstimate, ClockModel, ClockModelConfig

EPOCH_NS = 7_000_000_000_000  # host time of world time 0
RATE_HZ = {"camera": 30.0, "depth": 30.0, "lidar": 10.0}  # as in pipelines/sim.yaml
TIME_OFFSET_S = {"camera": 5e-3, "depth": 3e-3, "lidar": 0.0, "mic": -1.5e-3}  # sim_rig.yaml
MIC_RATE_HZ, MIC_CHUNK = 16000, 160


@dataclass(frozen=True)
class Stream:
    """One sensor's pairs in arrival order, with the truth of each stamp."""

    stamps: tuple[int, ...]
    arrivals: tuple[int, ...]
    truth: tuple[int, ...]  # host ns of the stamped instant
    world: np.ndarray  # world s of the stamped instant
    latency_ns: int
    wrap_ns: int
    resets_s: tuple[float, ...]  # world times of the clock's resets

    def model(self, **options: object) -> ClockModel:
        cfg = ClockModelConfig(latency_ns=self.latency_ns, wrap_ns=self.wrap_ns, **options)  # type: ignore[arg-type]
        return ClockModel(cfg)


@functools.lru_cache(maxsize=64)
def sim_stream(sensor: str, cfg: ClockConfig, seed: int, duration_s: float) -> Stream:
    """The pairs of ``sensor`` with the resolved clock ``cfg`` over ``duration_s``."""
    clock = SimClock(sensor, cfg, seed=seed)
    assert cfg.offset_s is not None
    rows: list[tuple[int, int, int, float]] = []
    if sensor == "mic":
        # A chunk is stamped by its first sample's count over the rate, delivered once its
        # last sample is in.
        k = 0
        while (taken := k * MIC_CHUNK / (MIC_RATE_HZ * clock.rate)) <= duration_s:
            last = (k * MIC_CHUNK + MIC_CHUNK - 1) / (MIC_RATE_HZ * clock.rate)
            d = clock.delivery(k, last)
            if d is not None:
                stamp = round(cfg.offset_s * 1e9) + k * MIC_CHUNK * 1_000_000_000 // MIC_RATE_HZ
                rows.append(
                    (stamp, EPOCH_NS + round(d * 1e9), EPOCH_NS + round(taken * 1e9), taken)
                )
            k += 1
        latency_s = cfg.latency_ms * 1e-3 + (MIC_CHUNK - 1) / (MIC_RATE_HZ * clock.rate)
    else:
        period = 1.0 / RATE_HZ[sensor]
        phase = float(np.random.default_rng([seed, SENSOR_IDS[sensor], 0x9A5E]).uniform(0, period))
        toff = TIME_OFFSET_S[sensor]
        sweep = period / clock.rate if sensor == "lidar" else 0.0  # published when complete
        k = 0
        while (w := clock.sample_time_s(k, period_s=period, phase_s=phase)) <= duration_s:
            d = clock.delivery(k, w)
            if d is not None:
                t = w - toff
                rows.append(
                    (
                        clock.stamp_ns(t),
                        EPOCH_NS + round((d + sweep) * 1e9),
                        EPOCH_NS + round(t * 1e9),
                        t,
                    )
                )
            k += 1
        latency_s = cfg.latency_ms * 1e-3 + toff + sweep
    rows.sort(key=lambda r: r[1])  # arrival order
    return Stream(
        stamps=tuple(r[0] for r in rows),
        arrivals=tuple(r[1] for r in rows),
        truth=tuple(r[2] for r in rows),
        world=np.array([r[3] for r in rows]),
        latency_ns=round(latency_s * 1e9),
        wrap_ns=round(cfg.wrap_s * 1e9),
        resets_s=tuple(clock.resets_until(duration_s)),
    )


def default_stream(sensor: str, *, seed: int, shape: float, duration_s: float = 70.0) -> Stream:
    cfg = replace(resolve_clock(sensor, ClocksConfig(), seed=seed), jitter_shape=shape)
    return sim_stream(sensor, cfg, seed, duration_s)


@dataclass
class Run:
    """A stream fed through a model: errors (ns) against the truth, bounds, events."""

    err: np.ndarray
    raw_err: np.ndarray  # arrival - latency - truth: what the model must beat
    bound: np.ndarray
    events: list[tuple[float, str]]
    world: np.ndarray
    model: ClockModel
    estimates: list[ClockEstimate]


def feed(stream: Stream, model: ClockModel | None = None) -> Run:
    m = model or stream.model()
    ests = [m.update(s, a) for s, a in zip(stream.stamps, stream.arrivals, strict=True)]
    t = np.array([e.t_ns for e in ests], dtype=np.int64)
    truth = np.array(stream.truth, dtype=np.int64)
    return Run(
        err=(t - truth).astype(float),
        raw_err=(np.array(stream.arrivals, dtype=np.int64) - stream.latency_ns - truth).astype(
            float
        ),
        bound=np.array([e.bound_ns for e in ests], dtype=float),
        events=[(float(w), e.event) for w, e in zip(stream.world, ests, strict=True) if e.event],
        world=stream.world,
        model=m,
        estimates=ests,
    )


def rms(x: np.ndarray) -> float:
    return math.sqrt(float(np.mean(np.square(x))))


def window_rms(run: Run, *, window_s: float = 5.0) -> list[tuple[float, float, float]]:
    """(start s, model RMS, raw-arrival RMS) per window of world time."""
    out = []
    for t0 in np.arange(0.0, float(run.world.max()), window_s):
        sel = (run.world >= t0) & (run.world < t0 + window_s)
        if sel.any():
            out.append((float(t0), rms(run.err[sel]), rms(run.raw_err[sel])))
    return out


def away_from_resets(run: Run, resets_s: tuple[float, ...], *, after_s: float) -> np.ndarray:
    """Mask of the estimates after ``after_s`` and not within 2 s after a clock reset."""
    sel = run.world > after_s
    for r in resets_s:
        sel &= ~((run.world >= r) & (run.world < r + 2.0))
    return sel


# --- acceptance: the camera clock of the brief ---------------------------------------------

ACCEPTANCE = ClockConfig(
    offset_s=0.25,
    drift_ppm=50.0,
    latency_ms=12.0,
    jitter_ms=3.0,
    jitter_shape=1.0,  # exponential: many deliveries near the minimum latency
    drop_rate=0.002,
    resolution_ns=1000,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_camera_converges_within_seconds_to_a_fraction_of_a_millisecond(seed: int) -> None:
    stream = sim_stream("camera", ACCEPTANCE, seed, 70.0)
    run = feed(stream)
    after = run.world > 10.0
    assert rms(run.err[after]) < 0.2e6, rms(run.err[after])
    # TICSync's anchor: within 1 ms after seconds; here after 2 s.
    assert np.max(np.abs(run.err[run.world > 2.0])) < 1e6
    # Never worse than the raw arrivals minus the latency, window by window.
    for t0, model_rms, raw_rms in window_rms(run):
        assert model_rms < raw_rms, (t0, model_rms, raw_rms)
    # The drift is found (host ns per sensor ns is 1 / (1 + drift)) and stays physical.
    assert run.model.drift_ppm == pytest.approx(50.0, abs=5.0)
    assert abs(run.model.slope - 1.0) <= 500e-6
    assert np.mean(np.abs(run.err) <= run.bound) >= 0.95
    assert run.events == [(pytest.approx(run.world[0]), "first")]
    stats = run.model.stats()
    assert stats["converged"] == 1 and stats["resets"] == 0 and stats["rejected"] == 0
    assert stats["updates"] == len(stream.stamps)


def test_the_slope_stays_within_the_physical_bound_from_the_first_points() -> None:
    stream = sim_stream("camera", ACCEPTANCE, 0, 5.0)
    model = stream.model(max_drift_ppm=100.0)
    slopes = []
    for s, a in zip(stream.stamps, stream.arrivals, strict=True):
        model.update(s, a)
        slopes.append(model.slope)
    assert max(abs(b - 1.0) for b in slopes) <= 100e-6 + 1e-12
    # The first points give a hull edge far steeper or flatter than any clock: clamped.
    assert any(abs(b - 1.0) == pytest.approx(100e-6) for b in slopes[:10])


# --- every default sensor clock, gamma (default) and exponential jitter ---------------------


@pytest.mark.parametrize("shape", [2.0, 1.0])
@pytest.mark.parametrize("sensor", ["camera", "depth", "lidar", "mic"])
def test_default_clocks_are_tracked_with_a_covering_bound(sensor: str, shape: float) -> None:
    errs, raws, abs_err, bounds, late_bounds = [], [], [], [], []
    for seed in (0, 1, 2):
        stream = default_stream(sensor, seed=seed, shape=shape)
        run = feed(stream)
        for t0, model_rms, raw_rms in window_rms(run):
            assert model_rms < raw_rms, (seed, t0, model_rms, raw_rms)
        assert run.model.stats()["resets"] == len(stream.resets_s)
        assert [e for _, e in run.events if e != "wrap"] == ["first"] + ["reset"] * len(
            stream.resets_s
        )
        sel = away_from_resets(run, stream.resets_s, after_s=10.0)
        errs.append(run.err[sel])
        raws.append(run.raw_err[sel])
        late_bounds.append(run.bound[sel])
        # Coverage over every estimate: the first ones and those after resets included.
        abs_err.append(np.abs(run.err))
        bounds.append(run.bound)
    err = np.concatenate(errs)
    assert rms(err) < 0.25e6, rms(err)
    assert rms(err) < rms(np.concatenate(raws)) / 5
    coverage = np.mean(np.concatenate(abs_err) <= np.concatenate(bounds))
    assert coverage >= 0.95, coverage
    # Not absurdly loose. With exponential jitter the median error is a few µs or less (the
    # least-delayed points sit right on the line) while the 95 % tail is several times
    # that, so the ratio of the medians is larger there: 6-17 measured, 2-5 for gamma.
    ratio = np.median(np.concatenate(late_bounds)) / np.median(np.abs(err))
    assert ratio < (10.0 if shape > 1.0 else 20.0), ratio


# --- resets, jumps, long delays ------------------------------------------------------------


def test_depth_resets_are_detected_and_reconverge_within_two_seconds() -> None:
    cfg = replace(resolve_clock("depth", ClocksConfig(), seed=5), reset_interval_s=20.0)
    stream = sim_stream("depth", cfg, 5, 90.0)
    assert len(stream.resets_s) >= 3
    run = feed(stream)
    resets = [w for w, e in run.events if e == "reset"]
    assert len(resets) == len(stream.resets_s) == run.model.stats()["resets"]
    for true_s, seen_s in zip(stream.resets_s, resets, strict=True):
        # Detected on the first stamp after the restart (stamps describe earlier instants).
        first_after = float(run.world[run.world >= true_s - 0.01].min())
        assert seen_s == pytest.approx(first_after, abs=0.04)
        # Within 1 ms again in at most 2 s, and for good (until the next reset).
        nxt = min([r for r in stream.resets_s if r > true_s], default=math.inf)
        sel = (run.world >= seen_s + 2.0) & (run.world < nxt)
        assert not sel.any() or np.max(np.abs(run.err[sel])) < 1e6


def _shifted(
    stream: Stream, *, from_s: float, by_ns: int, drop: tuple[float, float] = (0, 0)
) -> Stream:
    """``stream`` with every stamp from world time ``from_s`` on shifted by ``by_ns`` (the
    clock jumped) and the samples in ``drop`` (world s) missing."""
    keep = [i for i, w in enumerate(stream.world) if not drop[0] <= w < drop[1]]
    stamps = tuple(
        s + (by_ns if stream.world[i] >= from_s else 0) for i, s in enumerate(stream.stamps)
    )
    return replace(
        stream,
        stamps=tuple(stamps[i] for i in keep),
        arrivals=tuple(stream.arrivals[i] for i in keep),
        truth=tuple(stream.truth[i] for i in keep),
        world=stream.world[keep],
    )


CAMERA = ClockConfig(
    offset_s=100.0, drift_ppm=30.0, latency_ms=10.0, jitter_ms=2.0, resolution_ns=1000
)


def test_a_jump_forward_is_a_reset_on_the_first_point_below_the_line() -> None:
    stream = _shifted(sim_stream("camera", CAMERA, 3, 60.0), from_s=30.0, by_ns=2_000_000_000)
    run = feed(stream)
    assert [e for _, e in run.events] == ["first", "reset"]
    (seen,) = [w for w, e in run.events if e == "reset"]
    assert seen == pytest.approx(float(run.world[run.world >= 30.0].min()))
    # The rate survives the reset: within 1 ms at once, well within it after 2 s.
    sel = run.world >= seen
    assert np.max(np.abs(run.err[sel])) < 2e6
    assert np.max(np.abs(run.err[run.world >= seen + 2.0])) < 0.5e6
    assert run.model.drift_ppm == pytest.approx(30.0, abs=10.0)


def test_a_jump_back_is_confirmed_by_consistent_points_above_the_line() -> None:
    # The sensor is silent for a second while its clock is stepped back by 0.3 s: the next
    # stamps still increase, but arrive 0.3 s "late".
    base = sim_stream("camera", CAMERA, 3, 60.0)
    stream = _shifted(base, from_s=31.0, by_ns=-300_000_000, drop=(30.0, 31.0))
    run = feed(stream)
    assert [e for _, e in run.events] == ["first", "reset"]
    (seen,) = [w for w, e in run.events if e == "reset"]
    assert 31.0 < seen < 31.5  # after ``jump_confirm`` points
    # The held-back points were mapped with the old model; their bound says so.
    held = (run.world >= 31.0) & (run.world < seen)
    assert np.all(np.abs(run.err[held]) <= run.bound[held])
    assert np.max(np.abs(run.err[run.world >= seen + 2.0])) < 1e6


def test_a_long_delay_or_a_stall_is_not_a_reset() -> None:
    base = sim_stream("camera", CAMERA, 3, 60.0)
    # One message 200 ms late, overtaken by the next ones (reordered).
    late = list(base.arrivals)
    i = int(np.argmin(np.abs(base.world - 40.0)))
    late[i] += 200_000_000
    # A 0.6 s stall: everything in it arrives together when it ends.
    stall_end = EPOCH_NS + 41_600_000_000
    for j, w in enumerate(base.world):
        if 41.0 <= w < 41.6:
            late[j] = max(late[j], stall_end)
    order = sorted(range(len(late)), key=lambda j: (late[j], base.stamps[j]))
    stream = replace(
        base,
        stamps=tuple(base.stamps[j] for j in order),
        arrivals=tuple(late[j] for j in order),
        truth=tuple(base.truth[j] for j in order),
        world=base.world[order],
    )
    run = feed(stream)
    stats = run.model.stats()
    assert stats["resets"] == 0 and [e for _, e in run.events] == ["first"]
    assert stats["rejected"] == 1  # the overtaken message: mapped, not fitted
    reference = feed(base)
    sel = run.world > 10.0
    assert rms(run.err[sel]) < 1.5 * rms(reference.err[reference.world > 10.0]) + 10e3


# --- wrap, gaps, exactness -----------------------------------------------------------------


def test_lidar_wrap_is_seamless() -> None:
    cfg = resolve_clock("lidar", ClocksConfig(), seed=0)
    assert cfg.wrap_s == 3600.0 and cfg.offset_s == 3540.0  # wraps 60 s into the run
    stream = sim_stream("lidar", cfg, 0, 120.0)
    run = feed(stream)
    assert [e for _, e in run.events] == ["first", "wrap"]
    (wrap_w,) = [w for w, e in run.events if e == "wrap"]
    assert 59.8 < wrap_w < 60.2
    stats = run.model.stats()
    assert stats["wraps"] == 1 and stats["resets"] == 0
    near = np.abs(run.world - wrap_w) < 3.0
    elsewhere = (run.world > 10.0) & ~near
    assert np.max(np.abs(run.err[near])) <= np.max(np.abs(run.err[elsewhere]))
    assert np.all(np.abs(run.err[near]) <= run.bound[near])
    # A stamp from before the wrap maps where it belongs, unwrapped against the last one.
    i = int(np.argmin(np.abs(stream.world - 59.5)))
    assert abs(run.model.map(stream.stamps[i]) - stream.truth[i]) < 0.1e6


def test_a_gap_longer_than_the_window_extrapolates_and_continues() -> None:
    base = sim_stream("camera", CAMERA, 4, 140.0)
    stream = _shifted(base, from_s=0.0, by_ns=0, drop=(30.0, 100.0))
    before = replace(
        stream,
        stamps=tuple(s for s, w in zip(stream.stamps, stream.world, strict=True) if w < 30.0),
        arrivals=tuple(a for a, w in zip(stream.arrivals, stream.world, strict=True) if w < 30.0),
    )
    model = before.model()
    for s, a in zip(before.stamps, before.arrivals, strict=True):
        model.update(s, a)
    # During the gap the bound grows with the distance from the data.
    last = before.stamps[-1]
    bounds = [model.estimate(last + d * 1_000_000_000).bound_ns for d in (0, 10, 40, 70)]
    assert bounds == sorted(bounds) and bounds[-1] > 3 * bounds[0]
    run = feed(stream)
    assert [e for _, e in run.events] == ["first"]
    resumed = run.world >= 100.0
    first = int(np.argmax(resumed))
    assert abs(run.err[first]) <= run.bound[first] and abs(run.err[first]) < 2e6
    assert rms(run.err[run.world >= 105.0]) < 0.3e6


def test_epoch_sized_stamps_keep_every_nanosecond() -> None:
    stream = sim_stream("camera", ACCEPTANCE, 1, 40.0)
    small = feed(stream)
    # The same clock stamping in ns since 1970, arriving 1e18 ns later on the host: the
    # estimates move by exactly the arrival shift (float64 alone would lose ~100 ns).
    shift_s, shift_a = 1_700_000_000_000_000_000, 1_000_000_000_000_000_000
    big = ClockModel(ClockModelConfig(latency_ns=stream.latency_ns))
    for s, a, est in zip(stream.stamps, stream.arrivals, small.estimates, strict=True):
        got = big.update(s + shift_s, a + shift_a)
        assert got.t_ns == est.t_ns + shift_a
        assert got.bound_ns == est.bound_ns


def test_map_places_the_samples_of_an_audio_chunk() -> None:
    cfg = resolve_clock("mic", ClocksConfig(), seed=2)
    stream = sim_stream("mic", cfg, 2, 20.0)
    run = feed(stream)
    model = run.model
    clock = SimClock("mic", cfg, seed=2)
    k = round((stream.stamps[-1] - round(cfg.offset_s * 1e9)) * MIC_RATE_HZ / 1e9) // MIC_CHUNK
    for j in (0, 80, 159):
        n = k * MIC_CHUNK + j
        stamp = round(cfg.offset_s * 1e9) + n * 1_000_000_000 // MIC_RATE_HZ
        truth = EPOCH_NS + round(n / (MIC_RATE_HZ * clock.rate) * 1e9)
        est = model.estimate(stamp)
        assert abs(est.t_ns - truth) <= est.bound_ns
        assert model.map(stamp) == est.t_ns
    assert model.map(stream.stamps[-1]) == run.estimates[-1].t_ns


# --- bad input, reordering, host clocks, determinism, cost ---------------------------------


def test_bad_input_is_refused_clearly() -> None:
    model = ClockModel()
    with pytest.raises(TypeError, match="t_sensor_ns must be an int"):
        model.update(1.5, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="t_host_ns must be an int"):
        model.update(1, "10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="t_sensor_ns"):
        model.update(True, 10)
    with pytest.raises(ValueError, match="t_host_ns must be >= 0"):
        model.update(1, -5)
    with pytest.raises(RuntimeError, match="no estimate yet"):
        model.map(5)
    assert model.update(np.int64(1_000), np.int64(5_000)).event == "first"  # type: ignore[arg-type]
    assert model.stats()["updates"] == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"clock": "gps"}, "clock must be"),
        ({"latency_ns": -1}, "latency_ns"),
        ({"latency_ns": 1.5}, "latency_ns"),
        ({"wrap_ns": 1000}, "wrap_ns"),
        ({"window_s": 0.0}, "window_s"),
        ({"window_s": float("nan")}, "window_s"),
        ({"max_drift_ppm": 0.0}, "max_drift_ppm"),
        ({"jump_ns": 0}, "jump_ns"),
        ({"jump_confirm": 1}, "jump_confirm"),
        ({"converge_s": 60.0}, "converge_s"),
        ({"max_delay_ns": 1}, "max_delay_ns"),
    ],
)
def test_config_is_validated(options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ClockModelConfig(**options)  # type: ignore[arg-type]


def test_reordered_stamps_are_rejected_without_touching_the_model() -> None:
    stream = sim_stream("camera", ACCEPTANCE, 2, 30.0)
    clean = feed(stream)
    model = stream.model()
    out = []
    for i, (s, a) in enumerate(zip(stream.stamps, stream.arrivals, strict=True)):
        out.append(model.update(s, a))
        if i in (300, 600):
            dup = model.update(s, a + 1_000)  # the same stamp again
            behind = model.update(s - 5_000_000, a + 2_000)  # slightly behind
            assert dup.event is None and behind.event is None
            assert dup.t_ns == model.map(s) and behind.t_ns == model.map(s - 5_000_000)
    assert [e.t_ns for e in out] == [e.t_ns for e in clean.estimates]
    stats = model.stats()
    assert stats["rejected"] == 4 and stats["resets"] == 0
    assert stats["updates"] == len(stream.stamps) + 4


def test_host_clock_maps_arrivals_minus_latency() -> None:
    model = ClockModel(ClockModelConfig(clock="host", latency_ns=3_000_000, host_bound_ns=500_000))
    first = model.update(123, 10_000_000)
    assert first == ClockEstimate(7_000_000, 500_000, True, "first")
    assert model.update(0, 20_000_000) == ClockEstimate(17_000_000, 500_000, True, None)
    assert model.slope == 1.0 and model.drift_ppm == 0.0
    assert model.stats()["updates"] == 2 and model.stats()["converged"] == 1
    with pytest.raises(RuntimeError, match="host"):
        model.map(5)


def test_same_pairs_same_estimates() -> None:
    stream = default_stream("depth", seed=1, shape=2.0)
    a, b = feed(stream), feed(stream)
    assert a.estimates == b.estimates
    assert a.model.stats() == b.model.stats()


def _synthetic(n: int, rate_hz: float, *, seed: int = 1) -> tuple[list[int], list[int]]:
    """A fast sensor with 40 ppm drift and gamma jitter, delivered in order (FIFO)."""
    rng = np.random.default_rng(seed)
    w = np.arange(n) / rate_hz
    stamps = 1_700_000_000_000_000_000 + np.round(w * (1 + 40e-6) * 1e9).astype(np.int64)
    arrivals = np.round((w + 0.005 + rng.gamma(2.0, 1e-3, n) * 1e-3) * 1e9).astype(np.int64)
    arrivals = np.maximum.accumulate(arrivals + 10**12)
    return [int(x) for x in stamps], [int(x) for x in arrivals]


def test_memory_stays_bounded() -> None:
    stamps, arrivals = _synthetic(60_000, 500.0)  # 120 s at 500 Hz, window 30 s
    model = ClockModel(ClockModelConfig(latency_ns=5_000_000))
    stored = []
    for i, (s, a) in enumerate(zip(stamps, arrivals, strict=True)):
        model.update(s, a)
        if i % 5000 == 4999:
            stored.append(model.stats()["stored"])
    stats = model.stats()
    assert stats["points"] <= 1.25 * 30 * 500 + 1  # the window (and the open block)
    assert max(stored) < 400  # hull vertices and candidates, not points
    assert stats["refits"] < len(stamps) / 50  # refits are amortised
