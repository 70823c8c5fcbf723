"""The ``detect/objects`` wire format: one message per aligned set, the objects found in it.

Arrays (in this order, N objects): ``class_id`` int32 (N,), ``score`` float32 (N,), ``box3d``
float32 (N, 7) centre x, y, z, length, width, height, yaw in ``base_link``, ``box2d`` float32
(N, 4) x0, y0, x1, y1 in camera pixels (NaN where the box is not in the image). The header's
``t_ns`` is the set's, its ``t_host_ns`` the host arrival of the set's reference frame (the
capture end of the latency account), ``frame_id`` ``base_link``. ``meta``: ``class_names``,
``modalities`` (each model modality -> present in the set), ``set_seq``, ``latency_ms``
(``preprocess``, ``network``, ``postprocess``, ``queue`` and ``capture_to_publish``),
``backend`` and ``model_sha256``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefuse.envelope import Message
from edgefuse.errors import EnvelopeError
from edgefuse.runtime.postprocess import Detections

ENCODING = "detections"
VERSION = 1


@dataclass(frozen=True, kw_only=True)
class DetectionsMessage:
    """A decoded ``detect/objects`` message."""

    t_ns: int
    t_host_ns: int
    detections: Detections
    class_names: tuple[str, ...]
    modalities: dict[str, bool] = field(default_factory=dict)
    set_seq: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    model_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``edgefuse echo detect/objects --json``): one object per detection."""
        d = self.detections
        objects = []
        for i in range(len(d)):
            box2d = [float(v) for v in d.box2d[i]]
            objects.append(
                {
                    "class": self.class_names[int(d.class_id[i])],
                    "class_id": int(d.class_id[i]),
                    "score": round(float(d.score[i]), 4),
                    "box3d": [round(float(v), 4) for v in d.box3d[i]],
                    "box2d": None if any(math.isnan(v) for v in box2d) else box2d,
                }
            )
        return {
            "t_ns": self.t_ns,
            "set_seq": self.set_seq,
            "modalities": self.modalities,
            "latency_ms": self.latency_ms,
            "objects": objects,
        }


def to_payload(
    dets: Detections,
    *,
    class_names: Sequence[str],
    modalities: Mapping[str, bool],
    set_seq: int,
    latency_ms: Mapping[str, float],
    backend: str,
    model_sha256: str,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Arrays and ``meta`` of a ``detect/objects`` message."""
    arrays = [
        np.ascontiguousarray(dets.class_id, np.int32),
        np.ascontiguousarray(dets.score, np.float32),
        np.ascontiguousarray(dets.box3d, np.float32).reshape(-1, 7),
        np.ascontiguousarray(dets.box2d, np.float32).reshape(-1, 4),
    ]
    meta = {
        "detections_version": VERSION,
        "class_names": list(class_names),
        "modalities": dict(modalities),
        "set_seq": int(set_seq),
        "latency_ms": {k: round(float(v), 4) for k, v in latency_ms.items()},
        "backend": backend,
        "model_sha256": model_sha256,
    }
    return arrays, meta


def from_message(msg: Message) -> DetectionsMessage:
    """Decode a ``detect/objects`` message; ``EnvelopeError`` says what is wrong with it."""
    h = msg.header
    if h.encoding != ENCODING:
        raise EnvelopeError("not_detections", f"expected {ENCODING!r}, got {h.encoding!r}")
    meta = h.meta
    if meta.get("detections_version") != VERSION:
        raise EnvelopeError(
            "unknown_version", f"detections version {meta.get('detections_version')!r}"
        )
    if len(msg.arrays) != 4:
        raise EnvelopeError("bad_detections", f"4 arrays expected, got {len(msg.arrays)}")
    cid, score, box3d, box2d = msg.arrays
    n = len(cid)
    if score.shape != (n,) or box3d.shape != (n, 7) or box2d.shape != (n, 4):
        raise EnvelopeError(
            "bad_detections",
            f"shapes {cid.shape} {score.shape} {box3d.shape} {box2d.shape} do not agree",
        )
    names = tuple(str(c) for c in meta.get("class_names", ()))
    if n and (int(cid.min()) < 0 or int(cid.max()) >= len(names)):
        raise EnvelopeError("bad_detections", f"class ids outside the {len(names)} class names")
    return DetectionsMessage(
        t_ns=int(h.t_ns if h.t_ns is not None else h.t_sensor_ns),
        t_host_ns=int(h.t_host_ns),
        detections=Detections(cid.astype(np.int64), score, box3d, box2d),
        class_names=names,
        modalities={str(k): bool(v) for k, v in meta.get("modalities", {}).items()},
        set_seq=int(meta.get("set_seq", 0)),
        latency_ms={str(k): float(v) for k, v in meta.get("latency_ms", {}).items()},
        backend=str(meta.get("backend", "")),
        model_sha256=str(meta.get("model_sha256", "")),
    )
