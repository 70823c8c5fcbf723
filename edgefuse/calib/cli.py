"""``edgefuse calibrate intrinsics|stereo`` and ``edgefuse calib convert``.

Intrinsics sources are a folder of images, a video file, a recorded topic (``SESSION.mcap
--topic camera/image``) or a live camera (``0``, ``/dev/video0``, ``rtsp://...``, a GStreamer
pipeline); a live camera runs the guided mode (``--live``), which says what view to take next
and calibrates once the coverage is sufficient. Results go to the edgefuse rig YAML (or
``--format ros|kalibr|opencv``); ``--rig FILE`` updates one sensor of an existing rig file
(``calibration/<rig>.yaml``), keeping its pose and time offset.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgefuse.errors import EdgefuseError


def _board_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("board")
    g.add_argument("--board", choices=["chessboard", "charuco"], default="chessboard")
    g.add_argument(
        "--cols",
        type=int,
        required=True,
        help="chessboard: inner corners per row (10x7 squares -> 9); charuco: squares per row",
    )
    g.add_argument("--rows", type=int, required=True, help="as --cols, per column")
    g.add_argument("--square-m", type=float, default=1.0, help="square side in metres")
    g.add_argument("--marker-m", type=float, help="charuco marker side (default 0.7 square)")
    g.add_argument("--dict", default="DICT_4X4_50", help="charuco ArUco dictionary")
    p.add_argument(
        "--model", choices=["plumb_bob", "rational_polynomial", "fisheye"], default="plumb_bob"
    )
    p.add_argument("--min-views", type=int, default=6, help="fewest views accepted")
    p.add_argument(
        "--fix-k3", action="store_true", help="keep k3 = 0 (needed for Kalibr radtan output)"
    )
    p.add_argument("-o", "--out", help="output file (default: print the rig YAML)")
    p.add_argument(
        "--format",
        choices=["edgefuse", "ros", "kalibr", "opencv"],
        default=None,
        help="output format (default edgefuse rig YAML)",
    )
    p.add_argument("--rig", help="update this rig file's sensor (keeps pose and time offset)")
    p.add_argument("--json", action="store_true", help="print a JSON summary instead of text")


def add_calibrate_actions(actions: Any) -> None:
    """Add ``intrinsics`` and ``stereo`` to the ``calibrate`` verb's sub-parsers ``actions``."""
    intr = actions.add_parser(
        "intrinsics",
        help="camera intrinsics from board views (images, video, recorded topic, live camera)",
        description="Detect the board, calibrate, drop outlier views, report coverage. From a "
        "recorded topic or a live camera only still, sharp views that add coverage are kept; "
        "a live camera (or --live) runs the guided mode: it says what view to take next, shows "
        "X/Y/Size/Tilt bars and calibrates when the coverage is sufficient (or on Ctrl-C, "
        "--max-views, or the end of the source).",
    )
    intr.add_argument(
        "source",
        help="folder of images (or a glob), video file, session .mcap (see --topic), a live "
        "camera: device index (0), /dev/videoN, rtsp:// or http:// URL, GStreamer pipeline, "
        "or pipeline:TOPIC (a running edgefuse pipeline's camera topic)",
    )
    _board_args(intr)
    intr.add_argument(
        "--every", type=int, default=1, help="use every N-th frame of a video or recorded topic"
    )
    intr.add_argument(
        "--topic", help="image topic of a recorded session (default: its only image topic)"
    )
    intr.add_argument(
        "--live",
        action="store_true",
        help="guided mode (automatic for a live camera; with a video or session: replay it "
        "through the guide)",
    )
    intr.add_argument(
        "--max-views", type=int, help="recorded topic / live: calibrate once this many are kept"
    )
    intr.add_argument(
        "--show", action="store_true", help="live: show the annotated frames (needs a display)"
    )
    intr.add_argument("--no-reject", action="store_true", help="keep outlier views")
    intr.add_argument("--plot", metavar="FILE.png", help="save the annotated coverage picture")
    intr.add_argument("--sensor", default="camera", help="sensor name in the rig")
    intr.set_defaults(fn=_cmd_intrinsics)

    st = actions.add_parser(
        "stereo",
        help="two cameras: intrinsics and T_right_left (baseline, rotation, epipolar error)",
    )
    st.add_argument("left", help="folder of left images")
    st.add_argument("right", help="folder of right images (paired by the number in the name)")
    _board_args(st)
    st.add_argument(
        "--refine-intrinsics", action="store_true", help="refine intrinsics in the stereo fit"
    )
    st.add_argument("--names", default="left,right", help="sensor names of the two cameras")
    st.set_defaults(fn=_cmd_stereo)


def register(sub: Any) -> Any:
    """Add ``calibrate`` (intrinsics, stereo) and ``calib`` (convert) to the top-level
    sub-parsers ``sub``; returns the ``calibrate`` sub-parsers so that other calibration tools
    (camera-lidar, time) can add their actions."""
    cal = sub.add_parser(
        "calibrate", help="calibrate sensors: intrinsics, stereo, camera-lidar, camera-depth"
    )
    actions = cal.add_subparsers(dest="calibrate_verb", required=True, metavar="ACTION")
    add_calibrate_actions(actions)
    from edgefuse.calib.extrinsic_cli import add_extrinsic_actions

    add_extrinsic_actions(actions)
    from edgefuse.calib.temporal_cli import add_time_action

    add_time_action(actions)

    files = sub.add_parser("calib", help="calibration files: convert between formats")
    fa = files.add_subparsers(dest="calib_verb", required=True, metavar="ACTION")
    conv = fa.add_parser(
        "convert",
        help="convert a calibration file (edgefuse, ros, kalibr, opencv, kitti, kitti-raw)",
        description="Formats are guessed from the name and content; --from/--to override.",
    )
    conv.add_argument("input", help="file (or KITTI raw folder) to read")
    conv.add_argument("output", help="file (or folder for kitti-raw) to write")
    fmts = ["edgefuse", "ros", "kalibr", "opencv", "kitti", "kitti-raw"]
    conv.add_argument("--from", dest="src_format", choices=fmts)
    conv.add_argument("--to", dest="dst_format", choices=fmts)
    conv.add_argument("--sensor", help="camera to write to one-camera formats (ros)")
    conv.add_argument("--image-size", metavar="WxH", help="image size for KITTI object files")
    conv.set_defaults(fn=_cmd_convert)
    return actions


def _board(args: argparse.Namespace) -> Any:
    from edgefuse.calib.boards import Board

    return Board.from_args(args)


def _write(args: argparse.Namespace, rig: Any, sensor: str | None) -> None:
    from edgefuse.calib.formats import write_rig
    from edgefuse.calib.model import dump_calibration

    fmt = args.format or "edgefuse"
    out = args.out or (args.rig if args.rig and fmt == "edgefuse" else None)
    if out is None:
        if fmt != "edgefuse":
            raise EdgefuseError(f"--format {fmt} needs an output file: add -o FILE")
        if not args.json:
            print(dump_calibration(rig), end="")
        return
    if fmt == "ros" and sensor is None:
        names = [n for n, s in rig.sensors.items() if s.camera is not None]
        written = []
        for n in names:  # ROS camera_info holds one camera: one file each
            p = Path(out)
            target = p if len(names) == 1 else p.with_name(f"{p.stem}_{n}{p.suffix}")
            written += write_rig(rig, target, "ros", sensor=n)
    else:
        written = write_rig(rig, out, fmt, sensor=sensor)
    for w in written:
        print(f"wrote {w}", file=sys.stderr)


def _into_rig(args: argparse.Namespace, cameras: dict[str, Any]) -> Any:
    """A rig holding ``cameras`` (name -> SensorCalibration): the ``--rig`` file updated, or a
    new rig of just these sensors."""
    from edgefuse.calib.model import RigCalibration, load_calibration

    if not args.rig:
        return RigCalibration(rig="calibrated", sensors=cameras)
    rig = load_calibration(args.rig)
    sensors = dict(rig.sensors)
    for name, s in cameras.items():
        old = sensors.get(name)
        if old is not None and len(cameras) == 1:
            sensors[name] = replace(old, camera=s.camera)  # keep the pose and offset
        else:
            sensors[name] = s
    return replace(rig, sensors=sensors)


def _intrinsics_result(args: argparse.Namespace, board: Any) -> tuple[Any, Any, Any]:
    """Detect and fit: ``(result, detections, collected or None)``. Folders and videos use
    every frame with the board; recorded topics and live cameras go through
    :func:`~edgefuse.calib.collect.collect_views`."""
    from edgefuse.calib.collect import collect_views
    from edgefuse.calib.intrinsics import calibrate_detections, calibrate_intrinsics
    from edgefuse.calib.sources import FileFrames, open_source, source_kind

    if args.every < 1:
        raise EdgefuseError(f"--every must be >= 1, got {args.every}")
    if args.max_views is not None and args.max_views < args.min_views:
        raise EdgefuseError(
            f"--max-views {args.max_views} is below --min-views {args.min_views}: raise it"
        )
    kind = source_kind(args.source, args.topic)
    fit = {"reject": not args.no_reject, "min_views": args.min_views, "fix_k3": args.fix_k3}
    with open_source(args.source, topic=args.topic, every=args.every, live=args.live) as src:
        if isinstance(src, FileFrames):  # every frame with the board, as before
            result, det = calibrate_intrinsics(
                args.source, board, args.model, every=args.every, **fit
            )
            return result, det, None
        col = collect_views(
            src,
            board,
            guided=args.live or kind in ("live", "pipeline"),
            show=args.show,
            max_views=args.max_views,
            min_views=args.min_views,
        )
    print(col.summary(), file=sys.stderr)
    context = (
        f"{len(col.detections.views)} still, sharp, distinct views of the board in "
        f"{col.frames} frames"
    )
    result = calibrate_detections(col.detections, args.model, context=context, **fit)
    return result, col.detections, col


def _cmd_intrinsics(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from edgefuse.calib.coverage import coverage_picture
    from edgefuse.calib.model import SensorCalibration, matrix4

    board = _board(args)
    result, det, col = _intrinsics_result(args, board)
    sensor = SensorCalibration(
        frame_id=f"{args.sensor}_optical",
        T_base_link_sensor=matrix4(np.eye(4)),
        camera=result.camera,
    )
    rig = _into_rig(args, {args.sensor: sensor})
    if args.plot:
        assert result.coverage is not None
        pic = coverage_picture(
            det.first_image,
            result.views,
            result.coverage,
            board_size=board.corners if board.kind == "chessboard" else None,
            title=f"{args.model}: RMS {result.rms_px:.3f} px over {len(result.views)} views",
        )
        if not cv2.imwrite(args.plot, pic):
            raise EdgefuseError(f"{args.plot}: cannot write the picture (extension .png/.jpg?)")
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        K = result.camera.K
        print(
            json.dumps(
                {
                    "model": result.model,
                    "rms_px": result.rms_px,
                    "fx": K[0, 0],
                    "fy": K[1, 1],
                    "cx": K[0, 2],
                    "cy": K[1, 2],
                    "distortion": list(result.camera.distortion),
                    "views": [v.name for v in result.views],
                    "per_view_rms_px": result.per_view_rms_px,
                    "rejected": [n for n, _ in result.rejected],
                    "no_board": result.no_board,
                    "hints": result.coverage.hints if result.coverage else [],
                    **(
                        {"frames": col.frames, "skipped": col.skipped, "stopped": col.stopped}
                        if col is not None
                        else {}
                    ),
                }
            )
        )
    else:
        print(result.summary(), file=sys.stderr if args.out is None else sys.stdout)
    _write(args, rig, args.sensor if args.format == "ros" else None)
    return 0


def _cmd_stereo(args: argparse.Namespace) -> int:
    from edgefuse.calib.stereo import calibrate_stereo, stereo_rig

    names = [n.strip() for n in args.names.split(",")]
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise EdgefuseError(f"--names needs two different names, got {args.names!r}")
    result = calibrate_stereo(
        args.left,
        args.right,
        _board(args),
        args.model,
        refine_intrinsics=args.refine_intrinsics,
        min_views=args.min_views,
        fix_k3=args.fix_k3,
    )
    pair = stereo_rig(result, left=names[0], right=names[1])
    rig = _into_rig(args, dict(pair.sensors))
    if args.json:
        print(
            json.dumps(
                {
                    "baseline_m": result.baseline_m,
                    "rotation_deg": result.rotation_deg,
                    "t_right_left_m": [float(v) for v in result.T_right_left[:3, 3]],
                    "rms_px": result.rms_px,
                    "epipolar_rms_px": result.epipolar_rms_px,
                    "pairs": len(result.pairs),
                    "left_rms_px": result.left.rms_px,
                    "right_rms_px": result.right.rms_px,
                }
            )
        )
    else:
        print(result.summary(), file=sys.stderr if args.out is None else sys.stdout)
    _write(args, rig, None)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from edgefuse.calib.formats import read_rig, write_rig

    size = None
    if args.image_size:
        try:
            w, h = (int(v) for v in args.image_size.lower().split("x"))
        except ValueError:
            raise EdgefuseError(f"--image-size: expected WxH, got {args.image_size!r}") from None
        size = (w, h)
    rig = read_rig(args.input, args.src_format, sensor=args.sensor or "camera", image_size=size)
    for p in write_rig(rig, args.output, args.dst_format, sensor=args.sensor):
        print(f"wrote {p} ({len(rig.sensors)} sensors: {', '.join(rig.sensors)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run just these verbs (``python -m edgefuse.calib.cli calibrate ...``), with the same
    error handling as ``edgefuse``: a clear message and exit code 2, no traceback."""
    parser = argparse.ArgumentParser(prog="edgefuse")
    register(parser.add_subparsers(dest="verb", required=True, metavar="VERB"))
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except EdgefuseError as exc:
        print(f"edgefuse: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
