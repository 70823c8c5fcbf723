"""Clock models: map a sensor's stamps onto the host timeline, online, from the lower envelope.

Every message carries ``t_sensor_ns`` (the sensor's own clock) and ``t_host_ns`` (host monotonic
time at arrival). Between the instant a sensor stamps a sample and its arrival lie a fixed
minimum latency (calibrated: ``latency_ns``) and a jitter that is never negative: a message can
be late, never early. Plotted as points (stamp s, arrival a), every point therefore lies on or
above the line ``a = alpha + beta·s + latency`` that maps the sensor clock onto the host clock
(offset alpha, rate beta = 1 + drift), and the least-delayed points hug it from above. A
least-squares fit is biased by the mean delay and dragged by every late message; the *lower
envelope* is not.

The estimator is the linear programme of Moon, Skelly & Towsley ("Estimation and removal of
clock skew from network delay measurements", IEEE INFOCOM 1999), also the core of TICSync
(Harrison & Newman, "TICSync: Knowing when things happened", IEEE ICRA 2011): among the lines
below every point, take the one whose value at the centroid of the stamps is largest. Its
solution is the edge of the lower convex hull that spans the centroid. The slope is
constrained to ``1 ± max_drift_ppm·1e-6`` (a physical bound on an oscillator): when the
spanning edge is steeper or flatter (the first points of a run) the slope is clamped and the
line lowered until it touches the hull, ``alpha = min(a_i - beta·s_i)``. The stamped instant
on the host is ``alpha + beta·s`` minus the calibrated latency.

Online, bounded, cheap: the window is sensor time (``window_s``, between one and 1.25 windows
of data: drift wanders slowly with temperature) cut into four blocks. The open block keeps its
lower hull incrementally (Andrew's monotone chain: stamps increase, so an append is amortised
O(1)); a closed block keeps only its hull vertices, the sum and count of its stamps and its
lowest points. The line is refitted by merging the blocks' hull vertices (the hull of a union
is the hull of the hulls) on every point while there are few, then only when it can have
changed: a point fell below it, the centroid left the spanning edge (checked every 8 points),
a block closed; and, to refresh the bound, every eighth of a window or 256 points. A point
above the line with the centroid still on the edge leaves the LP optimum where it is, so
most updates are a handful of float operations. Stamps and arrivals are taken relative to an
origin pair (exact ints, re-based at every block boundary), so the relative values are
integers far below 2**53 and exact in float64 even for stamps near 1e18 ns.

The error bound (statistical, not hard: delays are never observed) rests on one assumption:
in each half of the window the least-delayed points are within ``G`` of the true line. The
true line also lies below every point, so at the lowest point of each half (the anchors) it
is pinned to an interval of width ``G`` below it; the bound at a stamp is the largest
distance from the fitted line of any line through both intervals, which grows with the
distance beyond the anchors (extrapolation, gaps). ``G`` is the spread of the 8 lowest
residuals of each half (pooled over both halves) times a factor that depends on how densely
delays crowd their minimum, the jitter's tail shape (few deliveries near the minimum, as with
a gamma of shape 2, leave more room below the lowest than an exponential does); the shape is
learnt from the spread of each block's 32 lowest residuals. The factors were calibrated on
the simulated sensor clocks (exponential and gamma jitter) for a coverage of at least 95 %.

Events: ``"first"``; ``"wrap"`` (the stamp passed its modulus: unwrapped to the multiple
nearest the model's prediction); ``"reset"``: the stamp went back and the model puts it more
than ``max_delay_ns`` before its arrival (the clock restarted; a stamp slightly behind, or a
late message overtaken by later ones, is only counted as ``rejected``, unless
``jump_confirm`` come in a row), a point fell ``jump_ns`` (plus the bound) below the line
(impossible with one-sided delay: the clock jumped forward), or ``jump_confirm`` consecutive
points lie that far above it, consistent with each other (a jump back; one long delay, or a
burst of stalled messages arriving together, is not). A reset empties the window but keeps
the rate (same oscillator): the offset is re-estimated from the new points with the old slope
until the new data span as long as the old slope was estimated from (or half a window). After
a gap longer than the window the last block before it is kept and the line extrapolated with
the held rate until new data replace it; the bound grows with the distance from the data.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

# The window and the LP live in _lower_envelope; the bound's constants stay importable here.
from edgefuse.sync._lower_envelope import BOUND_RANK as BOUND_RANK
from edgefuse.sync._lower_envelope import REFIT_MIN, LowerEnvelope
from edgefuse.sync._lower_envelope import SHAPE_TABLE as SHAPE_TABLE

#: Most held-back points of a suspected jump back (older ones are fed as late points).
_PENDING_MAX = 256


@dataclass(frozen=True, kw_only=True)
class ClockModelConfig:
    """How one stream's clock is modelled: which clock, its latency, wrap, window and limits."""

    #: ``sensor``: estimate the mapping of ``t_sensor_ns``; ``host``: the sensor has no clock
    #: of its own, ``t = t_host - latency_ns`` (no estimation).
    clock: Literal["sensor", "host"] = "sensor"
    #: Calibrated minimum delay (ns) from the stamped instant to arrival on the host: the
    #: envelope is the stamped instant plus this.
    latency_ns: int = 0
    #: Modulus of the stamp (ns), 0 for none (a Velodyne: µs past the hour, 3600 s).
    wrap_ns: int = 0
    #: Estimation window, in seconds of sensor time (drift changes slowly with temperature).
    window_s: float = 30.0
    #: Physical bound on the oscillator error: the slope stays within ``1 ± this·1e-6``.
    max_drift_ppm: float = 500.0
    #: A stamp this far (ns) off the model, beyond its bound, is a jump or reset candidate;
    #: also the largest step back that counts as reordering rather than a restart.
    jump_ns: int = 50_000_000
    #: Consecutive points that far above the line (and spanning ``jump_ns`` of stamps) that
    #: confirm a jump back of the clock.
    jump_confirm: int = 5
    #: The longest a message can plausibly take to arrive (ns): a stamp behind the previous
    #: one that the model maps within this of its arrival is a late (reordered) message, not
    #: a clock restart (unless ``jump_confirm`` stamps in a row are behind).
    max_delay_ns: int = 1_000_000_000
    #: The model is ``converged`` once its data since the start or a reset span this long.
    converge_s: float = 1.0
    #: Scale (ns) assumed for the delivery jitter while too few points exist to measure it:
    #: the bound of the first estimates after a start or a reset.
    jitter_prior_ns: int = 10_000_000
    #: ``clock="host"`` only: the bound reported (ns). Without a sensor clock the delivery
    #: jitter cannot be observed, so it is whatever a calibration says (0: unknown).
    host_bound_ns: int = 0

    def __post_init__(self) -> None:
        if self.clock not in ("sensor", "host"):
            raise ValueError(f"clock must be 'sensor' or 'host', got {self.clock!r}")
        for name in ("latency_ns", "wrap_ns", "jitter_prior_ns", "host_bound_ns"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0 (ns), got {v!r}")
        if not isinstance(self.jump_ns, int) or isinstance(self.jump_ns, bool) or self.jump_ns < 1:
            raise ValueError(f"jump_ns must be an int >= 1 (ns), got {self.jump_ns!r}")
        if not isinstance(self.max_delay_ns, int) or self.max_delay_ns < self.jump_ns:
            raise ValueError(
                f"max_delay_ns must be an int >= jump_ns ({self.jump_ns}), "
                f"got {self.max_delay_ns!r}"
            )
        if self.wrap_ns and self.wrap_ns < 4 * self.jump_ns:
            raise ValueError(
                f"wrap_ns ({self.wrap_ns}) must be 0 or at least 4 x jump_ns ({self.jump_ns})"
            )
        if not (math.isfinite(self.window_s) and 0.1 <= self.window_s <= 86400.0):
            raise ValueError(f"window_s must be in 0.1..86400 s, got {self.window_s}")
        if not (math.isfinite(self.max_drift_ppm) and 0 < self.max_drift_ppm <= 10_000):
            raise ValueError(f"max_drift_ppm must be in (0, 10000], got {self.max_drift_ppm}")
        if (
            not isinstance(self.jump_confirm, int)
            or isinstance(self.jump_confirm, bool)
            or not 2 <= self.jump_confirm <= 100
        ):
            raise ValueError(f"jump_confirm must be an int in 2..100, got {self.jump_confirm!r}")
        if not (math.isfinite(self.converge_s) and 0 <= self.converge_s <= self.window_s):
            raise ValueError(f"converge_s must be in 0..window_s, got {self.converge_s}")


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """One stamp mapped onto the host timeline.

    ``t_ns`` is the stamped instant on the host timeline (the calibration's static offset is
    not added: the aligner adds it). ``bound_ns`` is a statistical bound on the error of
    ``t_ns``, calibrated to hold for at least 95 % of estimates (see the module docstring),
    given the configured latency; ``converged`` says the model has had enough data since its
    start or last reset. ``event`` is ``None``, ``"first"``, ``"wrap"`` or ``"reset"`` (the
    clock restarted or jumped: the model is re-converging).
    """

    t_ns: int
    bound_ns: int
    converged: bool
    event: str | None


# Building a frozen dataclass through its __init__ costs ~1 µs (object.__setattr__ per
# field); the hot path sets the slots directly.
_new = object.__new__
_set_t = ClockEstimate.__dict__["t_ns"].__set__
_set_bound = ClockEstimate.__dict__["bound_ns"].__set__
_set_conv = ClockEstimate.__dict__["converged"].__set__
_set_event = ClockEstimate.__dict__["event"].__set__


def _as_int(value: object, name: str) -> int:
    """``value`` as an int: ints and numpy integers pass, anything else is a TypeError."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"{name} must be an int (ns), got {type(value).__name__} {value!r}")


class ClockModel(LowerEnvelope):
    """Online estimate of one sensor clock's mapping onto the host timeline.

    Feed every arrival to :meth:`update` (stamp, host arrival), in arrival order; it returns
    the stamp's instant on the host timeline with an error bound, from the lower envelope of
    the window's (stamp, arrival) points (the TICSync / Moon-Skelly-Towsley LP of the module
    docstring) minus the calibrated latency. :meth:`map` and :meth:`estimate` map other
    stamps of the same clock (an audio chunk's samples, a lidar sweep's points) with the
    current model. The model is a pure function of the pairs fed: it never reads a clock.

    Internally stamps and arrivals are relative to an origin pair (``_s0``, ``_a0``, exact
    ints) moved to the first point of every block, so the relative values, kept as floats,
    are integers well below 2**53 and exact. Memory is bounded by the window's hull vertices
    and a few dozen low points per block, whatever the message rate. The window, the LP and
    the bound's parameters are kept by the base class, :class:`LowerEnvelope`
    (``edgefuse/sync/_lower_envelope.py``); this class owns the stream's semantics.
    """

    __slots__ = (
        "_host", "_jump", "_last_reject", "_latency", "_other", "_pending", "_rejected",
        "_rejected_run", "_resets", "_wrap", "_wrap_k", "_wraps", "config",
    )  # fmt: skip

    def __init__(self, config: ClockModelConfig = ClockModelConfig()) -> None:
        super().__init__(
            window_ns=round(config.window_s * 1e9),
            max_drift=config.max_drift_ppm * 1e-6,
            converge_ns=float(round(config.converge_s * 1e9)),
            jitter_prior_ns=config.jitter_prior_ns,
        )
        self.config = config
        self._host = config.clock == "host"
        self._latency = config.latency_ns
        self._wrap = config.wrap_ns
        self._jump = float(config.jump_ns)
        self._other = 0  # every other pair: the first, host clock, behind the previous
        self._resets = 0
        self._wraps = 0
        self._rejected = 0
        self._rejected_run = 0
        self._last_reject = -1
        self._wrap_k = 0  # multiple of the modulus added to raw stamps
        self._pending: list[tuple[int, int]] = []  # held-back points, absolute ints

    # --- public ------------------------------------------------------------------------
    def update(self, t_sensor_ns: int, t_host_ns: int) -> ClockEstimate:
        """Feed one arrival; return the estimate for this very stamp.

        The estimate uses every pair up to and including this one. A stamp equal to or
        behind the previous one is counted as ``rejected`` and only mapped (reordering, a
        late message overtaken by later ones), unless the model puts it more than
        ``max_delay_ns`` before its arrival or ``jump_confirm`` such stamps come in a row:
        then the clock restarted (a reset). Raises TypeError for a stamp or arrival that is
        not an int (numpy integers are accepted), ValueError for a negative arrival.
        """
        if type(t_sensor_ns) is not int:
            t_sensor_ns = _as_int(t_sensor_ns, "t_sensor_ns")
        if type(t_host_ns) is not int:
            t_host_ns = _as_int(t_host_ns, "t_host_ns")
        if t_host_ns < 0:
            raise ValueError(f"t_host_ns must be >= 0, got {t_host_ns}")
        s0 = self._s0
        if s0 is None:  # the first pair, or a host clock
            return self._first(t_sensor_ns, t_host_ns)
        a = float(t_host_ns - self._a0)
        event: str | None = None
        if self._wrap:
            s, event = self._unwrap(t_sensor_ns, a)
        else:
            s = float(t_sensor_ns - s0)
        if s <= self._last_s:
            return self._behind(s, a, t_sensor_ns, t_host_ns)
        # Points in order drive the refit schedule (rejected ones change nothing).
        u = self._n_in = self._n_in + 1
        if s - self._start >= self._block_ns:
            # The open block is full: close it; the origin moves to this point.
            self._close_block(s, a)
            s = a = 0.0
        alpha = self._alpha
        beta = self._beta
        r = a - (alpha + beta * s)
        if s >= self._bf:
            bound = self._ba1 + self._bb1 * s
            b2 = self._ba2 + self._bb2 * s
            if b2 > bound:
                bound = b2
        else:
            bound = self._bound_at(s)
        lim = self._jump + bound
        if r > lim or r < -lim:
            return self._far_off(s, a, r, bound, event, t_sensor_ns, t_host_ns)
        if self._pending:
            self._flush_pending()
        # Append to the open block's hull (_lower_envelope._hull_append inline: the hot path).
        hx = self._hx
        hy = self._hy
        while len(hx) >= 2:
            x1 = hx[-2]
            y1 = hy[-2]
            if (hx[-1] - x1) * (a - y1) > (hy[-1] - y1) * (s - x1):
                break
            hx.pop()
            hy.pop()
        hx.append(s)
        hy.append(a)
        self._hsum += s
        self._hcount += 1
        self._last_s = s
        if r < self._low_max:
            self._keep_low(r, s, a)
        # The LP optimum stays put while the points stay above the line and the centroid
        # on the spanning edge: check the latter (and the schedule) every few points only.
        if (r < 0.0 or u >= self._check_at) and self._maybe_refit(s, r):
            alpha = self._alpha
            beta = self._beta
            bound = self._bound_at(s)
        conv = self._conv
        if not conv:
            conv = self._conv = (
                self._mcount + self._hcount >= REFIT_MIN and s - self._first_s >= self._converge_ns
            )
        est = _new(ClockEstimate)
        _set_t(est, self._a0 + round(alpha + beta * s) - self._latency)
        _set_bound(est, int(bound) + 1)
        _set_conv(est, conv)
        _set_event(est, event)
        return est

    def map(self, t_sensor_ns: int) -> int:
        """Map another stamp of the same clock onto the host timeline with the current model.

        For a wrapping clock the stamp is unwrapped to the multiple of the modulus closest
        to the last updated stamp. Raises RuntimeError before the first update.
        """
        return self.estimate(t_sensor_ns).t_ns

    def estimate(self, t_sensor_ns: int) -> ClockEstimate:
        """:meth:`map` with its error bound, without updating the model."""
        if type(t_sensor_ns) is not int:
            t_sensor_ns = _as_int(t_sensor_ns, "t_sensor_ns")
        if self._host:
            raise RuntimeError("a 'host' clock model has no sensor clock to map stamps of")
        if self._s0 is None:
            raise RuntimeError("the clock model has no estimate yet (no update)")
        s = t_sensor_ns - self._s0
        if self._wrap:
            m = self._wrap
            s += self._wrap_k * m
            s += (round(self._last_s) - s + m // 2) // m * m
        return self._estimate_at(float(s), None)

    @property
    def slope(self) -> float:
        """Host ns per sensor ns (beta), 1.0 before any estimate."""
        return self._beta

    @property
    def drift_ppm(self) -> float:
        """The sensor clock's rate error in ppm (positive: the sensor clock runs fast)."""
        return (1.0 / self._beta - 1.0) * 1e6

    def stats(self) -> dict[str, int | float]:
        """Counters and state, JSON-ready.

        ``updates``, ``resets``, ``wraps``, ``rejected`` (stamps at or slightly behind the
        previous one), ``refits``; ``converged`` (0/1), ``bound_ns`` (at the last stamp),
        ``drift_ppm``, ``offset_ns`` (host minus sensor time at the last stamp, latency
        removed), and the window's ``points``, ``stored`` (hull vertices and low points kept:
        bounded whatever the rate) and ``span_s``.
        """
        out: dict[str, int | float] = {
            "updates": self._n_in + self._other,
            "resets": self._resets,
            "wraps": self._wraps,
            "rejected": self._rejected,
            "refits": self._refits,
        }
        if self._host:
            out.update(converged=1, bound_ns=self.config.host_bound_ns)
            return out
        if self._s0 is None:
            out.update(converged=0, bound_ns=self.config.jitter_prior_ns, drift_ppm=0.0)
            return out
        est = self._estimate_at(self._last_s, None)
        out.update(
            converged=int(est.converged),
            bound_ns=est.bound_ns,
            drift_ppm=self.drift_ppm,
            offset_ns=est.t_ns - (self._s0 + round(self._last_s)),
            points=self._mcount + self._hcount,
            # What the window stores: hull vertices and bound candidates (bounded memory).
            stored=len(self._mx)
            + len(self._hx)
            + sum(len(b.hx) + len(b.low) for b in self._blocks)
            + len(self._low),
            span_s=self._span * 1e-9,
        )
        return out

    def _estimate_at(self, s: float, event: str | None, extra: float = 0.0) -> ClockEstimate:
        """The estimate for relative stamp ``s`` with the current line (bound plus ``extra``)."""
        bound = self._bound_at(s) + extra
        return ClockEstimate(
            self._a0 + round(self._alpha + self._beta * s) - self._latency,
            int(min(bound, 2e18)) + 1,
            self._conv,
            event,
        )

    # --- first point, order, wrap, jumps, resets ---------------------------------------
    def _first(self, t_sensor_ns: int, t_host_ns: int) -> ClockEstimate:
        """The first pair becomes the origin; a host clock maps every arrival directly."""
        self._other += 1
        event = "first" if self._other == 1 else None
        if self._host:
            return ClockEstimate(t_host_ns - self._latency, self.config.host_bound_ns, True, event)
        self._s0 = t_sensor_ns
        self._a0 = t_host_ns
        self._add(0.0, 0.0, 0.0)
        self._refit()
        return self._estimate_at(0.0, event)

    def _absolute(self, t_sensor_ns: int) -> int:
        """The unwrapped absolute stamp of raw stamp ``t_sensor_ns`` (exact int)."""
        return t_sensor_ns + self._wrap_k * self._wrap

    def _behind(self, s: float, a: float, t_sensor_ns: int, t_host_ns: int) -> ClockEstimate:
        """A stamp at or behind the previous one: a late (reordered) message, or a restart."""
        self._other += 1
        r = a - (self._alpha + self._beta * s)
        if self._last_s - s <= self._jump or r <= self.config.max_delay_ns:
            self._rejected += 1
            # Consecutive: no pair in order came since the last rejected one.
            consecutive = self._last_reject == self._n_in
            self._rejected_run = self._rejected_run + 1 if consecutive else 1
            self._last_reject = self._n_in
            if self._rejected_run < self.config.jump_confirm:
                # Mapped with the model; if it is far off the line, that is in the bound.
                far = r > self._jump + self._bound_at(s) or r < 0.0
                return self._estimate_at(s, None, abs(r) if far else 0.0)
        # Far behind (the model puts it long before its arrival), or behind for several
        # stamps in a row: the clock restarted.
        return self._reset_with([(self._absolute(t_sensor_ns), t_host_ns)])

    def _unwrap(self, raw: int, a: float) -> tuple[float, str | None]:
        """The relative unwrapped stamp of raw stamp ``raw`` arriving at relative ``a``."""
        assert self._s0 is not None
        m = self._wrap
        s = raw - self._s0 + self._wrap_k * m
        # Where the model puts the stamp from its arrival (before a fit: the previous stamp
        # plus the arrival time elapsed); the nearest multiple of the modulus wins.
        if self._mcount + self._hcount >= 2:
            pred = (a - self._alpha) / self._beta
        else:
            # The last point added (always the open block's last hull vertex).
            pred = self._hx[-1] + (a - self._hy[-1])
        k = math.floor((pred - s) / m + 0.5)
        if k == 0:
            return float(s), None
        self._wrap_k += k
        self._wraps += 1
        return float(s + k * m), "wrap"

    def _far_off(
        self,
        s: float,
        a: float,
        r: float,
        bound: float,
        event: str | None,
        t_sensor_ns: int,
        t_host_ns: int,
    ) -> ClockEstimate:
        """A point further than ``jump_ns`` (plus the bound) off the line."""
        point = (self._absolute(t_sensor_ns), t_host_ns)
        if r < 0.0:
            if self._mcount + self._hcount >= REFIT_MIN:
                # Arrived before it could have been stamped: the clock jumped forward.
                return self._reset_with([point])
            # Too few points to trust the line: the first ones were late, not this one.
            if self._pending:
                self._flush_pending()
            self._add(s, a, r)
            self._refit()
            return self._estimate_at(s, event)
        # Far above: a long delay, or the clock jumped back. Hold it until that is clear.
        pending = self._pending
        pending.append(point)
        if len(pending) > _PENDING_MAX:
            assert self._s0 is not None
            x, y = pending.pop(0)
            xr, yr = float(x - self._s0), float(y - self._a0)
            self._add(xr, yr, yr - self._alpha - self._beta * xr)
        self._last_s = s  # the order is checked against held-back points too
        if len(pending) >= self.config.jump_confirm and point[0] - pending[0][0] >= self._jump:
            # Consistent with each other: the least-delayed offsets of both halves agree (a
            # burst of stalled messages arriving together has offsets falling with s).
            beta = self._beta
            half = len(pending) // 2
            off1 = min(y - beta * x for x, y in pending[:half])
            off2 = min(y - beta * x for x, y in pending[half:])
            if abs(off1 - off2) < self._jump / 4:
                return self._reset_with(list(pending))
        # Mapped with the model (right if it was delayed); if the clock jumped, the error
        # is up to its distance from the line: that goes in the bound.
        return self._estimate_at(s, event, r)

    def _flush_pending(self) -> None:
        """The held-back points were late, not a jump: feed them to the window in order."""
        assert self._s0 is not None
        pending, self._pending = self._pending, []
        for x, y in pending:
            xr, yr = float(x - self._s0), float(y - self._a0)
            self._add(xr, yr, yr - self._alpha - self._beta * xr)

    def _reset_with(self, points: list[tuple[int, int]]) -> ClockEstimate:
        """The clock restarted or jumped: start a new window from ``points`` (absolute)."""
        self._resets += 1
        self._s0, self._a0 = points[0]
        self._clear_window()
        self._pending = []
        for x, y in points:
            # Relative to the origin of the moment: adding may close a block and re-base.
            xr, yr = float(x - self._s0), float(y - self._a0)
            self._add(xr, yr, yr - self._alpha - self._beta * xr)
            self._refit()
        return self._estimate_at(self._last_s, "reset")
