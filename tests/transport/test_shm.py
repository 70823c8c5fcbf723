"""The shared-memory ring: real segments in /dev/shm, a writer and independent reader mappings.

The reader (``ShmReader``) maps a segment by name with its own ``mmap``, exactly as a process
on the other side of a socket does; the writer and reader share nothing else.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from edgefuse.envelope import PayloadDesc, ShmRef
from edgefuse.errors import EnvelopeError
from edgefuse.transport import shm
from edgefuse.transport.shm import SHM_DIR, ShmReader, ShmRing

from .conftest import SPAWN, Children

TOPIC = "cam/image"


def desc_of(arr: np.ndarray, ref: ShmRef, generation: int) -> PayloadDesc:
    return PayloadDesc(
        arr.dtype,
        arr.shape,
        ShmRef(ref.segment, ref.offset, ref.nbytes, generation),
    )


def kind_of(call: Callable[[], object]) -> str:
    with pytest.raises(EnvelopeError) as err:
        call()
    return err.value.kind


def exists(name: str | None) -> bool:
    return name is not None and os.path.exists(os.path.join(SHM_DIR, name))


def control_page(segment: str) -> tuple[int, int, list[int]]:
    """(slot_count, slot capacity, generations) read straight from the segment file."""
    with open(os.path.join(SHM_DIR, segment), "rb") as f:
        page = f.read(4096)
    _magic, slot_count, capacity, _pid = struct.unpack_from("<QQQQ", page)
    return slot_count, capacity, list(struct.unpack_from(f"<{slot_count}Q", page, 64))


def slot_of(ref: ShmRef) -> int:
    return (ref.offset - 4096) // control_page(ref.segment)[1]


def mapped(segment: str | None) -> bool:
    """True while this process maps ``segment``."""
    with open("/proc/self/maps") as f:
        return any(f"/dev/shm/{segment}" in line for line in f)


@pytest.fixture
def ring(run_id: str) -> Iterator[ShmRing]:
    r = ShmRing(run_id=run_id, topic=TOPIC, slot_count=4)
    yield r
    r.close()


@pytest.fixture
def reader() -> Iterator[ShmReader]:
    r = ShmReader()
    yield r
    r.close()


def test_write_commit_resolve_round_trip(ring: ShmRing, reader: ShmReader, run_id: str) -> None:
    src = np.arange(100_000, dtype=">f4").reshape(250, 400)
    ref = ring.write(src)
    gen = ring.commit()
    assert gen > 0 and gen % 2 == 0
    assert ring.segment == ref.segment
    assert ref.segment.startswith(f"edgefuse.{run_id}.cam-image.{os.getpid()}.")
    assert exists(ref.segment)
    assert ref.nbytes == src.nbytes and ref.offset % 64 == 0
    arr, intact = reader.resolve(desc_of(src, ref, gen), gen, copy=False)
    assert arr.dtype == src.dtype and arr.shape == src.shape
    assert np.array_equal(arr, src)
    assert not arr.flags.writeable  # a read-only mapping
    assert intact()


def test_loans_are_filled_in_place_and_several_share_one_slot(
    ring: ShmRing, reader: ShmReader
) -> None:
    a, ref_a = ring.loan((480, 640, 3), np.dtype(np.uint8))
    b, ref_b = ring.loan((1000,), np.dtype("<u8"))
    assert a.flags.writeable and a.flags.c_contiguous
    a[...] = 7
    b[...] = np.arange(1000)
    assert ring.owns(a) == ref_a
    assert ring.owns(b) == ref_b
    assert ring.owns(np.zeros(3)) is None
    assert ring.owns(a[:, ::2]) is None  # not contiguous: cannot travel by reference
    gen = ring.commit()
    ra, _ = reader.resolve(desc_of(a, ref_a, gen), gen, copy=False)
    rb, _ = reader.resolve(desc_of(b, ref_b, gen), gen, copy=False)
    assert ref_a.segment == ref_b.segment
    assert ref_b.offset >= ref_a.offset + a.nbytes  # no overlap
    assert bool(np.all(ra == 7)) and np.array_equal(rb, np.arange(1000))
    # Zero copy: the reader's view is the very memory the writer filled.
    a[0, 0, 0] = 99
    assert ra[0, 0, 0] == 99


def test_generation_is_odd_while_a_slot_is_written(ring: ShmRing, reader: ShmReader) -> None:
    first = np.full(1000, 1, np.uint8)
    ref1 = ring.write(first)
    gen1 = ring.commit()
    arr1, intact1 = reader.resolve(desc_of(first, ref1, gen1), gen1, copy=False)
    # Fill the ring until the writer is back on the first slot, and stop half-way.
    for _ in range(ring.slot_count - 1):
        ring.write(np.zeros(1000, np.uint8))
        ring.commit()
    slot = ring.reserve(1000)
    assert slot.index == slot_of(ref1)
    odd = control_page(ref1.segment)[2][slot.index]
    assert odd % 2 == 1  # being written
    # A reader can no longer accept the old reference to that slot ...
    assert not intact1()
    assert kind_of(lambda: reader.resolve(desc_of(first, ref1, gen1), gen1, copy=False)) == (
        "overrun"
    )
    # ... nor a reference that claims the odd generation of the slot being written.
    assert kind_of(lambda: reader.resolve(desc_of(first, ref1, odd), odd, copy=False)) == (
        "stale_shm"
    )
    gen = ring.commit()
    assert control_page(ref1.segment)[2][slot.index] == gen and gen % 2 == 0
    assert arr1.shape == first.shape  # the old view stays mapped (its content is not vouched)


def test_a_reused_slot_is_an_overrun_never_data(ring: ShmRing, reader: ShmReader) -> None:
    refs = []
    for i in range(ring.slot_count + 2):
        src = np.full(5000, i, np.uint8)
        refs.append((src, ring.write(src), ring.commit()))
    for i, (src, ref, gen) in enumerate(refs):
        desc = desc_of(src, ref, gen)
        if i < 2:  # slots 0 and 1 have been written again
            assert kind_of(lambda d=desc, g=gen: reader.resolve(d, g, copy=False)) == "overrun"
            assert kind_of(lambda d=desc, g=gen: reader.resolve(d, g, copy=True)) == "overrun"
        else:
            arr, intact = reader.resolve(desc, gen, copy=False)
            assert bool(np.all(arr == i)) and intact()


def test_copy_returns_owned_data_that_stays_intact(ring: ShmRing, reader: ShmReader) -> None:
    src = np.arange(4096, dtype="<i8")
    ref = ring.write(src)
    gen = ring.commit()
    view, view_ok = reader.resolve(desc_of(src, ref, gen), gen, copy=False)
    owned, owned_ok = reader.resolve(desc_of(src, ref, gen), gen, copy=True)
    assert owned.flags.owndata and owned.flags.writeable
    assert not np.shares_memory(owned, view)
    for _ in range(ring.slot_count):  # overwrite every slot, the referenced one included
        ring.write(np.full(4096, -1, "<i8"))
        ring.commit()
    assert not view_ok() and bool(np.all(view == -1))  # the view now shows other data ...
    assert owned_ok() and np.array_equal(owned, src)  # ... the copy does not


def test_ring_grows_for_a_large_message_and_unlinks_the_old_segment(
    ring: ShmRing, reader: ShmReader
) -> None:
    small = np.full(1000, 3, np.uint8)
    ref_small = ring.write(small)
    gen_small = ring.commit()
    old_view, old_ok = reader.resolve(desc_of(small, ref_small, gen_small), gen_small, copy=False)
    first = ring.segment
    assert exists(first)
    big = np.arange(3 << 20, dtype=np.uint8)  # larger than the 1 MiB slots
    ref_big = ring.write(big)
    gen_big = ring.commit()
    assert ref_big.segment == ring.segment != first
    assert exists(ring.segment) and not exists(first)
    arr, ok = reader.resolve(desc_of(big, ref_big, gen_big), gen_big, copy=False)
    assert np.array_equal(arr, big) and ok()
    # What was read from the old segment is still there and still valid ...
    assert bool(np.all(old_view == 3)) and old_ok()
    assert mapped(first)
    # ... and once nobody views it, its memory is released: neither the writer nor the reader
    # keeps an unlinked segment mapped.
    del old_view, old_ok
    assert not mapped(first)
    assert mapped(ring.segment)
    # Names never repeat: a new ring for the same topic in this process gets its own.
    other = ShmRing(run_id=ring.run_id, topic=TOPIC)
    try:
        other.write(small)
        other.commit()
        assert other.segment not in (first, ring.segment)
    finally:
        other.close()


def test_close_unlinks_and_later_references_are_stale(ring: ShmRing, reader: ShmReader) -> None:
    src = np.ones(100, np.uint8)
    ref = ring.write(src)
    gen = ring.commit()
    name = ring.segment
    ring.close()
    assert not exists(name) and ring.segment is None
    assert kind_of(lambda: reader.resolve(desc_of(src, ref, gen), gen, copy=False)) == "stale_shm"
    ring.close()  # twice is fine


def test_abandoned_slot_is_never_published(ring: ShmRing, reader: ShmReader) -> None:
    arr, ref = ring.loan((100,), np.dtype(np.uint8))
    arr[...] = 5
    ring.abandon()
    with pytest.raises(RuntimeError, match="no pending slot"):
        ring.commit()
    assert control_page(ref.segment)[2][slot_of(ref)] % 2 == 1  # stays odd: unreadable
    for generation in (1, 2, 3):
        desc = desc_of(arr, ref, generation)
        assert kind_of(lambda d=desc, g=generation: reader.resolve(d, g, copy=False)) in (
            "overrun",
            "stale_shm",
        )


def test_slot_count_is_checked(run_id: str) -> None:
    for bad in (0, 1, shm.MAX_SLOTS + 1):
        with pytest.raises(ValueError, match="slot_count"):
            ShmRing(run_id=run_id, topic=TOPIC, slot_count=bad)


def test_segment_names_are_safe_file_names() -> None:
    name = shm.segment_name("run1", "cam/../image x", 42, 3)
    assert name.startswith("edgefuse.run1.") and "/" not in name and " " not in name
    assert shm.footprint([1, 64, 65]) == 64 + 64 + 128


def test_list_and_unlink_segments_by_prefix(run_id: str) -> None:
    rings = [ShmRing(run_id=run_id, topic=f"n/s{i}") for i in range(3)]
    for r in rings:
        r.write(np.zeros(10, np.uint8))
        r.commit()
    prefix = f"edgefuse.{run_id}."
    names = shm.list_segments(prefix)
    assert sorted(names) == sorted(r.segment for r in rings if r.segment)
    assert sorted(shm.unlink_segments(prefix)) == sorted(names)
    assert shm.list_segments(prefix) == []
    for r in rings:
        r.close()  # already gone: no error


def _read_in_child(segment: str, offset: int, nbytes: int, generation: int, conn: object) -> None:
    reader = ShmReader()
    desc = PayloadDesc(np.dtype(np.uint8), (nbytes,), ShmRef(segment, offset, nbytes, generation))
    arr, _ = reader.resolve(desc, generation, copy=True)
    conn.send(int(arr.astype(np.uint64).sum()))  # type: ignore[attr-defined]
    reader.close()


def test_another_process_reads_the_slot(ring: ShmRing, children: Children) -> None:
    src = (np.arange(200_000) % 251).astype(np.uint8)
    ref = ring.write(src)
    gen = ring.commit()
    mine, theirs = SPAWN.Pipe()
    proc = children.start(_read_in_child, ref.segment, ref.offset, ref.nbytes, gen, theirs)
    assert mine.poll(20), "the child sent nothing"
    assert mine.recv() == int(src.astype(np.uint64).sum())
    children.join(proc)
