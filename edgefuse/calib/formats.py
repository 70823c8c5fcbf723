"""Calibration file formats: read any supported file into the rig model, write the model back.

Formats (one module each):

- ``edgefuse``: the rig model's own YAML (:mod:`edgefuse.calib.model`).
- ``ros``: a ROS ``camera_info`` YAML (one camera; :mod:`edgefuse.calib._ros`).
- ``kalibr``: a Kalibr camchain YAML (cameras, ``T_cam_imu``, ``T_cn_cnm1``,
  ``timeshift_cam_imu``; :mod:`edgefuse.calib._kalibr`).
- ``opencv``: an OpenCV FileStorage YAML (``%YAML:1.0``, ``!!opencv-matrix``, written and read
  with ``cv2.FileStorage``; :mod:`edgefuse.calib._opencv`).
- ``kitti``: KITTI object calib (``P0..P3``, ``R0_rect``, ``Tr_velo_to_cam``, ``Tr_imu_to_velo``)
  and ``kitti-raw`` (a folder with ``calib_cam_to_cam.txt``, ``calib_velo_to_cam.txt``,
  ``calib_imu_to_velo.txt``; :mod:`edgefuse.calib._kitti`).

Every reader raises :class:`~edgefuse.errors.ConfigError` naming the file, the key and what was
expected. Transforms follow DESIGN.md: ``T_<to>_<from>``, ``p_to = T · p_from``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from edgefuse.calib.model import (
    CameraIntrinsics,
    RigCalibration,
    load_calibration,
    save_calibration,
)
from edgefuse.errors import ConfigError

FORMATS = ("edgefuse", "ros", "kalibr", "opencv", "kitti", "kitti-raw")


def at(source: Any, path: tuple[Any, ...]) -> str:
    """``file:line`` of a key path in a :class:`edgefuse.config.Source` (``file`` if unknown)."""
    line = source.lines.get(path)
    return f"{source.file}:{line}" if line else str(source.file)


def fail(src: str, key: str, expected: str, got: Any = ...) -> NoReturn:
    """Raise ``ConfigError`` as ``FILE: KEY: expected WHAT[, got VALUE]``."""
    tail = "" if got is ... else f", got {_short(got)}"
    raise ConfigError(f"{src}: {key}: expected {expected}{tail}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def need(data: Mapping[str, Any], key: str, src: str, prefix: str = "") -> Any:
    """``data[key]`` or a ``ConfigError`` naming the file and the missing key."""
    if not isinstance(data, Mapping):
        fail(src, prefix.rstrip(".") or "(top level)", "a mapping", data)
    if key not in data:
        fail(src, prefix + key, "this key (missing)")
    return data[key]


def as_array(value: Any, shape: tuple[int, ...], src: str, key: str) -> np.ndarray:
    """``value`` (nested lists or flat list) as a float64 array of ``shape``, or a clear error."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        fail(src, key, f"numbers forming a {'x'.join(map(str, shape))} matrix", value)
    if arr.size != int(np.prod(shape)):
        fail(src, key, f"{int(np.prod(shape))} numbers ({'x'.join(map(str, shape))})", value)
    if not np.all(np.isfinite(arr)):
        fail(src, key, "finite numbers", value)
    return arr.reshape(shape)


def as_int(value: Any, src: str, key: str) -> int:
    """A positive integer (floats that are whole numbers are accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        fail(src, key, "an integer", value)
    if int(value) <= 0:
        fail(src, key, "a positive integer", value)
    return int(value)


def intrinsics(
    K: np.ndarray,
    D: Sequence[float] | np.ndarray,
    model: str,
    width: int,
    height: int,
    src: str,
    key: str,
) -> CameraIntrinsics:
    """Build :class:`CameraIntrinsics`, turning its validation errors into file/key errors."""
    try:
        return CameraIntrinsics(
            width=width,
            height=height,
            camera_matrix=tuple(tuple(float(v) for v in row) for row in K),  # type: ignore[arg-type]
            distortion_model=model,  # type: ignore[arg-type]
            distortion=tuple(float(v) for v in np.asarray(D, dtype=np.float64).ravel()),
        )
    except ValueError as exc:
        raise ConfigError(f"{src}: {key}: {exc}") from None


def rigid(T: np.ndarray, src: str, key: str) -> np.ndarray:
    """Check that ``T`` is a rigid 4x4 transform (rotation + translation); return it."""
    R = T[:3, :3]
    if not (np.allclose(R @ R.T, np.eye(3), atol=1e-5) and np.linalg.det(R) > 0):
        fail(src, key, "a rotation in the upper-left 3x3 block", T.tolist())
    if not np.allclose(T[3], [0, 0, 0, 1]):
        fail(src, key, "last row [0, 0, 0, 1]", T[3].tolist())
    return T


def orthonormalize(T: np.ndarray) -> np.ndarray:
    """Project the rotation block of ``T`` onto SO(3) (files print 7 digits; the model checks
    orthonormality to 1e-6)."""
    U, _, Vt = np.linalg.svd(T[:3, :3])
    out = np.array(T, dtype=np.float64)
    out[:3, :3] = U @ Vt
    out[3] = [0, 0, 0, 1]
    return out


def inv(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (exact transpose of the rotation)."""
    out = np.eye(4)
    R = T[:3, :3]
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ T[:3, 3]
    return out


def guess_format(path: str | Path) -> str:
    """The format of an existing file or folder, from its name and first bytes."""
    p = Path(path)
    if p.is_dir():
        if (p / "calib_cam_to_cam.txt").exists():
            return "kitti-raw"
        raise ConfigError(f"{p}: a folder, but no calib_cam_to_cam.txt in it (KITTI raw)")
    if p.name.startswith("calib_") and p.name.endswith("_to_cam.txt"):
        return "kitti-raw"
    if p.suffix == ".txt":
        return "kitti"
    if p.suffix in (".xml", ".json"):
        return "opencv"
    try:
        head = p.read_text(errors="replace")[:4096]
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    if head.startswith("%YAML:1.0") or "!!opencv-matrix" in head:
        return "opencv"
    if "camera_matrix:" in head and "image_width:" in head:
        return "ros"
    if "intrinsics:" in head and ("cam0:" in head or "camera_model:" in head):
        return "kalibr"
    if "sensors:" in head:
        return "edgefuse"
    raise ConfigError(
        f"{p}: cannot tell the calibration format from the name or content; "
        f"pass one of: {', '.join(FORMATS)}"
    )


def format_for_output(path: str | Path) -> str:
    """The format to write ``path`` in when none is given: ``.txt`` KITTI, ``.xml``/``.json``
    OpenCV, anything else the edgefuse rig YAML."""
    p = Path(path)
    if p.suffix == ".txt":
        return "kitti"
    if p.suffix in (".xml", ".json"):
        return "opencv"
    if p.suffix == "" and (p.is_dir() or not p.exists()) and "kitti" in p.name.lower():
        return "kitti-raw"
    return "edgefuse"


def read_rig(
    path: str | Path,
    fmt: str | None = None,
    *,
    sensor: str = "camera",
    image_size: tuple[int, int] | None = None,
) -> RigCalibration:
    """Read a calibration file of any supported format as a :class:`RigCalibration`.

    ``fmt`` defaults to :func:`guess_format`; ``sensor`` names the camera of one-camera formats
    (ROS); ``image_size`` (width, height) is needed by KITTI object files, which carry no
    resolution (by default it is read from the matching ``image_2`` picture when there is one).
    """
    fmt = fmt or guess_format(path)
    if fmt == "edgefuse":
        return load_calibration(path)
    if fmt == "ros":
        from edgefuse.calib import _ros

        return _ros.ros_to_rig(_ros.read_ros_camera_info(path), sensor=sensor)
    if fmt == "kalibr":
        from edgefuse.calib import _kalibr

        return _kalibr.read_kalibr(path)
    if fmt == "opencv":
        from edgefuse.calib import _opencv

        return _opencv.read_opencv(path)
    if fmt == "kitti":
        from edgefuse.calib import _kitti

        return _kitti.read_kitti_object(path, image_size=image_size)
    if fmt == "kitti-raw":
        from edgefuse.calib import _kitti

        return _kitti.read_kitti_raw(path)
    raise ConfigError(f"unknown calibration format {fmt!r}; expected one of: {', '.join(FORMATS)}")


def write_rig(
    rig: RigCalibration, path: str | Path, fmt: str | None = None, *, sensor: str | None = None
) -> list[Path]:
    """Write ``rig`` to ``path`` in format ``fmt`` (default from the name, see
    :func:`format_for_output`); ``sensor`` picks the camera for one-camera formats (ROS; default
    the rig's only camera). Returns the files written."""
    fmt = fmt or format_for_output(path)
    p = Path(path)
    if fmt == "edgefuse":
        save_calibration(rig, p)
        return [p]
    if fmt == "ros":
        from edgefuse.calib import _ros

        _ros.write_ros_camera_info(_ros.rig_to_ros(rig, sensor=sensor), p)
        return [p]
    if fmt == "kalibr":
        from edgefuse.calib import _kalibr

        _kalibr.write_kalibr(rig, p)
        return [p]
    if fmt == "opencv":
        from edgefuse.calib import _opencv

        _opencv.write_opencv(rig, p)
        return [p]
    if fmt == "kitti":
        from edgefuse.calib import _kitti

        _kitti.write_kitti_object(rig, p)
        return [p]
    if fmt == "kitti-raw":
        from edgefuse.calib import _kitti

        return _kitti.write_kitti_raw(rig, p)
    raise ConfigError(f"unknown calibration format {fmt!r}; expected one of: {', '.join(FORMATS)}")


def camera_sensors(rig: RigCalibration) -> list[str]:
    """Names of the rig's sensors that have camera intrinsics, in file order."""
    return [name for name, s in rig.sensors.items() if s.camera is not None]


def pick_camera(rig: RigCalibration, sensor: str | None, what: str) -> str:
    """The camera sensor to write to a one-camera format: ``sensor`` or the only camera."""
    cams = camera_sensors(rig)
    if sensor is not None:
        if sensor not in cams:
            raise ConfigError(
                f"{what}: rig {rig.rig!r} has no camera {sensor!r}; cameras: {', '.join(cams)}"
            )
        return sensor
    if len(cams) != 1:
        raise ConfigError(
            f"{what} holds one camera and rig {rig.rig!r} has {len(cams)} "
            f"({', '.join(cams) or 'none'}); choose one with --sensor"
        )
    return cams[0]
