"""``edgefuse run``: start each node in its own process, wire them, supervise, stop cleanly.

The launcher gives every publishing node an endpoint (``ipc://`` in the run folder, or
``tcp://bind_host:port``), writes ``graph.json`` for the introspection tools, starts one
``python -m edgefuse.node`` process per node, and then loops: it collects the nodes'
statistics, restarts a crashed node with exponential back-off, redraws the status table about
once a second, and stops on SIGINT/SIGTERM or after ``--duration``. Stopping sends SIGTERM to
every node, SIGKILLs any still alive after 1.5 s, then removes the run's shared-memory
segments and sockets, so nothing is orphaned or leaked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import zmq

from edgefuse import rundir
from edgefuse.node import EXIT_CONFIG, NodeSpec
from edgefuse.pipeline import Pipeline, ResolvedNode
from edgefuse.status import StatusBoard
from edgefuse.transport import shm
from edgefuse.transport.endpoints import free_tcp_port

log = logging.getLogger(__name__)

STOP_GRACE_S = 1.5
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 10.0
#: A node that stayed up this long is considered healthy again: back-off starts over.
HEALTHY_AFTER_S = 10.0


#: Thread-pool sizes given to node processes unless the environment sets them: one thread
#: each (BLAS, OpenMP, OpenCV's parallel_for), so that a node never waits on a pool thread
#: that another process holds the other core from (on 2 cores, OpenCV's 2-thread remap took
#: 20 % more CPU and twice the p99 time of one thread, the machine busy).
NODE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENCV_FOR_THREADS_NUM": "1",
}


@dataclass(slots=True)
class _NodeProc:
    resolved: ResolvedNode
    spec: NodeSpec
    proc: subprocess.Popen[bytes] | None = None
    state: str = "starting"
    restarts: int = 0
    failures_in_row: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    exit_codes: list[int] = field(default_factory=list)
    log_file: TextIO | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.resolved.name,
            "type": self.resolved.config.type,
            "pid": self.proc.pid if self.proc is not None and self.proc.poll() is None else None,
            "state": self.state,
            "restarts": self.restarts,
            "exit_codes": self.exit_codes,
        }


class Launcher:
    """Runs a validated :class:`~edgefuse.pipeline.Pipeline` until stopped."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        duration_s: float | None = None,
        report_path: str | Path | None = None,
        status: str = "auto",
        out: TextIO | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.duration_s = duration_s
        self.report_path = Path(report_path) if report_path else None
        self.out = out or sys.stdout
        tty = self.out.isatty()
        self.status_mode = ("live" if tty else "plain") if status == "auto" else status
        self.run_id = f"{pipeline.name}-{os.getpid()}"
        self.run_dir = rundir.base_dir() / self.run_id
        self.log_dir = self.run_dir / "logs"
        self.board = StatusBoard(pipeline.topics())
        self._stop_requested = False
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._control: zmq.Socket[Any] | None = None
        self._nodes: dict[str, _NodeProc] = {}
        #: Host ``time.monotonic_ns()`` when :meth:`run` started: the run epoch every node
        #: (restarted ones too) receives in its spec, as :attr:`Node.run_start_ns`.
        self.run_start_ns = 0

    # --- set-up ------------------------------------------------------------------------
    def _endpoints(self) -> dict[str, str]:
        t = self.pipeline.transport
        eps: dict[str, str] = {}
        for i, n in enumerate(self.pipeline.nodes.values()):
            if not n.outputs:
                continue
            if t.mode == "ipc":
                eps[n.name] = f"ipc://{self.run_dir}/{n.name}.pub"
            else:
                port = t.base_port + i if t.base_port else free_tcp_port(t.bind_host)
                host = f"[{t.bind_host}]" if ":" in t.bind_host else t.bind_host
                eps[n.name] = f"tcp://{host}:{port}"
        if (
            t.mode == "tcp"
            and t.keys is None
            and t.bind_host not in ("127.0.0.1", "localhost", "::1")
        ):
            log.warning(
                "tcp endpoints bind to %s without CURVE keys: anyone on the network can "
                "subscribe (set transport.keys)",
                t.bind_host,
            )
        return eps

    def _keys_dir(self) -> str | None:
        keys = self.pipeline.transport.keys
        if keys is None:
            return None
        rel = self.pipeline.path.parent / keys
        return str((rel if rel.is_dir() else Path(keys)).resolve())

    def _prepare(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        control = f"ipc://{self.run_dir}/control.sock"
        self._control = self._ctx.socket(zmq.PULL)
        self._control.rcvhwm = 1000
        self._control.bind(control)
        eps = self._endpoints()
        t = self.pipeline.transport
        keys_dir = self._keys_dir()
        for n in self.pipeline.nodes.values():
            spec = NodeSpec(
                name=n.name,
                type=n.config.type,
                # The node's own params over the pipeline's shared ones, as validated.
                params=dict(n.merged_params),
                endpoint=eps.get(n.name, ""),
                inputs={
                    port: (topic, eps[topic.partition("/")[0]]) for port, topic in n.inputs.items()
                },
                control=control,
                run_id=self.run_id,
                queue_depth=t.queue_depth,
                shm_slots=t.shm_slots,
                keys_dir=keys_dir,
                parent_pid=os.getpid(),
                # Set once here, and a restart reuses this spec: one epoch for the whole run.
                run_start_ns=self.run_start_ns,
                nice=n.config.nice,
            )
            self._nodes[n.name] = _NodeProc(n, spec)
        graph = {
            "name": self.pipeline.name,
            "run_id": self.run_id,
            "pid": os.getpid(),
            "started_unix": time.time(),
            "run_start_ns": self.run_start_ns,
            "file": str(self.pipeline.path),
            "keys": keys_dir,
            "transport": t.mode,
            "nodes": {
                name: {"type": p.resolved.config.type, "endpoint": p.spec.endpoint}
                for name, p in self._nodes.items()
            },
            "topics": {
                topic: {"node": node, "stream": stream, "encoding": enc, "endpoint": eps[node]}
                for topic, (node, stream, enc) in self.pipeline.topics().items()
            },
        }
        tmp = self.run_dir / "graph.json.tmp"
        tmp.write_text(json.dumps(graph, indent=2))
        tmp.replace(self.run_dir / "graph.json")

    def _start(self, p: _NodeProc) -> None:
        # One process per node: numpy's BLAS and OpenMP pools would otherwise start a thread
        # per core in every node, and their idle threads spin (measured: the infer node took
        # 0.86 of a core at 16 sets/s with them, 0.39 without). Threads a node wants (an
        # inference backend's) are set explicitly; a value the user exported is kept.
        env = {**NODE_THREAD_ENV, **os.environ, "EDGEFUSE_NODE_SPEC": p.spec.to_json()}
        if self.status_mode == "live":
            # Logs would tear the live table: send them to the node's log file.
            if p.log_file is None:
                p.log_file = open(self.log_dir / f"{p.resolved.name}.log", "a")  # noqa: SIM115
            stdout: Any = p.log_file
        else:
            stdout = None
        p.proc = subprocess.Popen(
            [sys.executable, "-m", "edgefuse.node"],
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT if stdout is not None else None,
            start_new_session=True,
        )
        p.state = "running"
        p.started_at = time.monotonic()

    # --- supervision -------------------------------------------------------------------
    def _supervise(self, now: float) -> None:
        for p in self._nodes.values():
            if p.state == "backoff" and now >= p.next_start:
                p.restarts += 1
                self._start(p)
                continue
            if p.proc is None or p.state != "running":
                continue
            code = p.proc.poll()
            if code is None:
                continue
            p.exit_codes.append(code)
            self._forget_segments(p.proc.pid)
            policy = p.resolved.config.restart
            if code == 0 and policy != "always":
                p.state = "finished"
                log.info("%s finished", p.resolved.name)
                continue
            if policy == "never" or code == EXIT_CONFIG:
                p.state = "failed"
                log.error("%s exited with %s (restart: never)", p.resolved.name, code)
                continue
            if now - p.started_at > HEALTHY_AFTER_S:
                p.failures_in_row = 0
            delay = min(BACKOFF_FIRST_S * 2**p.failures_in_row, BACKOFF_MAX_S)
            p.failures_in_row += 1
            p.state = "backoff"
            p.next_start = now + delay
            log.warning("%s exited with %s; restarting in %.1f s", p.resolved.name, code, delay)

    def _forget_segments(self, pid: int) -> None:
        # A crashed node cannot unlink its own shared memory; its segments carry its pid.
        for name in shm.list_segments(f"{shm.PREFIX}{self.run_id}."):
            if f".{pid}." in name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(shm.SHM_DIR, name))

    def _collect(self, timeout_ms: int) -> None:
        assert self._control is not None
        if not self._control.poll(timeout_ms):
            return
        while True:
            try:
                report = self._control.recv_json(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except ValueError:
                continue  # a garbled report is not worth stopping for
            if isinstance(report, dict):
                self.board.ingest(report)

    def request_stop(self, *_args: object) -> None:
        """Ask the run loop to stop (signal handler)."""
        self._stop_requested = True

    def _draw(self) -> None:
        table = self.board.table([p.summary() for p in self._nodes.values()])
        head = f"edgefuse run {self.pipeline.path}  [{self.run_id}]  Ctrl-C to stop"
        if self.status_mode == "live":
            self.out.write(f"\x1b[H\x1b[J{head}\n\n{table}\n\nlogs: {self.log_dir}\n")
        else:
            self.out.write(f"{head}\n{table}\n\n")
        self.out.flush()

    def run(self) -> int:
        """Launch, supervise until stopped or ``duration_s`` elapsed, stop; return exit code."""
        old = {s: signal.signal(s, self.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.run_start_ns = time.monotonic_ns()
            self._prepare()
            for p in self._nodes.values():
                self._start(p)
            start = time.monotonic()
            next_draw = start + 1.0
            draw_period = 1.0 if self.status_mode == "live" else 5.0
            while not self._stop_requested:
                self._collect(50)
                now = time.monotonic()
                self._supervise(now)
                if self.duration_s is not None and now - start >= self.duration_s:
                    break
                if all(p.state in ("finished", "failed") for p in self._nodes.values()):
                    break
                if self.status_mode != "off" and now >= next_draw:
                    self._draw()
                    next_draw = now + draw_period
        finally:
            self._stop()
            for s, h in old.items():
                signal.signal(s, h)
        failed = [p for p in self._nodes.values() if p.state == "failed"]
        return 1 if failed else 0

    def _stop(self) -> None:
        alive = [p for p in self._nodes.values() if p.proc is not None and p.proc.poll() is None]
        for p in alive:
            assert p.proc is not None
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGTERM)
        # Each node gets the launcher's grace, or its own when longer (a recorder flushing
        # its queue to disk must not be killed halfway through: that would lose data).
        start = time.monotonic()
        grace = {id(p): max(STOP_GRACE_S, p.resolved.cls.stop_grace_s) for p in alive}
        while any(
            p.proc is not None and p.proc.poll() is None and time.monotonic() - start < grace[id(p)]
            for p in alive
        ):
            if self._control is not None:
                self._collect(20)  # the nodes' last reports
            else:
                time.sleep(0.02)
        for p in alive:
            assert p.proc is not None
            if p.proc.poll() is None:
                log.warning("%s did not stop within %.1f s: killed", p.resolved.name, grace[id(p)])
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.proc.pid, signal.SIGKILL)
            p.proc.wait()
            if p.state == "running":
                p.state = "stopped"
        if self._control is not None:
            self._collect(0)
            self._control.close(linger=0)
        self._ctx.term()
        for p in self._nodes.values():
            if p.log_file is not None:
                p.log_file.close()
        shm.unlink_segments(f"{shm.PREFIX}{self.run_id}.")
        self._write_report()
        # Keep the logs; remove sockets and the graph so the run no longer shows as running.
        for f in self.run_dir.glob("*"):
            if f.name != "logs":
                with contextlib.suppress(OSError):
                    f.unlink()
        if self.log_dir.is_dir() and not any(self.log_dir.iterdir()):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _write_report(self) -> None:
        nodes = [p.summary() for p in self._nodes.values()]
        report = self.board.report(nodes, pipeline=self.pipeline.name, run_id=self.run_id)
        if self.status_mode != "off":
            self.out.write(self.board.table(nodes) + "\n")
        if self.report_path is not None:
            self.report_path.parent.mkdir(parents=True, exist_ok=True)
            self.report_path.write_text(json.dumps(report, indent=2))
