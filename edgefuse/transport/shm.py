"""A shared-memory ring of message slots, written by one publisher and read by any process.

A segment is a file in ``/dev/shm`` holding a 4 KiB control page followed by ``slot_count``
page-aligned slots. The control page holds one 64-bit *generation* per slot, used like a
seqlock: the writer makes it odd while it fills the slot and sets a new even value when the
slot is complete; the message that references the slot carries that even value. A reader
accepts the slot only while its generation still equals the one in the reference, so it
either gets intact data or a counted overrun, never a torn or reused slot.

Segments are mapped with ``mmap`` directly rather than ``multiprocessing.shared_memory``: on
Python < 3.13 the latter registers every *attached* segment with a resource tracker that
unlinks it when the reader exits, which would pull segments from under their writer.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import secrets
import stat
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from edgefuse.envelope import PayloadDesc, ShmRef
from edgefuse.errors import EnvelopeError
from edgefuse.transport.errors import ShmUnavailableError

SHM_DIR: Final = "/dev/shm"
PREFIX: Final = "edgefuse."
_MAGIC: Final = 0x31524D4853464500  # "\0EFSHMR1"
_CONTROL_BYTES: Final = 4096
_PAGE: Final = 4096
_ALIGN: Final = 64
_CONTROL = struct.Struct("<QQQQ")  # magic, slot_count, slot_capacity, writer pid
_GEN_OFFSET: Final = 64
MAX_SLOTS: Final = (_CONTROL_BYTES - _GEN_OFFSET) // 8


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def segment_name(run_id: str, topic: str, pid: int, index: int, token: str = "") -> str:
    """Name of a ring segment; the launcher removes every ``edgefuse.<run_id>.*`` on exit.

    ``token`` tells apart rings that would otherwise share a name (see :class:`ShmRing`).
    """
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", topic)
    return f"{PREFIX}{run_id}.{safe}.{pid}.{token}{index}"


def footprint(sizes: Iterable[int]) -> int:
    """Bytes of one slot that payloads of ``sizes`` take, alignment included."""
    return sum(_round_up(n, _ALIGN) for n in sizes)


def list_segments(prefix: str = PREFIX) -> list[str]:
    """Names of the segments in ``/dev/shm`` that start with ``prefix``."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def unlink_segments(prefix: str) -> list[str]:
    """Remove every segment whose name starts with ``prefix``; return the names removed."""
    removed = []
    for name in list_segments(prefix):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(SHM_DIR, name))
            removed.append(name)
    return removed


@dataclass(slots=True)
class Slot:
    """A slot being filled: where it is, how much of it is taken, and its bytes."""

    index: int
    data: np.ndarray  # uint8 view of the whole slot
    base_offset: int  # byte offset of the slot in the segment
    used: int = 0

    def take(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Reserve ``nbytes`` (64-byte aligned) in the slot; return (segment offset, bytes)."""
        start = _round_up(self.used, _ALIGN)
        end = start + nbytes
        if end > self.data.nbytes:
            raise ValueError("slot full")
        self.used = end
        return self.base_offset + start, self.data[start:end]


class _Segment:
    """One mapped segment (writer or reader side)."""

    def __init__(self, name: str, mm: mmap.mmap, slot_count: int, capacity: int) -> None:
        self.name = name
        self.mm = mm
        self.slot_count = slot_count
        self.capacity = capacity
        self.size = len(mm)
        whole = np.frombuffer(mm, dtype=np.uint8)
        self.gens = whole[_GEN_OFFSET : _GEN_OFFSET + 8 * slot_count].view("<u8")
        self.data = whole[_CONTROL_BYTES:]

    def slot_of(self, offset: int) -> int:
        return (offset - _CONTROL_BYTES) // self.capacity


class ShmRing:
    """The writer side: a ring of ``slot_count`` slots for one topic, grown when a message
    does not fit (a new, larger segment replaces the old one; readers follow the references).
    """

    def __init__(self, *, run_id: str, topic: str, slot_count: int = 8) -> None:
        if not 2 <= slot_count <= MAX_SLOTS:
            raise ValueError(f"slot_count must be in 2..{MAX_SLOTS}, got {slot_count}")
        self.run_id = run_id
        self.topic = topic
        self.slot_count = slot_count
        self._segment: _Segment | None = None
        self._made = 0
        self._next = 0
        self._generation = 0
        self._pending: Slot | None = None
        # Readers cache mappings by segment name. A second ring for the same topic in the same
        # process (a publisher re-created after close, or a reused pid) must not reuse a name,
        # or a reader still holding the old, unlinked segment would serve its stale bytes as
        # intact data whenever the generations happen to match.
        self._token = secrets.token_hex(4) + "-"

    @property
    def segment(self) -> str | None:
        """Name of the current segment, if one exists."""
        return None if self._segment is None else self._segment.name

    def _create(self, capacity: int) -> _Segment:
        name = segment_name(self.run_id, self.topic, os.getpid(), self._made, self._token)
        self._made += 1
        size = _CONTROL_BYTES + capacity * self.slot_count
        path = os.path.join(SHM_DIR, name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise ShmUnavailableError(f"cannot create {path}: {exc}") from exc
        try:
            # Reserve the pages now: a tmpfs that runs out later would SIGBUS the writer.
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            why = "no space left in /dev/shm" if exc.errno == errno.ENOSPC else str(exc)
            raise ShmUnavailableError(f"cannot allocate {size} bytes in {path}: {why}") from exc
        os.close(fd)
        _CONTROL.pack_into(mm, 0, _MAGIC, self.slot_count, capacity, os.getpid())
        return _Segment(name, mm, self.slot_count, capacity)

    @property
    def pending(self) -> bool:
        """True while a slot is being filled (loans or writes not yet committed)."""
        return self._pending is not None

    def fits(self, nbytes: int) -> bool:
        """True if the pending slot can still take ``nbytes`` more (alignment included)."""
        p = self._pending
        return p is not None and p.used + nbytes + _ALIGN <= p.data.nbytes

    def reserve(self, nbytes: int) -> Slot:
        """Start filling the next slot, able to hold at least ``nbytes``; mark it as being written.

        If a slot is already pending (loans were taken), it is returned when it has room;
        otherwise it is abandoned. All payloads of one message must lie in one slot (one
        commit publishes them), so a caller with several payloads reserves their
        :func:`footprint` first.
        """
        if self._pending is not None:
            if self.fits(nbytes):
                return self._pending
            self.abandon()
        seg = self._segment
        if seg is None or seg.capacity < nbytes + _ALIGN:
            capacity = _round_up(max(nbytes + _ALIGN, 1 << 20), _PAGE)
            if seg is not None:
                capacity = max(capacity, seg.capacity * 2)
            new = self._create(capacity)
            self._drop_segment()
            self._segment = seg = new
            self._next = 0
        i = self._next
        self._next = (i + 1) % seg.slot_count
        seg.gens[i] = self._generation + 1  # odd: being written
        base = _CONTROL_BYTES + i * seg.capacity
        self._pending = Slot(i, seg.data[i * seg.capacity : (i + 1) * seg.capacity], base)
        return self._pending

    def loan(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[np.ndarray, ShmRef]:
        """A writable array inside the pending slot; fill it, then commit the slot."""
        desc = PayloadDesc(np.dtype(dtype), tuple(shape))
        slot = self.reserve(desc.nbytes)
        offset, raw = slot.take(desc.nbytes)
        assert self._segment is not None
        ref = ShmRef(self._segment.name, offset, desc.nbytes, 0)
        return raw.view(desc.dtype).reshape(desc.shape), ref

    def write(self, arr: np.ndarray) -> ShmRef:
        """Copy ``arr`` into the pending slot (one memcpy)."""
        slot = self.reserve(arr.nbytes)
        offset, raw = slot.take(arr.nbytes)
        np.copyto(raw.view(arr.dtype).reshape(arr.shape), arr, casting="no")
        assert self._segment is not None
        return ShmRef(self._segment.name, offset, arr.nbytes, 0)

    def owns(self, arr: np.ndarray) -> ShmRef | None:
        """The reference of ``arr`` if it is a loan from the pending slot, else None."""
        slot, seg = self._pending, self._segment
        if slot is None or seg is None or not arr.flags.c_contiguous:
            return None
        base = slot.data.__array_interface__["data"][0]
        ptr = arr.__array_interface__["data"][0]
        if base <= ptr and ptr + arr.nbytes <= base + slot.used:
            return ShmRef(seg.name, slot.base_offset + (ptr - base), arr.nbytes, 0)
        return None

    def commit(self) -> int:
        """Publish the pending slot: set its new even generation and return it."""
        if self._pending is None or self._segment is None:
            raise RuntimeError("no pending slot to commit")
        self._generation += 2
        self._segment.gens[self._pending.index] = self._generation
        self._pending = None
        return self._generation

    def abandon(self) -> None:
        """Give up the pending slot (its odd generation keeps readers away)."""
        self._pending = None

    def _drop_segment(self) -> None:
        if self._segment is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(SHM_DIR, self._segment.name))
            # The mapping itself is released when the last array viewing it is gone.
            self._segment = None

    def close(self) -> None:
        """Unlink the segment. Readers that mapped it keep their mapping until they drop it."""
        self._pending = None
        self._drop_segment()


class ShmReader:
    """The reader side: maps segments by name (a few at a time) and resolves references."""

    def __init__(self, *, max_segments: int = 32) -> None:
        self._segments: OrderedDict[str, _Segment] = OrderedDict()
        self._max = max_segments

    def _open(self, name: str) -> _Segment:
        seg = self._segments.get(name)
        if seg is not None:
            self._segments.move_to_end(name)
            return seg
        # The name comes off the wire: a NUL would make os.open raise ValueError.
        if "/" in name or "\0" in name or not name.startswith(PREFIX):
            raise EnvelopeError("stale_shm", f"{name[:80]!r} is not an edgefuse segment name")
        try:
            # O_NONBLOCK: a FIFO planted under the name must not block the reader forever;
            # O_NOFOLLOW: a symlink must not expose another file as payload bytes.
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise EnvelopeError("stale_shm", f"segment {name} no longer exists") from None
        except OSError as exc:
            # Not "gone": permissions, fd exhaustion, a refused symlink. Say which.
            raise EnvelopeError(
                "stale_shm", f"segment {name} cannot be opened: {exc.strerror or exc}"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise EnvelopeError("stale_shm", f"{name} is not a shared-memory segment")
            if st.st_size < _CONTROL_BYTES:
                raise EnvelopeError(
                    "stale_shm", f"segment {name} is too small ({st.st_size} bytes)"
                )
            try:
                mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
            except OSError as exc:
                raise EnvelopeError("stale_shm", f"cannot map segment {name}: {exc}") from None
        finally:
            os.close(fd)
        magic, slot_count, capacity, _pid = _CONTROL.unpack_from(mm, 0)
        if (
            magic != _MAGIC
            or not 0 < slot_count <= MAX_SLOTS
            or capacity <= 0
            or _CONTROL_BYTES + slot_count * capacity > st.st_size
        ):
            raise EnvelopeError("stale_shm", f"segment {name} has no valid edgefuse ring header")
        seg = _Segment(name, mm, slot_count, capacity)
        self._prune()
        self._segments[name] = seg
        while len(self._segments) > self._max:
            self._segments.popitem(last=False)
        return seg

    def _prune(self) -> None:
        # A new segment usually means a ring grew or a publisher restarted, which unlinks the
        # old one. A mapping keeps an unlinked segment's memory allocated, so forget those
        # (arrays still viewing them keep their own mapping alive). Messages of one topic
        # arrive in order, so none will refer to the old segment after the new one.
        for old in list(self._segments):
            if not os.path.exists(os.path.join(SHM_DIR, old)):
                del self._segments[old]

    def close(self) -> None:
        """Forget every mapped segment (arrays still viewing one keep it mapped)."""
        self._segments.clear()

    def resolve(
        self, desc: PayloadDesc, generation: int, *, copy: bool
    ) -> tuple[np.ndarray, Callable[[], bool]]:
        """Return the payload as an array and a function that re-checks it is still intact.

        With ``copy`` the data is copied out and checked after the copy, so the array is owned
        and always intact; without, the array is a read-only view into the slot.
        """
        ref = desc.shm
        assert ref is not None
        # A committed slot always has an even generation of 2 or more; 0 is a slot never
        # written and an odd value one being written, whose bytes must never be served.
        if generation <= 0 or generation % 2:
            raise EnvelopeError(
                "stale_shm", f"generation {generation} was never published (not even and > 0)"
            )
        seg = self._open(ref.segment)
        slot = seg.slot_of(ref.offset)
        lo = _CONTROL_BYTES + slot * seg.capacity
        if not (
            0 <= slot < seg.slot_count
            and lo <= ref.offset
            and ref.offset + ref.nbytes <= lo + seg.capacity
        ):
            raise EnvelopeError(
                "stale_shm", f"reference {ref.offset}+{ref.nbytes} lies outside {seg.name}'s slots"
            )
        gens = seg.gens

        def intact() -> bool:
            return int(gens[slot]) == generation

        if not intact():
            raise EnvelopeError(
                "overrun", f"slot {slot} of {seg.name} was reused before it was read"
            )
        start = ref.offset - _CONTROL_BYTES
        raw = seg.data[start : start + ref.nbytes]
        arr = raw.view(desc.dtype).reshape(desc.shape)
        if copy:
            arr = arr.copy()
            if not intact():
                raise EnvelopeError(
                    "overrun", f"slot {slot} of {seg.name} was reused while copying"
                )
            return arr, lambda: True
        return arr, intact
