"""``edgefuse associate``: associate stamp files offline (TUM associate.py, ROS approx. time)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgefuse.sync.associate import DEFAULT_MAX_DIFFERENCE_NS, DEFAULT_QUEUE_SIZE, MODES
from edgefuse.sync.errors import AssociateError

_DESCRIPTION = """\
Associate the stamps of two or more files and print one line per set on stdout: each member's
stamp, as written in its file, followed by the rest of its line, members in the order the files
are given (the output of TUM's associate.py). A summary goes to stderr: the number of sets and,
for every file after the first, the mean, standard deviation, min and max of its stamp minus the
first file's stamp, in ms.

Modes:
  nearest      TUM associate.py exactly: of all pairs with |a - (b + offset)| < max-difference,
               the closest are taken greedily, each stamp at most once; output sorted by the
               first file's stamp. With 3+ files, each file is paired with the first and a set
               is printed when all of them paired the first file's stamp.
  approximate  ROS 2 message_filters ApproximateTime: lines are fed as messages in stamp order
               (as if each arrived at its stamp); sets still pending at the end are flushed.

Stamp files (format detected per file): TUM lists ("stamp_s rest", '#' comments, separators
space, tab or comma), CSV with a unit header such as EuRoC's "#timestamp [ns],filename",
integer nanoseconds (18+ digits), and KITTI raw timestamps.txt ("2011-09-26 13:02:25.961661696").
"""

_EPILOG = """\
Unlike associate.py, which prints the second stamp as "b - offset" (it matched with b + offset)
and reformats stamps with %f, every stamp is printed exactly as written in its file; the offset
only shifts the stamps used for matching. Exit status 2 on a missing or unparsable file (the
message names the file and line) and when nothing matched.

example: edgefuse associate rgb.txt depth.txt > associations.txt
"""


def register(sub: Any) -> None:
    """Add the ``associate`` verb to the top-level subparsers ``sub``."""
    p = sub.add_parser(
        "associate",
        help="associate the stamps of 2+ files offline (TUM associate.py, ROS ApproximateTime)",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="stamp files (at least two)")
    p.add_argument("--mode", choices=MODES, default="nearest", help="default: nearest")
    p.add_argument(
        "--offset",
        type=_seconds_ns,
        default=0,
        metavar="S",
        help="seconds added to the stamps of every file after the first, for matching (default 0)",
    )
    p.add_argument(
        "--max-difference",
        type=_seconds_ns,
        default=DEFAULT_MAX_DIFFERENCE_NS,
        metavar="S",
        help="nearest: pairs must differ by less than S seconds (default 0.02, as associate.py)",
    )
    p.add_argument(
        "--queue-size",
        type=_positive_int,
        default=DEFAULT_QUEUE_SIZE,
        metavar="N",
        help=f"approximate: messages kept per file (default {DEFAULT_QUEUE_SIZE})",
    )
    p.add_argument(
        "--max-interval",
        type=_seconds_ns,
        default=None,
        metavar="S",
        help="approximate: refuse sets spanning more than S seconds (default: no limit)",
    )
    p.add_argument(
        "--lower-bound",
        type=_seconds_ns,
        nargs="+",
        default=None,
        metavar="S",
        help="approximate: least time between two lines of a file, one for all files or one "
        "per file, after the FILEs (lets sets out earlier; default 0)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON summary on stdout instead of the sets (and nothing on stderr)",
    )
    p.set_defaults(fn=_cmd_associate)


def _seconds_ns(text: str) -> int:
    """argparse type: decimal seconds to integer nanoseconds (exact, no float)."""
    from edgefuse.sync.stamps import parse_decimal_ns

    try:
        return parse_decimal_ns(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _cmd_associate(args: argparse.Namespace) -> int:
    from edgefuse.sync.associate import associate
    from edgefuse.sync.stamps import read_stamp_file

    if len(args.files) < 2:
        raise AssociateError(f"need at least 2 stamp files to associate, got {len(args.files)}")
    files = [read_stamp_file(path) for path in args.files]
    result = associate(
        files,
        mode=args.mode,
        offset_ns=args.offset,
        max_difference_ns=args.max_difference,
        queue_size=args.queue_size,
        max_interval_ns=args.max_interval,
        lower_bounds_ns=args.lower_bound,
    )
    if not result.sets:
        hint = (
            f"--max-difference {args.max_difference / 1e9:g} s, --offset {args.offset / 1e9:g} s"
            if args.mode == "nearest"
            else "see --max-interval, --queue-size and --offset"
        )
        raise AssociateError(f"nothing matched ({args.mode} mode, {hint})")
    if args.json:
        print(json.dumps(result.summary(), indent=2))
        return 0
    sys.stdout.write("\n".join(result.lines()) + "\n")
    counts = ", ".join(str(len(f.entries)) for f in files)
    err = sys.stderr
    err.write(f"associated {len(result.sets)} sets ({args.mode}; stamps per file: {counts})\n")
    for s in result.stats():
        err.write(
            f"  {s.path} - {files[0].path}: mean {s.mean_ms:.3f} ms, sd {s.sd_ms:.3f} ms, "
            f"min {s.min_ms:.3f} ms, max {s.max_ms:.3f} ms\n"
        )
    return 0
