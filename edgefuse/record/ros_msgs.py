"""ROS message types the importer reads, and their conversion to edgefuse payloads.

Each converter takes a message object deserialized by ``rosbags`` (any object with the ROS
field names works: ROS 2 lower-case ``k``/``d`` and ROS 1 ``K``/``D`` alike) and returns our
encoding, arrays and meta, or raises :class:`Skip` naming why the message cannot be imported.
The conversions are listed in ``rosbag.py``'s module docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from edgefuse.calib.model import CameraIntrinsics, SensorCalibration, matrix4
from edgefuse.errors import require_extra

IMAGE: Final = "sensor_msgs/msg/Image"
COMPRESSED: Final = "sensor_msgs/msg/CompressedImage"
CLOUD: Final = "sensor_msgs/msg/PointCloud2"
CAMERA_INFO: Final = "sensor_msgs/msg/CameraInfo"
AUDIO: Final = "audio_common_msgs/msg/AudioData"
AUDIO_STAMPED: Final = "audio_common_msgs/msg/AudioDataStamped"
AUDIO_INFO: Final = "audio_common_msgs/msg/AudioInfo"
#: audio_common's messages (identical in ROS 1 and ROS 2), absent from the default typestores.
AUDIO_MSGS: Final = {
    AUDIO: "uint8[] data\n",
    AUDIO_INFO: "uint8 channels\nuint32 sample_rate\nstring sample_format\nuint32 bitrate\n"
    "string coding_format\n",
    AUDIO_STAMPED: "std_msgs/Header header\naudio_common_msgs/AudioData audio\n",
}
DEPTH_SCALE_M: Final = 0.001


class Skip(Exception):  # noqa: N818 (a control-flow signal, not an error to report as such)
    """Raised by a converter: the message is left out, ``reason`` says why (for the report)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def make_typestore(*, ros1: bool) -> Any:
    """The default typestore (ROS 1 Noetic or ROS 2 Humble) with audio_common registered."""
    require_extra("rosbags", "ros")
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS1_NOETIC if ros1 else Stores.ROS2_HUMBLE)
    types: dict[str, Any] = {}
    for name, text in AUDIO_MSGS.items():
        types.update(get_types_from_msg(text, name))
    store.register(types)
    return store


def stamp_ns(msg: Any) -> int:
    """``header.stamp`` of a message in int64 ns."""
    st = msg.header.stamp
    return int(st.sec) * 1_000_000_000 + int(st.nanosec)


# --- images ---------------------------------------------------------------------------------

_IMAGE_LAYOUT: Final = {  # ROS encoding -> (bytes per channel, channels)
    "rgb8": (1, 3),
    "bgr8": (1, 3),
    "8UC3": (1, 3),
    "rgba8": (1, 4),
    "bgra8": (1, 4),
    "8UC4": (1, 4),
    "mono8": (1, 1),
    "8UC1": (1, 1),
    "mono16": (2, 1),
    "16UC1": (2, 1),
    "32FC1": (4, 1),
}


def convert_image(msg: Any) -> tuple[str, np.ndarray, dict[str, Any]]:
    """A ``sensor_msgs/Image`` as ``(encoding, array, meta)`` in our encodings (module
    docstring); ``Skip`` for an unsupported encoding or a size that does not add up."""
    enc = str(msg.encoding)
    layout = _IMAGE_LAYOUT.get(enc)
    if layout is None:
        raise Skip(f"unsupported encoding {enc!r}")
    size, ch = layout
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.frombuffer(msg.data, np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    row = w * size * ch
    if step < row or data.size < step * h:
        raise Skip(f"bad image size ({w}x{h} {enc}, step {step}, {data.size} bytes)")
    rows = data[: step * h].reshape(h, step)[:, :row]
    meta: dict[str, Any] = {"ros_encoding": enc}
    if size == 1:
        img = np.ascontiguousarray(rows).reshape(h, w, ch) if ch > 1 else rows
        if enc == "rgb8":
            return "bgr8", np.ascontiguousarray(img[:, :, ::-1]), meta
        if ch == 4:
            bgr = img[:, :, 2::-1] if enc == "rgba8" else img[:, :, :3]
            return "bgr8", np.ascontiguousarray(bgr), meta
        if ch == 1:
            return "bgr8", np.repeat(np.asarray(rows)[:, :, None], 3, axis=2), meta
        return "bgr8", np.ascontiguousarray(img), meta
    order = ">" if msg.is_bigendian else "<"
    typed = np.ascontiguousarray(rows).view(order + ("u2" if size == 2 else "f4")).reshape(h, w)
    if enc == "mono16":
        return "mono16", typed.astype(np.uint16), meta
    meta["depth_scale_m"] = DEPTH_SCALE_M
    if enc == "16UC1":
        return "z16", typed.astype(np.uint16), meta
    mm = np.rint(typed.astype(np.float64) / DEPTH_SCALE_M)
    valid = np.isfinite(mm) & (mm > 0) & (mm <= 65535)
    return "z16", np.where(valid, mm, 0).astype(np.uint16), meta


_PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"


def convert_compressed(msg: Any) -> tuple[str, np.ndarray, dict[str, Any]]:
    """A ``sensor_msgs/CompressedImage`` decoded with OpenCV as ``(encoding, array, meta)``."""
    import cv2

    fmt = str(msg.format)
    low = fmt.lower()
    data = bytes(msg.data) if not isinstance(msg.data, np.ndarray) else msg.data.tobytes()
    source = low.partition(";")[0].strip() if ";" in low else ""
    meta: dict[str, Any] = {"ros_format": fmt}
    if "compresseddepth" in low:
        # compressed_depth_image_transport: a 12-byte config header (format, two quantization
        # floats), then a PNG of 16UC1 depth; 32FC1 is stored as quantized inverse depth.
        if source not in ("16uc1", "mono16"):
            raise Skip(f"unsupported encoding {fmt!r} (compressedDepth of {source or '?'})")
        start = data.find(_PNG_MAGIC, 0, 12 + len(_PNG_MAGIC))
        if start < 0:
            raise Skip(f"undecodable image ({fmt!r}: no PNG data)")
        data = data[start:]
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise Skip(f"undecodable image (format {fmt!r})")
    if img.dtype == np.uint8 and img.ndim == 2:
        return "bgr8", cv2.cvtColor(img, cv2.COLOR_GRAY2BGR), meta
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] in (3, 4):
        return "bgr8", img if img.shape[2] == 3 else cv2.cvtColor(img, cv2.COLOR_BGRA2BGR), meta
    if img.dtype == np.uint16 and img.ndim == 2:
        if source == "16uc1" or "compresseddepth" in low:
            meta["depth_scale_m"] = DEPTH_SCALE_M
            return "z16", img, meta
        return "mono16", img, meta
    raise Skip(f"unsupported encoding {fmt!r} (decodes to {img.dtype} {img.shape})")


# --- camera info, audio ---------------------------------------------------------------------


def _field(msg: Any, *names: str) -> Any:
    for n in names:  # ROS 2 lower case (k, d), ROS 1 upper case (K, D)
        if hasattr(msg, n):
            return getattr(msg, n)
    raise AttributeError(names[0])


def camera_calibration(msg: Any) -> SensorCalibration:
    """A ``sensor_msgs/CameraInfo`` as a sensor calibration (identity pose, no time offset);
    ``Skip`` when it holds no usable intrinsics (an uncalibrated camera has K = 0)."""
    K = np.asarray(_field(msg, "k", "K"), np.float64).reshape(3, 3)
    D = tuple(float(v) for v in _field(msg, "d", "D"))
    model = str(msg.distortion_model) or "none"
    if not D or (model == "none" and not any(D)):
        model, D = "none", ()
    try:
        intr = CameraIntrinsics(
            width=int(msg.width),
            height=int(msg.height),
            camera_matrix=tuple(tuple(float(v) for v in row) for row in K),  # type: ignore[arg-type]
            distortion_model=model,  # type: ignore[arg-type]
            distortion=D,
        )
    except (ValueError, KeyError) as exc:
        raise Skip(f"unusable camera_info ({model}: {exc})") from None
    return SensorCalibration(
        frame_id=str(msg.header.frame_id) or "camera_optical",
        T_base_link_sensor=matrix4(np.eye(4)),
        camera=intr,
    )


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """How an audio topic's bytes are laid out (from AudioInfo, or the defaults)."""

    rate_hz: int
    channels: int
    sample_format: str = "S16LE"
    coding_format: str = "wave"


#: Assumed for audio topics without an AudioInfo: what the simulated microphone publishes.
DEFAULT_AUDIO: Final = AudioFormat(16000, 1)


def audio_format(msg: Any) -> AudioFormat:
    """An ``audio_common_msgs/AudioInfo`` as an :class:`AudioFormat`."""
    return AudioFormat(
        int(msg.sample_rate), int(msg.channels), str(msg.sample_format), str(msg.coding_format)
    )


def convert_audio(data: Any, fmt: AudioFormat) -> np.ndarray:
    """Audio bytes as (n, channels) int16; ``Skip`` for compressed, non-16-bit or torn data."""
    if fmt.coding_format.lower() not in ("", "wave", "wav", "raw", "pcm"):
        raise Skip(f"unsupported encoding {fmt.coding_format!r} (only raw PCM is imported)")
    order = {"s16le": "<", "": "<", "s16be": ">"}.get(fmt.sample_format.lower())
    if order is None:
        raise Skip(f"unsupported encoding {fmt.sample_format!r} (only S16LE, S16BE)")
    if fmt.channels < 1 or fmt.rate_hz < 1:
        raise Skip(f"bad audio format ({fmt.channels} channels at {fmt.rate_hz} Hz)")
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if len(raw) % (2 * fmt.channels):
        raise Skip(f"audio chunk of {len(raw)} bytes is not whole {fmt.channels}-channel frames")
    return np.frombuffer(raw, order + "i2").astype(np.int16).reshape(-1, fmt.channels)
