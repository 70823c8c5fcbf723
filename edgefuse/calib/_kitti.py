"""KITTI calibration files, as the KITTI devkits define them.

**Object format** (one ``calib/NNNNNN.txt`` per frame, ``KEY: v v v ...``): ``P0..P3`` (3x4
projections of the rectified cameras, ``P_i = K_i [R_i | t_i]`` from rectified camera 0),
``R0_rect`` (3x3, camera 0 → rectified camera 0), ``Tr_velo_to_cam`` (3x4, Velodyne → camera 0),
``Tr_imu_to_velo`` (3x4, IMU → Velodyne). A Velodyne point projects to camera 2 pixels as
``P2 · R0_rect · Tr_velo_to_cam · x``. The files hold no image size: it is read from the
frame's ``image_2`` picture when the calib file sits in the KITTI layout, or passed in.

**Raw format** (one folder per day): ``calib_cam_to_cam.txt`` (per camera ``xx``: ``S_xx`` size,
``K_xx``, ``D_xx`` plumb_bob, ``R_xx``/``T_xx`` camera 00 → camera xx, ``S_rect_xx``,
``R_rect_xx`` camera xx → rectified, ``P_rect_xx``), ``calib_velo_to_cam.txt`` (``R``, ``T``:
Velodyne → camera 00) and ``calib_imu_to_velo.txt`` (``R``, ``T``: IMU → Velodyne).

In the rig model the Velodyne is ``base_link`` (sensor ``lidar``: x forward, y left, z up as in
REP 103), with sensor ``imu`` when given. Object format: ``cam0_unrect`` (frame ``cam0_optical``,
pose only) and rectified cameras ``cam0..cam3`` (frames ``camN_rect_optical``, intrinsics from
``P``, no distortion). Raw format: ``image_00..image_03`` (unrectified, plumb_bob) and
``image_00_rect..image_03_rect``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edgefuse.calib.formats import camera_sensors, fail, intrinsics, inv, orthonormalize
from edgefuse.calib.model import CameraIntrinsics, RigCalibration, SensorCalibration, matrix4
from edgefuse.errors import ConfigError

_ALIASES = {"R_rect": "R0_rect", "Tr_velo_cam": "Tr_velo_to_cam", "Tr_imu_velo": "Tr_imu_to_velo"}


def parse_kitti_txt(path: str | Path) -> dict[str, np.ndarray]:
    """``KEY: numbers`` lines as float64 vectors (non-numeric values such as ``calib_time`` are
    skipped); ``ConfigError`` naming the file and line on a malformed line."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    out: dict[str, np.ndarray] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        key, sep, rest = line.partition(":")
        if not sep:
            fail(f"{p}:{n}", line.strip()[:30], "a 'KEY: numbers' line")
        key = _ALIASES.get(key.strip(), key.strip())
        try:
            out[key] = np.array([float(v) for v in rest.split()], dtype=np.float64)
        except ValueError:
            if key != "calib_time":
                fail(f"{p}:{n}", key, "numbers", rest.strip())
    return out


def _get(values: dict[str, np.ndarray], key: str, shape: tuple[int, ...], src: str) -> np.ndarray:
    if key not in values:
        fail(src, key, "this key (missing)")
    v = values[key]
    if v.size != int(np.prod(shape)):
        fail(src, key, f"{int(np.prod(shape))} numbers ({'x'.join(map(str, shape))})", v.size)
    return v.reshape(shape)


def _h(M: np.ndarray) -> np.ndarray:
    """A 3x3 rotation or 3x4 [R|t] as a 4x4 transform."""
    T = np.eye(4)
    T[: M.shape[0], : M.shape[1]] = M
    return T


def split_projection(P: np.ndarray, src: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """``P = K [R | t]`` → ``(K, T)`` with ``K[2, 2] = 1`` and ``T = [R | t]`` (4x4)."""
    M = P[:, :3]
    if abs(np.linalg.det(M)) < 1e-12:
        fail(src, key, "a projection with an invertible left 3x3 block", P.tolist())
    K, R = cv2.RQDecomp3x3(M)[1:3]
    # Make the focal lengths positive (RQ is unique only up to signs).
    S = np.diag(np.sign(np.diag(K)))
    K, R = K @ S, S @ R
    if np.linalg.det(R) < 0:
        fail(src, key, "a projection of a right-handed camera", P.tolist())
    scale = K[2, 2]
    K = K / scale
    t = np.linalg.solve(K, P[:, 3] / scale)
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return K, T


def _rect_camera(K: np.ndarray, size: tuple[int, int], src: str, key: str) -> CameraIntrinsics:
    K = np.array(K)
    K[np.abs(K) < 1e-12] = 0.0
    return intrinsics(K, (), "none", size[0], size[1], src, key)


def _sensor(
    frame: str, T_base: np.ndarray, cam: CameraIntrinsics | None = None
) -> SensorCalibration:
    return SensorCalibration(
        frame_id=frame, T_base_link_sensor=matrix4(orthonormalize(T_base)), camera=cam
    )


def _image_size_near(path: Path) -> tuple[int, int] | None:
    for name in ("image_2", "image_0"):
        for ext in (".png", ".jpg"):
            img = path.parent.parent / name / (path.stem + ext)
            if img.is_file():
                im = cv2.imread(str(img), cv2.IMREAD_UNCHANGED)
                if im is not None:
                    return int(im.shape[1]), int(im.shape[0])
    return None


def read_kitti_object(
    path: str | Path, *, image_size: tuple[int, int] | None = None
) -> RigCalibration:
    """Read a KITTI object-format calib file into a rig (see the module docstring)."""
    p = Path(path)
    src = str(p)
    values = parse_kitti_txt(p)
    size = image_size or _image_size_near(p)
    if size is None:
        raise ConfigError(
            f"{p}: KITTI object calib files hold no image size and no image_2 picture of the "
            "same frame was found beside it; pass the size (--image-size 1242x375)"
        )
    R0 = _h(_get(values, "R0_rect", (3, 3), src))
    T_cam0_velo = _h(_get(values, "Tr_velo_to_cam", (3, 4), src))
    T_rect0_velo = R0 @ T_cam0_velo
    sensors = {"lidar": _sensor("lidar", np.eye(4))}
    if "Tr_imu_to_velo" in values:
        sensors["imu"] = _sensor("imu", _h(_get(values, "Tr_imu_to_velo", (3, 4), src)))
    sensors["cam0_unrect"] = _sensor("cam0_optical", inv(T_cam0_velo))
    for i in range(4):
        key = f"P{i}"
        if key not in values and i > 0:
            continue
        K, T_cami_rect0 = split_projection(_get(values, key, (3, 4), src), src, key)
        sensors[f"cam{i}"] = _sensor(
            f"cam{i}_rect_optical",
            inv(T_cami_rect0 @ T_rect0_velo),
            _rect_camera(K, size, src, key),
        )
    return RigCalibration(rig=f"kitti_{p.stem}", sensors=sensors)


def _fmt(values: np.ndarray) -> str:
    return " ".join(f"{float(v):.12e}" for v in np.asarray(values).ravel())


def _need_sensor(rig: RigCalibration, name: str, what: str) -> None:
    if name not in rig.sensors:
        raise ConfigError(f"rig {rig.rig!r} has no {name!r} sensor, needed for {what}")


def _projection(rig: RigCalibration, cam: str, ref: str) -> np.ndarray:
    c = rig.sensor(cam).camera
    if c is None:
        raise ConfigError(f"sensor {cam!r} has no camera intrinsics")
    if c.distortion_model != "none" and np.any(c.D):
        raise ConfigError(
            f"{cam}: KITTI projections are for rectified (distortion-free) cameras and this one "
            f"has {c.distortion_model} distortion; rectify first or use another format"
        )
    P = np.asarray(c.K @ rig.T(cam, ref)[:3, :])
    P[np.abs(P) < 1e-9 * np.abs(P).max()] = 0.0  # float dust of the pose chain, not data
    return P


def write_kitti_object(rig: RigCalibration, path: str | Path) -> None:
    """Write a KITTI object calib file from ``rig``: its rectified cameras ``cam0..cam3`` (or
    its first four cameras, the first being the reference), ``lidar``, and ``imu`` if any."""
    _need_sensor(rig, "lidar", "Tr_velo_to_cam")
    cams = [c for c in (f"cam{i}" for i in range(4)) if c in rig.sensors]
    if not cams:
        cams = [c for c in camera_sensors(rig)][:4]
    if not cams:
        raise ConfigError(f"rig {rig.rig!r} has no camera for P0..P3")
    ref = cams[0]
    unrect = "cam0_unrect" if "cam0_unrect" in rig.sensors else ref
    R0 = rig.T(ref, unrect)[:3, :3]
    lines = [f"P{i}: {_fmt(_projection(rig, c, ref))}" for i, c in enumerate(cams)]
    lines.append(f"R0_rect: {_fmt(R0)}")
    lines.append(f"Tr_velo_to_cam: {_fmt(rig.T(unrect, 'lidar')[:3, :])}")
    if "imu" in rig.sensors:
        lines.append(f"Tr_imu_to_velo: {_fmt(rig.T('lidar', 'imu')[:3, :])}")
    Path(path).write_text("\n".join(lines) + "\n\n")


def read_kitti_raw(path: str | Path) -> RigCalibration:
    """Read a KITTI raw calibration folder (or its ``calib_cam_to_cam.txt``) into a rig."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    c2c = folder / "calib_cam_to_cam.txt"
    v2c = folder / "calib_velo_to_cam.txt"
    cam_vals = parse_kitti_txt(c2c)
    velo_vals = parse_kitti_txt(v2c)
    T_cam00_velo = _h(
        np.hstack([_get(velo_vals, "R", (3, 3), str(v2c)), _get(velo_vals, "T", (3, 1), str(v2c))])
    )
    sensors = {"lidar": _sensor("lidar", np.eye(4))}
    i2v = folder / "calib_imu_to_velo.txt"
    if i2v.exists():
        iv = parse_kitti_txt(i2v)
        T = np.hstack([_get(iv, "R", (3, 3), str(i2v)), _get(iv, "T", (3, 1), str(i2v))])
        sensors["imu"] = _sensor("imu", _h(T))
    src = str(c2c)
    R_rect00 = _h(_get(cam_vals, "R_rect_00", (3, 3), src))
    rect = {}
    for xx in ("00", "01", "02", "03"):
        if f"K_{xx}" not in cam_vals:
            continue
        size = tuple(int(v) for v in _get(cam_vals, f"S_{xx}", (2,), src))
        K = _get(cam_vals, f"K_{xx}", (3, 3), src)
        D = _get(cam_vals, f"D_{xx}", (5,), src)
        T_xx_00 = _h(
            np.hstack(
                [_get(cam_vals, f"R_{xx}", (3, 3), src), _get(cam_vals, f"T_{xx}", (3, 1), src)]
            )
        )
        cam = intrinsics(K, D, "plumb_bob", size[0], size[1], src, f"K_{xx}")
        sensors[f"image_{xx}"] = _sensor(
            f"image_{xx}_optical", inv(orthonormalize(T_xx_00) @ T_cam00_velo), cam
        )
        rsize = tuple(int(v) for v in _get(cam_vals, f"S_rect_{xx}", (2,), src))
        Kr, T_r_r00 = split_projection(
            _get(cam_vals, f"P_rect_{xx}", (3, 4), src), src, f"P_rect_{xx}"
        )
        rect[f"image_{xx}_rect"] = _sensor(
            f"image_{xx}_rect_optical",
            inv(T_r_r00 @ R_rect00 @ T_cam00_velo),
            _rect_camera(Kr, (rsize[0], rsize[1]), src, f"P_rect_{xx}"),
        )
    if "image_00" not in sensors:
        fail(src, "K_00", "this key (missing): camera 00 is the reference")
    sensors.update(rect)
    return RigCalibration(rig=f"kitti_{folder.name}", sensors=sensors)


def write_kitti_raw(rig: RigCalibration, folder: str | Path) -> list[Path]:
    """Write ``calib_cam_to_cam.txt``, ``calib_velo_to_cam.txt`` (and ``calib_imu_to_velo.txt``
    with an ``imu`` sensor) into ``folder`` from a rig laid out as :func:`read_kitti_raw` reads."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    _need_sensor(rig, "lidar", "calib_velo_to_cam.txt")
    _need_sensor(rig, "image_00", "calib_cam_to_cam.txt (the reference camera)")
    lines = ["calib_time: written by edgefuse"]
    for xx in ("00", "01", "02", "03"):
        name = f"image_{xx}"
        if name not in rig.sensors:
            continue
        cam = rig.sensors[name].camera
        if cam is None or cam.distortion_model not in ("plumb_bob", "none"):
            raise ConfigError(f"{name}: KITTI raw needs a plumb_bob camera")
        T = rig.T(name, "image_00")
        lines += [
            f"S_{xx}: {_fmt(np.array([cam.width, cam.height]))}",
            f"K_{xx}: {_fmt(cam.K)}",
            f"D_{xx}: {_fmt(cam.D)}",
            f"R_{xx}: {_fmt(T[:3, :3])}",
            f"T_{xx}: {_fmt(T[:3, 3])}",
        ]
        rname = f"{name}_rect"
        if rname in rig.sensors:
            rcam = rig.sensors[rname].camera
            if rcam is None:
                raise ConfigError(f"{rname}: needs camera intrinsics")
            lines += [
                f"S_rect_{xx}: {_fmt(np.array([rcam.width, rcam.height]))}",
                f"R_rect_{xx}: {_fmt(rig.T(rname, name)[:3, :3])}",
                f"P_rect_{xx}: {_fmt(_projection(rig, rname, 'image_00_rect'))}",
            ]
    files = [out / "calib_cam_to_cam.txt", out / "calib_velo_to_cam.txt"]
    files[0].write_text("\n".join(lines) + "\n")
    T = rig.T("image_00", "lidar")
    files[1].write_text(
        "calib_time: written by edgefuse\n"
        f"R: {_fmt(T[:3, :3])}\nT: {_fmt(T[:3, 3])}\n"
        "delta_f: 0.000000e+00 0.000000e+00\ndelta_c: 0.000000e+00 0.000000e+00\n"
    )
    if "imu" in rig.sensors:
        T = rig.T("lidar", "imu")
        files.append(out / "calib_imu_to_velo.txt")
        files[-1].write_text(
            f"calib_time: written by edgefuse\nR: {_fmt(T[:3, :3])}\nT: {_fmt(T[:3, 3])}\n"
        )
    return files
