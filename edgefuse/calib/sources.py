"""Where calibration frames come from: a folder of images, a video file, a recorded topic
(an edgefuse session in MCAP), a live camera (device index, ``/dev/videoN``, RTSP/HTTP URL,
GStreamer pipeline) or the camera topic of a running edgefuse pipeline (``pipeline:TOPIC``,
subscribed over ZeroMQ like ``edgefuse echo``).

:func:`open_source` looks at the source text (and ``--topic``) and returns a
:class:`FrameSource`: an iterable of ``(name, BGR image)`` that is closed after use. Live
cameras are opened with the camera driver's own :class:`~edgefuse.sensors.camera.Capture`, so
a source that works in a pipeline works here; a capture thread keeps only the newest frame
(a slow board detector must not fall behind a live camera), while a video file is read frame
by frame. Every failure to open names the source and says what to try.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from edgefuse.calib.boards import IMAGE_EXTS, VIDEO_EXTS, CalibrationError, frames
from edgefuse.errors import EdgefuseError

SourceKind = Literal["folder", "video", "session", "live", "pipeline"]
#: Prefix of a running pipeline's topic as a source: ``pipeline:camera/image``.
PIPELINE_PREFIX = "pipeline:"
#: Envelope encodings that are camera pictures a board can be found in.
IMAGE_ENCODINGS = ("bgr8", "rgb8", "bgra8", "rgba8", "mono8", "mono16")
#: Seconds a live source may stay silent before it counts as ended.
LIVE_READ_TIMEOUT_S = 5.0


def source_kind(source: str, topic: str | None = None) -> SourceKind:
    """What ``source`` names: ``pipeline`` for ``pipeline:TOPIC``; ``session`` with a ``topic``
    or an ``.mcap`` file; ``live`` for a
    device index, ``/dev/...``, ``scheme://...`` or a GStreamer pipeline (text with ``!``);
    ``folder`` or ``video`` otherwise (globs such as ``calib/left*.jpg`` are folders)."""
    p = Path(source)
    if source.startswith(PIPELINE_PREFIX):
        return "pipeline"
    if topic is not None or p.suffix.lower() == ".mcap":
        return "session"
    if p.exists():
        return "folder" if p.is_dir() else "video"
    if source.isdigit() or source.startswith("/dev/") or "://" in source or "!" in source:
        return "live"
    return "video" if p.suffix.lower() in VIDEO_EXTS else "folder"


class FrameSource:
    """Frames ``(name, BGR image)`` of one source; iterate once, then :meth:`close`."""

    #: Where the frames come from, for messages (``camera/image of cal.mcap``, ...).
    description: str = ""
    kind: SourceKind = "folder"
    #: Frames arrive in real time and some are skipped when processing is slower.
    live: bool = False
    #: Frames taken off the source but never processed (live sources only).
    dropped: int = 0

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the source (safe to call twice)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileFrames(FrameSource):
    """A folder (or glob) of images or a video file, every ``every``-th frame."""

    def __init__(self, source: str, *, every: int = 1) -> None:
        self.source = source
        self.every = every
        self.kind = source_kind(source)
        self.description = source

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return frames(self.source, every=self.every)


def _image_topics(topics: dict[str, int], encodings: dict[str, str]) -> list[str]:
    return [t for t in topics if encodings.get(t) in IMAGE_ENCODINGS]


def _as_bgr(img: np.ndarray, encoding: str) -> np.ndarray:
    """A BGR uint8 copy of a recorded picture (copied: the message's bytes go with its chunk)."""
    if encoding == "mono16":
        # Scale the used range to 8 bits: IR and 12-bit sensors use a fraction of 16 bits.
        hi = max(1.0, float(np.percentile(img, 99.5)))
        img = np.clip(img.astype(np.float32) * (255.0 / hi), 0, 255).astype(np.uint8)
        encoding = "mono8"
    if encoding == "mono8":
        return cv2.cvtColor(np.ascontiguousarray(img).reshape(img.shape[:2]), cv2.COLOR_GRAY2BGR)
    code = {"rgb8": cv2.COLOR_RGB2BGR, "bgra8": cv2.COLOR_BGRA2BGR, "rgba8": cv2.COLOR_RGBA2BGR}
    if encoding in code:
        return cv2.cvtColor(np.ascontiguousarray(img), code[encoding])
    return np.array(img)


class SessionFrames(FrameSource):
    """The pictures of one topic of a recorded session (MCAP written by edgefuse), every
    ``every``-th message, named ``<stream>_<seq>``. ``topic=None`` picks the session's only
    image topic. Raises :class:`CalibrationError` naming the topics there when ``topic`` is
    missing or holds no pictures."""

    kind: SourceKind = "session"

    def __init__(self, path: str, topic: str | None = None, *, every: int = 1) -> None:
        from edgefuse.record import SessionError, SessionReader

        self.every = every
        try:
            self._reader = SessionReader(path)
        except SessionError as exc:
            raise CalibrationError(
                f"{exc}; a recorded topic needs a session file written by `edgefuse record` "
                "or `edgefuse sim generate`"
            ) from None
        try:
            topics = self._reader.topics()
            encodings = {
                ch.topic: ch.metadata.get("encoding", "?")
                for ch in self._reader.channels().values()
            }
            images = _image_topics(topics, encodings)

            def listing() -> str:
                return ", ".join(
                    f"{t} ({encodings.get(t, '?')}, {n} msgs)" for t, n in topics.items()
                )

            if topic is None:
                if len(images) != 1:
                    raise CalibrationError(
                        f"{path}: "
                        + (
                            f"several image topics ({', '.join(images)}): choose one with --topic"
                            if images
                            else f"no image topic (topics: {listing() or 'none'})"
                        )
                    )
                topic = images[0]
            if topic not in topics:
                raise CalibrationError(
                    f"{path}: no topic {topic!r} in this recording; its topics are: "
                    f"{listing() or 'none'}" + (f"; try --topic {images[0]}" if images else "")
                )
            if encodings.get(topic) not in IMAGE_ENCODINGS:
                raise CalibrationError(
                    f"{path}: topic {topic!r} holds {encodings.get(topic)} messages, not camera "
                    f"pictures ({', '.join(IMAGE_ENCODINGS)})"
                    + (
                        f"; image topics here: {', '.join(images)}"
                        if images
                        else "; this recording has no image topic"
                    )
                )
            if topics[topic] == 0:
                raise CalibrationError(f"{path}: topic {topic!r} has no messages")
        except BaseException:
            self._reader.close()
            raise
        self.topic = topic
        self.encoding = encodings[topic]
        self.description = f"topic {topic} of {path}"

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        from edgefuse.record import SessionError

        stream = self.topic.rpartition("/")[2]
        try:
            for k, msg in enumerate(self._reader.messages([self.topic])):
                if k % self.every:
                    continue
                if not msg.arrays or msg.arrays[0].ndim not in (2, 3):
                    continue  # not a picture (a malformed message): skip, as a node would
                yield f"{stream}_{msg.header.seq:06d}", _as_bgr(msg.arrays[0], self.encoding)
        except SessionError as exc:
            raise CalibrationError(f"{self.description}: {exc}") from None

    def close(self) -> None:
        self._reader.close()


def _try_hint(source: str) -> str:
    if source.isdigit() or source.startswith("/dev/"):
        return (
            "list the cameras with `ls /dev/video*` or `v4l2-ctl --list-devices`, try another "
            "index, check that no other program holds the camera and that you may read it "
            "(group `video`)"
        )
    if "!" in source:
        return "check the pipeline with `gst-launch-1.0`; it must end in `appsink`"
    return (
        "check the URL (host, port, path, credentials) with `ffplay URL` or a browser, and that "
        "the camera is on the network"
    )


class CameraFrames(FrameSource):
    """A live camera through the camera driver's :class:`~edgefuse.sensors.camera.Capture`.

    Devices, streams and pipelines are read by a thread that keeps only the newest frame (the
    consumer gets the latest picture, ``dropped`` counts the rest); the source ends when no
    frame came for ``read_timeout_s``. A video file given here is read frame by frame."""

    kind: SourceKind = "live"

    def __init__(
        self,
        source: str,
        *,
        open_timeout_s: float = 5.0,
        read_timeout_s: float = LIVE_READ_TIMEOUT_S,
    ) -> None:
        from edgefuse.sensors.camera import CameraParams, Capture, classify_source
        from edgefuse.sensors.camera import SourceKind as CameraKind

        src: int | str = int(source) if source.isdigit() else source
        self.read_timeout_s = read_timeout_s
        try:
            params = CameraParams(
                source=src, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s
            )
        except ValueError as exc:
            raise CalibrationError(f"camera source {source!r}: {exc}") from None
        self._cap = Capture(params)
        self.live = classify_source(src) is not CameraKind.FILE
        try:
            negotiated = self._cap.open()
        except (OSError, cv2.error) as exc:
            self._cap.release()
            raise CalibrationError(
                f"cannot open the camera {self._cap.name}: {exc}; {_try_hint(source)}"
            ) from None
        self.description = f"{self._cap.name} ({negotiated})"
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._latest: tuple[str, np.ndarray] | None = None
        self._ended = False
        self._thread: threading.Thread | None = None
        self.frames_read = 0

    def _next_frame(self) -> np.ndarray | None:
        if not self._cap.grab():
            return None
        return self._cap.retrieve()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                img = self._next_frame()
                if img is None:
                    break
                with self._cond:
                    if self._latest is not None:
                        self.dropped += 1
                    self._latest = (f"frame_{self.frames_read:06d}", img)
                    self.frames_read += 1
                    self._cond.notify_all()
        except (cv2.error, ValueError):
            pass  # a broken stream ends the source like a disconnect
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        if not self.live:
            while (img := self._next_frame()) is not None:
                yield f"frame_{self.frames_read:06d}", img
                self.frames_read += 1
            return
        self._thread = threading.Thread(target=self._run, name="calib-capture", daemon=True)
        self._thread.start()
        while True:
            with self._cond:
                deadline = time.monotonic() + self.read_timeout_s
                while self._latest is None and not self._ended:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return  # silent too long: the camera is gone
                    self._cond.wait(left)
                if self._latest is None:
                    return
                item, self._latest = self._latest, None
            yield item

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # Release only once the thread is out of grab(): OpenCV must not free the capture
            # under a reading thread. A grab returns within the read timeout.
            self._thread.join(self.read_timeout_s + 1.0)
            if self._thread.is_alive():
                return
        with contextlib.suppress(cv2.error):
            self._cap.release()


class PipelineFrames(FrameSource):
    """The newest pictures of a running pipeline's topic (``pipeline:camera/image``), taken
    as they arrive (older queued frames are skipped and counted in ``dropped``); the source
    ends when nothing came for ``read_timeout_s``."""

    kind: SourceKind = "pipeline"
    live = True

    def __init__(self, topic: str, *, read_timeout_s: float = LIVE_READ_TIMEOUT_S) -> None:
        from edgefuse.introspect import subscribe

        self.topic = topic.strip("/")
        self.read_timeout_s = read_timeout_s
        try:
            self._sub = subscribe(self.topic)
        except EdgefuseError as exc:
            raise CalibrationError(
                f"{exc}; start the pipeline first (`edgefuse run PIPELINE.yaml`) or read the "
                "camera directly (0, /dev/video0, a URL)"
            ) from None
        self.description = f"topic {self.topic} of the running pipeline"

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        while True:
            msg = self._sub.recv(round(self.read_timeout_s * 1000))
            if msg is None:
                return
            while (newer := self._sub.recv(0)) is not None:
                msg = newer
                self.dropped += 1
            enc = msg.header.encoding
            if enc not in IMAGE_ENCODINGS or not msg.arrays:
                raise CalibrationError(
                    f"topic {self.topic} carries {enc} messages, not camera pictures "
                    f"({', '.join(IMAGE_ENCODINGS)}); give the camera's image topic"
                )
            yield f"{msg.header.stream}_{msg.header.seq:06d}", _as_bgr(msg.arrays[0], enc)

    def close(self) -> None:
        self._sub.close()


def open_source(
    source: str, *, topic: str | None = None, every: int = 1, live: bool = False
) -> FrameSource:
    """The :class:`FrameSource` for ``source`` (see :func:`source_kind`); with ``live`` a video
    file is also read through the camera driver (for a guided run from a recorded video).
    Raises :class:`CalibrationError` naming the source and what to try when it cannot be
    opened."""
    if every < 1:
        raise CalibrationError(f"--every must be >= 1, got {every}")
    kind = source_kind(source, topic)
    if kind == "pipeline":
        return PipelineFrames(source[len(PIPELINE_PREFIX) :])
    if kind == "session":
        return SessionFrames(source, topic, every=every)
    if kind == "live" or (live and kind == "video"):
        if kind == "video" and not Path(source).exists():
            raise CalibrationError(f"{source}: no such video file")
        return CameraFrames(source)
    p = Path(source)
    if kind == "video" and p.exists() and p.suffix.lower() not in VIDEO_EXTS:
        if p.suffix.lower() in IMAGE_EXTS:
            raise CalibrationError(
                f"{source}: one image is not enough; give the folder that holds the views, or "
                "a glob such as 'calib/*.png'"
            )
        raise CalibrationError(
            f"{source}: not a source of frames; give a folder of images, a video "
            f"({', '.join(VIDEO_EXTS)}), a session (.mcap, with --topic), or a live camera "
            "(0, /dev/video0, rtsp://..., http://..., a GStreamer pipeline)"
        )
    return FileFrames(source, every=every)
