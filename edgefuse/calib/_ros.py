"""ROS ``camera_info`` YAML (the file ``camera_calibration`` writes and ``camera_info_manager``
reads)::

    image_width: 640
    image_height: 480
    camera_name: narrow_stereo
    camera_matrix: {rows: 3, cols: 3, data: [fx, 0, cx, 0, fy, cy, 0, 0, 1]}
    distortion_model: plumb_bob        # or rational_polynomial (8), equidistant (fisheye, 4)
    distortion_coefficients: {rows: 1, cols: 5, data: [k1, k2, p1, p2, k3]}
    rectification_matrix: {rows: 3, cols: 3, data: [...]}   # R: camera -> rectified camera
    projection_matrix: {rows: 3, cols: 4, data: [...]}      # P: rectified camera -> pixels

It holds one camera and no pose; read into a rig it becomes one sensor at ``base_link``. A
camera without distortion is written as ``plumb_bob`` with no coefficients (ROS accepts an empty
``D``) and read back as ``none``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgefuse import config
from edgefuse.calib.formats import as_array, as_int, at, fail, intrinsics, need, pick_camera
from edgefuse.calib.model import (
    CameraIntrinsics,
    RigCalibration,
    SensorCalibration,
    matrix4,
)
from edgefuse.errors import ConfigError

_ROS_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")

Mat3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]
Mat34 = tuple[
    tuple[float, float, float, float],
    tuple[float, float, float, float],
    tuple[float, float, float, float],
]


@dataclass(frozen=True, kw_only=True)
class RosCameraInfo:
    """The content of a ``camera_info`` YAML: intrinsics plus the rectification of a stereo pair."""

    camera_name: str
    camera: CameraIntrinsics
    #: ``R``: rotation from the camera to its rectified frame (identity for a mono camera).
    rectification: Mat3 = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    #: ``P``: projection of the rectified frame; ``None`` means ``[K | 0]``.
    projection: Mat34 | None = None

    @property
    def P(self) -> np.ndarray:
        """The 3x4 projection matrix (``[K | 0]`` when none was given)."""
        if self.projection is not None:
            return np.array(self.projection, dtype=np.float64)
        return np.hstack([self.camera.K, np.zeros((3, 1))])


def _matrix(data: dict[str, Any], key: str, shape: tuple[int, int], src: str) -> np.ndarray:
    node = need(data, key, src)
    if not isinstance(node, dict):
        fail(src, key, "a mapping with rows, cols and data", node)
    rows = need(node, "rows", src, key + ".")
    cols = need(node, "cols", src, key + ".")
    if (rows, cols) != shape:
        fail(src, f"{key}.rows/cols", f"{shape[0]}x{shape[1]}", f"{rows}x{cols}")
    return as_array(need(node, "data", src, key + "."), shape, src, key + ".data")


def read_ros_camera_info(path: str | Path) -> RosCameraInfo:
    """Read a ROS ``camera_info`` YAML; ``ConfigError`` naming the file, line and key on errors."""
    data, source = config.load_yaml(path)
    src = str(path)
    if not isinstance(data, dict):
        fail(src, "(top level)", "a camera_info mapping", data)

    def where(key: str) -> str:
        return at(source, (key,))

    width = as_int(need(data, "image_width", src), where("image_width"), "image_width")
    height = as_int(need(data, "image_height", src), where("image_height"), "image_height")
    K = _matrix(data, "camera_matrix", (3, 3), where("camera_matrix"))
    model = data.get("distortion_model", "plumb_bob")
    if model not in _ROS_MODELS:
        fail(where("distortion_model"), "distortion_model", " or ".join(_ROS_MODELS), model)
    dnode = data.get("distortion_coefficients", {"rows": 1, "cols": 0, "data": []})
    dsrc = where("distortion_coefficients")
    if not isinstance(dnode, dict) or not isinstance(dnode.get("data"), list):
        fail(dsrc, "distortion_coefficients", "a mapping with rows, cols and data", dnode)
    D = as_array(dnode["data"], (len(dnode["data"]),), dsrc, "distortion_coefficients.data")
    if model == "plumb_bob" and len(D) == 0:
        model = "none"  # an empty D is how ROS says "no distortion"
    if model == "rational_polynomial" and len(D) > 8 and not D[8:].any():
        D = D[:8]  # some drivers pad to 14 (OpenCV's thin-prism/tilt terms, all zero)
    cam = intrinsics(K, D, model, width, height, dsrc, "distortion_coefficients")
    R = _matrix(data, "rectification_matrix", (3, 3), where("rectification_matrix"))
    P = _matrix(data, "projection_matrix", (3, 4), where("projection_matrix"))
    name = data.get("camera_name", "camera")
    if not isinstance(name, str):
        fail(where("camera_name"), "camera_name", "a string", name)
    return RosCameraInfo(
        camera_name=name,
        camera=cam,
        rectification=tuple(tuple(float(v) for v in r) for r in R),  # type: ignore[arg-type]
        projection=tuple(tuple(float(v) for v in r) for r in P),  # type: ignore[arg-type]
    )


def _block(arr: np.ndarray) -> dict[str, Any]:
    arr = np.atleast_2d(np.asarray(arr, dtype=np.float64))
    return {"rows": arr.shape[0], "cols": arr.shape[1], "data": [float(v) for v in arr.ravel()]}


def dump_ros_camera_info(info: RosCameraInfo) -> str:
    """The YAML text of ``info`` in the layout ROS tools write (floats round-trip exactly)."""
    cam = info.camera
    model = "plumb_bob" if cam.distortion_model == "none" else cam.distortion_model
    D = np.asarray(cam.distortion, dtype=np.float64).reshape(1, -1)
    data = {
        "image_width": cam.width,
        "image_height": cam.height,
        "camera_name": info.camera_name,
        "camera_matrix": _block(cam.K),
        "distortion_model": model,
        "distortion_coefficients": _block(D) if D.size else {"rows": 1, "cols": 0, "data": []},
        "rectification_matrix": _block(np.array(info.rectification)),
        "projection_matrix": _block(info.P),
    }
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def write_ros_camera_info(info: RosCameraInfo, path: str | Path) -> None:
    """Write ``info`` as a ROS ``camera_info`` YAML file."""
    Path(path).write_text(dump_ros_camera_info(info))


def ros_to_rig(info: RosCameraInfo, *, sensor: str = "camera") -> RigCalibration:
    """A one-camera rig from a ``camera_info``: the camera sits at ``base_link`` (the file has no
    pose) with frame ``<sensor>_optical`` and no time offset."""
    return RigCalibration(
        rig=info.camera_name,
        sensors={
            sensor: SensorCalibration(
                frame_id=f"{sensor}_optical",
                T_base_link_sensor=matrix4(np.eye(4)),
                camera=info.camera,
            )
        },
    )


def rig_to_ros(rig: RigCalibration, *, sensor: str | None = None) -> RosCameraInfo:
    """The ``camera_info`` of one camera of ``rig`` (mono: ``R = I``, ``P = [K | 0]``)."""
    name = pick_camera(rig, sensor, "a ROS camera_info file")
    cam = rig.sensors[name].camera
    if cam is None:  # pragma: no cover - pick_camera only returns cameras
        raise ConfigError(f"sensor {name!r} has no camera intrinsics")
    return RosCameraInfo(camera_name=name, camera=cam)
