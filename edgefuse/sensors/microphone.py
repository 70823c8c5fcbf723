"""A microphone driver on PyAudio (PortAudio): s16le chunks on ``<name>/audio``, like the
simulated microphone (shape ``(samples, channels)`` int16, ``meta`` ``rate_hz``, ``channels``,
``first_sample``).

The clock is the sample counter: ``t_sensor_ns`` of a chunk is its first sample's count over the
rate, in exact integer ns, never the wall clock of the chunk's arrival (``t_host_ns``, the time
PortAudio handed it over, carries that). Samples the card lost are accounted for, so time never
silently shifts:

- an input overflow (PortAudio's ``paInputOverflow`` status flag on a callback) advances the
  counter by the samples lost, estimated from the ADC times PortAudio reports (or, where it
  reports none, from host arrival times in whole chunks); counters ``overflows``, ``gap_samples``;
- a chunk the node could not take in time (its queue full) is dropped whole: the counter still
  advances by its size (``dropped_chunks``);
- a device lost mid-run (the stream stops, errors, or delivers nothing for ``stall_timeout_s``)
  is reported, reopened with exponential back-off, and the counter resumes from an estimate of the
  samples that went by, from host time (``discontinuities``).

PyAudio is the ``audio`` extra, imported when the node starts.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgefuse.errors import ConfigError, require_extra
from edgefuse.node import Node

log = logging.getLogger(__name__)

#: PortAudio's ``paInputOverflow`` callback status flag (pa_callback_status flags).
PA_INPUT_OVERFLOW = 0x2
_NS = 1_000_000_000


@dataclass(frozen=True, kw_only=True)
class MicrophoneParams:
    """Parameters of :class:`MicrophoneNode`."""

    #: Input device: "" for the system default, an index, or (part of) its name.
    device: int | str = ""
    rate_hz: int = 16000
    channels: int = 1
    chunk_ms: float = 10.0
    frame_id: str = "mic"
    #: A running stream that delivers nothing for this long is treated as lost.
    stall_timeout_s: float = 1.0
    #: Longest wait between two reopening attempts (the back-off doubles up to this).
    reconnect_max_s: float = 10.0
    #: Chunks held between PortAudio's thread and the node loop; beyond, chunks are dropped.
    queue_chunks: int = 200

    def __post_init__(self) -> None:
        if not 8000 <= self.rate_hz <= 192000:
            raise ValueError(f"rate_hz must be in 8000..192000, got {self.rate_hz}")
        if not 1 <= self.channels <= 32:
            raise ValueError(f"channels must be in 1..32, got {self.channels}")
        if self.chunk_ms <= 0 or (self.chunk_ms * self.rate_hz) % 1000:
            raise ValueError(
                f"chunk_ms {self.chunk_ms} is not a whole number of samples at {self.rate_hz} Hz"
            )
        if isinstance(self.device, int) and self.device < 0:
            raise ValueError(f"device index must be >= 0, got {self.device}")
        if self.stall_timeout_s <= 0 or self.reconnect_max_s <= 0 or self.queue_chunks < 1:
            raise ValueError("stall_timeout_s, reconnect_max_s and queue_chunks must be > 0")

    @property
    def chunk(self) -> int:
        """Samples per chunk (per channel)."""
        return round(self.chunk_ms * self.rate_hz / 1000)


class SampleClock:
    """The running sample count: which sample a chunk starts at, with every gap counted.

    Only :meth:`chunk`, :meth:`drop` and :meth:`resume` move it; all are called in the order
    chunks arrive (from PortAudio's thread).
    """

    def __init__(self, rate_hz: int) -> None:
        self.rate_hz = rate_hz
        self.next_sample = 0
        self.overflows = 0
        self.gap_samples = 0
        self.dropped_chunks = 0
        self.discontinuities = 0
        self._prev: tuple[float, int, int] | None = None  # (adc time s, t_host ns, samples)

    def chunk(self, n: int, *, overflow: bool, adc_time_s: float, t_host_ns: int) -> int:
        """Account for a chunk of ``n`` samples; return the count of its first sample."""
        if overflow:
            self.overflows += 1
            lost = self._lost_before(n, adc_time_s, t_host_ns)
            self.gap_samples += lost
            self.next_sample += lost
        first = self.next_sample
        self.next_sample += n
        self._prev = (adc_time_s, t_host_ns, n)
        return first

    def _lost_before(self, n: int, adc_time_s: float, t_host_ns: int) -> int:
        if self._prev is None:
            return 0
        prev_adc, prev_host, prev_n = self._prev
        if adc_time_s > 0 and prev_adc > 0:
            # ADC times are the capture times of each chunk's first sample.
            return max(0, round((adc_time_s - prev_adc) * self.rate_hz) - prev_n)
        # No ADC times: arrival times, rounded to whole chunks (cards lose whole periods).
        elapsed = (t_host_ns - prev_host) * self.rate_hz / _NS
        return max(0, round(elapsed / n) - 1) * n

    def drop(self, n: int) -> None:
        """A chunk of ``n`` samples that was captured but could not be kept."""
        self.dropped_chunks += 1
        self.gap_samples += n
        self.next_sample += n

    def resume(self, n: int, t_host_ns: int) -> None:
        """A new stream after a lost one: advance by the samples that went by meanwhile,
        estimated from host time, before accounting for its first chunk of ``n`` samples."""
        self.discontinuities += 1
        if self._prev is not None:
            _, prev_host, _ = self._prev
            passed = round((t_host_ns - prev_host) * self.rate_hz / _NS) - n
            lost = max(0, passed)
            self.gap_samples += lost
            self.next_sample += lost
        self._prev = None


@dataclass(slots=True)
class _Chunk:
    first_sample: int
    samples: np.ndarray
    t_host_ns: int


def _input_devices(pa: Any) -> list[tuple[int, str]]:
    out = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            out.append((i, str(info["name"])))
    return out


def find_input_device(pa: Any, device: int | str) -> tuple[int, str]:
    """The PortAudio index and name of the input ``device`` (see :class:`MicrophoneParams`);
    raises ``ConfigError`` listing the available inputs when it is not there."""
    inputs = _input_devices(pa)
    listing = "; ".join(f"{i}: {name}" for i, name in inputs) or "none"
    if device == "":
        try:
            info = pa.get_default_input_device_info()
        except OSError:
            raise ConfigError(f"no default audio input; available inputs: {listing}") from None
        return int(info["index"]), str(info["name"])
    if isinstance(device, int):
        for i, name in inputs:
            if i == device:
                return i, name
        raise ConfigError(f"no audio input with index {device}; available inputs: {listing}")
    exact = [(i, n) for i, n in inputs if n == device]
    if exact:
        return exact[0]
    matches = [(i, n) for i, n in inputs if device.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(f"no audio input named {device!r}; available inputs: {listing}")
    names = "; ".join(f"{i}: {n}" for i, n in matches)
    raise ConfigError(f"audio input {device!r} is ambiguous: {names}; give the full name or index")


class MicrophoneNode(Node):
    """A PortAudio input device, publishing s16le chunks on ``<name>/audio``."""

    Params = MicrophoneParams
    outputs: ClassVar = {"audio": "s16le"}

    def setup(self) -> None:
        p: MicrophoneParams = self.params
        pyaudio: Any = require_extra("pyaudio", "audio")
        self.pyaudio = pyaudio
        self.pa: Any = pyaudio.PyAudio()
        self.device_index, self.device_name = find_input_device(self.pa, p.device)
        try:
            self.pa.is_format_supported(
                p.rate_hz,
                input_device=self.device_index,
                input_channels=p.channels,
                input_format=pyaudio.paInt16,
            )
        except ValueError as exc:
            raise ConfigError(
                f"audio input {self.device_name!r} cannot capture {p.rate_hz} Hz x "
                f"{p.channels} ch s16le: {exc}"
            ) from None
        self.clock = SampleClock(p.rate_hz)
        self.queue: collections.deque[_Chunk] = collections.deque()
        self.ready = threading.Event()
        self.lock = threading.Lock()  # the clock and queue, between PortAudio's thread and ours
        self.stream: Any = None
        self.generation = 0
        self.state = "starting"
        self.reconnects = 0
        self.open_failures = 0
        self.backoff_s = 0.25
        self.resume_pending = False
        self.last_chunk_ns = 0
        self.published = 0
        self._open()
        self.at(time.monotonic_ns(), self._pump)

    # --- PortAudio side ------------------------------------------------------------------
    def _callback_for(self, generation: int) -> Any:
        p: MicrophoneParams = self.params
        width = p.channels * 2

        def callback(data: bytes, frames: int, info: dict[str, float], status: int) -> Any:
            t_host_ns = time.monotonic_ns()
            if generation != self.generation:
                return (None, self.pyaudio.paAbort)  # a stream given up as lost
            n = len(data) // width
            samples = np.frombuffer(data, np.int16).reshape(n, p.channels)
            with self.lock:
                if self.resume_pending:
                    self.clock.resume(n, t_host_ns)
                    self.resume_pending = False
                if len(self.queue) >= p.queue_chunks:
                    self.clock.drop(n)  # the node loop fell behind: counted, time kept
                else:
                    first = self.clock.chunk(
                        n,
                        overflow=bool(status & PA_INPUT_OVERFLOW),
                        adc_time_s=float(info.get("input_buffer_adc_time", 0.0)),
                        t_host_ns=t_host_ns,
                    )
                    self.queue.append(_Chunk(first, samples, t_host_ns))
                self.last_chunk_ns = t_host_ns
            self.ready.set()
            return (None, self.pyaudio.paContinue)

        return callback

    def _open(self) -> None:
        p: MicrophoneParams = self.params
        self.generation += 1
        try:
            self.stream = self.pa.open(
                format=self.pyaudio.paInt16,
                channels=p.channels,
                rate=p.rate_hz,
                input=True,
                input_device_index=self.device_index,
                frames_per_buffer=p.chunk,
                stream_callback=self._callback_for(self.generation),
            )
        except (OSError, ValueError) as exc:
            self.stream = None
            self.open_failures += 1
            state = "reconnecting" if self.published else "waiting"
            self._set_state(state, f"cannot open: {exc}; retrying with back-off")
            self.at(time.monotonic_ns() + round(self.backoff_s * 1e9), self._reopen)
            self.backoff_s = min(self.backoff_s * 2, p.reconnect_max_s)
            return
        if self.state in ("reconnecting", "waiting") and self.published:
            self.reconnects += 1
        self.backoff_s = 0.25
        self.last_chunk_ns = time.monotonic_ns()
        self._set_state(
            "streaming", f"{self.device_name}: {p.rate_hz} Hz x {p.channels} ch, {p.chunk} samples"
        )

    def _reopen(self) -> None:
        if self.runner.stopping:
            return
        if self.published:
            with self.lock:
                self.resume_pending = True
        self._open()

    def _lose(self, why: str) -> None:
        """Give the stream up (closing it in the background: a hung driver must not hang us)
        and schedule a reopen."""
        stream, self.stream = self.stream, None
        self.generation += 1  # its callbacks from now on are ignored and abort it
        self._set_state("reconnecting", f"{why}; retrying with back-off")
        threading.Thread(target=_close_quietly, args=(stream,), daemon=True).start()
        self.at(time.monotonic_ns() + round(self.backoff_s * 1e9), self._reopen)
        self.backoff_s = min(self.backoff_s * 2, self.params.reconnect_max_s)

    def _set_state(self, state: str, detail: str) -> None:
        if state != self.state:
            level = logging.INFO if state == "streaming" else logging.WARNING
            self.log.log(level, "audio input %r: %s (%s)", self.device_name, state, detail)
            self.state = state

    # --- node loop side --------------------------------------------------------------------
    def _pump(self) -> None:
        try:
            self.ready.wait(0.02)
            self.ready.clear()
            while True:
                with self.lock:
                    if not self.queue:
                        break
                    chunk = self.queue.popleft()
                self._publish(chunk)
            self._watchdog()
        finally:
            if not self.runner.stopping:
                self.at(time.monotonic_ns(), self._pump)

    def _watchdog(self) -> None:
        if self.stream is None:
            return
        silent_ns = time.monotonic_ns() - self.last_chunk_ns
        active = True
        with contextlib.suppress(OSError):
            active = bool(self.stream.is_active())
        if not active:
            self._lose("the stream stopped (device unplugged or failed)")
        elif silent_ns > self.params.stall_timeout_s * 1e9:
            self._lose(f"no audio for {silent_ns / 1e9:.1f} s")

    def _publish(self, chunk: _Chunk) -> None:
        p: MicrophoneParams = self.params
        self.publish(
            "audio",
            [chunk.samples],
            t_sensor_ns=chunk.first_sample * _NS // p.rate_hz,
            t_host_ns=chunk.t_host_ns,
            frame_id=p.frame_id,
            meta={"rate_hz": p.rate_hz, "channels": p.channels, "first_sample": chunk.first_sample},
        )
        self.published += 1

    def teardown(self) -> None:
        stream = getattr(self, "stream", None)
        self.generation = getattr(self, "generation", 0) + 1
        if stream is not None:
            # Closing waits for PortAudio's thread; bounded, so a hung driver cannot hang a stop.
            t = threading.Thread(target=_close_quietly, args=(stream,), daemon=True)
            t.start()
            t.join(2.0)
        pa = getattr(self, "pa", None)
        if pa is not None and (stream is None or not t.is_alive()):
            pa.terminate()

    def counters(self) -> dict[str, int | float]:
        clock = getattr(self, "clock", None)
        if clock is None:
            return {}
        return {
            "chunks": self.published,
            "connected": int(self.state == "streaming"),
            "overflows": clock.overflows,
            "gap_samples": clock.gap_samples,
            "dropped_chunks": clock.dropped_chunks,
            "discontinuities": clock.discontinuities,
            "reconnects": self.reconnects,
            "open_failures": self.open_failures,
        }


def _close_quietly(stream: Any) -> None:
    with contextlib.suppress(Exception):
        stream.stop_stream()
    with contextlib.suppress(Exception):
        stream.close()
