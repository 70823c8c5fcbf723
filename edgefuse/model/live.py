"""The ``live_map`` node: the running mAP of a pipeline's detections against the simulated
rig's ground truth.

It pairs each ``detect/objects`` message with the ``sim/truth`` frame of the same camera frame
(nearest ``t_ns`` within ``tolerance_ms``: the detection carries the aligned set's time, the
truth the frame's true time), scores it by the same rule as ``edgefuse eval``
(:meth:`~edgefuse.model.labels.LabelRules.score_pair`,
:func:`~edgefuse.model.metrics.center_distance_ap`) and shows the cumulative mAP in the status
table, so a live run and an offline evaluation of the same scenario can be compared number for
number. Sets of the first ``skip_s`` are left out, as the dataset builder leaves them out (the
clock models are still converging).

Numpy only: it runs in pipelines without PyTorch.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from edgefuse.calib.model import find_calibration, load_calibration
from edgefuse.envelope import Message
from edgefuse.errors import ConfigError, EdgefuseError
from edgefuse.model.labels import LabelRules, Objects
from edgefuse.model.metrics import FrameDetections, FrameTruth, center_distance_ap
from edgefuse.node import Node
from edgefuse.runtime import detections as wire
from edgefuse.runtime.infer import DEFAULT_MODEL, ModelMetadataError, model_metadata
from edgefuse.runtime.postprocess import GridSpec
from edgefuse.sim.truth import TruthFrame

#: Truth frames kept waiting for their detections (a few seconds at 30 Hz).
_TRUTH_KEPT = 256
#: Detections kept waiting for their truth frame.
_DETECTIONS_KEPT = 64


@dataclass(frozen=True, kw_only=True)
class LiveScoreParams:
    """Parameters of the live scorer."""

    #: The exported model whose grid the detections are on ("" = the shipped one).
    model: str = ""
    #: The rig calibration (the camera's view decides which objects count).
    rig: str = "calibration/sim_rig.yaml"
    camera: str = "camera"
    #: Largest difference between a detection's and its truth frame's ``t_ns``.
    tolerance_ms: float = 5.0
    #: Sets of the first seconds (from the first detection) are not scored.
    skip_s: float = 1.0
    #: How often the mAP is recomputed (it is over every frame scored so far).
    every_s: float = 2.0

    def __post_init__(self) -> None:
        if self.tolerance_ms <= 0 or self.every_s <= 0 or self.skip_s < 0:
            raise ValueError("tolerance_ms and every_s must be > 0, skip_s >= 0")


class LiveScoreNode(Node):
    """Cumulative centre-distance mAP of ``detections`` against ``truth``, in its counters."""

    Params = LiveScoreParams
    inputs: ClassVar = ("detections", "truth")

    def setup(self) -> None:
        p: LiveScoreParams = self.params
        model = Path(p.model) if p.model else DEFAULT_MODEL
        try:
            meta = model_metadata(model)
            self.grid = GridSpec.from_dict(meta["grid"])
        except (ModelMetadataError, KeyError, OSError) as e:
            raise ConfigError(f"{self.name}: model {model}: {e}") from e
        rig = load_calibration(find_calibration(p.rig))
        self.rules = LabelRules.for_rig(self.grid, rig, camera=p.camera)
        self._truth: deque[tuple[int, Objects]] = deque(maxlen=_TRUTH_KEPT)
        self._waiting: deque[tuple[int, wire.DetectionsMessage]] = deque()
        self._pairs: list[tuple[FrameDetections, FrameTruth]] = []
        self._first_ns: int | None = None
        self._unmatched = self._skipped = self._bad = 0
        self._map: float | None = None
        self._scored_at = 0
        self._next_ns = time.monotonic_ns()

    def on_message(self, port: str, msg: Message) -> None:
        try:
            if port == "truth":
                self._on_truth(msg)
            else:
                self._on_detections(msg)
        except (EdgefuseError, KeyError, ValueError) as e:
            self._bad += 1
            if self._bad == 1:
                self.log.warning("%s: %s message dropped: %s", self.name, port, e)

    def _on_truth(self, msg: Message) -> None:
        t_ns = msg.header.t_ns
        if t_ns is None:
            raise ValueError("truth without t_ns")
        f = TruthFrame.from_message(msg)
        self._truth.append(
            (t_ns, Objects(class_id=f.class_id, box3d=f.box3d, visibility=f.visibility))
        )
        self._match()

    def _on_detections(self, msg: Message) -> None:
        d = wire.from_message(msg)
        if tuple(d.class_names) != tuple(self.grid.class_names):
            raise ValueError(f"classes {d.class_names} are not the model's {self.grid.class_names}")
        if self._first_ns is None:
            self._first_ns = d.t_ns
        if d.t_ns - self._first_ns < self.params.skip_s * 1e9:
            self._skipped += 1
            return
        self._waiting.append((d.t_ns, d))
        if len(self._waiting) > _DETECTIONS_KEPT:
            self._waiting.popleft()
            self._unmatched += 1
        self._match()

    def _match(self) -> None:
        tol = round(self.params.tolerance_ms * 1e6)
        newest_truth = self._truth[-1][0] if self._truth else None
        while self._waiting:
            t_ns, d = self._waiting[0]
            best = min(self._truth, key=lambda tr: abs(tr[0] - t_ns), default=None)
            if best is not None and abs(best[0] - t_ns) <= tol:
                self._pairs.append(self.rules.score_pair(d.detections, best[1]))
            elif newest_truth is not None and newest_truth > t_ns + tol:
                self._unmatched += 1  # its truth frame has passed (or was never sent)
            else:
                return  # its truth frame may still come
            self._waiting.popleft()

    def current_map(self) -> float | None:
        """The mAP over every frame scored so far (None before the first)."""
        if len(self._pairs) != self._scored_at:
            result = center_distance_ap(self._pairs, class_names=self.grid.class_names)
            self._map = result.map
            self._scored_at = len(self._pairs)
        return self._map

    def counters(self) -> dict[str, Any]:
        now = time.monotonic_ns()
        if now >= self._next_ns:
            self._next_ns = now + round(self.params.every_s * 1e9)
            self.current_map()
        out: dict[str, Any] = {
            "frames": len(self._pairs),
            "unmatched": self._unmatched,
            "bad": self._bad,
        }
        if self._map is not None and math.isfinite(self._map):
            out["map"] = round(100 * self._map, 2)
        return out

    def teardown(self) -> None:
        m = self.current_map() if self._pairs else None
        self.log.info(
            "%s: live mAP %s over %d frames (%d unmatched, %d skipped)",
            self.name,
            "n/a" if m is None else f"{100 * m:.1f}",
            len(self._pairs),
            self._unmatched,
            self._skipped,
        )
