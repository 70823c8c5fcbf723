"""Pacing a replay: :class:`Prefetcher` reads ahead on a thread within a byte budget, and
:class:`PlaybackClock` maps host time to session time (rate, pause, step), shared through a
small file by every replay node of a run so that ``edgefuse replay``'s keyboard controls all
of them at once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgefuse.envelope import Message
from edgefuse.errors import ConfigError


class Prefetcher:
    """Reads ahead of the replay on a thread (decompressing a chunk takes milliseconds, and
    must not make the message due meanwhile late), holding at most ``limit_bytes`` of
    payloads (and always at least one message). An error of the reader is raised by
    :meth:`next`."""

    def __init__(self, messages: Iterator[tuple[int, Message]], *, limit_bytes: int) -> None:
        self._it = messages
        self._limit = max(1, limit_bytes)
        self._queue: deque[tuple[int, Message]] = deque()
        self._bytes = 0
        self._done = False
        self._closed = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="replay-reader", daemon=True)
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        """Payload bytes read ahead."""
        return self._bytes

    def _run(self) -> None:
        try:
            for item in self._it:
                n = item[1].nbytes
                with self._cond:
                    while self._queue and self._bytes + n > self._limit and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    self._queue.append(item)
                    self._bytes += n
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the consumer, which reports it
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def next(self) -> tuple[int, Message] | None:
        """The next message (waits for the reader if it is behind); None at the end."""
        with self._cond:
            while not self._queue and not self._done:
                self._cond.wait()
            if self._queue:
                item = self._queue.popleft()
                self._bytes -= item[1].nbytes
                self._cond.notify_all()
                return item
        if self._error is not None:
            raise self._error
        return None

    def close(self) -> None:
        """Stop reading ahead."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._bytes = 0
            self._cond.notify_all()
        self._thread.join(timeout=5.0)


# --- pacing --------------------------------------------------------------------------------

_SEQ, _H0, _V0, _RATE, _PAUSED = range(5)
_RATE_UNIT = 1_000_000  # rates are stored in millionths


class PlaybackClock:
    """Session time as a function of host time: ``v = v0 + (h - h0) * rate`` while playing,
    ``v0`` while paused. Replay publishes a message of session time ``v`` at host time
    :meth:`host_ns`\\ (v). The state lives in five int64 words, in memory or in a small file
    (:meth:`create`/:meth:`attach`) that one writer (the CLI's keyboard) shares with the
    replay nodes; a sequence counter makes every read consistent."""

    def __init__(self, words: np.ndarray) -> None:
        self._w = words

    @classmethod
    def local(cls, *, rate: float = 1.0, start_host_ns: int = 0) -> PlaybackClock:
        """A clock in this process's memory, starting at session time 0 at ``start_host_ns``."""
        clock = cls(np.zeros(8, np.int64))
        clock._write(h0=start_host_ns, v0=0, rate=rate, paused=False)
        return clock

    @classmethod
    def create(
        cls, path: str | Path, *, rate: float = 1.0, start_host_ns: int = 0
    ) -> PlaybackClock:
        """A clock in a new file at ``path`` (for :meth:`attach` in other processes)."""
        Path(path).write_bytes(bytes(64))
        clock = cls(np.memmap(path, dtype=np.int64, mode="r+", shape=(8,)))
        clock._write(h0=start_host_ns, v0=0, rate=rate, paused=False)
        return clock

    @classmethod
    def attach(cls, path: str | Path) -> PlaybackClock:
        """The clock another process created at ``path``."""
        try:
            words = np.memmap(path, dtype=np.int64, mode="r", shape=(8,))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"playback control file {path}: {exc}") from None
        return cls(words)

    def state(self) -> tuple[int, int, float, bool]:
        """``(h0, v0, rate, paused)``, read consistently."""
        w = self._w
        while True:
            s1 = int(w[_SEQ])
            h0, v0, rate, paused = int(w[_H0]), int(w[_V0]), int(w[_RATE]), int(w[_PAUSED])
            if s1 % 2 == 0 and int(w[_SEQ]) == s1:
                return h0, v0, rate / _RATE_UNIT, bool(paused)

    def session_ns(self, host_ns: int) -> int:
        """Session time at host time ``host_ns``."""
        h0, v0, rate, paused = self.state()
        return v0 if paused else v0 + round((host_ns - h0) * rate)

    def host_ns(self, session_ns: int) -> int | None:
        """Host time at which session time ``session_ns`` comes; None while paused."""
        h0, v0, rate, paused = self.state()
        return None if paused else h0 + round((session_ns - v0) / rate)

    @property
    def paused(self) -> bool:
        """True while paused."""
        return self.state()[3]

    @property
    def rate(self) -> float:
        """The current rate (session seconds per host second)."""
        return self.state()[2]

    def start(self, host_ns: int) -> None:
        """Session time 0 at host time ``host_ns`` (keeps rate and pause)."""
        _, _, rate, paused = self.state()
        self._write(h0=host_ns, v0=0, rate=rate, paused=paused)

    def pause(self, host_ns: int) -> None:
        """Stop session time where it is at ``host_ns``."""
        _, _, rate, paused = self.state()
        if not paused:
            self._write(h0=host_ns, v0=self.session_ns(host_ns), rate=rate, paused=True)

    def resume(self, host_ns: int) -> None:
        """Let session time run again from where it stopped."""
        _, v0, rate, paused = self.state()
        if paused:
            self._write(h0=host_ns, v0=v0, rate=rate, paused=False)

    def set_rate(self, rate: float, host_ns: int) -> None:
        """Change the rate from ``host_ns`` on (no jump in session time)."""
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        _, _, _, paused = self.state()
        self._write(h0=host_ns, v0=self.session_ns(host_ns), rate=rate, paused=paused)

    def step_to(self, session_ns: int) -> None:
        """While paused: move session time to ``session_ns`` (what is due then is published)."""
        h0, v0, rate, paused = self.state()
        if paused and session_ns > v0:
            self._write(h0=h0, v0=session_ns, rate=rate, paused=True)

    def _write(self, *, h0: int, v0: int, rate: float, paused: bool) -> None:
        w = self._w
        w[_SEQ] += 1  # odd: a write in progress
        w[_H0], w[_V0], w[_RATE], w[_PAUSED] = h0, v0, round(rate * _RATE_UNIT), int(paused)
        w[_SEQ] += 1
