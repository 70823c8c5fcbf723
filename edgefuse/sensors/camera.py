"""A camera driver on OpenCV: V4L2 devices, video files, RTSP/HTTP streams and GStreamer pipelines.

One capture thread per node grabs frames as soon as they arrive and stamps ``t_host_ns`` at the
grab, then retrieves (decodes) them into a 1-deep slot; the node loop copies the newest frame into
shared memory (:meth:`Node.loan`) and publishes it as ``bgr8`` on ``<name>/image``, like the
simulated camera. A slow consumer therefore never delays a grab: a live frame that was not taken
in time is replaced by the next one and counted as ``dropped``; a file waits for the consumer
instead, so every frame of a file is published.

``t_sensor_ns`` is the driver's own stamp where OpenCV exposes one (``CAP_PROP_POS_MSEC``): on
V4L2 it is the kernel's buffer timestamp (``v4l2_buffer.timestamp``, normally CLOCK_MONOTONIC,
taken by the driver when the frame was captured); in a file or an RTSP stream it is the frame's
presentation time. HTTP (MJPEG) streams and GStreamer pipelines carry no usable stamp (FFmpeg
numbers MJPEG-over-HTTP frames at a nominal 25 fps), so there ``t_sensor_ns`` falls back to
``t_host_ns`` at grab, and ``meta.t_sensor_source`` says which one a frame carries. A driver
whose stamps turn out to be zero switches to host stamps once, with one log line.

Unplug or network loss: the capture is released and reopened with exponential back-off, with one
log line per state change and the counters ``reconnects``, ``open_failures``, ``read_errors`` and
``connected``. A missing device at start is reported by name and retried the same way. A file that
becomes unreadable mid-run is reopened once it is readable again and resumes at the next frame.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import cv2
import numpy as np

from edgefuse.errors import ConfigError
from edgefuse.node import Node

log = logging.getLogger(__name__)

_MS_TO_NS = 1_000_000


class SourceKind(enum.Enum):
    """What a ``source`` names; it decides the backend, the stamps and what a failure means."""

    DEVICE = "device"
    FILE = "file"
    STREAM = "stream"  # rtsp://, http://, ... read by FFmpeg
    GSTREAMER = "gstreamer"


def classify_source(source: int | str) -> SourceKind:
    """The kind of ``source``: an int or ``/dev/video*`` is a device, ``scheme://`` a stream,
    text with ``!`` a GStreamer pipeline, anything else a video file."""
    if isinstance(source, int) or source.startswith("/dev/"):
        return SourceKind.DEVICE
    if "!" in source:
        return SourceKind.GSTREAMER
    if "://" in source:
        return SourceKind.STREAM
    return SourceKind.FILE


@dataclass(frozen=True, kw_only=True)
class CameraParams:
    """Parameters of :class:`CameraNode`."""

    #: Device index (``0``), device path (``/dev/video0``), video file, stream URL
    #: (``rtsp://...``, ``http://.../video.mjpg``) or GStreamer pipeline ending in ``appsink``.
    source: int | str = 0
    #: Requested size and rate (0: the driver's default); devices may pick the nearest mode.
    width: int = 0
    height: int = 0
    fps: float = 0.0
    #: Pixel format asked of a device: ``MJPG`` (compressed, high rates over USB) or ``YUYV``.
    fourcc: Literal["", "MJPG", "YUYV"] = ""
    frame_id: str = "camera_optical"
    #: Files only: ``native`` plays at the file's frame rate, ``max`` as fast as consumed.
    file_rate: Literal["native", "max"] = "native"
    #: Files only: start again at the end instead of stopping (stamps keep increasing).
    loop: bool = False
    #: Where ``t_sensor_ns`` comes from: ``auto`` (driver stamps where they are real, see the
    #: module doc), ``driver`` (always ``CAP_PROP_POS_MSEC``) or ``host`` (the grab time).
    timestamps: Literal["auto", "driver", "host"] = "auto"
    #: Longest wait between two reconnection attempts (the back-off doubles up to this).
    reconnect_max_s: float = 10.0
    #: Streams: give up opening / reading after this long (then reconnect).
    open_timeout_s: float = 5.0
    read_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.source, int) and self.source < 0:
            raise ValueError(f"source: a device index must be >= 0, got {self.source}")
        if isinstance(self.source, str) and not self.source.strip():
            raise ValueError("source: empty")
        if self.width < 0 or self.height < 0 or (self.width > 0) != (self.height > 0):
            raise ValueError(
                f"width and height must both be set (> 0) or both 0, got {self.width}x{self.height}"
            )
        if not 0 <= self.fps <= 1000:
            raise ValueError(f"fps must be in [0, 1000], got {self.fps}")
        if self.reconnect_max_s <= 0 or self.open_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("reconnect_max_s, open_timeout_s and read_timeout_s must be > 0")


@dataclass(slots=True)
class Frame:
    """One grabbed frame: pixels (bgr8), stamps and where the sensor stamp came from."""

    image: np.ndarray
    t_host_ns: int
    t_sensor_ns: int
    index: int
    t_sensor_source: str


class Capture:
    """One OpenCV capture with the grab/retrieve split: :meth:`grab` takes the frame off the
    driver and stamps it, :meth:`retrieve` decodes it. Grabbing several captures first and
    retrieving afterwards (:func:`grab_together`) grabs them as close together as possible."""

    def __init__(self, params: CameraParams) -> None:
        self.params = params
        self.kind = classify_source(params.source)
        self.name = _describe(params.source)
        self.cap: Any = None
        self.t_host_ns = 0
        self.pos_ms = 0.0

    def open(self) -> str:
        """Open the source; return a one-line description of what was negotiated. Raises
        ``OSError`` with a clear reason when it cannot be opened."""
        p = self.params
        src: int | str = p.source
        api = cv2.CAP_ANY
        extra: list[int] = []
        if self.kind is SourceKind.DEVICE:
            path = f"/dev/video{src}" if isinstance(src, int) else str(src)
            if os.name == "posix" and not os.path.exists(path):
                raise OSError(f"no such device {path}")
            api = cv2.CAP_V4L2 if os.name == "posix" else cv2.CAP_ANY
        elif self.kind is SourceKind.GSTREAMER:
            if not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
                raise OSError("this OpenCV build has no GStreamer backend")
            api = cv2.CAP_GSTREAMER
        else:
            if self.kind is SourceKind.FILE and not os.access(str(src), os.R_OK):
                raise OSError(f"cannot read {src}")
            api = cv2.CAP_FFMPEG
            extra = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                round(p.open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                round(p.read_timeout_s * 1000),
            ]
        cap = cv2.VideoCapture(src, api, extra) if extra else cv2.VideoCapture(src, api)
        if not cap.isOpened():
            cap.release()
            raise OSError("OpenCV cannot open it")
        if self.kind is SourceKind.DEVICE:
            # Order matters on V4L2: the pixel format first, then the size, then the rate.
            if p.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*p.fourcc))
            if p.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, p.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, p.height)
            if p.fps:
                cap.set(cv2.CAP_PROP_FPS, p.fps)
        self.cap = cap
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS)
        fcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        fcc_s = "".join(chr((fcc >> (8 * i)) & 0xFF) for i in range(4)) if fcc > 0 else "?"
        return f"{w}x{h} {fcc_s.strip()} @ {fps:g} fps via {cap.getBackendName()}"

    def grab(self) -> bool:
        """Take the next frame off the driver; stamp ``t_host_ns`` and read the driver's stamp."""
        ok = bool(self.cap.grab())
        self.t_host_ns = time.monotonic_ns()
        self.pos_ms = float(self.cap.get(cv2.CAP_PROP_POS_MSEC)) if ok else 0.0
        return ok

    def retrieve(self, out: np.ndarray | None = None) -> np.ndarray | None:
        """Decode the grabbed frame as bgr8 (into ``out`` when its shape fits), or None."""
        ok, img = self.cap.retrieve(out) if out is not None else self.cap.retrieve()
        if not ok or img is None or img.size == 0:
            return None
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
        if img.dtype != np.uint8 or img.shape[2] != 3:
            raise ValueError(f"{self.name}: frames of {img.dtype} {img.shape} are not bgr8")
        return np.asarray(img)

    def frame_count(self) -> int:
        """Frames in a file (0 when unknown)."""
        return max(0, int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))) if self.cap else 0

    def seek(self, index: int) -> None:
        """Position a file so that the next grab returns frame ``index``."""
        self.cap.set(cv2.CAP_PROP_POS_FRAMES, index)

    def release(self) -> None:
        """Close the source (safe to call twice)."""
        if self.cap is not None:
            with contextlib.suppress(cv2.error):
                self.cap.release()
            self.cap = None


def grab_together(captures: Sequence[Capture]) -> list[bool]:
    """Grab one frame from each capture back to back, before any decoding, so that their
    ``t_host_ns`` stamps (and, on triggered cameras, their exposures) are as close as possible;
    call :meth:`Capture.retrieve` on each afterwards."""
    return [c.grab() for c in captures]


def _describe(source: int | str) -> str:
    if isinstance(source, int):
        return f"camera {source} (/dev/video{source})"
    if classify_source(source) is SourceKind.GSTREAMER:
        return f"GStreamer pipeline {source[:60]!r}"
    return str(source)


class _Slot:
    """A 1-deep hand-over from the capture thread to the node loop, with a pool of buffers so
    that decoding does not allocate a new image per frame."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frame: Frame | None = None
        self.pool: list[np.ndarray] = []
        self.dropped = 0

    def buffer(self, shape: tuple[int, ...] | None) -> np.ndarray | None:
        with self.cond:
            while self.pool:
                buf = self.pool.pop()
                if shape is not None and buf.shape == shape:
                    return buf
        return None

    def recycle(self, img: np.ndarray) -> None:
        with self.cond:
            if len(self.pool) < 3:
                self.pool.append(img)

    def put(self, frame: Frame, *, wait: bool, stop: threading.Event) -> bool:
        """Hand ``frame`` over. ``wait``: block until the previous one was taken (files);
        otherwise replace it (live: the newest frame wins, the old one is counted as dropped).
        False if stopped while waiting."""
        with self.cond:
            while wait and self.frame is not None:
                if stop.is_set():
                    return False
                self.cond.wait(0.05)
            if self.frame is not None:
                self.dropped += 1
                if len(self.pool) < 3:
                    self.pool.append(self.frame.image)
            self.frame = frame
            self.cond.notify_all()
            return True

    def take(self, timeout_s: float) -> Frame | None:
        with self.cond:
            if self.frame is None:
                self.cond.wait(timeout_s)
            frame, self.frame = self.frame, None
            self.cond.notify_all()
            return frame


class CaptureThread(threading.Thread):
    """Opens, grabs, stamps, retrieves and reconnects; hands frames to a :class:`_Slot`."""

    def __init__(self, params: CameraParams, slot: _Slot, logger: logging.Logger) -> None:
        super().__init__(name="camera-capture", daemon=True)
        self.p = params
        self.slot = slot
        self.log = logger
        self.capture = Capture(params)
        self.stop_event = threading.Event()
        self.state = "starting"
        self.finished = False  # end of file reached (and not looping)
        self.frames = 0
        self.reconnects = 0
        self.open_failures = 0
        self.read_errors = 0
        self.loops = 0
        self.stamp_backwards = 0
        self.next_index = 0  # files: the next frame to read
        self._streamed = False  # has this source ever delivered a frame?
        self._use_driver_stamp = self._driver_stamps_wanted()
        self._loop_offset_ns = 0
        self._last_sensor_ns: int | None = None
        self._pace_anchor: tuple[int, int] | None = None  # (host ns, sensor ns) for native rate

    def _driver_stamps_wanted(self) -> bool:
        if self.p.timestamps != "auto":
            return self.p.timestamps == "driver"
        if self.capture.kind is SourceKind.STREAM:
            return str(self.p.source).lower().startswith(("rtsp://", "rtsps://"))
        return self.capture.kind in (SourceKind.DEVICE, SourceKind.FILE)

    def _set_state(self, state: str, detail: str) -> None:
        if state != self.state:
            level = logging.INFO if state in ("streaming", "finished") else logging.WARNING
            self.log.log(level, "%s: %s (%s)", self.capture.name, state, detail)
            self.state = state

    def run(self) -> None:
        backoff_s = 0.25
        while not self.stop_event.is_set():
            try:
                desc = self.capture.open()
                if self.capture.kind is SourceKind.FILE and self.next_index:
                    self.capture.seek(self.next_index)  # resume after a read error
            except (OSError, cv2.error) as exc:
                self.open_failures += 1
                state = "reconnecting" if self._streamed else "waiting"
                self._set_state(state, f"cannot open: {exc}; retrying with back-off")
                self.stop_event.wait(backoff_s)
                backoff_s = min(backoff_s * 2, self.p.reconnect_max_s)
                continue
            if self._streamed:
                self.reconnects += 1
            self._set_state("streaming", desc)
            self._pace_anchor = None
            reason = self._stream()
            self.capture.release()
            if reason == "stopped" or self.finished:
                break
            self._set_state("reconnecting", f"{reason}; retrying with back-off")
            backoff_s = 0.25
            self.stop_event.wait(backoff_s)
        self.capture.release()
        if not self.finished:
            self._set_state("stopped", "node stopping")

    def _stream(self) -> str:
        """Grab until failure, end of file or stop; return why it ended."""
        is_file = self.capture.kind is SourceKind.FILE
        total = self.capture.frame_count() if is_file else 0
        shape: tuple[int, ...] | None = None
        while not self.stop_event.is_set():
            if not self.capture.grab():
                if not is_file:
                    self.read_errors += 1
                    return "no frame from the source (unplugged or stream ended)"
                if total and self.next_index < total:
                    self.read_errors += 1
                    return f"read error at frame {self.next_index} of {total}"
                if not self.p.loop:
                    self.finished = True
                    self._set_state("finished", f"end of file after {self.next_index} frames")
                    return "eof"
                self._loop_offset_ns = self._next_loop_offset()
                self.loops += 1
                self.next_index = 0
                self.capture.seek(0)
                continue
            t_sensor_ns, source = self._sensor_stamp()
            if is_file and self.p.file_rate == "native":
                self._pace(t_sensor_ns)
            img = self.capture.retrieve(self.slot.buffer(shape))
            if img is None:
                self.read_errors += 1
                if is_file:
                    self.next_index += 1  # a corrupt frame: skip it
                    continue
                return "frame could not be decoded"
            shape = img.shape
            self._streamed = True
            frame = Frame(img, self.capture.t_host_ns, t_sensor_ns, self.next_index, source)
            if not self.slot.put(frame, wait=is_file, stop=self.stop_event):
                return "stopped"
            self.frames += 1
            self.next_index += 1
        return "stopped"

    def _sensor_stamp(self) -> tuple[int, str]:
        t_host = self.capture.t_host_ns
        if not self._use_driver_stamp:
            return t_host, "host"
        stamp = round(self.capture.pos_ms * _MS_TO_NS)
        if (
            stamp <= 0
            and self.capture.kind is SourceKind.DEVICE
            and self.frames > 0
            and self.p.timestamps == "auto"
        ):
            self.log.warning(
                "%s: no frame stamps from the driver; using host time", self.source_name
            )
            self._use_driver_stamp = False
            return t_host, "host"
        stamp += self._loop_offset_ns
        if self._last_sensor_ns is not None and stamp <= self._last_sensor_ns:
            self.stamp_backwards += 1  # reported, never corrected: that is the aligner's job
        self._last_sensor_ns = stamp
        return stamp, "driver"

    @property
    def source_name(self) -> str:
        """The source as named in log lines."""
        return self.capture.name

    def _next_loop_offset(self) -> int:
        # The next lap starts one frame period after the last frame, so stamps keep increasing.
        fps = self.capture.cap.get(cv2.CAP_PROP_FPS) if self.capture.cap else 0.0
        period_ns = round(1e9 / fps) if fps and fps > 0 else 33_333_333
        return (self._last_sensor_ns or 0) + period_ns

    def _pace(self, t_sensor_ns: int) -> None:
        """Files at native rate: wait until the frame's time relative to the first one."""
        now = time.monotonic_ns()
        if self._pace_anchor is None:
            self._pace_anchor = (now, t_sensor_ns)
            return
        host0, sensor0 = self._pace_anchor
        due = host0 + (t_sensor_ns - sensor0)
        if due > now:
            self.stop_event.wait((due - now) / 1e9)
            self.capture.t_host_ns = time.monotonic_ns()  # delivered now, not when read


class CameraNode(Node):
    """An OpenCV camera (device, file, stream), publishing bgr8 frames on ``<name>/image``."""

    Params = CameraParams
    outputs: ClassVar = {"image": "bgr8"}

    def setup(self) -> None:
        p: CameraParams = self.params
        kind = classify_source(p.source)
        if kind is SourceKind.FILE and not Path(str(p.source)).is_file():
            raise ConfigError(f"source: video file {p.source!r} not found")
        if kind is SourceKind.GSTREAMER and not cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
            raise ConfigError(
                "source: a GStreamer pipeline, but this OpenCV build has no GStreamer backend "
                "(opencv-python-headless from PyPI has none; use a distribution OpenCV)"
            )
        self.slot = _Slot()
        self.thread = CaptureThread(p, self.slot, self.log)
        self.published = 0
        self.thread.start()
        self.at(time.monotonic_ns(), self._pump)

    def _pump(self) -> None:
        # Wait briefly for a frame (so the loop still sends statistics and notices a stop),
        # publish it, and come back at the next turn of the loop.
        try:
            frame = self.slot.take(0.02)
            if frame is not None:
                self._publish(frame)
            elif self.thread.finished or not self.thread.is_alive():
                self.log.info("%s: %d frames published", self.thread.source_name, self.published)
                self.stop()
                return
        finally:
            if not self.runner.stopping:
                self.at(time.monotonic_ns(), self._pump)

    def _publish(self, frame: Frame) -> None:
        img = frame.image
        out = self.loan("image", img.shape, np.uint8)
        np.copyto(out, img)
        self.slot.recycle(img)
        self.publish(
            "image",
            [out],
            t_sensor_ns=frame.t_sensor_ns,
            t_host_ns=frame.t_host_ns,
            frame_id=self.params.frame_id,
            meta={"index": frame.index, "t_sensor_source": frame.t_sensor_source},
        )
        self.published += 1

    def teardown(self) -> None:
        thread = getattr(self, "thread", None)
        if thread is not None:
            thread.stop_event.set()
            with self.slot.cond:
                self.slot.cond.notify_all()
            thread.join(timeout=self.params.read_timeout_s + 1.0)

    def counters(self) -> dict[str, int | float]:
        t = getattr(self, "thread", None)
        if t is None:
            return {}
        return {
            "frames": t.frames,
            "dropped": self.slot.dropped,
            "connected": int(t.state == "streaming"),
            "reconnects": t.reconnects,
            "open_failures": t.open_failures,
            "read_errors": t.read_errors,
            "loops": t.loops,
            "stamp_backwards": t.stamp_backwards,
        }
