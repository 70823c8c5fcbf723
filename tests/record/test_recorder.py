"""The recorder: a real pipeline recorded losslessly, crash safety, queue bounds, splitting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcap.reader import make_reader

from edgefuse.envelope import Header, Message
from edgefuse.node import Node
from edgefuse.record import SessionReader
from edgefuse.record.recorder import Recording, RecordOptions, match_topics
from edgefuse.record.session import envelope_bytes
from tests.conftest import REPO

#: Runs ``python -m edgefuse`` with the record verbs registered, whether or not the top-level
#: command line has them yet (the real ``main``: its error handling and exit codes).
CLI_DRIVER = """
import argparse, sys
import edgefuse.cli as c
from edgefuse.record.cli import register
build = c.build_parser
def with_record():
    p = build()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "recover" not in sub.choices:
        register(sub)
    return p
c.build_parser = with_record
sys.exit(c.main(sys.argv[1:]))
"""


def record_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """``edgefuse ARGS`` for the record verbs (see :data:`CLI_DRIVER`)."""
    return subprocess.run(
        [sys.executable, "-c", CLI_DRIVER, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


# --- a source whose every message is known --------------------------------------------------
def frame(seq: int) -> np.ndarray:
    """The big payload of message ``seq`` (300 KiB: through shared memory)."""
    return (
        (np.arange(320 * 240 * 4, dtype=np.uint32).reshape(240, 320, 4) + seq)
        .astype(np.uint8)[..., :3]
        .copy()
    )


def tick(seq: int) -> np.ndarray:
    """The small payload of message ``seq`` (inline)."""
    return np.arange(8, dtype=np.int16) * seq


@dataclass(frozen=True, kw_only=True)
class SourceParams:
    """Publish ``count`` messages per stream at ``rate_hz`` (0: until stopped) once ``wait_for``
    exists, then touch ``done``."""

    count: int = 40
    rate_hz: float = 40.0
    wait_for: str = ""
    done: str = ""


class KnownSource(Node):
    """Publishes ``image`` (bgr8, loaned in shared memory) and ``tick`` (inline, int16)."""

    Params = SourceParams
    outputs = {"image": "bgr8", "tick": "s16le"}

    def setup(self) -> None:
        self.seq = 0
        self.t_setup = time.monotonic()
        self.go_at: float | None = None
        self.every(1.0 / self.params.rate_hz, self.step)

    def step(self) -> None:
        p = self.params
        if self.go_at is None:
            # Start 0.5 s after the recorder has subscribed (its file exists), so nothing is
            # published before anyone listens; give up waiting after 30 s.
            waited = time.monotonic() - self.t_setup
            if not p.wait_for or Path(p.wait_for).exists() or waited > 30:
                self.go_at = time.monotonic() + 0.5
            return
        if time.monotonic() < self.go_at:
            return
        if p.count and self.seq >= p.count:
            return
        img = self.loan("image", (240, 320, 3), np.uint8)
        img[...] = frame(self.seq)
        self.publish(
            "image",
            [img],
            t_sensor_ns=self.seq * 25_000_000,
            frame_id="camera_optical",
            meta={"crc32": zlib.crc32(img.tobytes()), "k": self.seq},
        )
        self.publish("tick", [tick(self.seq)], t_sensor_ns=self.seq, meta={"rate_hz": 16000})
        self.seq += 1
        if p.count and self.seq == p.count and p.done:
            Path(p.done).write_text(str(self.seq))


def check_known(
    path: Path, *, first_seq_zero: bool = True, whole: bool = True
) -> dict[str, list[int]]:
    """Every message of ``path`` is the source's, bit-exact; return the seqs per topic."""
    seqs: dict[str, list[int]] = {}
    with SessionReader(path) as r:
        for m in r.messages():
            h = m.header
            seqs.setdefault(m.topic, []).append(h.seq)
            if m.topic == "src/image":
                want = [frame(h.seq)]
                assert h.meta == {"crc32": zlib.crc32(want[0].tobytes()), "k": h.seq}
                assert (h.frame_id, h.encoding, h.t_sensor_ns) == (
                    "camera_optical",
                    "bgr8",
                    h.seq * 25_000_000,
                )
            else:
                want = [tick(h.seq)]
                assert (h.encoding, h.t_sensor_ns) == ("s16le", h.seq)
            assert len(m.arrays) == 1
            assert m.arrays[0].tobytes() == want[0].tobytes()
            assert m.arrays[0].dtype == want[0].dtype and m.arrays[0].shape == want[0].shape
    # Bit-exact envelopes: the stored bytes are exactly the encoding of header + payloads
    # (read with the mcap library, which needs a whole file).
    with open(path, "rb") if whole else open(os.devnull, "rb") as f:
        found = make_reader(f).iter_messages(topics=["src/image", "src/tick"]) if whole else []
        for _, channel, message in found:
            m = Message(channel.topic, *_decode(channel.topic, message.data))
            want = [frame(m.header.seq) if channel.topic == "src/image" else tick(m.header.seq)]
            assert message.data == envelope_bytes(channel.topic, m.header, want)
            assert message.sequence == m.header.seq and message.log_time == m.header.t_host_ns
    for topic, s in seqs.items():
        start = 0 if first_seq_zero else s[0]
        assert s == list(range(start, start + len(s))), f"{topic}: seq gaps"
    return seqs


def _decode(topic: str, data: bytes) -> tuple[Header, list[np.ndarray]]:
    from edgefuse.record.session import decode_envelope

    m = decode_envelope(topic, data)
    return m.header, m.arrays


PIPELINE = """\
name: rec
{params}nodes:
  src:
    type: tests.record.test_recorder:KnownSource
    params: {{count: {count}, rate_hz: 40, wait_for: "{wait_for}", done: "{done}"}}
{recorder}"""

RECORDER = """\
  rec:
    type: edgefuse.record.recorder:RecorderNode
    restart: never
    params: {{out: "{out}", chunk_s: 0.5, compression: lz4}}
"""


def start_pipeline(tmp_path: Path, *, count: int, wait_for: Path, recorder: str) -> Any:
    path = tmp_path / "p.yaml"
    done = tmp_path / "done"
    path.write_text(
        PIPELINE.format(
            # Shared, as pipelines/sim.yaml does: the recorder picks the rig up from there.
            params="params:\n  rig: calibration/sim_rig.yaml\n" if recorder else "",
            count=count,
            wait_for=wait_for,
            done=done,
            recorder=recorder,
        )
    )
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefuse",
            "run",
            str(path),
            "--status",
            "off",
            "--duration",
            "60",
            "--report",
            str(tmp_path / "report.json"),
        ],
        cwd=REPO,
    )


def wait_for(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.usefixtures("no_leaks")
def test_recorder_node_records_a_pipeline_losslessly(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec"
    recorder = RECORDER.format(out=f"{out}/")
    count = 80
    # The source starts once the recorder's file exists: it has subscribed by then.
    proc = start_pipeline(tmp_path, count=count, wait_for=out, recorder=recorder)
    try:
        wait_for(lambda: (tmp_path / "done").exists(), 40, "the source to finish")
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    [path] = sorted(out.glob("*.mcap"))
    seqs = check_known(path)
    assert {t: len(s) for t, s in seqs.items()} == {"src/image": count, "src/tick": count}
    report = json.loads((tmp_path / "report.json").read_text())
    assert "rec" in json.dumps(report)
    with SessionReader(path) as r:
        assert not r.truncated
        meta = r.metadata()
        assert meta["session"]["rig"] == "sim_rig" and meta["session"]["pipeline"] == "rec"
        assert int(meta["session"]["start_wall_ns"]) > 1_600_000_000 * 10**9
        assert {"host", "edgefuse", "python", "numpy"} <= set(meta["session"])
        stats = json.loads(meta["recording"]["json"])
        assert stats["lost"] == 0
        assert stats["topics"]["src/image"]["written"] == count
        assert list(r.attachments()) == ["calibration/sim_rig.yaml"]
        topics = {c.topic for c in r.channels().values()}
    # Foxglove channels beside the envelopes: the image and its calibration, the audio.
    assert {"foxglove/src/image", "foxglove/camera/calibration", "foxglove/src/tick"} <= topics


@pytest.mark.slow
@pytest.mark.usefixtures("no_leaks")
def test_standalone_record_killed_then_recovered(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "standalone.mcap"
    started = tmp_path / "go"
    proc = start_pipeline(tmp_path, count=0, wait_for=started, recorder="")
    rec = None
    try:
        from edgefuse import introspect

        wait_for(lambda: introspect.list_topics(), 30, "the pipeline to start")
        rec = subprocess.Popen(
            [sys.executable, "-c", CLI_DRIVER, "record", "-o", str(out), "--chunk-s", "0.5"],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: out.exists() or rec.poll() is not None, 30, "the recorder to start")
        assert rec.poll() is None, rec.communicate()[1]
        started.touch()
        time.sleep(3.5)
        killed_at_ns = time.monotonic_ns()
        rec.send_signal(signal.SIGKILL)
        rec.wait(timeout=10)
    finally:
        if rec is not None and rec.poll() is None:
            rec.kill()
            rec.wait()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    assert rec.returncode == -signal.SIGKILL
    with SessionReader(out) as r:
        assert r.truncated
        last_ns = max(m.header.t_host_ns for m in r.messages())
        n_truncated = sum(r.topics().values())
    # At most the chunk in progress is lost: chunks close every 0.5 s (+ slack for a busy box).
    assert killed_at_ns - last_ns < 1.0e9, (killed_at_ns - last_ns) / 1e9
    seqs = check_known(out, first_seq_zero=False, whole=False)
    assert min(len(s) for s in seqs.values()) > 40  # ~3.5 s at 40 Hz

    fixed = tmp_path / "fixed.mcap"
    r2 = record_cli("recover", str(out), "-o", str(fixed), "--json")
    assert r2.returncode == 0, r2.stderr
    report = json.loads(r2.stdout)
    assert report["truncated"] and report["messages"] >= n_truncated
    assert report["complete_bytes"] <= report["source_bytes"]  # the torn tail, if any
    with open(fixed, "rb") as f:
        summary = make_reader(f).get_summary()
        assert summary is not None and summary.statistics is not None
        assert summary.statistics.message_count == report["messages"]
    with SessionReader(fixed) as r:
        assert not r.truncated and sum(r.topics().values()) == n_truncated
        assert r.metadata()["session"]["recorder"] == "edgefuse record"
    assert check_known(fixed, first_seq_zero=False) == seqs


# --- the engine on its own -----------------------------------------------------------------
def msg(topic: str, seq: int, nbytes: int = 1000, **kw: Any) -> Message:
    stream = topic.partition("/")[2]
    h = Header(stream, seq=seq, t_host_ns=10**9 + seq * 10**6, encoding="u8", **kw)
    return Message(topic, h, [np.full(nbytes, seq % 251, np.uint8)])


def test_seq_gaps_and_overruns_are_counted_and_never_written(tmp_path: Path) -> None:
    rec = Recording(RecordOptions(out=str(tmp_path / "a.mcap"), foxglove=False))
    for s in (0, 1, 4, 5):  # 2 and 3 never arrived
        assert rec.feed(msg("cam/image", s))
    torn = msg("cam/image", 6)
    torn.validator = lambda: False  # the slot was reused while it was copied
    assert not rec.feed(torn)
    assert not rec.feed(Message("cam/image", Header("other"), []))  # stream/topic mismatch
    report = rec.close()
    c = report["topics"]["cam/image"]
    assert (c["received"], c["written"], c["gaps"], c["overruns"]) == (6, 4, 2, 1)
    assert c["write_errors"] == 1 and c["lost"] == 2 + 1 + 1 and report["lost"] == 4
    with SessionReader(tmp_path / "a.mcap") as r:
        assert [m.header.seq for m in r.messages()] == [0, 1, 4, 5]


def test_full_queue_drops_are_counted_per_topic(tmp_path: Path) -> None:
    rec = Recording(RecordOptions(out=str(tmp_path / "q.mcap"), queue_mb=0.05, foxglove=False))
    gate = threading.Event()
    assert rec._writer is not None
    real = rec._writer.write_envelope

    def slow_disk(*a: Any, **kw: Any) -> None:
        gate.wait(10)  # the disk stalls until released
        real(*a, **kw)

    rec._writer.write_envelope = slow_disk  # type: ignore[method-assign]
    fed = [rec.feed(msg("cam/image", s, nbytes=20_000)) for s in range(10)]
    fed += [rec.feed(msg("mic/audio", s, nbytes=100)) for s in range(3)]
    assert rec.queued_bytes <= 50_000 + 21_000  # one oversized item may sit in the writer
    assert rec.counters()["queue_drops"] == fed.count(False) > 0
    gate.set()
    report = rec.close()
    drops = report["topics"]["cam/image"]["queue_drops"]
    assert drops == fed[:10].count(False) and drops > 0
    assert report["lost"] == fed.count(False)
    with SessionReader(tmp_path / "q.mcap") as r:
        assert sum(r.topics().values()) == fed.count(True)


def test_chunks_close_within_chunk_s_so_an_open_file_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "live.mcap"
    rec = Recording(RecordOptions(out=str(path), chunk_s=0.2, foxglove=False))
    try:
        for s in range(5):
            rec.feed(msg("cam/image", s))
        time.sleep(0.6)
        with SessionReader(path) as r:  # the writer still holds it open: no summary yet
            assert r.truncated
            assert [m.header.seq for m in r.messages()] == [0, 1, 2, 3, 4]
    finally:
        rec.close()


def test_split_by_size_and_duration_gives_whole_numbered_files(tmp_path: Path) -> None:
    opts = RecordOptions(
        out=str(tmp_path / "s.mcap"),
        split_mb=0.2,
        chunk_mb=0.05,
        compression="none",  # split_mb counts bytes on disk: keep them predictable
        rig="calibration/sim_rig.yaml",
    )
    rec = Recording(opts)
    for s in range(60):
        rec.feed(msg("cam/image", s, nbytes=20_000))
    report = rec.close()
    files = [Path(f) for f in report["files"]]
    assert len(files) >= 3
    assert [f.name for f in files] == [f"s_{i:04d}.mcap" for i in range(len(files))]
    seqs = []
    for i, f in enumerate(files):
        with SessionReader(f) as r:
            assert not r.truncated
            assert r.metadata()["session"]["split_index"] == str(i)
            assert list(r.attachments()) == ["calibration/sim_rig.yaml"]
            seqs += [m.header.seq for m in r.messages()]
    assert seqs == list(range(60))

    rec = Recording(RecordOptions(out=str(tmp_path / "t.mcap"), split_s=0.3, foxglove=False))
    for s in range(8):
        rec.feed(msg("cam/image", s))
        time.sleep(0.1)
    files = [Path(f) for f in rec.close()["files"]]
    assert len(files) >= 2
    total = 0
    for f in files:
        with SessionReader(f) as r:
            total += sum(r.topics().values())
    assert total == 8


def test_existing_files_are_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "x.mcap"
    path.write_bytes(b"precious")
    rec = Recording(RecordOptions(out=str(path), foxglove=False))
    rec.feed(msg("cam/image", 0))
    report = rec.close()
    assert report["files"] == [str(tmp_path / "x-1.mcap")]
    assert path.read_bytes() == b"precious"


def test_topic_patterns() -> None:
    topics = ["camera/image", "depth/image", "lidar/points", "mic/audio"]
    assert match_topics(["*"], topics) == topics
    assert match_topics(["*/image", "/mic/audio"], topics) == [
        "camera/image",
        "depth/image",
        "mic/audio",
    ]
    from edgefuse.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'radar/scan' is not published.*camera/image"):
        match_topics(["radar/scan"], topics)


def test_bad_options_are_refused() -> None:
    from edgefuse import config
    from edgefuse.errors import ConfigError
    from edgefuse.record.recorder import RecorderParams

    for bad in (
        {"chunk_s": 0},
        {"split_mb": -1},
        {"queue_mb": 0},
        {"rig": "nope.yaml"},
        {"compression": "gzip"},
        {"topics": []},
    ):
        with pytest.raises(ConfigError):
            config.build(RecorderParams, bad)


def test_record_without_a_running_pipeline_is_a_clear_error(run_dir: Path) -> None:
    r = record_cli("record", "--duration", "1")
    assert r.returncode == 2
    assert "no running pipeline" in r.stderr and "Traceback" not in r.stderr


def test_bench_record_runs_and_reports_the_rig_rate() -> None:
    from edgefuse.bench.record import bench_record

    out = bench_record(seconds=0.3, compression="zstd")
    # The rig: 640x480 bgr8 + 320x240 z16 at 30 Hz, lidar sweeps at 10 Hz, 16 kHz audio.
    assert 35 < out["rig_data_rate_MBps"] < 45
    r = out["results"]["zstd"]
    assert r["lost"] == 0 and r["messages"] > 0 and r["MBps"] > 0 and r["ratio"] > 1
    assert set(out["goals"]) == {"zstd_ge_3x_rig"}
