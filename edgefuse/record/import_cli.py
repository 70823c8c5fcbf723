"""``edgefuse import BAG``: convert a ROS 1 or ROS 2 bag into a session file (see ``rosbag.py``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from edgefuse.errors import ConfigError


def register(sub: Any) -> None:
    """Add the ``import`` verb to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "import",
        help="convert a ROS bag (ROS 1 .bag, ROS 2 sqlite3 or mcap) into a session file",
        description="Convert sensor_msgs Image, CompressedImage, PointCloud2, CameraInfo and "
        "audio_common AudioData from a ROS bag into an edgefuse session (MCAP). "
        "t_sensor_ns is header.stamp, t_host_ns the bag's receive time; CameraInfo becomes "
        "the attached rig calibration. Other types are counted and skipped.",
    )
    p.add_argument("bag", metavar="BAG", help="a .bag file, a ROS 2 bag folder, .db3 or .mcap")
    p.add_argument(
        "-o", "--out", metavar="FILE.mcap", help="output session (default: BAG's name + .mcap)"
    )
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="ROS_TOPIC=NODE/STREAM",
        help="name the output topic of a ROS topic (repeatable), e.g. "
        "/camera/color/image_raw=camera/image",
    )
    p.add_argument(
        "--topics",
        action="append",
        default=None,
        metavar="T1,T2",
        help="import only these ROS topics (comma list, repeatable)",
    )
    p.add_argument("--rig", help="name of the rig calibration (default: the bag's name)")
    p.add_argument("--audio-rate", type=int, default=16000, metavar="HZ", help="without AudioInfo")
    p.add_argument("--audio-channels", type=int, default=1, help="without AudioInfo")
    p.add_argument("--keep-nan", action="store_true", help="keep point cloud points with NaN x/y/z")
    p.add_argument("--compression", choices=("zstd", "lz4", "none"), default="zstd")
    p.set_defaults(fn=_cmd_import)


def parse_map(items: list[str]) -> dict[str, str]:
    """``ROS=NODE/STREAM`` items as a dict; ``ConfigError`` for a malformed or repeated one."""
    out: dict[str, str] = {}
    for item in items:
        ros, sep, target = item.partition("=")
        if not sep or not ros or not target:
            raise ConfigError(f"--map {item!r}: expected ROS_TOPIC=NODE/STREAM")
        if ros in out:
            raise ConfigError(f"--map names {ros!r} twice")
        out[ros] = target
    return out


def default_out(bag: Path) -> Path:
    """``<name>.mcap`` beside the bag (a ROS 2 bag's folder name; ``<name>.edgefuse.mcap``
    for a lone ``.mcap`` bag file, which would otherwise be overwritten)."""
    if (
        bag.is_file()
        and bag.suffix in (".db3", ".mcap")
        and (bag.parent / "metadata.yaml").exists()
    ):
        bag = bag.parent
    if bag.is_dir():
        return bag.parent / f"{bag.resolve().name}.mcap"
    return bag.with_suffix(".edgefuse.mcap" if bag.suffix == ".mcap" else ".mcap")


def _cmd_import(args: argparse.Namespace) -> int:
    from edgefuse.record.ros_msgs import AudioFormat
    from edgefuse.record.rosbag import import_bag

    bag = Path(args.bag)
    out = Path(args.out) if args.out else default_out(bag)
    topics = None
    if args.topics is not None:
        topics = {t.strip() for item in args.topics for t in item.split(",") if t.strip()}
    t0 = time.perf_counter()
    report = import_bag(
        bag,
        out,
        topic_map=parse_map(args.map),
        topics=topics,
        rig=args.rig,
        audio_default=AudioFormat(args.audio_rate, args.audio_channels),
        drop_nan=not args.keep_nan,
        compression=args.compression,
    )
    for line in report.lines():
        print(line)
    written = sum(report.written.values())
    print(f"wrote {out}: {written} messages in {time.perf_counter() - t0:.1f} s")
    return 0
