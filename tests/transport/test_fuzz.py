"""Fuzzing the decoder: whatever arrives, a node counts it, logs it once and carries on.

The low-level functions (``envelope.decode_header``, ``envelope.decode``) may raise only
``EnvelopeError``; ``Subscriber.decode`` never raises and counts every message it drops in
exactly one place: ``stats[topic].malformed[kind]``, ``stats[topic].overruns`` or
``unattributed``. Stale shared-memory references are resolved against a real ring in /dev/shm.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefuse import envelope
from edgefuse.envelope import Header, PayloadDesc, ShmRef
from edgefuse.errors import EnvelopeError
from edgefuse.transport import Subscriber, TransportOptions
from edgefuse.transport.shm import SHM_DIR, ShmRing

from .conftest import open_fds

TOPIC = "cam/image"
PUBSUB_LOG = "edgefuse.transport.pubsub"
FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- building headers by hand, lies included ------------------------------------------------


def s16(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<H", len(b)) + b


def payload_record(
    dtype: str = "<u1",
    shape: tuple[int, ...] = (4,),
    *,
    ndim: int | None = None,
    kind: int | None = None,
    shm: tuple[str, int, int, int] | None = None,
) -> bytes:
    """One payload description; ``ndim``/``kind`` may lie about what follows."""
    kind = (0 if shm is None else 1) if kind is None else kind
    out = struct.pack("<B", kind) + struct.pack("<B", len(dtype)) + dtype.encode()
    out += struct.pack("<B", len(shape) if ndim is None else ndim)
    out += struct.pack(f"<{len(shape)}Q", *shape)
    if shm is not None:
        segment, offset, nbytes, generation = shm
        out += s16(segment) + struct.pack("<QQQ", offset, nbytes, generation)
    return out


def raw_header(
    *records: bytes,
    version: int = 1,
    n_payloads: int | None = None,
    seq: int = 0,
    stream: str = "image",
    meta: bytes = b"",
) -> bytes:
    """A version-1 header built from its documented layout."""
    n = len(records) if n_payloads is None else n_payloads
    out = struct.pack("<BBHQqqqq", version, 0, n, seq, 1, 2, envelope.T_UNKNOWN, 3)
    out += s16(stream) + s16("frame") + s16("u8")
    out += struct.pack("<I", len(meta)) + meta
    return out + b"".join(records)


def dropped(sub: Subscriber) -> int:
    """Every message ``sub`` has dropped or ignored, wherever it was counted."""
    sts = [*sub.stats.values(), sub.unattributed]
    return sub.ignored + sum(s.overruns + sum(s.malformed.values()) for s in sts)


def delivered(sub: Subscriber) -> int:
    return sum(s.messages for s in sub.stats.values())


def decode_counted(sub: Subscriber, frames: list[Any]) -> envelope.Message | None:
    """``sub.decode`` plus the invariant: one message in, exactly one count out."""
    d0, m0 = dropped(sub), delivered(sub)
    msg = sub.decode(frames)
    if msg is None:
        assert (dropped(sub), delivered(sub)) == (d0 + 1, m0), "a drop must be counted once"
    else:
        assert (dropped(sub), delivered(sub)) == (d0, m0 + 1)
        assert msg.topic == TOPIC
    return msg


@pytest.fixture
def sub(ipc: Callable[[str], str], run_id: str) -> Iterator[Subscriber]:
    """A real subscriber (its socket connects to nobody); frames are fed to ``decode``."""
    with Subscriber(ipc("nobody"), [TOPIC], options=TransportOptions(run_id=run_id)) as s:
        yield s


@pytest.fixture
def ring(run_id: str) -> Iterator[tuple[ShmRing, list[tuple[ShmRef, int]]]]:
    """A real ring with three committed 4 KiB messages: (ring, [(ref, generation)])."""
    r = ShmRing(run_id=run_id, topic=TOPIC, slot_count=4)
    refs = []
    for i in range(3):
        ref = r.write(np.full(4096, i, np.uint8))
        refs.append((ref, r.commit()))
    yield r, refs
    r.close()


# --- the low-level functions raise EnvelopeError and nothing else ----------------------------


@FUZZ
@given(data=st.binary(max_size=300))
def test_decode_header_raises_only_envelope_error_for_random_bytes(data: bytes) -> None:
    for buf in (data, b"\x01" + data):  # also past the version check
        with contextlib.suppress(EnvelopeError):
            envelope.decode_header(buf)


valid_headers = st.builds(
    lambda n, dt, shape, meta, shm: envelope.encode_header(
        Header("image", seq=n, meta=meta),
        [
            PayloadDesc(np.dtype(dt), shape),
            PayloadDesc(
                np.dtype(dt),
                shape,
                ShmRef("edgefuse.x", 4096, PayloadDesc(np.dtype(dt), shape).nbytes, 2),
            )
            if shm
            else PayloadDesc(np.dtype(dt), ()),
        ],
    ),
    st.integers(0, 2**64 - 1),
    st.sampled_from(["<u1", ">f8", "<c16", "|b1", "<i2"]),
    st.lists(st.integers(0, 6), max_size=4).map(tuple),
    st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    st.booleans(),
)


@st.composite
def mutated(draw: st.DrawFn, headers: st.SearchStrategy[bytes]) -> bytes:
    """A valid header with bytes flipped, cut, inserted or overwritten."""
    buf = bytearray(draw(headers))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif buf:
            buf[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
    return bytes(buf)


@FUZZ
@given(header=mutated(valid_headers))
def test_decode_header_raises_only_envelope_error_for_mutated_headers(header: bytes) -> None:
    with contextlib.suppress(EnvelopeError):
        envelope.decode_header(header)


@FUZZ
@given(frames=st.lists(st.binary(max_size=80), max_size=6))
def test_plain_decode_raises_only_envelope_error(frames: list[bytes]) -> None:
    with contextlib.suppress(EnvelopeError):
        envelope.decode(frames)
    with contextlib.suppress(EnvelopeError):
        envelope.decode([TOPIC.encode(), *frames])


def test_deeply_nested_meta_is_a_bad_header_not_a_recursion_error() -> None:
    # json.loads raises RecursionError (not ValueError) for "[[[[...".
    for meta in (b"[" * 100_000, b'{"a":' * 100_000):
        with pytest.raises(EnvelopeError) as err:
            envelope.decode_header(raw_header(meta=meta))
        assert err.value.kind == "bad_header"


@pytest.mark.parametrize(
    "shape", [(0, 2**63), (0, 2**40, 2**40), (2**64 - 1,), (2**21, 2**20)], ids=str
)
def test_huge_shapes_are_bad_shape_even_when_they_hold_no_bytes(shape: tuple[int, ...]) -> None:
    # (0, 2**63) describes 0 bytes, but numpy cannot build it: it must be refused up front.
    for header in (
        raw_header(payload_record("<u1", shape)),
        raw_header(payload_record("<u1", shape, shm=("edgefuse.x", 4096, 0, 2))),
    ):
        with pytest.raises(EnvelopeError) as err:
            envelope.decode([b"cam/image", header, b""])
        assert err.value.kind in ("bad_shape", "size_mismatch", "truncated")
        with pytest.raises(EnvelopeError) as err:
            envelope.decode_header(header)
        assert err.value.kind in ("bad_shape", "size_mismatch")


# --- through the subscriber: counted, logged once per kind, never raised ----------------------


def frames_of(shm_segment: str, shm_ref: ShmRef, generation: int) -> dict[str, list[Any]]:
    """One bad message per kind of problem (and where it is counted)."""
    t = TOPIC.encode()
    good = raw_header(payload_record("<u2", (2, 3)), seq=1)
    off, nb = shm_ref.offset, shm_ref.nbytes
    return {
        "random bytes as header": [t, b"\x01\x00garbage that is not a header"],
        "empty header": [t, b""],
        "unknown version": [t, raw_header(version=9)],
        "version zero": [t, raw_header(version=0)],
        "no header frame": [t],
        "no frames": [],
        "payload frame missing": [t, good],
        "extra payload frame": [t, good, bytes(12), b"x"],
        "lying length (short)": [t, good, bytes(11)],
        "lying length (long)": [t, good, bytes(13)],
        "wrong shape for the frame": [t, raw_header(payload_record("<u2", (3, 3))), bytes(12)],
        "payload count lies": [t, raw_header(payload_record(), n_payloads=3), bytes(4)],
        "huge ndim": [t, raw_header(payload_record("<u1", (1,) * 200)), b"x"],
        "ndim lies": [t, raw_header(payload_record("<u1", (4,), ndim=9)), bytes(4)],
        "huge shape": [t, raw_header(payload_record("<u1", (2**62, 2**62))), b""],
        "zero-size huge shape": [t, raw_header(payload_record("<u1", (0, 2**63))), b""],
        "object dtype": [t, raw_header(payload_record("|O", (1,))), bytes(8)],
        "unknown dtype": [t, raw_header(payload_record("<z9", (1,))), bytes(8)],
        # numpy raises SyntaxError for this one (found by the mutation fuzzer).
        "dtype numpy cannot parse": [t, raw_header(payload_record(",c16", (1,))), bytes(16)],
        "dtype with fields": [t, raw_header(payload_record("<f4,<f4", (1,))), bytes(8)],
        "unknown payload kind": [t, raw_header(payload_record(kind=7)), bytes(4)],
        "meta not json": [t, raw_header(meta=b"{nope")],
        "meta not an object": [t, raw_header(meta=b"[1,2]")],
        "trailing bytes": [t, raw_header() + b"\x00"],
        "stream mismatch": [t, raw_header(stream="depth")],
        "bad topic (not utf-8)": [b"\xff\xfe/\x80", raw_header()],
        "bad topic (no slash)": [b"camimage", raw_header()],
        "foreign topic": [b"cam/other", raw_header(stream="other")],
        "shm segment that does not exist": [
            t,
            raw_header(payload_record("<u1", (nb,), shm=(shm_segment + "gone", off, nb, 2))),
        ],
        "shm segment not ours": [
            t,
            raw_header(payload_record("<u1", (4,), shm=("passwd", 0, 4, 2))),
        ],
        "shm segment path escape": [
            t,
            raw_header(payload_record("<u1", (4,), shm=("edgefuse./../x", 0, 4, 2))),
        ],
        "shm segment with NUL": [
            t,
            raw_header(payload_record("<u1", (4,), shm=("edgefuse.\x00x", 0, 4, 2))),
        ],
        "shm size lies": [
            t,
            raw_header(payload_record("<u1", (nb,), shm=(shm_segment, off, nb + 1, generation))),
        ],
        "shm offset in the control page": [
            t,
            raw_header(payload_record("<u1", (nb,), shm=(shm_segment, 0, nb, generation))),
        ],
        "shm offset past the end": [
            t,
            raw_header(payload_record("<u1", (nb,), shm=(shm_segment, 2**60, nb, generation))),
        ],
        "shm range across two slots": [
            t,
            raw_header(
                payload_record("<u1", (2**20,), shm=(shm_segment, off + 64, 2**20, generation))
            ),
        ],
        "shm generation never published (0)": [
            t,
            raw_header(payload_record("<u1", (nb,), shm=(shm_segment, off, nb, 0))),
        ],
        "shm generation odd (being written)": [
            t,
            raw_header(payload_record("<u1", (nb,), shm=(shm_segment, off, nb, generation + 1))),
        ],
        "shm wrong generation": [
            t,
            raw_header(
                payload_record("<u1", (nb,), shm=(shm_segment, off, nb, generation + 100)),
                seq=5,
            ),
        ],
    }


#: Where each case is counted: (unattributed?, kind) with kind "overrun" for overruns.
EXPECTED = {
    "random bytes as header": (False, "bad_header"),
    "empty header": (False, "bad_header"),
    "unknown version": (False, "unknown_version"),
    "version zero": (False, "unknown_version"),
    "no header frame": (True, "truncated"),
    "no frames": (True, "truncated"),
    "payload frame missing": (False, "truncated"),
    "extra payload frame": (False, "size_mismatch"),
    "lying length (short)": (False, "size_mismatch"),
    "lying length (long)": (False, "size_mismatch"),
    "wrong shape for the frame": (False, "size_mismatch"),
    "payload count lies": (False, "bad_header"),
    "huge ndim": (False, "bad_shape"),
    "ndim lies": (False, "bad_shape"),
    "huge shape": (False, "bad_shape"),
    "zero-size huge shape": (False, "bad_shape"),
    "object dtype": (False, "bad_dtype"),
    "unknown dtype": (False, "bad_dtype"),
    "dtype numpy cannot parse": (False, "bad_dtype"),
    "dtype with fields": (False, "bad_dtype"),
    "unknown payload kind": (False, "bad_header"),
    "meta not json": (False, "bad_header"),
    "meta not an object": (False, "bad_header"),
    "trailing bytes": (False, "bad_header"),
    "stream mismatch": (False, "foreign_sender"),
    "bad topic (not utf-8)": (True, "bad_topic"),
    "bad topic (no slash)": (True, "bad_topic"),
    "foreign topic": (True, "foreign_sender"),
    "shm segment that does not exist": (False, "stale_shm"),
    "shm segment not ours": (False, "stale_shm"),
    "shm segment path escape": (False, "stale_shm"),
    "shm segment with NUL": (False, "stale_shm"),
    "shm size lies": (False, "size_mismatch"),
    "shm offset in the control page": (False, "stale_shm"),
    "shm offset past the end": (False, "stale_shm"),
    "shm range across two slots": (False, "stale_shm"),
    "shm generation never published (0)": (False, "stale_shm"),
    "shm generation odd (being written)": (False, "stale_shm"),
    "shm wrong generation": (False, "overrun"),
}


def test_every_kind_of_bad_message_is_counted_where_it_belongs(
    sub: Subscriber, ring: tuple[ShmRing, list[tuple[ShmRef, int]]]
) -> None:
    _, refs = ring
    ref, gen = refs[-1]
    cases = frames_of(ref.segment, ref, gen)
    assert cases.keys() == EXPECTED.keys()
    for name, frames in cases.items():
        unattributed, kind = EXPECTED[name]
        st = sub.unattributed if unattributed else sub.stats[TOPIC]
        before = st.overruns if kind == "overrun" else st.malformed[kind]
        assert decode_counted(sub, frames) is None, name
        after = st.overruns if kind == "overrun" else st.malformed[kind]
        assert after == before + 1, f"{name}: not counted as {kind}"
    assert delivered(sub) == 0
    # The subscriber is none the worse: good messages (inline and shared memory) still pass.
    good = envelope.encode(TOPIC, Header("image", seq=6), [np.arange(6, dtype="<u2")])
    msg = decode_counted(sub, good)
    assert msg is not None and np.array_equal(msg.arrays[0], np.arange(6))
    shm_header = raw_header(
        payload_record("<u1", (ref.nbytes,), shm=(ref.segment, ref.offset, ref.nbytes, gen)),
        seq=7,
    )
    msg = decode_counted(sub, [TOPIC.encode(), shm_header])
    assert msg is not None and msg.intact() and bool(np.all(msg.arrays[0] == 2))


def test_each_kind_is_logged_once_at_warning(
    sub: Subscriber,
    ring: tuple[ShmRing, list[tuple[ShmRef, int]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=PUBSUB_LOG)
    _, refs = ring
    ref, gen = refs[-1]
    cases = frames_of(ref.segment, ref, gen)
    for _ in range(3):
        for frames in cases.values():
            assert sub.decode(frames) is None
    drops = [r for r in caplog.records if r.getMessage().startswith("dropped a message")]
    kinds = {kind for _, kind in EXPECTED.values()}
    for kind in kinds:
        mine = [r for r in drops if f": {kind}: " in r.getMessage()]
        warnings = [r for r in mine if r.levelno == logging.WARNING]
        assert len(warnings) == 1, f"{kind}: {len(warnings)} warnings"
        assert len(mine) == 3 * sum(1 for _, k in EXPECTED.values() if k == kind)
    assert len([r for r in drops if r.levelno == logging.WARNING]) == len(kinds)
    # The line says what was wrong, on which topic.
    text = "\n".join(r.getMessage() for r in drops if r.levelno == logging.WARNING)
    assert "dropped a message on cam/image: unknown_version: header version 9" in text
    assert "dropped a message on ?: bad_topic" in text


@st.composite
def wire_messages(draw: st.DrawFn, segment: str, ref: ShmRef, generation: int) -> list[Any]:
    """Frames that may be anything from garbage to a valid message with a live shm ref."""
    choice = draw(st.sampled_from(["garbage", "valid", "mutated", "reframed", "shm"]))
    t = TOPIC.encode()
    if choice == "garbage":
        return draw(st.lists(st.binary(max_size=60), max_size=5))
    arr = np.arange(draw(st.integers(0, 8)), dtype="<i4")
    frames: list[Any] = envelope.encode(TOPIC, Header("image", seq=draw(st.integers(0, 99))), [arr])
    frames = [bytes(f) for f in frames]
    if choice == "valid":
        return frames
    if choice == "mutated":
        return [t, draw(mutated(st.just(frames[1]))), *frames[2:]]
    if choice == "reframed":  # frames dropped, duplicated, cut or padded
        out = list(frames)
        op = draw(st.sampled_from(["drop", "dup", "cut", "pad"]))
        i = draw(st.integers(0, len(out) - 1))
        if op == "drop":
            del out[i]
        elif op == "dup":
            out.insert(i, out[i])
        elif op == "cut":
            out[i] = out[i][: draw(st.integers(0, max(0, len(out[i]) - 1)))]
        else:
            out[i] = out[i] + draw(st.binary(min_size=1, max_size=9))
        return out
    seg = draw(st.sampled_from([segment, segment + "x", "edgefuse.nope", "other", ""]))
    off = draw(st.sampled_from([ref.offset, 0, 4096, ref.offset + 8]) | st.integers(0, 2**64 - 1))
    nbytes = draw(st.sampled_from([ref.nbytes, 8, 0]))
    gen = draw(st.sampled_from([generation, generation - 2, generation + 1, 0]) | st.integers())
    gen = gen % 2**64
    return [t, raw_header(payload_record("<u1", (nbytes,), shm=(seg, off, nbytes, gen)))]


def test_subscriber_decode_counts_every_random_message_and_never_raises(
    sub: Subscriber, ring: tuple[ShmRing, list[tuple[ShmRef, int]]]
) -> None:
    _, refs = ring
    ref, gen = refs[-1]

    @FUZZ
    @given(frames=wire_messages(ref.segment, ref, gen))
    def check(frames: list[Any]) -> None:
        msg = decode_counted(sub, frames)
        if msg is not None:
            for a in msg.arrays:
                assert not a.flags.writeable
            assert msg.intact()

    check()
    # Hypothesis did reach both outcomes (the strategy is not all garbage).
    assert delivered(sub) > 0 and dropped(sub) > 0


def shm_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "/dev/shm/edgefuse." in line)


@contextlib.contextmanager
def planted(tmp_path: Path, run_id: str) -> Iterator[dict[str, str]]:
    """Non-segments planted in /dev/shm under edgefuse names: removed afterwards."""
    base = f"edgefuse.{run_id}.planted"
    names = {k: f"{base}-{k}" for k in ("small", "garbage", "dir", "fifo", "link")}
    paths = {k: os.path.join(SHM_DIR, v) for k, v in names.items()}
    try:
        Path(paths["small"]).write_bytes(b"x" * 100)
        Path(paths["garbage"]).write_bytes(b"\x07" * 16384)
        os.mkdir(paths["dir"])
        os.mkfifo(paths["fifo"])
        target = tmp_path / "target"
        target.write_bytes(b"\x00" * 16384)
        os.symlink(target, paths["link"])
        yield names
    finally:
        for k, p in paths.items():
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(p) if k == "dir" else os.unlink(p)


def test_bad_shm_references_leak_no_fds_or_mappings_and_never_block(
    sub: Subscriber,
    ring: tuple[ShmRing, list[tuple[ShmRef, int]]],
    tmp_path: Path,
    run_id: str,
) -> None:
    _, refs = ring
    ref, gen = refs[-1]
    t = TOPIC.encode()

    def shm_msg(segment: str, offset: int, generation: int, seq: int) -> list[bytes]:
        return [
            t,
            raw_header(
                payload_record("<u1", (ref.nbytes,), shm=(segment, offset, ref.nbytes, generation)),
                seq=seq,
            ),
        ]

    with planted(tmp_path, run_id) as names:
        # Warm up: the real segment is mapped once and kept.
        assert sub.decode(shm_msg(ref.segment, ref.offset, gen, 0)) is not None
        fds, maps = open_fds(), shm_maps()
        seq = 1
        for i in range(300):
            bad = [
                shm_msg(f"{ref.segment}.gone{i}", ref.offset, gen, seq),
                shm_msg(ref.segment, 10**9 + i, gen, seq),
                shm_msg(ref.segment, ref.offset, gen + 2 * (i + 1), seq),
                shm_msg(ref.segment, ref.offset, 2 * i + 1, seq),
                *(shm_msg(n, 4096, 2, seq) for n in names.values()),
            ]
            for frames in bad:
                assert decode_counted(sub, frames) is None
                seq += 1
        assert open_fds() == fds
        assert shm_maps() == maps
        st = sub.stats[TOPIC]
        assert st.overruns == 300
        assert st.malformed["stale_shm"] == 300 * (3 + len(names))


def test_prefix_topics_are_ignored_not_counted_as_malformed(sub: Subscriber) -> None:
    """ZeroMQ's prefix filter lets ``cam/image_raw`` through to a ``cam/image`` subscriber."""
    frames = envelope.encode(TOPIC + "_raw", envelope.Header(stream="image_raw"), [])
    assert sub.decode(frames) is None
    assert sub.ignored == 1
    assert sub.unattributed.malformed == {} and sub.stats[TOPIC].malformed == {}


def test_bad_payload_is_counted_once_not_again_as_seq_gap(sub: Subscriber) -> None:
    """A message whose header is readable but payload is not counts as malformed only."""
    good = [
        envelope.encode(TOPIC, envelope.Header(stream="image", seq=i), [np.arange(3)])
        for i in range(3)
    ]
    bad = list(good[1])
    bad[2] = b"\x00"  # 1 byte where 24 were announced
    assert sub.decode(good[0]) is not None
    assert sub.decode(bad) is None
    assert sub.decode(good[2]) is not None
    st = sub.stats[TOPIC]
    assert st.malformed["size_mismatch"] == 1
    assert st.dropped == 0
