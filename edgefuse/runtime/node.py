"""The ``infer`` node: aligned sets in (``sync/set``), detections out (``<name>/objects``).

Live (the default), sets wait in a queue of at most ``queue_depth`` (default 3): when a set
arrives to a full queue the oldest waiting one is dropped and counted, so a slow model never
builds a growing backlog and works on recent sets. The depth is there because the aligner
emits in bursts (a set waits for the lidar sweep that covers it: three 30 Hz camera sets per
10 Hz sweep); with a depth of 1 (newest only) a burst would lose two sets of three even on a
machine fast enough for all of them. Work is scheduled as a one-shot timer, one set per turn,
so the runner drains its socket between sets and the queue always holds the newest. With
``lossless`` (replay), every set is processed in arrival order, whatever it costs.

Each detection message carries the per-stage latency (see :mod:`edgefuse.runtime.detections`);
the node's counters give the totals, the p50/p99 of capture -> publish over the whole run and
the objects detected per second, for the status table and the run report.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgefuse.calib.model import find_calibration, load_calibration
from edgefuse.envelope import Message
from edgefuse.errors import ConfigError, EdgefuseError
from edgefuse.node import Node
from edgefuse.runtime import detections as wire
from edgefuse.runtime.backends import PRECISIONS, BackendError, BackendOptions, backend_names
from edgefuse.runtime.infer import DEFAULT_MODEL, Inference, ModelMetadataError
from edgefuse.sync.aligned_set import AlignedSet, Member

_LATENCY_SAMPLES = 512


class LatencyHistogram:
    """Percentiles of a whole run in fixed memory: 0.25 ms bins up to 2 s (beyond: the last)."""

    BIN_MS = 0.25

    def __init__(self, max_ms: float = 2000.0) -> None:
        self.counts = np.zeros(int(max_ms / self.BIN_MS) + 1, np.int64)
        self.n = 0

    def add(self, ms: float) -> None:
        """Count one sample (negative or NaN samples are not counted)."""
        if not ms >= 0:
            return
        self.counts[min(int(ms / self.BIN_MS), len(self.counts) - 1)] += 1
        self.n += 1

    def percentile(self, q: float) -> float:
        """The upper edge of the bin holding the ``q``-th percentile (ms; NaN when empty)."""
        if not self.n:
            return float("nan")
        k = int(np.searchsorted(np.cumsum(self.counts), q / 100 * self.n, side="left"))
        return (k + 1) * self.BIN_MS


@dataclass(frozen=True, kw_only=True)
class InferParams:
    """Parameters of the infer node."""

    #: The exported ONNX model ("" = the shipped one).
    model: str = ""
    #: ``auto``, ``onnxruntime``, ``tensorrt`` or ``torch``.
    backend: str = "auto"
    #: TensorRT engine precision.
    precision: str = "fp32"
    #: CPU threads of the backend.
    threads: int = 2
    #: The rig calibration (2D boxes, the depth lift; the model's rig must match).
    rig: str = "calibration/sim_rig.yaml"
    #: Aligned-set stream -> modality.
    streams: dict[str, str] = field(
        default_factory=lambda: {
            "camera": "camera",
            "depth": "depth",
            "lidar": "lidar",
            "mic": "audio",
        }
    )
    #: The rig camera whose pixels the 2D boxes are in.
    camera: str = "camera"
    score_threshold: float = 0.1
    #: Sets waiting at most (live); the oldest is dropped when a set arrives to a full queue.
    queue_depth: int = 3
    #: Replay: process every set in order, none dropped.
    lossless: bool = False
    #: Sets of the first seconds (from the first set) are left out of ``latency_p50_ms`` and
    #: ``latency_p99_ms`` (the steady state), not of ``latency_all_p99_ms`` (the whole run):
    #: at start every process is still warming its caches, pools and clock models.
    warmup_s: float = 2.0

    def __post_init__(self) -> None:
        if self.backend != "auto" and self.backend not in backend_names():
            raise ValueError(
                f"backend must be auto or one of {backend_names()}, got {self.backend!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.warmup_s < 0:
            raise ValueError(f"warmup_s must be >= 0, got {self.warmup_s}")
        if self.queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {self.queue_depth}")
        if not 0 < self.score_threshold < 1:
            raise ValueError(f"score_threshold must be in (0, 1), got {self.score_threshold}")


def _owned(s: AlignedSet) -> AlignedSet:
    """``s`` with its own copies of the payloads: a set kept past the callback must not read
    shared-memory slots the publisher may already have reused."""
    members = {
        k: Member(
            stream=m.stream,
            present=m.present,
            arrays=[np.array(a, copy=True) for a in m.arrays],
            info=m.info,
            reason=m.reason,
        )
        for k, m in s.members.items()
    }
    return AlignedSet(
        t_ns=s.t_ns,
        members=members,
        reference=s.reference,
        t_host_ns=s.t_host_ns,
        t_sensor_ns=s.t_sensor_ns,
        timed_out=s.timed_out,
        wait_ns=s.wait_ns,
        late=s.late,
        seq=s.seq,
    )


class InferNode(Node):
    """The model on aligned sets, live (bounded queue, oldest dropped) or lossless."""

    Params = InferParams
    outputs: ClassVar = {"objects": wire.ENCODING}
    inputs: ClassVar = ("set",)

    def setup(self) -> None:
        p: InferParams = self.params
        model = Path(p.model) if p.model else DEFAULT_MODEL
        if not model.is_file():
            raise ConfigError(f"{self.name}: model {model} not found (params.model)")
        rig = load_calibration(find_calibration(p.rig))
        options = BackendOptions(threads=p.threads, precision=p.precision)  # type: ignore[arg-type]
        try:
            self.inference = Inference(
                model,
                rig,
                backend=p.backend,
                options=options,
                streams=p.streams,
                camera=p.camera,
                score_threshold=p.score_threshold,
            )
        except (BackendError, ModelMetadataError) as e:
            raise ConfigError(f"{self.name}: {e}") from e
        first_ms = self.inference.warm_up()
        self.log.info(
            "%s: %s (warm-up: slowest of 3 runs %.1f ms)",
            self.name,
            self.inference.backend.info(),
            first_ms,
        )
        self._pending: deque[tuple[AlignedSet, int]] = deque()
        self._scheduled = False
        self._sets = self._processed = self._dropped = self._bad = 0
        self._objects = 0
        self._capture = LatencyHistogram()  # after the warm-up
        self._capture_all = LatencyHistogram()
        self._first_set_ns: int | None = None
        self._network_ms: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        self._objects_at: deque[tuple[int, int]] = deque(maxlen=64)

    def on_message(self, port: str, msg: Message) -> None:
        try:
            s = AlignedSet.from_message(msg)
        except EdgefuseError as e:
            self._bad += 1
            if self._bad == 1:
                self.log.warning("%s: set dropped: %s", self.name, e)
            return
        self._sets += 1
        received_ns = time.monotonic_ns()
        if self.params.lossless:
            self._process(s, received_ns)
            return
        if len(self._pending) >= self.params.queue_depth:
            self._pending.popleft()
            self._dropped += 1
        self._pending.append((_owned(s), received_ns))
        if not self._scheduled:
            self._scheduled = True
            self.at(time.monotonic_ns(), self._run_pending)

    def _run_pending(self) -> None:
        # One set per turn: the runner drains the socket before the next one-shot fires.
        self._scheduled = False
        if not self._pending:
            return
        s, received_ns = self._pending.popleft()
        self._process(s, received_ns)
        if self._pending:
            self._scheduled = True
            self.at(time.monotonic_ns(), self._run_pending)

    def _process(self, s: AlignedSet, received_ns: int) -> None:
        start_ns = time.monotonic_ns()
        dets, present, timings = self.inference(s)
        now = time.monotonic_ns()
        latency = {
            **timings.as_dict(),
            "queue": (start_ns - received_ns) / 1e6,
            "capture_to_publish": (now - s.t_host_ns) / 1e6 if s.t_host_ns else float("nan"),
        }
        if self.params.lossless:  # replay: wall-clock durations would differ from run to run
            latency = dict.fromkeys(latency, 0.0)
        arrays, meta = wire.to_payload(
            dets,
            class_names=self.inference.grid.class_names,
            modalities=present,
            set_seq=s.seq,
            latency_ms=latency,
            backend=self.inference.backend.name,
            model_sha256=self.inference.sha256,
        )
        self.publish(
            "objects",
            arrays,
            t_sensor_ns=s.t_sensor_ns,
            t_host_ns=s.t_host_ns,
            t_ns=s.t_ns,
            frame_id="base_link",
            meta=meta,
        )
        self._processed += 1
        self._objects += len(dets)
        if s.t_host_ns:
            if self._first_set_ns is None:
                self._first_set_ns = s.t_ns
            self._capture_all.add(latency["capture_to_publish"])
            if s.t_ns - self._first_set_ns >= self.params.warmup_s * 1e9:
                self._capture.add(latency["capture_to_publish"])
        self._network_ms.append(timings.network_ms)
        self._objects_at.append((now, self._objects))

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "sets": self._sets,
            "detected": self._processed,
            "dropped": self._dropped,
            "bad": self._bad,
            "objects": self._objects,
        }
        # Over the run (after the warm-up; and all of it), to the histogram's 0.25 ms bins.
        if self._capture.n:
            out["latency_p50_ms"] = self._capture.percentile(50)
            out["latency_p99_ms"] = self._capture.percentile(99)
        if self._capture_all.n:
            out["latency_all_p99_ms"] = self._capture_all.percentile(99)
        if len(self._objects_at) > 1:
            (t0, n0), (t1, n1) = self._objects_at[0], self._objects_at[-1]
            if t1 > t0:
                out["objects_per_s"] = round((n1 - n0) * 1e9 / (t1 - t0), 1)
        if self._network_ms:
            out["network_p50_ms"] = round(float(np.median(np.asarray(self._network_ms))), 2)
        return out

    def teardown(self) -> None:
        inference = getattr(self, "inference", None)
        if inference is not None:
            inference.close()
