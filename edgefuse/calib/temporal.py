"""Temporal calibration: the static time offset of each stream of a recording, from the data.

``edgefuse calibrate time`` estimates what the aligner adds to each stream's clock-mapped stamp
(``time_offset_ns`` in the rig calibration: exposure mid-point, ADC latency, and whatever bias
the configured ``latency_ms`` leaves) by comparing activity signals across streams:

1. Every stream's stamps are mapped onto the host timeline by the aligner's own clock model
   (:class:`~edgefuse.sync.clock.ClockModel` with the stream's ``latency_ms`` and ``wrap_s``
   from the pipeline's aligner node), **without** the static offsets being estimated. Samples
   from before the model converged are left out.
2. Each sample becomes activity values per tile of a camera's image (the reference's when it is
   a camera; each sensor's data projected there with the rig's poses; one whole-view value when
   the rig does not relate them). The rig stands still, so each sensor's background is the
   per-pixel (per-cell) median of the session, and a tile's value is how much of it differs
   from the background: camera pixels off the background grey level, depth pixels nearer than
   it, lidar cells nearer than it (each lidar tile at the instant its cells were scanned:
   sweep start plus the points' own time); the microphone's envelope is the log RMS per 10 ms.
   Instantaneous values (not differences of consecutive frames, which describe an interval)
   give every sample a precise time, and tiles make an edge crossing a sharp event.
3. The denser signal of a pair is interpolated onto a 1 ms grid, both are high-passed (minus a
   moving average of ``highpass_s``: what remains is motion), and the correlation over tiles
   of the sparser one's own samples with the dense one shifted by each lag in ``±max_lag`` is
   scanned (5 ms steps, then 0.1 ms around the best, with a parabola through the peak).
4. Confidence: the peak's correlation coefficient, its ratio to the largest side lobe, and the
   jackknife spread of the peak over ``blocks`` pieces of the recording. A pair that fails
   :data:`RELIABLE` is flagged with the reason (a microphone against a camera in a scene
   without sound events, a stream that barely changes, a peak at the end of the lag range).

Sign: a stream whose data describe instants ``d`` later than the reference's after mapping
needs ``time_offset_ns`` = reference's + ``d``; aligning with the written offsets puts the same
event at the same ``t_ns`` in every stream (see :func:`apply_offsets`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.calib.model import RigCalibration
from edgefuse.errors import EdgefuseError
from edgefuse.sync.aligner import StreamConfig
from edgefuse.sync.clock import ClockModel

#: Encodings per kind of signal.
_CAMERA = {"bgr8", "rgb8", "bgra8", "rgba8", "mono8"}
_DEPTH = {"z16", "mono16", "32FC1"}
_LIDAR = {"xyzit_f32"}
_AUDIO = {"s16le"}
#: Background samples (frames, sweeps) the median is taken over.
_BACKGROUND_SAMPLES = 61
#: Thresholds a pair must pass to be reliable: correlation, peak / side lobe, jackknife ms.
RELIABLE = {"min_peak": 0.25, "min_sidelobe_ratio": 1.3, "max_spread_ms": 2.0}


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


@dataclass(frozen=True, kw_only=True)
class OffsetEstimate:
    """One stream's offset relative to the reference, with its quality figures."""

    stream: str
    reference: str
    #: Add this to the reference's ``time_offset_ns`` to get the stream's.
    offset_ns: int
    #: Peak correlation coefficient of the normalised signals (-1..1).
    peak: float
    #: Peak over the largest correlation outside the main lobe.
    sidelobe_ratio: float
    #: Jackknife standard deviation of the peak lag over blocks of the recording (ms).
    spread_ms: float
    #: 0..1 summary of the three.
    confidence: float
    reliable: bool
    #: Why the pair is not reliable (empty when it is), and what to do.
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (offset in ms as well)."""
        return {
            "stream": self.stream,
            "reference": self.reference,
            "offset_ns": self.offset_ns,
            "offset_ms": round(self.offset_ns * 1e-6, 4),
            "peak": round(self.peak, 4),
            "sidelobe_ratio": round(self.sidelobe_ratio, 3),
            "spread_ms": round(self.spread_ms, 4),
            "confidence": round(self.confidence, 3),
            "reliable": self.reliable,
            "reason": self.reason,
        }


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
            elif self.kind == "depth":
                self.depth_scale_m = float(h.meta.get("depth_scale_m", self.depth_scale_m))
                self.data.append(a0[::2, ::2].astype(np.float32))
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
        win = max(1, round(rate * 0.01))
        for j in range(max(1, len(a) // win)):
            seg = a[j * win : (j + 1) * win]
            rms = math.sqrt(float(np.mean((seg - seg.mean(axis=0)) ** 2)))
            mid_ns = (j * win + len(seg) / 2) / rate * 1e9 * self.slope
            self.t_ns.append(t_ns + round(mid_ns))
            self.data.append([math.log10(rms + 1.0)])

    def signal(self, view: _View | None, rig: RigCalibration | None) -> Signal:
        if len(self.t_ns) < 3:
            raise TemporalCalibrationError(
                f"stream {self.stream}: only {len(self.t_ns)} usable samples after its clock "
                "model converged; record longer (at least ~20 s with things moving in view)"
            )
        t = np.asarray(self.t_ns, np.int64)
        dt = np.zeros(1, np.int64)
        if self.kind == "audio":
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
        return Signal(stream=self.stream, kind=self.kind, t_ns=t, values=v, dt_ns=dt)

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


def session_signals(
    path: str | Path,
    streams: Mapping[str, tuple[str, StreamConfig]],
    *,
    rig: RigCalibration | None = None,
    reference: str | None = None,
) -> dict[str, Signal]:
    """The activity signal of each stream (name -> (topic, config)) of the session at ``path``.

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
    return {c.stream: c.signal(view, rig) for c in by_topic.values()}


def _rate_hz(sig: Signal) -> float:
    return (len(sig.t_ns) - 1) / max(sig.duration_s, 1e-9)


class _Dense:
    """A signal on a fine grid (linear interpolation between its samples), high-passed."""

    def __init__(self, sig: Signal, tiles: np.ndarray, t0_ns: int, t1_ns: int, hp_s: float):
        self.t0_ns, self.step_ns = t0_ns, 1_000_000  # 1 ms
        n = (t1_ns - t0_ns) // self.step_ns + 1
        g = t0_ns + np.arange(n) * self.step_ns
        order = np.argsort(sig.t_ns, kind="stable")
        t = sig.t_ns[order]
        w = max(3, round(hp_s * 1e3) | 1)
        self.values = np.empty((n, len(tiles)))
        self.baseline = np.empty((n, len(tiles)))
        for j, b in enumerate(tiles):
            dt = sig.dt_ns[b if len(sig.dt_ns) > 1 else 0]
            x = np.interp(g, t + dt, sig.values[order, b])
            c = np.cumsum(np.concatenate([[0.0], np.pad(x, w // 2, mode="edge")]))
            self.baseline[:, j] = (c[w:] - c[:-w]) / w
            self.values[:, j] = x - self.baseline[:, j]

    def at(self, t_ns: np.ndarray, what: np.ndarray | None = None) -> np.ndarray:
        """Values at instants ``t_ns`` (n, tiles), by linear interpolation (clamped)."""
        arr = self.values if what is None else what
        x = np.clip((t_ns - self.t0_ns) / self.step_ns, 0, len(arr) - 1.000001)
        i = x.astype(np.int64)
        f = x - i
        cols = np.arange(arr.shape[1])
        return np.asarray(arr[i, cols] * (1 - f) + arr[i + 1, cols] * f)


def _scores(
    sparse: np.ndarray, inst: np.ndarray, dense: _Dense, lags_ns: np.ndarray, sign: int
) -> tuple[np.ndarray, np.ndarray]:
    """Correlation per lag and sample: sparse[i, b] · dense(inst[i, b] + sign · lag), with the
    normalisation per lag; returns (lags, samples) products and (lags,) norms of the dense."""
    out = np.empty((len(lags_ns), len(sparse)))
    norm = np.empty(len(lags_ns))
    for k, lag in enumerate(lags_ns):
        d = dense.at(inst + sign * lag)
        out[k] = (sparse * d).sum(axis=1)
        norm[k] = float((d * d).sum())
    return out, norm


def _peak(c: np.ndarray) -> tuple[float, float]:
    """(sub-sample index, value) of the maximum of ``c`` by a parabola through three points."""
    k = int(np.argmax(c))
    if 0 < k < len(c) - 1:
        y0, y1, y2 = c[k - 1], c[k], c[k + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            d = 0.5 * (y0 - y2) / den
            return k + d, float(y1 - 0.25 * (y0 - y2) * d)
    return float(k), float(c[k])


def estimate_offset(
    sig: Signal,
    ref: Signal,
    *,
    max_lag_ns: int = 500_000_000,
    highpass_s: float = 1.0,
    blocks: int = 8,
) -> OffsetEstimate:
    """The offset of ``sig`` relative to ``ref`` (see the module docstring for the method).

    The denser of the two signals is interpolated onto a 1 ms grid and read at the sparser
    one's own sample instants shifted by each candidate lag (a coarse 5 ms scan, then 0.1 ms
    around its peak), so the sparse stream (a 10 Hz lidar) is never interpolated."""
    t0 = max(int(sig.t_ns.min()), int(ref.t_ns.min())) + max_lag_ns
    t1 = min(int(sig.t_ns.max()), int(ref.t_ns.max())) - max_lag_ns
    need_s = 4 * max_lag_ns * 1e-9 + 5.0
    if (t1 - t0) * 1e-9 + 2 * max_lag_ns * 1e-9 < need_s:
        raise TemporalCalibrationError(
            f"stream {sig.stream}: it overlaps the reference {ref.stream} for only "
            f"{max(0, t1 - t0 + 2 * max_lag_ns) * 1e-9:.1f} s; at least ~{need_s:.0f} s are "
            "needed (record longer, or lower --max-lag-ms)"
        )
    if sig.values.shape[1] != ref.values.shape[1]:
        sig, ref = sig.whole(), ref.whole()  # one of them is not resolved into tiles
    both = ~(np.isnan(sig.values).any(axis=0) | np.isnan(ref.values).any(axis=0))
    tiles = np.flatnonzero(both)
    if not len(tiles):
        raise TemporalCalibrationError(
            f"stream {sig.stream}: it sees nothing of what {ref.stream} sees (check the rig poses)"
        )
    # x_sig(m) = x_ref(m + d): reading the reference at t + d, or the stream at t - d.
    sparse_sig = _rate_hz(sig) <= _rate_hz(ref)
    sp, de = (sig, ref) if sparse_sig else (ref, sig)
    sign = 1 if sparse_sig else -1
    lo_ns, hi_ns = int(sp.t_ns.min()), int(sp.t_ns.max())
    dense = _Dense(
        de, tiles, min(lo_ns, int(de.t_ns.min())), max(hi_ns, int(de.t_ns.max())), highpass_s
    )
    keep = (sp.t_ns >= t0) & (sp.t_ns <= t1)
    dts = sp.dt_ns[tiles] if len(sp.dt_ns) > 1 else np.zeros(len(tiles), np.int64)
    inst = sp.t_ns[keep][:, None] + dts[None, :]
    own = _Dense(sp, tiles, lo_ns, hi_ns, highpass_s)
    x = sp.values[keep][:, tiles] - own.at(inst, own.baseline)
    power = float((x * x).sum())
    for s, p in ((sp, power), (de, float((dense.values**2).sum()))):
        if not p > 1e-12:
            raise TemporalCalibrationError(
                f"stream {s.stream}: its {s.kind} signal does not change over the recording "
                "(nothing moves or sounds in its view); record with motion in view of it"
            )
    coarse = np.arange(-max_lag_ns, max_lag_ns + 1, 5_000_000)
    prod, norm = _scores(x, inst, dense, coarse, sign)
    corr = prod.sum(axis=1) / np.sqrt(power * norm)
    kc = int(np.argmax(corr))
    fine = coarse[kc] + np.arange(-100, 101) * 100_000
    fprod, fnorm = _scores(x, inst, dense, fine, sign)
    fcorr = fprod.sum(axis=1) / np.sqrt(power * fnorm)
    k, value = _peak(fcorr)
    offset_ns = round(coarse[kc] + (k - 100) * 100_000)
    # Main lobe: out to where the correlation first falls below half the peak.
    lo = hi = kc
    while lo > 0 and corr[lo] > value / 2:
        lo -= 1
    while hi < len(corr) - 1 and corr[hi] > value / 2:
        hi += 1
    width = max(kc - lo, hi - kc, 1)
    side = np.concatenate([corr[: max(0, kc - 2 * width)], corr[kc + 2 * width + 1 :]])
    top = float(side.max()) if len(side) else 0.0
    ratio = value / top if top > 1e-9 else math.inf
    # Jackknife over blocks of time: the peak with each block left out.
    edges = np.linspace(0, fprod.shape[1], blocks + 1).round().astype(int)
    lags = []
    for j in range(blocks):
        part = np.concatenate([fprod[:, : edges[j]], fprod[:, edges[j + 1] :]], axis=1)
        lags.append(_peak(part.sum(axis=1))[0])
    la = np.asarray(lags) * 0.1
    spread_ms = math.sqrt((blocks - 1) / blocks * float(((la - la.mean()) ** 2).sum()))
    reasons = []
    if kc in (0, len(coarse) - 1):
        reasons.append("the peak is at the end of the lag range (raise --max-lag-ms)")
    if value < RELIABLE["min_peak"]:
        reasons.append(f"weak correlation ({value:.2f} < {RELIABLE['min_peak']})")
    if ratio < RELIABLE["min_sidelobe_ratio"]:
        reasons.append(f"ambiguous peak (side lobe ratio {ratio:.2f})")
    if spread_ms > RELIABLE["max_spread_ms"]:
        reasons.append(f"unstable over the recording (±{spread_ms:.1f} ms)")
    reason = ""
    if reasons:
        reason = (
            "; ".join(reasons)
            + f": record more distinct events seen (or heard) by both {sig.stream} and "
            f"{ref.stream}, or leave {sig.stream} out (--streams)"
        )
    conf = max(0.0, min(1.0, value)) * max(0.0, 1 - 1 / ratio) / (1 + spread_ms**2)
    return OffsetEstimate(
        stream=sig.stream,
        reference=ref.stream,
        offset_ns=offset_ns,
        peak=value,
        sidelobe_ratio=ratio,
        spread_ms=spread_ms,
        confidence=conf,
        reliable=not reasons,
        reason=reason,
    )


def estimate_offsets(
    signals: Mapping[str, Signal], reference: str, **kw: Any
) -> dict[str, OffsetEstimate]:
    """:func:`estimate_offset` of every signal but the reference's against it."""
    if reference not in signals:
        raise TemporalCalibrationError(
            f"reference stream {reference!r} is not among the streams ({', '.join(signals)})"
        )
    ref = signals[reference]
    return {n: estimate_offset(s, ref, **kw) for n, s in signals.items() if n != reference}


def apply_offsets(
    rig: RigCalibration,
    estimates: Sequence[OffsetEstimate],
    *,
    sensors: Mapping[str, str],
) -> RigCalibration:
    """``rig`` with each estimated stream's sensor ``time_offset_ns`` set to the reference
    sensor's plus the estimate (``sensors``: stream -> rig sensor)."""
    out = dict(rig.sensors)
    for e in estimates:
        ref = rig.sensor(sensors[e.reference]).time_offset_ns
        name = sensors[e.stream]
        out[name] = replace(rig.sensor(name), time_offset_ns=int(ref + e.offset_ns))
    return replace(rig, sensors=out)


def _pipeline_streams(
    pipeline: str | Path,
) -> tuple[dict[str, tuple[str, StreamConfig]], str, str]:
    """(stream -> (topic, config), reference, rig path) of a pipeline's aligner node; streams
    whose time the messages carry already (``clock: given``) are left out."""
    from edgefuse.sync.offline import aligner_from_pipeline

    cfg = aligner_from_pipeline(pipeline)
    streams = {
        port: (topic, cfg.params.streams[port])
        for topic, port in cfg.topics.items()
        if cfg.params.streams[port].clock != "given"
    }
    return streams, cfg.params.reference, cfg.params.rig


def add_time_action(actions: Any) -> None:
    """Add ``time`` to the ``calibrate`` verb's sub-parsers ``actions``."""
    p = actions.add_parser(
        "time",
        help="static time offsets between the streams of a recording (cross-correlation)",
        description="Estimate each stream's time_offset_ns relative to the reference from "
        "motion and sound in a recording (rig standing still, things moving in view), with "
        "the clock models and latencies of the pipeline's aligner; write them into the rig.",
    )
    p.add_argument("session", help="recorded session (.mcap)")
    p.add_argument("--reference", help="reference stream (default: the aligner's reference)")
    p.add_argument("--streams", help="comma-separated streams to calibrate (default: all)")
    p.add_argument("--max-lag-ms", type=float, default=500.0, help="largest offset searched")
    p.add_argument("--highpass-s", type=float, default=0.5, help="high-pass window (s)")
    p.add_argument(
        "--pipeline",
        help="pipeline whose aligner maps the stamps (topics, latency_ms, wrap_s; default: "
        "the one the session names, else pipelines/sim.yaml)",
    )
    p.add_argument("--rig", help="rig calibration to update (default: the aligner's rig)")
    p.add_argument("-o", "--out", help="write the updated rig here (default: --rig itself)")
    p.add_argument("--force", action="store_true", help="write unreliable offsets as well")
    p.add_argument("--dry-run", action="store_true", help="print only, write nothing")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(fn=_cmd_time)


def _cmd_time(args: Any) -> int:
    import json
    import sys

    from edgefuse.calib.model import find_calibration, load_calibration, save_calibration
    from edgefuse.record.session import SessionReader

    if args.max_lag_ms <= 0 or args.highpass_s <= 0:
        raise TemporalCalibrationError("--max-lag-ms and --highpass-s must be > 0")
    pipeline = args.pipeline
    if pipeline is None:
        with SessionReader(args.session) as r:
            named = r.metadata().get("session", {}).get("pipeline", "")
        pipeline = named if named and Path(named).is_file() else "pipelines/sim.yaml"
    streams, reference, rig_path = _pipeline_streams(find_calibration(pipeline))
    reference = args.reference or reference
    if args.streams:
        wanted = [s.strip() for s in args.streams.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in streams]
        if unknown:
            raise TemporalCalibrationError(
                f"--streams: {', '.join(unknown)} not in the aligner of {pipeline} "
                f"(it has {', '.join(streams)})"
            )
        streams = {n: streams[n] for n in streams if n in wanted or n == reference}
    if reference not in streams:
        raise TemporalCalibrationError(
            f"--reference {reference!r} is not a stream of the aligner in {pipeline} "
            f"(it has {', '.join(streams)})"
        )
    rig_file = args.rig or rig_path
    rig = load_calibration(find_calibration(rig_file)) if rig_file else None
    signals = session_signals(args.session, streams, rig=rig, reference=reference)
    est = estimate_offsets(
        signals,
        reference,
        max_lag_ns=round(args.max_lag_ms * 1e6),
        highpass_s=args.highpass_s,
    )
    sensors = {n: cfg.sensor or n for n, (_, cfg) in streams.items()}
    bad = [e for e in est.values() if not e.reliable]
    if args.json:
        print(
            json.dumps(
                {
                    "reference": reference,
                    "pipeline": str(pipeline),
                    "streams": [e.as_dict() for e in est.values()],
                }
            )
        )
    else:
        print(f"reference {reference} (pipeline {pipeline})")
        for e in est.values():
            flag = "ok" if e.reliable else "UNRELIABLE"
            print(
                f"  {e.stream:10s} {e.offset_ns * 1e-6:+9.3f} ms  confidence {e.confidence:.2f}"
                f"  (peak {e.peak:.2f}, side lobe x{e.sidelobe_ratio:.1f}, "
                f"±{e.spread_ms:.2f} ms)  {flag}"
            )
    for e in bad:
        print(f"edgefuse: warning: {e.stream}: {e.reason}", file=sys.stderr)
    if bad and not args.force:
        names = ", ".join(e.stream for e in bad)
        raise TemporalCalibrationError(
            f"unreliable offsets for {names}: nothing written (see the reasons above; "
            "--force writes them anyway)"
        )
    if args.dry_run or rig is None:
        if rig is None:
            print("no rig calibration (--rig): nothing written", file=sys.stderr)
        return 0
    missing = [s for s in sensors.values() if s not in rig.sensors]
    if missing:
        raise TemporalCalibrationError(
            f"rig {rig_file}: no sensor {', '.join(missing)}; add it or leave the stream out"
        )
    out = args.out or str(find_calibration(rig_file))
    save_calibration(apply_offsets(rig, list(est.values()), sensors=sensors), out)
    print(f"wrote {out}", file=sys.stderr)
    return 0
