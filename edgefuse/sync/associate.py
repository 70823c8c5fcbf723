"""Offline association of stamp files (``edgefuse associate``), as TUM's ``associate.py`` does.

Two modes:

- ``nearest``: TUM ``associate.py`` semantics exactly. Of all pairs ``(a, b)`` of a stamp of
  the first file and one of the second with ``|a - (b + offset)| < max_difference``, sorted by
  ``(difference, a, b)``, each is taken when neither stamp is taken yet; the result is sorted by
  ``a``. Computed on sorted arrays with a window (the pairs within ``max_difference`` of each
  ``a`` are a contiguous run of the second file), so it costs ``O((n + m) log m + k log k)``
  for ``k`` pairs within reach instead of ``associate.py``'s ``O(n·m)`` double loop, with the
  same result. As in ``associate.py``, a stamp repeated in a file is one key whose line is the
  last one. With three files or more, every other file is associated with the first one and a
  set is output for each stamp of the first file that all of them matched.
- ``approximate``: ROS 2 message_filters' ``ApproximateTime``
  (:class:`~edgefuse.sync.approximate.ApproximateTimeSync`). The files' lines are fed as
  messages in stamp order (after the offset; ties in file order, then line order), as if each
  had arrived at its stamp, then the input is flushed (:meth:`ApproximateTimeSync.flush`). Sets
  come out in the order the policy publishes them.

The offset is added to the stamps of every file after the first, for matching only. The
output prints each member's *original* stamp text from its file: ``associate.py`` prints
``"%f %s %f %s" % (a, rest_a, b - offset, rest_b)``, a known bug (it matched with
``b + offset``), and ``%f`` would also round stamps with more than six decimals.
Differences are reported as ``member stamp - first file's stamp`` of the raw stamps (without
the offset).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgefuse.sync.approximate import ApproximateTimeSync
from edgefuse.sync.errors import AssociateError
from edgefuse.sync.stamps import StampEntry, StampFile

Mode = Literal["nearest", "approximate"]
MODES: tuple[Mode, ...] = ("nearest", "approximate")
#: ``associate.py``'s default ``--max_difference`` (0.02 s).
DEFAULT_MAX_DIFFERENCE_NS = 20_000_000
#: Default queue size of the approximate mode. ROS examples use 10, which drops messages of a
#: fast topic (an IMU at 200 Hz against a camera at 20 Hz); offline, memory is not a concern.
DEFAULT_QUEUE_SIZE = 100


@dataclass(frozen=True, slots=True)
class DifferenceStats:
    """Statistics of ``member stamp - first file's stamp`` over the sets, for one file."""

    path: str
    count: int
    mean_ms: float
    #: Population standard deviation (0 for a single set).
    sd_ms: float
    min_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class Association:
    """The sets found in some stamp files: one entry per file, in the files' order."""

    mode: Mode
    files: tuple[StampFile, ...]
    sets: tuple[tuple[StampEntry, ...], ...]

    def lines(self) -> list[str]:
        """The output lines: per set, each member's original stamp text and rest of line."""
        return [" ".join(member.format() for member in s) for s in self.sets]

    def differences_ns(self, file_index: int) -> list[int]:
        """``stamp of file file_index - stamp of the first file``, per set, in nanoseconds."""
        return [s[file_index].stamp_ns - s[0].stamp_ns for s in self.sets]

    def stats(self) -> tuple[DifferenceStats, ...]:
        """The difference statistics of every file after the first (empty when no set)."""
        if not self.sets:
            return ()
        out = []
        for j in range(1, len(self.files)):
            d = self.differences_ns(j)
            n = len(d)
            mean = sum(d) / n
            sd = math.sqrt(sum((x - mean) ** 2 for x in d) / n)
            out.append(
                DifferenceStats(
                    path=self.files[j].path,
                    count=n,
                    mean_ms=mean / 1e6,
                    sd_ms=sd / 1e6,
                    min_ms=min(d) / 1e6,
                    max_ms=max(d) / 1e6,
                )
            )
        return tuple(out)

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready summary: mode, number of sets, files, difference statistics."""
        return {
            "mode": self.mode,
            "sets": len(self.sets),
            "files": [
                {"path": f.path, "format": f.format, "entries": len(f.entries)} for f in self.files
            ],
            "differences_ms": [
                {
                    "path": s.path,
                    "mean": s.mean_ms,
                    "sd": s.sd_ms,
                    "min": s.min_ms,
                    "max": s.max_ms,
                }
                for s in self.stats()
            ],
        }


def nearest_pairs(
    first_ns: Sequence[int],
    second_ns: Sequence[int],
    *,
    offset_ns: int = 0,
    max_difference_ns: int = DEFAULT_MAX_DIFFERENCE_NS,
) -> list[tuple[int, int]]:
    """``associate.py``'s ``associate()`` on two sets of stamps: the greedy nearest pairs.

    Returns the pairs ``(a, b)`` sorted by ``a``, built as ``associate.py`` does: every pair
    with ``|a - (b + offset)| < max_difference`` in ``(difference, a, b)`` order, taken when
    both are still free. Repeated stamps count once. Only the pairs within reach are listed
    (by a window over the sorted second stamps), so the cost is that of sorting them.
    """
    firsts = sorted(set(first_ns))
    seconds = sorted(set(second_ns))
    candidates: list[tuple[int, int, int]] = []
    for a in firsts:
        # |a - (b + off)| < maxd  <=>  a - off - maxd < b < a - off + maxd
        lo = bisect.bisect_right(seconds, a - offset_ns - max_difference_ns)
        hi = bisect.bisect_left(seconds, a - offset_ns + max_difference_ns, lo)
        candidates.extend((abs(a - (b + offset_ns)), a, b) for b in seconds[lo:hi])
    candidates.sort()
    used_a: set[int] = set()
    used_b: set[int] = set()
    matches: list[tuple[int, int]] = []
    for _, a, b in candidates:
        if a not in used_a and b not in used_b:
            used_a.add(a)
            used_b.add(b)
            matches.append((a, b))
    matches.sort()
    return matches


def _by_stamp(f: StampFile) -> dict[int, StampEntry]:
    """Stamp → entry, the last line winning on a repeated stamp (``associate.py``'s dict)."""
    return {e.stamp_ns: e for e in f.entries}


def associate_nearest(
    files: Sequence[StampFile],
    *,
    offset_ns: int = 0,
    max_difference_ns: int = DEFAULT_MAX_DIFFERENCE_NS,
) -> Association:
    """Associate ``files`` like TUM ``associate.py`` (see the module documentation).

    With more than two files, each file after the first is paired with the first on its own,
    and a set is kept for a stamp of the first file when every other file paired it.
    """
    _check_files(files)
    if max_difference_ns <= 0:
        raise AssociateError(f"max difference must be positive, got {max_difference_ns} ns")
    tables = [_by_stamp(f) for f in files]
    partner: list[dict[int, int]] = [
        dict(
            nearest_pairs(
                list(tables[0]),
                list(t),
                offset_ns=offset_ns,
                max_difference_ns=max_difference_ns,
            )
        )
        for t in tables[1:]
    ]
    sets = tuple(
        (tables[0][a], *(t[p[a]] for t, p in zip(tables[1:], partner, strict=True)))
        for a in sorted(tables[0])
        if all(a in p for p in partner)
    )
    return Association(mode="nearest", files=tuple(files), sets=sets)


def associate_approximate(
    files: Sequence[StampFile],
    *,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    offset_ns: int = 0,
    max_interval_ns: int | None = None,
    lower_bounds_ns: Sequence[int] | None = None,
) -> Association:
    """Associate ``files`` with ROS 2 ``ApproximateTime``, one topic per file.

    Every line of every file is added as a message in stamp order (offset added to the files
    after the first; ties in file order, then line order), then the synchroniser is flushed.
    ``lower_bounds_ns`` gives one bound per file, or a single one for all files.
    """
    _check_files(files)
    n = len(files)
    if lower_bounds_ns is not None and len(lower_bounds_ns) == 1:
        lower_bounds_ns = list(lower_bounds_ns) * n
    if lower_bounds_ns is not None and len(lower_bounds_ns) != n:
        raise AssociateError(
            f"{len(lower_bounds_ns)} lower bounds for {n} files: give one, or one per file"
        )
    sync: ApproximateTimeSync[StampEntry] = ApproximateTimeSync(
        n, queue_size=queue_size, max_interval_ns=max_interval_ns, lower_bounds_ns=lower_bounds_ns
    )
    events = [
        (e.stamp_ns + (offset_ns if j else 0), j, k)
        for j, f in enumerate(files)
        for k, e in enumerate(f.entries)
    ]
    events.sort()
    published = []
    for stamp_ns, j, k in events:
        published.extend(sync.add(j, stamp_ns, files[j].entries[k]))
    published.extend(sync.flush())
    sets = tuple(tuple(entry for _, entry in s) for s in published)
    return Association(mode="approximate", files=tuple(files), sets=sets)


def associate(
    files: Sequence[StampFile],
    *,
    mode: Mode = "nearest",
    offset_ns: int = 0,
    max_difference_ns: int = DEFAULT_MAX_DIFFERENCE_NS,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    max_interval_ns: int | None = None,
    lower_bounds_ns: Sequence[int] | None = None,
) -> Association:
    """Associate ``files`` in ``mode``; options of the other mode are ignored.

    ``max_difference_ns`` is the nearest mode's; ``queue_size``, ``max_interval_ns`` and
    ``lower_bounds_ns`` are the approximate mode's; ``offset_ns`` applies to both.
    """
    if mode == "nearest":
        return associate_nearest(files, offset_ns=offset_ns, max_difference_ns=max_difference_ns)
    if mode == "approximate":
        return associate_approximate(
            files,
            queue_size=queue_size,
            offset_ns=offset_ns,
            max_interval_ns=max_interval_ns,
            lower_bounds_ns=lower_bounds_ns,
        )
    raise AssociateError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")


def _check_files(files: Sequence[StampFile]) -> None:
    """Refuse fewer than two files (nothing to associate)."""
    if len(files) < 2:
        raise AssociateError(f"need at least 2 stamp files to associate, got {len(files)}")
