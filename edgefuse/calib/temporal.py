"""Temporal calibration: the static time offset of each stream of a recording, from the data.

``edgefuse calibrate time`` estimates what the aligner adds to each stream's clock-mapped stamp
(``time_offset_ns`` in the rig calibration: exposure mid-point, ADC latency, and whatever bias
the configured ``latency_ms`` leaves) by comparing activity signals across streams:

1. Every stream's stamps are mapped onto the host timeline by the aligner's own clock model
   (:class:`~edgefuse.sync.clock.ClockModel` with the stream's ``latency_ms`` and ``wrap_s``
   from the pipeline's aligner node), **without** the static offsets being estimated. Samples
   from before the model converged are left out.
2. Each sample becomes activity values per tile of a camera's image (the reference's when it is
   a camera; each sensor's data projected there with the rig's poses; one whole-view value when
   the rig does not relate them). The rig stands still, so each sensor's background is the
   per-pixel (per-cell) median of the session, and a tile's value is how much of it differs
   from the background: camera pixels off the background grey level, depth pixels nearer than
   it, lidar cells nearer than it (each lidar tile at the instant its cells were scanned:
   sweep start plus the points' own time); the microphone's envelope is the log RMS per 10 ms.
   Instantaneous values (not differences of consecutive frames, which describe an interval)
   give every sample a precise time, and tiles make an edge crossing a sharp event.
3. The denser signal of a pair is interpolated onto a 1 ms grid, both are high-passed (minus a
   moving average of ``highpass_s``: what remains is motion), and the correlation over tiles
   of the sparser one's own samples with the dense one shifted by each lag in ``±max_lag`` is
   scanned (5 ms steps, then 0.1 ms around the best, with a parabola through the peak).
4. Confidence: the peak's correlation coefficient, its ratio to the largest side lobe, and the
   jackknife spread of the peak over ``blocks`` pieces of the recording. A pair that fails
   :data:`RELIABLE` is flagged with the reason (a microphone against a camera in a scene
   without sound events, a stream that barely changes, a peak at the end of the lag range).

With a time-calibration recording (a target moved abruptly back and forth before the rig, a
clapper clicking as it passes the middle of its travel: the simulator's ``timing`` scenario)
every stream also has **events** (:mod:`edgefuse.calib.temporal_events`): the instant the
target is halfway between two holds (camera, depth, lidar) and click onsets (microphone, minus
the sound's travel time from ``--sound-distance-m``). Paired events give the offset to a small
fraction of a sample period; ``auto`` uses them wherever both streams have enough events that
pair reliably, correlation elsewhere.

Sign: a stream whose data describe instants ``d`` later than the reference's after mapping
needs ``time_offset_ns`` = reference's + ``d``; aligning with the written offsets puts the same
event at the same ``t_ns`` in every stream (see :func:`apply_offsets`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgefuse.calib.model import RigCalibration
from edgefuse.calib.temporal_events import RELIABLE_EVENTS, match_events
from edgefuse.calib.temporal_signals import (
    Signal,
    TemporalCalibrationError,
    session_signals,
    signal_kind,
)

__all__ = [
    "RELIABLE",
    "OffsetEstimate",
    "Signal",
    "TemporalCalibrationError",
    "apply_offsets",
    "estimate_offset",
    "estimate_offsets",
    "session_signals",
    "signal_kind",
]

#: Thresholds a pair must pass to be reliable: correlation, peak / side lobe, jackknife ms.
RELIABLE = {"min_peak": 0.25, "min_sidelobe_ratio": 1.3, "max_spread_ms": 2.0}


@dataclass(frozen=True, kw_only=True)
class OffsetEstimate:
    """One stream's offset relative to the reference, with its quality figures."""

    stream: str
    reference: str
    #: Add this to the reference's ``time_offset_ns`` to get the stream's.
    offset_ns: int
    #: Peak correlation coefficient of the normalised signals (-1..1).
    peak: float
    #: Peak over the largest correlation outside the main lobe.
    sidelobe_ratio: float
    #: Jackknife standard deviation of the peak lag over blocks of the recording (ms).
    spread_ms: float
    #: 0..1 summary of the three.
    confidence: float
    reliable: bool
    #: Why the pair is not reliable (empty when it is), and what to do.
    reason: str = ""
    #: How it was estimated: ``correlation`` of activity signals or ``events`` paired.
    method: str = "correlation"
    #: Events paired (``events`` method).
    events: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (offset in ms as well)."""
        return {
            "stream": self.stream,
            "reference": self.reference,
            "offset_ns": self.offset_ns,
            "offset_ms": round(self.offset_ns * 1e-6, 4),
            "peak": round(self.peak, 4),
            "sidelobe_ratio": round(min(self.sidelobe_ratio, 1e6), 3),
            "spread_ms": round(self.spread_ms, 4),
            "confidence": round(self.confidence, 3),
            "reliable": self.reliable,
            "reason": self.reason,
            "method": self.method,
            "events": self.events,
        }


def _rate_hz(sig: Signal) -> float:
    return (len(sig.t_ns) - 1) / max(sig.duration_s, 1e-9)


class _Dense:
    """A signal on a fine grid (linear interpolation between its samples), high-passed."""

    def __init__(self, sig: Signal, tiles: np.ndarray, t0_ns: int, t1_ns: int, hp_s: float):
        self.t0_ns, self.step_ns = t0_ns, 1_000_000  # 1 ms
        n = (t1_ns - t0_ns) // self.step_ns + 1
        g = t0_ns + np.arange(n) * self.step_ns
        order = np.argsort(sig.t_ns, kind="stable")
        t = sig.t_ns[order]
        w = max(3, round(hp_s * 1e3) | 1)
        self.values = np.empty((n, len(tiles)))
        self.baseline = np.empty((n, len(tiles)))
        for j, b in enumerate(tiles):
            dt = sig.dt_ns[b if len(sig.dt_ns) > 1 else 0]
            x = np.interp(g, t + dt, sig.values[order, b])
            c = np.cumsum(np.concatenate([[0.0], np.pad(x, w // 2, mode="edge")]))
            self.baseline[:, j] = (c[w:] - c[:-w]) / w
            self.values[:, j] = x - self.baseline[:, j]

    def at(self, t_ns: np.ndarray, what: np.ndarray | None = None) -> np.ndarray:
        """Values at instants ``t_ns`` (n, tiles), by linear interpolation (clamped)."""
        arr = self.values if what is None else what
        x = np.clip((t_ns - self.t0_ns) / self.step_ns, 0, len(arr) - 1.000001)
        i = x.astype(np.int64)
        f = x - i
        cols = np.arange(arr.shape[1])
        return np.asarray(arr[i, cols] * (1 - f) + arr[i + 1, cols] * f)


def _scores(
    sparse: np.ndarray, inst: np.ndarray, dense: _Dense, lags_ns: np.ndarray, sign: int
) -> tuple[np.ndarray, np.ndarray]:
    """Correlation per lag and sample: sparse[i, b] · dense(inst[i, b] + sign · lag), with the
    normalisation per lag; returns (lags, samples) products and (lags,) norms of the dense."""
    out = np.empty((len(lags_ns), len(sparse)))
    norm = np.empty(len(lags_ns))
    for k, lag in enumerate(lags_ns):
        d = dense.at(inst + sign * lag)
        out[k] = (sparse * d).sum(axis=1)
        norm[k] = float((d * d).sum())
    return out, norm


def _peak(c: np.ndarray) -> tuple[float, float]:
    """(sub-sample index, value) of the maximum of ``c`` by a parabola through three points."""
    k = int(np.argmax(c))
    if 0 < k < len(c) - 1:
        y0, y1, y2 = c[k - 1], c[k], c[k + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            d = 0.5 * (y0 - y2) / den
            return k + d, float(y1 - 0.25 * (y0 - y2) * d)
    return float(k), float(c[k])


def estimate_offset(
    sig: Signal,
    ref: Signal,
    *,
    max_lag_ns: int = 500_000_000,
    highpass_s: float = 1.0,
    blocks: int = 8,
) -> OffsetEstimate:
    """The offset of ``sig`` relative to ``ref`` (see the module docstring for the method).

    The denser of the two signals is interpolated onto a 1 ms grid and read at the sparser
    one's own sample instants shifted by each candidate lag (a coarse 5 ms scan, then 0.1 ms
    around its peak), so the sparse stream (a 10 Hz lidar) is never interpolated."""
    t0 = max(int(sig.t_ns.min()), int(ref.t_ns.min())) + max_lag_ns
    t1 = min(int(sig.t_ns.max()), int(ref.t_ns.max())) - max_lag_ns
    need_s = 4 * max_lag_ns * 1e-9 + 5.0
    if (t1 - t0) * 1e-9 + 2 * max_lag_ns * 1e-9 < need_s:
        raise TemporalCalibrationError(
            f"stream {sig.stream}: it overlaps the reference {ref.stream} for only "
            f"{max(0, t1 - t0 + 2 * max_lag_ns) * 1e-9:.1f} s; at least ~{need_s:.0f} s are "
            "needed (record longer, or lower --max-lag-ms)"
        )
    if sig.values.shape[1] != ref.values.shape[1]:
        sig, ref = sig.whole(), ref.whole()  # one of them is not resolved into tiles
    both = ~(np.isnan(sig.values).any(axis=0) | np.isnan(ref.values).any(axis=0))
    tiles = np.flatnonzero(both)
    if not len(tiles):
        raise TemporalCalibrationError(
            f"stream {sig.stream}: it sees nothing of what {ref.stream} sees (check the rig poses)"
        )
    # x_sig(m) = x_ref(m + d): reading the reference at t + d, or the stream at t - d.
    sparse_sig = _rate_hz(sig) <= _rate_hz(ref)
    sp, de = (sig, ref) if sparse_sig else (ref, sig)
    sign = 1 if sparse_sig else -1
    lo_ns, hi_ns = int(sp.t_ns.min()), int(sp.t_ns.max())
    dense = _Dense(
        de, tiles, min(lo_ns, int(de.t_ns.min())), max(hi_ns, int(de.t_ns.max())), highpass_s
    )
    keep = (sp.t_ns >= t0) & (sp.t_ns <= t1)
    dts = sp.dt_ns[tiles] if len(sp.dt_ns) > 1 else np.zeros(len(tiles), np.int64)
    inst = sp.t_ns[keep][:, None] + dts[None, :]
    own = _Dense(sp, tiles, lo_ns, hi_ns, highpass_s)
    x = sp.values[keep][:, tiles] - own.at(inst, own.baseline)
    power = float((x * x).sum())
    for s, p in ((sp, power), (de, float((dense.values**2).sum()))):
        if not p > 1e-12:
            raise TemporalCalibrationError(
                f"stream {s.stream}: its {s.kind} signal does not change over the recording "
                "(nothing moves or sounds in its view); record with motion in view of it"
            )
    coarse = np.arange(-max_lag_ns, max_lag_ns + 1, 5_000_000)
    prod, norm = _scores(x, inst, dense, coarse, sign)
    corr = prod.sum(axis=1) / np.sqrt(power * norm)
    kc = int(np.argmax(corr))
    fine = coarse[kc] + np.arange(-100, 101) * 100_000
    fprod, fnorm = _scores(x, inst, dense, fine, sign)
    fcorr = fprod.sum(axis=1) / np.sqrt(power * fnorm)
    k, value = _peak(fcorr)
    offset_ns = round(coarse[kc] + (k - 100) * 100_000)
    # Main lobe: out to where the correlation first falls below half the peak.
    lo = hi = kc
    while lo > 0 and corr[lo] > value / 2:
        lo -= 1
    while hi < len(corr) - 1 and corr[hi] > value / 2:
        hi += 1
    width = max(kc - lo, hi - kc, 1)
    side = np.concatenate([corr[: max(0, kc - 2 * width)], corr[kc + 2 * width + 1 :]])
    top = float(side.max()) if len(side) else 0.0
    ratio = value / top if top > 1e-9 else math.inf
    # Jackknife over blocks of time: the peak with each block left out.
    edges = np.linspace(0, fprod.shape[1], blocks + 1).round().astype(int)
    lags = []
    for j in range(blocks):
        part = np.concatenate([fprod[:, : edges[j]], fprod[:, edges[j + 1] :]], axis=1)
        lags.append(_peak(part.sum(axis=1))[0])
    la = np.asarray(lags) * 0.1
    spread_ms = math.sqrt((blocks - 1) / blocks * float(((la - la.mean()) ** 2).sum()))
    reasons = []
    if kc in (0, len(coarse) - 1):
        reasons.append("the peak is at the end of the lag range (raise --max-lag-ms)")
    if value < RELIABLE["min_peak"]:
        reasons.append(f"weak correlation ({value:.2f} < {RELIABLE['min_peak']})")
    if ratio < RELIABLE["min_sidelobe_ratio"]:
        reasons.append(f"ambiguous peak (side lobe ratio {ratio:.2f})")
    if spread_ms > RELIABLE["max_spread_ms"]:
        reasons.append(f"unstable over the recording (±{spread_ms:.1f} ms)")
    reason = ""
    if reasons:
        reason = (
            "; ".join(reasons)
            + f": record more distinct events seen (or heard) by both {sig.stream} and "
            f"{ref.stream}, or leave {sig.stream} out (--streams)"
        )
    conf = max(0.0, min(1.0, value)) * max(0.0, 1 - 1 / ratio) / (1 + spread_ms**2)
    return OffsetEstimate(
        stream=sig.stream,
        reference=ref.stream,
        offset_ns=offset_ns,
        peak=value,
        sidelobe_ratio=ratio,
        spread_ms=spread_ms,
        confidence=conf,
        reliable=not reasons,
        reason=reason,
    )


def estimate_offset_events(sig: Signal, ref: Signal, *, max_lag_ns: int) -> OffsetEstimate:
    """The offset of ``sig`` relative to ``ref`` from their events (moves seen, clicks heard;
    :mod:`edgefuse.calib.temporal_events`): the mean difference of paired events. ``peak`` is
    the share of events paired, ``sidelobe_ratio`` the pairing's mode over its next best lag,
    ``spread_ms`` the standard error of the mean."""
    m = match_events(sig.events_ns, ref.events_ns, max_lag_ns=max_lag_ns)
    reason = ""
    if m.reason:
        reason = (
            f"{m.reason}: record more moves seen (or clicks heard) by both {sig.stream} and "
            f"{ref.stream} (edgefuse sim generate --scenario timing shows how), or leave "
            f"{sig.stream} out (--streams)"
        )
    ratio = m.ratio if math.isfinite(m.ratio) else 1e6
    conf = m.share * max(0.0, 1 - 1 / max(ratio, 1e-9)) / (1 + (m.stderr_ms / 0.3) ** 2)
    return OffsetEstimate(
        stream=sig.stream,
        reference=ref.stream,
        offset_ns=m.offset_ns,
        peak=m.share,
        sidelobe_ratio=ratio,
        spread_ms=m.stderr_ms if math.isfinite(m.stderr_ms) else 1e6,
        confidence=max(0.0, min(1.0, conf)),
        reliable=m.reliable,
        reason=reason,
        method="events",
        events=m.pairs,
    )


#: Methods of :func:`estimate_offsets`.
METHODS = ("auto", "events", "correlation")


def estimate_offsets(
    signals: Mapping[str, Signal],
    reference: str,
    *,
    method: str = "auto",
    max_lag_ns: int = 500_000_000,
    **kw: Any,
) -> dict[str, OffsetEstimate]:
    """The offset of every signal but the reference's against it: by ``events`` paired
    (:func:`estimate_offset_events`), by ``correlation`` (:func:`estimate_offset`), or
    ``auto``: events where both streams have enough of them and their pairing is reliable
    (a time-calibration recording), else correlation (any recording with motion in view)."""
    if reference not in signals:
        raise TemporalCalibrationError(
            f"reference stream {reference!r} is not among the streams ({', '.join(signals)})"
        )
    if method not in METHODS:
        raise TemporalCalibrationError(f"unknown method {method!r}; expected one of {METHODS}")
    ref = signals[reference]
    out: dict[str, OffsetEstimate] = {}
    for n, s in signals.items():
        if n == reference:
            continue
        if method != "correlation":
            few = min(len(s.events_ns), len(ref.events_ns)) < RELIABLE_EVENTS["min_pairs"]
            if method == "events" or not few:
                e = estimate_offset_events(s, ref, max_lag_ns=max_lag_ns)
                # Events that pair up mark a time-calibration recording: keep their estimate
                # (flagged if imprecise), correlation is the blunter tool there.
                paired = e.events >= RELIABLE_EVENTS["min_pairs"]
                if method == "events" or (paired and e.peak >= RELIABLE_EVENTS["min_share"]):
                    out[n] = e
                    continue
        out[n] = estimate_offset(s, ref, max_lag_ns=max_lag_ns, **kw)
    return out


def apply_offsets(
    rig: RigCalibration,
    estimates: Sequence[OffsetEstimate],
    *,
    sensors: Mapping[str, str],
) -> RigCalibration:
    """``rig`` with each estimated stream's sensor ``time_offset_ns`` set to the reference
    sensor's plus the estimate (``sensors``: stream -> rig sensor)."""
    out = dict(rig.sensors)
    for e in estimates:
        ref = rig.sensor(sensors[e.reference]).time_offset_ns
        name = sensors[e.stream]
        out[name] = replace(rig.sensor(name), time_offset_ns=int(ref + e.offset_ns))
    return replace(rig, sensors=out)
