"""The aligner node: per-stream clock models in, time-aligned sets out on ``<name>/set``.

Each input port is one stream, configured under ``streams:`` (policy, clock, latency, wrap,
tolerance or window); the rig calibration (``rig``, shared with the simulated rig) gives each
stream's static time offset. Live, sets are emitted as soon as they are complete and at the
latest at their deadline (``max_wait_ms`` after the set time, on the host monotonic clock);
with ``lossless: true`` (replay) the wall clock is never consulted, so every run over the same
input gives the same sets, and the sets still pending at the end are flushed::

    sync:
      type: aligner
      inputs: {camera: camera/image, depth: depth/image, lidar: lidar/points, mic: mic/audio}
      params:
        reference: camera
        max_wait_ms: 250
        streams:
          camera: {latency_ms: 17}
          depth: {policy: nearest, tolerance_ms: 20, latency_ms: 21}
          lidar: {policy: sweep, wrap_s: 3600, latency_ms: 101.5}
          mic: {policy: window, window_ms: 1000, latency_ms: 13.94}
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefuse.calib.model import find_calibration, load_calibration
from edgefuse.envelope import Message
from edgefuse.errors import ConfigError, EdgefuseError
from edgefuse.node import Node
from edgefuse.sync.aligned_set import ENCODING, AlignedSet, Member
from edgefuse.sync.aligner import Aligner, StreamConfig


@dataclass(frozen=True, kw_only=True)
class AlignerParams:
    """Parameters of the aligner node."""

    #: The stream whose messages define the set times.
    reference: str = "camera"
    #: Stream (= input port) -> how it is timed and joins sets.
    streams: dict[str, StreamConfig] = field(default_factory=dict)
    #: A set is emitted at the latest this long after its time (host clock), complete or not.
    max_wait_ms: float = 250.0
    #: A stream silent this long (event time) no longer holds sets back.
    idle_ms: float = 1000.0
    #: Rig calibration giving each stream's static time offset ("" = none).
    rig: str = ""
    #: Replay: decide on event time only (never the wall clock) and flush at the end.
    lossless: bool = False

    def __post_init__(self) -> None:
        if not self.streams:
            raise ValueError("streams is empty: configure one entry per input port")
        if self.reference not in self.streams:
            raise ValueError(
                f"reference {self.reference!r} is not one of the streams {list(self.streams)}"
            )
        if self.max_wait_ms <= 0 or self.idle_ms <= 0:
            raise ValueError("max_wait_ms and idle_ms must be > 0")
        if self.rig:
            try:
                find_calibration(self.rig)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None


#: Added latencies (emission on the host clock minus set time) kept for the percentiles.
_LATENCY_SAMPLES = 512


class AlignerNode(Node):
    """Clock models + aligner (see :mod:`edgefuse.sync.aligner`) as a pipeline node."""

    Params = AlignerParams
    outputs = {"set": ENCODING}

    @classmethod
    def input_ports(cls, params: Any) -> Sequence[str]:
        """One port per configured stream."""
        return tuple(params.streams)

    def setup(self) -> None:
        p: AlignerParams = self.params
        offsets: dict[str, int] = {}
        if p.rig:
            rig = load_calibration(find_calibration(p.rig))
            offsets = {name: s.time_offset_ns for name, s in rig.sensors.items()}
            for name, cfg in p.streams.items():
                sensor = cfg.sensor or name
                if cfg.sensor is not None and sensor not in offsets:
                    raise ConfigError(
                        f"stream {name}: sensor {sensor!r} is not in rig {rig.rig!r} "
                        f"(it has {', '.join(offsets)})"
                    )
        self.aligner = Aligner(
            p.streams,
            reference=p.reference,
            max_wait_ns=round(p.max_wait_ms * 1e6),
            idle_ns=round(p.idle_ms * 1e6),
            time_offsets_ns=offsets,
        )
        self._scheduled_ns: int | None = None
        self._latency_ns: deque[int] = deque(maxlen=_LATENCY_SAMPLES)
        self._bad: dict[str, int] = {}
        self._overruns = 0
        self._published = 0

    def on_message(self, port: str, msg: Message) -> None:
        try:
            sets = self.aligner.push(port, msg)
        except (ValueError, TypeError, EdgefuseError) as exc:
            # Bad data (no sample rate on an audio chunk, a stamp that is not an int, ...) is
            # counted and dropped; the stream goes on.
            key = f"bad.{port}"
            self._bad[key] = self._bad.get(key, 0) + 1
            if self._bad[key] == 1:
                self.log.warning("%s: message dropped: %s", port, exc)
            return
        self._publish(sets)
        if not self.params.lossless:
            # Deadlines are applied by the timer only: the runner drains the queued messages
            # before it fires timers, so a backlog is pushed before its sets time out.
            self._schedule()

    def _on_deadline(self) -> None:
        self._scheduled_ns = None
        self._publish(self.aligner.advance(time.monotonic_ns()))
        self._schedule()

    def _schedule(self) -> None:
        due = self.aligner.next_deadline_ns()
        if due is not None and due != self._scheduled_ns:
            self._scheduled_ns = due
            self.at(due, self._on_deadline)

    def _publish(self, sets: list[AlignedSet]) -> None:
        for s in sets:
            for name, m in list(s.members.items()):
                if m.present and not all(src.intact() for src in m.sources):
                    # The sender reused the shared-memory slot while the set waited: the data
                    # is gone, so the member is too (a bigger ring or a shorter wait fixes it).
                    s.members[name] = Member(
                        name, False, reason="overrun: the payload's shared-memory slot was reused"
                    )
                    self._overruns += 1
            arrays, meta = s.to_payload()
            self.publish(
                "set",
                [np.ascontiguousarray(a) for a in arrays],
                t_sensor_ns=s.t_sensor_ns,
                t_host_ns=s.t_host_ns,
                t_ns=s.t_ns,
                frame_id="base_link",
                meta=meta,
            )
            self._published += 1
            # Lossless (replay) has no wall clock to speak of: the event-time wait instead.
            self._latency_ns.append(
                s.wait_ns if self.params.lossless else time.monotonic_ns() - s.t_ns
            )

    def teardown(self) -> None:
        if self.params.lossless and hasattr(self, "aligner"):
            self._publish(self.aligner.flush())

    def counters(self) -> Mapping[str, int | float]:
        if not hasattr(self, "aligner"):
            return {}
        c = self.aligner.counters
        out: dict[str, int | float] = {
            "sets": c["sets"],
            "partial": c["partial"],
            "timed_out": c["timed_out"],
            "late": c["late"],
            "resets": c["clock_resets"],
            "pending": self.aligner.pending,
        }
        for key, n in sorted(c.items()):
            if key.startswith("missing."):
                out[key] = n
        if self._overruns:
            out["overruns"] = self._overruns
        out.update(self._bad)
        if self._latency_ns:
            lat = np.asarray(self._latency_ns, dtype=np.float64) / 1e6
            out["wait_p50_ms"] = float(np.percentile(lat, 50))
            out["wait_p99_ms"] = float(np.percentile(lat, 99))
        return out
