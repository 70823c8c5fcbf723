"""Payload sizes and the content markers every benchmark message carries.

A payload is viewed as little-endian 64-bit words. The sender writes a few of them (the
rest of the payload is whatever the producer put there): word 0 holds a magic value and the
message kind, word 1 the sequence number, word 2 the send stamp (for peers whose wire format
has no header of its own), and a middle and the last word hold the sequence number mixed
with constants. The receiver checks all of them, so a payload that is torn, stale (a reused
buffer still holding an older message) or misplaced is counted as corrupt instead of
passing as data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import numpy as np

KIND_PROBE: Final = 0  # sent until the subscriber is connected; never measured
KIND_WARMUP: Final = 1  # sent after the subscriber is connected; discarded
KIND_MEASURED: Final = 2
KIND_END: Final = 3

_MAGIC: Final = 0xEDF0_BE4C_0000_0000
_KIND_MASK: Final = 0xFF
_MID_KEY: Final = 0x5A5A_5A5A_A5A5_A5A5
_LAST_KEY: Final = 0x0123_4567_89AB_CDEF
#: Smallest payload that holds every marker.
MIN_BYTES: Final = 64

#: The issue's sizes: (bytes, shape). The two frames are uint8 BGR images.
PRESETS: Final[dict[str, tuple[int, tuple[int, ...]]]] = {
    "1KiB": (1024, (1024,)),
    "64KiB": (64 * 1024, (64 * 1024,)),
    "1MiB": (1 << 20, (1 << 20,)),
    "6.2MiB": (1920 * 1080 * 3, (1080, 1920, 3)),  # 1080p bgr8
    "24.9MiB": (3840 * 2160 * 3, (2160, 3840, 3)),  # 4K bgr8
}
_UNITS: Final = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_SIZE_RE: Final = re.compile(r"^(\d+(?:\.\d+)?)(B|KiB|MiB|GiB)$")


@dataclass(frozen=True, slots=True)
class Size:
    """A payload size: its name as given on the command line, byte count and array shape."""

    name: str
    nbytes: int
    shape: tuple[int, ...]


def parse_size(name: str) -> Size:
    """Turn ``1KiB``, ``6.2MiB`` (the presets) or e.g. ``3MiB`` into a :class:`Size`.

    Sizes that are not presets are rounded up to a multiple of 8 bytes (the markers are
    64-bit words) and to at least :data:`MIN_BYTES`; raises ``ValueError`` for anything else.
    """
    name = name.strip()
    if name in PRESETS:
        nbytes, shape = PRESETS[name]
        return Size(name, nbytes, shape)
    m = _SIZE_RE.match(name)
    if m is None:
        raise ValueError(f"size {name!r}: expected e.g. 1KiB, 64KiB, 1MiB, 6.2MiB, 24.9MiB")
    nbytes = int(float(m.group(1)) * _UNITS[m.group(2)])
    nbytes = max(MIN_BYTES, (nbytes + 7) // 8 * 8)
    return Size(name, nbytes, (nbytes,))


def words(payload: np.ndarray) -> np.ndarray:
    """The payload as a flat array of uint64 words (a view: no copy)."""
    return payload.reshape(-1).view(np.uint8).view("<u8")


def stamp(w: np.ndarray, kind: int, seq: int, t_send_ns: int = 0) -> None:
    """Write the markers of message ``seq`` into the words ``w``."""
    w[0] = _MAGIC | kind
    w[1] = seq
    w[2] = t_send_ns
    w[len(w) // 2] = seq ^ _MID_KEY
    w[-1] = seq ^ _LAST_KEY


def check(w: np.ndarray) -> tuple[int, int, int] | None:
    """``(kind, seq, t_send_ns)`` read from the markers, or None if they do not agree."""
    head = int(w[0])
    seq = int(w[1])
    if head & ~_KIND_MASK != _MAGIC or (head & _KIND_MASK) > KIND_END:
        return None
    if int(w[len(w) // 2]) != seq ^ _MID_KEY or int(w[-1]) != seq ^ _LAST_KEY:
        return None
    return head & _KIND_MASK, seq, int(w[2])


def filled(shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 array of ``shape`` holding a byte pattern, every page of it touched."""
    n = 1
    for d in shape:
        n *= d
    return np.resize(np.arange(251, dtype=np.uint8), n).reshape(shape)
