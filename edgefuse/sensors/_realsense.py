"""Intel RealSense depth through pyrealsense2 (extra ``depth``), live or from a recording.

pyrealsense2 is imported lazily (:func:`~edgefuse.errors.require_extra`), so the rest of
edgefuse imports without it. One reader thread owns the librealsense pipeline: it waits for
framesets, stamps ``t_host_ns`` the moment a frameset is handed over, and passes frames to the
node through a small queue (the node's loop, not this thread, publishes). A missing device is
looked for again every ``retry_s``; a device that stops delivering for ``frame_timeout_s`` is
closed and looked for again, so unplugging and replugging needs no restart.

``t_sensor_ns`` is the device's own stamp: the ``sensor_timestamp`` metadata (µs, mid
exposure) where the firmware provides it, else ``frame_timestamp`` (µs, start of transfer),
else ``frame.get_timestamp()`` (ms, in the domain it reports). Which one was used travels in
``meta.t_sensor_source`` so that the aligner's clock model knows what it is fitting. Depth stays
raw z16; the device's depth scale (metres per unit, read from the device) travels in
``meta.depth_scale_m``, as the simulated depth camera does.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgefuse.errors import ConfigError, EdgefuseError, require_extra


def import_rs() -> Any:
    """The ``pyrealsense2`` module, or :class:`~edgefuse.errors.MissingExtraError` naming the
    ``depth`` extra."""
    return require_extra("pyrealsense2", "depth")


class NoDeviceError(EdgefuseError):
    """No RealSense device (with the wanted serial) is attached right now."""


@dataclass(slots=True)
class DepthFrame:
    """One depth image as it left the sensor, with its stamps and what is needed to use it."""

    image: np.ndarray
    t_sensor_ns: int
    t_host_ns: int
    depth_scale_m: float
    meta: dict[str, Any] = field(default_factory=dict)


def list_devices() -> list[dict[str, str]]:
    """The attached RealSense devices: name, serial, firmware, product line, USB type.

    An empty list when none is attached; raises ``MissingExtraError`` without pyrealsense2.
    """
    rs = import_rs()
    out: list[dict[str, str]] = []
    for dev in rs.context().query_devices():

        def info(key: Any, dev: Any = dev) -> str:
            return str(dev.get_info(key)) if dev.supports(key) else ""

        out.append(
            {
                "name": info(rs.camera_info.name),
                "serial": info(rs.camera_info.serial_number),
                "firmware": info(rs.camera_info.firmware_version),
                "product_line": info(rs.camera_info.product_line),
                "usb_type": info(rs.camera_info.usb_type_descriptor),
            }
        )
    return out


def intrinsics_meta(profile: Any) -> dict[str, Any]:
    """A video stream profile's intrinsics as a JSON-ready dict (pixels, librealsense model)."""
    i = profile.as_video_stream_profile().get_intrinsics()
    return {
        "width": int(i.width),
        "height": int(i.height),
        "fx": float(i.fx),
        "fy": float(i.fy),
        "cx": float(i.ppx),
        "cy": float(i.ppy),
        "model": str(i.model).rsplit(".", 1)[-1],
        "coeffs": [float(c) for c in i.coeffs],
    }


def frame_stamp_ns(rs: Any, frame: Any) -> tuple[int, str]:
    """``(t_sensor_ns, source)`` of a librealsense frame: hardware metadata first (see the
    module docstring), then ``get_timestamp()`` in its own domain."""
    for key, name in (
        (rs.frame_metadata_value.sensor_timestamp, "sensor_timestamp"),
        (rs.frame_metadata_value.frame_timestamp, "frame_timestamp"),
    ):
        if frame.supports_frame_metadata(key):
            return int(frame.get_frame_metadata(key)) * 1000, name
    domain = str(frame.get_frame_timestamp_domain()).rsplit(".", 1)[-1]
    return round(float(frame.get_timestamp()) * 1e6), domain


@dataclass(frozen=True, kw_only=True)
class RealSenseConfig:
    """What to open: a live device (``serial`` or the first one) or a recording (``file``)."""

    serial: str = ""
    width: int = 640
    height: int = 480
    fps: int = 30
    align_to_color: bool = False
    #: A librealsense recording (.bag, or .db3 as librealsense >= 2.57 writes) instead of a device.
    file: str = ""
    #: Recordings only: play at the recorded rate (else as fast as the node takes frames).
    realtime: bool = True
    loop: bool = False
    retry_s: float = 2.0
    frame_timeout_s: float = 1.0
    queue_size: int = 4

    def describe(self) -> str:
        """How the device is named in messages."""
        if self.file:
            return f"recording {self.file}"
        return f"serial {self.serial}" if self.serial else "any serial"


class RealSenseSource:
    """Runs the librealsense pipeline in a thread and hands over :class:`DepthFrame`.

    Call :meth:`start`, then :meth:`poll` from the node's loop; :attr:`finished` turns true at
    the end of a recording that does not loop; :meth:`close` stops the thread.
    """

    def __init__(self, cfg: RealSenseConfig, log: logging.Logger) -> None:
        self.rs = import_rs()
        self.cfg = cfg
        self.log = log
        self._frames: queue.Queue[DepthFrame] = queue.Queue(maxsize=max(1, cfg.queue_size))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.finished = False
        self.connected = False
        self.frames = 0
        self.dropped = 0
        self.retries = 0
        self.reconnects = 0
        self.device_name = ""
        self.device_serial = ""
        self._loop_offset_ns = 0
        #: A configuration error found by the thread (bad file, unsupported mode): fatal.
        self.error: str = ""

    # --- the node's side -----------------------------------------------------------------
    def start(self) -> None:
        """Start the reader thread (returns at once; a missing device is retried there)."""
        self._thread = threading.Thread(target=self._run, name="realsense", daemon=True)
        self._thread.start()

    def poll(self) -> list[DepthFrame]:
        """Every frame that has arrived since the last call, oldest first (never blocks)."""
        out: list[DepthFrame] = []
        while True:
            try:
                out.append(self._frames.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        """Stop the thread and the librealsense pipeline."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # --- the reader thread -----------------------------------------------------------------
    def _open(self) -> tuple[Any, Any, float]:
        rs, c = self.rs, self.cfg
        config = rs.config()
        found = [d.get_info(rs.camera_info.serial_number) for d in rs.context().devices]
        if not found or (c.serial and c.serial not in found):
            attached = f" (attached: {', '.join(found)})" if found else ""
            raise NoDeviceError(f"no RealSense device found ({c.describe()}){attached}")
        if c.serial:
            config.enable_device(c.serial)
        config.enable_stream(rs.stream.depth, c.width, c.height, rs.format.z16, c.fps)
        if c.align_to_color:
            config.enable_stream(rs.stream.color, c.width, c.height, rs.format.bgr8, c.fps)
        pipeline = rs.pipeline()
        try:
            profile = pipeline.start(config)
        except RuntimeError as exc:
            # Unplugged between the look-up and the start, busy in another process, or a
            # mode this model does not offer (then every retry says so).
            raise NoDeviceError(f"RealSense ({c.describe()}) cannot start: {exc}") from exc
        device = profile.get_device()
        self.device_name = str(device.get_info(rs.camera_info.name))
        self.device_serial = str(device.get_info(rs.camera_info.serial_number))
        scale = float(device.first_depth_sensor().get_depth_scale())
        return pipeline, profile, scale

    def _run(self) -> None:
        if self.cfg.file:
            try:
                self._run_file()
            except (ConfigError, RuntimeError) as exc:
                self.error = f"RealSense recording {self.cfg.file}: {exc}"
            self.finished = True
            return
        outage_logged = False
        opened_before = False
        while not self._stop.is_set():
            try:
                pipeline, profile, scale = self._open()
            except NoDeviceError as exc:
                self.retries += 1
                if not outage_logged:
                    self.log.warning("%s; retrying every %.1f s", exc, self.cfg.retry_s)
                    outage_logged = True
                self._stop.wait(self.cfg.retry_s)
                continue
            if opened_before:
                self.reconnects += 1
            opened_before = True
            outage_logged = False
            self.connected = True
            self.log.info(
                "RealSense %s (serial %s) streaming, depth scale %.6g m",
                self.device_name,
                self.device_serial,
                scale,
            )
            try:
                ended = self._stream(pipeline, profile, scale)
            finally:
                self.connected = False
                with contextlib.suppress(RuntimeError):
                    pipeline.stop()
            if ended:
                self.finished = True
                return

    def _stream(self, pipeline: Any, profile: Any, scale: float) -> bool:
        """Deliver frames until stopped (False), the device goes quiet (False, reconnect) or a
        recording ends (True)."""
        rs, c = self.rs, self.cfg
        align = rs.align(rs.stream.color) if c.align_to_color else None
        timeout_ms = max(1, round(c.frame_timeout_s * 1000))
        intrinsics: dict[str, Any] | None = None
        while not self._stop.is_set():
            ok, frames = pipeline.try_wait_for_frames(timeout_ms)
            t_host_ns = time.monotonic_ns()
            if not ok:
                self.log.warning(
                    "RealSense %s (serial %s): no frame for %.1f s; device lost, reconnecting",
                    self.device_name,
                    self.device_serial,
                    c.frame_timeout_s,
                )
                return False
            if align is not None:
                frames = align.process(frames)
            depth = frames.get_depth_frame()
            if not depth:
                continue
            if intrinsics is None:
                intrinsics = intrinsics_meta(depth.get_profile())
            self._put(self._convert(depth, t_host_ns, scale, intrinsics, align is not None))
        return False

    def _convert(
        self, depth: Any, t_host_ns: int, scale: float, intrinsics: dict[str, Any], aligned: bool
    ) -> DepthFrame:
        t_sensor_ns, source = frame_stamp_ns(self.rs, depth)
        image = np.array(depth.get_data(), dtype=np.uint16, copy=True)
        meta: dict[str, Any] = {
            "depth_scale_m": scale,
            "t_sensor_source": source,
            "frame_number": int(depth.get_frame_number()),
            "serial": self.device_serial,
            "intrinsics": intrinsics,
        }
        if aligned:
            meta["aligned_to"] = "color"
        return DepthFrame(image, t_sensor_ns + self._loop_offset_ns, t_host_ns, scale, meta)

    def _run_file(self) -> None:
        """Play a recording, once or in a loop; stamps go on across a loop, one frame period
        after the last frame, so that they never go back."""
        while not self._stop.is_set():
            first_ns, last_ns, n = self._play_once()
            if not self.cfg.loop or self._stop.is_set() or n == 0:
                self.log.info("RealSense recording %s: end of file", self.cfg.file)
                return
            period_ns = (last_ns - first_ns) // max(1, n - 1) or 1
            self._loop_offset_ns += last_ns - first_ns + period_ns

    def _play_once(self) -> tuple[int, int, int]:
        """One pass through the recording's depth sensor (not ``rs.pipeline``, whose queue
        drops frames of a recording played faster than real time): the frame callback blocks
        until the node has room, so no frame is lost, and stamps ``t_host_ns`` on arrival.
        Returns the pass's first and last raw sensor stamps and its frame count."""
        rs = self.rs
        dev = rs.context().load_device(self.cfg.file)
        playback = dev.as_playback()
        playback.set_real_time(self.cfg.realtime)
        self.device_name = str(dev.get_info(rs.camera_info.name))
        self.device_serial = str(dev.get_info(rs.camera_info.serial_number))
        sensor = dev.first_depth_sensor()
        scale = float(sensor.get_depth_scale())
        profiles = [p for p in sensor.get_stream_profiles() if p.stream_type() == rs.stream.depth]
        if not profiles:
            raise ConfigError("no depth stream in it")
        intrinsics = intrinsics_meta(profiles[0])
        stamps: list[int] = []

        def on_frame(frame: Any) -> None:
            t_host_ns = time.monotonic_ns()
            depth = frame.as_depth_frame()
            if not depth:
                return
            f = self._convert(depth, t_host_ns, scale, intrinsics, False)
            stamps.append(f.t_sensor_ns - self._loop_offset_ns)
            self._put(f)

        sensor.open(profiles[0])
        sensor.start(on_frame)
        self.connected = True
        started_ns = time.monotonic_ns()
        try:
            while not self._stop.is_set():
                # "stopped" also before playback gets going: trust it once a frame came.
                if playback.current_status() == rs.playback_status.stopped and (
                    stamps or time.monotonic_ns() - started_ns > 2_000_000_000
                ):
                    break
                self._stop.wait(0.02)
        finally:
            self.connected = False
            with contextlib.suppress(RuntimeError):
                sensor.stop()
            with contextlib.suppress(RuntimeError):
                sensor.close()
        if not stamps:
            return 0, 0, 0
        return stamps[0], stamps[-1], len(stamps)

    def _put(self, frame: DepthFrame) -> None:
        if self.cfg.file and not self.cfg.realtime:
            # As fast as possible, but never faster than the node publishes: wait for room
            # (this blocks librealsense's playback thread, which then waits too).
            while not self._stop.is_set():
                try:
                    self._frames.put(frame, timeout=0.1)
                    self.frames += 1
                    return
                except queue.Full:
                    continue
            return
        # Live: keep the newest frames; a full queue means the node is behind.
        while True:
            try:
                self._frames.put_nowait(frame)
                self.frames += 1
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._frames.get_nowait()
                    self.dropped += 1


def open3d_bag_frames(path: str) -> Generator[DepthFrame, None, None]:
    """The depth frames of a RealSense .bag read with Open3D's ``RSBagReader`` (extra
    ``lidar``, which installs Open3D): depth aligned to colour, stamps in µs from the file.

    ``t_host_ns`` is left 0 (the node stamps publication). Raises ``ConfigError`` when the
    file cannot be opened (missing, not a bag, no colour or depth stream).
    """
    o3d = require_extra("open3d", "lidar")
    reader = o3d.t.io.RSBagReader()  # type: ignore[attr-defined]
    if not reader.open(path):
        raise ConfigError(
            f"RealSense recording {path}: Open3D cannot open it as a .bag (its reader takes "
            "the ROS 1 .bag that librealsense wrote before 2.57, with colour and depth "
            "streams); for a .db3, a newer recording or depth alone use bag_reader: "
            "pyrealsense2"
        )
    try:
        md = reader.metadata
        # Open3D keeps depth_scale as units per metre (1000 for millimetres).
        scale_m = 1.0 / float(md.depth_scale) if md.depth_scale else 0.001
        meta: dict[str, Any] = {
            "serial": str(md.serial_number),
            "device": str(md.device_name),
            "t_sensor_source": "bag_timestamp",
            "aligned_to": "color",
        }
        while not reader.is_eof():
            rgbd = reader.next_frame()
            if rgbd.is_empty():
                continue
            depth = rgbd.depth.as_tensor().numpy()
            image = np.ascontiguousarray(depth.reshape(depth.shape[0], depth.shape[1]))
            if image.dtype != np.uint16:
                image = image.astype(np.uint16)
            t_ns = int(reader.get_timestamp()) * 1000
            yield DepthFrame(image, t_ns, 0, scale_m, dict(meta))
    finally:
        reader.close()
