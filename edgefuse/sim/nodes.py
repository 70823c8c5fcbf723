"""The simulated rig's nodes: one process per sensor, paced in real time.

Every node of a run builds the same world from the shared ``scenario`` and ``seed`` and agrees
on when world time 0 is (the launcher's run epoch plus ``start_delay_s``), so a restarted node
picks up where the world is now. A node renders sample ``k`` ahead of time, then publishes it
when the host clock reaches its simulated delivery time, with ``t_host_ns`` the real arrival
and ``t_sensor_ns`` the simulated sensor clock's stamp (``t_ns`` is left to the aligner, except
on ``sim/truth``, which is the truth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from edgefuse.node import Node
from edgefuse.sim.rig import (
    CameraSource,
    DepthSource,
    LidarSource,
    MicSource,
    Sample,
    SimParams,
    Source,
    TruthSource,
    load_rig,
)


@dataclass(frozen=True, kw_only=True)
class CameraParams(SimParams):
    """Parameters of the simulated camera (and of ``sim/truth``, which follows its frames)."""

    rate_hz: float = 30.0


@dataclass(frozen=True, kw_only=True)
class DepthParams(SimParams):
    """Parameters of the simulated depth camera."""

    rate_hz: float = 30.0


@dataclass(frozen=True, kw_only=True)
class LidarParams(SimParams):
    """Parameters of the simulated lidar (sweeps per second)."""

    rate_hz: float = 10.0


@dataclass(frozen=True, kw_only=True)
class MicParams(SimParams):
    """Parameters of the simulated microphone."""

    rate_hz: int = 16000
    chunk_ms: float = 10.0
    channels: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_ms * self.rate_hz % 1000:
            raise ValueError(f"chunk_ms {self.chunk_ms} is not a whole number of samples")
        if not 1 <= self.channels <= 8:
            raise ValueError(f"channels must be in 1..8, got {self.channels}")


class _SimNode(Node):
    """Paces one :class:`Source` against the host clock."""

    stream: ClassVar[str] = ""

    def make_source(self) -> Source:
        raise NotImplementedError

    def setup(self) -> None:
        p: SimParams = self.params
        self.source = self.make_source()
        self.epoch_ns = self.run_start_ns + round(p.start_delay_s * 1e9)
        now_s = (time.monotonic_ns() - self.epoch_ns) * 1e-9
        self.k = self.source.first_index(now_s)
        self.skipped = self.k  # samples before a (re)start that are already past
        self.late_dropped = 0
        self._next: Sample | None = None
        self._prepare()

    def _prepare(self) -> None:
        # Render the next delivered sample now and publish it when the host clock gets there;
        # one whose delivery is already long past is dropped without rendering it.
        max_lag_ns = round(self.params.max_lag_s * 1e9)
        while True:
            delivery = self.source.delivery_s(self.k)
            if delivery is not None:
                due_ns = self.epoch_ns + round(delivery * 1e9)
                if time.monotonic_ns() - due_ns > max_lag_ns:
                    self.k += 1
                    self.late_dropped += 1
                    continue
            s = self.source.sample(self.k)
            self.k += 1
            if s is not None:
                break
        self._next = s
        self.at(self.epoch_ns + round(s.delivery_s * 1e9), self._deliver)

    def _deliver(self) -> None:
        s = self._next
        assert s is not None
        self.publish(
            self.stream,
            s.arrays,
            t_sensor_ns=s.t_sensor_ns,
            t_ns=self.t_ns(s),
            frame_id=s.frame_id,
            meta=self.meta(s),
        )
        self._prepare()

    def counters(self) -> dict[str, int]:
        return {"late_dropped": self.late_dropped} if self.late_dropped else {}

    def t_ns(self, s: Sample) -> int | None:
        """``t_ns`` of the published message: unknown (the aligner's job) but for truth."""
        return None

    def meta(self, s: Sample) -> dict[str, object]:
        return s.meta


class SimCameraNode(_SimNode):
    """Simulated colour camera (640x480 bgr8 by the rig calibration), on ``<name>/image``."""

    Params = CameraParams
    outputs: ClassVar = {"image": "bgr8"}
    stream = "image"

    def make_source(self) -> Source:
        return CameraSource(self.params, rate_hz=self.params.rate_hz, rig=load_rig(self.params))


class SimDepthNode(_SimNode):
    """Simulated depth camera (z16, millimetres), on ``<name>/image``."""

    Params = DepthParams
    outputs: ClassVar = {"image": "z16"}
    stream = "image"

    def make_source(self) -> Source:
        return DepthSource(self.params, rate_hz=self.params.rate_hz, rig=load_rig(self.params))


class SimLidarNode(_SimNode):
    """Simulated spinning lidar (one sweep per message), on ``<name>/points``."""

    Params = LidarParams
    outputs: ClassVar = {"points": "xyzit_f32"}
    stream = "points"

    def make_source(self) -> Source:
        return LidarSource(self.params, rate_hz=self.params.rate_hz, rig=load_rig(self.params))


class SimMicNode(_SimNode):
    """Simulated microphone (s16le chunks), on ``<name>/audio``."""

    Params = MicParams
    outputs: ClassVar = {"audio": "s16le"}
    stream = "audio"

    def make_source(self) -> Source:
        p: MicParams = self.params
        return MicSource(
            p,
            rate_hz=p.rate_hz,
            rig=load_rig(p),
            chunk=round(p.chunk_ms * p.rate_hz / 1000),
            channels=p.channels,
        )


class SimTruthNode(_SimNode):
    """Ground truth per camera frame (objects, boxes, visibility, true clocks) on
    ``<name>/truth``."""

    Params = CameraParams
    outputs: ClassVar = {"truth": "sim_truth"}
    stream = "truth"

    def make_source(self) -> Source:
        return TruthSource(self.params, rate_hz=self.params.rate_hz, rig=load_rig(self.params))

    def t_ns(self, s: Sample) -> int | None:
        return self.epoch_ns + round(s.t_world_s * 1e9)

    def meta(self, s: Sample) -> dict[str, object]:
        src = self.source
        assert isinstance(src, TruthSource)
        return {**s.meta, "clocks": src.clock_truth(epoch_ns=self.epoch_ns, until_s=s.t_world_s)}
