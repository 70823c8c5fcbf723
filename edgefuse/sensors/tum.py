"""TUM RGB-D sequences: the stamp lists and the 16-bit depth PNGs of the TUM benchmark format.

A sequence folder holds ``depth.txt`` and ``rgb.txt``: one ``stamp path`` per line, the stamp in
seconds with a decimal fraction, the path relative to the folder, ``#`` starts a comment. A
depth image is a 16-bit single-channel PNG whose value divided by 5000 is the depth in metres
(0 = no measurement). Stamps are parsed as exact decimals into int64 nanoseconds, so a stamp
written with microseconds survives the round trip bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edgefuse.errors import ConfigError, EdgefuseError

#: TUM depth PNG values per metre (value / 5000 = metres).
TUM_DEPTH_FACTOR = 5000
#: The same as a depth scale in metres per unit, as carried in ``meta.depth_scale_m``.
TUM_DEPTH_SCALE_M = 1.0 / TUM_DEPTH_FACTOR


class DepthFrameError(EdgefuseError):
    """One depth frame that cannot be used (missing, unreadable, wrong pixel type)."""


@dataclass(frozen=True, slots=True)
class TumEntry:
    """One line of a TUM list file: the sensor stamp and the file it names."""

    t_sensor_ns: int
    path: Path
    #: 1-based line number in the list file (for messages).
    line: int


def parse_stamp_ns(text: str) -> int:
    """Seconds written as a decimal (``1305031102.160407``) to int nanoseconds, exactly.

    Parsing the digits instead of going through a float keeps every stamp of a 10-digit epoch
    with microseconds exact (a float64 has only about 16 significant digits). Raises
    ``ValueError`` naming the text when it is not a plain non-negative decimal.
    """
    whole, dot, frac = text.strip().partition(".")
    if not whole.isdigit() or (dot and not frac.isdigit()) or len(frac) > 9:
        raise ValueError(f"not a stamp in seconds: {text!r}")
    return int(whole) * 1_000_000_000 + int(frac.ljust(9, "0") if frac else "0")


def read_list(path: str | os.PathLike[str]) -> list[TumEntry]:
    """Read a TUM list file (``depth.txt``, ``rgb.txt``): entries in file order.

    Paths are resolved against the list file's folder. A malformed line raises
    :class:`~edgefuse.errors.ConfigError` naming the file and the line; an empty list (only
    comments) is an error too, since a sequence without frames is surely a wrong path.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"TUM list {p}: cannot read ({exc.strerror or exc})") from exc
    entries: list[TumEntry] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 2:
            raise ConfigError(f"TUM list {p}:{n}: expected 'stamp path', got {raw.strip()!r}")
        try:
            t_ns = parse_stamp_ns(fields[0])
        except ValueError as exc:
            raise ConfigError(f"TUM list {p}:{n}: {exc}") from exc
        entries.append(TumEntry(t_ns, p.parent / fields[1], n))
    if not entries:
        raise ConfigError(f"TUM list {p}: no entries (only comments or blank lines)")
    return entries


def load_depth_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a 16-bit single-channel depth PNG as an (H, W) uint16 array, values untouched.

    Raises :class:`DepthFrameError` when the file is missing, cannot be decoded, or is not
    16-bit single-channel (an 8-bit PNG in a depth list would silently give depths 256 times
    too small).
    """
    p = Path(path)
    if not p.is_file():
        raise DepthFrameError(f"{p}: no such file")
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DepthFrameError(f"{p}: not a readable image (corrupt or truncated)")
    if img.dtype != np.uint16 or img.ndim != 2:
        raise DepthFrameError(
            f"{p}: expected a 16-bit single-channel depth PNG, got {img.dtype} "
            f"with shape {img.shape}"
        )
    return np.ascontiguousarray(img)


def depth_m(z16: np.ndarray, factor: float = TUM_DEPTH_FACTOR) -> np.ndarray:
    """Depth in metres (float64) of a TUM depth image: ``value / factor``, 0 stays 0."""
    return z16.astype(np.float64) / factor


@dataclass(frozen=True, slots=True)
class TumFrame:
    """One depth frame of a sequence, or the reason it could not be read."""

    index: int
    entry: TumEntry
    image: np.ndarray | None
    error: str = ""


class TumDepthSequence:
    """The depth stream of a TUM sequence folder (or a ``depth.txt`` given directly).

    Iterating yields one :class:`TumFrame` per list entry in file order; a frame that cannot
    be read carries its error instead of an image, so a caller can count and skip it and go on.
    """

    def __init__(self, path: str | os.PathLike[str], *, list_name: str = "depth.txt") -> None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(
                f"TUM sequence {p}: no such file or folder "
                f"(expected a folder holding {list_name}, or the list file itself)"
            )
        self.list_path = p / list_name if p.is_dir() else p
        if not self.list_path.is_file():
            raise ConfigError(f"TUM sequence {p}: {list_name} not found in the folder")
        self.entries = read_list(self.list_path)

    def __len__(self) -> int:
        return len(self.entries)

    def period_ns(self) -> int:
        """Median spacing of the stamps (ns), used to continue the stamps across a loop."""
        if len(self.entries) < 2:
            return 0
        d = np.diff([e.t_sensor_ns for e in self.entries])
        return int(np.median(d))

    def frame(self, index: int) -> TumFrame:
        """Read entry ``index``: the image, or the error that kept it from being read."""
        entry = self.entries[index]
        try:
            return TumFrame(index, entry, load_depth_png(entry.path))
        except DepthFrameError as exc:
            return TumFrame(index, entry, None, str(exc))

    def __iter__(self) -> Iterator[TumFrame]:
        for i in range(len(self.entries)):
            yield self.frame(i)
