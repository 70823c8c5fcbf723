"""Foxglove well-known schemas beside the envelopes: Foxglove, Lichtblick or Rerun open a session.

The recorder writes every message losslessly as an envelope; with ``foxglove: true`` it also
writes, on separate channels named ``foxglove/<topic>...``, what viewers understand: JSON
messages (``message_encoding = "json"``) with the official Foxglove JSON schemas
(``schema_encoding = "jsonschema"``, copied unchanged from the ``@foxglove/schemas`` 2.1.0
package into ``foxglove_schemas/``), binary fields base64 as Foxglove's JSON convention says.
No protobuf is needed.

- ``bgr8``/``rgb8``/``mono8``/``mono16``/``z16`` images -> ``foxglove.RawImage`` on
  ``foxglove/<topic>``, plus ``foxglove.CameraCalibration`` on ``foxglove/<sensor>/calibration``
  (from the rig calibration, matched by ``frame_id``) at most once a second per sensor;
- lidar sweeps (``xyzit_f32``, an (N, >=3) float32 array) -> ``foxglove.PointCloud``;
- ``s16le`` audio -> ``foxglove.RawAudio`` (``pcm-s16``);
- ``detections`` (``detect/objects``) and ``sim_truth`` (``sim/truth``) -> ``foxglove.SceneUpdate``
  (3D boxes in ``base_link``) on ``foxglove/<topic>/scene`` and ``foxglove.ImageAnnotations``
  (2D boxes in camera pixels) on ``foxglove/<topic>/annotations``.

Timestamps are UTC: a message's host time (``t_ns`` when known, else ``t_host_ns``) plus the
session's wall-clock offset. Anything else is left to the envelopes.
"""

from __future__ import annotations

import base64
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import numpy as np

from edgefuse.calib.model import RigCalibration, SensorCalibration
from edgefuse.envelope import Message

#: Prefix of every Foxglove channel's topic.
PREFIX: Final = "foxglove/"
MESSAGE_ENCODING: Final = "json"
SCHEMA_ENCODING: Final = "jsonschema"
SCHEMA_NAMES: Final = (
    "foxglove.RawImage",
    "foxglove.PointCloud",
    "foxglove.RawAudio",
    "foxglove.CameraCalibration",
    "foxglove.SceneUpdate",
    "foxglove.ImageAnnotations",
)
#: Envelope image encodings -> Foxglove RawImage encodings (z16: millimetres, 16-bit LE).
IMAGE_ENCODINGS: Final = {
    "bgr8": "bgr8",
    "rgb8": "rgb8",
    "mono8": "mono8",
    "mono16": "mono16",
    "z16": "16UC1",
}
#: Foxglove PackedElementField numeric types by numpy dtype.
_NUMERIC = {"uint8": 1, "int8": 2, "uint16": 3, "int16": 4, "uint32": 5, "int32": 6}
_FLOAT32, _FLOAT64 = 7, 8
#: Calibration messages per sensor are repeated this often (ns), so any seek finds one.
CALIBRATION_PERIOD_NS: Final = 1_000_000_000
#: Distortion models in the rig calibration -> Foxglove's names.
_DISTORTION = {
    "plumb_bob": "plumb_bob",
    "rational_polynomial": "rational_polynomial",
    "equidistant": "kannala_brandt",
    "none": "plumb_bob",
}
_PALETTE = (
    (0.95, 0.26, 0.21),
    (0.13, 0.59, 0.95),
    (0.30, 0.69, 0.31),
    (1.00, 0.76, 0.03),
    (0.61, 0.15, 0.69),
    (0.00, 0.74, 0.83),
)


@functools.cache
def schema(name: str) -> bytes:
    """The official JSON schema of ``name`` (``foxglove.RawImage``, ...) as stored bytes."""
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no Foxglove schema {name!r}; have {', '.join(SCHEMA_NAMES)}")
    short = name.removeprefix("foxglove.")
    return (resources.files("edgefuse.record") / "foxglove_schemas" / f"{short}.json").read_bytes()


@dataclass(frozen=True, slots=True)
class FoxgloveMessage:
    """One message for a Foxglove channel: topic, schema name and JSON bytes."""

    topic: str
    schema: str
    data: bytes


def _time(t_ns: int) -> dict[str, int]:
    t = max(0, int(t_ns))
    return {"sec": t // 1_000_000_000, "nsec": t % 1_000_000_000}


def _json(obj: Mapping[str, Any], data: bytes | memoryview | None = None) -> bytes:
    """Compact JSON of ``obj``, with ``data`` spliced in as a base64 string field: base64 holds
    no character JSON escapes, so the (large) string is not scanned again by the encoder."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    if data is None:
        return text
    b64 = base64.b64encode(data)
    sep = b"," if len(obj) else b""
    return b"".join([text[:-1], sep, b'"data":"', b64, b'"}'])


def _color(i: int, alpha: float = 1.0) -> dict[str, float]:
    r, g, b = _PALETTE[i % len(_PALETTE)]
    return {"r": r, "g": g, "b": b, "a": alpha}


def _pose(x: float, y: float, z: float, yaw: float = 0.0) -> dict[str, Any]:
    return {
        "position": {"x": x, "y": y, "z": z},
        "orientation": {"x": 0.0, "y": 0.0, "z": math.sin(yaw / 2), "w": math.cos(yaw / 2)},
    }


def camera_calibration(cal: SensorCalibration, t_ns: int) -> bytes | None:
    """``foxglove.CameraCalibration`` JSON for a sensor with camera intrinsics (else None)."""
    cam = cal.camera
    if cam is None:
        return None
    K = [float(v) for v in cam.K.ravel()]
    P = [K[0], K[1], K[2], 0.0, K[3], K[4], K[5], 0.0, K[6], K[7], K[8], 0.0]
    obj = {
        "timestamp": _time(t_ns),
        "frame_id": cal.frame_id,
        "width": cam.width,
        "height": cam.height,
        "distortion_model": _DISTORTION[cam.distortion_model],
        "D": [float(v) for v in cam.distortion] or [0.0] * 5,
        "K": K,
        "R": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "P": P,
    }
    return _json(obj)


def raw_image(msg: Message, t_ns: int) -> bytes | None:
    """``foxglove.RawImage`` JSON for an image envelope of a known encoding (else None)."""
    fox = IMAGE_ENCODINGS.get(msg.header.encoding)
    if fox is None or not msg.arrays:
        return None
    img = msg.arrays[0]
    if img.ndim not in (2, 3) or img.size == 0:
        return None
    h, w = int(img.shape[0]), int(img.shape[1])
    data = np.ascontiguousarray(img, dtype=img.dtype.newbyteorder("<"))
    obj = {
        "timestamp": _time(t_ns),
        "frame_id": msg.header.frame_id,
        "width": w,
        "height": h,
        "encoding": fox,
        "step": int(data.nbytes // h),
    }
    return _json(obj, data.data.cast("B"))


def point_cloud(msg: Message, t_ns: int) -> bytes | None:
    """``foxglove.PointCloud`` JSON for an (N, >=3) point array (x, y, z first), else None."""
    if not msg.arrays:
        return None
    pts = msg.arrays[0]
    if pts.ndim != 2 or pts.shape[1] < 3 or pts.dtype.kind not in "fiu":
        return None
    pts = np.ascontiguousarray(pts, dtype=pts.dtype.newbyteorder("<"))
    names = msg.header.meta.get("fields")
    if not (isinstance(names, list) and len(names) == pts.shape[1]):
        names = ["x", "y", "z", *(f"f{i}" for i in range(3, pts.shape[1]))]
    if pts.dtype.kind == "f":
        kind = _FLOAT32 if pts.dtype.itemsize == 4 else _FLOAT64
    else:
        kind = _NUMERIC.get(pts.dtype.name.lower().lstrip("<>"), 0)
    if kind == 0:
        return None
    size = pts.dtype.itemsize
    obj = {
        "timestamp": _time(t_ns),
        "frame_id": msg.header.frame_id,
        "pose": _pose(0.0, 0.0, 0.0),
        "point_stride": size * pts.shape[1],
        "fields": [{"name": str(n), "offset": i * size, "type": kind} for i, n in enumerate(names)],
    }
    return _json(obj, pts.data.cast("B"))


def raw_audio(msg: Message, t_ns: int) -> bytes | None:
    """``foxglove.RawAudio`` JSON (``pcm-s16``) for an ``s16le`` chunk; the rate comes from
    ``meta.rate_hz`` (None without it)."""
    rate = msg.header.meta.get("rate_hz")
    if not msg.arrays or not isinstance(rate, (int, float)) or rate <= 0:
        return None
    pcm = msg.arrays[0]
    if pcm.dtype.kind != "i" or pcm.dtype.itemsize != 2 or pcm.ndim not in (1, 2):
        return None
    channels = 1 if pcm.ndim == 1 else int(pcm.shape[1])
    data = np.ascontiguousarray(pcm, dtype="<i2")
    obj = {
        "timestamp": _time(t_ns),
        "format": "pcm-s16",
        "sample_rate": int(rate),
        "number_of_channels": channels,
    }
    return _json(obj, data.data.cast("B"))


@dataclass(frozen=True, slots=True)
class Boxes:
    """Boxes to draw: labels, 3D boxes in ``base_link`` (N, 7) and 2D boxes in pixels (N, 4)."""

    labels: list[str]
    class_ids: list[int]
    box3d: np.ndarray
    box2d: np.ndarray


def boxes_of(msg: Message) -> Boxes | None:
    """The boxes of a ``detections`` or ``sim_truth`` message (None for other encodings).
    Raises ``EnvelopeError`` (detections) or ``ValueError`` when the message is malformed."""
    enc = msg.header.encoding
    if enc == "detections":
        from edgefuse.runtime.detections import from_message

        d = from_message(msg)
        ids = [int(c) for c in d.detections.class_id]
        labels = [
            f"{d.class_names[c]} {float(s):.2f}"
            for c, s in zip(ids, d.detections.score, strict=True)
        ]
        return Boxes(labels, ids, np.asarray(d.detections.box3d), np.asarray(d.detections.box2d))
    if enc == "sim_truth":
        from edgefuse.sim.truth import CLASS_NAMES, TruthFrame

        t = TruthFrame.from_message(msg)
        ids = [int(c) for c in t.class_id]
        labels = [
            f"{CLASS_NAMES[c] if 0 <= c < len(CLASS_NAMES) else c} #{int(o)}"
            for c, o in zip(ids, t.object_id, strict=True)
        ]
        return Boxes(labels, ids, np.asarray(t.box3d), np.asarray(t.box2d))
    return None


def scene_update(boxes: Boxes, t_ns: int, *, entity_id: str) -> bytes:
    """``foxglove.SceneUpdate`` JSON: one entity (replacing the previous one of ``entity_id``)
    with a cube and a label per 3D box, in ``base_link``."""
    cubes, texts = [], []
    for i, (label, cid) in enumerate(zip(boxes.labels, boxes.class_ids, strict=True)):
        x, y, z, length, width, height, yaw = (float(v) for v in boxes.box3d[i][:7])
        if not all(math.isfinite(v) for v in (x, y, z, length, width, height, yaw)):
            continue
        cubes.append(
            {
                "pose": _pose(x, y, z, yaw),
                "size": {"x": length, "y": width, "z": height},
                "color": _color(cid, 0.4),
            }
        )
        texts.append(
            {
                "pose": _pose(x, y, z + height / 2 + 0.3),
                "billboard": True,
                "font_size": 14.0,
                "scale_invariant": True,
                "color": _color(cid),
                "text": label,
            }
        )
    entity = {
        "timestamp": _time(t_ns),
        "frame_id": "base_link",
        "id": entity_id,
        "lifetime": {"sec": 0, "nsec": 0},
        "frame_locked": False,
        "metadata": [],
        "arrows": [],
        "cubes": cubes,
        "spheres": [],
        "cylinders": [],
        "lines": [],
        "triangles": [],
        "texts": texts,
        "models": [],
    }
    return _json({"deletions": [], "entities": [entity]})


def image_annotations(boxes: Boxes, t_ns: int) -> bytes:
    """``foxglove.ImageAnnotations`` JSON: a closed outline and a label per 2D box (boxes
    outside the image, NaN, are left out)."""
    ts = _time(t_ns)
    points, texts = [], []
    for i, (label, cid) in enumerate(zip(boxes.labels, boxes.class_ids, strict=True)):
        x0, y0, x1, y1 = (float(v) for v in boxes.box2d[i][:4])
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            continue
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        points.append(
            {
                "timestamp": ts,
                "type": 2,  # LINE_LOOP
                "points": [{"x": x, "y": y} for x, y in corners],
                "outline_color": _color(cid),
                "outline_colors": [],
                "fill_color": _color(cid, 0.0),
                "thickness": 2.0,
            }
        )
        texts.append(
            {
                "timestamp": ts,
                "position": {"x": x0, "y": max(0.0, y0 - 4.0)},
                "text": label,
                "font_size": 12.0,
                "text_color": {"r": 1.0, "g": 1.0, "b": 1.0, "a": 1.0},
                "background_color": _color(cid, 0.7),
            }
        )
    return _json({"circles": [], "points": points, "texts": texts})


class FoxgloveConverter:
    """Turns envelopes into Foxglove messages (see the module docstring).

    ``wall_offset_ns`` is added to host times to make UTC timestamps; ``rig`` gives the camera
    calibrations. Conversion errors propagate: the caller counts them per topic.
    """

    def __init__(self, *, wall_offset_ns: int, rig: RigCalibration | None = None) -> None:
        self.wall_offset_ns = wall_offset_ns
        self._cameras: dict[str, tuple[str, SensorCalibration]] = {}
        if rig is not None:
            for name, cal in rig.sensors.items():
                if cal.camera is not None:
                    self._cameras[cal.frame_id] = (name, cal)
        self._last_calibration: dict[str, int] = {}
        self._image_kinds: dict[str, Callable[[Message, int], bytes | None]] = {
            "xyzit_f32": point_cloud,
            "s16le": raw_audio,
            **dict.fromkeys(IMAGE_ENCODINGS, raw_image),
        }

    def convert(self, msg: Message) -> list[FoxgloveMessage]:
        """The Foxglove messages for one envelope (often none)."""
        h = msg.header
        t_host = h.t_ns if h.t_ns is not None else h.t_host_ns
        t_utc = t_host + self.wall_offset_ns
        out: list[FoxgloveMessage] = []
        fn = self._image_kinds.get(h.encoding)
        if fn is not None:
            data = fn(msg, t_utc)
            if data is not None:
                out.append(FoxgloveMessage(PREFIX + msg.topic, _SCHEMA_OF[fn], data))
            if fn is raw_image:
                out.extend(self._calibration(h.frame_id, t_utc, t_host))
            return out
        boxes = boxes_of(msg)
        if boxes is not None:
            base = PREFIX + msg.topic
            scene = scene_update(boxes, t_utc, entity_id=msg.topic)
            out.append(FoxgloveMessage(f"{base}/scene", "foxglove.SceneUpdate", scene))
            anns = image_annotations(boxes, t_utc)
            out.append(FoxgloveMessage(f"{base}/annotations", "foxglove.ImageAnnotations", anns))
        return out

    def _calibration(self, frame_id: str, t_utc: int, t_host: int) -> Sequence[FoxgloveMessage]:
        known = self._cameras.get(frame_id)
        if known is None:
            return ()
        last = self._last_calibration.get(frame_id)
        if last is not None and 0 <= t_host - last < CALIBRATION_PERIOD_NS:
            return ()
        self._last_calibration[frame_id] = t_host
        data = camera_calibration(known[1], t_utc)
        if data is None:
            return ()
        topic = f"{PREFIX}{known[0]}/calibration"
        return (FoxgloveMessage(topic, "foxglove.CameraCalibration", data),)

    def reset(self) -> None:
        """Forget when calibrations were last written (a new split file repeats them)."""
        self._last_calibration.clear()


_SCHEMA_OF: dict[Callable[[Message, int], bytes | None], str] = {
    raw_image: "foxglove.RawImage",
    point_cloud: "foxglove.PointCloud",
    raw_audio: "foxglove.RawAudio",
}
