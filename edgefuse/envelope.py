"""The wire format: ``[topic][header][payload 0]...[payload n]`` as one ZeroMQ multipart message.

The header is a small binary record whose first byte is the format version. It carries the
stream name, the per-stream ``seq``, the time stamps (int64 ns), ``frame_id``, ``encoding``,
a JSON ``meta`` dict of small scalars, and per payload its ``dtype`` and ``shape`` plus either
"inline" (the payload is the next multipart frame) or a shared-memory reference
(segment, offset, length, generation). Payloads are numpy arrays in and numpy arrays out,
decoded without copying. Nothing here knows about sockets, shared memory or time policy.

Layout of version 1 (little-endian)::

    u8 version | u8 flags | u16 n_payloads | u64 seq | i64 t_sensor_ns | i64 t_host_ns
    i64 t_ns (INT64_MIN = not yet known) | i64 t_pub_ns
    str16 stream | str16 frame_id | str16 encoding | u32 len + JSON meta
    per payload: u8 kind (0 inline, 1 shm) | str8 dtype | u8 ndim | u64 x ndim shape
                 [shm: str16 segment | u64 offset | u64 nbytes | u64 generation]
"""

from __future__ import annotations

import functools
import json
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from edgefuse.errors import EnvelopeError

VERSION: Final = 1
#: Payloads at least this large are sent without copying (and through shared memory on one host).
ZERO_COPY_MIN_BYTES: Final = 64 * 1024
T_UNKNOWN: Final = -(2**63)
MAX_NDIM: Final = 8
MAX_PAYLOADS: Final = 64
#: Largest payload a header may describe; anything bigger is a corrupt or hostile header.
MAX_PAYLOAD_BYTES: Final = 1 << 40
#: dtype kinds allowed on the wire: bool, signed, unsigned, float, complex. Never object.
_ALLOWED_KINDS: Final = frozenset("biufc")
#: What a dtype string on the wire looks like: byte order, type letter(s), item size.
_DTYPE_TEXT: Final = re.compile(r"[<>|=]?[A-Za-z?]+[0-9]*")

_FIXED = struct.Struct("<BBHQqqqq")
_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SHM = struct.Struct("<QQQ")

KIND_INLINE: Final = 0
KIND_SHM: Final = 1


@dataclass(frozen=True, slots=True)
class ShmRef:
    """Where a payload lies in a shared-memory ring: segment name, byte range, slot generation."""

    segment: str
    offset: int
    nbytes: int
    generation: int


@dataclass(frozen=True, slots=True)
class PayloadDesc:
    """What the header says about one payload: its dtype and shape, and where it is."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    shm: ShmRef | None = None

    @property
    def nbytes(self) -> int:
        """Size of the payload in bytes as the header describes it."""
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass(slots=True)
class Header:
    """The metadata of one message (see DESIGN.md, "The envelope")."""

    stream: str
    seq: int = 0
    t_sensor_ns: int = 0
    t_host_ns: int = 0
    t_ns: int | None = None
    frame_id: str = ""
    encoding: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    #: Host monotonic time when the publisher sent it; stamped by the transport.
    t_pub_ns: int = 0


Buffer = bytes | bytearray | memoryview | np.ndarray


@dataclass(slots=True)
class Message:
    """A decoded message: topic, header and payload arrays (read-only views, not copies)."""

    topic: str
    header: Header
    arrays: list[np.ndarray]
    #: Filled by the transport for shared-memory payloads: re-checks that the slot was not reused.
    validator: Any = None

    def intact(self) -> bool:
        """True while every shared-memory payload still holds the data it was sent with."""
        return True if self.validator is None else bool(self.validator())

    @property
    def nbytes(self) -> int:
        """Total payload bytes."""
        return sum(int(a.nbytes) for a in self.arrays)


def _portable(dt: np.dtype[Any]) -> bool:
    # Extended precision (float128/complex256) has a different layout on x86-64 and aarch64:
    # a Jetson and a desktop would misread each other's bytes silently, so it stays off the wire.
    return (
        dt.kind in _ALLOWED_KINDS
        and dt.fields is None
        and dt.subdtype is None
        and not (dt.kind == "f" and dt.itemsize > 8)
        and not (dt.kind == "c" and dt.itemsize > 16)
    )


def wire_dtype(arr: np.ndarray) -> np.dtype[Any]:
    """Return ``arr``'s dtype if it can go on the wire, else raise ``EnvelopeError``."""
    dt = arr.dtype
    if not _portable(dt):
        raise EnvelopeError(
            "bad_dtype", f"dtype {dt} cannot be sent (bool, int, uint, float<=64, complex<=128)"
        )
    return dt


def _pack_str(out: list[bytes], s: str, width: struct.Struct) -> None:
    b = s.encode("utf-8")
    if len(b) >= 1 << (8 * width.size):
        raise EnvelopeError("bad_header", f"string too long for the header: {s[:40]!r}...")
    out.append(width.pack(len(b)))
    out.append(b)


def encode_header(header: Header, payloads: Sequence[PayloadDesc]) -> bytes:
    """Serialise ``header`` and the payload descriptions into the version-1 binary record."""
    if len(payloads) > MAX_PAYLOADS:
        raise EnvelopeError("bad_header", f"{len(payloads)} payloads (at most {MAX_PAYLOADS})")
    t_ns = T_UNKNOWN if header.t_ns is None else header.t_ns
    out = [
        _FIXED.pack(
            VERSION,
            0,
            len(payloads),
            header.seq,
            header.t_sensor_ns,
            header.t_host_ns,
            t_ns,
            header.t_pub_ns,
        )
    ]
    _pack_str(out, header.stream, _U16)
    _pack_str(out, header.frame_id, _U16)
    _pack_str(out, header.encoding, _U16)
    meta = (
        json.dumps(header.meta, separators=(",", ":"), allow_nan=False).encode()
        if header.meta
        else b""
    )
    out.append(_U32.pack(len(meta)))
    out.append(meta)
    for p in payloads:
        if len(p.shape) > MAX_NDIM:
            raise EnvelopeError("bad_shape", f"{len(p.shape)} dimensions (at most {MAX_NDIM})")
        out.append(_U8.pack(KIND_INLINE if p.shm is None else KIND_SHM))
        _pack_str(out, p.dtype.str, _U8)
        out.append(_U8.pack(len(p.shape)))
        out.append(struct.pack(f"<{len(p.shape)}Q", *p.shape))
        if p.shm is not None:
            _pack_str(out, p.shm.segment, _U16)
            out.append(_SHM.pack(p.shm.offset, p.shm.nbytes, p.shm.generation))
    return b"".join(out)


class _Reader:
    """Bounds-checked cursor over a header buffer; every overrun is a ``bad_header``."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise EnvelopeError("bad_header", f"header truncated at byte {self.pos} (wanted {n})")
        view = self.buf[self.pos : end]
        self.pos = end
        return view

    def unpack(self, st: struct.Struct) -> tuple[Any, ...]:
        return st.unpack(self.take(st.size))

    def string(self, width: struct.Struct) -> str:
        (n,) = self.unpack(width)
        try:
            return str(self.take(n), "utf-8")
        except UnicodeDecodeError as exc:
            raise EnvelopeError("bad_header", f"string field is not UTF-8: {exc}") from None


@functools.lru_cache(maxsize=256)
def _parse_dtype(text: str) -> np.dtype[Any]:
    # numpy's parser takes far more than dtype names ("i4,f4", "(2,)u1", ...) and fails in
    # assorted ways (SyntaxError for ",c16"): only text shaped like ``dtype.str`` reaches it.
    # Cached: a stream carries a handful of dtypes, and failures are not cached.
    if not _DTYPE_TEXT.fullmatch(text):
        raise EnvelopeError("bad_dtype", f"unknown dtype {text!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated aliases ("a") are refused below anyway
            dt = np.dtype(text)
    except (TypeError, ValueError, SyntaxError):
        raise EnvelopeError("bad_dtype", f"unknown dtype {text!r}") from None
    if not _portable(dt):
        raise EnvelopeError("bad_dtype", f"dtype {text!r} is not allowed on the wire")
    return dt


def decode_header(buf: Buffer) -> tuple[Header, list[PayloadDesc]]:
    """Parse a header record; raise ``EnvelopeError`` (never anything else) when it is malformed."""
    view = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf.cast("B")
    if len(view) == 0:
        raise EnvelopeError("bad_header", "empty header frame")
    if view[0] != VERSION:
        raise EnvelopeError(
            "unknown_version", f"header version {view[0]} (this edgefuse reads version {VERSION})"
        )
    r = _Reader(view)
    _, _flags, n_payloads, seq, t_sensor, t_host, t_ns, t_pub = r.unpack(_FIXED)
    if n_payloads > MAX_PAYLOADS:
        raise EnvelopeError("bad_header", f"{n_payloads} payloads (at most {MAX_PAYLOADS})")
    stream = r.string(_U16)
    frame_id = r.string(_U16)
    encoding = r.string(_U16)
    (meta_len,) = r.unpack(_U32)
    meta: dict[str, Any] = {}
    if meta_len:
        try:
            loaded = json.loads(bytes(r.take(meta_len)))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: deeply nested JSON ("[[[[...") from a hostile or corrupt sender.
            raise EnvelopeError("bad_header", f"meta is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise EnvelopeError("bad_header", "meta is not a JSON object")
        meta = loaded
    payloads: list[PayloadDesc] = []
    for _ in range(n_payloads):
        (kind,) = r.unpack(_U8)
        if kind not in (KIND_INLINE, KIND_SHM):
            raise EnvelopeError("bad_header", f"unknown payload kind {kind}")
        dtype = _parse_dtype(r.string(_U8))
        (ndim,) = r.unpack(_U8)
        if ndim > MAX_NDIM:
            raise EnvelopeError("bad_shape", f"{ndim} dimensions (at most {MAX_NDIM})")
        shape = struct.unpack(f"<{ndim}Q", r.take(8 * ndim))
        shm = None
        if kind == KIND_SHM:
            segment = r.string(_U16)
            offset, nbytes, generation = r.unpack(_SHM)
            shm = ShmRef(segment, offset, nbytes, generation)
        desc = PayloadDesc(dtype, tuple(int(d) for d in shape), shm)
        # Bound the extent with zero dimensions counted as 1: a shape like (0, 2**63) holds no
        # bytes but numpy refuses to build it (ValueError), which must not reach the caller.
        extent = dtype.itemsize
        for d in desc.shape:
            extent *= max(d, 1)
        if extent > MAX_PAYLOAD_BYTES:
            raise EnvelopeError("bad_shape", f"shape {desc.shape} of {dtype} is over 1 TiB")
        if shm is not None and shm.nbytes != desc.nbytes:
            raise EnvelopeError(
                "size_mismatch",
                f"shared-memory reference holds {shm.nbytes} bytes, shape {desc.shape} of "
                f"{dtype} needs {desc.nbytes}",
            )
        payloads.append(desc)
    if r.pos != len(view):
        raise EnvelopeError("bad_header", f"{len(view) - r.pos} trailing bytes after the header")
    header = Header(
        stream=stream,
        seq=seq,
        t_sensor_ns=t_sensor,
        t_host_ns=t_host,
        t_ns=None if t_ns == T_UNKNOWN else t_ns,
        frame_id=frame_id,
        encoding=encoding,
        meta=meta,
        t_pub_ns=t_pub,
    )
    return header, payloads


def array_from_buffer(desc: PayloadDesc, buf: Buffer) -> np.ndarray:
    """View ``buf`` as the array ``desc`` describes, without copying; check the size first."""
    view = memoryview(buf)
    if view.nbytes != desc.nbytes:
        raise EnvelopeError(
            "size_mismatch",
            f"payload frame holds {view.nbytes} bytes, shape {desc.shape} of {desc.dtype} "
            f"needs {desc.nbytes}",
        )
    arr = np.frombuffer(view, dtype=desc.dtype).reshape(desc.shape)
    # ZeroMQ frames (and bytearrays) are writable buffers; the decoded array is a view of the
    # received message, shared by whoever holds it, so it is handed out read-only.
    arr.flags.writeable = False
    return arr


def check_topic(topic_frame: Buffer) -> str:
    """Decode and validate a topic frame (UTF-8, ``<node>/<stream>``)."""
    try:
        topic = bytes(topic_frame).decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError("bad_topic", "topic frame is not UTF-8") from None
    node, sep, stream = topic.partition("/")
    if not sep or not node or not stream:
        raise EnvelopeError("bad_topic", f"topic {topic[:60]!r} is not <node>/<stream>")
    return topic


def encode(topic: str, header: Header, arrays: Sequence[np.ndarray]) -> list[Buffer]:
    """Build the multipart frames of a message whose payloads all travel inline.

    Arrays are passed as buffers, not copied; non-contiguous arrays are made contiguous first.
    """
    # ascontiguousarray turns a 0-d array into shape (1,): keep the caller's shape.
    contiguous: list[np.ndarray] = [np.ascontiguousarray(a).reshape(a.shape) for a in arrays]
    descs = [PayloadDesc(wire_dtype(a), tuple(int(d) for d in a.shape)) for a in contiguous]
    frames: list[Buffer] = [topic.encode("utf-8"), encode_header(header, descs)]
    frames.extend(memoryview(a).cast("B") if a.nbytes else b"" for a in contiguous)
    return frames


def decode(frames: Sequence[Buffer]) -> Message:
    """Decode a multipart message whose payloads all travel inline (no shared memory)."""
    if len(frames) < 2:
        raise EnvelopeError("truncated", f"{len(frames)} frame(s); a message has at least 2")
    topic = check_topic(frames[0])
    header, descs = decode_header(frames[1])
    check_layout(topic, header, descs, n_payload_frames=len(frames) - 2)
    if any(d.shm is not None for d in descs):
        raise EnvelopeError("stale_shm", "shared-memory payloads need a transport to resolve")
    arrays = [array_from_buffer(d, f) for d, f in zip(descs, frames[2:], strict=True)]
    return Message(topic, header, arrays)


def check_layout(
    topic: str, header: Header, descs: Sequence[PayloadDesc], *, n_payload_frames: int
) -> None:
    """Check that a decoded header belongs to ``topic`` and matches the frames that came with it.

    A header whose stream disagrees with the topic it was published on came from a foreign or
    confused sender: it is refused rather than passed off as the topic's data.
    """
    if topic.partition("/")[2] != header.stream:
        raise EnvelopeError(
            "foreign_sender", f"header stream {header.stream!r} does not match topic {topic!r}"
        )
    n_inline = sum(1 for d in descs if d.shm is None)
    if n_inline != n_payload_frames:
        raise EnvelopeError(
            "truncated" if n_payload_frames < n_inline else "size_mismatch",
            f"header announces {n_inline} inline payload(s), message has {n_payload_frames}",
        )
