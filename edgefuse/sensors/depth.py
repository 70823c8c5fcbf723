"""The depth camera node: an Intel RealSense (live or recorded) or a TUM RGB-D sequence.

It publishes exactly what the simulated depth camera publishes (``<name>/image``, ``z16``, an
(H, W) uint16 image, ``frame_id`` ``depth_optical``, ``meta.depth_scale_m`` the metres per
unit), so the aligner and the infer node take real depth unchanged. Values are never rescaled:
a RealSense's own scale (usually 0.001) or the TUM factor (1/5000 = 0.0002) travels with each
frame, which keeps the conversion to metres exact.

Sources (``source``):

- ``realsense``: a live device via pyrealsense2 (extra ``depth``), chosen by ``serial`` (empty:
  the first one), at ``width`` x ``height`` and ``fps``, optionally aligned to the colour stream.
  A device missing at start or lost mid-run is looked for again every ``retry_s``.
- ``bag``: a RealSense recording (``path``: .bag, or .db3 as librealsense 2.57+ writes), through
  pyrealsense2 (``bag_reader: pyrealsense2``, the default: the recording's depth sensor, no frame
  dropped when played faster than real time)
  or Open3D's ``RSBagReader`` (``bag_reader: open3d``, .bag only, depth always aligned to
  colour).
- ``tum``: a TUM RGB-D sequence folder (``depth.txt`` + 16-bit PNGs, factor 5000).

Files play at their recorded rate (``realtime: true``, paced by their stamps) or as fast as
possible, once or in a loop. ``t_sensor_ns`` is always the sensor's stamp (the file's stamp for
files, continued across loops so that it never goes back); ``t_host_ns`` is host monotonic time
at arrival (at publication for files). A frame that cannot be read is counted, logged and
skipped; the node goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgefuse.errors import ConfigError, MissingExtraError
from edgefuse.node import Node
from edgefuse.sensors._realsense import (
    RealSenseConfig,
    RealSenseSource,
    open3d_bag_frames,
)
from edgefuse.sensors.tum import TUM_DEPTH_SCALE_M, TumDepthSequence

SOURCES = ("realsense", "bag", "tum")
BAG_READERS = ("pyrealsense2", "open3d")
#: Log each unreadable file frame up to this many times, then only every 100th.
_BAD_FRAME_LOG_LIMIT = 10


@dataclass(frozen=True, kw_only=True)
class DepthParams:
    """Parameters of :class:`DepthNode` (see the module docstring)."""

    source: str = "realsense"
    #: ``bag``: the recording; ``tum``: the sequence folder (or its depth.txt).
    path: str = ""
    #: ``realsense``: the device's serial number ("" = the first one found).
    serial: str = ""
    width: int = 640
    height: int = 480
    fps: int = 30
    #: Reproject depth into the colour camera (``rs.align``); set ``frame_id`` accordingly.
    align_to_color: bool = False
    bag_reader: str = "pyrealsense2"
    #: Files: publish at the recorded rate (else as fast as possible).
    realtime: bool = True
    #: Files: start again at the end (else the node finishes).
    loop: bool = False
    frame_id: str = "depth_optical"
    #: Wait this long before the first frame (lets subscribers connect).
    start_delay_s: float = 0.0
    #: Live device: seconds between attempts to find it.
    retry_s: float = 2.0
    #: Live device: no frame for this long means it is lost (closed and looked for again).
    frame_timeout_s: float = 1.0
    #: How often the node takes frames from the RealSense reader thread.
    poll_s: float = 0.002

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.bag_reader not in BAG_READERS:
            raise ValueError(
                f"bag_reader must be one of {', '.join(BAG_READERS)}, got {self.bag_reader!r}"
            )
        if self.source in ("bag", "tum") and not self.path:
            raise ValueError(f"source {self.source!r} needs a path")
        if self.source == "bag" and self.bag_reader == "pyrealsense2" and self.align_to_color:
            raise ValueError(
                "align_to_color with a recording needs bag_reader: open3d "
                "(which aligns depth to colour)"
            )
        if not (1 <= self.width <= 8192 and 1 <= self.height <= 8192):
            raise ValueError(f"width and height must be in 1..8192, got {self.width}x{self.height}")
        if not 1 <= self.fps <= 1000:
            raise ValueError(f"fps must be in 1..1000, got {self.fps}")
        for name in ("retry_s", "frame_timeout_s", "poll_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.start_delay_s < 0:
            raise ValueError(f"start_delay_s must be >= 0, got {self.start_delay_s}")
        if not self.frame_id:
            raise ValueError("frame_id must not be empty")


@dataclass(slots=True)
class _FileFrame:
    """One frame of a file source: its stamp, and the image or why it could not be read."""

    t_sensor_ns: int
    image: np.ndarray | None
    depth_scale_m: float
    meta: dict[str, Any]
    error: str = ""


class _TumFiles:
    """A TUM sequence read frame by frame, restartable for a loop."""

    def __init__(self, path: str) -> None:
        self.seq = TumDepthSequence(path)
        self.t_first_ns = self.seq.entries[0].t_sensor_ns
        self.span_ns = self.seq.entries[-1].t_sensor_ns - self.t_first_ns + self.seq.period_ns()
        self._index = 0

    def next(self) -> _FileFrame | None:
        """The next frame (its image, or why it is unreadable); None at the end."""
        if self._index >= len(self.seq):
            return None
        f = self.seq.frame(self._index)
        self._index += 1
        meta = {"file": f.entry.path.name, "index": f.index}
        return _FileFrame(f.entry.t_sensor_ns, f.image, TUM_DEPTH_SCALE_M, meta, f.error)

    def rewind(self) -> None:
        """Start again at the first frame."""
        self._index = 0

    def close(self) -> None:
        """Nothing held open between frames."""


class _Open3DBag:
    """A RealSense .bag through Open3D's ``RSBagReader``, frame by frame, restartable.

    Open3D reads ahead in its own thread and aligns depth to colour; the span of the recording
    (for stamps that continue across a loop) is known once the first pass has ended.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._it = open3d_bag_frames(path)
        self._peek = next(self._it, None)
        if self._peek is None:
            raise ConfigError(f"RealSense recording {path}: no depth frame in it")
        self.t_first_ns = self._peek.t_sensor_ns
        self._last_ns = self.t_first_ns
        self._period_ns = 0
        self._index = 0
        self.span_ns = 0

    def next(self) -> _FileFrame | None:
        """The next frame; None at the end of the recording."""
        f = self._peek if self._peek is not None else next(self._it, None)
        self._peek = None
        if f is None:
            if not self.span_ns:
                self.span_ns = self._last_ns - self.t_first_ns + self._period_ns
            return None
        if self._index:
            self._period_ns = f.t_sensor_ns - self._last_ns
        self._last_ns = f.t_sensor_ns
        self._index += 1
        meta = {**f.meta, "index": self._index - 1}
        return _FileFrame(f.t_sensor_ns, f.image, f.depth_scale_m, meta)

    def rewind(self) -> None:
        """Reopen the file at its start."""
        self.close()
        self._it = open3d_bag_frames(self.path)
        self._index = 0

    def close(self) -> None:
        """Close Open3D's reader (the generator's ``finally`` does it)."""
        self._it.close()


class DepthNode(Node):
    """A real depth camera or a depth recording, published like the simulated one (z16 on
    ``<name>/image`` with ``meta.depth_scale_m``)."""

    Params = DepthParams
    outputs: ClassVar = {"image": "z16"}

    def setup(self) -> None:
        p: DepthParams = self.params
        self.published = 0
        self.bad_frames = 0
        self.loops = 0
        self._rs: RealSenseSource | None = None
        if p.source == "tum":
            self._setup_files(_TumFiles(p.path))
        elif p.source == "bag" and p.bag_reader == "open3d":
            if not Path(p.path).is_file():
                raise ConfigError(f"RealSense recording {p.path}: no such file")
            self._setup_files(_Open3DBag(p.path))
        else:
            if p.source == "bag" and not Path(p.path).is_file():
                raise ConfigError(f"RealSense recording {p.path}: no such file")
            cfg = RealSenseConfig(
                serial=p.serial,
                width=p.width,
                height=p.height,
                fps=p.fps,
                align_to_color=p.align_to_color,
                file=p.path if p.source == "bag" else "",
                realtime=p.realtime,
                loop=p.loop,
                retry_s=p.retry_s,
                frame_timeout_s=p.frame_timeout_s,
            )
            try:
                self._rs = RealSenseSource(cfg, self.log)
            except MissingExtraError as exc:
                raise ConfigError(str(exc)) from exc
            self.at(time.monotonic_ns() + round(p.start_delay_s * 1e9), self._rs.start)
            self.every(p.poll_s, self._drain)

    def teardown(self) -> None:
        if self._rs is not None:
            self._rs.close()
        files = getattr(self, "_files", None)
        if files is not None:
            files.close()

    def counters(self) -> dict[str, int | float]:
        """Frames published, unreadable frames, loops; for a RealSense also its link state."""
        c: dict[str, int | float] = {
            "frames": self.published,
            "bad_frames": self.bad_frames,
            "loops": self.loops,
        }
        if self._rs is not None:
            c.update(
                connected=int(self._rs.connected),
                retries=self._rs.retries,
                reconnects=self._rs.reconnects,
                dropped=self._rs.dropped,
            )
        return c

    # --- RealSense (live or recorded through pyrealsense2) ---------------------------------
    def _drain(self) -> None:
        rs = self._rs
        assert rs is not None
        # Read the flag first: every frame queued before it was set is in this poll.
        finished = rs.finished
        for f in rs.poll():
            self._publish(f.image, f.t_sensor_ns, f.t_host_ns, f.depth_scale_m, f.meta)
        if finished:
            if rs.error:
                self.log.error("%s", rs.error)
            self.stop()

    # --- files (TUM, Open3D bag) ----------------------------------------------------------
    def _setup_files(self, files: _TumFiles | _Open3DBag) -> None:
        p: DepthParams = self.params
        self._files = files
        self._loop_offset_ns = 0
        self._good_in_pass = 0
        # Host time at which the first frame's stamp is due: stamps set the pace from there.
        self._t0_host_ns = time.monotonic_ns() + round(p.start_delay_s * 1e9)
        self._t0_sensor_ns = files.t_first_ns
        self._schedule_next()

    def _next_good(self) -> _FileFrame | None:
        p: DepthParams = self.params
        files = self._files
        while True:
            f = files.next()
            if f is None:
                if not p.loop or self._good_in_pass == 0:
                    if self._good_in_pass == 0:
                        self.log.error("no readable depth frame in %s: stopping", p.path)
                    return None
                self._good_in_pass = 0
                self._loop_offset_ns += files.span_ns
                self.loops += 1
                files.rewind()
                continue
            if f.image is not None:
                self._good_in_pass += 1
                f.t_sensor_ns += self._loop_offset_ns
                return f
            self.bad_frames += 1
            if self.bad_frames <= _BAD_FRAME_LOG_LIMIT or self.bad_frames % 100 == 0:
                self.log.warning(
                    "depth frame %s skipped (%d unreadable so far): %s",
                    f.meta.get("index"),
                    self.bad_frames,
                    f.error,
                )

    def _schedule_next(self) -> None:
        f = self._next_good()
        if f is None:
            self.stop()
            return
        if self.params.realtime:
            due = self._t0_host_ns + (f.t_sensor_ns - self._t0_sensor_ns)
        else:
            due = max(self._t0_host_ns, time.monotonic_ns())
        self.at(due, lambda: self._deliver_file(f))

    def _deliver_file(self, f: _FileFrame) -> None:
        assert f.image is not None
        self._publish(f.image, f.t_sensor_ns, time.monotonic_ns(), f.depth_scale_m, f.meta)
        self._schedule_next()

    # --- common -----------------------------------------------------------------------------
    def _publish(
        self,
        image: np.ndarray,
        t_sensor_ns: int,
        t_host_ns: int,
        depth_scale_m: float,
        meta: dict[str, Any],
    ) -> None:
        self.publish(
            "image",
            [image],
            t_sensor_ns=int(t_sensor_ns),
            t_host_ns=int(t_host_ns),
            frame_id=self.params.frame_id,
            meta={**meta, "depth_scale_m": float(depth_scale_m)},
        )
        self.published += 1
