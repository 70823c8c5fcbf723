"""Session files: lossless round trips, determinism, ordering, recovery and refusal of bad files."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer

from edgefuse.envelope import Header, Message, PayloadDesc, encode_header
from edgefuse.errors import EdgefuseError
from edgefuse.record import ENVELOPE_ENCODING, SessionError, SessionReader, SessionWriter

META = {"session": {"rig": "sim_rig", "seed": "7"}, "sim": {"world": "parking"}}
CALIB = {"calibration/sim_rig.yaml": b"camera:\n  fx: 600.0\n"}


def sample_arrays() -> list[np.ndarray]:
    """Every payload shape the wire allows: 0-d, empty, bool, big-endian, complex, strided."""
    strided = np.arange(48, dtype=np.float32).reshape(6, 8)[::2, 1::3]
    assert not strided.flags.c_contiguous
    return [
        np.array(3.5, dtype=np.float64),
        np.zeros((0, 3), dtype=np.float32),
        np.array([True, False, True]),
        np.arange(12, dtype=np.uint16).reshape(3, 4),
        np.arange(5, dtype=">u2"),
        strided,
        np.array([1 + 2j, -3.25 - 0j, np.nan * 1j], dtype=np.complex128),
        np.full((2, 2, 2), -7, dtype=np.int64),
    ]


def header(stream: str, seq: int, t: int, **kw: Any) -> Header:
    return Header(stream=stream, seq=seq, t_sensor_ns=t - 17, t_host_ns=t, **kw)


def write_session(path: Path, n: int = 40, **kw: Any) -> list[tuple[str, Header, list[np.ndarray]]]:
    """Write ``n`` messages on two interleaved topics, out of log-time order; return them."""
    written = []
    with SessionWriter(path, metadata=META, attachments=CALIB, **kw) as w:
        for i in range(n):
            topic, stream = ("camera/image", "image") if i % 2 else ("mic/audio", "audio")
            t = 1_000 + 10 * i + (25 if i % 5 == 0 else 0)  # every fifth one arrives late
            encoding = "mono16" if i % 2 else "s16le"
            h = header(stream, i // 2, t, encoding=encoding, meta={"i": i})
            arrays = [np.full((4, 8), i, dtype=np.uint16), np.array(float(i))]
            w.write(topic, h, arrays)
            written.append((topic, h, arrays))
    return written


def by_log_time(written: list[tuple[str, Header, list[np.ndarray]]]) -> list[tuple[str, int]]:
    order = sorted(range(len(written)), key=lambda k: (written[k][1].t_host_ns, k))
    return [(written[k][0], written[k][1].t_host_ns) for k in order]


def assert_same(msg: Message, topic: str, h: Header, arrays: list[np.ndarray]) -> None:
    assert msg.topic == topic
    assert msg.header == h
    assert len(msg.arrays) == len(arrays)
    for got, want in zip(msg.arrays, arrays, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()
        assert not got.flags.writeable


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_round_trip_is_lossless(tmp_path: Path, compression: Any) -> None:
    path = tmp_path / "s.mcap"
    full = Header(
        stream="points",
        seq=2**64 - 1,
        t_sensor_ns=-(2**63) + 1,
        t_host_ns=2**63 - 1,
        t_ns=-5,
        frame_id="lidar",
        encoding="xyzit_f32",
        meta={"a": [1, 2.5, None], "b": "ü", "c": {"d": True}},
        t_pub_ns=2**62,
    )
    plain = Header(stream="points", seq=0, t_host_ns=0, encoding="xyzit_f32")  # t_ns None
    arrays = sample_arrays()
    with SessionWriter(path, compression=compression) as w:
        w.write("lidar/points", full, arrays)
        w.write("lidar/points", plain, [])
        w.write("lidar/points", plain, arrays[:1], log_time_ns=2**64 - 1)
        assert w.counts == {"lidar/points": 3}
    with SessionReader(path) as r:
        assert not r.truncated
        assert r.topics() == {"lidar/points": 3}
        got = list(r.messages())
    assert len(got) == 3
    assert_same(got[0], "lidar/points", plain, [])
    assert_same(got[1], "lidar/points", full, arrays)
    assert_same(got[2], "lidar/points", plain, arrays[:1])  # log time 2**64 - 1: the last
    assert got[0].header.t_ns is None


def test_metadata_attachments_topics_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    with SessionWriter(path, metadata=META, attachments=CALIB) as w:
        w.write("mic/audio", header("audio", 0, 5), [np.zeros(4, np.int16)])
        w.attach("notes.txt", b"late attachment", media_type="text/plain")
        w.write("mic/audio", header("audio", 1, 6), [np.zeros(4, np.int16)])
        w.write("camera/image", header("image", 0, 7), [np.zeros((2, 2), np.uint8)])
        assert w.counts == {"mic/audio": 2, "camera/image": 1}
    with SessionReader(path) as r:
        assert r.topics() == {"mic/audio": 2, "camera/image": 1}
        assert r.metadata() == META
        assert r.attachments() == {**CALIB, "notes.txt": b"late attachment"}


def test_messages_come_in_log_time_order_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    written = write_session(path, n=200, chunk_size=512)  # many small chunks
    with SessionReader(path) as r:
        assert [(m.topic, m.header.t_host_ns) for m in r.messages()] == by_log_time(written)
        assert r.topics() == {"camera/image": 100, "mic/audio": 100}
        # Topic and time filters: [start, end) on log time; a single topic may be a str.
        audio = [m.header.t_host_ns for m in r.messages("mic/audio", start_ns=1200, end_ns=1500)]
        want = [t for topic, t in by_log_time(written) if topic == "mic/audio" and 1200 <= t < 1500]
        assert audio == want and audio
        assert list(r.messages(["nobody/here"])) == []
        assert list(r.messages(start_ns=10**9)) == []


def test_each_message_is_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    written = write_session(path, n=30, chunk_size=256)
    expected = sorted(written, key=lambda w: w[1].t_host_ns)
    with SessionReader(path) as r:
        for msg, (topic, h, arrays) in zip(r.messages(), expected, strict=True):
            assert_same(msg, topic, h, arrays)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_same_writes_give_the_same_bytes(tmp_path: Path, compression: Any) -> None:
    a, b = tmp_path / "a.mcap", tmp_path / "b.mcap"
    write_session(a, compression=compression, chunk_size=1024)
    write_session(b, compression=compression, chunk_size=1024)
    assert a.read_bytes() == b.read_bytes()


def test_plain_mcap_reader_sees_channels_metadata_and_attachments(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    written = write_session(path, n=10)
    with open(path, "rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None and summary.statistics is not None
        channels = {c.topic: c for c in summary.channels.values()}
        assert set(channels) == {"camera/image", "mic/audio"}
        assert all(c.message_encoding == ENVELOPE_ENCODING for c in channels.values())
        assert channels["camera/image"].metadata == {"encoding": "mono16"}
        assert summary.statistics.message_count == 10
        assert {m.name: m.metadata for m in reader.iter_metadata()} == META
        assert {a.name: a.data for a in reader.iter_attachments()} == CALIB
        first = next(reader.iter_messages(topics=["camera/image"]))
    _, channel, message = first
    h = written[1][1]
    assert (message.log_time, message.publish_time, message.sequence) == (h.t_host_ns,) * 2 + (0,)
    assert channel.topic == "camera/image"


def test_truncated_file_yields_every_complete_chunk(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    written = write_session(path, n=60, chunk_size=300, compression="zstd")
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    recovered = []
    for size in range(0, len(data), 13):
        cut.write_bytes(data[:size])
        try:
            with SessionReader(cut) as r:
                got = [(m.topic, m.header.t_host_ns) for m in r.messages()]
                # Cut in the summary: the data section is whole, nothing is missing.
                assert r.truncated or len(got) == len(written)
                assert sum(r.topics().values()) == len(got)
        except SessionError as exc:
            assert size < 100, (size, exc)  # only a file cut inside its MCAP header is refused
            continue
        # What comes back is exactly the written messages of the complete chunks, in order.
        kept = set(got)
        assert got == [x for x in by_log_time(written) if x in kept]
        recovered.append(len(got))
    assert recovered == sorted(recovered)  # a longer prefix never gives fewer messages
    assert recovered[0] == 0 and 0 < recovered[len(recovered) // 2] < recovered[-1] == 60


KILLED_WRITER = """
import os, sys
import numpy as np
from edgefuse.envelope import Header
from edgefuse.record import SessionWriter
w = SessionWriter(sys.argv[1], metadata={"session": {"rig": "sim_rig"}}, chunk_size=200)
for i in range(50):
    w.write("mic/audio", Header("audio", seq=i, t_host_ns=100 + i), [np.full(32, i, np.int16)])
os._exit(9)  # no close(), no flush: what a killed recorder leaves behind
"""


def test_writer_killed_mid_session_leaves_a_readable_prefix(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], timeout=60)
    assert done.returncode == 9
    with SessionReader(path) as r:
        assert r.truncated
        assert r.metadata() == {"session": {"rig": "sim_rig"}}
        seqs = [m.header.seq for m in r.messages()]
        assert seqs == list(range(len(seqs))) and 0 < len(seqs) < 50
        assert r.topics() == {"mic/audio": len(seqs)}


@pytest.mark.parametrize(
    "content",
    [b"", b"\x89MCAP", os.urandom(10_000), b"\x89MCAP0\r\n" + os.urandom(5000)],
    ids=["empty", "short", "random", "magic-then-random"],
)
def test_garbage_is_refused_with_session_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mcap"
    path.write_bytes(content)
    with pytest.raises(SessionError) as info, SessionReader(path) as r:
        list(r.messages())
        r.metadata()
        r.attachments()
    assert str(path) in str(info.value)


def test_file_cut_right_after_the_magic_is_an_empty_truncated_session(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    path.write_bytes(b"\x89MCAP0\r\n")  # the writer died before its first record
    with SessionReader(path) as r:
        assert r.truncated and r.topics() == {} and list(r.messages()) == []


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SessionError, match="cannot open") as info:
        SessionReader(tmp_path / "nope.mcap")
    assert info.value.kind == "missing"
    with pytest.raises(SessionError, match="cannot open"):
        SessionReader(tmp_path)


def test_flipped_bytes_give_session_errors_or_right_data(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    written = write_session(path, n=20, chunk_size=400, compression="none")
    good = by_log_time(written)
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad.mcap"
    rng = random.Random(3)
    for pos in rng.sample(range(len(data)), 300):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << rng.randrange(8)
        bad.write_bytes(flipped)
        try:
            with SessionReader(bad) as r:
                got = [(m.topic, m.header.t_host_ns) for m in r.messages()]
                r.metadata()
                r.attachments()
        except SessionError:
            continue
        # Chunks, attachments and the summary have CRCs: a flip they do not cover (a
        # message index, a metadata value) leaves every message intact.
        assert got == good


def test_damaged_message_names_topic_and_log_time(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    head = encode_header(header("image", 0, 42), [PayloadDesc(np.dtype(np.uint8), (8,))])
    with open(path, "wb") as f:  # a well-formed MCAP file whose envelope payload is short
        w = Writer(f)
        w.start()
        ch = w.register_channel("camera/image", ENVELOPE_ENCODING, 0)
        w.add_message(ch, 42, len(head).to_bytes(4, "little") + head + bytes(5), 42)
        w.add_message(ch, 43, len(head).to_bytes(4, "little") + head + bytes(9), 43)
        w.add_message(ch, 44, b"\x02\x00", 44)
        w.finish()  # type: ignore[no-untyped-call]
    with SessionReader(path) as r:
        for t, kind in ((42, "truncated"), (43, "size_mismatch"), (44, "truncated")):
            with pytest.raises(SessionError) as info:
                list(r.messages(start_ns=t, end_ns=t + 1))
            assert info.value.kind == kind
            assert f"'camera/image' at log time {t} ns" in str(info.value)


def test_foreign_channels_are_skipped_unless_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "mixed.mcap"
    with open(path, "wb") as f:
        w = Writer(f)
        w.start()
        other = w.register_channel("/tf", "json", 0)
        w.add_message(other, 1, b"{}", 1)
        w.finish()  # type: ignore[no-untyped-call]
    with SessionReader(path) as r:
        assert r.topics() == {}
        assert list(r.messages()) == []
        with pytest.raises(SessionError, match="'/tf' holds 'json'") as info:
            r.messages(["/tf"])
        assert info.value.kind == "foreign_encoding"


def test_writer_refuses_bad_input_with_session_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.mcap"
    with SessionWriter(path) as w:
        with pytest.raises(SessionError, match="does not match topic"):
            w.write("camera/image", header("depth", 0, 1), [])
        with pytest.raises(SessionError) as info:
            w.write("camera/image", header("image", 0, 1), [np.array(["x"], dtype=object)])
        assert info.value.kind == "bad_dtype"
        with pytest.raises(SessionError, match="log time -1"):
            w.write("camera/image", header("image", 0, -1), [])
        w.write("camera/image", header("image", 0, 1, encoding="bgr8"), [])
        with pytest.raises(SessionError, match="one encoding per stream"):
            w.write("camera/image", header("image", 1, 2, encoding="mono8"), [])
    w.close()  # idempotent
    with pytest.raises(SessionError, match="closed"):
        w.write("camera/image", header("image", 2, 3), [])
    assert SessionReader(path).topics() == {"camera/image": 1}
    assert issubclass(SessionError, EdgefuseError)


def test_messages_stream_chunk_by_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One topic after the other, as a simulator might write them: every chunk of the first
    # topic overlaps in time with one of the second, yet only those two are open at a time.
    path = tmp_path / "s.mcap"
    with SessionWriter(path, chunk_size=512) as w:
        for topic, stream in (("camera/image", "image"), ("mic/audio", "audio")):
            for i in range(200):
                w.write(topic, header(stream, i, 10 * i), [np.full(16, i, np.int32)])
    with SessionReader(path) as r:
        opened: list[int] = []
        real = r._chunk_records

        def spy(offset: int) -> Any:
            opened.append(offset)
            return real(offset)

        monkeypatch.setattr(r, "_chunk_records", spy)
        n_chunks = len(r._chunks)
        assert n_chunks > 20
        it = r.messages()
        first = next(it)
        assert len(opened) == 1 and first.header.t_host_ns == 0
        rest = [next(it)]
        assert len(opened) == 2 and rest[0].header.t_host_ns == 0
        rest += [next(it) for _ in range(198)]
        assert len(opened) <= n_chunks // 2 + 2
        rest += list(it)
        assert len(opened) == n_chunks
    times = [m.header.t_host_ns for m in [first, *rest]]
    assert times == sorted(times) and len(times) == 400
    # Equal log times keep file order: the camera message before the audio one.
    assert [m.topic for m in [first, *rest][:2]] == ["camera/image", "mic/audio"]


def _chunk_levels(path: Path) -> list[set[int]]:
    """For each chunk of ``path``, the zstd levels that give its bytes when its data are
    recompressed (zstd is deterministic per level; neighbouring levels may coincide)."""
    import zstandard
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    levels = []
    with open(path, "rb") as f:
        for record in StreamReader(f, emit_chunks=True).records:
            if isinstance(record, Chunk):
                assert record.compression == "zstd"
                raw = zstandard.ZstdDecompressor().decompress(
                    record.data, max_output_size=record.uncompressed_size
                )
                levels.append(
                    {lv for lv in range(1, 20) if zstandard.compress(raw, lv) == record.data}
                )
    return levels


def test_zstd_level_is_applied_per_writer_and_reads_back_the_same(tmp_path: Path) -> None:
    write_session(tmp_path / "fast.mcap", n=60, compression="zstd", zstd_level=1)
    write_session(tmp_path / "small.mcap", n=60, compression="zstd", zstd_level=19)
    fast, small = _chunk_levels(tmp_path / "fast.mcap"), _chunk_levels(tmp_path / "small.mcap")
    assert fast and all(1 in lv and 3 not in lv for lv in fast), fast
    assert small and all(19 in lv and 3 not in lv for lv in small), small
    with SessionReader(tmp_path / "fast.mcap") as a, SessionReader(tmp_path / "small.mcap") as b:
        got_a = [(m.topic, m.header, [x.tobytes() for x in m.arrays]) for m in a.messages()]
        got_b = [(m.topic, m.header, [x.tobytes() for x in m.arrays]) for m in b.messages()]
    assert got_a == got_b and len(got_a) == 60
    # A plain mcap Writer in the same process keeps mcap's own level (3).
    with open(tmp_path / "plain.mcap", "wb") as f:
        from mcap.writer import CompressionType

        w = Writer(f, compression=CompressionType.ZSTD)
        w.start()
        cid = w.register_channel("t", "raw", 0)
        w.add_message(cid, 1, b"x" * 5000 + bytes(range(256)) * 10, 1)
        w.finish()
    (plain,) = _chunk_levels(tmp_path / "plain.mcap")
    assert 3 in plain and 1 not in plain and 19 not in plain, plain


@pytest.mark.parametrize("level", [23, -8, 1.5, True])
def test_bad_zstd_level_is_refused(tmp_path: Path, level: Any) -> None:
    with pytest.raises(ValueError, match="zstd_level"):
        SessionWriter(tmp_path / "x.mcap", compression="zstd", zstd_level=level)
    assert not (tmp_path / "x.mcap").exists()
