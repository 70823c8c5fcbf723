"""The microphone node through real PyAudio -> PortAudio -> ALSA, with a capture device the test
configures: an ALSA ``file`` plugin whose input is a named pipe the test fills with a known
counter pattern at real-time pace (a plain file would be read as fast as the CPU allows)."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefuse.config import build
from edgefuse.envelope import Header
from edgefuse.errors import ConfigError
from edgefuse.sensors.microphone import MicrophoneParams, SampleClock
from tests.sensors.test_camera import NodeProcess

pytest.importorskip("pyaudio")

RATE = 16000
ASOUNDRC = """
pcm.edgefuse_test_mic {{
    type file
    slave.pcm "null"
    file "/dev/null"
    infile "{fifo}"
    format "raw"
}}
pcm.!default {{
    type asym
    capture.pcm "edgefuse_test_mic"
    playback.pcm "null"
}}
"""


def pattern(start: int, n: int, channels: int = 1) -> np.ndarray:
    """Samples ``start .. start+n`` of the test signal: each sample is its own count (mod 2^16,
    as int16), channel c offset by 1000*c, shape (n, channels)."""
    idx = np.arange(start, start + n, dtype=np.int64)[:, None] + 1000 * np.arange(channels)
    return (idx % 65536).astype(np.uint16).view(np.int16)


class FifoSource:
    """Writes the pattern into the named pipe at real-time pace in 20 ms blocks. The test holds
    the pipe open read-write, so PortAudio's device probing (opening and closing it) neither
    blocks nor loses data. ``pause_s`` makes the device go silent once, as a stalled one does."""

    def __init__(self, fifo: Path, channels: int = 1) -> None:
        os.mkfifo(fifo)
        self.fd = os.open(fifo, os.O_RDWR)
        self.channels = channels
        self.written = 0
        self.block_start_ns: list[int] = []  # monotonic time each block began to be written
        self.pause = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        block = RATE // 50
        t0 = time.monotonic()
        while not self.stop.is_set():
            if self.pause.is_set():
                time.sleep(0.005)
                t0 = time.monotonic() - self.written / RATE  # resume in real time
                continue
            due = t0 + self.written / RATE
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.block_start_ns.append(time.monotonic_ns())
            os.write(self.fd, pattern(self.written, block, self.channels).tobytes())
            self.written += block

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        os.close(self.fd)


@contextlib.contextmanager
def microphone(
    tmp: Path, channels: int = 1, **params: Any
) -> Iterator[tuple[NodeProcess, FifoSource]]:
    home = tmp / "home"
    home.mkdir()
    fifo = tmp / "mic.fifo"
    (home / ".asoundrc").write_text(ASOUNDRC.format(fifo=fifo))
    source = FifoSource(fifo, channels)
    node = NodeProcess(
        tmp,
        "edgefuse.sensors.microphone:MicrophoneNode",
        {"channels": channels, **params},
        ["audio"],
        name="mic",
        env={"HOME": str(home)},
        queue_depth=1000,
    )
    try:
        yield node, source
    finally:
        node.close()  # the source keeps feeding until the node is gone: its reads must return
        source.close()


def collect(node: NodeProcess, n: int) -> list[tuple[Header, np.ndarray]]:
    out: list[tuple[Header, np.ndarray]] = []
    while len(out) < n:
        m = node.recv(5.0)
        assert m is not None, node.log()
        out.append(m)
    return out


def check_continuous(chunks: list[tuple[Header, np.ndarray]], chunk: int, channels: int) -> None:
    """Sample-exact content tied to the sample counter, and exact stamp increments."""
    for h, samples in chunks:
        first = h.meta["first_sample"]
        assert samples.dtype == np.int16 and samples.shape == (chunk, channels)
        assert np.array_equal(samples, pattern(first, chunk, channels)), first
        assert h.t_sensor_ns == first * 1_000_000_000 // RATE
        assert h.encoding == "s16le" and h.frame_id == "mic"
        assert h.meta["rate_hz"] == RATE and h.meta["channels"] == channels
    for (h0, _), (h1, _) in itertools.pairwise(chunks):
        assert h1.seq == h0.seq + 1
        assert h1.meta["first_sample"] - h0.meta["first_sample"] == chunk
        assert h1.t_sensor_ns - h0.t_sensor_ns == chunk * 1_000_000_000 // RATE


def test_sample_exact_capture_by_device_name(tmp_path: Path) -> None:
    with microphone(tmp_path, device="edgefuse_test") as (node, source):
        chunks = collect(node, 150)  # 1.5 s of 10 ms chunks
        c = node.wait_for(lambda c: c["chunks"] >= 150, 5.0)
        block_start_ns = list(source.block_start_ns)
    check_continuous(chunks, 160, 1)
    assert chunks[0][0].meta["first_sample"] % 160 == 0
    assert c["overflows"] == 0 and c["gap_samples"] == 0 and c["discontinuities"] == 0
    assert "'edgefuse_test_mic': streaming (edgefuse_test_mic: 16000 Hz x 1 ch" in node.log()
    # t_host_ns is the arrival: no chunk is stamped before its last sample began to be written
    # into the device. (The span of arrivals says little on a loaded machine: what was written
    # before the node opened the device comes as a burst.)
    block = RATE // 50
    for h, _ in chunks:
        last_block = (h.meta["first_sample"] + 160 - 1) // block
        assert h.t_host_ns >= block_start_ns[last_block], h.meta["first_sample"]


def test_stereo_default_device_20ms_chunks(tmp_path: Path) -> None:
    with microphone(tmp_path, channels=2, chunk_ms=20.0) as (node, _):
        chunks = collect(node, 40)
    check_continuous(chunks, 320, 2)
    assert "audio input 'default'" in node.log()


def test_missing_device_lists_inputs(tmp_path: Path) -> None:
    with microphone(tmp_path, device="USB PnP Sound") as (node, _):
        code = node.proc.wait(timeout=20)
    assert code == 78, node.log()
    log = node.log()
    assert "no audio input named 'USB PnP Sound'; available inputs:" in log
    assert "edgefuse_test_mic" in log and "default" in log


def test_stalled_device_is_lost_and_resumed(tmp_path: Path, no_leaks: None) -> None:
    """The device goes silent for 1 s: the node reports it lost, opens a new stream, and the
    sample counter jumps by about the time that went by (a counted discontinuity), while the
    content after the resume is again tied exactly to the new counter offset."""
    with microphone(tmp_path, stall_timeout_s=0.3, reconnect_max_s=0.2) as (node, source):
        before = collect(node, 30)
        source.pause.set()
        node.wait_for(lambda c: c["connected"] == 0, 3.0)
        time.sleep(0.7)
        source.pause.clear()
        after = collect(node, 60)
        # Reopened streams that find the device still silent are lost again: >= 1 reconnect.
        c = node.wait_for(lambda c: c["reconnects"] >= 1 and c["connected"] == 1, 5.0)
    assert "reconnecting (no audio for" in node.log()
    check_continuous(before, 160, 1)
    assert c["discontinuities"] == 1 and c["gap_samples"] > 0
    seqs = [h.seq for h, _ in before + after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing published was lost
    firsts = [int(h.meta["first_sample"]) for h, _ in before + after]
    steps = np.diff(firsts)
    jumps = np.nonzero(steps != 160)[0]
    contents = np.concatenate([a[:, 0] for _, a in before + after]).view(np.uint16)
    breaks = np.nonzero(np.mod(np.diff(contents.astype(np.int64)), 65536) != 1)[0]
    # The counter jumps once, by the estimate of the silent time (about 1 s).
    assert len(jumps) == 1 and 0.5 * RATE < steps[jumps[0]] < 2.0 * RATE
    # The content never repeats and skips only at the jump, by what the abandoned stream had
    # read when it was given up (at most an ALSA period or two).
    assert len(breaks) <= 1
    if len(breaks):
        assert breaks[0] == (jumps[0] + 1) * 160 - 1
        skipped = (int(contents[breaks[0] + 1]) - int(contents[breaks[0]])) % 65536 - 1
        assert 0 < skipped <= 1024
    assert firsts[-1] - firsts[jumps[0] + 1] == 160 * (len(firsts) - jumps[0] - 2)


def test_sample_clock_accounts_for_every_gap() -> None:
    clock = SampleClock(RATE)
    t = 1_000_000_000
    assert clock.chunk(160, overflow=False, adc_time_s=1.0, t_host_ns=t) == 0
    assert clock.chunk(160, overflow=False, adc_time_s=1.01, t_host_ns=t + 10**7) == 160
    # An overflow with ADC times: 3 chunks (30 ms) went missing before this one.
    assert clock.chunk(160, overflow=True, adc_time_s=1.05, t_host_ns=t + 5 * 10**7) == 800
    assert clock.overflows == 1 and clock.gap_samples == 480
    # Without ADC times (0): arrival times, in whole chunks (40 ms later: 3 chunks missing).
    assert clock.chunk(160, overflow=True, adc_time_s=0.0, t_host_ns=t + 9 * 10**7) == 1440
    assert clock.gap_samples == 480 + 480
    clock.drop(160)  # a chunk the node could not keep
    assert clock.next_sample == 1760 and clock.dropped_chunks == 1
    # A new stream 1 s after the last chunk: the counter resumes at the host-time estimate.
    clock.resume(160, t + 9 * 10**7 + 10**9)
    assert clock.discontinuities == 1
    first = clock.chunk(160, overflow=False, adc_time_s=5.0, t_host_ns=t + 9 * 10**7 + 10**9)
    assert first == 1760 + RATE - 160


def test_params_are_validated() -> None:
    with pytest.raises(ConfigError, match="whole number of samples"):
        build(MicrophoneParams, {"rate_hz": 44100, "chunk_ms": 10.01})
    with pytest.raises(ConfigError, match="channels"):
        build(MicrophoneParams, {"channels": 0})
    assert build(MicrophoneParams, {"device": 3}).device == 3
    assert build(MicrophoneParams, {"rate_hz": 48000}).chunk == 480


def test_bench_microphone_reports_cpu_per_chunk() -> None:
    from edgefuse.bench.sensors_capture import bench_microphone

    r = bench_microphone(chunks=200)
    assert r["chunks"] == 200 and 0 < r["cpu_us_per_chunk"] < 10_000
    assert r["cpu_percent_of_core"] == pytest.approx(r["cpu_us_per_chunk"] / 100, rel=0.01)
