"""Replay: selection (topics, remap, window, split files), streaming in bounded memory, the
playback clock and its keyboard, and paced replay into real pipelines (real processes, real
sockets and shared memory) and to ``edgefuse echo``."""

from __future__ import annotations

import itertools
import json
import os
import pty
import threading
import time
import tracemalloc
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefuse.envelope import Header, Message
from edgefuse.errors import ConfigError
from edgefuse.node import Node
from edgefuse.record import SessionError, SessionReader, SessionWriter
from edgefuse.record.playback import PlaybackClock, Prefetcher
from edgefuse.record.replay import ReplayNode, ReplayParams
from edgefuse.record.replay_cli import KeyboardControl, main
from edgefuse.record.selection import replay_messages, select
from edgefuse.sim.generate import generate
from edgefuse.sim.rig import SimParams


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "day_5.mcap"
    generate(path, SimParams(scenario="day", seed=5), duration_s=1.5, sensors=("camera", "mic"))
    return path


def _recorded(path: Path, topic: str) -> list[Message]:
    with SessionReader(path) as r:
        return [
            Message(m.topic, m.header, [np.array(a) for a in m.arrays]) for m in r.messages([topic])
        ]


# --- selection ------------------------------------------------------------------------------


def test_topics_remap_and_time_window_select_the_right_messages(session: Path) -> None:
    mic = _recorded(session, "mic/audio")
    t0 = min(m.header.t_host_ns for m in [*mic, *_recorded(session, "camera/image")])
    sel = select(
        session,
        topics=["mic/*"],
        remap={"mic/audio": "audio/raw"},
        start_offset_s=0.4,
        duration_s=0.5,
    )
    assert sel.topics == {"mic/audio": "audio/raw"} and sel.streams() == {"audio/raw": "s16le"}
    got = list(replay_messages(sel))
    lo, hi = t0 + 400_000_000, t0 + 900_000_000
    want = [m for m in mic if lo <= m.header.t_host_ns < hi]
    assert len(got) == len(want) > 45
    for (v, m), w in zip(got, want, strict=True):
        assert m.topic == "audio/raw" and m.header.stream == "raw"
        assert (m.header.seq, m.header.t_sensor_ns) == (w.header.seq, w.header.t_sensor_ns)
        assert v == w.header.t_host_ns - lo
        np.testing.assert_array_equal(m.arrays[0], w.arrays[0])
    # Looping: session time keeps increasing, one window per pass.
    two = [v for v, _ in replay_messages(sel, loops=2)]
    assert len(two) == 2 * len(want) and all(b > a for a, b in itertools.pairwise(two))
    assert two[len(want)] - two[0] == sel.span_ns == 500_000_000


def test_split_files_replay_as_one_session(session: Path, tmp_path: Path) -> None:
    mic = _recorded(session, "mic/audio")
    for i, part in enumerate((mic[:70], mic[70:])):
        with SessionWriter(tmp_path / f"s_{i:04d}.mcap") as w:
            for m in part:
                w.write(m.topic, m.header, m.arrays)
    sel = select(str(tmp_path / "s_*.mcap"))
    assert len(sel.paths) == 2 and sel.counts == {"mic/audio": len(mic)}
    assert [m.header.seq for _, m in replay_messages(sel)] == [m.header.seq for m in mic]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"topics": ["lidar/*"]}, "'lidar/\\*' is not in the recording; topics: camera/image"),
        ({"remap": {"sim/truth": "a/b"}}, "'sim/truth' is not replayed"),
        ({"remap": {"mic/audio": "camera/image"}}, "would both be replayed as 'camera/image'"),
        ({"remap": {"mic/audio": "nostream"}}, "not <node>/<stream>"),
        ({"start_offset_s": 60.0}, "past the end of the recording"),
    ],
)
def test_bad_selections_say_what_is_wrong(session: Path, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        select(session, **kw)


def test_bad_files_exit_2_with_a_clear_error(
    session: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(os.urandom(4096))
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(session.read_bytes()[:100])
    for path, message in (
        (garbage, "not an MCAP file"),
        (tmp_path / "missing.mcap", "missing.mcap: not found"),
        (cut, "no edgefuse envelope messages to replay"),
        (str(tmp_path / "none_*.mcap"), "no session file matches"),
    ):
        assert main([str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert main([str(session), "--remap", "mic/audio"]) == 2
    assert "expected RECORDED=NEW" in capsys.readouterr().err
    assert main([str(session), "-o", str(tmp_path / "x.mcap")]) == 2
    assert "need --lossless" in capsys.readouterr().err


def test_streaming_keeps_memory_bounded_whatever_the_file_size(tmp_path: Path) -> None:
    """120 MB of 256 KiB frames in 1 MiB chunks: replaying holds a couple of chunks, never
    the file (tracemalloc sees numpy's and the reader's allocations)."""
    path = tmp_path / "big.mcap"
    frame = np.frombuffer(os.urandom(256 * 1024), np.uint8).reshape(256, 1024)
    with SessionWriter(path, compression="none", chunk_size=1 << 20) as w:
        for i in range(480):
            h = Header("image", seq=i, t_host_ns=10**12 + i * 10**7, encoding="mono8")
            w.write("camera/image", h, [frame])
    assert path.stat().st_size > 120e6
    sel = select(path)
    tracemalloc.start()
    try:
        n = 0
        for _, m in replay_messages(sel):
            n += int(m.arrays[0][0, 0] == frame[0, 0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 480
    assert peak < 12e6, f"peak {peak / 1e6:.1f} MB while replaying a 120 MB file"
    # The replay node's read-ahead thread: bounded in bytes too.
    tracemalloc.start()
    reader = Prefetcher(replay_messages(sel), limit_bytes=4_000_000)
    try:
        most, n = 0, 0
        while reader.next() is not None:
            n += 1
            most = max(most, reader.queued_bytes)
            time.sleep(0.0005)  # a consumer slower than the reader: the queue fills up
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        reader.close()
        tracemalloc.stop()
    assert n == 480 and 3_000_000 < most <= 4_000_000
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB while reading ahead 4 MB"


# --- pacing ---------------------------------------------------------------------------------


def test_playback_clock_pauses_steps_and_changes_rate_across_processes(tmp_path: Path) -> None:
    ms = 1_000_000
    writer = PlaybackClock.create(tmp_path / "clock", rate=2.0, start_host_ns=1000 * ms)
    reader = PlaybackClock.attach(tmp_path / "clock")  # another process maps the same file
    assert reader.session_ns(1100 * ms) == 200 * ms and reader.host_ns(200 * ms) == 1100 * ms
    writer.pause(1100 * ms)
    assert reader.paused and reader.host_ns(300 * ms) is None
    assert reader.session_ns(5000 * ms) == 200 * ms  # frozen while paused
    writer.step_to(250 * ms)
    assert reader.session_ns(6000 * ms) == 250 * ms
    writer.resume(7000 * ms)
    assert reader.host_ns(350 * ms) == 7050 * ms
    writer.set_rate(1.0, 7050 * ms)
    assert reader.rate == 1.0 and reader.host_ns(450 * ms) == 7150 * ms


def test_keyboard_on_a_terminal_drives_the_clock(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    clock = PlaybackClock.local(rate=1.0, start_host_ns=time.monotonic_ns())
    steps = iter([10**12, 2 * 10**12])
    out = open(os.devnull, "w")  # noqa: SIM115
    kb = KeyboardControl(clock, slave, next_after=lambda v: next(steps, None), out=out)
    kb.start()
    try:

        def wait_for(cond: Any) -> None:
            deadline = time.monotonic() + 5
            while not cond() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert cond()

        os.write(master, b" ")
        wait_for(lambda: clock.paused)
        os.write(master, b"s")
        wait_for(lambda: clock.session_ns(time.monotonic_ns()) == 10**12)
        os.write(master, b"+")
        wait_for(lambda: clock.rate == 2.0)
        os.write(master, b"-")
        os.write(master, b"-")
        wait_for(lambda: clock.rate == 0.5)
        os.write(master, b" ")
        wait_for(lambda: not clock.paused)
    finally:
        kb.stop()
        out.close()
        os.close(master)
        os.close(slave)


# --- paced replay through real processes -------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProbeParams:
    """Where to write what arrives, on which ports."""

    out: str
    ports: list[str] = field(default_factory=lambda: ["data"])


class ProbeNode(Node):
    """Writes one JSON line per message received: port, seq, stamps, arrival, payload CRC."""

    Params = ProbeParams

    @classmethod
    def input_ports(cls, params: Any) -> Sequence[str]:
        return tuple(params.ports)

    def setup(self) -> None:
        self.f = open(self.params.out, "a")  # noqa: SIM115

    def on_message(self, port: str, msg: Message) -> None:
        arrival = time.monotonic_ns()
        h = msg.header
        crc = [zlib.crc32(np.ascontiguousarray(a).tobytes()) for a in msg.arrays]
        row = {
            "port": port,
            "topic": msg.topic,
            "seq": h.seq,
            "t_sensor_ns": h.t_sensor_ns,
            "t_host_ns": h.t_host_ns,
            "t_pub_ns": h.t_pub_ns,
            "arrival_ns": arrival,
            "crc": crc,
        }
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()

    def teardown(self) -> None:
        self.f.close()


def _probe_pipeline(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "probe.jsonl"
    p = tmp_path / "probe.yaml"
    p.write_text(
        f"""
name: probe
nodes:
  camera: {{type: sim_camera}}
  mic: {{type: sim_mic}}
  probe:
    type: tests.record.test_replay:ProbeNode
    inputs: {{audio: mic/audio}}
    params: {{out: {out}, ports: [audio]}}
  probe2:
    type: tests.record.test_replay:ProbeNode
    inputs: {{image: camera/image}}
    params: {{out: {out}.image, ports: [image]}}
"""
    )
    return p, out


def _rows(path: Path, port: str) -> list[dict[str, Any]]:
    if port == "image":  # the second probe: one per topic, so neither waits for the other
        path = path.with_name(path.name + ".image")
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["port"] == port]


@pytest.mark.parametrize("rate", [1.0, 2.0])
def test_paced_replay_into_a_pipeline_keeps_stamps_and_arrival_pattern(
    session: Path, tmp_path: Path, run_dir: Path, no_leaks: None, rate: float
) -> None:
    pipeline, out = _probe_pipeline(tmp_path)
    args = [str(session), "--pipeline", str(pipeline), "--rate", str(rate)]
    assert main([*args, "--start-delay", "2.5", "--status", "off"]) == 0
    for port, topic in (("audio", "mic/audio"), ("image", "camera/image")):
        rec = _recorded(session, topic)
        got = _rows(out, port)
        # Every message, in order, with its recorded seq, sensor stamp and payload.
        assert [r["seq"] for r in got] == [m.header.seq for m in rec]
        assert [r["t_sensor_ns"] for r in got] == [m.header.t_sensor_ns for m in rec]
        assert [r["crc"] for r in got] == [[zlib.crc32(a.tobytes()) for a in m.arrays] for m in rec]
        # Host stamps re-based: the recorded gaps, divided by the rate (to rounding).
        want = np.diff([m.header.t_host_ns for m in rec]) / rate
        stamped = np.diff([r["t_host_ns"] for r in got])
        assert np.abs(stamped - want).max() <= 1
        # And they arrived that way: gaps within a few ms of the recorded ones (on a shared
        # 2-core machine a message is sometimes a few ms late: the median is the figure).
        arrived = np.diff([r["arrival_ns"] for r in got])
        err_ms = np.abs(arrived - want) / 1e6
        assert np.median(err_ms) < 3.0 and np.percentile(err_ms, 90) < 15.0, (topic, err_ms)
        late_ms = np.array([r["arrival_ns"] - r["t_host_ns"] for r in got]) / 1e6
        assert np.median(late_ms) < 5.0, (topic, late_ms)
    # --rate 2 halves the duration.
    audio, rec = _rows(out, "audio"), _recorded(session, "mic/audio")
    span_s = (audio[-1]["arrival_ns"] - audio[0]["arrival_ns"]) / 1e9
    want_s = (rec[-1].header.t_host_ns - rec[0].header.t_host_ns) / 1e9 / rate
    assert span_s == pytest.approx(want_s, abs=0.03)


def test_replay_as_a_live_source_for_echo(
    session: Path, tmp_path: Path, run_dir: Path, no_leaks: None
) -> None:
    from edgefuse.introspect import echo, list_topics

    args = [str(session), "--topics", "mic/audio", "--remap", "mic/audio=audio/raw"]
    deadline = time.monotonic() + 10
    # The launcher installs signal handlers: it must run in the main thread, so echo runs
    # on the side and the replay here.
    lines: list[str] = []

    class _Out:
        def write(self, s: str) -> int:
            lines.append(s)
            return len(s)

        def flush(self) -> None:
            pass

    def listen() -> None:
        while not [r for r in list_topics() if r["topic"] == "audio/raw"]:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        echo("audio/raw", count=0, timeout_s=4.5, out=_Out(), as_json=True)  # type: ignore[arg-type]

    t = threading.Thread(target=listen)
    t.start()
    assert main([*args, "--start-delay", "2", "--status", "off"]) == 0
    t.join()
    got = [json.loads(x) for x in "".join(lines).splitlines()]
    rec = _recorded(session, "mic/audio")
    assert [g["topic"] for g in got] == ["audio/raw"] * len(rec)
    assert [(g["seq"], g["t_sensor_ns"]) for g in got] == [
        (m.header.seq, m.header.t_sensor_ns) for m in rec
    ]


def test_replay_node_declares_its_streams_from_the_file(session: Path) -> None:
    params = ReplayParams(path=str(session), topics=["camera/*"])
    assert ReplayNode.output_streams(params) == {"image": "bgr8"}
    with pytest.raises(ConfigError, match="use one replay node per recorded node"):
        ReplayNode.output_streams(ReplayParams(path=str(session), remap={"mic/audio": "mic/image"}))
    with pytest.raises(ValueError, match="not found"):
        ReplayParams(path=str(session) + ".nope")
    with pytest.raises(SessionError):
        ReplayNode.output_streams(ReplayParams(path=__file__))
