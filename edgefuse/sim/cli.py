"""``edgefuse sim ...``: the simulated rig's command line (generate sessions, list scenarios)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from edgefuse import config


def register(sub: Any) -> None:
    """Add the ``sim`` verb and its actions to the top-level subparsers ``sub``."""
    sim = sub.add_parser("sim", help="the simulated rig: generate sessions, list scenarios")
    actions = sim.add_subparsers(dest="sim_verb", required=True, metavar="ACTION")
    gen = actions.add_parser(
        "generate",
        help="write a simulated session (MCAP of edgefuse envelopes) as fast as possible",
        description="Render the simulated rig offline into a session file; the same "
        "arguments give the same file, byte for byte.",
    )
    gen.add_argument("--scenario", default="day", help="scenario (edgefuse sim scenarios)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--duration", type=float, required=True, metavar="S", help="seconds")
    gen.add_argument("-o", "--out", required=True, metavar="FILE.mcap")
    gen.add_argument("--ideal-clocks", action="store_true", help="turn every clock error off")
    gen.add_argument(
        "--sensors", default="camera,depth,lidar,mic,truth", help="comma list of sources"
    )
    gen.add_argument("--rig", default=None, help="rig calibration (default the sim rig)")
    gen.add_argument(
        "--pipeline",
        metavar="PIPELINE.yaml",
        help="take the shared sim parameters (clocks, rig, lidar cut) from a pipeline file",
    )
    gen.add_argument(
        "--lidar-cut-deg",
        type=float,
        default=None,
        metavar="DEG",
        help="lidar cut azimuth (params.lidar_cut_azimuth_deg; default 180, behind the rig)",
    )
    gen.add_argument("--quiet", action="store_true", help="no progress on stderr")
    gen.set_defaults(fn=_cmd_generate)
    sc = actions.add_parser("scenarios", help="list the scenarios")
    sc.set_defaults(fn=_cmd_scenarios)


def _cmd_generate(args: argparse.Namespace) -> int:
    from edgefuse.sim.rig import SimParams

    data: dict[str, Any] = {"scenario": args.scenario, "seed": args.seed}
    if args.ideal_clocks:
        data["clocks"] = {"ideal": True}
    if args.rig:
        data["rig"] = args.rig
    if args.lidar_cut_deg is not None:
        data["lidar_cut_azimuth_deg"] = args.lidar_cut_deg
    if args.pipeline:
        from edgefuse.sim.clocks import ClocksConfig
        from edgefuse.sim.rig import sim_params_of_pipeline

        if args.ideal_clocks:
            data["clocks"] = ClocksConfig(ideal=True)
        params = sim_params_of_pipeline(args.pipeline, **data)
    else:
        params = config.build(SimParams, data)
    sensors = tuple(s.strip() for s in args.sensors.split(",") if s.strip())
    t0 = time.perf_counter()
    try:
        counts = _render(args, params, sensors)
    except ValueError as exc:
        print(f"edgefuse sim generate: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    if not args.quiet:
        sys.stderr.write("\n")
    for topic, n in sorted(counts.items()):
        print(f"{topic:14s} {n:7d} messages")
    print(f"wrote {args.out}: {args.duration:g} s simulated in {wall:.1f} s")
    return 0


def _cmd_scenarios(args: argparse.Namespace) -> int:
    from edgefuse.sim.scenarios import SCENARIOS

    for s in SCENARIOS.values():
        print(f"{s.name:8s} {s.lighting:5s}  {s.description}")
    return 0


def _render(args: argparse.Namespace, params: Any, sensors: tuple[str, ...]) -> dict[str, int]:
    # The scenarios with a scene of their own render through it; the rest through the world.
    from edgefuse.sim.generate import generate, print_progress

    if params.scenario == "calibration":
        # A board on a stand through varied poses, seen by camera, depth and lidar (the truth
        # of its pose on sim/board): the known answer for `edgefuse calibrate camera-lidar`.
        from edgefuse.sim.calib_scene import generate_calibration

        return generate_calibration(args.out, params, duration_s=args.duration)
    if params.scenario == "timing":
        # The board moved back and forth across the view, a clapper clicking as it passes
        # halfway: the known answer for `edgefuse calibrate time` (edgefuse.sim.time_scene).
        from edgefuse.sim.time_scene import generate_timing

        # Its known answers are in the session's metadata, not on a truth topic.
        sensors = tuple(s for s in sensors if s != "truth")
        return generate_timing(args.out, params, duration_s=args.duration, sensors=sensors)
    return generate(
        args.out,
        params,
        duration_s=args.duration,
        sensors=sensors,
        progress=None if args.quiet else print_progress(args.duration),
    )
