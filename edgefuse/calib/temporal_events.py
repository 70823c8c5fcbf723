"""Event timing for temporal calibration: where a move is halfway, where clicks start, and the
offset that lines them up across two streams.

A time-calibration recording (the simulator's ``timing`` scenario, or a board moved abruptly
between two stops before a real rig, a clapper clicking as it passes the middle of its travel)
has sharp events that every stream perceives. Correlating activity signals finds their lag only
to within the sparser stream's sampling blur; timing each event in each stream does better:

- **Moves** (camera, depth, lidar): a move is a run of samples that differ from the one before
  (beyond the noise) between two holds of at least three still samples. Its progress is the
  projection of each sample's change from the final hold onto the change between the holds
  (hold medians; differences clipped at ``clip``, so a depth pixel that switches from target to
  background counts like a move of that size): 1 at the start, 0 at the stop, linear in the
  displacement wherever cells switch wholly or change in proportion, and for any pattern moved
  along a line it is exactly halfway when the pattern is (start and end effects, such as a
  narrow pole or blur, are symmetric). The event is where the line fitted to the samples
  between 20 % and 80 % of the way crosses halfway between the levels the still samples
  themselves show (a single sample's dropouts and noise pull it towards the middle). A lidar
  sample's instant is its sweep start plus the scan time of the changing cells, weighted as in
  the projection (the scan-time model).
- **Clicks** (microphone): the onset where the rectified first difference of the samples
  first reaches a quarter of the click's peak, interpolated between the two samples around it.
- **Matching**: the histogram of all differences reference - stream within ``±max_lag`` has its
  mode at the offset; each stream event is paired with the reference event nearest that, and
  the offset is the mean of the pairs' differences after outliers (> 4 MADs) are dropped, with
  its standard error. Moves alternate in direction, and direction-dependent errors (a depth
  camera's edge shadows lead one way and trail the other) cancel in the mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Thresholds an event estimate must pass to be reliable: pairs, share of the sparser stream's
#: events paired, mode / next histogram peak, standard error of the offset (ms).
RELIABLE_EVENTS = {"min_pairs": 5, "min_share": 0.5, "min_ratio": 2.0, "max_stderr_ms": 0.5}
#: Events at least this far apart in one stream are separate (s).
_MIN_GAP_S = 0.15
#: The part of a move (from 1 at the start to 0 at the stop) whose samples the crossing is
#: fitted to.
_MID = (0.2, 0.8)


def _frame_distance(a: np.ndarray, b: np.ndarray, clip: float) -> np.ndarray:
    """Mean over the last axis of ``min(|a - b|, clip)²`` (broadcasting)."""
    d = np.minimum(np.abs(a - b), clip)
    return np.asarray((d * d).mean(axis=-1))


def _active_cells(x: np.ndarray, clip: float) -> np.ndarray:
    """Cells that the events change: their spread over the session (10th to 90th percentile,
    clipped) is large against their sample-to-sample noise (most of the time, nothing moves).
    Leaving the rest out keeps noisy background (far ground, dropouts) out of the distances."""
    sub = x[:: max(1, len(x) // 400)]
    lo, hi = np.percentile(sub, [10, 90], axis=0)
    noise = 1.4826 * np.median(np.minimum(np.abs(np.diff(sub, axis=0)), clip), axis=0)
    spread = np.minimum(hi - lo, clip)
    return np.asarray(spread > 8.0 * np.maximum(noise, 1e-3 * float(np.median(spread) + 1e-9)))


def _still_run(moving: np.ndarray, j: int, step: int, most: int = 6) -> np.ndarray:
    """Indices of up to ``most`` consecutive still samples from ``j`` on (``step`` +1: later,
    -1: earlier); sample ``i`` is still when neither change into nor out of it is moving."""
    out: list[int] = []
    i = j
    while 0 <= i < len(moving) - 1 and len(out) < most:
        if moving[i] or moving[i + 1]:
            break
        out.append(i)
        i += step
    return np.asarray(out, np.int64)


def move_events(
    t_ns: np.ndarray,
    frames: np.ndarray,
    *,
    clip: float = math.inf,
    cell_dt_ns: np.ndarray | None = None,
) -> np.ndarray:
    """Instants (int64 ns) where moves in view are halfway, from samples ``frames`` (T, P) taken
    at ``t_ns`` (T,) (cell ``p`` of sample ``j`` at ``t_ns[j] + cell_dt_ns[p]`` when given); see
    the module docstring. Only the cells that change over the session take part."""
    T = len(t_ns)
    if T < 8:
        return np.zeros(0, np.int64)
    x = frames.astype(np.float32, copy=False)
    roi = _active_cells(x, clip)
    if roi.sum() < 8:
        return np.zeros(0, np.int64)
    x = x[:, roi]
    if cell_dt_ns is not None:
        cell_dt_ns = cell_dt_ns[roi]
    step = np.concatenate([[0.0], _frame_distance(x[1:], x[:-1], clip)])  # step[j]: j-1 -> j
    floor = float(np.median(step[1:]))
    mad = 1.4826 * float(np.median(np.abs(step[1:] - floor)))
    high = float(np.percentile(step[1:], 95))
    if not high > floor + 6 * mad:
        return np.zeros(0, np.int64)  # nothing stands out of the noise
    thr = floor + max(6 * mad, 0.2 * (high - floor))
    moving = step > thr
    moving[0] = False
    out: list[float] = []
    for k in range(2, T - 4):
        if not (moving[k] and moving[k - 1]) or moving[k + 1]:
            continue
        after = _still_run(moving, k + 1, +1)
        s0 = k
        while s0 > 1 and moving[s0 - 1]:
            s0 -= 1
        # moving[s0]: the change from s0 - 1 to s0; samples s0 - 1 and before are still.
        before = _still_run(moving, s0 - 2, -1)
        if len(after) < 3 or len(before) < 3:
            continue  # no clean hold on both sides to measure the move against
        H0, H1 = np.median(x[before], axis=0), np.median(x[after], axis=0)  # dropouts
        e = np.clip(H0 - H1, -clip, clip)
        ee = float((e * e).sum())
        if not ee > 0:
            continue
        idx = np.arange(s0 - 1, k + 1)
        p = np.clip(x[idx] - H1, -clip, clip) @ e / ee
        t = t_ns[idx].astype(np.float64)
        if cell_dt_ns is not None:  # the instant the changing cells were scanned
            w = e * e  # the weight of each cell in the projection
            t = t + float((w * cell_dt_ns).sum() / max(float(w.sum()), 1e-12))
        # Halfway as the samples themselves show the holds (dropouts and noise in a single
        # sample pull it towards the middle, unlike the holds' medians).
        p0 = float((np.clip(x[before] - H1, -clip, clip) @ e).mean() / ee)
        p1 = float((np.clip(x[after] - H1, -clip, clip) @ e).mean() / ee)
        half = 0.5 * (p0 + p1)
        # The line through the samples around the crossing: two on each side, within the
        # middle of the move (where it is straightest).
        below = np.flatnonzero(p < half)
        if not len(below) or below[0] == 0:
            continue
        i = int(below[0])  # p[i - 1] >= half > p[i]
        lo_p, hi_p = p1 + _MID[0] * (p0 - p1), p1 + _MID[1] * (p0 - p1)
        near = [j for j in range(i - 2, i + 2) if 0 <= j < len(p) and lo_p <= p[j] <= hi_p]
        if len(near) < 2:
            near = [i - 1, i]
        beta, alpha = np.polyfit(t[near] - t[near].mean(), p[near], 1)
        if not beta < 0:
            continue
        t0 = float(t[near].mean()) + (half - alpha) / beta  # where the line crosses halfway
        if not out or t0 - out[-1] > _MIN_GAP_S * 1e9:
            out.append(t0)
    return np.round(np.asarray(out)).astype(np.int64)


def click_onsets(t_ns: np.ndarray, x: np.ndarray, *, snr: float = 12.0) -> np.ndarray:
    """Onsets (int64 ns) of clicks in audio ``x`` (N,) sampled at ``t_ns`` (N,): where the
    rectified first difference first reaches a quarter of the click's peak (within 5 ms),
    interpolated between samples; a click must stand ``snr`` times above the median level."""
    if len(x) < 16:
        return np.zeros(0, np.int64)
    env = np.abs(np.diff(x.astype(np.float64)))  # env[i]: x[i] -> x[i + 1], at sample i + 1
    level = float(np.median(env)) + 1e-9
    loud = np.flatnonzero(env > snr * level)
    if not len(loud):
        return np.zeros(0, np.int64)
    rate = (len(t_ns) - 1) / max(float(t_ns[-1] - t_ns[0]) * 1e-9, 1e-9)
    win = max(2, round(0.005 * rate))
    out: list[float] = []
    last = -math.inf
    for i in loud.tolist():
        if t_ns[i + 1] - last < _MIN_GAP_S * 1e9:
            continue
        peak = float(env[i : i + win].max())
        thr = 0.25 * peak
        j = i
        while j > 0 and env[j - 1] >= thr:
            j -= 1
        j = max(j, 1)
        # Between sample j (below the threshold) and j + 1 (the first at or above it).
        lo, hi = env[j - 1], env[j]
        f = (thr - lo) / (hi - lo) if hi > lo else 0.0
        t = float(t_ns[j]) + f * float(t_ns[j + 1] - t_ns[j])
        out.append(t)
        last = float(t_ns[i + 1])
    return np.round(np.asarray(out)).astype(np.int64)


@dataclass(frozen=True, kw_only=True)
class EventMatch:
    """Events of a stream paired with the reference's: ``offset_ns`` = reference - stream."""

    offset_ns: int
    pairs: int
    #: Pairs over the events of the sparser of the two streams.
    share: float
    #: Pairs at the mode over the most at any other lag (inf: none elsewhere).
    ratio: float
    #: Standard error and standard deviation of the pairs' differences (ms).
    stderr_ms: float
    spread_ms: float
    reason: str = ""

    @property
    def reliable(self) -> bool:
        """Whether the match passes :data:`RELIABLE_EVENTS`."""
        return not self.reason


def match_events(
    events_ns: np.ndarray, ref_events_ns: np.ndarray, *, max_lag_ns: int, tol_ns: int = 15_000_000
) -> EventMatch:
    """Pair ``events_ns`` with ``ref_events_ns`` (see the module docstring)."""
    s = np.sort(np.asarray(events_ns, np.int64))
    r = np.sort(np.asarray(ref_events_ns, np.int64))
    fewest = min(len(s), len(r))
    if fewest == 0:
        return EventMatch(
            offset_ns=0, pairs=0, share=0.0, ratio=0.0, stderr_ms=math.inf, spread_ms=math.inf,
            reason="no events in one of the streams",
        )  # fmt: skip
    diff = (r[None, :] - s[:, None]).ravel()
    diff = diff[np.abs(diff) <= max_lag_ns]
    bin_ns = 2_000_000
    edges = np.arange(-max_lag_ns, max_lag_ns + bin_ns + 1, bin_ns)
    hist, _ = np.histogram(diff, edges)
    smooth = np.convolve(hist, np.ones(3), mode="same")
    b = int(np.argmax(smooth))
    mode_ns = 0.5 * (edges[b] + edges[b + 1])
    far = np.abs(0.5 * (edges[:-1] + edges[1:]) - mode_ns) > 3 * tol_ns
    other = float(smooth[far].max()) if far.any() else 0.0
    ratio = float(smooth[b]) / other if other > 0 else math.inf
    pos = np.clip(np.searchsorted(r, s + mode_ns), 1, max(1, len(r) - 1))
    near = np.where(
        np.abs(r[pos - 1] - (s + mode_ns)) < np.abs(r[np.minimum(pos, len(r) - 1)] - (s + mode_ns)),
        r[pos - 1],
        r[np.minimum(pos, len(r) - 1)],
    )
    dd = (near - s).astype(np.float64)
    parity = np.searchsorted(r, near) % 2  # which way the move went: they alternate
    keep = np.abs(dd - mode_ns) <= tol_ns
    dd, parity = dd[keep], parity[keep]
    if len(dd):
        med = float(np.median(dd))
        mad = 1.4826 * float(np.median(np.abs(dd - med)))
        keep = np.abs(dd - med) <= max(4 * mad, 1e6)
        dd, parity = dd[keep], parity[keep]
    n = len(dd)
    offset = float(dd.mean()) if n else mode_ns
    spread = float(dd.std(ddof=1)) * 1e-6 if n > 1 else math.inf
    stderr = spread / math.sqrt(n) if n > 1 else math.inf
    if min(int(parity.sum()), n - int(parity.sum())) >= 3:
        # Both directions weigh the same, so direction-dependent errors cancel even when one
        # direction has more events; the error is then the spread within each direction.
        a, b = dd[parity == 0], dd[parity == 1]
        offset = 0.5 * (float(a.mean()) + float(b.mean()))
        var = float(a.var(ddof=1)) / len(a) + float(b.var(ddof=1)) / len(b)
        stderr = 0.5 * math.sqrt(var) * 1e-6
    share = n / fewest
    reasons = []
    if n < RELIABLE_EVENTS["min_pairs"]:
        reasons.append(f"{n} paired events (< {RELIABLE_EVENTS['min_pairs']})")
    if share < RELIABLE_EVENTS["min_share"]:
        reasons.append(f"only {share:.0%} of the events paired")
    if ratio < RELIABLE_EVENTS["min_ratio"]:
        reasons.append(f"ambiguous pairing (ratio {ratio:.1f})")
    if stderr > RELIABLE_EVENTS["max_stderr_ms"]:
        reasons.append(f"event times disagree (±{stderr:.2f} ms)")
    return EventMatch(
        offset_ns=round(offset),
        pairs=n,
        share=share,
        ratio=ratio,
        stderr_ms=stderr,
        spread_ms=spread,
        reason="; ".join(reasons),
    )
