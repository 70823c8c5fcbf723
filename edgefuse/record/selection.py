"""What a replay plays: :func:`select` chooses from one session file or its split files (a
list or a glob) the topics (names or globs), a remap ``{recorded topic: new topic}`` and a time
window (``start_offset_s``, ``duration_s``, on the recording's log time);
:func:`replay_messages` streams the chosen messages one chunk at a time through
:class:`~edgefuse.record.session.SessionReader`, so memory is bounded by a couple of chunks
whatever the file's size. Used by the replay node and the lossless executor alike.
"""

from __future__ import annotations

import fnmatch
import glob
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefuse.envelope import Message, check_topic
from edgefuse.errors import ConfigError, EnvelopeError
from edgefuse.record.errors import SessionError
from edgefuse.record.session import ENVELOPE_ENCODING, SessionReader


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
