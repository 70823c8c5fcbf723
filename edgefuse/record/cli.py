"""``edgefuse record``, ``edgefuse info`` and ``edgefuse recover``: the recording verbs."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any


def register(sub: Any) -> None:
    """Add the ``record``, ``info`` and ``recover`` verbs to the top-level subparsers ``sub``."""
    rec = sub.add_parser(
        "record",
        help="record a running pipeline's topics to MCAP (lossless, + Foxglove schemas)",
        description="Subscribe to a running pipeline and write every message to a session "
        "file until Ctrl-C, --duration, or the pipeline stops. Counts and losses per topic are "
        "reported at the end.",
    )
    rec.add_argument("-o", "--out", default="recordings/", help="file, or folder ending in /")
    rec.add_argument("--topics", nargs="+", default=["*"], metavar="T", help="names or globs")
    rec.add_argument("--exclude", nargs="+", default=[], metavar="T", help="names or globs")
    rec.add_argument("--pipeline", help="pipeline name or run id (default: newest)")
    rec.add_argument("--keys", help="CURVE keys folder (default: the pipeline's)")
    rec.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    rec.add_argument("--compression", choices=["zstd", "lz4", "none"], default="zstd")
    rec.add_argument(
        "--zstd-level", type=int, default=1, help="-7 fastest .. 22 smallest (rosbag2's 1)"
    )
    rec.add_argument("--chunk-s", type=float, default=1.0, help="close a chunk at least this often")
    rec.add_argument("--chunk-mb", type=float, default=4.0)
    rec.add_argument("--split-mb", type=float, default=0.0, help="new numbered file every N MB")
    rec.add_argument("--split-s", type=float, default=0.0, help="new numbered file every S s")
    rec.add_argument("--queue-mb", type=float, default=256.0, help="writer queue bound")
    rec.add_argument("--no-foxglove", action="store_true", help="envelopes only")
    rec.add_argument("--rig", default="", help="calibration to attach (default: the pipeline's)")
    rec.add_argument("--json", action="store_true", help="print the report as JSON")
    rec.set_defaults(fn=_cmd_record)

    info = sub.add_parser("info", help="what a session file holds (like ros2 bag info)")
    info.add_argument("file")
    info.add_argument("--json", action="store_true")
    info.set_defaults(fn=_cmd_info)

    recover = sub.add_parser(
        "recover",
        help="rewrite a truncated session file whole (or recompress one)",
        description="Rewrite a session file whole: a truncated one (a recorder killed mid-run) "
        "gets every complete chunk, a summary and a footer. With --compression or "
        "--zstd-level it recompresses too: record at the fast default, keep at level 19.",
    )
    recover.add_argument("file")
    recover.add_argument("-o", "--out", help="output file (default NAME.recovered.mcap)")
    recover.add_argument(
        "--compression",
        choices=["zstd", "lz4", "none"],
        help="compression of the new file's chunks (default: as the source's)",
    )
    recover.add_argument(
        "--zstd-level", type=int, default=1, help="-7 fastest .. 22 smallest (default 1)"
    )
    recover.add_argument("--json", action="store_true")
    recover.set_defaults(fn=_cmd_recover)


def _cmd_record(args: argparse.Namespace) -> int:
    from edgefuse import config
    from edgefuse.record.recorder import RecordOptions, record_running

    options = config.build(
        RecordOptions,
        {
            "out": args.out,
            "compression": args.compression,
            "zstd_level": args.zstd_level,
            "chunk_s": args.chunk_s,
            "chunk_mb": args.chunk_mb,
            "split_mb": args.split_mb,
            "split_s": args.split_s,
            "queue_mb": args.queue_mb,
            "foxglove": not args.no_foxglove,
            "rig": args.rig,
        },
    )
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = record_running(
            options,
            topics=args.topics,
            exclude=args.exclude,
            pipeline=args.pipeline,
            keys=args.keys,
            duration_s=args.duration,
            should_stop=lambda: stop,
        )
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for topic, c in report["topics"].items():
            print(
                f"{topic:24s} {c['written']:8d} recorded  {c['lost']:6d} lost  "
                f"({c['bytes'] / 1e6:.1f} MB)"
            )
        print(f"wrote {', '.join(report['files'])} ({report['duration_s']:.1f} s)")
    if report["lost"]:
        print(f"edgefuse record: {report['lost']} messages lost (see above)", file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from edgefuse.record.info import info_main

    return info_main(args.file, as_json=args.json)


def _cmd_recover(args: argparse.Namespace) -> int:
    from edgefuse.record.recover import recover

    try:
        report = recover(
            args.file, args.out, compression=args.compression, zstd_level=args.zstd_level
        )
    except ValueError as exc:
        print(f"edgefuse: error: {exc}".replace("zstd_level", "--zstd-level"), file=sys.stderr)
        return 2
    print(json.dumps(report.to_json(), indent=2) if args.json else report.text())
    return 0
