"""``edgefuse <verb>``: a thin command line; each verb delegates to its package."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from edgefuse import __version__
from edgefuse.errors import EdgefuseError


def _cmd_run(args: argparse.Namespace) -> int:
    from edgefuse.launch import Launcher
    from edgefuse.pipeline import load_pipeline

    pipeline = load_pipeline(args.pipeline)
    return Launcher(
        pipeline, duration_s=args.duration, report_path=args.report, status=args.status
    ).run()


def _cmd_check(args: argparse.Namespace) -> int:
    from edgefuse.pipeline import load_pipeline

    p = load_pipeline(args.pipeline)
    print(f"{args.pipeline}: ok ({len(p.nodes)} nodes, {len(p.topics())} topics)")
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from edgefuse.introspect import list_topics

    rows = list_topics()
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no running pipeline (start one with 'edgefuse run PIPELINE.yaml')")
    else:
        for r in rows:
            extra = f"  [{r['encoding']}]  {r['endpoint']}  ({r['run_id']})" if args.verbose else ""
            print(f"/{r['topic']}{extra}")
    return 0


def _cmd_echo(args: argparse.Namespace) -> int:
    from edgefuse.introspect import echo

    n = echo(
        args.topic.lstrip("/"),
        count=1 if args.once else args.count,
        timeout_s=args.timeout,
        pipeline=args.pipeline,
        keys=args.keys,
        as_json=args.json,
    )
    return 0 if n else 1


def _cmd_hz(args: argparse.Namespace) -> int:
    from edgefuse.introspect import hz

    hz(
        args.topic.lstrip("/"),
        window=args.window,
        duration_s=args.duration,
        pipeline=args.pipeline,
        keys=args.keys,
    )
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    from edgefuse.transport import generate_keys

    for path in generate_keys(args.dir, client=args.client):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``edgefuse`` (all verbs)."""
    p = argparse.ArgumentParser(prog="edgefuse", description=__doc__)
    p.add_argument("--version", action="version", version=f"edgefuse {__version__}")
    p.add_argument("-v", "--verbose-log", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = sub.add_parser("run", help="run a pipeline: one process per node, live status")
    run.add_argument("pipeline", nargs="?", default="pipelines/sim.yaml")
    run.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    run.add_argument("--report", metavar="FILE.json", help="write per-topic statistics at exit")
    run.add_argument(
        "--status",
        choices=["auto", "live", "plain", "off"],
        default="auto",
        help="status table: live redraw (tty), plain blocks, or off",
    )
    run.set_defaults(fn=_cmd_run)

    check = sub.add_parser("check", help="validate a pipeline file without running it")
    check.add_argument("pipeline")
    check.set_defaults(fn=_cmd_check)

    topics = sub.add_parser("topics", help="list the topics of running pipelines")
    topics.add_argument("-v", "--verbose", action="store_true", help="encoding and endpoint")
    topics.add_argument("--json", action="store_true")
    topics.set_defaults(fn=_cmd_topics)

    for verb, fn, text in (
        ("echo", _cmd_echo, "print messages of a topic"),
        ("hz", _cmd_hz, "print the rate of a topic"),
    ):
        s = sub.add_parser(verb, help=text)
        s.add_argument("topic")
        s.add_argument("--pipeline", help="pipeline name or run id (default: newest)")
        s.add_argument("--keys", help="CURVE keys folder (default: the pipeline's)")
        if verb == "echo":
            s.add_argument("--once", action="store_true", help="print one message and exit")
            s.add_argument("-n", "--count", type=int, default=0, help="exit after N messages")
            s.add_argument("--timeout", type=float, metavar="S", help="give up after S seconds")
            s.add_argument(
                "--json", action="store_true", help="one JSON line per message (detections decoded)"
            )
        else:
            s.add_argument("--window", type=int, default=100, help="messages to average over")
            s.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
        s.set_defaults(fn=fn)

    keys = sub.add_parser("keys", help="CURVE keys for tcp endpoints")
    keys_sub = keys.add_subparsers(dest="keys_verb", required=True, metavar="ACTION")
    gen = keys_sub.add_parser("generate", help="make a server key pair and an authorised client")
    gen.add_argument("dir")
    gen.add_argument("--client", default="client", help="name of the client key pair to add")
    gen.set_defaults(fn=_cmd_keys)

    from edgefuse.sim.cli import register as register_sim

    register_sim(sub)

    from edgefuse.sync.cli import register as register_sync

    register_sync(sub)

    from edgefuse.model.cli import register as register_model

    register_model(sub)

    from edgefuse.runtime.compile import register as register_compile

    register_compile(sub)

    from edgefuse.calib.cli import register as register_calib

    register_calib(sub)

    from edgefuse.sensors.devices import register as register_devices

    register_devices(sub)

    from edgefuse.record.import_cli import register as register_import

    register_import(sub)

    from edgefuse.record.cli import register as register_record

    register_record(sub)

    from edgefuse.record.replay_cli import register as register_replay

    register_replay(sub)

    bench = sub.add_parser(
        "bench", help="benchmarks (edgefuse bench transport --json)", add_help=False
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(fn=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (2 for configuration errors)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from edgefuse.bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose_log else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.fn(args))
    except EdgefuseError as exc:
        print(f"edgefuse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
