"""Session files: edgefuse envelopes recorded losslessly in MCAP (https://mcap.dev).

A session is a standard chunked, indexed MCAP file that any MCAP tool can open:

- One channel per topic (``<node>/<stream>``), registered on its first message, with no schema,
  ``message_encoding = "edgefuse.envelope.v1"`` and channel metadata ``{"encoding": <the
  stream's encoding>}`` (``bgr8``, ``s16le``, ...). A stream keeps one encoding for the session.
- A message's MCAP ``log_time`` is ``header.t_host_ns`` unless the writer was given another;
  ``publish_time`` is ``header.t_pub_ns``, or the log time when that is 0; ``sequence`` is
  ``header.seq`` modulo 2**32 (the full value is in the envelope header).
- The message data is the envelope, all payloads inline::

      u32 n (little-endian) | header: n bytes, exactly envelope.encode_header(header, descs)
      | payload 0 | payload 1 | ... back to back in descriptor order, C order, no padding

  where each payload's size is ``itemsize * prod(shape)`` of its descriptor; the data ends with
  the last payload. Decoding is ``envelope.decode_header`` plus the envelope's layout checks,
  and arrays are zero-copy read-only views of the message bytes.
- ``Metadata`` records (name -> string key/values) and ``Attachment`` records (name -> bytes,
  e.g. ``calibration/sim_rig.yaml``) hold whatever the caller passes; their create and log
  times are 0. The header record's library field is ``edgefuse/<version>``, the profile is empty.
  Nothing else is added (no wall clock, host name or random id), so the same writes give the
  same file, byte for byte, with the same edgefuse, mcap, zstandard and lz4 versions.
- Channels of other encodings (``add_channel``/``write_message``: the recorder's Foxglove JSON
  channels) may sit beside the envelope channels; envelope readers skip them. ``flush()`` ends
  the chunk in progress and hands everything written to the OS (the recorder's crash bound).

Reading uses the summary section when its CRC and counts check out. Otherwise (the writer was
killed, the tail is damaged) the data section is walked record by record: every complete
chunk is recovered, the chunk being written is lost, and ``SessionReader.truncated`` is set
unless the data section was whole (cut inside the summary). Chunk and attachment CRCs are
checked. Messages come out in log-time order (file order among equal times), one chunk at a
time: memory is bounded by the chunks whose time ranges overlap, not by the file.
"""

from __future__ import annotations

import heapq
import io
import os
import struct
import threading
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from edgefuse import __version__, envelope
from edgefuse.envelope import Header, Message, PayloadDesc
from edgefuse.errors import EnvelopeError, require_extra
from edgefuse.record.errors import SessionError

if TYPE_CHECKING:
    from mcap.records import Channel, Chunk, McapRecord
    from mcap.records import Message as McapMessage

ENVELOPE_ENCODING: Final = "edgefuse.envelope.v1"
_MAGIC: Final = b"\x89MCAP0\r\n"
_U32 = struct.Struct("<I")
_PREFIX = struct.Struct("<BQ")  # every MCAP record: opcode, body length
_OP_HEADER, _OP_FOOTER, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x01, 0x02, 0x04, 0x05, 0x06
_OP_ATTACHMENT, _OP_METADATA, _OP_DATA_END = 0x09, 0x0C, 0x0F
#: Largest record or uncompressed chunk believed (the mcap library's own default limit).
_MAX_RECORD: Final = 4 << 30


def envelope_bytes(topic: str, header: Header, arrays: Sequence[np.ndarray]) -> bytes:
    """The message data of one envelope in a session (see the module docstring): one copy of
    every payload, so the result stays valid after a shared-memory slot is reused. Raises
    ``EnvelopeError`` when topic, header and arrays do not form a valid envelope."""
    envelope.check_topic(topic.encode("utf-8"))
    # ascontiguousarray turns a 0-d array into shape (1,): keep the caller's shape.
    flat = [np.ascontiguousarray(a).reshape(a.shape) for a in arrays]
    descs = [PayloadDesc(envelope.wire_dtype(a), tuple(map(int, a.shape))) for a in flat]
    envelope.check_layout(topic, header, descs, n_payload_frames=len(descs))
    head = envelope.encode_header(header, descs)
    return b"".join([_U32.pack(len(head)), head, *(a for a in flat if a.nbytes)])


def decode_envelope(topic: str, data: bytes | memoryview) -> Message:
    """Inverse of :func:`envelope_bytes`: arrays are read-only views of ``data``. Raises
    ``EnvelopeError`` naming what is wrong."""
    view = memoryview(data)
    if len(view) < _U32.size:
        raise EnvelopeError("truncated", f"{len(view)} bytes, no header length")
    (n,) = _U32.unpack(view[: _U32.size])
    pos = _U32.size + n
    if pos > len(view):
        raise EnvelopeError("truncated", f"header of {n} bytes in {len(view)} bytes")
    header, descs = envelope.decode_header(view[_U32.size : pos])
    if any(d.shm is not None for d in descs):
        raise EnvelopeError("bad_header", "a recorded payload refers to shared memory")
    envelope.check_layout(topic, header, descs, n_payload_frames=len(descs))
    arrays: list[np.ndarray] = []
    for d in descs:
        if pos + d.nbytes > len(view):
            raise EnvelopeError("truncated", f"payloads end after byte {len(view)}")
        arrays.append(envelope.array_from_buffer(d, view[pos : pos + d.nbytes]))
        pos += d.nbytes
    if pos != len(view):
        raise EnvelopeError("size_mismatch", f"{len(view) - pos} bytes after the payloads")
    return Message(topic, header, arrays)


#: zstd level of the chunks: rosbag2's default (1) compresses the rig's images about 5x
#: faster than mcap's own (3) for about 8 % more bytes, so one core keeps up with the rig.
DEFAULT_ZSTD_LEVEL = 1


def check_zstd_level(level: int) -> None:
    """Raise ValueError unless ``level`` is a zstd level (-7 fastest .. 22 smallest)."""
    if isinstance(level, bool) or not isinstance(level, int) or not -7 <= level <= 22:
        raise ValueError(f"zstd_level must be an integer from -7 to 22, got {level!r}")


class _ZstdLevel(threading.local):
    """The level the current thread's session writer compresses with (mcap's 3 otherwise)."""

    level = 3


_ZSTD_LEVEL = _ZstdLevel()


class _AtLevel:
    """Compress at ``level`` within the block, then restore the thread's previous level (a
    plain mcap writer used on the same thread afterwards keeps its default)."""

    __slots__ = ("level", "previous")

    def __init__(self, level: int) -> None:
        self.level = level
        self.previous = 3

    def __enter__(self) -> None:
        self.previous = _ZSTD_LEVEL.level
        _ZSTD_LEVEL.level = self.level

    def __exit__(self, *exc: object) -> None:
        _ZSTD_LEVEL.level = self.previous


class _LeveledZstd:
    """Stands in for the ``zstandard`` module inside ``mcap.writer``, whose writer compresses
    each chunk with ``zstandard.compress(data)`` at the default level and has no option for
    it: this passes the calling thread's :data:`_ZSTD_LEVEL` on and forwards all else."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def compress(self, data: bytes, level: int | None = None) -> bytes:
        out: bytes = self._module.compress(data, _ZSTD_LEVEL.level if level is None else level)
        return out


def _install_zstd_levels() -> None:
    """Route mcap's chunk compression through :class:`_LeveledZstd` (once per process)."""
    import mcap.writer

    current = getattr(mcap.writer, "zstandard", None)
    if current is None:
        raise SessionError("zstd compression needs the zstandard package", kind="unsupported")
    if not isinstance(current, _LeveledZstd):
        mcap.writer.zstandard = _LeveledZstd(current)  # type: ignore[attr-defined,assignment]


class SessionWriter:
    """Writes envelopes to a new session file; see the module docstring for the layout."""

    def __init__(
        self,
        path: str | Path,
        *,
        metadata: Mapping[str, Mapping[str, str]] | None = None,
        attachments: Mapping[str, bytes] | None = None,
        compression: Literal["zstd", "lz4", "none"] = "zstd",
        chunk_size: int = 4 * 1024 * 1024,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
    ) -> None:
        """Create (or overwrite) ``path`` and write the MCAP header, metadata and attachments.
        ``zstd_level`` (-7..22) trades speed for size when ``compression`` is zstd."""
        require_extra("mcap", "record")
        from mcap.writer import CompressionType, Writer

        kinds = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4}
        if compression not in (*kinds, "none"):
            raise ValueError(f"compression {compression!r} is not one of zstd, lz4, none")
        check_zstd_level(zstd_level)
        self._at_level = _AtLevel(zstd_level)
        if compression == "zstd":
            _install_zstd_levels()
        self.path = Path(path)
        self._counts: dict[str, int] = {}
        self._channels: dict[str, tuple[int, str]] = {}  # topic -> channel id, stream encoding
        self._others: set[str] = set()  # topics of channels added by add_channel
        self._closed = False
        try:
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise SessionError(f"{self.path}: cannot create: {exc.strerror}", kind="io") from exc
        try:
            kind = kinds.get(compression, CompressionType.NONE)
            self._writer = Writer(self._file, chunk_size=chunk_size, compression=kind)
            self._writer.start(profile="", library=f"edgefuse/{__version__}")
            for name, values in (metadata or {}).items():
                self._writer.add_metadata(name, dict(values))
            for name, data in (attachments or {}).items():
                self.attach(name, data)
        except BaseException:
            self._file.close()
            raise

    @property
    def counts(self) -> dict[str, int]:
        """Messages written so far, per topic."""
        return dict(self._counts)

    def write(
        self,
        topic: str,
        header: Header,
        arrays: Sequence[np.ndarray],
        *,
        log_time_ns: int | None = None,
    ) -> None:
        """Append one message; arrays are copied into the file (any layout, wire dtypes only)."""
        self._check_open()
        try:
            data = envelope_bytes(topic, header, arrays)
        except EnvelopeError as exc:
            raise SessionError(
                f"{self.path}: cannot record on {topic!r}: {exc}", kind=exc.kind
            ) from exc
        self.write_envelope(topic, header, data, log_time_ns=log_time_ns)

    def write_envelope(
        self, topic: str, header: Header, data: bytes, *, log_time_ns: int | None = None
    ) -> None:
        """Append one message already encoded by :func:`envelope_bytes` (``header`` is the one
        it was encoded from: it gives the times, ``seq`` and encoding without decoding)."""
        self._check_open()
        log_time = header.t_host_ns if log_time_ns is None else log_time_ns
        publish_time = header.t_pub_ns or log_time
        for what, t in (("log", log_time), ("publish", publish_time)):
            if not 0 <= t < 2**64:
                raise SessionError(
                    f"{self.path}: {topic!r} seq {header.seq}: {what} time {t} is not in "
                    "[0, 2**64) ns",
                    kind="bad_time",
                )
        channel = self._channel(topic, header.encoding)
        with self._at_level:
            self._writer.add_message(channel, log_time, data, publish_time, header.seq & 0xFFFFFFFF)
        self._counts[topic] = self._counts.get(topic, 0) + 1

    def add_channel(
        self,
        topic: str,
        *,
        message_encoding: str,
        schema_name: str = "",
        schema_encoding: str = "",
        schema_data: bytes = b"",
        metadata: Mapping[str, str] | None = None,
    ) -> int:
        """Register a channel of another encoding (e.g. ``json`` with a ``jsonschema``) beside
        the envelope channels; return its id for :meth:`write_message`. Readers of envelopes
        skip such channels (see :meth:`SessionReader.topics`)."""
        self._check_open()
        if (
            message_encoding == ENVELOPE_ENCODING
            or topic in self._channels
            or topic in self._others
        ):
            raise SessionError(
                f"{self.path}: {topic!r} is an envelope topic; other channels need their own "
                "topic and encoding",
                kind="unsupported",
            )
        schema_id = 0
        if schema_name:
            schema_id = self._writer.register_schema(schema_name, schema_encoding, schema_data)
        self._others.add(topic)
        meta = dict(metadata or {})
        cid = self._writer.register_channel(topic, message_encoding, schema_id, meta)
        return int(cid)

    def write_message(
        self,
        channel_id: int,
        log_time_ns: int,
        data: bytes,
        *,
        publish_time_ns: int | None = None,
        sequence: int = 0,
    ) -> None:
        """Append raw message bytes on a channel made by :meth:`add_channel`."""
        self._check_open()
        if not 0 <= log_time_ns < 2**64:
            raise SessionError(f"{self.path}: log time {log_time_ns} is not in [0, 2**64) ns")
        publish = log_time_ns if publish_time_ns is None else publish_time_ns
        with self._at_level:
            self._writer.add_message(channel_id, log_time_ns, data, publish, sequence & 0xFFFFFFFF)

    def add_metadata(self, name: str, values: Mapping[str, str]) -> None:
        """Add a metadata record between the chunks written so far (e.g. end-of-run counts)."""
        self._check_open()
        self._writer.add_metadata(name, dict(values))

    def flush(self) -> None:
        """End the chunk in progress and push everything written so far to the OS, so that a
        writer killed after this loses nothing before it (no fsync: a power cut still can)."""
        self._check_open()
        flush = getattr(self._writer, "flush", None)
        if flush is not None:  # mcap >= 1.2.1
            flush()
        else:
            with self._at_level:
                self._writer._Writer__finalize_chunk()  # type: ignore[attr-defined]
            self._file.flush()

    @property
    def bytes_written(self) -> int:
        """Bytes in the file so far (completed chunks and records; not the chunk in progress)."""
        return self._file.tell() if not self._file.closed else self.path.stat().st_size

    def attach(
        self, name: str, data: bytes, *, media_type: str = "application/octet-stream"
    ) -> None:
        """Add an attachment (a calibration file, a config) between the chunks written so far."""
        self._check_open()
        self._writer.add_attachment(0, 0, name, media_type, bytes(data))

    def close(self) -> None:
        """Write the summary and footer and close the file; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._at_level:
                self._writer.finish()  # type: ignore[no-untyped-call]
        finally:
            self._file.close()

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # a session interrupted by an exception is still a valid, shorter file

    def _check_open(self) -> None:
        if self._closed:
            raise SessionError(f"{self.path}: the session writer is closed", kind="closed")

    def _channel(self, topic: str, encoding: str) -> int:
        known = self._channels.get(topic)
        if known is None:
            if topic in self._others:
                raise SessionError(
                    f"{self.path}: {topic!r} is already a channel of another encoding",
                    kind="encoding_changed",
                )
            cid = self._writer.register_channel(topic, ENVELOPE_ENCODING, 0, {"encoding": encoding})
            self._channels[topic] = known = (cid, encoding)
        elif known[1] != encoding:
            raise SessionError(
                f"{self.path}: {topic!r} was recorded as {known[1]!r}, this message is "
                f"{encoding!r} (one encoding per stream)",
                kind="encoding_changed",
            )
        return known[0]


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """One complete chunk of a session file (see :meth:`SessionReader.chunks`)."""

    offset: int
    compression: str  # "zstd", "lz4" or "" (none)
    compressed_size: int
    uncompressed_size: int
    records: list[McapRecord]  # schemas, channels and messages, in file order


@dataclass(frozen=True, slots=True)
class _ChunkRef:
    offset: int  # of the chunk record in the file
    start: int  # earliest and latest log time inside
    end: int
    channels: frozenset[int] | None  # None: not indexed, may hold any channel


class SessionReader:
    """Reads a session file: topics, metadata, attachments, and messages in log-time order."""

    def __init__(self, path: str | Path) -> None:
        """Open ``path`` and read its index; ``SessionError`` if it is not a readable session."""
        require_extra("mcap", "record")
        self.path = Path(path)
        #: True when the file ended early (writer killed): what was complete has been recovered.
        self.truncated = False
        #: The MCAP header's profile ("" for edgefuse sessions) and writing library.
        self.profile = ""
        self.library = ""
        self._channels: dict[int, Channel] = {}
        self._counts: dict[int, int] = {}
        self._chunks: list[_ChunkRef] = []
        self._metadata: list[int] = []  # record offsets
        self._attachments: list[int] = []
        try:
            self._file = open(self.path, "rb")  # noqa: SIM115 (closed by close())
            self._size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            kind = "missing" if isinstance(exc, FileNotFoundError) else "io"
            raise SessionError(f"{self.path}: cannot open: {exc.strerror}", kind=kind) from exc
        try:
            if self._size < len(_MAGIC) or self._read(0, len(_MAGIC)) != _MAGIC:
                raise SessionError(f"{self.path}: not an MCAP file (no magic)", kind="not_mcap")
            self.profile, self.library = self._read_header()
            if not self._load_summary():
                self._scan()
        except BaseException:
            self._file.close()
            raise

    def topics(self) -> dict[str, int]:
        """Envelope topics and their message counts (channels of other encodings are left out)."""
        out: dict[str, int] = {}
        for cid, ch in self._channels.items():
            if ch.message_encoding == ENVELOPE_ENCODING:
                out[ch.topic] = out.get(ch.topic, 0) + self._counts.get(cid, 0)
        return out

    def metadata(self) -> dict[str, dict[str, str]]:
        """The metadata records: name -> key/values (a repeated name keeps its last record)."""
        from mcap.data_stream import ReadDataStream
        from mcap.records import Metadata

        out: dict[str, dict[str, str]] = {}
        for offset in self._metadata:
            body = self._record(offset, _OP_METADATA)
            with self._decoding(f"metadata record at byte {offset}"):
                rec = Metadata.read(ReadDataStream(io.BytesIO(body)))
            out[rec.name] = dict(rec.metadata)
        return out

    def attachments(self) -> dict[str, bytes]:
        """The attachments: name -> bytes, each checked against its CRC."""
        from mcap.data_stream import ReadDataStream
        from mcap.records import Attachment

        out: dict[str, bytes] = {}
        for offset in self._attachments:
            body = self._record(offset, _OP_ATTACHMENT)
            with self._decoding(f"attachment at byte {offset}"):
                (crc,) = _U32.unpack(body[-4:])
                if crc and crc != zlib.crc32(body[:-4]):
                    raise ValueError("CRC mismatch")
                rec = Attachment.read(ReadDataStream(io.BytesIO(body)))
            out[rec.name] = rec.data
        return out

    def messages(
        self,
        topics: Collection[str] | None = None,
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> Iterator[Message]:
        """Stream the messages of ``topics`` (all when None) with log time in [start, end).

        Messages come in log-time order, arrays as read-only views. Asking for a topic recorded
        in another encoding raises ``SessionError`` here; unasked, such topics are skipped. A
        message whose bytes disagree with its header raises ``SessionError`` when reached.
        """
        if isinstance(topics, str):
            topics = (topics,)
        wanted: dict[int, str] = {}
        for cid, ch in self._channels.items():
            if topics is not None and ch.topic not in topics:
                continue
            if ch.message_encoding != ENVELOPE_ENCODING:
                if topics is None:
                    continue
                raise SessionError(
                    f"{self.path}: topic {ch.topic!r} holds {ch.message_encoding!r} messages, "
                    f"not edgefuse envelopes ({ENVELOPE_ENCODING})",
                    kind="foreign_encoding",
                )
            wanted[cid] = ch.topic
        lo, hi = start_ns if start_ns is not None else 0, end_ns if end_ns is not None else 2**64
        return self._merge(wanted, lo, hi)

    def channels(self) -> dict[int, Channel]:
        """Every channel by id, envelope channels and others (Foxglove JSON, ...)."""
        return dict(self._channels)

    def chunks(self) -> Iterator[ChunkInfo]:
        """Every complete chunk in file order, decompressed and CRC-checked, with its records
        (schemas, channels, messages): what ``edgefuse info`` walks."""
        from mcap.stream_reader import breakup_chunk

        for ref in sorted(self._chunks, key=lambda c: c.offset):
            chunk = self._chunk(ref.offset)
            with self._decoding(f"chunk at byte {ref.offset}"):
                records = breakup_chunk(chunk, validate_crc=True)
            yield ChunkInfo(
                ref.offset, chunk.compression, len(chunk.data), chunk.uncompressed_size, records
            )

    def close(self) -> None:
        """Close the file; iterators still running then raise ``SessionError``."""
        self._file.close()

    def __enter__(self) -> SessionReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _merge(self, wanted: dict[int, str], lo: int, hi: int) -> Iterator[Message]:
        # A heap of chunks (keyed by their first log time) and of the messages of the chunks
        # opened so far: a chunk is opened only when nothing before its start time is left.
        from mcap.records import Message as McapMessage

        heap: list[tuple[int, int, int, McapMessage | None]] = [
            (c.start, c.offset, -1, None)
            for c in self._chunks
            if c.end >= lo
            and c.start < hi
            and (c.channels is None or not c.channels.isdisjoint(wanted))
        ]
        heapq.heapify(heap)
        while heap:
            _, offset, _, msg = heapq.heappop(heap)
            if msg is not None:
                yield self._decode(wanted[msg.channel_id], msg)
                continue
            for i, rec in enumerate(self._chunk_records(offset)):
                if (
                    isinstance(rec, McapMessage)
                    and rec.channel_id in wanted
                    and lo <= rec.log_time < hi
                ):
                    heapq.heappush(heap, (rec.log_time, offset, i, rec))

    def _decode(self, topic: str, msg: McapMessage) -> Message:
        try:
            return decode_envelope(topic, msg.data)
        except EnvelopeError as exc:
            raise SessionError(
                f"{self.path}: message on {topic!r} at log time {msg.log_time} ns: {exc}",
                kind=exc.kind,
            ) from exc

    @contextmanager
    def _decoding(self, what: str) -> Iterator[None]:
        # Bytes of a damaged file go through the mcap library's record parsers, whose failures
        # are open-ended (struct.error, EndOfFile, ZstdError, CRC errors, ...): all become one.
        try:
            yield
        except SessionError:
            raise
        except Exception as exc:
            raise SessionError(f"{self.path}: {what}: {type(exc).__name__}: {exc}") from exc

    def _read(self, offset: int, n: int) -> bytes:
        if self._file.closed:
            raise SessionError(f"{self.path}: the session reader is closed", kind="closed")
        self._file.seek(offset)
        data = self._file.read(n)
        if len(data) != n:
            raise SessionError(
                f"{self.path}: {n} bytes at {offset} run past the end", kind="truncated"
            )
        return data

    def _record(self, offset: int, opcode: int) -> bytes:
        op, length = _PREFIX.unpack(self._read(offset, _PREFIX.size))
        if op != opcode or length > min(_MAX_RECORD, self._size - offset - _PREFIX.size):
            raise SessionError(
                f"{self.path}: no intact record of type {opcode:#x} at byte {offset}"
            )
        return self._read(offset + _PREFIX.size, length)

    def _chunk(self, offset: int) -> Chunk:
        from mcap.data_stream import ReadDataStream
        from mcap.records import Chunk

        body = self._record(offset, _OP_CHUNK)
        with self._decoding(f"chunk at byte {offset}"):
            chunk = Chunk.read(ReadDataStream(io.BytesIO(body)))
            if chunk.uncompressed_size > _MAX_RECORD:
                raise ValueError(f"uncompressed size {chunk.uncompressed_size} is implausible")
        return chunk  # type: ignore[no-any-return]

    def _chunk_records(self, offset: int) -> list[McapRecord]:
        from mcap.stream_reader import breakup_chunk

        chunk = self._chunk(offset)
        with self._decoding(f"chunk at byte {offset}"):
            return breakup_chunk(chunk, validate_crc=True)

    def _read_header(self) -> tuple[str, str]:
        """Profile and library of the MCAP header record ("" when the file ends before it)."""
        from mcap.data_stream import ReadDataStream
        from mcap.records import Header as McapHeader

        pos = len(_MAGIC)
        if pos + _PREFIX.size > self._size:
            return "", ""
        op, length = _PREFIX.unpack(self._read(pos, _PREFIX.size))
        if op != _OP_HEADER:
            raise SessionError(f"{self.path}: no MCAP header record after the magic")
        if pos + _PREFIX.size + length > self._size:
            return "", ""
        with self._decoding("header record"):
            body = self._read(pos + _PREFIX.size, length)
            rec = McapHeader.read(ReadDataStream(io.BytesIO(body)))
        return str(rec.profile), str(rec.library)

    def _load_summary(self) -> bool:
        """Index from the summary section; False (scan instead) when it is missing or damaged."""
        from mcap.reader import SeekingReader

        # The footer ends ``u64 summary_start | u64 summary_offset_start | u32 CRC | magic``; the
        # CRC covers the summary and the footer up to itself (the mcap library does not check it).
        if self._size < 2 * len(_MAGIC) + 29 or self._read(self._size - 8, 8) != _MAGIC:
            return False
        start, _, crc = struct.unpack("<QQI", self._read(self._size - 28, 20))
        if not len(_MAGIC) < start <= self._size - 29:
            return False
        pos, got = start, 0
        while crc and pos < self._size - 12:
            block = self._read(pos, min(1 << 20, self._size - 12 - pos))
            got, pos = zlib.crc32(block, got), pos + len(block)
        if got != crc:
            return False
        try:
            self._file.seek(0)
            summary = SeekingReader(self._file).get_summary()
        except Exception:  # a damaged summary is not fatal: the data section is still there
            return False
        stats = summary.statistics if summary is not None else None
        if summary is None or stats is None:
            return False
        chunks = summary.chunk_indexes
        if (
            (stats.chunk_count, stats.metadata_count, stats.attachment_count)
            != (len(chunks), len(summary.metadata_indexes), len(summary.attachment_indexes))
            or (stats.message_count > 0 and not chunks)  # messages outside chunks: scan
            or not set(stats.channel_message_counts) <= set(summary.channels)
            or any(c.chunk_start_offset + c.chunk_length > self._size for c in chunks)
        ):
            return False
        self._channels, self._counts = summary.channels, dict(stats.channel_message_counts)
        self._chunks = [
            _ChunkRef(
                c.chunk_start_offset,
                c.message_start_time,
                c.message_end_time,
                frozenset(c.message_index_offsets) or None,
            )
            for c in chunks
        ]
        self._metadata = [m.offset for m in summary.metadata_indexes]
        self._attachments = [a.offset for a in summary.attachment_indexes]
        return True

    def _scan(self) -> None:
        """Index by walking the data section; stop at its end or at the first torn record."""
        from mcap.data_stream import ReadDataStream
        from mcap.records import Channel
        from mcap.records import Message as McapMessage

        pos = len(_MAGIC)
        while True:
            if pos + _PREFIX.size > self._size:
                self.truncated = True
                return
            op, length = _PREFIX.unpack(self._read(pos, _PREFIX.size))
            if pos == len(_MAGIC) and op != _OP_HEADER:
                raise SessionError(f"{self.path}: no MCAP header record after the magic")
            end = pos + _PREFIX.size + length
            if end > self._size:
                self.truncated = True
                return
            if op in (_OP_DATA_END, _OP_FOOTER):
                return
            if op == _OP_CHUNK:
                ids: set[int] = set()
                times: list[int] = []
                for rec in self._chunk_records(pos):
                    if isinstance(rec, Channel):
                        self._channels[rec.id] = rec
                    elif isinstance(rec, McapMessage):
                        if rec.channel_id not in self._channels:
                            raise SessionError(
                                f"{self.path}: chunk at byte {pos}: message on unknown channel "
                                f"{rec.channel_id}"
                            )
                        ids.add(rec.channel_id)
                        times.append(rec.log_time)
                        self._counts[rec.channel_id] = self._counts.get(rec.channel_id, 0) + 1
                if times:
                    self._chunks.append(_ChunkRef(pos, min(times), max(times), frozenset(ids)))
            elif op == _OP_CHANNEL:
                with self._decoding(f"channel record at byte {pos}"):
                    body = self._read(pos + _PREFIX.size, length)
                    ch = Channel.read(ReadDataStream(io.BytesIO(body)))
                self._channels[ch.id] = ch
            elif op == _OP_MESSAGE:
                raise SessionError(
                    f"{self.path}: messages outside chunks are not supported", kind="unsupported"
                )
            elif op == _OP_METADATA:
                self._metadata.append(pos)
            elif op == _OP_ATTACHMENT:
                self._attachments.append(pos)
            pos = end
