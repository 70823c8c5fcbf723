"""The node base class, and the loop that runs one node in its own process.

A node declares its parameters (a frozen dataclass), its output streams and its input
ports; the pipeline file maps each input port to a topic. The runner owns the sockets: one
:class:`~edgefuse.transport.Publisher` for all outputs, one
:class:`~edgefuse.transport.Subscriber` for all inputs, timers on the host monotonic clock,
periodic statistics to the launcher, and a clean stop on SIGINT/SIGTERM. A node survives bad
data: an exception in a callback is counted and logged, and the loop goes on. All nodes of one
run share a run epoch (:attr:`Node.run_start_ns`), so that simulated sensors in separate
processes agree on when their simulated time 0 is.

Run a node process with ``python -m edgefuse.node`` and a JSON spec in ``EDGEFUSE_NODE_SPEC``
(the launcher does this).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import heapq
import importlib
import itertools
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import zmq

from edgefuse.envelope import Header, Message
from edgefuse.errors import ConfigError, EdgefuseError
from edgefuse.transport import CurveKeys, Publisher, Subscriber, TransportOptions

log = logging.getLogger(__name__)

#: Short names of the nodes that ship with edgefuse. Plugins add theirs through the
#: ``edgefuse.nodes`` entry-point group; any node can also be named ``package.module:Class``.
BUILTIN_NODES: dict[str, str] = {
    "test_pattern": "edgefuse.sensors.test_pattern:TestPatternNode",
    "pattern_check": "edgefuse.sensors.test_pattern:PatternCheckNode",
    "sim_camera": "edgefuse.sim.nodes:SimCameraNode",
    "sim_depth": "edgefuse.sim.nodes:SimDepthNode",
    "sim_lidar": "edgefuse.sim.nodes:SimLidarNode",
    "sim_mic": "edgefuse.sim.nodes:SimMicNode",
    "sim_truth": "edgefuse.sim.nodes:SimTruthNode",
    "aligner": "edgefuse.sync.node:AlignerNode",
    "infer": "edgefuse.runtime.node:InferNode",
    "live_map": "edgefuse.model.live:LiveScoreNode",
    "camera": "edgefuse.sensors.camera:CameraNode",
    "microphone": "edgefuse.sensors.microphone:MicrophoneNode",
    "depth": "edgefuse.sensors.depth:DepthNode",
    "lidar": "edgefuse.sensors.lidar:LidarNode",
    "recorder": "edgefuse.record.recorder:RecorderNode",
    "replay": "edgefuse.record.replay:ReplayNode",
}


#: Exit code of a node process whose configuration is wrong (sysexits EX_CONFIG): the
#: launcher does not restart it.
EXIT_CONFIG = 78


@dataclass(frozen=True, kw_only=True)
class NoParams:
    """Parameters of a node that takes none."""


class Node:
    """Base class of every pipeline node.

    Subclasses set :attr:`Params`, :attr:`outputs` and :attr:`inputs`, and override
    :meth:`setup`, :meth:`on_message` and :meth:`teardown` as needed. Inside them,
    :meth:`publish`, :meth:`loan`, :meth:`every` and :meth:`at` are the way to the outside
    world.
    """

    #: The parameters dataclass (frozen, keyword-only); validated from the pipeline file.
    Params: ClassVar[type[Any]] = NoParams
    #: Output streams and their encodings; topics are ``<node name>/<stream>``.
    outputs: ClassVar[Mapping[str, str]] = {}
    #: Input ports; the pipeline maps each to a topic.
    inputs: ClassVar[Sequence[str]] = ()
    #: How long the launcher waits for this node to stop after SIGTERM before killing it
    #: (the launcher's own grace when that is longer).
    stop_grace_s: ClassVar[float] = 0.0

    def __init__(self, *, name: str, params: Any, runner: NodeRunner | None = None) -> None:
        self.name = name
        self.params = params
        self._runner = runner
        self.log = logging.getLogger(f"edgefuse.node.{name}")

    @classmethod
    def output_streams(cls, params: Any) -> Mapping[str, str]:
        """The output streams (stream -> encoding) of a node built with ``params``:
        :attr:`outputs` unless they depend on its configuration (a replay node declares its
        recording's)."""
        return cls.outputs

    @classmethod
    def input_ports(cls, params: Any) -> Sequence[str]:
        """The input ports of a node built with ``params``: :attr:`inputs` unless the node's
        ports depend on its configuration (the aligner has one per configured stream)."""
        return cls.inputs

    # --- hooks -------------------------------------------------------------------------
    def setup(self) -> None:
        """Called once in the node's process before any message or timer."""

    def on_message(self, port: str, msg: Message) -> None:
        """Called for every well-formed message on input ``port``."""

    def teardown(self) -> None:
        """Called once when the node stops (also after a failure in a callback)."""

    def counters(self) -> Mapping[str, int | float]:
        """The node's own counters, sent with its statistics and shown in the status table
        (flat names, small numbers: ``sets``, ``partial``, ``late``, ...)."""
        return {}

    # --- services ------------------------------------------------------------------------
    @property
    def runner(self) -> NodeRunner:
        """The runner hosting this node (raises if the node is not running)."""
        if self._runner is None:
            raise RuntimeError(f"node {self.name} is not running")
        return self._runner

    def publish(self, stream: str, arrays: Sequence[np.ndarray] = (), **kw: Any) -> Header:
        """Publish on ``<name>/<stream>``; keywords as :meth:`Publisher.publish`."""
        if stream not in self.outputs:
            raise ValueError(
                f"{self.name}: {stream!r} is not an output (have {list(self.outputs)})"
            )
        kw.setdefault("encoding", self.outputs[stream])
        return self.runner.publisher.publish(stream, arrays, **kw)

    def loan(self, stream: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        """A writable array to fill and publish on ``stream`` without a copy."""
        return self.runner.publisher.loan(stream, shape, dtype)

    def every(self, period_s: float, callback: Callable[[], None]) -> None:
        """Call ``callback`` every ``period_s`` seconds on a fixed schedule (no drift)."""
        period_ns = round(period_s * 1e9)
        if period_ns <= 0:
            raise ValueError(f"timer period must be > 0, got {period_s}")
        self.runner.timers.append(_Timer(period_ns, callback, time.monotonic_ns() + period_ns))

    def at(self, t_ns: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when host ``time.monotonic_ns()`` reaches ``t_ns``, never
        earlier; a time already past fires at the next turn of the loop. Callbacks due at the
        same time fire in the order they were scheduled, and a callback may schedule the next
        one (publish frame k, render k+1, then ``at(delivery of k+1, ...)``)."""
        self.runner.at(t_ns, callback)

    @property
    def run_start_ns(self) -> int:
        """Host monotonic time (ns) at which the run started: the same for every node of a
        run, restarted ones included (a node started on its own gets its runner's start)."""
        return self.runner.run_start_ns

    def stop(self) -> None:
        """Ask the runner to stop after the current callback (a finished source calls this)."""
        self.runner.stopping = True


@dataclass(slots=True)
class _Timer:
    period_ns: int
    callback: Callable[[], None]
    due_ns: int


#: The loop wakes at least this often, to notice a stop and send statistics.
_MAX_WAIT_NS = 50_000_000


def resolve_node_type(type_name: str) -> type[Node]:
    """The node class for ``type_name``: a built-in short name, an ``edgefuse.nodes`` entry
    point, or ``package.module:Class``. Raises ``ConfigError`` listing what is known."""
    target = BUILTIN_NODES.get(type_name)
    if target is None:
        for ep in metadata.entry_points(group="edgefuse.nodes"):
            if ep.name == type_name:
                target = ep.value
                break
    if target is None and ":" in type_name:
        target = type_name
    if target is None:
        known = ", ".join(sorted(BUILTIN_NODES))
        raise ConfigError(
            f"unknown node type {type_name!r}; expected one of: {known}, or package.module:Class"
        )
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"node type {type_name!r} ({target}) cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Node)):
        raise ConfigError(f"node type {type_name!r} ({target}) is not an edgefuse Node")
    return cls


@dataclass(frozen=True, kw_only=True)
class NodeSpec:
    """Everything a node process needs, handed over by the launcher as JSON."""

    name: str
    type: str
    params: dict[str, Any]
    #: Endpoint this node's publisher binds ("" when it has no outputs).
    endpoint: str = ""
    #: Input port -> (topic, endpoint of its publisher).
    inputs: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    control: str = ""
    run_id: str = "solo"
    queue_depth: int = 16
    shm_slots: int = 16
    keys_dir: str | None = None
    stats_period_s: float = 0.5
    parent_pid: int = 0
    #: Host ``time.monotonic_ns()`` when the run started: one value for all nodes of a run,
    #: kept across restarts. 0 (a node started on its own): the runner's own start time.
    run_start_ns: int = 0
    #: Niceness the node process adds to itself at start (the pipeline's ``nice:``).
    nice: int = 0

    def to_json(self) -> str:
        """Serialise for the environment of the node process."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NodeSpec:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        data["inputs"] = {k: tuple(v) for k, v in data.get("inputs", {}).items()}
        return cls(**data)


class NodeRunner:
    """Hosts one node: sockets, timers, the event loop, statistics and a clean stop."""

    def __init__(self, node_cls: type[Node], params: Any, spec: NodeSpec) -> None:
        self.spec = spec
        self.ctx: zmq.Context[Any] = zmq.Context()
        keys = CurveKeys.load(spec.keys_dir) if spec.keys_dir else None
        self.options = TransportOptions(
            queue_depth=spec.queue_depth, shm_slots=spec.shm_slots, keys=keys, run_id=spec.run_id
        )
        self.timers: list[_Timer] = []
        # One-shot timers: a heap of (due ns, scheduling order, callback); the order breaks
        # ties so that equal times fire first-scheduled first (and callbacks are never compared).
        self._oneshots: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.stopping = False
        self.errors: Counter[str] = Counter()
        # Set before the node exists, so that its constructor can already read it.
        self._run_start_ns = spec.run_start_ns or time.monotonic_ns()
        self.node = node_cls(name=spec.name, params=params, runner=self)
        self._publisher: Publisher | None = None
        self.subscriber: Subscriber | None = None
        self._port_of: dict[str, str] = {topic: port for port, (topic, _) in spec.inputs.items()}
        self._control: zmq.Socket[Any] | None = None
        self._late_overruns: Counter[str] = Counter()

    @property
    def run_start_ns(self) -> int:
        """The run epoch: ``spec.run_start_ns``, or this runner's creation time if that is 0."""
        return self._run_start_ns

    def at(self, t_ns: int, callback: Callable[[], None]) -> None:
        """Schedule ``callback`` once at host monotonic time ``t_ns`` (see :meth:`Node.at`)."""
        if isinstance(t_ns, bool) or not isinstance(t_ns, (int, np.integer)):
            raise TypeError(f"at() takes an int time in ns (time.monotonic_ns()), got {t_ns!r}")
        heapq.heappush(self._oneshots, (int(t_ns), next(self._order), callback))

    @property
    def publisher(self) -> Publisher:
        """The node's publisher (created when first needed)."""
        if self._publisher is None:
            if not self.spec.endpoint:
                raise RuntimeError(f"node {self.spec.name} has no outputs to publish on")
            self._publisher = Publisher(
                self.spec.endpoint, node=self.spec.name, options=self.options, context=self.ctx
            )
        return self._publisher

    def _open(self) -> None:
        if self.spec.endpoint:
            _ = self.publisher
        if self.spec.inputs:
            endpoints = sorted({ep for _, ep in self.spec.inputs.values()})
            self.subscriber = Subscriber(
                endpoints, self._port_of, options=self.options, context=self.ctx
            )
        if self.spec.control:
            self._control = self.ctx.socket(zmq.PUSH)
            self._control.linger = 200
            self._control.sndhwm = 16
            self._control.connect(self.spec.control)

    def run(self) -> int:
        """Run until stopped; return the process exit code (0 clean, 1 failed setup,
        :data:`EXIT_CONFIG` when setup found the configuration wrong)."""
        self._open()
        try:
            self.node.setup()
        except ConfigError as exc:
            # A missing file or sensor named by the configuration: a restart cannot fix it.
            log.error("%s: %s", self.spec.name, exc)
            self._close()
            return EXIT_CONFIG
        except Exception:
            log.error("%s: setup failed:\n%s", self.spec.name, traceback.format_exc())
            self._close()
            return 1
        stats_period_ns = round(self.spec.stats_period_s * 1e9)
        next_stats = time.monotonic_ns()
        sent_latency: dict[str, int] = {}
        try:
            while not self.stopping:
                now = time.monotonic_ns()
                due = now + _MAX_WAIT_NS
                for t in self.timers:
                    due = min(due, t.due_ns)
                if self._oneshots:
                    due = min(due, self._oneshots[0][0])
                wait_ns = due - now
                if self.subscriber is not None:
                    # Whole ms, rounded down: waking early costs a short spin until the timer
                    # is due; waking late would make it late.
                    if self.subscriber.socket.poll(max(0, wait_ns // 1_000_000)):
                        self._drain()
                elif wait_ns > 0:
                    time.sleep(wait_ns / 1e9)
                now = time.monotonic_ns()
                self._fire_timers(now)
                if now >= next_stats:
                    self._report(sent_latency)
                    next_stats = now + stats_period_ns
        finally:
            self._call("teardown", self.node.teardown)
            self._report(sent_latency)
            self._close()
        return 0

    def _fire_timers(self, now: int) -> None:
        # Only what is due at ``now``: a one-shot scheduled by one of these callbacks waits
        # for the next turn, even if already past, so a callback that keeps rescheduling
        # itself cannot starve messages. Due order across both kinds; the sort is stable, so
        # one-shots due together keep their scheduling order.
        calls: list[tuple[int, _Timer | None, Callable[[], None]]] = [
            (t.due_ns, t, t.callback) for t in self.timers if t.due_ns <= now
        ]
        while self._oneshots and self._oneshots[0][0] <= now:
            due, _, callback = heapq.heappop(self._oneshots)
            calls.append((due, None, callback))
        calls.sort(key=lambda c: c[0])
        for _, timer, callback in calls:
            if self.stopping:
                return
            self._call("timer", callback)
            if timer is not None:
                # Fixed schedule; if we fell behind by more than a period, skip ahead.
                timer.due_ns += timer.period_ns
                if timer.due_ns < now:
                    timer.due_ns = now + timer.period_ns

    def _drain(self) -> None:
        assert self.subscriber is not None
        for _ in range(64):  # bounded, so timers still run under a flood
            msg = self.subscriber.recv(timeout_ms=0)
            if msg is None:
                return
            port = self._port_of[msg.topic]
            self._call(f"on_message:{port}", functools.partial(self.node.on_message, port, msg))
            if not msg.intact():
                # The slot was reused while the callback ran: whatever it computed may mix
                # two frames. Count it so the status table shows the ring is too small.
                self.subscriber.stats[msg.topic].overruns += 1
                self._late_overruns[msg.topic] += 1
            if self.stopping:
                return

    def _call(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            kind = f"{what}:{type(exc).__name__}"
            first = kind not in self.errors
            self.errors[kind] += 1
            if first:
                log.error(
                    "%s: %s raised (counted, node goes on):\n%s",
                    self.spec.name,
                    what,
                    traceback.format_exc(),
                )

    def stats(self, sent_latency: dict[str, int] | None = None) -> dict[str, Any]:
        """The node's counters as a JSON-ready dict (latency: samples new since last call)."""
        published = {}
        if self._publisher is not None:
            published = {
                t: {"messages": s.messages, "bytes": s.bytes}
                for t, s in self._publisher.stats.items()
            }
        received: dict[str, Any] = {}
        if self.subscriber is not None:
            for topic, s in self.subscriber.stats.items():
                snap = s.snapshot()
                samples = snap.pop("latency_ns")
                if sent_latency is not None:
                    # Send only samples not yet reported (the deque keeps the newest).
                    new = s.messages - sent_latency.get(topic, 0)
                    sent_latency[topic] = s.messages
                    samples = samples[-new:] if new > 0 else []
                snap["latency_ns"] = samples
                received[topic] = snap
            bad = self.subscriber.unattributed
            if bad.malformed:
                received["?"] = {"malformed": dict(bad.malformed)}
        counters: dict[str, int | float] = {}
        try:
            counters = dict(self.node.counters())
        except Exception as exc:  # a broken counters() must not stop the statistics
            self.errors[f"counters:{type(exc).__name__}"] += 1
        return {
            "node": self.spec.name,
            "pid": os.getpid(),
            "t_ns": time.monotonic_ns(),
            "published": published,
            "received": received,
            "errors": dict(self.errors),
            "counters": counters,
        }

    def _report(self, sent_latency: dict[str, int]) -> None:
        if self._control is None:
            return
        # Stats are best effort: if the launcher is busy or gone, this report is skipped.
        with contextlib.suppress(zmq.Again):
            self._control.send_json(self.stats(sent_latency), flags=zmq.NOBLOCK)

    def _close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
        if self.subscriber is not None:
            self.subscriber.close()
        if self._control is not None:
            self._control.close()
        self.ctx.term()


def _die_with_parent(parent_pid: int) -> None:
    # Linux: get SIGTERM when the launcher dies, even by SIGKILL, so no node is orphaned.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if parent_pid and os.getppid() != parent_pid:
        sys.exit(0)  # the launcher is already gone


def _renice(name: str, nice: int) -> None:
    # A negative niceness (ahead of the other processes) needs CAP_SYS_NICE or RLIMIT_NICE; a
    # node that may not have it still runs, at the priority it was started with.
    try:
        os.nice(nice)
    except PermissionError:
        logging.getLogger(__name__).warning(
            "%s: nice %d needs root, CAP_SYS_NICE or a 'nice' limit in "
            "/etc/security/limits.conf; running at the launcher's priority",
            name,
            nice,
        )


def main() -> int:
    """Entry point of a node process (``python -m edgefuse.node``)."""
    spec = NodeSpec.from_json(os.environ["EDGEFUSE_NODE_SPEC"])
    logging.basicConfig(
        level=os.environ.get("EDGEFUSE_LOG_LEVEL", "INFO"),
        format=f"%(asctime)s {spec.name} %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if spec.nice:
        _renice(spec.name, spec.nice)
    _die_with_parent(spec.parent_pid)
    from edgefuse import config

    try:
        node_cls = resolve_node_type(spec.type)
        params = config.build(node_cls.Params, spec.params)
        runner = NodeRunner(node_cls, params, spec)
    except EdgefuseError as exc:
        # Restarting cannot fix a configuration error: say so with a distinct exit code.
        log.error("%s: %s", spec.name, exc)
        return EXIT_CONFIG

    def on_signal(signum: int, _frame: object) -> None:
        runner.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    profile_dir = os.environ.get("EDGEFUSE_PROFILE_DIR")
    if not profile_dir:
        return runner.run()
    # Where a node's CPU goes, live: pstats files per node (python -m pstats DIR/NODE.prof).
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(runner.run)
    finally:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(Path(profile_dir) / f"{spec.name}.prof"))


if __name__ == "__main__":
    # Run through the imported module, not __main__, so that node classes subclass the same
    # ``edgefuse.node.Node`` that ``resolve_node_type`` checks against.
    from edgefuse.node import main as _main

    sys.exit(_main())
