"""Activity signals and events of each stream of a recording, for temporal calibration.

Every stream's stamps are mapped onto the host timeline by the aligner's own clock model
(:class:`~edgefuse.sync.clock.ClockModel` with the stream's ``latency_ms`` and ``wrap_s``),
**without** the static offsets being estimated; samples from before the model converged are
left out. Each sample then becomes

- activity values per tile of a camera's image (see :mod:`edgefuse.calib.temporal`, step 2),
  for the cross-correlation estimator, and
- for the event estimator (:mod:`edgefuse.calib.temporal_events`): the instants where motion in
  view stops (cameras, depth, lidar) and the onsets of clicks (microphone, minus the sound's
  travel time ``sound_distance_m / 343 m/s``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.calib.model import RigCalibration
from edgefuse.calib.temporal_events import click_onsets, move_events
from edgefuse.errors import EdgefuseError
from edgefuse.sync.aligner import StreamConfig
from edgefuse.sync.clock import ClockModel

SPEED_OF_SOUND_MPS = 343.0
#: Range (m) a depth pixel or lidar cell without a return counts as (events).
_FAR_M = 30.0
#: A depth or lidar change counts at most this much (m) in the events' projection: a pixel
#: that switches from the target to the background counts like a move of this size.
_CLIP_M = 0.3
#: Encodings per kind of signal.
_CAMERA = {"bgr8", "rgb8", "bgra8", "rgba8", "mono8"}
_DEPTH = {"z16", "mono16", "32FC1"}
_LIDAR = {"xyzit_f32"}
_AUDIO = {"s16le"}
#: Background samples (frames, sweeps) the median is taken over.
_BACKGROUND_SAMPLES = 61


class TemporalCalibrationError(EdgefuseError):
    """Bad input to the temporal calibration: a stream missing, flat, or too short."""


@dataclass(frozen=True, kw_only=True)
class Signal:
    """One stream's activity signal on the host timeline (no static offset added): sample
    ``i`` of tile ``b`` describes instant ``t_ns[i] + dt_ns[b]`` (one tile: a whole-view
    signal; NaN: the sensor sees nothing of that tile)."""

    stream: str
    kind: str  # camera | depth | lidar | audio
    t_ns: np.ndarray  # (T,) int64
    values: np.ndarray  # (T, tiles) float64
    dt_ns: np.ndarray  # (tiles,) int64, or (1,) for all tiles
    #: Instants (int64 ns, same timeline) of the stream's events: where moves in view are halfway
    #: (camera, depth, lidar), click onsets minus the sound's travel time (microphone).
    events_ns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def duration_s(self) -> float:
        """Time spanned by the samples (s)."""
        return float(self.t_ns.max() - self.t_ns.min()) * 1e-9 if len(self.t_ns) > 1 else 0.0

    def whole(self) -> Signal:
        """The whole-view signal: the mean over the tiles this sensor sees."""
        if self.values.shape[1] == 1:
            return self
        ok = ~np.isnan(self.values).any(axis=0)
        w = self.values[:, ok]
        dt = self.dt_ns if len(self.dt_ns) == 1 else self.dt_ns[ok]
        return replace(
            self,
            values=w.mean(axis=1, keepdims=True),
            dt_ns=np.array([round(float(np.mean(dt)))], np.int64),
        )


def signal_kind(encoding: str) -> str | None:
    """The kind of activity signal a stream of ``encoding`` gives (None: not supported)."""
    for kind, encs in (("camera", _CAMERA), ("depth", _DEPTH), ("lidar", _LIDAR)):
        if encoding in encs:
            return kind
    return "audio" if encoding in _AUDIO else None


#: Tiles of the view camera's image that signals are resolved into (columns, rows): an object
#: edge crossing a tile is a sharp event, where a whole-image sum changes slowly.
TILES = (32, 4)


class _View:
    """The tiles of a camera's image and the projection of other sensors' points into them."""

    def __init__(self, rig: RigCalibration, camera: str) -> None:
        cal = rig.sensor(camera)
        assert cal.camera is not None
        self.rig, self.camera, self.cam = rig, camera, cal.camera
        self.n = TILES[0] * TILES[1]

    def tile_of_pixels(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tile index of view-camera pixels (-1 outside the image)."""
        w, h = self.cam.width, self.cam.height
        ok = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        col = np.clip((u * TILES[0] // w).astype(np.int64), 0, TILES[0] - 1)
        row = np.clip((v * TILES[1] // h).astype(np.int64), 0, TILES[1] - 1)
        return np.where(ok, row * TILES[0] + col, -1)

    def tile_of_points(self, sensor: str, p: np.ndarray) -> np.ndarray:
        """Tile index of points ``p`` (N, 3) in ``sensor``'s frame (-1: not in view)."""
        T = self.rig.T(self.camera, sensor)
        q = p @ T[:3, :3].T + T[:3, 3]
        z = np.where(q[:, 2] > 0.5, q[:, 2], np.nan)
        K = self.cam.K
        with np.errstate(invalid="ignore"):
            u = np.nan_to_num(K[0, 0] * q[:, 0] / z + K[0, 2], nan=-1.0)
            v = np.nan_to_num(K[1, 1] * q[:, 1] / z + K[1, 2], nan=-1.0)
        return self.tile_of_pixels(u, v)


def _median_bg(stack: np.ndarray, invalid_zero: bool) -> np.ndarray:
    """Per-pixel median over up to :data:`_BACKGROUND_SAMPLES` samples spread over the session
    (the rig stands still: what most samples show is the background); zeros (no return) count
    as infinitely far when ``invalid_zero``."""
    pick = np.linspace(0, len(stack) - 1, min(len(stack), _BACKGROUND_SAMPLES)).round()
    sub = stack[pick.astype(int)].astype(np.float32)
    if invalid_zero:
        sub = np.where(sub > 0, sub, np.inf)
    return np.asarray(np.median(sub, axis=0))


def _per_tile(act: np.ndarray, tiles: np.ndarray, n: int) -> np.ndarray:
    """Mean of ``act`` (T, P) over the pixels of each tile (``tiles``: (P,), -1 = none)."""
    ok = tiles >= 0
    count = np.bincount(tiles[ok], minlength=n).astype(np.float64)
    out = np.stack([np.bincount(tiles[ok], weights=a[ok], minlength=n) for a in act])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(out / count)  # NaN where the sensor has no pixel in the tile


class _Collector:
    """Maps one stream's stamps with the aligner's clock model and keeps reduced samples."""

    def __init__(self, stream: str, sensor: str, kind: str, cfg: StreamConfig) -> None:
        self.stream, self.sensor, self.kind = stream, sensor, kind
        self.clock = ClockModel(cfg.clock_config())
        self.t_ns: list[int] = []
        self.data: list[Any] = []
        self.bad = 0
        self.slope = 1.0
        self.depth_scale_m = 0.001
        self.lidar_dirs: np.ndarray | None = None
        self.lidar_tau: np.ndarray | None = None
        self.audio: list[tuple[int, float, np.ndarray]] = []  # (t_ns, rate_hz, mono samples)
        self.fine: list[np.ndarray] = []  # camera and depth frames for events

    def add(self, msg: Any) -> None:
        h = msg.header
        try:
            est = self.clock.update(h.t_sensor_ns, h.t_host_ns)
            if not est.converged:
                return
            self.slope = self.clock.slope
            a0 = np.asarray(msg.arrays[0])
            if self.kind == "camera":
                small = a0[::4, ::4]
                gray = small.mean(axis=2) if small.ndim == 3 else small
                self.data.append(gray.astype(np.uint8))
                # For events: 4x4 block means, so an edge's sub-pixel position survives.
                h, w = a0.shape[0] // 4 * 4, a0.shape[1] // 4 * 4
                full = a0[:h, :w].mean(axis=2) if a0.ndim == 3 else a0[:h, :w]
                block = full.reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
                self.fine.append(block.astype(np.float32))
            elif self.kind == "depth":
                # 32FC1 is metres (ROS REP 118); z16 and mono16 millimetres unless said.
                unit_m = 1.0 if h.encoding == "32FC1" else 0.001
                self.depth_scale_m = float(h.meta.get("depth_scale_m", unit_m))
                self.data.append(a0[::2, ::2].astype(np.float32))
                # For events: full resolution (uint16: 150 kB a frame), edges to the pixel,
                # through a 5x5 median (as a depth camera's spatial filter): isolated dropouts
                # and range noise otherwise made the depth's moves 0.2-0.5 ms late on every
                # seed of the simulated rig (docs/BENCHMARKS.md, time offsets).
                self.fine.append(_depth_for_events(a0))
            elif self.kind == "lidar":
                self._lidar(msg)
            else:
                self._audio(msg, est.t_ns)
                return
            self.t_ns.append(est.t_ns)
        except (IndexError, KeyError, ValueError, TypeError):
            self.bad += 1  # a malformed sample is skipped, the stream goes on

    def _lidar(self, msg: Any) -> None:
        pts = np.asarray(msg.arrays[0], dtype=np.float64)
        ring = np.asarray(msg.arrays[1]).astype(np.int64)
        steps = int(msg.header.meta.get("azimuth_steps", 1024))
        beams = int(msg.header.meta.get("beams", 0)) or int(ring.max()) + 1
        if self.lidar_dirs is None:
            self.lidar_dirs = np.zeros((beams, steps, 3), np.float32)
            self.lidar_tau = np.zeros((2, steps))
        assert self.lidar_tau is not None
        az = np.arctan2(pts[:, 1], pts[:, 0])
        col = np.floor((az + math.pi) / (2 * math.pi) * steps).astype(np.int64) % steps
        rng = np.linalg.norm(pts[:, :3], axis=1)
        ok = (ring >= 0) & (ring < beams) & (rng > 0)
        img = np.zeros((beams, steps), np.float16)
        img[ring[ok], col[ok]] = rng[ok]
        self.lidar_dirs[ring[ok], col[ok]] = pts[ok, :3] / rng[ok, None]
        np.add.at(self.lidar_tau[0], col[ok], pts[ok, 4])
        np.add.at(self.lidar_tau[1], col[ok], 1.0)
        self.data.append(img)

    def _audio(self, msg: Any, t_ns: int) -> None:
        a = np.asarray(msg.arrays[0], dtype=np.float64)
        rate = float(msg.header.meta["rate_hz"])
        a = a.reshape(a.shape[0], -1)
        self.audio.append((t_ns, rate, a.mean(axis=1)))
        win = max(1, round(rate * 0.01))
        for j in range(max(1, len(a) // win)):
            seg = a[j * win : (j + 1) * win]
            rms = math.sqrt(float(np.mean((seg - seg.mean(axis=0)) ** 2)))
            mid_ns = (j * win + len(seg) / 2) / rate * 1e9 * self.slope
            self.t_ns.append(t_ns + round(mid_ns))
            self.data.append([math.log10(rms + 1.0)])

    def signal(
        self, view: _View | None, rig: RigCalibration | None, sound_distance_m: float = 0.0
    ) -> Signal:
        if len(self.t_ns) < 3:
            raise TemporalCalibrationError(
                f"stream {self.stream}: only {len(self.t_ns)} usable samples after its clock "
                "model converged; record longer (at least ~20 s with things moving in view)"
            )
        t = np.asarray(self.t_ns, np.int64)
        dt = np.zeros(1, np.int64)
        events = self._events(t, sound_distance_m)
        if self.kind == "audio":
            # The sound left its source d / c before it arrived: physics, not clock offset.
            t = t - round(sound_distance_m / SPEED_OF_SOUND_MPS * 1e9)
            v = np.asarray(self.data, np.float64)
        elif self.kind == "camera":
            stack = np.stack(self.data)
            act = np.clip((np.abs(stack - _median_bg(stack, False)) - 10.0) / 20.0, 0.0, 1.0)
            act = act.reshape(len(stack), -1)
            h, w = stack.shape[1:]
            if view is not None and self.sensor == view.camera:
                vv, uu = np.mgrid[0:h, 0:w]
                tiles = view.tile_of_pixels(uu.ravel() * 4 + 2, vv.ravel() * 4 + 2)
                v = _per_tile(act, tiles, view.n)
            else:
                v = act.mean(axis=1, keepdims=True)
        elif self.kind == "depth":
            v = self._depth_tiles(view, rig)
        else:
            v, dt = self._lidar_tiles(view)
        return Signal(
            stream=self.stream, kind=self.kind, t_ns=t, values=v, dt_ns=dt, events_ns=events
        )

    def _events(self, t: np.ndarray, sound_distance_m: float) -> np.ndarray:
        """The stream's event instants (see :mod:`edgefuse.calib.temporal_events`)."""
        if self.kind == "audio":
            if not self.audio:
                return np.zeros(0, np.int64)
            tt = np.concatenate(
                [t0 + np.round(np.arange(len(a)) / r * 1e9 * self.slope) for t0, r, a in self.audio]
            ).astype(np.int64)
            x = np.concatenate([a for _, _, a in self.audio])
            travel_ns = round(sound_distance_m / SPEED_OF_SOUND_MPS * 1e9)
            return click_onsets(tt, x) - travel_ns
        import cv2

        if self.kind == "camera":
            # Blurred by 8 full-size pixels: a printed pattern moving a few pixels between
            # frames then changes the image in proportion to the move.
            blur = [cv2.GaussianBlur(f, (0, 0), 2.0) for f in self.fine]
            stack = np.stack(blur).reshape(len(blur), -1)
            return move_events(t, stack)
        # Depth (mm) and lidar (m): no return counts as far; a change is clipped (_CLIP_M), so
        # a pixel that changes from the target to the background counts like a small move.
        unit = self.depth_scale_m if self.kind == "depth" else 1.0
        if self.kind == "depth":
            far = _FAR_M / self.depth_scale_m
            stack = np.stack([np.where(f > 0, f, far).astype(np.float32) for f in self.fine])
            stack = stack.reshape(len(self.fine), -1)
        else:
            frames = [np.where(f > 0, f, _FAR_M).astype(np.float32) for f in self.data]
            stack = np.stack(frames).reshape(len(frames), -1)
        dt = None
        if self.kind == "lidar":
            assert self.lidar_tau is not None
            tau_col = self.lidar_tau[0] / np.maximum(self.lidar_tau[1], 1)
            beams = stack.shape[1] // len(tau_col)
            dt = np.tile(tau_col * 1e9 * self.slope, beams)
        return move_events(t, stack, clip=_CLIP_M / unit, cell_dt_ns=dt)

    def _depth_tiles(self, view: _View | None, rig: RigCalibration | None) -> np.ndarray:
        stack = np.stack(self.data)
        bg = _median_bg(stack, True)
        fg = (stack > 0) & (stack < 0.9 * bg)
        cal = rig.sensors.get(self.sensor) if rig is not None else None
        if view is None or cal is None or cal.camera is None:
            return np.asarray(fg.reshape(len(stack), -1).mean(axis=1, keepdims=True))
        h, w = stack.shape[1:]
        vv, uu = np.mgrid[0:h, 0:w]
        K = cal.camera.K
        rays = np.stack(
            [(uu.ravel() * 2 - K[0, 2]) / K[0, 0], (vv.ravel() * 2 - K[1, 2]) / K[1, 1]], axis=1
        )

        def tiles_at(z: np.ndarray) -> np.ndarray:
            pts = np.concatenate([rays * z[:, None], z[:, None]], axis=1)
            return view.tile_of_points(self.sensor, pts)

        # A pixel's tile depends on its depth (parallax): a foreground pixel goes to the tile
        # of its own depth (quantised), the share is over the tile's background pixels.
        base = tiles_at(np.where(np.isfinite(bg), bg * self.depth_scale_m, 30.0).ravel())
        ok = base >= 0
        count = np.bincount(base[ok], minlength=view.n).astype(np.float64)
        levels_m = np.geomspace(0.3, 30.0, 24)
        by_level = np.stack([tiles_at(np.full(len(rays), z)) for z in levels_m])
        out = np.zeros((len(stack), view.n))
        cols = np.arange(len(rays))
        for i in range(len(stack)):
            f = fg[i].ravel()
            z = stack[i].ravel()[f] * self.depth_scale_m
            lv = np.clip(np.searchsorted(levels_m, z), 0, len(levels_m) - 1)
            t = by_level[lv, cols[f]]
            out[i] = np.bincount(t[t >= 0], minlength=view.n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(np.where(count > 0, out / count, np.nan))

    def _lidar_tiles(self, view: _View | None) -> tuple[np.ndarray, np.ndarray]:
        assert self.lidar_dirs is not None and self.lidar_tau is not None
        stack = np.stack(self.data)
        bg = _median_bg(stack, True)
        margin = np.maximum(0.3, 0.05 * np.where(np.isfinite(bg), bg, 0.0))
        act = ((stack > 0) & (stack < bg - margin)).reshape(len(stack), -1).astype(np.float64)
        seen = np.linalg.norm(self.lidar_dirs, axis=2).ravel() > 0
        tau_col = self.lidar_tau[0] / np.maximum(self.lidar_tau[1], 1)
        tau = np.broadcast_to(tau_col, bg.shape).ravel()
        if view is None:
            tiles = np.where(seen, 0, -1)
            n = 1
        else:
            far = np.where(np.isfinite(bg), bg, 30.0).ravel()
            pts = self.lidar_dirs.reshape(-1, 3).astype(np.float64) * far[:, None]
            tiles = np.where(seen, view.tile_of_points(self.sensor, pts), -1)
            n = view.n
        if not (tiles >= 0).any():
            raise TemporalCalibrationError(
                f"stream {self.stream}: no lidar point falls in the camera's view; check the "
                "rig's lidar and camera poses (T_base_link_sensor)"
            )
        ok = tiles >= 0
        cnt = np.bincount(tiles[ok], minlength=n)
        # A tile's instant: the sweep start plus the mean scan time of its cells.
        with np.errstate(invalid="ignore", divide="ignore"):
            tau_tile = np.bincount(tiles[ok], weights=tau[ok], minlength=n) / cnt
        dt = np.round(np.nan_to_num(tau_tile) * 1e9 * self.slope).astype(np.int64)
        return _per_tile(act, tiles, n), dt


def _view_camera(rig: RigCalibration | None, reference: str, sensors: Mapping[str, str]) -> Any:
    if rig is None:
        return None
    names = [sensors[reference], *(s for n, s in sensors.items() if n != reference)]
    for s in names:
        cal = rig.sensors.get(s)
        if cal is not None and cal.camera is not None and cal.lidar is None:
            return _View(rig, s)
    return None


def _depth_for_events(frame: np.ndarray) -> np.ndarray:
    """A depth frame (z16, or float with NaN for no return) as event timing uses it: its own
    units, 0 for no return, 5x5 median-filtered."""
    import cv2

    a = np.asarray(frame)
    if a.dtype.kind == "f":
        a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    else:
        a = np.ascontiguousarray(a, np.uint16)
    return np.asarray(cv2.medianBlur(a, 5))


def session_signals(
    path: str | Path,
    streams: Mapping[str, tuple[str, StreamConfig]],
    *,
    rig: RigCalibration | None = None,
    reference: str | None = None,
    sound_distance_m: float = 0.0,
) -> dict[str, Signal]:
    """The activity signal and events of each stream (name -> (topic, config)) of the session
    at ``path``; a microphone's are moved back by the sound's travel time from
    ``sound_distance_m`` (the event's source to the microphone) at 343 m/s.

    Stamps go through a clock model per stream configured as the aligner's (``latency_ms``,
    ``wrap_s``); static offsets are not added. With ``rig``, signals are resolved into tiles
    of a camera's image (the reference's when it is a camera), each sensor's data projected
    there with the rig's poses. Raises :class:`TemporalCalibrationError` naming the stream
    when one is missing or unusable.
    """
    from edgefuse.record.session import SessionReader

    sensors = {n: cfg.sensor or n for n, (_, cfg) in streams.items()}
    if rig is not None:
        missing = [s for s in sensors.values() if s not in rig.sensors]
        if missing:
            rig = None  # poses unknown for some sensor: whole-view signals for all
    view = _view_camera(rig, reference or next(iter(streams)), sensors)
    with SessionReader(path) as reader:
        topics = reader.topics()
        by_topic: dict[str, _Collector] = {}
        for name, (topic, cfg) in streams.items():
            if topics.get(topic, 0) == 0:
                have = ", ".join(sorted(topics)) or "none"
                raise TemporalCalibrationError(
                    f"stream {name}: topic {topic!r} is not in {path} (it has: {have}); "
                    f"leave the stream out (--streams) or record it"
                )
            first = next(reader.messages([topic]))
            kind = signal_kind(first.header.encoding)
            if kind is None:
                raise TemporalCalibrationError(
                    f"stream {name}: encoding {first.header.encoding!r} has no activity signal "
                    "(camera images, depth z16, lidar xyzit_f32, s16le audio); leave it out "
                    "(--streams)"
                )
            by_topic[topic] = _Collector(name, sensors[name], kind, cfg)
        for msg in reader.messages(list(by_topic)):
            by_topic[msg.topic].add(msg)
    return {c.stream: c.signal(view, rig, sound_distance_m) for c in by_topic.values()}
