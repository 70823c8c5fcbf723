"""Replay: recorded sessions published again as live topics, paced as they arrived.

:func:`select` chooses what to replay from one session file or its split files (a list or a
glob): topics (names or globs), a remap ``{recorded topic: new topic}`` and a time window
(``start_offset_s``, ``duration_s``, on the recording's log time). :func:`replay_messages`
streams the chosen messages one chunk at a time through
:class:`~edgefuse.record.session.SessionReader`, so memory is bounded by a couple of chunks
whatever the file's size.

:class:`ReplayNode` (``type: replay``) publishes them as a source node: a node named
``camera`` replaying ``camera/image`` publishes ``camera/image`` again. Each message keeps
its recorded ``seq``, ``t_sensor_ns``, frame, encoding and meta; its ``t_host_ns``
is re-based onto this run's host timeline so that the gaps between the recorded arrivals are
preserved (divided by ``rate``): clock models see the arrival pattern they saw live; a
``t_ns`` (host timeline too: ``sim/truth``, detections) moves with it. Large
payloads are written into loaned shared-memory slots, as live sensors publish them.

Pacing follows a :class:`PlaybackClock`: session time as a function of host time, which
``edgefuse replay`` shares through a small file with every replay node of a run so that its
keyboard can pause, resume, step and change the rate of all of them at once.
"""

from __future__ import annotations

import fnmatch
import glob
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.envelope import ZERO_COPY_MIN_BYTES, Header, Message, check_topic
from edgefuse.errors import ConfigError, EnvelopeError
from edgefuse.node import Node
from edgefuse.record.errors import SessionError
from edgefuse.record.session import ENVELOPE_ENCODING, SessionReader

# --- what to replay ------------------------------------------------------------------------


def resolve_paths(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The session files named by ``path``: one file, a glob (split files, sorted by name)
    or a list of either, in replay order; ``ConfigError`` for a name that matches nothing."""
    names = [str(path)] if isinstance(path, (str, Path)) else [str(p) for p in path]
    if not names:
        raise ConfigError("no session file given")
    out: list[Path] = []
    for name in names:
        if glob.has_magic(name):
            hits = sorted(glob.glob(name))
            if not hits:
                raise ConfigError(f"{name}: no session file matches")
            out += [Path(h) for h in hits]
        elif not Path(name).is_file():
            what = "is a folder, not a session file" if Path(name).is_dir() else "not found"
            raise ConfigError(f"{name}: {what}")
        else:
            out.append(Path(name))
    return out


@dataclass(frozen=True, kw_only=True)
class Selection:
    """What a replay publishes: files, topics, their new names and a log-time window."""

    paths: tuple[Path, ...]
    #: Recorded topic -> the topic it is published on (itself unless remapped), sorted.
    topics: dict[str, str]
    #: Recorded topic -> stream encoding (``bgr8``, ``s16le``, ...).
    encodings: dict[str, str]
    #: Recorded topic -> messages in the whole session (before the time window).
    counts: dict[str, int]
    #: The window on log time: ``[start_ns, end_ns)``; ``end_ns`` None = to the end.
    start_ns: int
    end_ns: int | None
    #: One pass of a loop in session time (ns): the window, plus one mean message gap.
    span_ns: int

    def streams(self) -> dict[str, str]:
        """New topic -> encoding (what the replay publishes)."""
        return {new: self.encodings[old] for old, new in self.topics.items()}


def _check_new_topic(topic: str, *, what: str) -> None:
    try:
        check_topic(topic.encode("utf-8"))
    except EnvelopeError as exc:
        raise ConfigError(f"{what}: {exc.detail}") from None
    if "/" in topic.partition("/")[2]:
        raise ConfigError(f"{what}: topic {topic!r} is not <node>/<stream> (one '/')")


def _time_range(r: SessionReader) -> tuple[int | None, int | None]:
    """First and last log time of a session's messages, from its chunk index (no chunk is
    read). Uses the reader's index directly: ``SessionReader`` has no public accessor yet."""
    chunks = r._chunks
    if not chunks:
        return None, None
    return min(c.start for c in chunks), max(c.end for c in chunks)


def select(
    path: str | Path | Sequence[str | Path],
    *,
    topics: Sequence[str] = ("*",),
    remap: Mapping[str, str] | None = None,
    start_offset_s: float = 0.0,
    duration_s: float = 0.0,
) -> Selection:
    """Choose what to replay (see the module docstring); ``ConfigError`` names a topic pattern
    that matches nothing, a remap of an unchosen topic, two topics remapped onto one, or a
    window past the end; ``SessionError`` a file that is not a readable session."""
    if start_offset_s < 0 or duration_s < 0:
        raise ConfigError("start offset and duration must be >= 0 s")
    paths = resolve_paths(path)
    encodings: dict[str, str] = {}
    counts: dict[str, int] = {}
    first: int | None = None
    last: int | None = None
    for p in paths:
        with SessionReader(p) as r:
            for ch in r.channels().values():
                if ch.message_encoding == ENVELOPE_ENCODING:
                    encodings.setdefault(ch.topic, ch.metadata.get("encoding", ""))
            for topic, n in r.topics().items():
                counts[topic] = counts.get(topic, 0) + n
            lo, hi = _time_range(r)
            if lo is not None and hi is not None:
                first = lo if first is None else min(first, lo)
                last = hi if last is None else max(last, hi)
    available = sorted(t for t, n in counts.items() if n)
    if not available or first is None or last is None:
        names = ", ".join(map(str, paths))
        raise SessionError(f"{names}: no edgefuse envelope messages to replay", kind="empty")
    chosen: list[str] = []
    for pat in topics:
        hits = [t for t in available if fnmatch.fnmatchcase(t, pat.lstrip("/"))]
        if not hits:
            raise ConfigError(
                f"topic {pat!r} is not in the recording; topics: {', '.join(available)}"
            )
        chosen += [t for t in hits if t not in chosen]
    remap = dict(remap or {})
    for old, new in remap.items():
        if old not in chosen:
            raise ConfigError(
                f"remap {old}={new}: {old!r} is not replayed; replayed: {', '.join(chosen)}"
            )
        _check_new_topic(new, what=f"remap {old}={new}")
    mapped = {t: remap.get(t, t) for t in sorted(chosen)}
    seen: dict[str, str] = {}
    for old, new in mapped.items():
        if new in seen:
            raise ConfigError(f"{seen[new]} and {old} would both be replayed as {new!r}")
        seen[new] = old
    start = first + round(start_offset_s * 1e9)
    if start > last:
        raise ConfigError(
            f"start offset {start_offset_s:g} s is past the end of the recording "
            f"({(last - first) / 1e9:.3f} s long)"
        )
    end = start + round(duration_s * 1e9) if duration_s > 0 else None
    window = (min(end, last + 1) if end is not None else last + 1) - start
    n = sum(counts[t] for t in chosen)
    gap = max(1, (last - first) // max(1, n - 1))
    return Selection(
        paths=tuple(paths),
        topics=mapped,
        encodings={t: encodings.get(t, "") for t in mapped},
        counts={t: counts[t] for t in mapped},
        start_ns=start,
        end_ns=end,
        span_ns=(end - start) if end is not None else window + gap,
    )


def replay_messages(sel: Selection, *, loops: int | None = 1) -> Iterator[tuple[int, Message]]:
    """The selected messages as ``(session time ns, message)``, in arrival (log-time) order,
    renamed by the remap; ``loops`` passes over the window (None: forever). Session time is
    the recorded arrival ``t_host_ns`` minus the window start, plus ``span_ns`` per pass, so
    it keeps increasing across passes. One file and one or two chunks are open at a time."""
    k = 0
    wanted = list(sel.topics)
    while loops is None or k < loops:
        offset = k * sel.span_ns - sel.start_ns
        n = 0
        for p in sel.paths:
            with SessionReader(p) as r:
                for msg in r.messages(wanted, start_ns=sel.start_ns, end_ns=sel.end_ns):
                    new = sel.topics[msg.topic]
                    if new != msg.topic:
                        msg.header.stream = new.partition("/")[2]
                        msg = Message(new, msg.header, msg.arrays)
                    n += 1
                    yield msg.header.t_host_ns + offset, msg
        if n == 0:
            return  # an empty window: looping would spin
        k += 1


class Prefetcher:
    """Reads ahead of the replay on a thread (decompressing a chunk takes milliseconds, and
    must not make the message due meanwhile late), holding at most ``limit_bytes`` of
    payloads (and always at least one message). An error of the reader is raised by
    :meth:`next`."""

    def __init__(self, messages: Iterator[tuple[int, Message]], *, limit_bytes: int) -> None:
        self._it = messages
        self._limit = max(1, limit_bytes)
        self._queue: deque[tuple[int, Message]] = deque()
        self._bytes = 0
        self._done = False
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="replay-reader", daemon=True)
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        """Payload bytes read ahead."""
        return self._bytes

    def _run(self) -> None:
        try:
            for item in self._it:
                n = item[1].nbytes
                with self._cond:
                    while self._queue and self._bytes + n > self._limit and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    self._queue.append(item)
                    self._bytes += n
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer, which reports it
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def next(self) -> tuple[int, Message] | None:
        """The next message (waits for the reader if it is behind); None at the end."""
        with self._cond:
            while not self._queue and not self._done:
                self._cond.wait()
            if self._queue:
                item = self._queue.popleft()
                self._bytes -= item[1].nbytes
                self._cond.notify_all()
                return item
        if self._error is not None:
            raise self._error
        return None

    def close(self) -> None:
        """Stop reading ahead."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._bytes = 0
            self._cond.notify_all()
        self._thread.join(timeout=5.0)


# --- pacing --------------------------------------------------------------------------------

_SEQ, _H0, _V0, _RATE, _PAUSED = range(5)
_RATE_UNIT = 1_000_000  # rates are stored in millionths


class PlaybackClock:
    """Session time as a function of host time: ``v = v0 + (h - h0) * rate`` while playing,
    ``v0`` while paused. Replay publishes a message of session time ``v`` at host time
    :meth:`host_ns`\\ (v). The state lives in five int64 words, in memory or in a small file
    (:meth:`create`/:meth:`attach`) that one writer (the CLI's keyboard) shares with the
    replay nodes; a sequence counter makes every read consistent."""

    def __init__(self, words: np.ndarray) -> None:
        self._w = words

    @classmethod
    def local(cls, *, rate: float = 1.0, start_host_ns: int = 0) -> PlaybackClock:
        """A clock in this process's memory, starting at session time 0 at ``start_host_ns``."""
        clock = cls(np.zeros(8, np.int64))
        clock._write(h0=start_host_ns, v0=0, rate=rate, paused=False)
        return clock

    @classmethod
    def create(
        cls, path: str | Path, *, rate: float = 1.0, start_host_ns: int = 0
    ) -> PlaybackClock:
        """A clock in a new file at ``path`` (for :meth:`attach` in other processes)."""
        Path(path).write_bytes(bytes(64))
        clock = cls(np.memmap(path, dtype=np.int64, mode="r+", shape=(8,)))
        clock._write(h0=start_host_ns, v0=0, rate=rate, paused=False)
        return clock

    @classmethod
    def attach(cls, path: str | Path) -> PlaybackClock:
        """The clock another process created at ``path``."""
        try:
            words = np.memmap(path, dtype=np.int64, mode="r", shape=(8,))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"playback control file {path}: {exc}") from None
        return cls(words)

    def state(self) -> tuple[int, int, float, bool]:
        """``(h0, v0, rate, paused)``, read consistently."""
        w = self._w
        while True:
            s1 = int(w[_SEQ])
            h0, v0, rate, paused = int(w[_H0]), int(w[_V0]), int(w[_RATE]), int(w[_PAUSED])
            if s1 % 2 == 0 and int(w[_SEQ]) == s1:
                return h0, v0, rate / _RATE_UNIT, bool(paused)

    def session_ns(self, host_ns: int) -> int:
        """Session time at host time ``host_ns``."""
        h0, v0, rate, paused = self.state()
        return v0 if paused else v0 + round((host_ns - h0) * rate)

    def host_ns(self, session_ns: int) -> int | None:
        """Host time at which session time ``session_ns`` comes; None while paused."""
        h0, v0, rate, paused = self.state()
        return None if paused else h0 + round((session_ns - v0) / rate)

    @property
    def paused(self) -> bool:
        """True while paused."""
        return self.state()[3]

    @property
    def rate(self) -> float:
        """The current rate (session seconds per host second)."""
        return self.state()[2]

    def start(self, host_ns: int) -> None:
        """Session time 0 at host time ``host_ns`` (keeps rate and pause)."""
        _, _, rate, paused = self.state()
        self._write(h0=host_ns, v0=0, rate=rate, paused=paused)

    def pause(self, host_ns: int) -> None:
        """Stop session time where it is at ``host_ns``."""
        _, _, rate, paused = self.state()
        if not paused:
            self._write(h0=host_ns, v0=self.session_ns(host_ns), rate=rate, paused=True)

    def resume(self, host_ns: int) -> None:
        """Let session time run again from where it stopped."""
        _, v0, rate, paused = self.state()
        if paused:
            self._write(h0=host_ns, v0=v0, rate=rate, paused=False)

    def set_rate(self, rate: float, host_ns: int) -> None:
        """Change the rate from ``host_ns`` on (no jump in session time)."""
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        _, _, _, paused = self.state()
        self._write(h0=host_ns, v0=self.session_ns(host_ns), rate=rate, paused=paused)

    def step_to(self, session_ns: int) -> None:
        """While paused: move session time to ``session_ns`` (what is due then is published)."""
        h0, v0, rate, paused = self.state()
        if paused and session_ns > v0:
            self._write(h0=h0, v0=session_ns, rate=rate, paused=True)

    def _write(self, *, h0: int, v0: int, rate: float, paused: bool) -> None:
        w = self._w
        w[_SEQ] += 1  # odd: a write in progress
        w[_H0], w[_V0], w[_RATE], w[_PAUSED] = h0, v0, round(rate * _RATE_UNIT), int(paused)
        w[_SEQ] += 1


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
