"""Kalibr camchain YAML (``camchain.yaml`` / ``camchain-imucam.yaml``)::

    cam0:
      camera_model: pinhole
      intrinsics: [fu, fv, pu, pv]
      distortion_model: radtan            # k1 k2 p1 p2 (= plumb_bob with k3 = 0) or equidistant
      distortion_coeffs: [k1, k2, p1, p2]
      resolution: [752, 480]              # width, height
      rostopic: /cam0/image_raw
      T_cam_imu: 4x4                      # p_cam = T_cam_imu · p_imu  (imu -> cam)
      timeshift_cam_imu: 0.0              # seconds: t_imu = t_cam + timeshift_cam_imu
    cam1:
      T_cn_cnm1: 4x4                      # p_cam1 = T_cn_cnm1 · p_cam0  (previous camera -> this)
      ...

Mapping to the rig model:

- With ``T_cam_imu`` the IMU is ``base_link``: a sensor ``imu`` (frame ``imu``) at identity, each
  camera at ``T_base_link_cam = inv(T_cam_imu)``. Without it, ``cam0`` is ``base_link`` and later
  cameras chain through ``T_cn_cnm1``.
- ``timeshift_cam_imu`` (s) becomes the camera's ``time_offset_ns`` relative to the IMU: a camera
  stamp ``t_cam`` describes IMU time ``t_cam + shift``, so ``time_offset_ns = round(shift·1e9)``
  plus the IMU's own offset. Writing inverts this.
- The sensor name comes from ``rostopic`` (``/cam0/image_raw`` → ``cam0``, ``/left/image``
  → ``left``), else ``camN``; frames are ``<name>_optical``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgefuse import config
from edgefuse.calib.formats import (
    as_array,
    as_int,
    at,
    camera_sensors,
    fail,
    intrinsics,
    inv,
    need,
    orthonormalize,
    rigid,
)
from edgefuse.calib.model import RigCalibration, SensorCalibration, matrix4
from edgefuse.errors import ConfigError

_TOPIC_TAILS = ("image_raw", "image_rect", "image_mono", "image_color", "image", "compressed")


def _name_from_topic(topic: Any, index: int) -> str:
    if not isinstance(topic, str) or not topic.strip("/"):
        return f"cam{index}"
    parts = [p for p in topic.strip("/").split("/") if p]
    while len(parts) > 1 and parts[-1] in _TOPIC_TAILS:
        parts.pop()
    return "_".join(parts)


def read_kalibr(path: str | Path) -> RigCalibration:
    """Read a Kalibr camchain YAML into a rig (see the module docstring for the mapping)."""
    data, source = config.load_yaml(path)
    file = str(path)
    if not isinstance(data, dict):
        fail(file, "(top level)", "a mapping of cam0, cam1, ...", data)
    keys = [k for k in data if isinstance(k, str) and k.startswith("cam") and k[3:].isdigit()]
    if not keys:
        fail(file, "cam0", "at least one camera entry cam0, cam1, ... (a Kalibr camchain)")
    keys.sort(key=lambda k: int(k[3:]))
    if [int(k[3:]) for k in keys] != list(range(len(keys))):
        fail(file, ", ".join(keys), "consecutive camera numbers cam0, cam1, ...")
    has_imu = any(isinstance(data[k], dict) and "T_cam_imu" in data[k] for k in keys)
    sensors: dict[str, SensorCalibration] = {}
    if has_imu:
        sensors["imu"] = SensorCalibration(frame_id="imu", T_base_link_sensor=matrix4(np.eye(4)))
    T_base_prev = np.eye(4)
    for i, key in enumerate(keys):
        cam = data[key]
        src = at(source, (key,))
        if not isinstance(cam, dict):
            fail(src, key, "a mapping", cam)
        model = cam.get("camera_model", "pinhole")
        if model != "pinhole":
            fail(
                at(source, (key, "camera_model")),
                f"{key}.camera_model",
                "pinhole (omni, eucm and ds cameras have no edgefuse model)",
                model,
            )
        fu, fv, pu, pv = as_array(
            need(cam, "intrinsics", src, key + "."),
            (4,),
            at(source, (key, "intrinsics")),
            f"{key}.intrinsics",
        )
        res = need(cam, "resolution", src, key + ".")
        rsrc = at(source, (key, "resolution"))
        if not isinstance(res, list) or len(res) != 2:
            fail(rsrc, f"{key}.resolution", "[width, height]", res)
        width = as_int(res[0], rsrc, f"{key}.resolution[0]")
        height = as_int(res[1], rsrc, f"{key}.resolution[1]")
        dmodel = cam.get("distortion_model", "radtan")
        dsrc = at(source, (key, "distortion_coeffs"))
        coeffs = cam.get("distortion_coeffs", [])
        if dmodel == "radtan":
            D = as_array(coeffs, (4,), dsrc, f"{key}.distortion_coeffs")
            ours, D = "plumb_bob", np.append(D, 0.0)
        elif dmodel == "equidistant":
            ours, D = "equidistant", as_array(coeffs, (4,), dsrc, f"{key}.distortion_coeffs")
        elif dmodel == "none":
            ours, D = "none", np.zeros(0)
        else:
            fail(
                at(source, (key, "distortion_model")),
                f"{key}.distortion_model",
                "radtan, equidistant or none (fov has no edgefuse model)",
                dmodel,
            )
        K = np.array([[fu, 0, pu], [0, fv, pv], [0, 0, 1]])
        camera = intrinsics(K, D, ours, width, height, src, key)
        if "T_cam_imu" in cam:
            tkey = "T_cam_imu"
            T_cam_imu = _transform(cam[tkey], at(source, (key, tkey)), f"{key}.{tkey}")
            T_base_cam = inv(T_cam_imu)
        elif i > 0 and "T_cn_cnm1" in cam:
            tkey = "T_cn_cnm1"
            T_cn_cnm1 = _transform(cam[tkey], at(source, (key, tkey)), f"{key}.{tkey}")
            T_base_cam = T_base_prev @ inv(T_cn_cnm1)
        elif i == 0 and not has_imu:
            T_base_cam = np.eye(4)
        else:
            fail(src, key, "T_cam_imu or T_cn_cnm1 (the camera's pose)" if i else "T_cam_imu")
        shift = cam.get("timeshift_cam_imu", 0.0)
        if isinstance(shift, bool) or not isinstance(shift, (int, float)):
            fail(at(source, (key, "timeshift_cam_imu")), f"{key}.timeshift_cam_imu", "s", shift)
        name = _name_from_topic(cam.get("rostopic"), i)
        if name in sensors:
            name = f"{name}_cam{i}"
        sensors[name] = SensorCalibration(
            frame_id=f"{name}_optical",
            T_base_link_sensor=matrix4(T_base_cam),
            time_offset_ns=round(float(shift) * 1e9),
            camera=camera,
        )
        T_base_prev = T_base_cam
    return RigCalibration(rig=Path(path).stem, sensors=sensors)


def _transform(value: Any, src: str, key: str) -> np.ndarray:
    T = as_array(value, (4, 4), src, key)
    return orthonormalize(rigid(T, src, key))


def _rows(T: np.ndarray) -> list[list[float]]:
    return [[float(v) + 0.0 for v in row] for row in np.asarray(T, dtype=np.float64)]


def rig_to_kalibr(
    rig: RigCalibration, *, cameras: list[str] | None = None, imu: str = "imu"
) -> dict[str, Any]:
    """The camchain mapping of ``rig``: its cameras (all, in file order, or ``cameras``) with
    ``T_cam_imu`` and ``timeshift_cam_imu`` relative to sensor ``imu`` when the rig has one,
    else the time shift is the camera's own offset; ``T_cn_cnm1`` from the second camera on."""
    names = cameras if cameras is not None else camera_sensors(rig)
    if not names:
        raise ConfigError(f"rig {rig.rig!r} has no camera to write to a Kalibr camchain")
    has_imu = imu in rig.sensors
    imu_offset_ns = rig.sensors[imu].time_offset_ns if has_imu else 0
    out: dict[str, Any] = {}
    for i, name in enumerate(names):
        s = rig.sensor(name)
        cam = s.camera
        if cam is None:
            raise ConfigError(f"sensor {name!r} has no camera intrinsics (Kalibr writes cameras)")
        if cam.distortion_model == "plumb_bob":
            if len(cam.distortion) == 5 and cam.distortion[4] != 0.0:
                raise ConfigError(
                    f"{name}: Kalibr radtan has no k3 but k3 = {cam.distortion[4]}; "
                    "calibrate with --fix-k3 (k3 = 0) or write the ros or opencv format"
                )
            dmodel, D = "radtan", list(cam.D[:4])
        elif cam.distortion_model == "equidistant":
            dmodel, D = "equidistant", list(cam.D)
        elif cam.distortion_model == "none":
            dmodel, D = "radtan", [0.0, 0.0, 0.0, 0.0]
        else:
            raise ConfigError(
                f"{name}: Kalibr has no {cam.distortion_model} distortion model "
                "(radtan and equidistant only); use the ros or opencv format"
            )
        K = cam.K
        entry: dict[str, Any] = {}
        if has_imu:
            entry["T_cam_imu"] = _rows(rig.T(name, imu))
        if i > 0:
            entry["T_cn_cnm1"] = _rows(rig.T(name, names[i - 1]))
        entry.update(
            camera_model="pinhole",
            intrinsics=[float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])],
            distortion_model=dmodel,
            distortion_coeffs=[float(v) for v in D],
            resolution=[cam.width, cam.height],
            rostopic=f"/{name}/image_raw",
            timeshift_cam_imu=(s.time_offset_ns - imu_offset_ns) / 1e9,
        )
        out[f"cam{i}"] = entry
    return out


def write_kalibr(rig: RigCalibration, path: str | Path, *, imu: str = "imu") -> None:
    """Write ``rig``'s cameras as a Kalibr camchain YAML (see :func:`rig_to_kalibr`)."""
    text = yaml.safe_dump(rig_to_kalibr(rig, imu=imu), sort_keys=False, default_flow_style=None)
    Path(path).write_text(text)
