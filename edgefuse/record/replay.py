"""Replay: recorded sessions published again as live topics, paced as they arrived.

What is replayed is chosen by :func:`~edgefuse.record.selection.select` (topics, remap, time
window over a file or its split files) and streamed chunk by chunk; pacing is
:mod:`edgefuse.record.playback`'s.

:class:`ReplayNode` (``type: replay``) publishes them as a source node: a node named
``camera`` replaying ``camera/image`` publishes ``camera/image`` again. Each message keeps
its recorded ``seq``, ``t_sensor_ns``, frame, encoding and meta; its ``t_host_ns``
is re-based onto this run's host timeline so that the gaps between the recorded arrivals are
preserved (divided by ``rate``): clock models see the arrival pattern they saw live; a
``t_ns`` (host timeline too: ``sim/truth``, detections) moves with it. Large
payloads are written into loaned shared-memory slots, as live sensors publish them.

Pacing follows a :class:`~edgefuse.record.playback.PlaybackClock`: session time as a function
of host time, which ``edgefuse replay`` shares through a small file with every replay node of
a run so that its keyboard can pause, resume, step and change the rate of all of them at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefuse.envelope import ZERO_COPY_MIN_BYTES, Header, Message
from edgefuse.errors import ConfigError
from edgefuse.node import Node
from edgefuse.record.playback import PlaybackClock, Prefetcher
from edgefuse.record.selection import Selection, replay_messages, resolve_paths, select

# --- the node -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ReplayParams:
    """Parameters of the replay node."""

    #: The session file, a glob of its split files, or a list of files (in order).
    path: str | list[str]
    #: Session seconds per host second (2: twice as fast).
    rate: float = 1.0
    #: Start again at the end, forever.
    loop: bool = False
    #: Skip this much of the recording (s, from its first message).
    start_offset_s: float = 0.0
    #: Replay at most this much (s of the recording; 0: to the end).
    duration_s: float = 0.0
    #: Recorded topics to replay (names or globs).
    topics: list[str] = field(default_factory=lambda: ["*"])
    #: Recorded topic -> topic to publish it on (its node part must be this node's name).
    remap: dict[str, str] = field(default_factory=dict)
    #: Host time from the run's start to the first message, so subscribers have connected.
    start_delay_s: float = 2.0
    #: Playback control file shared by the replay nodes of a run ("" = own clock at ``rate``).
    control: str = ""
    #: Payload bytes read ahead of the replay at most (MB).
    prefetch_mb: float = 64.0

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.start_offset_s < 0 or self.duration_s < 0 or self.start_delay_s < 0:
            raise ValueError("start_offset_s, duration_s and start_delay_s must be >= 0")
        if not self.topics:
            raise ValueError("topics is empty: give '*' or a list of recorded topics")
        if not self.prefetch_mb > 0:
            raise ValueError(f"prefetch_mb must be > 0, got {self.prefetch_mb}")
        try:
            resolve_paths(self.path)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def selection(self) -> Selection:
        """What these parameters replay (opens the files' indexes)."""
        return select(
            self.path,
            topics=self.topics,
            remap=self.remap,
            start_offset_s=self.start_offset_s,
            duration_s=self.duration_s,
        )


def _streams(sel: Selection) -> dict[str, str]:
    """Stream -> encoding of a selection published by one node; ``ConfigError`` when two
    topics would share a stream name."""
    out: dict[str, str] = {}
    origin: dict[str, str] = {}
    for old, new in sel.topics.items():
        stream = new.partition("/")[2]
        if stream in out:
            raise ConfigError(
                f"{origin[stream]} and {old} would both be replayed on stream {stream!r}: "
                "use one replay node per recorded node (topics: [<node>/*])"
            )
        out[stream], origin[stream] = sel.encodings[old], old
    return out


#: Longest sleep between two checks of a shared playback clock (a pause or a rate change
#: takes effect within this).
_CONTROL_POLL_NS = 20_000_000
#: Messages published per turn of the node loop at most, so statistics and stops go on.
_BURST = 64


class ReplayNode(Node):
    """Publishes a recorded session's topics as this node's streams (see the module docstring).

    The streams depend on the file, so :attr:`outputs` is empty on the class:
    :meth:`output_streams` gives them for a node's parameters, and ``edgefuse replay`` runs
    subclasses that declare them.
    """

    Params = ReplayParams

    @classmethod
    def output_streams(cls, params: ReplayParams) -> dict[str, str]:
        """Stream -> encoding of a replay node built with ``params`` (read from the file)."""
        return _streams(params.selection())

    @classmethod
    def declaring(cls, name: str, streams: Mapping[str, str]) -> type[ReplayNode]:
        """A subclass whose :attr:`outputs` are ``streams``, for the launcher and the
        pipeline's topic checks (the node process runs :class:`ReplayNode` itself)."""
        return type(f"ReplayNode_{name}", (cls,), {"outputs": dict(streams)})

    def setup(self) -> None:
        p: ReplayParams = self.params
        self.selection = p.selection()
        self.streams = _streams(self.selection)
        for new in self.selection.topics.values():
            node = new.partition("/")[0]
            if node != self.name:
                self.log.info(
                    "%s: %s is published as %s/%s", self.name, new, self.name, new.partition("/")[2]
                )
        if p.control:
            self.clock = PlaybackClock.attach(p.control)
        else:
            start = self.run_start_ns + round(p.start_delay_s * 1e9)
            self.clock = PlaybackClock.local(rate=p.rate, start_host_ns=start)
        self._poll_ns = _CONTROL_POLL_NS if p.control else None
        self._reader = Prefetcher(
            replay_messages(self.selection, loops=None if p.loop else 1),
            limit_bytes=round(p.prefetch_mb * 1e6),
        )
        self._next: tuple[int, Message] | None = None
        self._first_seq: dict[str, int] = {}
        self._base_seq: dict[str, int] = {}
        self._last_seq: dict[str, int] = {}
        self._pass = 0
        self.published = 0
        self._advance()
        self.at(time.monotonic_ns(), self._tick)

    def _advance(self) -> None:
        self._next = self._reader.next()

    def teardown(self) -> None:
        """Stop the read-ahead thread."""
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.close()

    def _tick(self) -> None:
        for _ in range(_BURST):
            if self._next is None:
                self.log.info("%s: replay finished (%d messages)", self.name, self.published)
                self.stop()
                return
            v, msg = self._next
            now = time.monotonic_ns()
            due = self.clock.host_ns(v)
            if due is None:  # paused: only what a step reached goes out
                if v > self.clock.session_ns(now):
                    self.at(now + _CONTROL_POLL_NS, self._tick)
                    return
                t_host = now
            elif due > now:
                wake = due if self._poll_ns is None else min(due, now + self._poll_ns)
                self.at(wake, self._tick)
                return
            else:
                t_host = due
            self._publish(v, msg, t_host)
            self._advance()
        self.at(time.monotonic_ns(), self._tick)

    def _publish(self, v: int, msg: Message, t_host_ns: int) -> None:
        h = msg.header
        sel = self.selection
        k = v // sel.span_ns if sel.span_ns else 0
        if k != self._pass:  # a new pass of a loop: seq goes on from the last one
            self._pass = k
            self._base_seq = {t: s + 1 for t, s in self._last_seq.items()}
        first = self._first_seq.setdefault(msg.topic, h.seq)
        seq = self._base_seq.get(msg.topic, first) + h.seq - first
        self._last_seq[msg.topic] = seq
        stream = msg.topic.partition("/")[2]
        arrays: list[np.ndarray] = []
        for a in msg.arrays:
            if a.nbytes >= ZERO_COPY_MIN_BYTES:
                slot = self.loan(stream, a.shape, a.dtype)
                slot[...] = a
                arrays.append(slot)
            else:
                arrays.append(a)
        header = Header(
            stream=stream,
            seq=seq,
            t_sensor_ns=h.t_sensor_ns,
            t_host_ns=t_host_ns,
            # t_ns is on the host timeline, like t_host_ns: it moves with it (sim/truth,
            # detections), keeping its distance from the arrival.
            t_ns=None if h.t_ns is None else h.t_ns + (t_host_ns - h.t_host_ns),
            frame_id=h.frame_id,
            encoding=h.encoding,
            meta=h.meta,
        )
        self.runner.publisher.send(header, arrays)
        self.published += 1

    def counters(self) -> Mapping[str, int | float]:
        """Messages published, and whether the clock is paused."""
        out: dict[str, Any] = {"replayed": getattr(self, "published", 0)}
        clock = getattr(self, "clock", None)
        if clock is not None:
            out["paused"] = int(clock.paused)
            out["rate"] = clock.rate
        return out
