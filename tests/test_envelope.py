"""The envelope: header and payload round trips, zero-copy decoding, and what it refuses."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefuse import envelope
from edgefuse.envelope import Header, Message, PayloadDesc, ShmRef
from edgefuse.errors import EnvelopeError

INT64 = st.integers(-(2**63), 2**63 - 1)
#: Every dtype the wire carries, in both byte orders where byte order means something.
WIRE_DTYPES = [
    np.dtype(t).newbyteorder(order)
    for t in ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")
    for order in ("<", ">")
]
REFUSED_DTYPES = [
    np.dtype(object),
    np.dtype([("x", "<f4"), ("y", "<f4")]),
    np.dtype("U8"),
    np.dtype("S8"),
    np.dtype("V8"),
    np.dtype("M8[ns]"),
    np.dtype("m8[ns]"),
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
headers = st.builds(
    Header,
    stream=st.text(min_size=1, max_size=30),
    seq=st.integers(0, 2**64 - 1),
    t_sensor_ns=INT64,
    t_host_ns=INT64,
    # INT64_MIN is the wire's "not yet known" and comes back as None (tested on its own).
    t_ns=st.none() | st.integers(-(2**63) + 1, 2**63 - 1),
    frame_id=st.text(max_size=30),
    encoding=st.text(max_size=20),
    meta=st.dictionaries(st.text(max_size=10), json_values, max_size=5),
    t_pub_ns=INT64,
)
shapes = hnp.array_shapes(min_dims=0, max_dims=envelope.MAX_NDIM, min_side=0, max_side=4)
shm_refs = st.builds(
    ShmRef,
    segment=st.text(max_size=40),
    offset=st.integers(0, 2**64 - 1),
    nbytes=st.just(0),  # replaced by the payload's size below
    generation=st.integers(0, 2**64 - 1),
)


@st.composite
def payload_descs(draw: st.DrawFn) -> PayloadDesc:
    dtype = draw(st.sampled_from(WIRE_DTYPES))
    shape = draw(shapes)
    desc = PayloadDesc(dtype, shape)
    if draw(st.booleans()):
        ref = draw(shm_refs)
        desc = PayloadDesc(dtype, shape, ShmRef(ref.segment, ref.offset, desc.nbytes, 1))
    return desc


wire_arrays = st.sampled_from(WIRE_DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
)


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype (byte order included), shape and bytes: exact, NaN payloads included."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def as_wire(frames: list[envelope.Buffer]) -> list[bytes]:
    """The frames as a receiver gets them: separate byte strings."""
    return [bytes(f) for f in frames]


@settings(max_examples=300, deadline=None)
@given(header=headers, descs=st.lists(payload_descs(), max_size=6))
def test_header_round_trip(header: Header, descs: list[PayloadDesc]) -> None:
    raw = envelope.encode_header(header, descs)
    assert raw[0] == envelope.VERSION
    got_header, got_descs = envelope.decode_header(raw)
    assert got_header == header
    assert got_descs == descs
    for got, want in zip(got_descs, descs, strict=True):
        assert got.dtype.str == want.dtype.str  # byte order is kept, not normalised


@settings(max_examples=300, deadline=None)
@given(header=headers, arrays=st.lists(wire_arrays, max_size=4))
def test_arrays_round_trip_as_read_only_views_of_the_frames(
    header: Header, arrays: list[np.ndarray]
) -> None:
    topic = f"node/{header.stream}"
    frames = as_wire(envelope.encode(topic, header, arrays))
    assert len(frames) == 2 + len(arrays)
    msg = envelope.decode(frames)
    assert msg.topic == topic
    assert msg.header == header
    assert len(msg.arrays) == len(arrays)
    for got, want, frame in zip(msg.arrays, arrays, frames[2:], strict=True):
        assert same_array(got, want)
        assert not got.flags.writeable
        if got.nbytes:
            # A view of the received frame, not a copy of it.
            assert np.shares_memory(got, np.frombuffer(frame, np.uint8))
    assert msg.nbytes == sum(a.nbytes for a in arrays)
    assert msg.intact()


@pytest.mark.parametrize("dtype", WIRE_DTYPES, ids=lambda dt: dt.str)
def test_every_wire_dtype_passes_without_copy_and_comes_back_read_only(dtype: np.dtype) -> None:
    src = np.arange(24).reshape(2, 3, 4).astype(dtype)
    frames = envelope.encode("cam/image", Header("image"), [src])
    # encode hands the array's own memory to ZeroMQ ...
    assert np.shares_memory(np.frombuffer(frames[2], np.uint8), src)
    out = envelope.decode(frames).arrays[0]
    # ... and decode views the frame: the array that comes out is the one that went in.
    assert np.shares_memory(out, src)
    assert same_array(out, src)
    assert out.dtype.str == src.dtype.str
    assert not out.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        out[0, 0, 0] = 1


def test_decoded_arrays_are_read_only_even_from_writable_frames() -> None:
    # ZeroMQ frames are writable buffers; decoding must not hand out a writable view of them.
    frames = [bytearray(f) for f in as_wire(envelope.encode("a/b", Header("b"), [np.ones(8)]))]
    out = envelope.decode(frames).arrays[0]
    assert np.shares_memory(out, np.frombuffer(frames[2], np.uint8))
    assert not out.flags.writeable


@pytest.mark.parametrize(
    "array",
    [np.array(3.5), np.array(True), np.zeros((0,)), np.zeros((3, 0, 2), ">i2"), np.zeros((0, 0))],
    ids=["0d-float", "0d-bool", "empty", "empty-3d-bigendian", "empty-2d"],
)
def test_zero_d_and_zero_size_arrays(array: np.ndarray) -> None:
    msg = envelope.decode(as_wire(envelope.encode("a/b", Header("b"), [array])))
    assert same_array(msg.arrays[0], array)


def test_non_contiguous_arrays_are_sent_contiguous() -> None:
    base = np.arange(60, dtype="<u2").reshape(6, 10)
    view = base[::2, 1::3]
    assert not view.flags.c_contiguous
    out = envelope.decode(as_wire(envelope.encode("a/b", Header("b"), [view, base.T])))
    assert np.array_equal(out.arrays[0], view)
    assert np.array_equal(out.arrays[1], base.T)


@pytest.mark.parametrize("dtype", REFUSED_DTYPES, ids=lambda dt: dt.str)
def test_object_structured_and_text_dtypes_are_refused(dtype: np.dtype) -> None:
    arr = np.zeros(2, dtype)
    with pytest.raises(EnvelopeError) as err:
        envelope.encode("a/b", Header("b"), [arr])
    assert err.value.kind == "bad_dtype"
    with pytest.raises(EnvelopeError) as err:
        envelope.wire_dtype(arr)
    assert err.value.kind == "bad_dtype"
    # The same dtype named in a received header is refused too.
    raw = envelope.encode_header(Header("b"), [PayloadDesc(arr.dtype, (2,))])
    with pytest.raises(EnvelopeError) as err:
        envelope.decode_header(raw)
    assert err.value.kind == "bad_dtype"


def test_subarray_dtype_named_in_a_header_is_refused() -> None:
    # numpy folds a subarray dtype into the shape of an array, so only a header can carry one.
    raw = envelope.encode_header(Header("b"), [PayloadDesc(np.dtype(("<f4", (3,))), (2,))])
    with pytest.raises(EnvelopeError) as err:
        envelope.decode_header(raw)
    assert err.value.kind == "bad_dtype"


def test_t_ns_unknown_is_none_on_both_sides() -> None:
    got, _ = envelope.decode_header(envelope.encode_header(Header("s", t_ns=None), []))
    assert got.t_ns is None
    raw = envelope.encode_header(Header("s", t_ns=-(2**63) + 1), [])
    assert envelope.decode_header(raw)[0].t_ns == -(2**63) + 1
    # The sentinel itself means "not yet known".
    raw = envelope.encode_header(Header("s", t_ns=envelope.T_UNKNOWN), [])
    assert envelope.decode_header(raw)[0].t_ns is None


def test_header_layout_starts_with_the_version_and_fixed_fields() -> None:
    raw = envelope.encode_header(
        Header("s", seq=7, t_sensor_ns=-5, t_host_ns=9, t_ns=None, t_pub_ns=11), []
    )
    version, flags, n, seq, t_sensor, t_host, t_ns, t_pub = struct.unpack_from("<BBHQqqqq", raw)
    assert (version, flags, n, seq) == (1, 0, 0, 7)
    assert (t_sensor, t_host, t_ns, t_pub) == (-5, 9, envelope.T_UNKNOWN, 11)


def test_encode_header_limits() -> None:
    desc = PayloadDesc(np.dtype("u1"), (1,))
    with pytest.raises(EnvelopeError) as err:
        envelope.encode_header(Header("s"), [desc] * (envelope.MAX_PAYLOADS + 1))
    assert err.value.kind == "bad_header"
    with pytest.raises(EnvelopeError) as err:
        envelope.encode_header(Header("s"), [PayloadDesc(np.dtype("u1"), (1,) * 9)])
    assert err.value.kind == "bad_shape"
    with pytest.raises(EnvelopeError) as err:
        envelope.encode_header(Header("x" * 70_000), [])
    assert err.value.kind == "bad_header"
    assert "too long" in str(err.value)
    # The limits themselves are fine.
    many = envelope.encode_header(Header("s"), [desc] * envelope.MAX_PAYLOADS)
    assert len(envelope.decode_header(many)[1]) == envelope.MAX_PAYLOADS


def test_unknown_version_is_refused_with_a_clear_error() -> None:
    raw = bytearray(envelope.encode_header(Header("s"), []))
    raw[0] = 2
    with pytest.raises(EnvelopeError) as err:
        envelope.decode_header(bytes(raw))
    assert err.value.kind == "unknown_version"
    assert "version 2" in str(err.value) and "version 1" in str(err.value)


def test_decode_refuses_inconsistent_messages() -> None:
    frames = as_wire(envelope.encode("cam/image", Header("image"), [np.ones(4), np.ones(2)]))

    def kind_of(bad: list[Any]) -> str:
        with pytest.raises(EnvelopeError) as err:
            envelope.decode(bad)
        return err.value.kind

    assert kind_of(frames[:1]) == "truncated"
    assert kind_of(frames[:3]) == "truncated"  # one payload frame missing
    assert kind_of([*frames, b"extra"]) == "size_mismatch"
    assert kind_of([frames[0], frames[1], frames[2], frames[3][:-1]]) == "size_mismatch"
    assert kind_of([b"no-slash", *frames[1:]]) == "bad_topic"
    assert kind_of([b"\xff\xfe/x", *frames[1:]]) == "bad_topic"
    assert kind_of([b"cam/depth", *frames[1:]]) == "foreign_sender"
    shm = PayloadDesc(np.dtype("u1"), (4,), ShmRef("edgefuse.x", 4096, 4, 2))
    assert kind_of([b"a/b", envelope.encode_header(Header("b"), [shm])]) == "stale_shm"


def test_payload_desc_nbytes_and_message_defaults() -> None:
    assert PayloadDesc(np.dtype("<c16"), (3, 5)).nbytes == 16 * 15
    assert PayloadDesc(np.dtype("?"), ()).nbytes == 1
    assert PayloadDesc(np.dtype("<f8"), (4, 0)).nbytes == 0
    msg = Message("a/b", Header("b"), [np.zeros(3), np.zeros((2, 2), np.uint8)])
    assert msg.nbytes == 24 + 4
    assert msg.intact()
    msg.validator = lambda: False
    assert not msg.intact()
