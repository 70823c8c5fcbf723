"""``edgefuse bench ...``: the command line of the benchmarks.

``main(argv)`` takes everything after ``edgefuse bench``::

    edgefuse bench transport [--json] [--out FILE] [--quick] [--sizes 1KiB,6.2MiB]
                             [--transports edgefuse-shm,zenoh] [--rates 30,max]
                             [--messages N] [--max-seconds S] [--warmup N] [--markdown]
    edgefuse bench sim [--json] [--scenario day] [--seconds S] [--live-seconds S]
    edgefuse bench align [--json] [--seconds 300] [--clocks default|acceptance]
                         [--max-wait-ms 250] [--repeats 3]
    edgefuse bench infer [--json] [--model MODEL.onnx] [--checkpoint MODEL.pt]
                         [--backend onnxruntime|torch|tensorrt|all] [--precision fp32]
                         [--threads 2] [--iterations 200] [--warmup 20]
    edgefuse bench record [--json] [--seconds 3] [--compression none|zstd|lz4|all] [--zstd-level 1]
                          [--foxglove]
    edgefuse bench sensors [--json] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from edgefuse.bench import _report, transport
from edgefuse.bench import sim as sim_bench
from edgefuse.bench._payload import parse_size
from edgefuse.bench._peers import TRANSPORTS


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefuse bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    t = sub.add_parser(
        "transport",
        help="pub->sub latency and throughput across processes, edgefuse and peers",
        description=(
            "Publisher and subscriber in separate processes; latency from the sender's "
            "monotonic stamp just before the send call to the receiver's when the payload is "
            "a numpy array. Progress goes to stderr."
        ),
    )
    t.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    t.add_argument("--markdown", action="store_true", help="print markdown tables on stdout")
    t.add_argument("--out", metavar="FILE", help="also write the JSON document to FILE")
    t.add_argument(
        "--quick",
        action="store_true",
        help=f"a run of seconds (sizes {','.join(transport.QUICK_SIZES)}, "
        f"{transport.QUICK_MESSAGES} messages per cell), for tests",
    )
    t.add_argument(
        "--sizes",
        type=_csv,
        help=f"comma list of sizes (default {','.join(transport.DEFAULT_SIZES)})",
    )
    t.add_argument(
        "--transports", type=_csv, help=f"comma list (default all: {','.join(TRANSPORTS)})"
    )
    t.add_argument("--rates", type=_csv, help="comma list of Hz or 'max' (default 30,max)")
    t.add_argument(
        "--messages",
        type=int,
        help=f"measured messages per fixed-rate cell (default {transport.DEFAULT_MESSAGES})",
    )
    t.add_argument(
        "--max-seconds",
        type=float,
        help=f"seconds of sending per max-rate cell (default {transport.DEFAULT_MAX_SECONDS})",
    )
    t.add_argument(
        "--warmup",
        type=int,
        help=f"discarded messages before the measured ones (default {transport.DEFAULT_WARMUP})",
    )
    t.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    s = sub.add_parser(
        "sim",
        help="can the simulated rig keep real time on one core (offline capacity, live CPU)",
        description=(sim_bench.__doc__ or "").split("\n\n")[0],
    )
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    s.add_argument("--out", metavar="FILE", help="also write the JSON document to FILE")
    s.add_argument("--scenario", default="day")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--seconds", type=float, default=10.0, help="world seconds per source offline")
    s.add_argument("--live-seconds", type=float, default=20.0, help="0 skips the live run")
    s.add_argument("--warmup", type=float, default=6.0, help="live: seconds before measuring")
    s.add_argument("--pipeline", default="pipelines/sim.yaml")
    s.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = sub.add_parser(
        "align",
        help="the aligner alone: messages/s, added latency, clock error vs the simulator's truth",
        description="Clock models + aligner over the simulated rig's timing (no rendering), "
        "side by side with ROS 2 message_filters' ApproximateTime on the same messages.",
    )
    a.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    a.add_argument("--out", metavar="FILE", help="also write the JSON document to FILE")
    a.add_argument("--seconds", type=float, default=300.0, help="simulated seconds of input")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--clocks",
        choices=("default", "acceptance"),
        default="default",
        help="default: the simulator's clocks; acceptance: 50 ppm, 0.25 s, exponential 3 ms",
    )
    a.add_argument("--max-wait-ms", type=float, default=250.0)
    a.add_argument("--repeats", type=int, default=3, help="timed runs (the median is reported)")
    a.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    i = sub.add_parser(
        "infer",
        help="per-set latency of preprocess, network and postprocess, ONNX Runtime vs PyTorch",
        description="Real aligned sets of a simulated session through preprocessing, the "
        "network and postprocessing; the exported graph in ONNX Runtime side by side with its "
        "checkpoint in PyTorch eager.",
    )
    i.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    i.add_argument("--out", metavar="FILE", help="also write the JSON document to FILE")
    i.add_argument("--model", metavar="MODEL.onnx", help="default: the shipped model")
    i.add_argument(
        "--checkpoint", metavar="MODEL.pt", help="PyTorch reference (default: MODEL.pt beside it)"
    )
    i.add_argument(
        "--backend",
        choices=("onnxruntime", "torch", "tensorrt", "all"),
        default="all",
        help="all: every backend that can run here (TensorRT needs a GPU and the gpu extra)",
    )
    i.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="TensorRT engine precision (int8: a Q/DQ model)",
    )
    i.add_argument("--threads", type=int, default=2, help="intra-op threads of either backend")
    i.add_argument("--iterations", type=int, default=200, help="measured sets per backend")
    i.add_argument("--warmup", type=int, default=20, help="discarded sets before them")
    i.add_argument("--rig", default="calibration/sim_rig.yaml")
    i.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    r = sub.add_parser(
        "record",
        help="recording throughput on one core: uncompressed, zstd, lz4",
        description="The simulated rig's payloads into a session file as fast as the "
        "recorder's writer takes them, pinned to one CPU.",
    )
    r.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    r.add_argument("--out", metavar="FILE", help="also write the JSON document to FILE")
    r.add_argument("--seconds", type=float, default=3.0, help="per compression setting")
    r.add_argument("--compression", choices=("none", "zstd", "lz4", "all"), default="all")
    r.add_argument("--foxglove", action="store_true", help="with the Foxglove channels")
    r.add_argument("--zstd-level", type=int, default=1, help="zstd level measured (default 1)")
    s = sub.add_parser(
        "sensors",
        help="driver cost: lidar packet decoding, camera publish",
        description="Per-driver CPU cost per frame and latency from arrival to publish.",
    )
    s.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    s.add_argument("--out", metavar="FILE", help="also write the JSON document to FILE")
    s.add_argument("--seconds", type=float, default=5.0, help="per driver")
    return parser


def _record(args: argparse.Namespace, argv: list[str]) -> int:
    from edgefuse.bench.record import bench_record

    if args.seconds <= 0:
        print("edgefuse bench record: --seconds must be > 0", file=sys.stderr)
        return 2
    try:
        doc = bench_record(
            seconds=args.seconds,
            compression=args.compression,
            foxglove=args.foxglove,
            zstd_level=args.zstd_level,
        )
    except ValueError as exc:
        print(f"edgefuse bench record: {exc}", file=sys.stderr)
        return 2
    doc = {"benchmark": "record", "command": shlex.join(["edgefuse", "bench", *argv]), **doc}
    print(_document(args, doc))
    return 0


def _sensors(args: argparse.Namespace, argv: list[str]) -> int:
    from edgefuse.bench.sensors import run as run_sensors

    if args.seconds <= 0.2:
        print("edgefuse bench sensors: --seconds must be > 0.2", file=sys.stderr)
        return 2
    doc = run_sensors(seconds=args.seconds, command=shlex.join(["edgefuse", "bench", *argv]))
    print(_document(args, doc))
    return 0


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> transport.BenchConfig:
    quick = bool(args.quick)
    try:
        sizes = tuple(
            parse_size(s)
            for s in (args.sizes or (transport.QUICK_SIZES if quick else transport.DEFAULT_SIZES))
        )
        rates = tuple(transport.parse_rate(r) for r in (args.rates or transport.DEFAULT_RATES))
    except ValueError as exc:
        parser.error(str(exc))
    names = tuple(args.transports or TRANSPORTS)
    unknown = [n for n in names if n not in TRANSPORTS]
    if unknown:
        parser.error(f"unknown transport(s) {', '.join(unknown)}; known: {', '.join(TRANSPORTS)}")

    def pick(value: Any, quick_value: Any, default: Any) -> Any:
        return value if value is not None else (quick_value if quick else default)

    messages = int(pick(args.messages, transport.QUICK_MESSAGES, transport.DEFAULT_MESSAGES))
    max_seconds = float(
        pick(args.max_seconds, transport.QUICK_MAX_SECONDS, transport.DEFAULT_MAX_SECONDS)
    )
    warmup = int(pick(args.warmup, transport.QUICK_WARMUP, transport.DEFAULT_WARMUP))
    if messages < 1 or max_seconds <= 0 or warmup < 0:
        parser.error("--messages must be >= 1, --max-seconds > 0 and --warmup >= 0")
    return transport.BenchConfig(
        transports=tuple(dict.fromkeys(names)),
        sizes=tuple({s.name: s for s in sizes}.values()),
        rates_hz=tuple(dict.fromkeys(rates)),
        messages=messages,
        max_seconds=max_seconds,
        warmup=warmup,
    )


def main(argv: list[str]) -> int:
    """Run ``edgefuse bench`` with ``argv`` (what follows ``bench``); return the exit status.

    The status is 0 when the run completed, 1 when any payload arrived corrupt (a benchmark
    never passes on corrupt data), 2 for a usage error. Goals not met do not fail the run:
    they are measured facts, reported in the output.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        if args.bench == "sim":
            return _sim(args, argv)
        if args.bench == "align":
            return _align(args, argv)
        if args.bench == "infer":
            return _infer(args, argv)
        if args.bench == "record":
            return _record(args, argv)
        if args.bench == "sensors":
            return _sensors(args, argv)
        cfg = _config(args, parser)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    command = shlex.join(["edgefuse", "bench", *argv])
    progress = None if args.quiet else _progress
    if progress is not None:
        progress(f"{command}: about {transport.estimate_seconds(cfg):.0f} s")
    doc = transport.run(cfg, command=command, progress=progress)
    text = _document(args, doc)
    if args.json:
        print(text)
    elif args.markdown:
        print(_report.format_markdown(doc))
    else:
        print(_report.format_table(doc))
    return 1 if doc["summary"]["corrupt_total"] else 0


def _sim(args: argparse.Namespace, argv: list[str]) -> int:
    doc = sim_bench.run(
        scenario=args.scenario,
        seed=args.seed,
        seconds=args.seconds,
        live_seconds=args.live_seconds,
        warmup_s=args.warmup,
        pipeline=args.pipeline,
        command=shlex.join(["edgefuse", "bench", *argv]),
        progress=None if args.quiet else _progress,
    )
    text = _document(args, doc)
    print(text if args.json else sim_bench.format_table(doc))
    return 0


def _align(args: argparse.Namespace, argv: list[str]) -> int:
    from edgefuse.bench import align

    if args.seconds < 20 or args.repeats < 1 or args.max_wait_ms <= 0:
        print(
            "edgefuse bench align: --seconds >= 20, --repeats >= 1, --max-wait-ms > 0",
            file=sys.stderr,
        )
        return 2
    doc = align.run(
        seconds=args.seconds,
        seed=args.seed,
        clocks=args.clocks,
        max_wait_ms=args.max_wait_ms,
        repeats=args.repeats,
        command=shlex.join(["edgefuse", "bench", *argv]),
        progress=None if args.quiet else _progress,
    )
    text = _document(args, doc)
    print(text if args.json else align.format_table(doc))
    return 0


def _infer(args: argparse.Namespace, argv: list[str]) -> int:
    from edgefuse.bench import infer

    try:
        doc = infer.run(
            model=args.model,
            checkpoint=args.checkpoint,
            backend=args.backend,
            precision=args.precision,
            threads=args.threads,
            iterations=args.iterations,
            warmup=args.warmup,
            rig=args.rig,
            command=shlex.join(["edgefuse", "bench", *argv]),
            progress=None if args.quiet else _progress,
        )
    except infer.InferBenchError as exc:
        print(f"edgefuse bench infer: {exc}", file=sys.stderr)
        return 2
    text = _document(args, doc)
    print(text if args.json else infer.format_table(doc))
    return 0


def _document(args: argparse.Namespace, doc: dict[str, Any]) -> str:
    """The JSON text of a benchmark's document, also written to ``--out`` when given."""
    text = json.dumps(doc, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return text


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
