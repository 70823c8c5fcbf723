"""The rig calibration model: per sensor its intrinsics, its pose on the rig and its time offset.

One file per rig, ``calibration/<rig>.yaml``::

    rig: sim_rig
    sensors:
      camera:
        frame_id: camera_optical
        T_base_link_sensor:          # 4x4, p_base_link = T · p_sensor (DESIGN.md, "Frames")
          - [0, 0, 1, 1.5]
          - [-1, 0, 0, 0]
          - [0, -1, 0, 1.5]
          - [0, 0, 0, 1]
        time_offset_ns: 5000000      # t_ns = clock-mapped stamp + this (e.g. mid-exposure)
        camera:
          width: 640
          height: 480
          camera_matrix: [[500, 0, 320], [0, 500, 240], [0, 0, 1]]
          distortion_model: plumb_bob
          distortion: [-0.05, 0.01, 0, 0, 0]
      lidar:
        frame_id: lidar
        T_base_link_sensor: ...
        lidar: {beam_elevations_deg: [...], azimuth_steps: 1024, range_min_m: 0.5, range_max_m: 100}

Readers for other formats (ROS ``camera_info``, Kalibr, OpenCV FileStorage, KITTI) convert into
this model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from edgefuse import config
from edgefuse.errors import ConfigError

_N_DIST = {"none": 0, "plumb_bob": 5, "rational_polynomial": 8, "equidistant": 4}

Matrix4 = tuple[
    tuple[float, float, float, float],
    tuple[float, float, float, float],
    tuple[float, float, float, float],
    tuple[float, float, float, float],
]


@dataclass(frozen=True, kw_only=True)
class CameraIntrinsics:
    """A camera's (or depth camera's) projection: pinhole matrix, distortion and resolution."""

    width: int
    height: int
    camera_matrix: tuple[
        tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]
    ]
    #: ``plumb_bob`` (k1 k2 p1 p2 k3), ``rational_polynomial`` (k1 k2 p1 p2 k3 k4 k5 k6),
    #: ``equidistant`` (fisheye k1..k4) or ``none``.
    distortion_model: Literal["none", "plumb_bob", "rational_polynomial", "equidistant"] = "none"
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"resolution must be positive, got {self.width}x{self.height}")
        K = self.K
        if K[0, 0] <= 0 or K[1, 1] <= 0 or K[2, 2] != 1 or K[1, 0] or K[2, 0] or K[2, 1]:
            raise ValueError(f"camera_matrix is not [[fx,s,cx],[0,fy,cy],[0,0,1]]: {K.tolist()}")
        n = _N_DIST[self.distortion_model]
        if len(self.distortion) not in (0, n):
            raise ValueError(
                f"distortion_model {self.distortion_model} takes {n} coefficients, "
                f"got {len(self.distortion)}"
            )

    @property
    def K(self) -> np.ndarray:
        """The 3x3 camera matrix (float64)."""
        return np.array(self.camera_matrix, dtype=np.float64)

    @property
    def D(self) -> np.ndarray:
        """Distortion coefficients in OpenCV order (zeros when there is none)."""
        n = _N_DIST[self.distortion_model]
        return np.array(self.distortion or [0.0] * n, dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class LidarIntrinsics:
    """A spinning lidar's beam layout and range."""

    #: Elevation of each beam (ring 0 first), degrees, positive up.
    beam_elevations_deg: tuple[float, ...]
    azimuth_steps: int = 1024
    range_min_m: float = 0.5
    range_max_m: float = 100.0

    def __post_init__(self) -> None:
        if not self.beam_elevations_deg:
            raise ValueError("beam_elevations_deg is empty")
        if self.azimuth_steps < 4:
            raise ValueError(f"azimuth_steps must be >= 4, got {self.azimuth_steps}")
        if not 0 <= self.range_min_m < self.range_max_m:
            raise ValueError(
                f"need 0 <= range_min_m < range_max_m, got {self.range_min_m}, {self.range_max_m}"
            )


@dataclass(frozen=True, kw_only=True)
class SensorCalibration:
    """One sensor of a rig: its frame, pose on the rig, time offset and intrinsics."""

    frame_id: str
    T_base_link_sensor: Matrix4
    #: Added to the clock-mapped stamp to get the time the measurement describes.
    time_offset_ns: int = 0
    camera: CameraIntrinsics | None = None
    lidar: LidarIntrinsics | None = None

    def __post_init__(self) -> None:
        T = self.T
        R = T[:3, :3]
        if not np.allclose(T[3], [0, 0, 0, 1]):
            raise ValueError(f"T_base_link_sensor: last row must be [0, 0, 0, 1], got {T[3]}")
        if not (np.allclose(R @ R.T, np.eye(3), atol=1e-6) and np.linalg.det(R) > 0):
            raise ValueError("T_base_link_sensor: the 3x3 block is not a rotation")

    @property
    def T(self) -> np.ndarray:
        """``T_base_link_<frame_id>`` as a 4x4 float64 array."""
        return np.array(self.T_base_link_sensor, dtype=np.float64)


@dataclass(frozen=True, kw_only=True)
class RigCalibration:
    """Every sensor of one rig, by sensor name."""

    rig: str
    sensors: dict[str, SensorCalibration] = field(default_factory=dict)

    def sensor(self, name: str) -> SensorCalibration:
        """The calibration of sensor ``name``; ``ConfigError`` listing the known ones."""
        try:
            return self.sensors[name]
        except KeyError:
            known = ", ".join(sorted(self.sensors)) or "none"
            raise ConfigError(f"rig {self.rig!r} has no sensor {name!r}; it has: {known}") from None

    def T(self, to: str, frm: str) -> np.ndarray:
        """``T_<to>_<frm>`` between two sensors (or ``base_link``) of the rig, 4x4 float64."""
        T_b_to = np.eye(4) if to == "base_link" else self.sensor(to).T
        T_b_frm = np.eye(4) if frm == "base_link" else self.sensor(frm).T
        return np.asarray(np.linalg.inv(T_b_to) @ T_b_frm)


def find_calibration(path: str | Path) -> Path:
    """Find a rig calibration file: as given (absolute, or relative to the working directory),
    else relative to the edgefuse checkout (``calibration/sim_rig.yaml`` works from anywhere
    in a source install). Raises ``ConfigError`` naming both places looked at."""
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    repo = Path(__file__).resolve().parents[2] / p
    if repo.exists():
        return repo
    raise ConfigError(
        f"rig calibration {str(path)!r} not found (relative to {Path.cwd()} or {repo})"
    )


def load_calibration(path: str | Path) -> RigCalibration:
    """Read ``calibration/<rig>.yaml``; ``ConfigError`` naming the file, line and key on errors."""
    data, src = config.load_yaml(path)
    return config.build(RigCalibration, data, src=src)


def dump_calibration(cal: RigCalibration) -> str:
    """The YAML text of ``cal`` (4x4 matrices one row per line, floats exactly round-tripped)."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items() if v is not None}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    data = plain(asdict(cal))
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def save_calibration(cal: RigCalibration, path: str | Path) -> None:
    """Write ``cal`` to ``path`` (see :func:`dump_calibration`)."""
    Path(path).write_text(dump_calibration(cal))


def matrix4(T: np.ndarray) -> Matrix4:
    """A 4x4 array as the nested tuple the model stores (rounded to 1e-12 to drop float dust)."""
    rows = [tuple(float(round(v, 12)) + 0.0 for v in row) for row in np.asarray(T, np.float64)]
    return tuple(rows)  # type: ignore[return-value]
