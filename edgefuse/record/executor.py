"""Lossless replay: a pipeline's processing nodes in one process, driven by a recording.

``edgefuse replay --lossless --pipeline P.yaml`` must process every set whatever the machine
and give the same outputs on every run. Paced replay through separate processes cannot
promise either (a slow consumer drops, scheduling varies), so this executor instead:

- finds the pipeline's *source* nodes (no inputs, and their topics are in the recording) and
  replaces them by the recording; source nodes whose topics are not recorded, and nodes with
  neither inputs nor recorded topics (a recorder), are left out and reported;
- builds every other node from its class and parameters in this process, ``lossless: true``
  forced where its parameters have that field, and sets them up in topological order;
- feeds the recorded messages in arrival (log-time) order, and delivers each message a node
  publishes synchronously to its subscribers, in topological order (a publish shim instead of
  ZeroMQ and shared memory);
- runs ``every``/``at`` timers on event time (the recorded ``t_host_ns`` of the message being
  delivered), never on the wall clock; published headers get that event time as ``t_pub_ns``
  and as ``t_host_ns`` when the node gives none;
- at the end tears the nodes down in topological order (the aligner flushes its pending sets
  then, and they still reach the model).

What the nodes publish goes to a session file (our envelopes, byte-identical across runs) and
to JSON lines. A node's exception in a callback is counted and logged once per kind, as the
node runner does; a setup failure is an error naming the node.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import heapq
import itertools
import logging
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from edgefuse.envelope import Header, Message, wire_dtype
from edgefuse.errors import ConfigError, EdgefuseError
from edgefuse.node import Node, NodeSpec
from edgefuse.pipeline import Pipeline, ResolvedNode
from edgefuse.record.selection import Selection, replay_messages
from edgefuse.record.session import SessionWriter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """How a pipeline runs on a recording: which nodes the recording replaces, which run."""

    #: Source node -> the recorded topics that replace it (as published, after remap).
    sources: dict[str, list[str]]
    #: Nodes left out, with why.
    skipped: dict[str, str]
    #: Nodes that run, in topological order.
    order: list[str]


def plan(pipeline: Pipeline, topics: Sequence[str]) -> Plan:
    """Split ``pipeline``'s nodes into those the recorded ``topics`` (as published) replace,
    those left out and those that run (topologically ordered); ``ConfigError`` when the
    recording replaces no node or the pipeline has a cycle."""
    have = set(topics)
    sources: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    running: list[ResolvedNode] = []
    for n in pipeline.nodes.values():
        outs = [f"{n.name}/{s}" for s in n.outputs]
        if n.inputs:
            running.append(n)
        elif any(t in have for t in outs):
            sources[n.name] = [t for t in outs if t in have]
        elif outs:
            skipped[n.name] = f"a source whose topics ({', '.join(outs)}) are not replayed"
        else:
            skipped[n.name] = "no inputs and no outputs (it cannot run on a recording)"
    if not sources:
        raise ConfigError(
            f"{pipeline.path}: the recording replaces none of the pipeline's source nodes "
            f"(recorded topics: {', '.join(sorted(have)) or 'none'})"
        )
    publisher_of = {f"{n.name}/{s}": n.name for n in running for s in n.outputs}
    deps = {
        n.name: {publisher_of[t] for t in n.inputs.values() if t in publisher_of} for n in running
    }
    index = {n.name: i for i, n in enumerate(running)}
    order: list[str] = []
    ready = [index[name] for name, d in deps.items() if not d]
    heapq.heapify(ready)  # ties: file order
    left = {name: set(d) for name, d in deps.items()}
    while ready:
        name = running[heapq.heappop(ready)].name
        order.append(name)
        for other, d in left.items():
            if name in d:
                d.discard(name)
                if not d:
                    heapq.heappush(ready, index[other])
    if len(order) != len(running):
        cyc = ", ".join(sorted(set(deps) - set(order)))
        raise ConfigError(f"{pipeline.path}: nodes {cyc} form a cycle")
    return Plan(sources, skipped, order)


class _EventTimers(list[Any]):
    """The runner's periodic timers: ``Node.every`` stamps the first due time from the wall
    clock; appended here, it is re-based onto event time."""

    def __init__(self, now: Callable[[], int]) -> None:
        super().__init__()
        self._now = now

    def append(self, timer: Any) -> None:
        timer.due_ns = self._now() + timer.period_ns
        super().append(timer)


class _Publisher:
    """A node's publisher: stamps ``seq`` and event time, hands the message to the executor."""

    def __init__(self, executor: LosslessExecutor, node: str) -> None:
        self._ex = executor
        self.node = node
        self._seq: dict[str, int] = {}

    def topic(self, stream: str) -> str:
        """``<node>/<stream>``."""
        return f"{self.node}/{stream}"

    def loan(self, stream: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """An ordinary array: nothing crosses a process here."""
        return np.empty(tuple(int(d) for d in shape), np.dtype(dtype))

    def publish(
        self,
        stream: str,
        arrays: Sequence[np.ndarray] = (),
        *,
        t_sensor_ns: int,
        t_host_ns: int | None = None,
        t_ns: int | None = None,
        frame_id: str = "",
        encoding: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Header:
        """As :meth:`edgefuse.transport.Publisher.publish`, with event time for "now"."""
        header = Header(
            stream=stream,
            seq=self._seq.get(stream, 0),
            t_sensor_ns=t_sensor_ns,
            t_host_ns=self._ex.now_ns if t_host_ns is None else t_host_ns,
            t_ns=t_ns,
            frame_id=frame_id,
            encoding=encoding,
            meta=meta or {},
        )
        self.send(header, arrays)
        return header

    def send(self, header: Header, arrays: Sequence[np.ndarray]) -> None:
        """Deliver a message with a caller-built header (``t_pub_ns`` = event time)."""
        for a in arrays:
            wire_dtype(a)  # what the transport would refuse is refused here too
        header.t_pub_ns = self._ex.now_ns
        frozen = []
        for a in arrays:
            # Subscribers get read-only data, as from the transport; the publisher may not
            # change an array after publishing it anyway.
            v = np.ascontiguousarray(a).reshape(a.shape).view()
            v.flags.writeable = False
            frozen.append(v)
        self._seq[header.stream] = header.seq + 1
        self._ex.deliver(Message(self.topic(header.stream), header, frozen))


class _Runner:
    """What a node reaches through ``self.runner``, on event time."""

    def __init__(self, executor: LosslessExecutor, r: ResolvedNode) -> None:
        self._ex = executor
        self.spec = NodeSpec(
            name=r.name, type=r.config.type, params=dict(r.merged_params), run_id="replay"
        )
        self.publisher = _Publisher(executor, r.name)
        self.timers: _EventTimers = _EventTimers(lambda: executor.now_ns)
        self.stopping = False
        self.errors: Counter[str] = Counter()

    @property
    def run_start_ns(self) -> int:
        """The first event time of the replay."""
        return self._ex.start_ns

    def at(self, t_ns: int, callback: Callable[[], None]) -> None:
        """One-shot timer at event time ``t_ns``."""
        if isinstance(t_ns, bool) or not isinstance(t_ns, (int, np.integer)):
            raise TypeError(f"at() takes an int time in ns, got {t_ns!r}")
        self._ex.schedule(int(t_ns), callback, self)


@dataclass
class Report:
    """What a lossless replay did (JSON-ready through :meth:`to_json`)."""

    fed: Counter[str] = field(default_factory=Counter)
    published: Counter[str] = field(default_factory=Counter)
    written: int = 0
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain dicts."""
        return {
            "sources": self.sources,
            "skipped": self.skipped,
            "fed": dict(sorted(self.fed.items())),
            "published": dict(sorted(self.published.items())),
            "written": self.written,
            "errors": self.errors,
            "counters": self.counters,
        }


class LosslessExecutor:
    """Runs ``pipeline``'s processing nodes on ``selection`` (see the module docstring)."""

    def __init__(
        self,
        pipeline: Pipeline,
        selection: Selection,
        *,
        out: str | Path | None = None,
        json_out: TextIO | None = None,
        output_topics: Sequence[str] = ("*",),
    ) -> None:
        self.pipeline = pipeline
        self.plan = plan(pipeline, list(selection.topics.values()))
        fed = {t for ts in self.plan.sources.values() for t in ts}
        self.selection = dataclasses.replace(
            selection, topics={o: n for o, n in selection.topics.items() if n in fed}
        )
        self.start_ns = selection.start_ns
        self.now_ns = selection.start_ns
        self._out_path = out
        self._json = json_out
        self._output_topics = list(output_topics)
        self._oneshots: list[tuple[int, int, Callable[[], None], _Runner]] = []
        self._order = itertools.count()
        self._subs: dict[str, list[tuple[Node, str, _Runner]]] = {}
        self._nodes: list[tuple[Node, _Runner]] = []
        self._writer: SessionWriter | None = None
        self._wanted: dict[str, bool] = {}
        self.report = Report(sources=self.plan.sources, skipped=self.plan.skipped)

    # --- set-up --------------------------------------------------------------------------
    def _build(self) -> None:
        for name in self.plan.order:
            r = self.pipeline.nodes[name]
            params = r.params
            if any(f.name == "lossless" for f in dataclasses.fields(params)):
                params = dataclasses.replace(params, lossless=True)
            runner = _Runner(self, r)
            node = r.cls(name=name, params=params, runner=runner)  # type: ignore[arg-type]
            self._nodes.append((node, runner))
            for port, topic in r.inputs.items():
                self._subs.setdefault(topic, []).append((node, port, runner))

    def _setup(self) -> None:
        for node, _ in self._nodes:
            try:
                node.setup()
            except EdgefuseError:
                raise
            except Exception as exc:
                log.debug("%s: setup failed:\n%s", node.name, traceback.format_exc())
                raise EdgefuseError(
                    f"node {node.name}: setup failed: {type(exc).__name__}: {exc}"
                ) from exc

    # --- the flow ------------------------------------------------------------------------
    def schedule(self, t_ns: int, callback: Callable[[], None], runner: _Runner) -> None:
        """Queue a one-shot timer (event time)."""
        heapq.heappush(self._oneshots, (t_ns, next(self._order), callback, runner))

    def deliver(self, msg: Message) -> None:
        """Hand a published message to the outputs and, synchronously, to its subscribers."""
        self.report.published[msg.topic] += 1
        self._write(msg)
        for node, port, runner in self._subs.get(msg.topic, ()):
            self._call(runner, f"on_message:{port}", functools.partial(node.on_message, port, msg))

    def _call(self, runner: _Runner, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            kind = f"{what}:{type(exc).__name__}"
            runner.errors[kind] += 1
            if runner.errors[kind] == 1:
                log.error(
                    "%s: %s raised (counted, replay goes on):\n%s",
                    runner.spec.name,
                    what,
                    traceback.format_exc(),
                )

    def _fire(self, until_ns: int) -> None:
        """One turn of timers: every timer due at ``until_ns`` or before, in due order (what a
        callback schedules meanwhile waits for the next turn, as in the node runner)."""
        calls: list[tuple[int, int, Callable[[], None], _Runner, Any]] = []
        for _, runner in self._nodes:
            if runner.stopping:
                continue
            for t in runner.timers:
                if t.due_ns <= until_ns:
                    calls.append((t.due_ns, next(self._order), t.callback, runner, t))
        while self._oneshots and self._oneshots[0][0] <= until_ns:
            due, order, cb, runner = heapq.heappop(self._oneshots)
            calls.append((due, order, cb, runner, None))
        calls.sort(key=lambda c: (c[0], c[1]))
        for due, _, cb, runner, timer in calls:
            if runner.stopping:
                continue
            self.now_ns = max(self.now_ns, due)
            self._call(runner, "timer", cb)
            if timer is not None:
                timer.due_ns += timer.period_ns
        self.now_ns = max(self.now_ns, until_ns)

    def run(self) -> Report:
        """Set up, feed the whole selection, tear down; return the report."""
        self._build()
        if self._out_path is not None:
            self._writer = SessionWriter(
                self._out_path,
                metadata={
                    "session": {
                        "source": "edgefuse replay --lossless",
                        "pipeline": self.pipeline.name,
                        "recording": ", ".join(p.name for p in self.selection.paths),
                    }
                },
            )
        try:
            self._setup()
            for _, msg in replay_messages(self.selection):
                t = msg.header.t_host_ns
                self._fire(t)  # what was due before this message arrived
                self.now_ns = max(self.now_ns, t)
                self.report.fed[msg.topic] += 1
                for node, port, runner in self._subs.get(msg.topic, ()):
                    if not runner.stopping:
                        self._call(
                            runner,
                            f"on_message:{port}",
                            functools.partial(node.on_message, port, msg),
                        )
                self._fire(self.now_ns)  # what the message made due at once
        finally:
            self._teardown()
        return self.report

    def _teardown(self) -> None:
        for node, runner in self._nodes:
            self._call(runner, "teardown", node.teardown)
            try:
                self.report.counters[node.name] = dict(node.counters())
            except Exception as exc:  # a broken counters() must not lose the outputs
                self.report.counters[node.name] = {"error": f"{type(exc).__name__}: {exc}"}
            if runner.errors:
                self.report.errors[node.name] = dict(runner.errors)
        if self._writer is not None:
            self._writer.close()

    def _write(self, msg: Message) -> None:
        wanted = self._wanted.get(msg.topic)
        if wanted is None:
            wanted = any(fnmatch.fnmatchcase(msg.topic, p.lstrip("/")) for p in self._output_topics)
            self._wanted[msg.topic] = wanted
        if not wanted:
            return
        if self._writer is not None:
            self._writer.write(msg.topic, msg.header, msg.arrays)
        if self._json is not None:
            from edgefuse.introspect import as_json_line

            try:
                line = as_json_line(msg)
            except EdgefuseError as exc:
                import json

                line = json.dumps({"topic": msg.topic, "seq": msg.header.seq, "error": str(exc)})
            self._json.write(line + "\n")
        self.report.written += 1
