"""``edgefuse calibrate camera-lidar|camera-depth SESSION.mcap``: the command-line actions."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgefuse.errors import EdgefuseError


def add_extrinsic_actions(actions: Any) -> None:
    """Add ``camera-lidar`` and ``camera-depth`` to the ``calibrate`` verb's sub-parsers."""
    for kind in ("lidar", "depth"):
        p = actions.add_parser(
            f"camera-{kind}",
            help=f"T_<camera>_optical_{kind} from a recorded session of a board in still poses",
            description=f"Board poses from the camera (PnP) and the board plane in the {kind} "
            "(Open3D RANSAC, then the board's extent) over the still poses of a session, and "
            "where its scan lines leave the board (its edges); solved in closed form from the "
            "planes, refined jointly, with a 1-sigma uncertainty. Intrinsics and the initial "
            "guess come from --rig, else from the calibration attached to the session.",
        )
        p.add_argument("session", help="recorded session (.mcap)")
        p.add_argument("--camera", default="camera", help="camera sensor (topic CAMERA/image)")
        if kind == "lidar":
            p.add_argument("--lidar", default="lidar", help="lidar sensor (topic LIDAR/points)")
        else:
            p.add_argument("--depth", default="depth", help="depth sensor (topic DEPTH/image)")
        g = p.add_argument_group("board")
        g.add_argument("--board", choices=["chessboard", "charuco"], default="chessboard")
        g.add_argument("--cols", type=int, required=True, help="chessboard inner corners per row")
        g.add_argument("--rows", type=int, required=True, help="inner corners per column")
        g.add_argument("--square-m", type=float, required=True, help="square side in metres")
        g.add_argument("--marker-m", type=float, help="charuco marker side (default 0.7 square)")
        g.add_argument("--dict", default="DICT_4X4_50", help="charuco ArUco dictionary")
        g.add_argument(
            "--margin-m", type=float, default=0.05, help="white border beyond the outer squares"
        )
        p.add_argument(
            "--search-m", type=float, default=0.6, help="how far off the initial guess may be (m)"
        )
        p.add_argument("--min-poses", type=int, default=6, help="fewest poses accepted")
        p.add_argument(
            "--no-edges",
            action="store_true",
            help="planes only: leave out the board's edges (a frame or clamps around the board)",
        )
        p.add_argument("--rig", help="rig file: intrinsics and initial guess; updated in place")
        p.add_argument("-o", "--out", help="write the updated rig here (default: --rig, or print)")
        p.add_argument("--overlay", metavar="FILE.png", help="save the projection overlay")
        p.add_argument("--json", action="store_true", help="print a JSON summary")
        p.set_defaults(fn=_cmd_extrinsic, kind=kind)


def _cmd_extrinsic(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from edgefuse.calib.boards import Board
    from edgefuse.calib.extrinsic import ExtrinsicOptions, rotation_error_deg
    from edgefuse.calib.extrinsic_session import calibrate_session
    from edgefuse.calib.model import dump_calibration, save_calibration
    from edgefuse.calib.overlay import draw_overlay

    if not Path(args.session).exists():
        raise EdgefuseError(f"{args.session}: no such session file")
    for name in ("margin_m", "search_m"):
        if getattr(args, name) < 0:
            raise EdgefuseError(f"--{name.replace('_', '-')} must be >= 0")
    if args.min_poses < 3:
        raise EdgefuseError(f"--min-poses must be >= 3, got {args.min_poses}")
    board = Board.from_args(args)
    opts = ExtrinsicOptions(
        margin_m=args.margin_m,
        search_m=args.search_m,
        min_poses=args.min_poses,
        edges=not args.no_edges,
    )
    sensor = args.lidar if args.kind == "lidar" else args.depth
    result, rig, obs = calibrate_session(
        args.session,
        board,
        kind=args.kind,
        camera=args.camera,
        sensor=sensor,
        rig=args.rig,
        options=opts,
    )
    if args.overlay:
        used = {p.name: p.n_points for p in result.poses}
        best = max((o for o in obs if o.name in used), key=lambda o: used[o.name])
        cam = rig.sensor(args.camera).camera
        assert cam is not None and best.image is not None
        pic = draw_overlay(
            best.image,
            best.points,
            result.T_cam_sensor,
            cam,
            title=f"{sensor} on {args.camera}: {best.name}",
        )
        if not cv2.imwrite(args.overlay, pic):
            raise EdgefuseError(f"{args.overlay}: cannot write the picture (extension .png?)")
        print(f"wrote {args.overlay}", file=sys.stderr)
    out = args.out or args.rig
    if out:
        save_calibration(rig, out)
        print(f"wrote {out}", file=sys.stderr)
    if args.json:
        T = result.T_cam_sensor
        print(
            json.dumps(
                {
                    "T_cam_sensor": T.tolist(),
                    "T_base_link_sensor": rig.sensor(sensor).T.tolist(),
                    "sigma_t_m": result.sigma_t_m.tolist(),
                    "sigma_rot_deg": result.sigma_rot_deg.tolist(),
                    "poses": [p.name for p in result.poses],
                    "rejected": [[n, w] for n, w in result.rejected],
                    "reprojection_rms_px": result.reprojection_rms_px,
                    "range_rms_m": result.point_rms_m,
                    "edge_points": sum(p.n_edge_points for p in result.poses),
                    "rotation_deg_from_identity": rotation_error_deg(T, np.eye(4)),
                }
            )
        )
    else:
        print(result.summary(), file=sys.stderr)
        if not out:
            print(dump_calibration(rig), end="")
    return 0
