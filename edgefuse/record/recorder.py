"""Recording: every message of a running pipeline into session files, losslessly, without
stalling whoever feeds it.

:class:`Recording` is the engine. :meth:`Recording.feed` runs in the receiving loop: it copies
the message into its session bytes (one copy, so a shared-memory slot may be reused right
after), checks that the slot was not reused during the copy (a torn copy is counted as an
overrun and never written), notes gaps in ``seq`` and hands the bytes to a writer thread
through a queue bounded in **bytes**. When the queue is full the message is dropped and
counted for its topic; nothing is lost silently. The writer thread writes the envelopes (see
:mod:`edgefuse.record.session`), the Foxglove messages beside them
(:mod:`edgefuse.record.foxglove`), ends a chunk at the latest ``chunk_s`` after its first
message (so a SIGKILL loses at most that much) and splits the session into numbered files by
size or duration. Each file holds the session metadata (rig, start wall time in UTC ns and the
matching host time, host name, versions) and the rig calibration as an attachment, and the
last one the per-topic counts and losses.

:class:`RecorderNode` is the recorder as a pipeline node (``type: recorder``); it subscribes to
the topics of its own run itself (``topics: ["*"]`` or a list of names or glob patterns), so
it needs no ``inputs:`` block. :func:`record_running` does the same from outside, against a
running pipeline (``edgefuse record``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import platform
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from edgefuse import __version__, rundir
from edgefuse.calib.model import find_calibration, load_calibration
from edgefuse.envelope import Header, Message
from edgefuse.errors import ConfigError, EdgefuseError
from edgefuse.node import Node
from edgefuse.record.errors import SessionError
from edgefuse.record.session import (
    DEFAULT_ZSTD_LEVEL,
    SessionWriter,
    check_zstd_level,
    decode_envelope,
    envelope_bytes,
)
from edgefuse.transport import CurveKeys, Subscriber, TransportOptions

log = logging.getLogger(__name__)

#: zstd levels above this one compress several times slower than the default (measured in
#: docs/BENCHMARKS.md): the recorder warns that it may not keep up.
SLOW_ZSTD_LEVEL = 5


@dataclass(frozen=True, kw_only=True)
class RecordOptions:
    """How a recording is written (the recorder node's parameters less its topic choice)."""

    #: Output file, or a folder (ending in ``/``) for ``<pipeline>_<UTC time>.mcap`` in it.
    #: An existing file is never overwritten: ``-1``, ``-2``, ... is added to the name.
    out: str = "recordings/"
    compression: Literal["zstd", "lz4", "none"] = "zstd"
    #: zstd level (-7 fastest .. 22 smallest); 1 as rosbag2, which keeps up with the rig on
    #: one core (mcap's own default, 3, is about 5x slower for ~8 % smaller files).
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    #: A chunk is closed at this size (MB) or ``chunk_s`` after its first message, whichever
    #: comes first: a killed recorder loses at most the chunk in progress.
    chunk_mb: float = 4.0
    chunk_s: float = 1.0
    #: Start a new numbered file (``name_0000.mcap``, ...) after this many MB / seconds (0: never).
    split_mb: float = 0.0
    split_s: float = 0.0
    #: Bytes waiting for the writer thread at most (MB); beyond, messages are dropped and counted.
    queue_mb: float = 256.0
    #: Also write Foxglove well-known schemas (images, point clouds, audio, boxes, calibration).
    foxglove: bool = True
    #: Rig calibration to attach (and to give Foxglove the camera calibrations); "" = none.
    rig: str = ""

    def __post_init__(self) -> None:
        if self.chunk_mb <= 0 or self.chunk_s <= 0:
            raise ValueError("chunk_mb and chunk_s must be > 0")
        if self.split_mb < 0 or self.split_s < 0:
            raise ValueError("split_mb and split_s must be >= 0 (0: no split)")
        check_zstd_level(self.zstd_level)
        if self.queue_mb <= 0:
            raise ValueError(f"queue_mb must be > 0, got {self.queue_mb}")
        if not self.out:
            raise ValueError("out is empty: give a file or a folder ending in '/'")
        if self.rig:
            try:
                find_calibration(self.rig)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None


@dataclass(slots=True)
class TopicCounts:
    """What happened to one topic's messages (see :meth:`Recording.report`)."""

    received: int = 0
    written: int = 0
    bytes: int = 0
    #: ``seq`` numbers missing before the recorder (publisher or transport drops).
    gaps: int = 0
    #: Shared-memory slots reused while being copied (never written torn).
    overruns: int = 0
    #: Dropped because the writer queue was full.
    queue_drops: int = 0
    #: Rejected by the session writer (a stream that changed its encoding, ...).
    write_errors: int = 0
    #: Foxglove conversions that failed (the envelope itself was written).
    foxglove_errors: int = 0
    first_seq: int | None = None
    last_seq: int | None = None

    @property
    def lost(self) -> int:
        """Messages of this topic that are not in the recording."""
        return self.gaps + self.overruns + self.queue_drops + self.write_errors


@dataclass(slots=True)
class _Item:
    topic: str
    header: Header
    data: bytes


def _free_path(path: Path) -> Path:
    """``path``, or ``path`` with ``-1``, ``-2``, ... before its suffix if it exists."""
    if not path.exists():
        return path
    for i in range(1, 10_000):
        p = path.with_name(f"{path.stem}-{i}{path.suffix}")
        if not p.exists():
            return p
    raise SessionError(f"{path}: no free file name next to it", kind="io")


def session_metadata(
    *, rig: str, pipeline: str, run_id: str, recorder: str, start_wall_ns: int, start_host_ns: int
) -> dict[str, str]:
    """The ``session`` metadata record of a recording: everything needed to put its host
    stamps on the UTC timeline and to tell what wrote it."""
    import mcap

    return {
        "source": "edgefuse record",
        "rig": rig,
        "pipeline": pipeline,
        "run_id": run_id,
        "recorder": recorder,
        "start_wall_ns": str(start_wall_ns),
        "start_host_ns": str(start_host_ns),
        "host": socket.gethostname(),
        "edgefuse": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mcap": getattr(mcap, "__version__", "?"),
    }


class Recording:
    """One recording in progress: :meth:`feed` messages, then :meth:`close`."""

    def __init__(
        self,
        options: RecordOptions,
        *,
        pipeline: str = "",
        run_id: str = "",
        recorder: str = "edgefuse record",
    ) -> None:
        self.options = options
        self.start_wall_ns = time.time_ns()
        self.start_host_ns = time.monotonic_ns()
        rig_name, self._attachments, rig_cal = "", {}, None
        if options.rig:
            rig_path = find_calibration(options.rig)
            rig_cal = load_calibration(rig_path)
            rig_name = rig_cal.rig
            self._attachments = {f"calibration/{rig_path.name}": rig_path.read_bytes()}
        self._metadata = session_metadata(
            rig=rig_name,
            pipeline=pipeline,
            run_id=run_id,
            recorder=recorder,
            start_wall_ns=self.start_wall_ns,
            start_host_ns=self.start_host_ns,
        )
        if options.compression == "zstd" and options.zstd_level > SLOW_ZSTD_LEVEL:
            log.warning(
                "zstd level %d is slow (level 6 compresses camera frames ~5x slower than the "
                "default 1, level 9 ~8x, level 19 ~100x; see docs/BENCHMARKS.md): if the "
                "writer cannot keep up, messages are dropped and counted. Record at a low "
                "level and recompress offline (edgefuse recover --zstd-level 19) for the "
                "smallest size",
                options.zstd_level,
            )
        self._metadata |= {
            "compression": options.compression,
            "zstd_level": str(options.zstd_level),
            "chunk_s": repr(options.chunk_s),
        }
        self._converter = None
        if options.foxglove:
            from edgefuse.record.foxglove import FoxgloveConverter

            self._converter = FoxgloveConverter(
                wall_offset_ns=self.start_wall_ns - self.start_host_ns, rig=rig_cal
            )
        out = Path(options.out)
        if options.out.endswith("/") or out.is_dir():
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.start_wall_ns / 1e9))
            out = out / f"{pipeline or 'session'}_{stamp}.mcap"
        self._base = out
        self._split = options.split_mb > 0 or options.split_s > 0
        #: The files written so far (the last one is being written).
        self.files: list[Path] = []
        self.counts: dict[str, TopicCounts] = {}
        self._limit = max(1, round(options.queue_mb * 1e6))
        self._queue: deque[_Item] = deque()
        self._queued = 0
        self._cond = threading.Condition()
        self._closing = False
        self._warned: set[str] = set()
        self._writer: SessionWriter | None = None
        self._fox_channels: dict[str, int] = {}
        self._file_started = 0.0
        self._unflushed_since: float | None = None
        self._error: BaseException | None = None
        self._open_next()  # the first file exists (and fails) before the first message
        self._thread = threading.Thread(target=self._run, name="recorder-writer", daemon=True)
        self._thread.start()

    # --- the receiving side ---------------------------------------------------------------
    def feed(self, msg: Message) -> bool:
        """Copy ``msg`` into the queue; False when it was dropped (counted per topic)."""
        c = self.counts.get(msg.topic)
        if c is None:
            c = self.counts[msg.topic] = TopicCounts()
        c.received += 1
        seq = msg.header.seq
        if c.last_seq is not None and seq > c.last_seq + 1:
            c.gaps += seq - c.last_seq - 1
        if c.first_seq is None:
            c.first_seq = seq
        c.last_seq = seq  # a smaller seq is a publisher restart: no loss
        try:
            data = envelope_bytes(msg.topic, msg.header, msg.arrays)
        except EdgefuseError as exc:
            c.write_errors += 1
            self._warn(f"bad:{msg.topic}", "%s: not recorded: %s", msg.topic, exc)
            return False
        if not msg.intact():
            # The publisher reused the slot while we copied: the bytes may mix two messages.
            c.overruns += 1
            self._warn(f"overrun:{msg.topic}", "%s: shared-memory overrun while copying", msg.topic)
            return False
        n = len(data)
        with self._cond:
            if self._queued + n > self._limit and self._queue:
                c.queue_drops += 1
                self._warn(
                    f"queue:{msg.topic}",
                    "%s: writer queue full (%.0f MB): message dropped (counted; raise "
                    "queue_mb or use a faster disk / %s)",
                    msg.topic,
                    self._queued / 1e6,
                    self._lighter_hint(),
                )
                return False
            self._queue.append(_Item(msg.topic, msg.header, data))
            self._queued += n
            self._cond.notify()
        return True

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting for the writer thread."""
        return self._queued

    def counters(self) -> dict[str, int | float]:
        """Flat counters for the status table."""
        cs = list(self.counts.values())
        return {
            "recorded": sum(c.written for c in cs),
            "lost": sum(c.lost for c in cs),
            "queue_drops": sum(c.queue_drops for c in cs),
            "queue_mb": round(self._queued / 1e6, 1),
            "written_mb": round(sum(c.bytes for c in cs) / 1e6, 1),
            "files": len(self.files),
        }

    def report(self) -> dict[str, Any]:
        """Per-topic counts and losses, and the files written (JSON-ready)."""
        return {
            "files": [str(p) for p in self.files],
            "start_wall_ns": self.start_wall_ns,
            "duration_s": round((time.monotonic_ns() - self.start_host_ns) / 1e9, 3),
            "topics": {
                t: {k: getattr(c, k) for k in c.__slots__} | {"lost": c.lost}  # type: ignore[attr-defined]
                for t, c in sorted(self.counts.items())
            },
            "lost": sum(c.lost for c in self.counts.values()),
        }

    def close(self) -> dict[str, Any]:
        """Write what is queued, close the last file (summary, footer) and return the report.
        Losses are logged per topic; an error of the writer thread is raised here."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()
        report = self.report()
        if self._writer is not None:
            with contextlib.suppress(SessionError):
                self._writer.add_metadata("recording", {"json": json.dumps(report)})
            self._writer.close()
            self._writer = None
        for topic, c in sorted(self.counts.items()):
            level = logging.WARNING if c.lost else logging.INFO
            log.log(
                level,
                "%s: %d recorded, %d lost (gaps %d, overruns %d, queue drops %d, errors %d), "
                "%.1f MB",
                topic,
                c.written,
                c.lost,
                c.gaps,
                c.overruns,
                c.queue_drops,
                c.write_errors,
                c.bytes / 1e6,
            )
        if self._error is not None:
            raise SessionError(f"recording failed: {self._error}", kind="io") from self._error
        return report

    def _lighter_hint(self) -> str:
        o = self.options
        if o.compression == "zstd" and o.zstd_level > DEFAULT_ZSTD_LEVEL:
            return f"a lower zstd level than {o.zstd_level} (zstd_level: {DEFAULT_ZSTD_LEVEL})"
        if o.compression == "zstd":
            return "lz4 or no compression"
        return "no compression" if o.compression == "lz4" else "fewer topics"

    def _warn(self, key: str, fmt: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(fmt, *args)

    # --- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        if self._unflushed_since is None:
                            self._cond.wait()
                            continue
                        left = self._unflushed_since + self.options.chunk_s - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    if not self._queue and self._closing:
                        return
                    batch = list(self._queue)
                    self._queue.clear()
                for item in batch:
                    self._write(item)
                    with self._cond:
                        self._queued -= len(item.data)
                    self._maybe_flush_or_split()
                if not batch:
                    self._maybe_flush_or_split()  # woken by the chunk_s deadline
        except BaseException as exc:  # a full disk: stop writing, let close() say why
            self._error = exc
            log.error("recorder: writing stopped: %s", exc)
            with self._cond:
                for item in self._queue:
                    self.counts[item.topic].write_errors += 1
                self._queue.clear()
                self._queued = 0

    def _write(self, item: _Item) -> None:
        w = self._writer
        assert w is not None
        c = self.counts[item.topic]
        try:
            w.write_envelope(item.topic, item.header, item.data)
        except SessionError as exc:
            c.write_errors += 1
            self._warn(f"write:{item.topic}", "%s: not recorded: %s", item.topic, exc)
            return
        c.written += 1
        c.bytes += len(item.data)
        if self._unflushed_since is None:
            self._unflushed_since = time.monotonic()
        if self._converter is not None:
            try:
                msg = decode_envelope(item.topic, item.data)
                for fm in self._converter.convert(msg):
                    cid = self._fox_channels.get(fm.topic)
                    if cid is None:
                        cid = self._fox_channel(fm.topic, fm.schema)
                    log_time = item.header.t_host_ns
                    w.write_message(cid, log_time, fm.data, sequence=item.header.seq)
            except (EdgefuseError, ValueError, KeyError, TypeError) as exc:
                c.foxglove_errors += 1
                self._warn(f"fox:{item.topic}", "%s: no Foxglove message: %s", item.topic, exc)

    def _fox_channel(self, topic: str, schema_name: str) -> int:
        from edgefuse.record import foxglove

        assert self._writer is not None
        cid = self._writer.add_channel(
            topic,
            message_encoding=foxglove.MESSAGE_ENCODING,
            schema_name=schema_name,
            schema_encoding=foxglove.SCHEMA_ENCODING,
            schema_data=foxglove.schema(schema_name),
        )
        self._fox_channels[topic] = cid
        return cid

    def _maybe_flush_or_split(self) -> None:
        w = self._writer
        assert w is not None
        now = time.monotonic()
        o = self.options
        if self._split and (
            (o.split_mb and w.bytes_written >= o.split_mb * 1e6)
            or (o.split_s and now - self._file_started >= o.split_s)
        ):
            self._open_next()
        elif self._unflushed_since is not None and now - self._unflushed_since >= o.chunk_s:
            w.flush()
            self._unflushed_since = None

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        index = len(self.files)
        if self._split:
            path = self._base.with_name(f"{self._base.stem}_{index:04d}{self._base.suffix}")
        else:
            path = self._base
        path.parent.mkdir(parents=True, exist_ok=True)
        path = _free_path(path)
        meta = self._metadata | {"split_index": str(index)}
        self._writer = SessionWriter(
            path,
            metadata={"session": meta},
            attachments=self._attachments,
            compression=self.options.compression,
            zstd_level=self.options.zstd_level,
            chunk_size=max(1024, round(self.options.chunk_mb * 1e6)),
        )
        self.files.append(path)
        self._fox_channels.clear()
        if self._converter is not None:
            self._converter.reset()
        self._file_started = time.monotonic()
        self._unflushed_since = None
        log.info("recording to %s", path)


# --- choosing topics -------------------------------------------------------------------------
def match_topics(patterns: Sequence[str], available: Sequence[str]) -> list[str]:
    """The ``available`` topics that ``patterns`` name (``*``, globs like ``camera/*``, exact
    names); ``ConfigError`` for a name or pattern that matches nothing."""
    chosen: list[str] = []
    for pat in patterns:
        hits = [t for t in available if fnmatch.fnmatchcase(t, pat.lstrip("/"))]
        if not hits and pat != "*":
            known = ", ".join(sorted(available)) or "none"
            raise ConfigError(f"topic {pat!r} is not published by the pipeline; topics: {known}")
        chosen += [t for t in hits if t not in chosen]
    return chosen


def _rig_of_pipeline(graph: Mapping[str, Any]) -> str:
    """The shared ``params.rig`` of a running pipeline's file, or ""."""
    path = graph.get("file")
    if not path:
        return ""
    try:
        from edgefuse import config

        data, _ = config.load_yaml(path)
        rig = (data.get("params") or {}).get("rig", "") if isinstance(data, dict) else ""
        if rig:
            candidate = Path(path).parent / rig
            return str(candidate if candidate.exists() else find_calibration(rig))
    except (EdgefuseError, OSError, AttributeError, ValueError):
        pass
    return ""


# --- the node ----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class RecorderParams(RecordOptions):
    """Parameters of the recorder node: :class:`RecordOptions` and which topics."""

    #: Topics of the run to record: ``*`` (all), names or glob patterns (``camera/*``).
    topics: list[str] = field(default_factory=lambda: ["*"])
    #: Topics to leave out (names or globs), applied after ``topics``.
    exclude: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.topics:
            raise ValueError("topics is empty: give '*' or a list of topics")


#: The recorder waits at most this long per turn of its loop for messages (ms).
_POLL_MS = 20


class RecorderNode(Node):
    """Records the topics of its own run (see the module docstring).

    Messages are taken straight from the subscriber, so the node loop only copies each one
    into the writer queue; writing, compression and Foxglove conversion run on the writer
    thread.
    """

    Params = RecorderParams
    #: At stop the writer drains its queue (up to ``queue_mb``) to disk first: time for it.
    stop_grace_s: ClassVar[float] = 60.0

    @classmethod
    def input_ports(cls, params: Any) -> Sequence[str]:
        """None: the recorder subscribes to its run's topics itself (from the run's
        ``graph.json``), so that ``*`` needs no ``inputs:`` block listing every topic."""
        return ()

    def setup(self) -> None:
        p: RecorderParams = self.params
        spec = self.runner.spec
        graph_file = rundir.base_dir() / spec.run_id / "graph.json"
        try:
            graph = json.loads(graph_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.name}: the recorder runs inside 'edgefuse run' (no {graph_file}: "
                f"{exc}); to record from outside use 'edgefuse record'"
            ) from None
        info: dict[str, Any] = graph.get("topics", {})
        topics = _choose(p.topics, p.exclude, sorted(info))
        endpoints = sorted({info[t]["endpoint"] for t in topics})
        opts = dataclasses.replace(
            self.runner.options, queue_depth=max(self.runner.options.queue_depth, 64)
        )
        fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(RecordOptions)}
        self.recording = Recording(
            RecordOptions(**fields),
            pipeline=str(graph.get("name", "")),
            run_id=spec.run_id,
            recorder=self.name,
        )
        self.sub = Subscriber(endpoints, topics, options=opts, context=self.runner.ctx)
        self.log.info("recording %d topics: %s", len(topics), ", ".join(topics))
        self.every(0.001, self._pump)

    def _pump(self) -> None:
        # Wait here for data (bounded, so stop requests and statistics are noticed), then
        # take everything that arrived.
        _drain(self.sub, self.recording)

    def counters(self) -> Mapping[str, int | float]:
        """Recorded, lost and queued, for the status table."""
        rec = getattr(self, "recording", None)
        return rec.counters() if rec is not None else {}

    def teardown(self) -> None:
        """Close the subscriber, write what is queued and close the file."""
        sub = getattr(self, "sub", None)
        if sub is not None:
            sub.close()
        rec = getattr(self, "recording", None)
        if rec is not None:
            report = rec.close()
            self.log.info("recorded %s: %d lost", ", ".join(report["files"]), report["lost"])


def _drain(sub: Subscriber, rec: Recording) -> None:
    if not sub.socket.poll(_POLL_MS):
        return
    for _ in range(256):
        msg = sub.recv(timeout_ms=0)
        if msg is None:
            return
        rec.feed(msg)


def _choose(topics: Sequence[str], exclude: Sequence[str], available: Sequence[str]) -> list[str]:
    chosen = match_topics(list(topics), available)
    if exclude:
        gone = set(match_topics(list(exclude), chosen))
        chosen = [t for t in chosen if t not in gone]
    if not chosen:
        raise ConfigError(f"no topic to record (topics {list(topics)}, exclude {list(exclude)})")
    return chosen


# --- from outside a running pipeline -----------------------------------------------------------
def find_pipeline(pipeline: str | None) -> dict[str, Any]:
    """The graph of the running pipeline named (name or run id), or of the newest one."""
    graphs = rundir.running_pipelines()
    for g in graphs:
        if pipeline is None or pipeline in (g.get("name"), g.get("run_id")):
            return g
    running = ", ".join(str(g.get("run_id")) for g in graphs) or "none"
    what = f"named {pipeline!r} " if pipeline else ""
    raise ConfigError(
        f"no running pipeline {what}(running: {running}); start one with 'edgefuse run'"
    )


def record_running(
    options: RecordOptions,
    *,
    topics: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    pipeline: str | None = None,
    keys: str | None = None,
    duration_s: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Record a running pipeline until ``duration_s`` passes, ``should_stop()`` is true or the
    pipeline stops; return the report (see :meth:`Recording.report`)."""
    graph = find_pipeline(pipeline)
    info: dict[str, Any] = graph.get("topics", {})
    chosen = _choose(topics, exclude, sorted(info))
    if not options.rig:
        options = dataclasses.replace(options, rig=_rig_of_pipeline(graph))
    keys_dir = keys or graph.get("keys")
    opts = TransportOptions(
        queue_depth=256, keys=CurveKeys.load(keys_dir, client="client") if keys_dir else None
    )
    endpoints = sorted({info[t]["endpoint"] for t in chosen})
    launcher_pid = int(graph.get("pid", 0))
    rec = Recording(
        options, pipeline=str(graph.get("name", "")), run_id=str(graph.get("run_id", ""))
    )
    deadline = None if duration_s is None else time.monotonic() + duration_s
    next_alive_check = time.monotonic() + 0.5
    try:
        with Subscriber(endpoints, chosen, options=opts) as sub:
            log.info("recording %d topics of %s: %s", len(chosen), graph.get("run_id"), chosen)
            while not should_stop():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                if now >= next_alive_check:
                    next_alive_check = now + 0.5
                    if launcher_pid and not rundir._alive(launcher_pid):
                        log.info("the pipeline stopped")
                        break
                _drain(sub, rec)
    finally:
        report = rec.close()
    return report
