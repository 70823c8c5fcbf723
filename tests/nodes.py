"""Nodes for fault-injection tests; the launcher imports them as ``tests.nodes:Class``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
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
    #: If set, append ``<node> <pid> <run_start_ns>`` to this file at each start.
    record: str = ""


class CrashingNode(Node):
    """Publishes a counter, then dies abruptly (os._exit: no clean-up, like a segfault)."""

    Params = CrashParams
    outputs = {"count": "i64"}

    def setup(self) -> None:
        if self.params.record:
            with open(self.params.record, "a") as f:
                f.write(f"{self.name} {os.getpid()} {self.run_start_ns}\n")
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


class SlowToStop(Node):
    """Takes 2.5 s to tear down (a recorder flushing its queue) and says so at the end; it
    asks for 6 s of grace, so the launcher must wait for it rather than kill it."""

    Params = StubbornParams
    outputs = {"tick": "i64"}
    stop_grace_s = 6.0

    def setup(self) -> None:
        self.every(0.05, lambda: self.publish("tick", [np.zeros(1, np.int64)], t_sensor_ns=0))

    def teardown(self) -> None:
        import time

        time.sleep(2.5)
        self.log.info("flushed everything")


MS = 1_000_000


class OneShotRecorder(Node):
    """Schedules one-shot timers out of order, records when each fires, then stops.

    ``fired`` holds ``(label, due ns, fired ns)``. One callback raises (the runner counts
    it); the ``chain`` steps each schedule the next from inside their callback, as a
    simulated sensor schedules the delivery of its next frame.
    """

    def setup(self) -> None:
        self.fired: list[tuple[str, int, int]] = []
        t0 = time.monotonic_ns()
        self.at(t0 + 60 * MS, self._mark("c", t0 + 60 * MS))
        self.at(t0 + 20 * MS, self._mark("a", t0 + 20 * MS))
        self.at(t0 + 40 * MS, self._mark("b1", t0 + 40 * MS))
        self.at(t0 + 40 * MS, self._mark("b2", t0 + 40 * MS))
        self.at(t0 - 1_000 * MS, self._mark("past", t0 - 1_000 * MS))
        self.at(t0 + 30 * MS, self._boom)
        self.at(t0 + 70 * MS, self._chain(0, t0 + 70 * MS))
        # Safety net: a lost timer would otherwise hang the test.
        self.at(t0 + 5_000 * MS, self.stop)

    def _mark(self, label: str, due: int) -> Callable[[], None]:
        def fire() -> None:
            self.fired.append((label, due, time.monotonic_ns()))

        return fire

    def _boom(self) -> None:
        raise RuntimeError("injected")

    def _chain(self, k: int, due: int) -> Callable[[], None]:
        def fire() -> None:
            self.fired.append((f"chain{k}", due, time.monotonic_ns()))
            if k < 3:
                self.at(due + 7 * MS, self._chain(k + 1, due + 7 * MS))
            else:
                self.stop()

        return fire


@dataclass(frozen=True, kw_only=True)
class ProbeParams:
    """Append one JSON line per received message to ``path``."""

    path: str


class SimProbe(Node):
    """Writes what it receives from the simulated rig: topic, index, stamps, payload CRC."""

    Params = ProbeParams
    inputs = ("camera", "depth", "lidar", "mic", "truth")

    def on_message(self, port: str, msg: Message) -> None:
        import json
        import zlib

        crc = 0
        for a in msg.arrays:
            crc = zlib.crc32(np.ascontiguousarray(a).data, crc)
        h = msg.header
        line = {
            "topic": msg.topic,
            "index": h.meta.get("index"),
            "crc": crc,
            "t_sensor_ns": h.t_sensor_ns,
            "t_host_ns": h.t_host_ns,
            "t_ns": h.t_ns,
            "received_ns": time.monotonic_ns(),
        }
        with open(self.params.path, "a") as f:
            f.write(json.dumps(line) + "\n")


class SetProbe(Node):
    """Writes one JSON line per aligned set: its time, mask, members' times and shapes."""

    Params = ProbeParams
    inputs = ("sets",)

    def on_message(self, port: str, msg: Message) -> None:
        import json

        from edgefuse.sync.aligned_set import AlignedSet

        s = AlignedSet.from_message(msg)
        members = {}
        for name, m in s.members.items():
            members[name] = {
                "present": m.present,
                "t_ns": m.info.get("t_ns"),
                "shapes": [list(a.shape) for a in m.arrays],
                "reason": m.reason,
                "info": {k: v for k, v in m.info.items() if k != "meta"},
            }
        line = {
            "t_ns": s.t_ns,
            "seq": msg.header.seq,
            "mask": s.mask,
            "timed_out": s.timed_out,
            "wait_ns": s.wait_ns,
            "received_ns": time.monotonic_ns(),
            "members": members,
        }
        with open(self.params.path, "a") as f:
            f.write(json.dumps(line) + "\n")


class BadAudio(Node):
    """Publishes audio chunks without a sample rate in ``meta`` (malformed for the aligner)."""

    outputs = {"audio": "s16le"}

    def setup(self) -> None:
        self.n = 0
        self.every(0.01, self.tick)

    def tick(self) -> None:
        self.publish("audio", [np.zeros((160, 1), np.int16)], t_sensor_ns=self.n * 10_000_000)
        self.n += 1


class DetectionProbe(Node):
    """Writes one JSON line per ``detect/objects`` message (decoded by the wire format) and
    one per ``sim/truth`` message seen (its objects in ``base_link``), for live checks."""

    Params = ProbeParams
    inputs = ("objects",)

    def on_message(self, port: str, msg: Message) -> None:
        import json

        from edgefuse.runtime.detections import from_message

        d = from_message(msg)
        line = {**d.to_json(), "seq": msg.header.seq, "received_ns": time.monotonic_ns()}
        with open(self.params.path, "a") as f:
            f.write(json.dumps(line) + "\n")


class EnvProbe(Node):
    """Writes its process's thread-pool variables (``*_NUM_THREADS``) and niceness (``nice``)
    as JSON to ``path``."""

    Params = ProbeParams

    def setup(self) -> None:
        import json
        import os

        import cv2

        env: dict[str, object] = {
            k: v for k, v in os.environ.items() if k.endswith(("_NUM_THREADS", "_THREADS_NUM"))
        }
        env["cv2_threads"] = cv2.getNumThreads()
        env["nice"] = os.nice(0)  # the process's niceness, as the launcher left it
        with open(self.params.path, "w") as f:
            f.write(json.dumps(env))
