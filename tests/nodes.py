"""Nodes for fault-injection tests; the launcher imports them as ``tests.nodes:Class``."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

from edgefuse.envelope import Message
from edgefuse.node import Node


@dataclass(frozen=True, kw_only=True)
class CrashParams:
    """Crash with ``exit_code`` after ``ticks`` ticks at ``rate_hz``."""

    ticks: int = 5
    rate_hz: float = 50.0
    exit_code: int = 3


class CrashingNode(Node):
    """Publishes a counter, then dies abruptly (os._exit: no clean-up, like a segfault)."""

    Params = CrashParams
    outputs = {"count": "i64"}

    def setup(self) -> None:
        self.n = 0
        self.every(1 / self.params.rate_hz, self.tick)

    def tick(self) -> None:
        frame = self.loan("count", (256, 1024), np.int64)  # 2 MiB: goes through shared memory
        frame.fill(self.n)
        self.publish("count", [frame], t_sensor_ns=self.n)
        self.n += 1
        if self.n >= self.params.ticks:
            sys.stdout.flush()
            os._exit(self.params.exit_code)


class FragileSink(Node):
    """Raises on every other message: the runner must count the errors and keep going."""

    inputs = ("data",)

    def setup(self) -> None:
        self.seen = 0

    def on_message(self, port: str, msg: Message) -> None:
        self.seen += 1
        if self.seen % 2:
            raise ValueError("bad data (injected)")


@dataclass(frozen=True, kw_only=True)
class StubbornParams:
    """Nothing to set."""


class StubbornNode(Node):
    """Ignores SIGTERM: the launcher must SIGKILL it after the grace period."""

    Params = StubbornParams
    outputs = {"tick": "i64"}

    def setup(self) -> None:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.every(0.05, lambda: self.publish("tick", [np.zeros(1, np.int64)], t_sensor_ns=0))

    def teardown(self) -> None:
        pass
