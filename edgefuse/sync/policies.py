"""Per-stream policies: how the aligner picks a stream's member for a set at time ``t``.

Every policy buffers its stream's messages (as :class:`Item`: the message with its corrected
time) and answers one question, :meth:`StreamPolicy.resolve`: given a set time ``t`` and the
set's deadline, what is this stream's member, or is it too early to say? A stream's answer
becomes final when (a) its own messages settle it (nearest: a message at or after ``t`` has
come, so nothing later can be closer), (b) it has delivered a message that arrived after the
deadline (nothing it sends from then on may join the set), or (c) the caller says so
(``final=True``: the deadline passed on the wall clock, the stream went idle, or the input
ended). Only messages that *arrived* (``t_host_ns``) by the deadline may join, whatever the
order in which the aligner happened to process them: that rule is what makes the sets the
same on a fast or a slow machine.

- ``nearest``: the message closest to ``t`` within a tolerance (ties: the earlier one).
- ``interpolate``: continuous signals; the two messages around ``t``, blended linearly.
- ``window``: audio; exactly the samples in ``(t - w, t]``, taken across chunk boundaries by
  sample index (``first_sample``), each sample timed by its chunk's corrected stamp and the
  clock model's slope; samples that never came are zeros and are counted.
- ``sweep``: lidar; the sweep whose time span covers ``t`` (and optionally the ones before
  it), arrays untouched, with each sweep's start and slope so per-point times can be deskewed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from edgefuse.envelope import Message
from edgefuse.sync.aligned_set import Member


@dataclass(slots=True)
class Item:
    """One message of a stream with its time on the host timeline."""

    #: The instant the message describes (host timeline, calibration offset included).
    t_ns: int
    #: When it reached the host.
    t_host_ns: int
    #: Error bound of ``t_ns`` from the clock model.
    bound_ns: int
    #: Host ns per sensor ns at the time (to time samples and points inside the message).
    slope: float
    msg: Message


def describe(item: Item, t_ns: int) -> dict[str, Any]:
    """The JSON details of a member made of ``item`` in a set at ``t_ns``."""
    h = item.msg.header
    return {
        "t_ns": item.t_ns,
        "skew_ns": item.t_ns - t_ns,
        "bound_ns": item.bound_ns,
        "seq": h.seq,
        "t_sensor_ns": h.t_sensor_ns,
        "t_host_ns": h.t_host_ns,
        "encoding": h.encoding,
        "frame_id": h.frame_id,
        "meta": h.meta,
    }


def whole(stream: str, item: Item, t_ns: int) -> Member:
    """A member that is one message as it came, in a set at ``t_ns``."""
    return Member(stream, True, list(item.msg.arrays), describe(item, t_ns), "", [item.msg])


def missing(stream: str, reason: str) -> Member:
    """A member saying that ``stream`` has nothing for this set, and why."""
    return Member(stream=stream, present=False, reason=reason)


class StreamPolicy(Protocol):
    """How one stream contributes to sets (see the module docstring)."""

    stream: str

    def add(self, item: Item) -> None:
        """Buffer one message (in the stream's arrival order)."""

    def resolve(self, t_ns: int, deadline_ns: int, *, final: bool) -> Member | None:
        """The member for a set at ``t_ns``, or None while it cannot be decided yet."""

    def settled(self, t_ns: int, deadline_ns: int | None = None) -> bool:
        """True once the stream's own messages (those that arrived by ``deadline_ns``, if
        given) settle any set at ``t_ns``."""

    def forget_before(self, t_ns: int) -> None:
        """Drop what no set at ``t_ns`` or later can use."""

    def reach_ns(self) -> int:
        """How far from a set's time a message of this stream can still matter."""

    def __len__(self) -> int:
        """Buffered messages."""


class _Buffered:
    """A bounded deque of items in arrival order."""

    def __init__(self, stream: str, *, max_items: int) -> None:
        self.stream = stream
        self.items: deque[Item] = deque()
        self.max_items = max_items
        #: Items pushed out by the bound before any set used them.
        self.overflow = 0

    def add(self, item: Item) -> None:
        self.items.append(item)
        if len(self.items) > self.max_items:
            self.items.popleft()
            self.overflow += 1

    def settled(self, t_ns: int, deadline_ns: int | None = None) -> bool:
        if deadline_ns is None:
            return bool(self.items) and self.items[-1].t_ns >= t_ns
        return any(it.t_ns >= t_ns for it in self.items if it.t_host_ns <= deadline_ns)

    def forget_before(self, t_ns: int) -> None:
        # Keep the newest item older than t_ns: it may still be the nearest or a bracket.
        items = self.items
        while len(items) > 1 and items[1].t_ns < t_ns - self.reach_ns():
            items.popleft()

    def reach_ns(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.items)


class Nearest(_Buffered):
    """The message closest to the set time within ``tolerance_ns`` (ties: the earlier).

    Settled once a message at or after the set time is in, or earlier when the newest message
    is so close before it that the next one could not be nearer: frames come no closer
    together than the smallest spacing of the recent ones, so a frame 5 ms before the set
    time of a 30 Hz stream is the answer without waiting 28 ms for the one after (the same
    answer, without the wait).

    ``max_ahead_ns`` bounds how far after the set time the member may be (None: no bound):
    a stream slower to arrive than the reference then never holds the set for a frame
    captured after it (0: the newest frame at or before the set time), at the price of a
    member up to one period older."""

    #: Recent spacings kept to bound how soon the next message can come.
    _GAPS = 16

    def __init__(
        self,
        stream: str,
        *,
        tolerance_ns: int,
        max_ahead_ns: int | None = None,
        max_items: int = 1024,
    ) -> None:
        super().__init__(stream, max_items=max_items)
        if max_ahead_ns is not None and max_ahead_ns < 0:
            raise ValueError(f"max_ahead must be >= 0, got {max_ahead_ns / 1e6:g} ms")
        self.tolerance_ns = tolerance_ns
        self.max_ahead_ns = max_ahead_ns
        self._gaps_ns: deque[int] = deque(maxlen=self._GAPS)
        #: The smallest of them once there are enough (None before).
        self._min_gap_ns: int | None = None

    def add(self, item: Item) -> None:
        if self.items:
            self._gaps_ns.append(item.t_ns - self.items[-1].t_ns)
            if len(self._gaps_ns) >= self._GAPS // 2:
                self._min_gap_ns = min(self._gaps_ns)
        super().add(item)

    def settled(self, t_ns: int, deadline_ns: int | None = None) -> bool:
        if super().settled(t_ns, deadline_ns):
            return True
        if deadline_ns is not None or self._min_gap_ns is None:
            return False
        # A spacing <= 0 (a clock reset, a repeated stamp) makes this never true: then wait.
        newest = self.items[-1].t_ns
        nxt = newest + self._min_gap_ns
        if self.max_ahead_ns is not None and nxt > t_ns + self.max_ahead_ns:
            return True  # the next frame could not be a member: no use waiting for it
        return t_ns - newest <= nxt - t_ns

    def reach_ns(self) -> int:
        return self.tolerance_ns

    def resolve(self, t_ns: int, deadline_ns: int, *, final: bool) -> Member | None:
        if not (final or self.settled(t_ns)):
            return None
        best: Item | None = None
        best_dist = 0
        for it in self.items:
            if it.t_host_ns > deadline_ns:
                break  # arrivals are in order: everything after came too late as well
            if self.max_ahead_ns is not None and it.t_ns - t_ns > self.max_ahead_ns:
                break  # stamps increase: the rest are later still
            dist = abs(it.t_ns - t_ns)
            if dist <= self.tolerance_ns and (best is None or dist < best_dist):
                best, best_dist = it, dist
        if best is None:
            return missing(self.stream, f"no message within {self.tolerance_ns / 1e6:g} ms")
        return whole(self.stream, best, t_ns)


class Interpolate(_Buffered):
    """Linear interpolation between the messages just before and just after the set time,
    when they are at most ``max_gap_ns`` apart (never extrapolated)."""

    def __init__(self, stream: str, *, max_gap_ns: int, max_items: int = 1024) -> None:
        super().__init__(stream, max_items=max_items)
        self.max_gap_ns = max_gap_ns

    def reach_ns(self) -> int:
        return self.max_gap_ns

    def resolve(self, t_ns: int, deadline_ns: int, *, final: bool) -> Member | None:
        if not (final or self.settled(t_ns)):
            return None
        before: Item | None = None
        after: Item | None = None
        for it in self.items:
            if it.t_host_ns > deadline_ns:
                break
            if it.t_ns <= t_ns:
                before = it
            elif after is None:
                after = it
        if before is not None and before.t_ns == t_ns:
            return whole(self.stream, before, t_ns)
        if before is None or after is None:
            return missing(self.stream, "no messages on both sides of the set time")
        gap = after.t_ns - before.t_ns
        if gap > self.max_gap_ns:
            return missing(self.stream, f"gap of {gap / 1e6:.1f} ms around the set time")
        w = (t_ns - before.t_ns) / gap
        arrays = []
        for a, b in zip(before.msg.arrays, after.msg.arrays, strict=False):
            if a.shape != b.shape or a.dtype.kind not in "iuf":
                arrays.append(np.array(a if w < 0.5 else b))  # not numeric: the nearer one
            else:
                arrays.append(a + w * (b.astype(np.float64) - a))
        info = describe(before, t_ns)
        info.update(
            t_ns=t_ns,
            skew_ns=0,
            weight=w,
            seq_after=after.msg.header.seq,
            t_after_ns=after.t_ns,
            bound_ns=max(before.bound_ns, after.bound_ns),
        )
        return Member(self.stream, True, arrays, info, "", [before.msg, after.msg])


@dataclass(slots=True)
class _Chunk:
    item: Item
    first: int  # sample index of the chunk's first sample
    n: int
    dt_ns: float  # host ns between samples

    @property
    def end(self) -> int:
        return self.first + self.n  # one past the last sample

    def time_of(self, index: int) -> float:
        return self.item.t_ns + (index - self.first) * self.dt_ns


#: Audio kept beyond the window (s): covers the maximum wait and processing skew.
_RING_MARGIN_S = 4.0


class Window(_Buffered):
    """Audio: exactly ``round(window · rate)`` samples ending at the last sample at or before
    the set time, gathered across chunks by sample index; missing samples are zeros.

    A chunk's samples are timed from its corrected stamp (its first sample) and the sample
    period on the host timeline (nominal period x the clock model's slope). Chunks carry
    ``first_sample`` (the running sample count) in ``meta``; without it, sample indices
    continue from the previous chunk. Samples live in a ring indexed by sample count, so a
    window is one or two slice copies whatever the chunk size, and a chunk that comes out of
    order still lands in its place. The stream is present when at least ``min_fraction`` of
    the window's samples came.
    """

    def __init__(
        self,
        stream: str,
        *,
        window_ns: int,
        min_fraction: float = 0.5,
        max_items: int = 4096,
    ) -> None:
        super().__init__(stream, max_items=max_items)
        self.window_ns = window_ns
        self.min_fraction = min_fraction
        self.chunks: deque[_Chunk] = deque()
        self.rate_hz = 0
        self.channels = 0
        self.dtype: np.dtype[Any] = np.dtype(np.int16)
        self._ring = np.zeros((0, 1), np.int16)
        #: Sample ranges ``[lo, hi)`` inside the ring never received (gaps), oldest first.
        self._gaps: deque[tuple[int, int]] = deque()
        self._size = 0
        #: One past the highest sample index written.
        self._hi = 0
        #: Chunks that broke the sample count (a restarted card): the buffer starts over.
        self.discontinuities = 0
        #: Chunks too old to place (behind the ring).
        self.stale = 0

    def reach_ns(self) -> int:
        return self.window_ns

    def __len__(self) -> int:
        return len(self.chunks)

    def _restart(self, rate: int, channels: int, dtype: np.dtype[Any]) -> None:
        self.rate_hz, self.channels, self.dtype = rate, channels, dtype
        self._size = math.ceil((self.window_ns / 1e9 + _RING_MARGIN_S) * rate)
        self._ring = np.zeros((self._size, channels), dtype)
        self._gaps.clear()
        self.chunks.clear()
        self._hi = 0

    def _write(self, lo: int, values: np.ndarray) -> None:
        """Write ``values`` at sample indices ``lo`` onwards, wrapping around the ring."""
        n = values.shape[0]
        pos = lo % self._size
        if pos + n <= self._size:
            self._ring[pos : pos + n] = values
        else:
            first = self._size - pos
            self._ring[pos:] = values[:first]
            self._ring[: n - first] = values[first:]

    def _received(self, lo: int, hi: int) -> int:
        """How many samples of ``[lo, hi)`` are in the ring (not in a gap, not too old, not
        yet to come)."""
        a, b = max(lo, self._hi - self._size), min(hi, self._hi)
        got = max(0, b - a)
        for g_lo, g_hi in self._gaps:
            got -= max(0, min(b, g_hi) - max(a, g_lo))
        return got

    def _read(self, lo: int, hi: int) -> tuple[np.ndarray, int]:
        """Samples ``[lo, hi)`` (zeros where never received) and how many were received."""
        a, b = max(lo, self._hi - self._size), min(hi, self._hi)
        if a >= b:
            return np.zeros((hi - lo, self.channels), self.dtype), 0
        out = np.empty((hi - lo, self.channels), self.dtype)
        out[: a - lo] = 0
        out[b - lo :] = 0
        pos, n = a % self._size, b - a
        if pos + n <= self._size:
            out[a - lo : b - lo] = self._ring[pos : pos + n]
        else:
            first = self._size - pos
            out[a - lo : a - lo + first] = self._ring[pos:]
            out[a - lo + first : b - lo] = self._ring[: n - first]
        for g_lo, g_hi in self._gaps:  # gaps hold stale samples from a lap ago: zero them
            x, y = max(a, g_lo), min(b, g_hi)
            if x < y:
                out[x - lo : y - lo] = 0
        return out, self._received(lo, hi)

    def add(self, item: Item) -> None:
        msg = item.msg
        if not msg.arrays:
            raise ValueError(f"{self.stream}: an audio message without samples")
        samples = msg.arrays[0]
        shape = samples.shape
        n = shape[0] if shape else 0
        if len(shape) not in (1, 2) or n == 0:
            raise ValueError(f"{self.stream}: audio samples of shape {shape}")
        meta = msg.header.meta
        rate = meta.get("rate_hz", 0)
        if not isinstance(rate, int) or rate <= 0:
            raise ValueError(f"{self.stream}: audio chunk without a positive int meta 'rate_hz'")
        channels = 1 if len(shape) == 1 else shape[1]
        first = meta.get("first_sample")
        if first is None:
            first = self.chunks[-1].end if self.chunks else 0
        elif not isinstance(first, int):
            raise ValueError(f"{self.stream}: meta 'first_sample' {first!r} is not an int")
        if (
            rate != self.rate_hz
            or channels != self.channels
            or (samples.dtype is not self.dtype and samples.dtype != self.dtype)
        ):
            if samples.dtype.kind not in "iuf":
                raise ValueError(f"{self.stream}: audio samples of dtype {samples.dtype}")
            if self.chunks:
                self.discontinuities += 1
            self._restart(rate, channels, samples.dtype)
        elif first + n <= self._hi - self._size:
            if first + n <= self._hi - 2 * self._size or first < self.chunks[0].first - rate:
                # The count went far back: the card restarted. Old samples cannot be placed
                # on the new count.
                self.discontinuities += 1
                self._restart(rate, channels, samples.dtype)
            else:
                self.stale += 1
                return
        if self.chunks and first > self._hi:
            self._gaps.append((self._hi, first))  # dropped chunks, or an overrun
        elif first < self._hi and self._gaps:
            self._fill_gap(first, first + n)  # a chunk out of order fills (part of) a gap
        self._write(first, samples.reshape(n, channels))
        chunk = _Chunk(item, first, n, 1e9 / rate * item.slope)
        if not self.chunks or first >= self.chunks[-1].first:
            self.chunks.append(chunk)
        else:  # out of order: keep the records sorted by sample index
            at = len(self.chunks)
            while at > 0 and self.chunks[at - 1].first > first:
                at -= 1
            self.chunks.insert(at, chunk)
        self._hi = max(self._hi, first + n)
        horizon = self._hi - self._size
        while self.chunks and self.chunks[0].end <= horizon:
            self.chunks.popleft()
        while self._gaps and self._gaps[0][1] <= horizon:
            self._gaps.popleft()

    def _fill_gap(self, lo: int, hi: int) -> None:
        kept: deque[tuple[int, int]] = deque()
        for g_lo, g_hi in self._gaps:
            if g_hi <= lo or g_lo >= hi:
                kept.append((g_lo, g_hi))
                continue
            if g_lo < lo:
                kept.append((g_lo, lo))
            if hi < g_hi:
                kept.append((hi, g_hi))
        self._gaps = kept

    def settled(self, t_ns: int, deadline_ns: int | None = None) -> bool:
        if deadline_ns is None:
            return bool(self.chunks) and self.chunks[-1].time_of(self.chunks[-1].end - 1) >= t_ns
        return any(
            c.time_of(c.end - 1) >= t_ns for c in self.chunks if c.item.t_host_ns <= deadline_ns
        )

    def forget_before(self, t_ns: int) -> None:
        pass  # the ring forgets by itself

    def resolve(self, t_ns: int, deadline_ns: int, *, final: bool) -> Member | None:
        if not (final or self.settled(t_ns)):
            return None
        # Chunks that arrived after the deadline may not join; arrivals are in order, so
        # they are the newest ones.
        late = []
        anchor: _Chunk | None = None
        for c in reversed(self.chunks):
            if c.item.t_host_ns > deadline_ns:
                late.append(c)
            elif c.item.t_ns <= t_ns:
                anchor = c  # the latest usable chunk starting at or before t times the window
                break
            else:
                anchor = c  # until an earlier one is found, the earliest usable chunk
        if anchor is None:
            return missing(self.stream, "no audio")
        n_window = round(self.window_ns * self.rate_hz / 1e9)
        end = anchor.first + math.floor((t_ns - anchor.item.t_ns) / anchor.dt_ns)  # inclusive
        start = end - n_window + 1
        out, got = self._read(start, end + 1)
        for c in late:
            lo, hi = max(start, c.first), min(end + 1, c.end)
            if lo < hi:
                got -= hi - lo
                out[lo - start : hi - start] = 0
        if got < self.min_fraction * n_window:
            return missing(self.stream, f"only {got} of {n_window} samples")
        t_end = anchor.time_of(end)
        info = describe(anchor.item, t_ns)
        info.update(
            t_ns=round(t_end),
            skew_ns=round(t_end - t_ns),
            rate_hz=self.rate_hz,
            channels=self.channels,
            samples=n_window,
            first_sample=start,
            missing_samples=n_window - got,
            sample_period_ns=anchor.dt_ns,
        )
        # The window is a copy (from the ring), so only the anchor is named as its source.
        return Member(self.stream, True, [out], info, "", [anchor.item.msg])


SweepSelect = Literal["covering", "completed", "sector"]


class Sweep(_Buffered):
    """Lidar: which sweep joins a set at time ``t``, with ``select``:

    - ``covering``: the sweep whose span ``[start, start + duration)`` covers ``t`` (the nearest
      within ``tolerance_ns`` when none covers it: a dropped sweep). The set waits until that
      sweep has been completed and delivered: up to a sweep period of latency.
    - ``completed``: the newest sweep completed by ``t`` (``start + duration <= t``), at most a
      period plus ``tolerance_ns`` old. It is known as soon as the sweep after it could not
      have been completed by ``t``, so the set does not wait for the lidar; the points are on
      average half a period older.
    - ``sector``: the sweep that looked towards ``sector_azimuth_deg`` (the lidar frame; the
      camera's direction) nearest to ``t``, among those that looked there at most
      ``max_ahead_ns`` after ``t``. What the camera sees is then as fresh as with ``covering``
      (when the lidar looked at the front from the middle of its sweep), and with the sweep cut
      just after the front (the lidar driver's cut angle) it is delivered soon after it is
      scanned: the set waits at most ``max_ahead_ns`` plus the rest of the sweep.

    Either way ``sweeps - 1`` sweeps before the chosen one come with it. Arrays are passed on
    untouched; per sweep the member lists its ``t_ns`` (start, host timeline) and ``slope``, so a
    point's time is ``t_ns + t_offset_s · 1e9 · slope``."""

    #: Half-width (degrees) of the sector whose points time it.
    SECTOR_HALF_DEG = 10.0

    def __init__(
        self,
        stream: str,
        *,
        tolerance_ns: int,
        sweeps: int = 1,
        select: SweepSelect = "covering",
        sector_azimuth_deg: float = 0.0,
        max_ahead_ns: int = 50_000_000,
        max_items: int = 256,
    ) -> None:
        super().__init__(stream, max_items=max_items)
        if select not in ("covering", "completed", "sector"):
            raise ValueError(f"select must be 'covering', 'completed' or 'sector', got {select!r}")
        if max_ahead_ns < 0:
            raise ValueError(f"max_ahead must be >= 0, got {max_ahead_ns / 1e6:g} ms")
        self.tolerance_ns = tolerance_ns
        self.sweeps = sweeps
        self.select = select
        self.sector_azimuth_deg = sector_azimuth_deg
        self.max_ahead_ns = max_ahead_ns
        self._last_duration_ns = 100_000_000
        #: (seq, arrival) -> when the sweep looked at the sector (host ns), for ``sector``.
        self._sector_ns: dict[tuple[int, int], int] = {}

    def duration_ns(self, item: Item) -> int:
        """The span of a sweep on the host timeline."""
        sweep_s = item.msg.header.meta.get("sweep_s")
        if sweep_s is None:
            return self._last_duration_ns
        return round(float(sweep_s) * 1e9 * item.slope)

    def sector_ns(self, item: Item) -> int:
        """When the sweep looked towards the sector (host timeline): the median time of its
        points within :data:`SECTOR_HALF_DEG` of it; mid-sweep when it has none there."""
        key = (item.msg.header.seq, item.t_host_ns)
        got = self._sector_ns.get(key)
        if got is not None:
            return got
        d = self.duration_ns(item)
        t = item.t_ns + d // 2
        pts = item.msg.arrays[0] if item.msg.arrays else None
        if pts is not None and pts.ndim == 2 and pts.shape[1] >= 5 and len(pts):
            az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0])) - self.sector_azimuth_deg
            near = np.abs((az + 180.0) % 360.0 - 180.0) < self.SECTOR_HALF_DEG
            if near.any():
                off_s = float(np.median(pts[near, 4]))
                t = item.t_ns + round(off_s * 1e9 * item.slope)
        self._sector_ns[key] = t
        return t

    def add(self, item: Item) -> None:
        super().add(item)
        self._last_duration_ns = self.duration_ns(item)
        if self.select == "sector":
            self.sector_ns(item)
            if len(self._sector_ns) > 2 * self.max_items:
                live = {(it.msg.header.seq, it.t_host_ns) for it in self.items}
                self._sector_ns = {k: v for k, v in self._sector_ns.items() if k in live}

    def reach_ns(self) -> int:
        extra = self._last_duration_ns if self.select != "covering" else 0
        return self.sweeps * self._last_duration_ns + self.tolerance_ns + extra

    def _ends_after(self, it: Item, t_ns: int) -> bool:
        # Whether nothing after ``it`` can be a better answer for ``t_ns``.
        d = self.duration_ns(it)
        if self.select == "covering":  # this sweep (or a later one) ends after t
            return it.t_ns + d > t_ns
        if self.select == "completed":  # the sweep after this one cannot end by t
            return it.t_ns + 2 * d > t_ns
        tau = self.sector_ns(it)
        nxt = tau + d  # when the next sweep looks at the sector
        return tau >= t_ns or nxt > t_ns + self.max_ahead_ns or nxt - t_ns >= t_ns - tau

    def settled(self, t_ns: int, deadline_ns: int | None = None) -> bool:
        if deadline_ns is None:  # sweeps come in order: the newest ends last
            return bool(self.items) and self._ends_after(self.items[-1], t_ns)
        return any(self._ends_after(it, t_ns) for it in self.items if it.t_host_ns <= deadline_ns)

    def _choose(self, usable: list[Item], t_ns: int) -> int | None:
        chosen: int | None = None
        if self.select == "completed":
            best_end = None
            for i, it in enumerate(usable):
                d = self.duration_ns(it)
                end = it.t_ns + d
                recent = end <= t_ns and t_ns - end <= d + self.tolerance_ns
                if recent and (best_end is None or end >= best_end):
                    chosen, best_end = i, end
            return chosen
        if self.select == "sector":
            best = None
            for i, it in enumerate(usable):
                tau = self.sector_ns(it)
                dist = abs(tau - t_ns)
                ok = tau - t_ns <= self.max_ahead_ns and dist <= self.duration_ns(it) + (
                    self.tolerance_ns
                )
                if ok and (best is None or dist < best):  # ties: the earlier
                    chosen, best = i, dist
            return chosen
        best_dist = self.tolerance_ns + 1
        for i, it in enumerate(usable):
            start, end = it.t_ns, it.t_ns + self.duration_ns(it)
            dist = 0 if start <= t_ns < end else min(abs(t_ns - start), abs(t_ns - end))
            if dist < best_dist or (dist == 0 and best_dist == 0):
                chosen, best_dist = i, dist  # a later covering sweep wins (the newer data)
        return chosen

    def resolve(self, t_ns: int, deadline_ns: int, *, final: bool) -> Member | None:
        if not (final or self.settled(t_ns)):
            return None
        usable = [it for it in self.items if it.t_host_ns <= deadline_ns]
        chosen = self._choose(usable, t_ns)
        if chosen is None:
            if self.select == "completed":
                return missing(self.stream, "no sweep completed in the last period")
            if self.select == "sector":
                return missing(self.stream, "no sweep looked at the sector in the last period")
            return missing(self.stream, f"no sweep within {self.tolerance_ns / 1e6:g} ms")
        picked = usable[max(0, chosen - self.sweeps + 1) : chosen + 1]
        main = usable[chosen]
        info = describe(main, t_ns)
        info["duration_ns"] = self.duration_ns(main)
        info["slope"] = main.slope
        if self.select == "sector":
            info["sector_t_ns"] = self.sector_ns(main)
        arrays: list[np.ndarray] = []
        sweeps = []
        for it in picked:
            lo = len(arrays)
            arrays.extend(it.msg.arrays)
            sweeps.append(
                {
                    "seq": it.msg.header.seq,
                    "t_ns": it.t_ns,
                    "duration_ns": self.duration_ns(it),
                    "slope": it.slope,
                    "arrays": [lo, len(arrays)],
                }
            )
        info["sweeps"] = sweeps
        return Member(self.stream, True, arrays, info, "", [it.msg for it in picked])
