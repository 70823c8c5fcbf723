"""The aligner's core: clock models per stream, set times from a reference stream, policies.

Everything here is a pure function of the messages pushed (per stream, in their order) and
of the explicit :meth:`Aligner.advance` calls; nothing reads the wall clock. The node
(:mod:`edgefuse.sync.node`) drives it live; a benchmark, a test or a replay drives it the
same way.

How a set is made:

1. Each message's ``t_sensor_ns`` goes through its stream's :class:`ClockModel` (or is the
   host stamp minus a latency, or the ``t_ns`` it already carries), then the stream's static
   offset from the rig calibration is added: that is the message's ``t_ns``.
2. Each reference message (by default the camera) opens a set at its ``t_ns`` with a deadline
   ``t_ns + max_wait``.
3. The set is emitted, in set-time order, once every stream's policy has settled its member
   (see :mod:`edgefuse.sync.policies`), or at the deadline with whatever is there (then the
   missing streams are named in the mask). A stream that has been silent for ``idle_ns`` of
   event time (the newest arrival on any stream) no longer holds sets.
4. Only messages that arrived by a set's deadline may join it. Which messages those are does
   not depend on the order in which the aligner processed the streams, so the same input
   gives the same sets whatever the machine speed and interleaving — provided deadlines are
   applied (:meth:`advance`) no earlier than every message that arrived before them has been
   pushed, which is what the event-time driver (``lossless``) guarantees.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from edgefuse.envelope import Message
from edgefuse.sync.aligned_set import AlignedSet, Member
from edgefuse.sync.clock import ClockModel, ClockModelConfig
from edgefuse.sync.policies import (
    Interpolate,
    Item,
    Nearest,
    StreamPolicy,
    Sweep,
    SweepSelect,
    Window,
    whole,
)

PolicyName = Literal["nearest", "interpolate", "window", "sweep"]
ClockKind = Literal["sensor", "host", "given"]
#: ``sweep`` with ``select: sector`` when ``max_ahead_ms`` is not given.
_SECTOR_MAX_AHEAD_NS = 50_000_000


@dataclass(frozen=True, kw_only=True)
class StreamConfig:
    """How one stream is timed and how it joins sets (the aligner's ``streams:`` entries)."""

    #: ``nearest`` (frames), ``interpolate`` (continuous signals), ``window`` (audio),
    #: ``sweep`` (lidar). Ignored for the reference stream.
    policy: PolicyName = "nearest"
    #: ``sensor``: estimate the sensor clock from its stamps; ``host``: the sensor has no
    #: clock of its own (t = arrival - latency); ``given``: the message already carries ``t_ns``.
    clock: ClockKind = "sensor"
    #: Calibration sensor whose static ``time_offset_ns`` is added (default: the stream name).
    sensor: str | None = None
    #: Calibrated minimum delay (ms) from the stamped instant to arrival on the host (for a
    #: lidar this includes the sweep; for audio the chunk's length).
    latency_ms: float = 0.0
    #: Modulus of the sensor stamp (s): a Velodyne stamps µs past the hour (3600); 0 = none.
    wrap_s: float = 0.0
    #: ``nearest``/``sweep``: the farthest a member may be from the set time (ms).
    #: ``interpolate``: the largest gap between the two messages blended.
    tolerance_ms: float = 20.0
    #: ``window``: the audio window ending at the set time (ms).
    window_ms: float = 1000.0
    #: ``window``: the least fraction of the window's samples for the stream to count present.
    min_fraction: float = 0.5
    #: ``sweep``: how many sweeps, ending with the chosen one.
    sweeps: int = 1
    #: ``sweep``: ``covering`` (the sweep spanning the set time: the set waits until it is
    #: delivered, up to a sweep period), ``completed`` (the newest sweep finished by the set
    #: time: no wait, the points half a period older on average) or ``sector`` (the sweep that
    #: looked towards ``sector_azimuth_deg`` nearest the set time, at most ``max_ahead_ms``
    #: after it; see :class:`~edgefuse.sync.policies.Sweep`).
    select: SweepSelect = "covering"
    #: ``sweep`` with ``select: sector``: the direction that matters, degrees in the lidar
    #: frame (from x towards y; 0 = forward).
    sector_azimuth_deg: float = 0.0
    #: How long after the set time the member may be (ms): ``sweep`` with ``select: sector``,
    #: when the lidar may look there (default 50); ``nearest``, the latest frame it may take
    #: (default: no bound; 0: never one from after the set time, so a stream slower to
    #: arrive than the reference does not hold the set for it).
    max_ahead_ms: float | None = None
    #: The longest this stream may hold a set (ms after the set time); at that deadline it
    #: joins with what it has. None: the aligner's ``max_wait``. A dropped depth frame or lidar
    #: sweep then costs this stream's wait, not the whole set's.
    max_wait_ms: float | None = None
    #: False: the stream never holds a set back (it joins when it happens to be there).
    required: bool = True
    #: Clock-model estimation window (s).
    clock_window_s: float = 30.0

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.wrap_s < 0:
            raise ValueError("latency_ms and wrap_s must be >= 0")
        if self.tolerance_ms <= 0 or self.window_ms <= 0:
            raise ValueError("tolerance_ms and window_ms must be > 0")
        if not 0 < self.min_fraction <= 1:
            raise ValueError(f"min_fraction must be in (0, 1], got {self.min_fraction}")
        if self.sweeps < 1:
            raise ValueError(f"sweeps must be >= 1, got {self.sweeps}")
        if self.max_ahead_ms is not None and self.max_ahead_ms < 0:
            raise ValueError(f"max_ahead_ms must be >= 0, got {self.max_ahead_ms}")
        if self.max_ahead_ms is not None and not (
            self.policy == "nearest" or (self.policy == "sweep" and self.select == "sector")
        ):
            raise ValueError(
                "max_ahead_ms applies to policy nearest and to sweep with select: sector, "
                f"not to {self.policy}" + (f" ({self.select})" if self.policy == "sweep" else "")
            )
        if self.max_wait_ms is not None and self.max_wait_ms <= 0:
            raise ValueError(f"max_wait_ms must be > 0, got {self.max_wait_ms}")

    def clock_config(self) -> ClockModelConfig:
        """The clock model this stream needs."""
        return ClockModelConfig(
            clock="host" if self.clock == "host" else "sensor",
            latency_ns=round(self.latency_ms * 1e6),
            wrap_ns=round(self.wrap_s * 1e9),
            window_s=self.clock_window_s,
        )

    def make_policy(self, stream: str) -> StreamPolicy:
        """The policy object for ``stream``."""
        tol = round(self.tolerance_ms * 1e6)
        ahead_ns = None if self.max_ahead_ms is None else round(self.max_ahead_ms * 1e6)
        if self.policy == "nearest":
            return Nearest(stream, tolerance_ns=tol, max_ahead_ns=ahead_ns)
        if self.policy == "interpolate":
            return Interpolate(stream, max_gap_ns=tol)
        if self.policy == "window":
            return Window(
                stream, window_ns=round(self.window_ms * 1e6), min_fraction=self.min_fraction
            )
        return Sweep(
            stream,
            tolerance_ns=tol,
            sweeps=self.sweeps,
            select=self.select,
            sector_azimuth_deg=self.sector_azimuth_deg,
            max_ahead_ns=_SECTOR_MAX_AHEAD_NS if ahead_ns is None else ahead_ns,
        )


@dataclass(slots=True)
class _Stream:
    name: str
    config: StreamConfig
    policy: StreamPolicy | None  # None for the reference
    clock: ClockModel | None  # None for clock "given"
    offset_ns: int
    #: This stream's own limit on how long it holds a set (ns after the set time), if any.
    max_wait_ns: int | None = None
    #: Newest arrival seen (host ns), None before the first message.
    watermark_host_ns: int | None = None
    messages: int = 0
    late: int = 0
    resets: int = 0


@dataclass(slots=True)
class _Pending:
    item: Item
    deadline_ns: int
    members: dict[str, Member] = field(default_factory=dict)
    #: Streams found missing because the deadline passed before they settled.
    timed_out: set[str] = field(default_factory=set)

    def deadline_of(self, st: _Stream) -> int:
        """The deadline for ``st``: the set's, or the stream's own when that is sooner."""
        if st.max_wait_ns is None:
            return self.deadline_ns
        return min(self.deadline_ns, self.item.t_ns + st.max_wait_ns)


class Aligner:
    """Turns per-stream messages into :class:`AlignedSet` s (see the module docstring)."""

    def __init__(
        self,
        streams: Mapping[str, StreamConfig],
        *,
        reference: str,
        max_wait_ns: int,
        idle_ns: int = 1_000_000_000,
        time_offsets_ns: Mapping[str, int] | None = None,
    ) -> None:
        if reference not in streams:
            raise ValueError(f"reference stream {reference!r} is not one of {list(streams)}")
        if max_wait_ns <= 0 or idle_ns <= 0:
            raise ValueError("max_wait_ns and idle_ns must be > 0")
        offsets = dict(time_offsets_ns or {})
        self.reference = reference
        self.max_wait_ns = max_wait_ns
        self.idle_ns = idle_ns
        # The reference first, then the others in the configured order.
        order = [reference] + [s for s in streams if s != reference]
        self.streams: dict[str, _Stream] = {}
        for name in order:
            cfg = streams[name]
            self.streams[name] = _Stream(
                name=name,
                config=cfg,
                policy=None if name == reference else cfg.make_policy(name),
                clock=None if cfg.clock == "given" else ClockModel(cfg.clock_config()),
                offset_ns=int(offsets.get(cfg.sensor or name, 0)),
                max_wait_ns=None if cfg.max_wait_ms is None else round(cfg.max_wait_ms * 1e6),
            )
        self._pending: deque[_Pending] = deque()
        #: Whether any stream has a deadline of its own (else the set's is everyone's).
        self._own_waits = any(st.max_wait_ns is not None for st in self.streams.values())
        #: Newest arrival on any stream: the event-time "now".
        self.now_ns: int | None = None
        self._first_ns: int | None = None
        #: Per stream, the (time, deadline) of the last sets emitted without it.
        self._absent: dict[str, deque[tuple[int, int]]] = {
            name: deque(maxlen=16) for name in self.streams
        }
        #: The stream the oldest pending set waits for (None: not waiting on one stream).
        self._blocked: str | None = None
        self._late_since_last = 0
        self._seq = 0
        self.counters: Counter[str] = Counter()

    # --- input -------------------------------------------------------------------------
    def push(self, stream: str, msg: Message) -> list[AlignedSet]:
        """Take one message of ``stream``; return the sets it completes (in time order)."""
        st = self.streams.get(stream)
        if st is None:
            raise KeyError(f"unknown stream {stream!r} (have {list(self.streams)})")
        item = self._time(st, msg)
        st.messages += 1
        t_host = item.t_host_ns
        if st.watermark_host_ns is None or t_host > st.watermark_host_ns:
            st.watermark_host_ns = t_host
        if self.now_ns is None or t_host > self.now_ns:
            self.now_ns = t_host
        if self._first_ns is None:
            self._first_ns = t_host
        if st.policy is None:
            self._open(item)
        else:
            if self._absent[stream]:
                self._check_late(st, item)
            st.policy.add(item)
        blocked = self._blocked
        if blocked is not None and blocked != stream and not self._idle(self.streams[blocked]):
            # The oldest set waits for another stream: only that stream, its going idle or a
            # deadline can let it out, so there is nothing to check (the hot path).
            return []
        return self._emit_ready(final_until_ns=None)

    def _open(self, item: Item) -> None:
        if self._pending and item.t_ns <= self._pending[-1].item.t_ns:
            # The reference's time went back (its clock was re-estimated): a set must never
            # be older than the one before it.
            self.counters["reference_out_of_order"] += 1
        else:
            self._pending.append(_Pending(item, item.t_ns + self.max_wait_ns))

    def advance(self, now_ns: int) -> list[AlignedSet]:
        """Apply deadlines up to host time ``now_ns`` (the wall clock live, or event time):
        every set whose deadline has passed is emitted with what it has."""
        return self._emit_ready(final_until_ns=now_ns)

    def flush(self) -> list[AlignedSet]:
        """The input is over: emit every pending set with what it has."""
        out = self._emit_ready(final_until_ns=None, flush=True)
        assert not self._pending
        return out

    def next_deadline_ns(self) -> int | None:
        """The soonest deadline of the oldest pending set (when :meth:`advance` has work to
        do): the set's own, or that of a stream it still waits for with a shorter one."""
        if not self._pending:
            return None
        p = self._pending[0]
        if not self._own_waits:  # the hot path: every stream waits as long as the set
            return p.deadline_ns
        return min(
            (
                p.deadline_of(st)
                for name, st in self.streams.items()
                if st.policy is not None and name not in p.members
            ),
            default=p.deadline_ns,
        )

    @property
    def pending(self) -> int:
        """Sets opened but not yet emitted."""
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        """Counters, per stream and overall, JSON-ready."""
        per_stream = {}
        for name, st in self.streams.items():
            clock = st.clock.stats() if st.clock is not None else {}
            per_stream[name] = {
                "messages": st.messages,
                "late": st.late,
                "buffered": len(st.policy) if st.policy is not None else 0,
                "clock": clock,
            }
        return {
            **dict(self.counters),
            "messages": sum(st.messages for st in self.streams.values()),
            "pending": len(self._pending),
            "streams": per_stream,
        }

    # --- internals ---------------------------------------------------------------------
    def _time(self, st: _Stream, msg: Message) -> Item:
        h = msg.header
        if st.clock is None:
            if h.t_ns is None:
                raise ValueError(f"{st.name}: clock 'given' but the message has no t_ns")
            return Item(h.t_ns + st.offset_ns, h.t_host_ns, 0, 1.0, msg)
        est = st.clock.update(h.t_sensor_ns, h.t_host_ns)
        if est.event == "reset":
            st.resets += 1
            self.counters["clock_resets"] += 1
        return Item(est.t_ns + st.offset_ns, h.t_host_ns, est.bound_ns, st.clock.slope, msg)

    def _idle(self, st: _Stream) -> bool:
        if not st.config.required:
            return True
        if self.now_ns is None or self._first_ns is None:
            return False
        # A stream never heard from counts from the first arrival on any stream.
        wm = st.watermark_host_ns if st.watermark_host_ns is not None else self._first_ns
        return self.now_ns - wm > self.idle_ns

    def _check_late(self, st: _Stream, item: Item) -> None:
        # A message that could have joined a set already emitted without it: the set went
        # out at its deadline before this message was processed (an overloaded aligner, or a
        # sender whose arrival stamps run ahead of its delivery).
        assert st.policy is not None
        reach = st.policy.reach_ns()
        for t_ns, deadline_ns in self._absent[st.name]:
            if item.t_host_ns <= deadline_ns and abs(item.t_ns - t_ns) <= reach:
                st.late += 1
                self._late_since_last += 1
                self.counters["late"] += 1
                return

    def _emit_ready(self, *, final_until_ns: int | None, flush: bool = False) -> list[AlignedSet]:
        out: list[AlignedSet] = []
        self._blocked = None
        while self._pending:
            p = self._pending[0]
            complete = True
            for name, st in self.streams.items():
                if st.policy is None or name in p.members:
                    continue
                # The deadline decides for this stream when it has passed on the clock or the
                # stream has already delivered something that arrived after it.
                dl = p.deadline_ns if st.max_wait_ns is None else p.deadline_of(st)
                by_deadline = (
                    flush
                    or (final_until_ns is not None and final_until_ns >= dl)
                    or (st.watermark_host_ns is not None and st.watermark_host_ns > dl)
                )
                m = st.policy.resolve(p.item.t_ns, dl, final=by_deadline or self._idle(st))
                if m is None:
                    complete = False
                    self._blocked = name
                    break
                if by_deadline and not m.present and not st.policy.settled(p.item.t_ns, dl):
                    p.timed_out.add(name)
                p.members[name] = m
            if not complete:
                break
            self._blocked = None
            self._pending.popleft()
            out.append(self._finish(p))
        return out

    def _finish(self, p: _Pending) -> AlignedSet:
        t = p.item.t_ns
        members: dict[str, Member] = {}
        for name, st in self.streams.items():
            if st.policy is None:
                members[name] = whole(name, p.item, t)
            else:
                members[name] = p.members[name]
                st.policy.forget_before(t)
        # How long the set waited, in event time (the same on any machine): until its
        # deadline if it timed out, else until its latest member arrived.
        timed_out = bool(p.timed_out)
        if timed_out:
            decided = max(p.deadline_of(self.streams[n]) for n in p.timed_out)
        else:
            decided = max(
                (src.header.t_host_ns for m in members.values() for src in m.sources),
                default=t,
            )
        s = AlignedSet(
            t_ns=t,
            members=members,
            reference=self.reference,
            t_host_ns=p.item.t_host_ns,
            t_sensor_ns=p.item.msg.header.t_sensor_ns,
            timed_out=timed_out,
            wait_ns=max(0, decided - t),
            late=self._late_since_last,
            seq=self._seq,
        )
        self._seq += 1
        self._late_since_last = 0
        self.counters["sets"] += 1
        absent = frozenset(name for name, m in members.items() if not m.present)
        for name in absent:
            self.counters[f"missing.{name}"] += 1
        # A stream that is not required joins when it happens to be there: a set without it
        # is not partial, and its message coming after the set is not late (both by design).
        absent_required = [name for name in absent if self.streams[name].config.required]
        if absent_required:
            self.counters["partial"] += 1
        if s.timed_out:
            self.counters["timed_out"] += 1
        for name in absent_required:
            self._absent[name].append((t, p.deadline_of(self.streams[name])))
        return s
