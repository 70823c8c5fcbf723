"""From an aligned set to the network's fixed-size inputs: numpy and OpenCV only.

Training (``edgefuse.model``) and inference (``edgefuse.runtime``) call this one module, so the
network sees the same numbers in both. The graph starts at fixed-shape float32 tensors:

- ``camera`` (1, 3, H, W): the colour image resized (area) to ``camera_hw``, RGB in 0..1.
- ``depth`` (1, 3, X, Y): the depth image lifted to points with the depth camera's intrinsics
  and extrinsics (pseudo-lidar) and binned on the bird's-eye-view (BEV) grid: log point count
  above the ground, highest point, log ground-point count.
- ``lidar`` (1, 4, X, Y): the sweep in ``base_link`` binned on the same grid: log point count
  above the ground, highest point, mean intensity, log ground-point count.
- ``audio`` (1, 1, M, T): the log-mel spectrogram of the window (mono), in dB scaled to ~0..1.
- ``mask`` (1, 4): 1 for each modality present in the set, in :data:`MODALITIES` order; an
  absent modality's tensor is all zeros.

The BEV grid is ``base_link`` seen from above: row ``i`` is ``x = x_min + (i + 0.5) cell``
(forward), column ``j`` is ``y = y_min + (j + 0.5) cell`` (left). Binning happens here rather
than in the graph because scatter-adds are cheap in numpy and awkward for TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from edgefuse.calib.model import RigCalibration, SensorCalibration
from edgefuse.sync.aligned_set import AlignedSet

#: The modalities of the network, in the order of the ``mask`` input.
MODALITIES = ("camera", "depth", "lidar", "audio")
#: Points lower than this above the ground plane (m) count as ground.
GROUND_Z_M = 0.2


@dataclass(frozen=True, kw_only=True)
class FeatureSpec:
    """Shapes and scales of the network inputs (stored in the model's metadata)."""

    bev_x_m: tuple[float, float] = (0.0, 40.0)
    bev_y_m: tuple[float, float] = (-20.0, 20.0)
    bev_cell_m: float = 0.5
    #: Heights are scaled by this (m) so a typical object is ~0.5.
    height_scale_m: float = 3.0
    #: Camera input (height, width).
    camera_hw: tuple[int, int] = (96, 128)
    #: Every ``depth_stride``-th depth pixel in each direction is lifted.
    depth_stride: int = 2
    audio_rate_hz: int = 16000
    audio_window_s: float = 1.0
    audio_n_fft: int = 512
    audio_hop: int = 160
    audio_mels: int = 64
    audio_fmin_hz: float = 30.0
    audio_fmax_hz: float = 8000.0

    def __post_init__(self) -> None:
        for name in ("bev_x_m", "bev_y_m"):
            lo, hi = getattr(self, name)
            if not hi > lo:
                raise ValueError(f"{name} must be (min, max) with max > min, got {(lo, hi)}")
        if self.bev_cell_m <= 0:
            raise ValueError(f"bev_cell_m must be > 0, got {self.bev_cell_m}")

    @property
    def bev_shape(self) -> tuple[int, int]:
        """Rows (x) and columns (y) of the BEV input grid."""
        return (
            round((self.bev_x_m[1] - self.bev_x_m[0]) / self.bev_cell_m),
            round((self.bev_y_m[1] - self.bev_y_m[0]) / self.bev_cell_m),
        )

    @property
    def audio_samples(self) -> int:
        """Samples in the audio window."""
        return round(self.audio_rate_hz * self.audio_window_s)

    @property
    def audio_frames(self) -> int:
        """Spectrogram frames of the audio window."""
        return 1 + (self.audio_samples - self.audio_n_fft) // self.audio_hop

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every network input (batch 1)."""
        x, y = self.bev_shape
        return {
            "camera": (1, 3, *self.camera_hw),
            "depth": (1, 3, x, y),
            "lidar": (1, 4, x, y),
            "audio": (1, 1, self.audio_mels, self.audio_frames),
            "mask": (1, len(MODALITIES)),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for model metadata)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of :meth:`to_dict` (unknown keys are an error)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"unknown feature spec keys {sorted(unknown)}; expected {sorted(known)}"
            )
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)


def mel_filterbank(spec: FeatureSpec) -> np.ndarray:
    """(mels, n_fft // 2 + 1) triangular filters on the HTK mel scale, each of unit area."""
    n_bins = spec.audio_n_fft // 2 + 1

    def mel(f: np.ndarray | float) -> np.ndarray:
        return np.asarray(2595.0 * np.log10(1.0 + np.asarray(f) / 700.0))

    edges_mel = np.linspace(mel(spec.audio_fmin_hz), mel(spec.audio_fmax_hz), spec.audio_mels + 2)
    edges_hz = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.linspace(0.0, spec.audio_rate_hz / 2, n_bins)
    fb = np.zeros((spec.audio_mels, n_bins))
    for m in range(spec.audio_mels):
        lo, c, hi = edges_hz[m : m + 3]
        up = (freqs - lo) / (c - lo)
        down = (hi - freqs) / (hi - c)
        fb[m] = np.maximum(0.0, np.minimum(up, down))
        area = fb[m].sum()
        if area > 0:
            fb[m] /= area
    return fb


@dataclass
class Preprocessor:
    """Turns aligned sets (or their raw arrays) into network inputs for one rig."""

    rig: RigCalibration
    spec: FeatureSpec = field(default_factory=FeatureSpec)
    #: Aligned-set stream -> rig sensor and modality (the default pipeline's names).
    streams: dict[str, str] = field(
        default_factory=lambda: {
            "camera": "camera",
            "depth": "depth",
            "lidar": "lidar",
            "mic": "audio",
        }
    )

    def __post_init__(self) -> None:
        self._by_modality = {m: s for s, m in self.streams.items()}
        unknown = set(self.streams.values()) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; expected {MODALITIES}")
        self._mel = mel_filterbank(self.spec).astype(np.float32)
        self._window = np.hanning(self.spec.audio_n_fft + 1)[:-1].astype(np.float32)
        self._depth_rays: np.ndarray | None = None
        self._depth_rays_shape: tuple[int, ...] = ()
        self._depth_cal: SensorCalibration | None = None

    # --- whole sets ----------------------------------------------------------------------
    def __call__(self, aligned: AlignedSet) -> dict[str, np.ndarray]:
        """The network inputs of one set (absent modalities zero, ``mask`` saying which)."""
        raw: dict[str, Any] = {}
        for stream, modality in self.streams.items():
            m = aligned.members.get(stream)
            if m is None or not m.present:
                continue
            if modality == "depth":
                raw[modality] = (
                    m.arrays[0],
                    float(m.info.get("meta", {}).get("depth_scale_m", 1e-3)),
                )
            else:
                raw[modality] = m.arrays[0]
        return self.inputs(raw)

    def inputs(self, raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Network inputs from raw payloads by modality: ``camera`` bgr8 image, ``depth``
        (z16 image, depth scale m), ``lidar`` (N, >=4) x, y, z, intensity in the lidar frame,
        ``audio`` (n, channels) int16 window. Missing keys are absent modalities."""
        shapes = self.spec.input_shapes()
        out = {k: np.zeros(v, np.float32) for k, v in shapes.items()}
        for i, modality in enumerate(MODALITIES):
            if modality not in raw or raw[modality] is None:
                continue
            if modality == "camera":
                out["camera"][0] = self.camera(raw["camera"])
            elif modality == "depth":
                img, scale = raw["depth"]
                out["depth"][0] = self.depth(img, depth_scale_m=scale)
            elif modality == "lidar":
                out["lidar"][0] = self.lidar(raw["lidar"])
            else:
                out["audio"][0] = self.audio(raw["audio"])
            out["mask"][0, i] = 1.0
        return out

    # --- one modality each ---------------------------------------------------------------
    def camera(self, bgr: np.ndarray) -> np.ndarray:
        """(3, H, W) RGB in 0..1 from a bgr8 image of any size."""
        if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            raise ValueError(
                f"camera: expected an (H, W, 3) uint8 image, got {bgr.shape} {bgr.dtype}"
            )
        h, w = self.spec.camera_hw
        small = cv2.resize(np.ascontiguousarray(bgr), (w, h), interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(small[..., ::-1].transpose(2, 0, 1), np.float32) / 255.0

    def depth(self, z16: np.ndarray, *, depth_scale_m: float = 1e-3) -> np.ndarray:
        """(3, X, Y) BEV grid of the depth image's points (see the module docstring)."""
        if z16.ndim != 2 or z16.dtype != np.uint16:
            raise ValueError(f"depth: expected an (H, W) uint16 image, got {z16.shape} {z16.dtype}")
        rays = self._rays(z16.shape)
        s = self.spec.depth_stride
        z = z16[::s, ::s].astype(np.float32).ravel() * depth_scale_m
        ok = z > 0
        pts = rays[ok] * z[ok, None]  # base_link, relative to the sensor origin
        cal = self._depth_cal
        assert cal is not None
        pts = pts + cal.T[:3, 3].astype(np.float32)
        cells = _BevCells(self.spec, pts)
        grid = np.zeros((3, *self.spec.bev_shape), np.float32)
        grid[0] = np.log1p(cells.count_above)
        grid[1] = cells.max_height_above(self.spec.height_scale_m)
        grid[2] = np.log1p(cells.count_below)
        return grid

    def lidar(self, points: np.ndarray) -> np.ndarray:
        """(4, X, Y) BEV grid of a sweep given in the lidar frame (x, y, z, intensity, ...)."""
        if points.ndim != 2 or points.shape[1] < 4:
            raise ValueError(f"lidar: expected (N, >=4) points, got shape {points.shape}")
        T = self.rig.sensor(self._by_modality.get("lidar", "lidar")).T.astype(np.float32)
        xyz = points[:, :3].astype(np.float32) @ T[:3, :3].T + T[:3, 3]
        # Velodyne-style intensity is a byte (0..255).
        intensity = points[:, 3].astype(np.float32) / 255.0
        cells = _BevCells(self.spec, xyz)
        grid = np.zeros((4, *self.spec.bev_shape), np.float32)
        n = cells.count_above
        grid[0] = np.log1p(n)
        grid[1] = cells.max_height_above(self.spec.height_scale_m)
        total = cells.sum_above(intensity)
        grid[2] = np.where(n > 0, total / np.maximum(n, 1), 0.0)
        grid[3] = np.log1p(cells.count_below)
        return grid

    def audio(self, window: np.ndarray) -> np.ndarray:
        """(1, M, T) log-mel spectrogram of an int16 window (n,) or (n, channels), mono mixed;
        a shorter window is zero-padded at the start, a longer one keeps its last samples."""
        x = np.asarray(window)
        if x.dtype != np.int16:
            raise ValueError(f"audio: expected int16 samples (s16le), got {x.dtype}")
        if x.ndim == 2:
            x = x.astype(np.float32).mean(axis=1)
        elif x.ndim != 1:
            raise ValueError(f"audio: expected (n,) or (n, channels) samples, got {x.shape}")
        x = x.astype(np.float32) / 32768.0
        n = self.spec.audio_samples
        if len(x) < n:
            x = np.concatenate([np.zeros(n - len(x), np.float32), x])
        x = x[-n:]
        hop, n_fft = self.spec.audio_hop, self.spec.audio_n_fft
        frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][: self.spec.audio_frames]
        power = np.abs(np.fft.rfft(frames * self._window, axis=1)) ** 2  # (T, bins)
        mel = power.astype(np.float32) @ self._mel.T  # (T, M)
        db = 10.0 * np.log10(mel + 1e-12)
        # Unnormalised FFT power: a full-scale tone peaks near +39 dB, the simulated background
        # (0.004 RMS) sits near -26 dB, silence at -120: that maps to about -0.3..2.3, and the
        # encoder's first normalisation layer takes it from there.
        out: np.ndarray = ((db.T + 100.0) / 60.0)[None].astype(np.float32)
        return out

    # --- helpers --------------------------------------------------------------------------
    def _rays(self, shape: tuple[int, ...]) -> np.ndarray:
        # Unit-depth rays of the sampled pixels, rotated into base_link (cached per image size).
        if self._depth_rays is not None and self._depth_rays_shape == shape:
            return self._depth_rays
        cal = self.rig.sensor(self._by_modality.get("depth", "depth"))
        if cal.camera is None:
            raise ValueError(f"depth sensor {cal.frame_id} has no intrinsics in the rig")
        cam = cal.camera
        h, w = shape
        if (w, h) != (cam.width, cam.height):
            raise ValueError(
                f"depth: image is {w}x{h} but the rig calibrates {cam.width}x{cam.height}"
            )
        s = self.spec.depth_stride
        v, u = np.mgrid[0:h:s, 0:w:s].astype(np.float64)
        xy = cv2.undistortPoints(
            np.stack([u.ravel(), v.ravel()], -1).reshape(-1, 1, 2), cam.K, cam.D
        ).reshape(-1, 2)
        rays = np.c_[xy, np.ones(len(xy))] @ cal.T[:3, :3].T
        self._depth_rays = rays.astype(np.float32)
        self._depth_rays_shape = shape
        self._depth_cal = cal
        return self._depth_rays


class _BevCells:
    """The BEV cell of each point, computed once per cloud: point counts above and below
    :data:`GROUND_Z_M`, the highest point and per-cell sums above it (the depth and lidar
    grids used to bin the same points three or four times)."""

    __slots__ = ("_above", "_idx", "_keep", "_size", "count_above", "count_below", "shape", "z")

    def __init__(self, spec: FeatureSpec, xyz: np.ndarray) -> None:
        rows, cols = self.shape = spec.bev_shape
        i = np.floor((xyz[:, 0] - spec.bev_x_m[0]) / spec.bev_cell_m).astype(np.int64)
        j = np.floor((xyz[:, 1] - spec.bev_y_m[0]) / spec.bev_cell_m).astype(np.int64)
        self._keep = (i >= 0) & (i < rows) & (j >= 0) & (j < cols)
        idx = i[self._keep] * cols + j[self._keep]
        self.z = xyz[self._keep, 2]
        self._above = self.z >= GROUND_Z_M
        self._idx = idx[self._above]
        self._size = rows * cols
        self.count_above = self._bincount(self._idx)
        self.count_below = self._bincount(idx[~self._above])

    def _bincount(self, idx: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        out = np.bincount(idx, weights=weights, minlength=self._size).reshape(self.shape)
        return out if weights is not None else out.astype(np.float32)

    def max_height_above(self, height_scale_m: float) -> np.ndarray:
        """Per cell, the highest point above the ground over ``height_scale_m`` (0: none)."""
        top = np.zeros(self._size, np.float32)
        np.maximum.at(top, self._idx, np.clip(self.z[self._above], 0.0, None) / height_scale_m)
        return top.reshape(self.shape)

    def sum_above(self, values: np.ndarray) -> np.ndarray:
        """Per cell, the sum of ``values`` (one per input point) over the points above."""
        return self._bincount(self._idx, values[self._keep][self._above])
