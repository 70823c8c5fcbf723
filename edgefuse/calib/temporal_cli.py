"""``edgefuse calibrate time``: the command line of the temporal calibration."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefuse.calib.temporal import METHODS, apply_offsets, estimate_offsets
from edgefuse.calib.temporal_signals import TemporalCalibrationError, session_signals
from edgefuse.sync.aligner import StreamConfig

if TYPE_CHECKING:
    from edgefuse.calib.model import RigCalibration
    from edgefuse.calib.temporal_sound import SoundDistance


def _pipeline_streams(
    pipeline: str | Path,
) -> tuple[dict[str, tuple[str, StreamConfig]], str, str]:
    """(stream -> (topic, config), reference, rig path) of a pipeline's aligner node; streams
    whose time the messages carry already (``clock: given``) are left out."""
    from edgefuse.sync.offline import aligner_from_pipeline

    cfg = aligner_from_pipeline(pipeline)
    streams = {
        port: (topic, cfg.params.streams[port])
        for topic, port in cfg.topics.items()
        if cfg.params.streams[port].clock != "given"
    }
    return streams, cfg.params.reference, cfg.params.rig


def _distance_arg(text: str) -> float | str:
    """``--sound-distance-m``: metres, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected metres or auto, got {text!r}") from None


def _offset_arg(text: str) -> tuple[float, float, float]:
    """``--clapper-offset-m X,Y,Z``."""
    try:
        x, y, z = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three numbers X,Y,Z (m), got {text!r}"
        ) from None
    return x, y, z


def add_time_action(actions: Any) -> None:
    """Add ``time`` to the ``calibrate`` verb's sub-parsers ``actions``."""
    p = actions.add_parser(
        "time",
        help="static time offsets between the streams of a recording (events, correlation)",
        description="Estimate each stream's time_offset_ns relative to the reference from "
        "motion and sound in a recording (rig standing still, things moving in view), with "
        "the clock models and latencies of the pipeline's aligner; write them into the rig. "
        "Best with a time-calibration recording: a board moved abruptly between two stops in "
        "view of every sensor, a clapper clicking as it passes the middle of its travel "
        "(edgefuse sim generate --scenario timing).",
    )
    p.add_argument("session", help="recorded session (.mcap)")
    p.add_argument("--reference", help="reference stream (default: the aligner's reference)")
    p.add_argument("--streams", help="comma-separated streams to calibrate (default: all)")
    p.add_argument("--max-lag-ms", type=float, default=500.0, help="largest offset searched")
    p.add_argument("--highpass-s", type=float, default=0.5, help="high-pass window (s)")
    p.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="events: pair moves seen and clicks heard; correlation: cross-correlate activity "
        "signals; auto (default): events where both streams have enough that pair reliably",
    )
    p.add_argument(
        "--sound-distance-m",
        type=_distance_arg,
        default=0.0,
        metavar="D|auto",
        help="distance from the sound events (the clapper) to the microphone (m, default 0): "
        "sound takes d / 343 m/s to arrive, which is physics, not clock offset, and is taken "
        "off the microphone's times; auto: measured from the board the camera sees (needs "
        "--cols/--rows/--square-m and the rig's camera intrinsics and poses)",
    )
    g = p.add_argument_group("board (--sound-distance-m auto)")
    g.add_argument("--board", choices=["chessboard", "charuco"], default="chessboard")
    g.add_argument("--cols", type=int, help="chessboard inner corners per row")
    g.add_argument("--rows", type=int, help="inner corners per column")
    g.add_argument("--square-m", type=float, help="square side in metres")
    g.add_argument("--marker-m", type=float, help="charuco marker side (default 0.7 square)")
    g.add_argument("--dict", default="DICT_4X4_50", help="charuco ArUco dictionary")
    g.add_argument(
        "--camera",
        help="aligner stream of the camera that sees the board (default: the reference if "
        "it is a camera, else the first camera stream)",
    )
    g.add_argument(
        "--clapper-offset-m",
        type=_offset_arg,
        default=(0.0, 0.0, 0.0),
        metavar="X,Y,Z",
        help="where the clapper is from the board's centre (m): X right and Y down along the "
        "board as the camera sees it, Z through it away from the camera (default 0,0,0: at "
        "the centre; 35 cm below and 20 cm in front: 0,0.35,-0.2; a leading minus needs "
        "the = form: --clapper-offset-m=-0.1,0,0)",
    )
    p.add_argument(
        "--pipeline",
        help="pipeline whose aligner maps the stamps (topics, latency_ms, wrap_s; default: "
        "the one the session names, else pipelines/sim.yaml)",
    )
    p.add_argument("--rig", help="rig calibration to update (default: the aligner's rig)")
    p.add_argument("-o", "--out", help="write the updated rig here (default: --rig itself)")
    p.add_argument("--force", action="store_true", help="write unreliable offsets as well")
    p.add_argument("--dry-run", action="store_true", help="print only, write nothing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(fn=_cmd_time)


def _cmd_time(args: Any) -> int:
    import json
    import sys

    from edgefuse.calib.model import find_calibration, load_calibration, save_calibration
    from edgefuse.record.session import SessionReader

    if args.max_lag_ms <= 0 or args.highpass_s <= 0:
        raise TemporalCalibrationError("--max-lag-ms and --highpass-s must be > 0")
    sound_m = args.sound_distance_m
    if sound_m == "auto":
        if None in (args.cols, args.rows, args.square_m):
            raise TemporalCalibrationError(
                "--sound-distance-m auto needs the board the camera sees: --cols and --rows "
                "(a chessboard's inner corners, a ChArUco board's squares) and --square-m"
            )
    elif not 0 <= sound_m <= 1000:
        raise TemporalCalibrationError(f"--sound-distance-m must be in 0..1000 m, got {sound_m}")
    pipeline = args.pipeline
    if pipeline is None:
        with SessionReader(args.session) as r:
            named = r.metadata().get("session", {}).get("pipeline", "")
        pipeline = named if named and Path(named).is_file() else "pipelines/sim.yaml"
    every, reference, rig_path = _pipeline_streams(find_calibration(pipeline))
    streams = every
    reference = args.reference or reference
    if args.streams:
        wanted = [s.strip() for s in args.streams.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in streams]
        if unknown:
            raise TemporalCalibrationError(
                f"--streams: {', '.join(unknown)} not in the aligner of {pipeline} "
                f"(it has {', '.join(streams)})"
            )
        streams = {n: streams[n] for n in streams if n in wanted or n == reference}
    if reference not in streams:
        raise TemporalCalibrationError(
            f"--reference {reference!r} is not a stream of the aligner in {pipeline} "
            f"(it has {', '.join(streams)})"
        )
    rig_file = args.rig or rig_path
    rig = load_calibration(find_calibration(rig_file)) if rig_file else None
    sound: SoundDistance | None = None
    if sound_m == "auto":
        sound = _sound_distance(args, every, streams, reference, rig)
        sound_m = sound.distance_m
        print(
            f"sound distance {sound.distance_m:.2f} m from {sound.holds} board holds "
            f"(±{sound.spread_m:.2f} m)",
            file=sys.stderr if args.json else sys.stdout,
        )
    signals = session_signals(
        args.session,
        streams,
        rig=rig,
        reference=reference,
        sound_distance_m=sound_m,
    )
    est = estimate_offsets(
        signals,
        reference,
        method=args.method,
        max_lag_ns=round(args.max_lag_ms * 1e6),
        highpass_s=args.highpass_s,
    )
    sensors = {n: cfg.sensor or n for n, (_, cfg) in streams.items()}
    bad = [e for e in est.values() if not e.reliable]
    if args.json:
        print(
            json.dumps(
                {
                    "reference": reference,
                    "pipeline": str(pipeline),
                    "streams": [e.as_dict() for e in est.values()],
                    "sound_distance": (
                        {"source": "auto", **sound.as_dict()}
                        if sound is not None
                        else {"source": "given", "distance_m": sound_m}
                    ),
                }
            )
        )
    else:
        print(f"reference {reference} (pipeline {pipeline})")
        for e in est.values():
            flag = "ok" if e.reliable else "UNRELIABLE"
            if e.method == "events":
                how = f"{e.events} events, {e.peak:.0%} paired, ±{e.spread_ms:.2f} ms"
            else:
                how = f"peak {e.peak:.2f}, side lobe x{e.sidelobe_ratio:.1f}, ±{e.spread_ms:.2f} ms"
            print(
                f"  {e.stream:10s} {e.offset_ns * 1e-6:+9.3f} ms  confidence {e.confidence:.2f}"
                f"  ({e.method}: {how})  {flag}"
            )
    for e in bad:
        print(f"edgefuse: warning: {e.stream}: {e.reason}", file=sys.stderr)
    if bad and not args.force:
        names = ", ".join(e.stream for e in bad)
        raise TemporalCalibrationError(
            f"unreliable offsets for {names}: nothing written (see the reasons above; "
            "--force writes them anyway)"
        )
    if args.dry_run or rig is None:
        if rig is None:
            print("no rig calibration (--rig): nothing written", file=sys.stderr)
        return 0
    missing = [s for s in sensors.values() if s not in rig.sensors]
    if missing:
        raise TemporalCalibrationError(
            f"rig {rig_file}: no sensor {', '.join(missing)}; add it or leave the stream out"
        )
    out = args.out or str(find_calibration(rig_file))
    save_calibration(apply_offsets(rig, list(est.values()), sensors=sensors), out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _sound_distance(
    args: Any,
    every: dict[str, tuple[str, StreamConfig]],
    calibrated: dict[str, tuple[str, StreamConfig]],
    reference: str,
    rig: RigCalibration | None,
) -> SoundDistance:
    """``--sound-distance-m auto``: the clapper's distance to the calibrated microphone from
    the board seen by the camera stream (``--camera``, else the reference if it is a camera,
    else the aligner's first camera stream)."""
    from edgefuse.calib.boards import Board
    from edgefuse.calib.temporal_signals import signal_kind
    from edgefuse.calib.temporal_sound import estimate_sound_distance
    from edgefuse.record.session import SessionReader

    kinds: dict[str, str | None] = {}
    with SessionReader(args.session) as reader:
        topics = reader.topics()
        for name, (topic, _) in every.items():
            if topics.get(topic, 0):
                kinds[name] = signal_kind(next(reader.messages([topic])).header.encoding)
    mics = [n for n in calibrated if kinds.get(n) == "audio"]
    if len(mics) != 1:
        raise TemporalCalibrationError(
            "--sound-distance-m auto: "
            + (
                "no microphone stream among those calibrated"
                if not mics
                else f"one distance for several microphones ({', '.join(mics)}): calibrate "
                "one at a time (--streams MIC)"
            )
        )
    cameras = [n for n in every if kinds.get(n) == "camera"]
    if args.camera is not None:
        if args.camera not in cameras:
            raise TemporalCalibrationError(
                f"--camera {args.camera}: not a camera stream of the aligner in the session "
                f"(camera streams: {', '.join(cameras) or 'none'})"
            )
        camera = args.camera
    elif cameras:
        camera = reference if reference in cameras else cameras[0]
    else:
        raise TemporalCalibrationError(
            "--sound-distance-m auto: no camera stream in the session sees the board; "
            "measure the distance and give it (--sound-distance-m D)"
        )
    board = Board.from_args(args)
    topic, cfg = every[camera]
    mic_cfg = every[mics[0]][1]
    return estimate_sound_distance(
        args.session,
        rig,
        camera_topic=topic,
        camera=cfg.sensor or camera,
        board=board,
        mic=mic_cfg.sensor or mics[0],
        clapper_offset_m=args.clapper_offset_m,
    )
