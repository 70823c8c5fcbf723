"""The lower envelope behind :class:`edgefuse.sync.clock.ClockModel`: its window and its maths.

Private to :mod:`edgefuse.sync.clock`, whose module docstring explains the model (the
Moon-Skelly-Towsley / TICSync LP, the blocks, the refit schedule, the statistical bound).
:class:`LowerEnvelope` holds the window of (stamp, arrival) points in coordinates relative to
an origin pair (exact ints, re-based at every block boundary): the open block's lower hull,
the closed blocks (:class:`_Block`) and their merged hull, the lowest residuals kept as the
bound's candidates and for the jitter-shape statistic; and it solves the LP (the hull edge
spanning the centroid, slope clamped to the drift limit) and the bound's parameters.
``ClockModel`` inherits it rather than holding one, so that its hot path (``update``) reads
the line, the bound's fast form and the open block's hull as slots of ``self``, exactly as
before the split: no extra object, attribute lookup or call per point. The model owns the
stream's semantics (input checks, order, wrap, jumps and resets, estimates, counters).
"""

from __future__ import annotations

import bisect
import math

__all__ = ["BOUND_RANK", "REFIT_MIN", "SHAPE_TABLE", "LowerEnvelope"]

#: Rank of the residuals whose spread (above the lowest) sets the bound's ``G``.
BOUND_RANK = 8
#: (shape statistic, factor on the spread) at the two ends of the jitter's tail shapes:
#: ``log((r32 - r1) / (r16 - r1))`` of a block's 32 lowest residuals is ~0.6 for gamma
#: jitter of shape 2 and ~0.9 for exponential jitter; interpolated between, clamped outside.
#: Calibrated on the simulated clocks for a coverage of at least 95 %.
SHAPE_TABLE = ((0.70, 1.25), (0.80, 0.6))
#: The shape statistic is a running mean over this many blocks.
_SHAPE_BLOCKS = 8
#: Lowest points (by residual at arrival) the open block keeps (for the shape statistic),
#: and how many of them stay candidates for the bound's spreads once the block is closed.
_LOW_KEEP = 32
_LOW_BOUND = 12
#: Blocks per window.
_BLOCKS = 4
#: Refit on every point until this many points since the start or a reset.
_EAGER_POINTS = 48
#: Scheduled refits (refreshing the bound): after ``_REFIT_MAX`` points, or after
#: ``REFIT_MIN`` points spanning ``window / _REFIT_FRACTION`` of stamps.
REFIT_MIN = 8
_REFIT_MAX = 256
_REFIT_FRACTION = 8
#: Between refits, whether one is due is checked every this many points.
_CHECK_EVERY = 8

_INF = math.inf


class _Block:
    """A closed block: its hull vertices, stamp sum and count, lowest points, last stamp."""

    __slots__ = ("count", "end", "hx", "hy", "low", "total")

    def __init__(
        self,
        hx: list[float],
        hy: list[float],
        total: float,
        count: int,
        low: list[tuple[float, float, float]],
        end: float,
    ) -> None:
        self.hx, self.hy, self.total, self.count = hx, hy, total, count
        self.low, self.end = low, end


def _hull_append(hx: list[float], hy: list[float], x: float, y: float) -> None:
    """Append ``(x, y)``, ``x`` beyond every vertex, to a lower convex hull (monotone chain)."""
    while len(hx) >= 2:
        x1 = hx[-2]
        y1 = hy[-2]
        # Keep the last vertex while the chain turns left (counter-clockwise) at it.
        if (hx[-1] - x1) * (y - y1) > (hy[-1] - y1) * (x - x1):
            break
        hx.pop()
        hy.pop()
    hx.append(x)
    hy.append(y)


def _shape_factor(stat: float) -> float:
    """The bound's factor for the jitter-shape statistic ``stat`` (see ``SHAPE_TABLE``)."""
    (x0, f0), (x1, f1) = SHAPE_TABLE
    if stat <= x0:
        return f0
    if stat >= x1:
        return f1
    return f0 + (f1 - f0) * (stat - x0) / (x1 - x0)


class LowerEnvelope:
    """The window's lower envelope, the line fitted to it and the parameters of its bound.

    A base of :class:`~edgefuse.sync.clock.ClockModel` (see the module docstring): it is fed
    points in stamp order, relative to the origin (``_s0``, ``_a0``), by :meth:`_add` (or by
    the model's inlined copy of it on the hot path), refits through :meth:`_maybe_refit` and
    :meth:`_refit`, and evaluates the bound with :meth:`_bound_at`. ``_n_in`` (points in
    stamp order) and ``_conv`` are advanced by the model; everything else is kept here.
    """

    __slots__ = (
        "_a0", "_alpha", "_anchored", "_b0", "_ba1", "_ba2", "_bb1", "_bb2", "_beta",
        "_beta_ref", "_beta_ref_span", "_bf", "_block_learns", "_block_ns", "_blocks",
        "_bound_c", "_check_at", "_conv", "_converge_ns", "_cx", "_cy", "_edge_hi", "_edge_lo",
        "_elh", "_ell", "_erh", "_erl", "_first_s", "_fit_s", "_fit_update", "_hcount",
        "_hsum", "_hx", "_hy", "_inv", "_jitter_prior", "_last_s", "_low", "_low_max",
        "_max_drift", "_mcount", "_msum", "_mx", "_my", "_n_in", "_pivot", "_pivot_bound",
        "_refit_ns", "_refits", "_s0", "_shape_n", "_shape_stat", "_sigma", "_sigma_ref",
        "_sl", "_span", "_start", "_window_ns",
    )  # fmt: skip

    def __init__(
        self, *, window_ns: int, max_drift: float, converge_ns: float, jitter_prior_ns: int
    ) -> None:
        """An empty window of ``window_ns`` of stamps, the slope within ``1 ± max_drift``;
        a fitted rate is kept (held across resets and gaps) once its data span
        ``converge_ns``; the bound is ``jitter_prior_ns`` until the jitter can be measured."""
        self._window_ns = window_ns
        self._block_ns = float(max(1, window_ns // _BLOCKS))
        self._refit_ns = float(max(1, window_ns // _REFIT_FRACTION))
        self._converge_ns = converge_ns
        self._max_drift = max_drift
        # The bound's scale before enough points exist to measure the jitter.
        self._jitter_prior = float(jitter_prior_ns)
        self._n_in = 0  # pairs in stamp order (the model's hot path counts them)
        self._refits = 0
        # Origin of the relative coordinates: absolute (unwrapped) stamp and arrival.
        self._s0: int | None = None
        self._a0 = 0
        # The rate held across resets and gaps, the data span it came from, its uncertainty.
        self._beta_ref = 1.0
        self._beta_ref_span = 0.0
        self._sigma_ref = 2.0 * self._max_drift
        # Jitter tail shape (see SHAPE_TABLE): the conservative end until a block is learnt.
        self._shape_stat = SHAPE_TABLE[0][0]
        self._shape_n = 0
        self._bound_c = _shape_factor(self._shape_stat)
        self._clear_window()

    # --- the window --------------------------------------------------------------------
    def _clear_window(self) -> None:
        """Empty the window (a start or a reset); the next point is the origin."""
        self._blocks: list[_Block] = []
        # Merged hull, stamp sum and count, and bound candidates of the closed blocks.
        self._mx: list[float] = []
        self._my: list[float] = []
        self._msum: float = 0.0
        self._mcount: int = 0
        self._cx: list[float] = []
        self._cy: list[float] = []
        # The open block: hull, stamp sum and count, lowest points (r, s, a) by residual
        # at arrival (unsorted until full, then sorted).
        self._hx: list[float] = []
        self._hy: list[float] = []
        self._hsum: float = 0.0
        self._hcount: int = 0
        self._low: list[tuple[float, float, float]] = []
        self._low_max: float = _INF
        self._block_learns = False  # see _close_block
        self._start = 0.0  # first stamp of the open block
        self._first_s = 0.0  # first stamp since the start or reset
        self._conv = False
        self._last_s = 0.0
        self._span: float = 0.0
        self._fit_update = 0  # in-order points (_n_in) at the last refit
        self._check_at = 0  # _n_in at which to check whether a refit is due
        self._fit_s: float = 0.0
        # The line (host_rel = alpha + beta * s_rel, latency included), and where the LP
        # optimum stays put: the centroid within [edge_lo, edge_hi].
        self._alpha: float = 0.0
        self._beta: float = self._beta_ref
        self._edge_lo: float = _INF
        self._edge_hi: float = -_INF
        # The bound (see _fit_bound and _bound_at); for s >= bf it is
        # max(ba1 + bb1 * s, ba2 + bb2 * s).
        self._pivot_bound: bool = True
        self._anchored: bool = False
        self._b0: float = self._jitter_prior
        self._sigma: float = 2.0 * self._max_drift
        self._pivot: float = 0.0
        self._sl: float = 0.0
        self._inv: float = 0.0
        self._ell: float = 0.0
        self._elh: float = 0.0
        self._erl: float = 0.0
        self._erh: float = 0.0
        self._bf: float = _INF
        self._ba1: float = 0.0
        self._bb1: float = 0.0
        self._ba2: float = 0.0
        self._bb2: float = 0.0

    def _add(self, s: float, a: float, r: float) -> None:
        """Put a point (relative, residual ``r`` against the line) in the open block."""
        if self._hcount and s - self._start >= self._block_ns:
            self._close_block(s, a)
            s = a = 0.0
        _hull_append(self._hx, self._hy, s, a)
        self._hsum += s
        self._hcount += 1
        if s > self._last_s or self._mcount + self._hcount == 1:
            self._last_s = s
        if r < self._low_max:
            self._keep_low(r, s, a)

    def _keep_low(self, r: float, s: float, a: float) -> None:
        """Keep (r, s, a) among the open block's lowest points."""
        low = self._low
        if len(low) < _LOW_KEEP:
            low.append((r, s, a))
            if len(low) == _LOW_KEEP:
                low.sort()
                self._low_max = low[-1][0]
            return
        bisect.insort(low, (r, s, a))
        low.pop()
        self._low_max = low[-1][0]

    def _lowest(self, n: int) -> list[tuple[float, float, float]]:
        """The open block's ``n`` lowest points (by residual at arrival)."""
        low = self._low
        return low[:n] if len(low) == _LOW_KEEP else sorted(low)[:n]

    def _close_block(self, s: float, a: float) -> None:
        """Close the open block, drop blocks older than the window, re-base on (s, a)."""
        if self._block_learns and len(self._low) >= _LOW_KEEP:
            self._learn_shape(self._low)
        if self._hcount:
            blk = _Block(
                self._hx, self._hy, self._hsum, self._hcount, self._lowest(_LOW_BOUND), self._hx[-1]
            )
            self._blocks.append(blk)
        # Drop the blocks that fell out of the window, but never the one just closed: after a
        # gap longer than the window it anchors the line until new data replace it.
        horizon = s - self._window_ns
        while len(self._blocks) > 1 and self._blocks[0].end < horizon:
            del self._blocks[0]
        self._hx, self._hy, self._hsum, self._hcount = [], [], 0.0, 0
        self._low, self._low_max = [], _INF
        # The next block's lowest points are picked against a line fitted to at least a
        # block of data, so they are its lowest (the first block's are not): learn from it.
        self._block_learns = True
        self._shift(s, a)
        self._start = 0.0
        mx: list[float] = []
        my: list[float] = []
        cx: list[float] = []
        cy: list[float] = []
        total = 0.0
        count = 0
        for b in self._blocks:
            for x, y in zip(b.hx, b.hy, strict=True):
                _hull_append(mx, my, x, y)
            total += b.total
            count += b.count
            cx.extend(x for _, x, _ in b.low)
            cy.extend(y for _, _, y in b.low)
        self._mx, self._my, self._msum, self._mcount = mx, my, total, count
        self._cx, self._cy = cx, cy
        self._check_at = 0  # refit with the next point

    def _shift(self, ds: float, da: float) -> None:
        """Move the origin by (ds, da), re-expressing every stored coordinate."""
        assert self._s0 is not None
        self._s0 += int(ds)
        self._a0 += int(da)
        for b in self._blocks:
            b.hx = [x - ds for x in b.hx]
            b.hy = [y - da for y in b.hy]
            b.total -= b.count * ds
            b.low = [(r, x - ds, y - da) for r, x, y in b.low]
            b.end -= ds
        self._last_s -= ds
        self._first_s -= ds
        self._fit_s -= ds
        self._alpha += self._beta * ds - da
        self._edge_lo -= ds
        self._edge_hi -= ds
        self._pivot -= ds
        self._sl -= ds
        self._bf -= ds
        self._ba1 += self._bb1 * ds
        self._ba2 += self._bb2 * ds

    def _learn_shape(self, low: list[tuple[float, float, float]]) -> None:
        """Update the jitter-shape statistic from a closing block's lowest points."""
        alpha, beta = self._alpha, self._beta
        res = sorted(y - alpha - beta * x for _, x, y in low)
        num = res[_LOW_KEEP - 1] - res[0]
        den = res[_LOW_KEEP // 2 - 1] - res[0]
        if not (num > 0 and den > 0):
            return
        self._shape_n = n = min(self._shape_n + 1, _SHAPE_BLOCKS)
        self._shape_stat += (math.log(num / den) - self._shape_stat) / n
        self._bound_c = _shape_factor(self._shape_stat)

    # --- the fit -----------------------------------------------------------------------
    def _maybe_refit(self, s: float, r: float) -> bool:
        """Refit if the line can have moved or the schedule says so; True if it did."""
        n = self._n_in - self._fit_update
        count = self._mcount + self._hcount
        sbar = (self._msum + self._hsum) / count
        if (
            r < 0.0  # the line must stay below every point
            or not self._edge_lo <= sbar <= self._edge_hi  # the LP optimum moved
            or n >= _REFIT_MAX
            or (n >= REFIT_MIN and s - self._fit_s >= self._refit_ns)
            or count < _EAGER_POINTS
        ):
            self._refit()
            return True
        self._check_at = self._n_in + _CHECK_EVERY
        return False

    def _refit(self) -> None:
        """Solve the LP on the window's hull, then refresh the bound's parameters."""
        self._refits += 1
        self._fit_update = self._n_in
        self._fit_s = self._last_s
        count = self._mcount + self._hcount
        self._check_at = self._n_in + (1 if count < _EAGER_POINTS else _CHECK_EVERY)
        hx = self._mx[:]
        hy = self._my[:]
        for x, y in zip(self._hx, self._hy, strict=True):
            _hull_append(hx, hy, x, y)
        sbar = (self._msum + self._hsum) / count
        self._span = span = hx[-1] - hx[0]
        # After a reset or a gap, hold the rate until the new data span as long as the
        # old rate was estimated from (or half a window).
        held = span < min(self._beta_ref_span, self._window_ns / 2) or (
            # A block kept across a gap longer than the window: extrapolate with the rate.
            bool(self._blocks) and self._blocks[0].end < self._last_s - self._window_ns
        )
        beta = self._beta_ref
        edge = False
        self._edge_lo, self._edge_hi = _INF, -_INF
        if len(hx) >= 2 and not held:
            i = bisect.bisect_right(hx, sbar) - 1
            i = min(max(i, 0), len(hx) - 2)
            slope = (hy[i + 1] - hy[i]) / (hx[i + 1] - hx[i])
            self._edge_lo, self._edge_hi = hx[i], hx[i + 1]
            lo, hi = 1.0 - self._max_drift, 1.0 + self._max_drift
            if lo <= slope <= hi:
                beta, edge = slope, True
                alpha = hy[i] - slope * hx[i]
                pivot = sbar
            else:
                beta = lo if slope < lo else hi
        if not edge:
            # Clamped or held slope: lower the line until it touches the hull.
            j = min(range(len(hx)), key=lambda k: hy[k] - beta * hx[k])
            alpha = hy[j] - beta * hx[j]
            pivot = hx[j]
        self._alpha, self._beta, self._pivot = alpha, beta, pivot
        self._fit_bound(hx, hy, edge, held, span)

    def _fit_bound(
        self, hx: list[float], hy: list[float], edge: bool, held: bool, span: float
    ) -> None:
        """Parameters of the error bound for the line just fitted (see ``edgefuse.sync.clock``).

        The true line lies below every point and, by assumption, within ``G`` of the lowest
        points of each half of the window, ``G`` being the factor for the jitter's shape
        times the spread of the ``BOUND_RANK`` lowest residuals. That pins it at two anchors
        (the lowest point of each half) to an interval each; the bound at a stamp is the
        largest deviation of a line through the two intervals.
        """
        alpha, beta = self._alpha, self._beta
        low = self._lowest(_LOW_BOUND)
        xs = self._cx + [x for _, x, _ in low]
        ys = self._cy + [y for _, _, y in low]
        # The points the line touches are the lowest of all: candidates even when they
        # were not among the lowest at their arrival.
        for x, y in zip(hx, hy, strict=True):
            if abs(y - alpha - beta * x) < 0.5 and x not in xs:
                xs.append(x)
                ys.append(y)
        res = [y - alpha - beta * x for x, y in zip(xs, ys, strict=True)]
        mid = (hx[0] + hx[-1]) / 2.0
        left = sorted([(r, x) for r, x in zip(res, xs, strict=True) if x < mid])
        right = sorted([(r, x) for r, x in zip(res, xs, strict=True) if x >= mid])
        k = BOUND_RANK
        c = self._bound_c
        self._anchored = anchored = len(left) >= k and len(right) >= k
        if held or not anchored:  # the pivot form of the bound is used
            if len(res) >= k:
                res.sort()
                self._b0 = c * (res[k - 1] - res[0]) + max(res[0], 0.0)
            else:
                self._b0 = self._jitter_prior
        if anchored:
            rl, sl = left[0]
            rr, sr = right[0]
            # Both halves hold about as many points: pooling their spreads halves the noise.
            g = c * (left[k - 1][0] - rl + right[k - 1][0] - rr) / 2.0
            inv = 1.0 / max(sr - sl, 1.0)
            self._sl, self._inv = sl, inv
            self._ell, self._elh = -rl, g - rl
            self._erl, self._erh = -rr, g - rr
            # The slope's uncertainty, kept for when the rate is held after a reset or gap.
            slope_sigma = (g + rl + rr) * inv
        else:
            slope_sigma = 2.0 * self._max_drift
        if edge:
            self._sigma = min(slope_sigma, 2.0 * self._max_drift)
            if span >= min(self._beta_ref_span, self._window_ns / 2):
                if span >= self._converge_ns:
                    self._beta_ref, self._beta_ref_span = beta, span
                    self._sigma_ref = self._sigma
                elif self._beta_ref_span == 0:
                    self._beta_ref = beta
        elif held:
            self._sigma = self._sigma_ref
        else:
            self._sigma = 2.0 * self._max_drift
        self._pivot_bound = pivot_bound = held or not anchored
        # The bound's fast form past the right anchor (u >= 1 in _bound_at).
        if anchored and not pivot_bound:
            b1 = (self._erh - self._ell) * self._inv
            b2 = -(self._erl - self._elh) * self._inv
            self._bf = self._sl + 1.0 / self._inv
            self._bb1, self._ba1 = b1, self._ell - b1 * self._sl
            self._bb2, self._ba2 = b2, -self._elh - b2 * self._sl
        elif not anchored:
            self._bf = self._pivot
            self._bb1 = self._bb2 = self._sigma
            self._ba1 = self._ba2 = self._b0 - self._sigma * self._pivot
        else:
            self._bf = _INF

    def _bound_at(self, s: float) -> float:
        """The error bound at relative stamp ``s`` (ns)."""
        bound = _INF
        if self._pivot_bound:
            bound = self._b0 + self._sigma * abs(s - self._pivot)
        if self._anchored:
            # e = fitted - true line is linear in s; at the anchors it lies in [ell, elh]
            # and [erl, erh]: its extreme values are at the corners.
            u = (s - self._sl) * self._inv
            if u >= 1.0:
                hi = (1.0 - u) * self._ell + u * self._erh
                lo = (1.0 - u) * self._elh + u * self._erl
            elif u >= 0.0:
                hi = (1.0 - u) * self._elh + u * self._erh
                lo = (1.0 - u) * self._ell + u * self._erl
            else:
                hi = (1.0 - u) * self._elh + u * self._erl
                lo = (1.0 - u) * self._ell + u * self._erh
            anchored = hi if hi > -lo else -lo
            if anchored < bound:
                bound = anchored
        return bound
