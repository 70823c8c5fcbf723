"""``edgefuse recover FILE``: rewrite a truncated (or damaged) session file whole.

A recorder killed mid-run leaves a file whose data section stops inside the chunk it was
writing, with no summary or footer. Readers of this package already recover what is complete
(:class:`~edgefuse.record.session.SessionReader` sets ``truncated``), but other tools want a
whole file. :func:`recover` walks the data section record by record and copies, in file order,
every complete record into a new file: the header (same profile and library), schemas and
channels, every chunk whose CRC checks out (its messages re-chunked with the same
compression), metadata and attachments; then it writes a proper summary and footer. It stops
at the end of the data section or at the first record cut short; a chunk that is whole but
damaged (bad CRC) is skipped, counted, and the walk goes on.

The same rewrite recompresses a whole file (as ``mcap recover --compression`` does): record
at the fast default level, then rewrite at zstd level 19 for the smallest file to keep.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from edgefuse.errors import require_extra
from edgefuse.record.errors import SessionError
from edgefuse.record.session import (
    DEFAULT_ZSTD_LEVEL,
    SessionReader,
    _AtLevel,
    _install_zstd_levels,
    check_zstd_level,
)

_MAGIC: Final = b"\x89MCAP0\r\n"
_PREFIX = struct.Struct("<BQ")
_OP_HEADER, _OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 1, 2, 3, 4, 5, 6
_OP_ATTACHMENT, _OP_METADATA, _OP_DATA_END = 0x09, 0x0C, 0x0F
_MAX_RECORD: Final = 4 << 30
#: Profiles this package writes and reads ("" = edgefuse sessions).
KNOWN_PROFILES: Final = ("",)


def check_profile(reader: SessionReader) -> None:
    """Raise ``SessionError`` (kind ``unknown_profile``) unless the file is an edgefuse session."""
    if reader.profile not in KNOWN_PROFILES:
        hint = ""
        if reader.profile in ("ros1", "ros2"):
            hint = f"; convert a {reader.profile} bag with 'edgefuse import'"
        raise SessionError(
            f"{reader.path}: MCAP profile {reader.profile!r} is not an edgefuse session "
            f"(written by {reader.library or 'an unknown library'}){hint}",
            kind="unknown_profile",
        )


@dataclass(slots=True)
class RecoverReport:
    """What :func:`recover` found and wrote."""

    source: str
    out: str
    source_bytes: int
    #: Bytes of the source that were read as complete records (the rest is the torn tail).
    complete_bytes: int
    truncated: bool
    #: How the new file's chunks are compressed ("zstd-1", "lz4", "none").
    compression: str = ""
    out_bytes: int = 0
    chunks: int = 0
    damaged_chunks: int = 0
    #: Messages skipped because their channel was defined only in a damaged chunk.
    orphaned: int = 0
    messages: int = 0
    #: Messages per topic.
    topics: dict[str, int] = field(default_factory=dict)
    metadata: int = 0
    attachments: int = 0
    start_ns: int | None = None
    end_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]

    def text(self) -> str:
        """A few lines for the terminal."""
        lost = self.source_bytes - self.complete_bytes
        span = ""
        if self.start_ns is not None and self.end_ns is not None:
            span = f", {(self.end_ns - self.start_ns) / 1e9:.3f} s of messages"
        state = "truncated" if self.truncated else "whole (rewritten)"
        lines = [
            f"{self.source}: {state}, {self.source_bytes} bytes",
            f"recovered {self.messages} messages in {self.chunks} chunks{span}, "
            f"{self.metadata} metadata, {self.attachments} attachments",
            f"dropped the torn tail: {lost} bytes; damaged chunks skipped: "
            f"{self.damaged_chunks}; messages without a channel: {self.orphaned}",
        ]
        lines += [f"  {t}: {n}" for t, n in sorted(self.topics.items())]
        lines.append(f"wrote {self.out} ({self.out_bytes} bytes, {self.compression})")
        return "\n".join(lines)


def default_out(path: Path) -> Path:
    """``NAME.recovered.mcap`` beside ``NAME.mcap``."""
    return path.with_name(f"{path.stem}.recovered{path.suffix or '.mcap'}")


@contextmanager
def _parsing(path: Path, what: str) -> Iterator[None]:
    # The mcap record parsers fail in open-ended ways on damaged bytes: all become one error.
    try:
        yield
    except SessionError:
        raise
    except Exception as exc:
        raise SessionError(f"{path}: {what}: {type(exc).__name__}: {exc}") from exc


def recover(
    path: str | Path,
    out: str | Path | None = None,
    *,
    compression: Literal["zstd", "lz4", "none"] | None = None,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
) -> RecoverReport:
    """Rewrite ``path`` whole into ``out`` (default :func:`default_out`); see the module
    docstring. The chunks are compressed as the source's first one was, or with
    ``compression`` (zstd at ``zstd_level``, -7..22). ``SessionError`` for a file that is
    not an edgefuse session at all; ``ValueError`` for an unknown compression or level."""
    if compression not in (None, "zstd", "lz4", "none"):
        raise ValueError(f"compression {compression!r} is not one of zstd, lz4, none")
    check_zstd_level(zstd_level)
    require_extra("mcap", "record")
    from mcap.data_stream import ReadDataStream
    from mcap.records import Attachment, Channel, Chunk, Header, Message, Metadata, Schema
    from mcap.stream_reader import breakup_chunk
    from mcap.writer import CompressionType, Writer

    src = Path(path)
    with SessionReader(src) as reader:  # refuses what is not MCAP at all, with a clear error
        check_profile(reader)
        # Channels the summary (or a scan) knows: a damaged chunk may have held the only
        # record of a channel whose messages fill the later chunks.
        known = reader.channels()
    dst = Path(out) if out is not None else default_out(src)
    if dst.resolve() == src.resolve():
        raise SessionError(f"{src}: recover writes a new file; give another -o", kind="io")
    size = src.stat().st_size
    report = RecoverReport(str(src), str(dst), size, len(_MAGIC), truncated=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    kinds = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "": CompressionType.NONE}
    _install_zstd_levels()
    schemas: dict[int, int] = {}  # source id -> new id
    channels: dict[int, int] = {}
    topic_of: dict[int, str] = {}
    writer: Any = None
    with open(src, "rb") as f, open(tmp, "wb") as o, _AtLevel(zstd_level):
        try:
            pos = len(_MAGIC)
            while pos + _PREFIX.size <= size:
                f.seek(pos)
                op, length = _PREFIX.unpack(f.read(_PREFIX.size))
                end = pos + _PREFIX.size + length
                if length > _MAX_RECORD or end > size:
                    break  # the torn tail
                if op in (_OP_DATA_END, _OP_FOOTER):
                    report.truncated = False
                    report.complete_bytes = pos
                    break
                body = f.read(length)
                stream = ReadDataStream(io.BytesIO(body))
                with _parsing(src, f"record {op:#x} at byte {pos}"):
                    if op == _OP_HEADER:
                        header = Header.read(stream)
                        chosen = _first_compression(f, end, size)
                        if compression is not None:
                            chosen = "" if compression == "none" else compression
                        report.compression = _describe(chosen, zstd_level)
                        writer = Writer(o, chunk_size=4 << 20, compression=kinds[chosen])
                        writer.start(profile=header.profile, library=header.library)
                    elif writer is None:
                        raise SessionError(f"{src}: no MCAP header record after the magic")
                    elif op == _OP_SCHEMA:
                        _schema(writer, Schema.read(stream), schemas)
                    elif op == _OP_CHANNEL:
                        _channel(writer, Channel.read(stream), schemas, channels, topic_of)
                    elif op == _OP_MESSAGE:
                        msg = Message.read(stream, length)
                        _message(writer, msg, schemas, channels, topic_of, known, report)
                    elif op == _OP_CHUNK:
                        chunk = Chunk.read(stream)
                        try:
                            records = breakup_chunk(chunk, validate_crc=True)
                        except Exception:  # a whole chunk with bad bytes: skip it, go on
                            report.damaged_chunks += 1
                            records = []
                        else:
                            report.chunks += 1
                        for rec in records:
                            if isinstance(rec, Schema):
                                _schema(writer, rec, schemas)
                            elif isinstance(rec, Channel):
                                _channel(writer, rec, schemas, channels, topic_of)
                            elif isinstance(rec, Message):
                                _message(writer, rec, schemas, channels, topic_of, known, report)
                    elif op == _OP_METADATA:
                        rec = Metadata.read(stream)
                        writer.add_metadata(rec.name, dict(rec.metadata))
                        report.metadata += 1
                    elif op == _OP_ATTACHMENT:
                        (crc,) = struct.unpack("<I", body[-4:])
                        if crc and crc != zlib.crc32(body[:-4]):
                            raise ValueError("attachment CRC mismatch")
                        att = Attachment.read(stream)
                        writer.add_attachment(
                            att.create_time, att.log_time, att.name, att.media_type, att.data
                        )
                        report.attachments += 1
                pos = end
                report.complete_bytes = pos
            if writer is None:
                # Cut before the header record was complete: an empty but whole session.
                writer = Writer(o, compression=CompressionType.ZSTD)
                writer.start(profile="", library="")
                report.compression = _describe("zstd", zstd_level)
            writer.finish()
        except BaseException:
            o.close()
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, dst)
    report.out_bytes = dst.stat().st_size
    return report


def _describe(compression: str, zstd_level: int) -> str:
    return {"zstd": f"zstd-{zstd_level}", "": "none"}.get(compression, compression)


def _first_compression(f: Any, pos: int, size: int) -> str:
    """The compression of the first chunk after ``pos`` ("zstd" if there is none)."""
    while pos + _PREFIX.size <= size:
        f.seek(pos)
        op, length = _PREFIX.unpack(f.read(_PREFIX.size))
        if op == _OP_CHUNK and pos + _PREFIX.size + 36 <= size:
            # Chunk: start, end, uncompressed size (u64 each), CRC (u32), str compression.
            f.seek(pos + _PREFIX.size + 28)
            (n,) = struct.unpack("<I", f.read(4))
            name = f.read(min(n, 16)).decode("ascii", "replace")
            return name if name in ("zstd", "lz4", "") else "zstd"
        if op in (_OP_DATA_END, _OP_FOOTER) or length > _MAX_RECORD:
            break
        pos += _PREFIX.size + length
    f.seek(pos)
    return "zstd"


def _schema(writer: Any, rec: Any, schemas: dict[int, int]) -> None:
    if rec.id not in schemas:
        schemas[rec.id] = writer.register_schema(rec.name, rec.encoding, rec.data)


def _channel(
    writer: Any,
    rec: Any,
    schemas: dict[int, int],
    channels: dict[int, int],
    topic_of: dict[int, str],
) -> None:
    if rec.id in channels:
        return
    if rec.schema_id and rec.schema_id not in schemas:
        raise ValueError(f"channel {rec.topic!r} refers to unknown schema {rec.schema_id}")
    sid = schemas.get(rec.schema_id, 0)
    channels[rec.id] = writer.register_channel(
        rec.topic, rec.message_encoding, sid, dict(rec.metadata)
    )
    topic_of[rec.id] = rec.topic


def _message(
    writer: Any,
    rec: Any,
    schemas: dict[int, int],
    channels: dict[int, int],
    topic_of: dict[int, str],
    known: dict[int, Any],
    report: RecoverReport,
) -> None:
    cid = channels.get(rec.channel_id)
    if cid is None:
        ch = known.get(rec.channel_id)
        if ch is None or (ch.schema_id and ch.schema_id not in schemas):
            report.orphaned += 1  # its channel (or schema) was only in a damaged chunk
            return
        _channel(writer, ch, schemas, channels, topic_of)
        cid = channels[rec.channel_id]
    writer.add_message(cid, rec.log_time, rec.data, rec.publish_time, rec.sequence)
    topic = topic_of[rec.channel_id]
    report.topics[topic] = report.topics.get(topic, 0) + 1
    report.messages += 1
    t = int(rec.log_time)
    report.start_ns = t if report.start_ns is None else min(report.start_ns, t)
    report.end_ns = t if report.end_ns is None else max(report.end_ns, t)
