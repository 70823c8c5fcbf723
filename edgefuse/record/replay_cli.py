"""``edgefuse replay``: a recorded session as live topics, into a pipeline, or lossless.

- ``edgefuse replay FILE``: the recording's topics are published as a running pipeline (one
  replay node per recorded node), for ``edgefuse echo`` or a pipeline started apart.
- ``--pipeline P.yaml``: that pipeline runs with its source nodes (no inputs, their topics in
  the recording) replaced by replay nodes of the same names; the other nodes run as usual.
- ``--lossless --pipeline P.yaml``: the deterministic in-process executor
  (:mod:`edgefuse.record.executor`): every set processed, the same outputs on every run,
  written with ``-o OUT.mcap`` and/or ``--json-out DETS.jsonl``.

On a terminal, the keyboard drives paced replay: space pauses and resumes, ``s`` steps one
message (pausing first), ``+``/``-`` double and halve the rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select as _select
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from edgefuse.errors import ConfigError
from edgefuse.record.playback import PlaybackClock
from edgefuse.record.replay import ReplayNode, ReplayParams
from edgefuse.record.selection import Selection, replay_messages, select

_NODE_TYPE = "edgefuse.record.replay:ReplayNode"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def register(sub: Any) -> None:
    """Add the ``replay`` verb to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "replay",
        help="replay a recorded session (like ros2 bag play), into a pipeline, or lossless",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(fn=run_replay)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``replay`` verb's arguments."""
    p.add_argument("file", nargs="+", help="session file(s), or a glob of split files")
    p.add_argument("--pipeline", metavar="P.yaml", help="run this pipeline on the recording")
    p.add_argument("--rate", type=float, default=1.0, help="speed factor (2: twice as fast)")
    p.add_argument("--loop", action="store_true", help="start again at the end, forever")
    p.add_argument("--start-offset", type=float, default=0.0, metavar="S", help="skip S seconds")
    p.add_argument("--duration", type=float, default=0.0, metavar="S", help="replay S seconds")
    p.add_argument("--topics", nargs="+", default=["*"], metavar="T", help="names or globs")
    p.add_argument("--remap", nargs="+", default=[], metavar="A=B", help="publish topic A as B")
    p.add_argument(
        "--lossless", action="store_true", help="every set processed, deterministic (in-process)"
    )
    p.add_argument("-o", "--out", metavar="OUT.mcap", help="lossless: write outputs here")
    p.add_argument("--json-out", metavar="FILE.jsonl", help="lossless: outputs as JSON lines")
    p.add_argument(
        "--output-topics", nargs="+", default=["*"], metavar="T", help="lossless: what to write"
    )
    p.add_argument(
        "--start-delay",
        type=float,
        metavar="S",
        help="paced: wait S s for the nodes to start (default 2, 5 with --pipeline)",
    )
    p.add_argument(
        "--status", choices=["auto", "live", "plain", "off"], default="auto", help="status table"
    )
    p.add_argument("--json", action="store_true", help="lossless: print the report as JSON")


def parse_remap(items: Sequence[str]) -> dict[str, str]:
    """``["a/x=b/y", ...]`` -> ``{"a/x": "b/y"}``; ``ConfigError`` for a malformed item."""
    out: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip("/") or not new.strip("/"):
            raise ConfigError(
                f"--remap {item!r}: expected RECORDED=NEW, e.g. camera/image=cam/image"
            )
        out[old.strip().lstrip("/")] = new.strip().lstrip("/")
    return out


def run_replay(args: argparse.Namespace) -> int:
    """The ``replay`` verb."""
    if not args.rate > 0:
        raise ConfigError(f"--rate must be > 0, got {args.rate}")
    if not args.lossless and (args.out or args.json_out):
        raise ConfigError(
            "-o and --json-out need --lossless (record a paced replay with 'edgefuse record')"
        )
    if args.lossless and not args.pipeline:
        raise ConfigError("--lossless runs a pipeline on the recording: give --pipeline P.yaml")
    sel = select(
        args.file,
        topics=args.topics,
        remap=parse_remap(args.remap),
        start_offset_s=args.start_offset,
        duration_s=args.duration,
    )
    if args.lossless:
        return _run_lossless(args, sel)
    return _run_paced(args, sel)


def _run_lossless(args: argparse.Namespace, sel: Selection) -> int:
    from edgefuse.pipeline import load_pipeline
    from edgefuse.record.executor import LosslessExecutor

    pipe = load_pipeline(args.pipeline)
    with contextlib.ExitStack() as stack:
        js: TextIO | None = None
        if args.json_out:
            try:
                js = stack.enter_context(open(args.json_out, "w"))
            except OSError as exc:
                raise ConfigError(f"{args.json_out}: cannot write: {exc.strerror}") from None
        ex = LosslessExecutor(
            pipe, sel, out=args.out, json_out=js, output_topics=args.output_topics
        )
        report = ex.run().to_json()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, why in report["skipped"].items():
            print(f"left out {name}: {why}")
        fed = sum(report["fed"].values())
        print(f"fed {fed} recorded messages ({', '.join(report['fed'])})")
        for topic, n in report["published"].items():
            print(f"{topic:24s} {n:8d} published")
        for name, c in report["counters"].items():
            print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in c.items()))
        for name, e in report["errors"].items():
            print(f"{name}: errors {e}", file=sys.stderr)
        wrote = [p for p in (args.out, args.json_out) if p]
        if wrote:
            print(f"wrote {report['written']} messages to {', '.join(wrote)}")
    return 0


# --- paced replay through the launcher ---------------------------------------------------------


def _replay_node(
    name: str, sel: Selection, recorded: list[str], args: argparse.Namespace, control: str
) -> Any:
    from edgefuse.pipeline import NodeConfig, ResolvedNode

    delay = args.start_delay if args.start_delay is not None else (5.0 if args.pipeline else 2.0)
    raw: dict[str, Any] = {
        "path": [str(p) for p in sel.paths],
        "rate": args.rate,
        "loop": args.loop,
        "start_offset_s": args.start_offset,
        "duration_s": args.duration,
        "topics": recorded,
        "remap": {t: sel.topics[t] for t in recorded if sel.topics[t] != t},
        "start_delay_s": delay,
        "control": control,
    }
    params = ReplayParams(**raw)
    streams = {sel.topics[t].partition("/")[2]: sel.encodings[t] for t in recorded}
    return ResolvedNode(
        name,
        NodeConfig(type=_NODE_TYPE, params=raw, restart="never"),
        ReplayNode.declaring(name, streams),
        params,
        {},
        raw,
        outputs=dict(streams),
    )


def build_paced_pipeline(args: argparse.Namespace, sel: Selection, control: str) -> Any:
    """The pipeline a paced replay runs: replay nodes named after the recorded nodes, alone
    or in place of ``--pipeline``'s source nodes."""
    from edgefuse.pipeline import Pipeline, TransportConfig, load_pipeline

    by_node: dict[str, list[str]] = {}
    for old, new in sel.topics.items():
        by_node.setdefault(new.partition("/")[0], []).append(old)
    if not args.pipeline:
        bad = [n for n in by_node if not _NAME.match(n)]
        if bad:
            raise ConfigError(
                f"recorded node name(s) {', '.join(bad)} cannot name a node: --remap them"
            )
        nodes = {n: _replay_node(n, sel, ts, args, control) for n, ts in sorted(by_node.items())}
        # Not the .mcap itself: tools reading a run's pipeline file (the recorder looks for
        # its rig there) must not parse a recording as YAML.
        return Pipeline("replay", Path(f"{sel.paths[0]} (replay)"), TransportConfig(), nodes)
    pipe = load_pipeline(args.pipeline)
    nodes = {}
    replaced: set[str] = set()
    for name, r in pipe.nodes.items():
        outs = {f"{name}/{s}" for s in r.outputs}
        recorded = [t for t in by_node.get(name, []) if sel.topics[t] in outs]
        if not r.inputs and recorded:
            nodes[name] = _replay_node(name, sel, recorded, args, control)
            replaced.add(name)
        else:
            nodes[name] = r
    if not replaced:
        raise ConfigError(
            f"{args.pipeline}: the recording replaces none of its source nodes (recorded: "
            f"{', '.join(sorted(sel.topics.values()))})"
        )
    unused = sorted(t for n, ts in by_node.items() if n not in replaced for t in ts)
    if unused:
        print(
            f"not replayed (no source node of the pipeline publishes them): {', '.join(unused)}",
            file=sys.stderr,
        )
    return Pipeline(pipe.name, pipe.path, pipe.transport, nodes)


def _run_paced(args: argparse.Namespace, sel: Selection) -> int:
    from edgefuse import rundir

    keys = sys.stdin.isatty()
    control = ""
    if keys:
        rundir.base_dir().mkdir(parents=True, exist_ok=True)
        fd, control = tempfile.mkstemp(prefix="replay-", suffix=".clock", dir=rundir.base_dir())
        os.close(fd)
    try:
        pipeline = build_paced_pipeline(args, sel, control)
        clock = PlaybackClock.create(control, rate=args.rate) if control else None
        launcher = _replay_launcher(pipeline, clock, status=args.status)
        keyboard = None
        if clock is not None:
            keyboard = KeyboardControl(clock, sys.stdin.fileno(), next_after=_next_times(sel, args))
            keyboard.start()
        try:
            return int(launcher.run())
        finally:
            if keyboard is not None:
                keyboard.stop()
    finally:
        if control:
            with contextlib.suppress(OSError):
                os.unlink(control)


#: Once the replay nodes are done, the rest of the pipeline gets this long to finish its work.
DRAIN_S = 1.5


def _replay_launcher(pipeline: Any, clock: PlaybackClock | None, *, status: str) -> Any:
    """A launcher that starts ``clock`` with the run and stops the run once every replay node
    has finished and the others had :data:`DRAIN_S` to process what they sent."""
    import time

    from edgefuse.launch import Launcher

    class ReplayLauncher(Launcher):
        _done_at: float | None = None

        def _prepare(self) -> None:
            super()._prepare()
            if clock is not None:
                first = min(n.params.start_delay_s for n in self._replays())
                clock.start(self.run_start_ns + round(first * 1e9))

        def _replays(self) -> list[Any]:
            return [n for n in self.pipeline.nodes.values() if isinstance(n.params, ReplayParams)]

        def _supervise(self, now: float) -> None:
            super()._supervise(now)
            names = {n.name for n in self._replays()}
            done = all(
                p.state in ("finished", "failed") for n, p in self._nodes.items() if n in names
            )
            if not done:
                return
            if self._done_at is None:
                self._done_at = time.monotonic()
            elif time.monotonic() - self._done_at >= DRAIN_S:
                self.request_stop()

    return ReplayLauncher(pipeline, status=status)


# --- the keyboard -------------------------------------------------------------------------------


def _next_times(sel: Selection, args: argparse.Namespace) -> Callable[[int], int | None]:
    """The session time of the first message after a given one (for stepping), read lazily
    from the file alongside the replay nodes."""
    it: Iterator[tuple[int, Any]] = replay_messages(sel, loops=None if args.loop else 1)
    last = -1

    def after(v_ns: int) -> int | None:
        nonlocal last
        while last <= v_ns:
            item = next(it, None)
            if item is None:
                return None
            last = item[0]
        return last

    return after


class KeyboardControl:
    """Keys on a terminal drive a :class:`PlaybackClock`: space pauses/resumes, ``s`` steps
    one message, ``+``/``-`` double/halve the rate. Reads ``fd`` on a thread in cbreak mode
    (restored by :meth:`stop`); :meth:`handle` takes one key directly."""

    def __init__(
        self,
        clock: PlaybackClock,
        fd: int,
        *,
        next_after: Callable[[int], int | None],
        out: TextIO | None = None,
    ) -> None:
        self.clock = clock
        self.fd = fd
        self._next_after = next_after
        self._out = out or sys.stderr
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: Any = None

    def handle(self, key: str) -> None:
        """Apply one key."""
        import time

        now = time.monotonic_ns()
        c = self.clock
        if key == " ":
            if c.paused:
                c.resume(now)
                self._say(f"playing at x{c.rate:g}")
            else:
                c.pause(now)
                self._say("paused (space: resume, s: step)")
        elif key == "s":
            c.pause(now)
            nxt = self._next_after(c.session_ns(now))
            if nxt is None:
                self._say("end of the recording")
            else:
                c.step_to(nxt)
                self._say(f"step to {nxt / 1e9:.3f} s")
        elif key in "+-" and key:
            rate = c.rate * 2 if key == "+" else c.rate / 2
            c.set_rate(rate, now)
            self._say(f"rate x{rate:g}")

    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._out.write(f"[replay] {text}\n")
            self._out.flush()

    def start(self) -> None:
        """Put the terminal in cbreak mode and read keys on a thread."""
        import termios
        import tty

        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)
        self._say("keys: space pause/resume, s step, + faster, - slower")
        self._thread = threading.Thread(target=self._run, name="replay-keys", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = _select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 16)
            except OSError:
                return
            if not data:
                return
            for ch in data.decode("utf-8", "replace"):
                self.handle(ch)

    def stop(self) -> None:
        """Stop reading and restore the terminal."""
        import termios

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgefuse.record.replay_cli ARGS``: ``edgefuse replay ARGS``."""
    from edgefuse.cli import main as edgefuse_main

    return edgefuse_main(["replay", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
