"""OpenCV FileStorage YAML (``%YAML:1.0`` from OpenCV 4, ``%YAML 1.2`` from OpenCV 5, matrices
as ``!!opencv-matrix``), written and read with ``cv2.FileStorage`` so that any OpenCV program
reads what edgefuse writes. The layout edgefuse writes, one map per sensor::

    rig: sim_rig
    camera:
       frame_id: camera_optical
       time_offset_ns: 5000000.          # a real: FileStorage integers are 32-bit
       T_base_link_sensor: !!opencv-matrix {rows: 4, cols: 4, dt: d, data: [...]}
       image_width: 640
       image_height: 480
       distortion_model: plumb_bob
       camera_matrix: !!opencv-matrix ...
       distortion_coefficients: !!opencv-matrix ...
    lidar:
       frame_id: lidar
       T_base_link_sensor: ...
       beam_elevations_deg: !!opencv-matrix ...
       azimuth_steps: 1024
       range_min_m: 0.8
       range_max_m: 100.

Also read: the flat single-camera layout of OpenCV's calibration sample (``camera_matrix``,
``distortion_coefficients``, ``image_width``, ``image_height`` at the top level) and the stereo
layout (``M1 D1 M2 D2 R T``, ``R``/``T`` mapping camera 1 to camera 2, with ``image_width`` and
``image_height``), which become sensors ``left`` and ``right``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edgefuse.calib.formats import fail, intrinsics, inv, orthonormalize, rigid
from edgefuse.calib.model import (
    CameraIntrinsics,
    LidarIntrinsics,
    RigCalibration,
    SensorCalibration,
    matrix4,
)
from edgefuse.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_N_DIST = {5: "plumb_bob", 8: "rational_polynomial", 4: "equidistant", 0: "none"}


def _open(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: cannot read: no such file")
    try:
        fs = cv2.FileStorage(str(p), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError) as exc:
        msg = str(getattr(exc, "__cause__", None) or exc).strip().splitlines()[-1]
        raise ConfigError(f"{p}: not an OpenCV FileStorage file: {msg}") from None
    if not fs.isOpened():
        raise ConfigError(f"{p}: not an OpenCV FileStorage file")
    return fs


def _mat(node: Any, key: str, shape: tuple[int, ...] | None, src: str) -> np.ndarray:
    n = node.getNode(key)
    if n.empty():
        fail(src, key, "this key (missing)")
    if not n.isMap() and not n.isSeq():
        fail(src, key, "an !!opencv-matrix")
    m = n.mat()
    arr = np.zeros((1, 0)) if m is None else np.asarray(m, dtype=np.float64)
    if shape is not None and arr.size != int(np.prod(shape)):
        fail(src, key, f"a {'x'.join(map(str, shape))} matrix", f"{arr.shape[0]}x{arr.shape[1]}")
    return arr if shape is None else arr.reshape(shape)


def _num(node: Any, key: str, src: str, default: float | None = None) -> float:
    n = node.getNode(key)
    if n.empty():
        if default is not None:
            return default
        fail(src, key, "this key (missing)")
    if not (n.isReal() or n.isInt()):
        fail(src, key, "a number")
    return float(n.real())


def _str(node: Any, key: str, src: str, default: str) -> str:
    n = node.getNode(key)
    if n.empty():
        return default
    if not n.isString():
        fail(src, key, "a string")
    return str(n.string())


def _camera(node: Any, src: str, prefix: str) -> CameraIntrinsics:
    K = _mat(node, "camera_matrix", (3, 3), src)
    D = _mat(node, "distortion_coefficients", None, src).ravel()
    model = _str(node, "distortion_model", src, "")
    if not model:
        if len(D) == 14 and not D[8:].any():
            D = D[:8]
        if len(D) not in _N_DIST:
            fail(src, prefix + "distortion_coefficients", "0, 4, 5 or 8 coefficients", len(D))
        model = _N_DIST[len(D)]
    width = int(_num(node, "image_width", src))
    height = int(_num(node, "image_height", src))
    return intrinsics(K, D, model, width, height, src, prefix.rstrip(".") or "(top level)")


def read_opencv(path: str | Path) -> RigCalibration:
    """Read an OpenCV FileStorage calibration (edgefuse, flat sample or stereo layout)."""
    fs = _open(path)
    src = str(path)
    try:
        root = fs.root()
        rig_name = _str(root, "rig", src, Path(path).stem)
        if not root.getNode("camera_matrix").empty():
            cam = _camera(root, src, "")
            eye = matrix4(np.eye(4))
            sensors = {
                "camera": SensorCalibration(
                    frame_id="camera_optical", T_base_link_sensor=eye, camera=cam
                )
            }
            return RigCalibration(rig=rig_name, sensors=sensors)
        if not root.getNode("M1").empty():
            return _read_stereo(root, src, rig_name)
        sensors = {}
        for key in root.keys():  # noqa: SIM118 - a cv2.FileNode, not a dict
            node = root.getNode(key)
            if node.isMap() and not node.getNode("T_base_link_sensor").empty():
                sensors[key] = _sensor(node, src, key)
        if not sensors:
            fail(
                src,
                "(top level)",
                "camera_matrix, M1 (stereo) or sensor maps with T_base_link_sensor",
            )
        return RigCalibration(rig=rig_name, sensors=sensors)
    finally:
        fs.release()


def _sensor(node: Any, src: str, name: str) -> SensorCalibration:
    at = f"{src}: {name}"
    T = rigid(_mat(node, "T_base_link_sensor", (4, 4), at), at, "T_base_link_sensor")
    cam = None if node.getNode("camera_matrix").empty() else _camera(node, at, "")
    lidar = None
    if not node.getNode("beam_elevations_deg").empty():
        try:
            lidar = LidarIntrinsics(
                beam_elevations_deg=tuple(
                    float(v) for v in _mat(node, "beam_elevations_deg", None, at).ravel()
                ),
                azimuth_steps=int(_num(node, "azimuth_steps", at, 1024)),
                range_min_m=_num(node, "range_min_m", at, 0.5),
                range_max_m=_num(node, "range_max_m", at, 100.0),
            )
        except ValueError as exc:
            raise ConfigError(f"{at}: {exc}") from None
    return SensorCalibration(
        frame_id=_str(node, "frame_id", at, f"{name}_optical" if cam else name),
        T_base_link_sensor=matrix4(T),  # written by us: exact, keep it bit for bit
        time_offset_ns=round(_num(node, "time_offset_ns", at, 0.0)),
        camera=cam,
        lidar=lidar,
    )


def _read_stereo(root: Any, src: str, rig_name: str) -> RigCalibration:
    w, h = int(_num(root, "image_width", src)), int(_num(root, "image_height", src))
    cams = []
    for i in (1, 2):
        K = _mat(root, f"M{i}", (3, 3), src)
        D = _mat(root, f"D{i}", None, src).ravel()
        if len(D) == 14 and not D[8:].any():
            D = D[:8]
        if len(D) not in _N_DIST:
            fail(src, f"D{i}", "0, 4, 5 or 8 coefficients", len(D))
        cams.append(intrinsics(K, D, _N_DIST[len(D)], w, h, src, f"M{i}/D{i}"))
    T_r_l = np.eye(4)
    T_r_l[:3, :3] = _mat(root, "R", (3, 3), src)
    T_r_l[:3, 3] = _mat(root, "T", (3,), src)
    T_r_l = orthonormalize(rigid(T_r_l, src, "R"))
    eye = matrix4(np.eye(4))
    return RigCalibration(
        rig=rig_name,
        sensors={
            "left": SensorCalibration(
                frame_id="left_optical", T_base_link_sensor=eye, camera=cams[0]
            ),
            "right": SensorCalibration(
                frame_id="right_optical", T_base_link_sensor=matrix4(inv(T_r_l)), camera=cams[1]
            ),
        },
    )


def write_opencv(rig: RigCalibration, path: str | Path) -> None:
    """Write ``rig`` (every sensor: pose, offset, camera or lidar intrinsics) with
    ``cv2.FileStorage`` in YAML (``.xml``/``.json`` paths get those FileStorage flavours)."""
    for name in rig.sensors:
        if not _NAME.match(name):
            raise ConfigError(
                f"sensor name {name!r} cannot be an OpenCV FileStorage key "
                "(letters, digits and _ only, not starting with a digit)"
            )
    p = Path(path)
    flags = cv2.FILE_STORAGE_WRITE
    if p.suffix not in (".xml", ".json"):
        flags |= cv2.FILE_STORAGE_FORMAT_YAML
    fs = cv2.FileStorage(str(p), flags)
    if not fs.isOpened():
        raise ConfigError(f"{p}: cannot open for writing")
    try:
        fs.write("rig", rig.rig)
        for name, s in rig.sensors.items():
            fs.startWriteStruct(name, cv2.FileNode_MAP)
            fs.write("frame_id", s.frame_id)
            fs.write("time_offset_ns", float(s.time_offset_ns))
            fs.write("T_base_link_sensor", s.T)
            if s.camera is not None:
                cam = s.camera
                fs.write("image_width", cam.width)
                fs.write("image_height", cam.height)
                fs.write("distortion_model", cam.distortion_model)
                fs.write("camera_matrix", cam.K)
                fs.write("distortion_coefficients", np.asarray(cam.distortion).reshape(1, -1))
            if s.lidar is not None:
                lid = s.lidar
                fs.write("beam_elevations_deg", np.asarray(lid.beam_elevations_deg).reshape(1, -1))
                fs.write("azimuth_steps", lid.azimuth_steps)
                fs.write("range_min_m", lid.range_min_m)
                fs.write("range_max_m", lid.range_max_m)
            fs.endWriteStruct()
    finally:
        fs.release()
