"""``edgefuse info`` and ``edgefuse recover`` on whole, cut, damaged and foreign files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import Writer

from edgefuse.envelope import Header, Message
from edgefuse.record import SessionError, SessionReader
from edgefuse.record.info import format_info, session_info
from edgefuse.record.recorder import Recording, RecordOptions
from edgefuse.record.recover import recover
from tests.record.test_recorder import record_cli


def make_session(path: Path, n: int = 50, **kw: object) -> Path:
    """A recorded session: camera images at 10 Hz (seq 7 missing), audio at 100 Hz."""
    opts = RecordOptions(
        out=str(path),
        rig="calibration/sim_rig.yaml",
        chunk_mb=0.05,
        **kw,  # type: ignore[arg-type]
    )
    rec = Recording(opts)
    for i in range(n):
        t = 10**12 + i * 10_000_000
        if i % 10 == 0 and i != 70:
            h = Header(
                "image", seq=i // 10, t_host_ns=t, frame_id="camera_optical", encoding="bgr8"
            )
            rec.feed(Message("camera/image", h, [np.full((48, 64, 3), i, np.uint8)]))
        h = Header(
            "audio",
            seq=i,
            t_host_ns=t + 1,
            frame_id="mic",
            encoding="s16le",
            meta={"rate_hz": 16000},
        )
        rec.feed(Message("mic/audio", h, [np.arange(160, dtype=np.int16) + i]))
    rec.close()
    return path


def test_info_of_a_recorded_session(tmp_path: Path) -> None:
    path = make_session(tmp_path / "s.mcap", n=100)
    info = session_info(path)
    assert not info["truncated"] and info["profile"] == ""
    topics = {t["topic"]: t for t in info["topics"]}
    assert topics["mic/audio"]["count"] == 100 and topics["mic/audio"]["encoding"] == "s16le"
    assert topics["mic/audio"]["rate_hz"] == pytest.approx(100, rel=1e-3)
    assert topics["camera/image"]["count"] == 9 and topics["camera/image"]["gaps"] == 1
    assert topics["camera/image"]["bytes"] > 9 * 48 * 64 * 3
    assert topics["foxglove/camera/image"]["schema"] == "foxglove.RawImage"
    assert info["duration_s"] == pytest.approx(0.99, abs=1e-3)
    assert info["compression"] == ["zstd"] and info["chunks"] >= 1
    assert info["start_utc"].endswith("UTC")
    [att] = info["attachments"]
    assert att["calibration"]["rig"] == "sim_rig"
    assert "640x480" in att["calibration"]["sensors"]["camera"]
    assert info["recording"]["lost"] == 1  # the recorder saw camera seq 7 missing
    text = format_info(info)
    assert "Truncated:         no" in text and "mic/audio" in text and "rig sim_rig" in text

    r = record_cli("info", str(path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["messages"] == info["messages"]
    r = record_cli("info", str(path))
    assert r.returncode == 0 and "Topics:" in r.stdout


def test_recover_every_cut_of_a_file(tmp_path: Path) -> None:
    path = make_session(tmp_path / "s.mcap", n=60, compression="lz4")
    data = path.read_bytes()
    cut, fixed = tmp_path / "cut.mcap", tmp_path / "fixed.mcap"
    seen = []
    for size in range(200, len(data), max(1, len(data) // 25)):
        cut.write_bytes(data[:size])
        with SessionReader(cut) as r:
            want = [(m.topic, m.header.seq, m.arrays[0].tobytes()) for m in r.messages()]
            truncated = r.truncated
            meta, atts = r.metadata(), r.attachments()
        report = recover(cut, fixed)
        assert report.truncated == truncated
        with open(fixed, "rb") as f:  # whole: the mcap library reads its summary
            summary = make_reader(f).get_summary()
            assert summary is not None and summary.statistics is not None
        with SessionReader(fixed) as r:
            assert not r.truncated
            got = [(m.topic, m.header.seq, m.arrays[0].tobytes()) for m in r.messages()]
            assert (r.metadata(), r.attachments()) == (meta, atts)
        assert got == want
        seen.append(len(got))
    assert seen == sorted(seen) and seen[0] < seen[-1]
    assert meta["session"]["rig"] == "sim_rig" and list(atts) == ["calibration/sim_rig.yaml"]
    assert session_info(fixed)["truncated"] is False


def test_info_and_recover_say_truncated(tmp_path: Path) -> None:
    path = make_session(tmp_path / "s.mcap")
    data = path.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: len(data) // 3])  # inside the data section (not the summary)
    r = record_cli("info", str(cut))
    assert r.returncode == 0 and "Truncated:         YES" in r.stdout
    r = record_cli("recover", str(cut))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "cut.recovered.mcap"
    assert f"wrote {out}" in r.stdout and "truncated" in r.stdout
    assert not session_info(out)["truncated"]
    with pytest.raises(SessionError, match="new file"):
        recover(cut, cut)


def foreign_profile(path: Path) -> Path:
    with open(path, "wb") as f:
        w = Writer(f)
        w.start(profile="ros2", library="rosbag2")
        sid = w.register_schema("std_msgs/msg/String", "ros2msg", b"string data")
        ch = w.register_channel("/chatter", "cdr", sid)
        w.add_message(ch, 1, b"\x00\x01\x00\x00\x03\x00\x00\x00hi\x00", 1)
        w.finish()  # type: ignore[no-untyped-call]
    return path


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"", "not an MCAP file"),
        (b"\x89MCAP0\r\n\x01\x05" + bytes(7) + b"\xff" * 5, "header record"),
        (os.urandom(4000), "not an MCAP file"),
        (b"\x89MCAP0\r\n" + os.urandom(3000), "no MCAP header"),
        (None, "profile 'ros2' is not an edgefuse session"),
        ("dir", "cannot open"),
        ("missing", "cannot open"),
    ],
    ids=["empty", "bad-header", "random", "magic-then-random", "ros2", "folder", "missing"],
)
def test_bad_files_are_clear_errors_with_exit_code_2(
    tmp_path: Path, content: bytes | str | None, needle: str
) -> None:
    path = tmp_path / "bad.mcap"
    if content is None:
        foreign_profile(path)
    elif content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    for verb in ("info", "recover"):
        r = record_cli(verb, str(path))
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stderr.startswith("edgefuse: error: ") and str(path) in r.stderr
        if verb == "info" or content not in ("dir", "missing"):
            assert needle in r.stderr, r.stderr
    assert not (tmp_path / "bad.recovered.mcap").exists()


def test_damaged_chunk_is_skipped_and_counted(tmp_path: Path) -> None:
    path = make_session(tmp_path / "s.mcap", n=60, compression="none", foxglove=False)
    data = bytearray(path.read_bytes())
    with SessionReader(path) as r:
        first = min(c.offset for c in r._chunks)
        total = sum(r.topics().values())
    data[first + 100] ^= 0xFF  # inside the first chunk's records: its CRC no longer matches
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(data))
    report = recover(bad, tmp_path / "fixed.mcap")
    assert report.damaged_chunks == 1 and 0 < report.messages < total
    with SessionReader(tmp_path / "fixed.mcap") as r:
        assert sum(r.topics().values()) == report.messages


def test_recover_recompresses_a_whole_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.record.test_session import _chunk_levels

    path = make_session(tmp_path / "s.mcap", n=100, compression="lz4", foxglove=False)
    small = tmp_path / "small.mcap"
    report = recover(path, small, compression="zstd", zstd_level=19)
    assert not report.truncated and report.compression == "zstd-19"
    assert report.out_bytes == small.stat().st_size < path.stat().st_size
    levels = _chunk_levels(small)
    assert levels and all(19 in lv and 1 not in lv for lv in levels), levels
    with SessionReader(path) as a, SessionReader(small) as b:
        assert (a.metadata(), a.attachments()) == (b.metadata(), b.attachments())
        want = [(m.topic, m.header, [x.tobytes() for x in m.arrays]) for m in a.messages()]
        got = [(m.topic, m.header, [x.tobytes() for x in m.arrays]) for m in b.messages()]
    assert got == want and len(got) == 109  # 9 images (one missing), 100 audio
    # Back to no compression from the command line; a level zstd does not have is refused.
    r = record_cli("recover", str(small), "-o", str(tmp_path / "raw.mcap"), "--compression", "none")
    assert r.returncode == 0, r.stderr
    assert "bytes, none)" in r.stdout and session_info(tmp_path / "raw.mcap")["compression"] == [
        "none"
    ]
    r = record_cli("recover", str(small), "--zstd-level", "40")
    assert r.returncode == 2 and "--zstd-level must be an integer from -7 to 22" in r.stderr
    assert not (tmp_path / "small.recovered.mcap").exists()
    # Recording at a slow level says so up front (the writer may not keep up).
    with caplog.at_level("WARNING", logger="edgefuse.record.recorder"):
        make_session(tmp_path / "slow.mcap", n=5, zstd_level=9)
        assert "zstd level 9 is slow" in caplog.text
        caplog.clear()
        make_session(tmp_path / "fast.mcap", n=5, zstd_level=3)
        assert "is slow" not in caplog.text
