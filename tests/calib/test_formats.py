"""Calibration file formats: every format round-trips, conventions are checked against real
KITTI files and the KITTI devkit's projection formula, bad files name the file and key."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefuse.calib import _kalibr, _kitti, _opencv, _ros
from edgefuse.calib.formats import guess_format, read_rig, write_rig
from edgefuse.calib.model import (
    CameraIntrinsics,
    RigCalibration,
    SensorCalibration,
    load_calibration,
    matrix4,
)
from edgefuse.errors import ConfigError
from tests.conftest import REPO, SHARED_DATA

SIM_RIG = REPO / "calibration" / "sim_rig.yaml"
KITTI_OBJ = SHARED_DATA / "kitti-object-000000"
KITTI_RAW = SHARED_DATA / "kitti-raw-2011_09_26_0001"


def pose(rx: float, ry: float, rz: float, t: tuple[float, float, float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.array([rx, ry, rz]))[0]
    T[:3, 3] = t
    return T


def camera(model: str = "plumb_bob", fx: float = 512.25) -> CameraIntrinsics:
    dist = {
        "plumb_bob": (-0.28, 0.07, 0.001, -0.0003, 0.0),
        "rational_polynomial": (-0.3, 0.1, 0.001, 0.002, 0.01, 0.2, -0.05, 0.03),
        "equidistant": (0.1, -0.02, 0.003, -0.0004),
        "none": (),
    }[model]
    return CameraIntrinsics(
        width=752,
        height=480,
        camera_matrix=((fx, 0.0, 367.125), (0.0, fx + 1.5, 248.375), (0.0, 0.0, 1.0)),
        distortion_model=model,  # type: ignore[arg-type]
        distortion=dist,
    )


def assert_rigs_close(a: RigCalibration, b: RigCalibration, atol: float = 1e-12) -> None:
    assert list(a.sensors) == list(b.sensors)
    for name, sa in a.sensors.items():
        sb = b.sensors[name]
        assert sa.frame_id == sb.frame_id, name
        assert sa.time_offset_ns == sb.time_offset_ns, name
        np.testing.assert_allclose(sa.T, sb.T, atol=atol, err_msg=name)
        assert (sa.camera is None) == (sb.camera is None), name
        if sa.camera is not None and sb.camera is not None:
            assert sa.camera.distortion_model == sb.camera.distortion_model, name
            assert (sa.camera.width, sa.camera.height) == (sb.camera.width, sb.camera.height)
            np.testing.assert_allclose(sa.camera.K, sb.camera.K, rtol=1e-12, err_msg=name)
            np.testing.assert_allclose(sa.camera.D, sb.camera.D, rtol=1e-12, atol=1e-15)


# --- ROS camera_info ---------------------------------------------------------------------


@pytest.mark.parametrize("model", ["plumb_bob", "rational_polynomial", "equidistant", "none"])
def test_ros_camera_info_round_trips(tmp_path: Path, model: str) -> None:
    info = _ros.RosCameraInfo(
        camera_name="narrow_stereo",
        camera=camera(model),
        rectification=((0.9999, 0.01, -0.002), (-0.01, 0.9999, 0.003), (0.002, -0.003, 1.0)),
        projection=((500.5, 0.0, 360.25, -41.3), (0.0, 500.5, 250.75, 0.0), (0.0, 0.0, 1.0, 0.0)),
    )
    path = tmp_path / "cam.yaml"
    _ros.write_ros_camera_info(info, path)
    text = path.read_text()
    assert "camera_matrix:" in text and "rows: 3" in text
    assert f"distortion_model: {'plumb_bob' if model == 'none' else model}" in text
    assert _ros.read_ros_camera_info(path) == info
    assert guess_format(path) == "ros"


def test_ros_from_the_sim_rig_and_back(tmp_path: Path) -> None:
    rig = load_calibration(SIM_RIG)
    path = tmp_path / "camera.yaml"
    write_rig(rig, path, "ros", sensor="camera")
    back = read_rig(path)
    assert back.sensors["camera"].camera == rig.sensors["camera"].camera
    # A mono camera_info: no rectification, P = [K | 0].
    info = _ros.read_ros_camera_info(path)
    np.testing.assert_array_equal(info.P[:, :3], rig.sensors["camera"].camera.K)  # type: ignore[union-attr]
    # Two cameras in the rig: ROS holds one, so the writer asks which.
    with pytest.raises(ConfigError, match="--sensor"):
        write_rig(rig, path, "ros")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda t: t.replace("camera_matrix:", "camera_matrx:"),
            "camera_matrix: expected this key",
        ),
        (lambda t: t.replace("rows: 3\n  cols: 3", "rows: 3\n  cols: 4", 1), "3x3"),
        (
            lambda t: t.replace("distortion_model: plumb_bob", "distortion_model: brown"),
            "plumb_bob",
        ),
        (lambda t: t.replace("image_width: 752", "image_width: -5"), "positive integer"),
    ],
)
def test_ros_bad_files_name_the_file_and_key(tmp_path: Path, edit: object, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    _ros.write_ros_camera_info(_ros.RosCameraInfo(camera_name="c", camera=camera()), path)
    path.write_text(edit(path.read_text()))  # type: ignore[operator]
    with pytest.raises(ConfigError) as exc:
        _ros.read_ros_camera_info(path)
    assert str(path) in str(exc.value) and expected in str(exc.value)


# --- Kalibr camchain ---------------------------------------------------------------------


def kalibr_rig() -> RigCalibration:
    T_imu = np.eye(4)
    T_cam0 = pose(-1.2, 1.2, -1.2, (0.05, 0.02, -0.01))  # a camera looking along imu x
    T_cam1 = T_cam0 @ pose(0.01, -0.02, 0.005, (0.11, 0.001, 0.002))
    cam_pb = replace(camera("plumb_bob"))
    return RigCalibration(
        rig="vi_sensor",
        sensors={
            "imu": SensorCalibration(frame_id="imu", T_base_link_sensor=matrix4(T_imu)),
            "cam0": SensorCalibration(
                frame_id="cam0_optical",
                T_base_link_sensor=matrix4(T_cam0),
                time_offset_ns=5_123_000,
                camera=cam_pb,
            ),
            "cam1": SensorCalibration(
                frame_id="cam1_optical",
                T_base_link_sensor=matrix4(T_cam1),
                time_offset_ns=-2_000_000,
                camera=camera("equidistant", fx=300.5),
            ),
        },
    )


def test_kalibr_round_trips_with_imu_conventions(tmp_path: Path) -> None:
    rig = kalibr_rig()
    path = tmp_path / "camchain-imucam.yaml"
    write_rig(rig, path, "kalibr")
    assert guess_format(path) == "kalibr"
    data = _kalibr.yaml.safe_load(path.read_text())
    # T_cam_imu maps IMU points into the camera: p_cam = T_cam_imu · p_imu.
    p_imu = np.array([1.0, 2.0, 3.0, 1.0])
    T_cam_imu = np.array(data["cam0"]["T_cam_imu"])
    np.testing.assert_allclose(T_cam_imu @ p_imu, rig.T("cam0", "imu") @ p_imu, atol=1e-12)
    # T_cn_cnm1 maps the previous camera into this one.
    np.testing.assert_allclose(np.array(data["cam1"]["T_cn_cnm1"]), rig.T("cam1", "cam0"))
    # t_imu = t_cam + timeshift: a camera stamp 5.123 ms early relative to the IMU clock.
    assert data["cam0"]["timeshift_cam_imu"] == pytest.approx(0.005123, abs=1e-12)
    assert data["cam0"]["distortion_model"] == "radtan"
    assert data["cam0"]["intrinsics"] == [512.25, 513.75, 367.125, 248.375]
    assert data["cam1"]["distortion_model"] == "equidistant"
    assert_rigs_close(read_rig(path), rig)


KALIBR_TEXT = """\
cam0:
  cam_overlaps: [1]
  camera_model: pinhole
  distortion_coeffs: [-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05]
  distortion_model: radtan
  intrinsics: [458.654, 457.296, 367.215, 248.375]
  resolution: [752, 480]
  rostopic: /cam0/image_raw
  T_cam_imu:
  - [0.0148655429818, 0.999557249008, -0.0257744366974, 0.0652229095355]
  - [-0.999880929698, 0.0149672133247, 0.00375618835797, -0.0207063568147]
  - [0.00414029679422, 0.0257155299480, 0.999660727178, -0.0080546153408]
  - [0.0, 0.0, 0.0, 1.0]
  timeshift_cam_imu: 0.0024
cam1:
  camera_model: pinhole
  distortion_coeffs: [-0.28368365, 0.07451284, -0.00010473, -3.55590700e-05]
  distortion_model: radtan
  intrinsics: [457.587, 456.134, 379.999, 255.238]
  resolution: [752, 480]
  rostopic: /cam1/image_raw
  T_cn_cnm1:
  - [0.999997256477, 0.002317135723, 0.000343393121, -0.110074137800]
  - [-0.002312067192, 0.999898048507, -0.014090668453, 0.000399112701]
  - [-0.000376008102, 0.014089835847, 0.999900662638, -0.000853702503]
  - [0.0, 0.0, 0.0, 1.0]
  timeshift_cam_imu: 0.0024
"""


def test_kalibr_reads_a_camchain_and_chains_cameras(tmp_path: Path) -> None:
    path = tmp_path / "camchain.yaml"
    path.write_text(KALIBR_TEXT)
    rig = read_rig(path)
    assert list(rig.sensors) == ["imu", "cam0", "cam1"]
    assert rig.sensors["cam0"].time_offset_ns == 2_400_000
    cam0 = rig.sensors["cam0"].camera
    assert cam0 is not None and cam0.distortion_model == "plumb_bob" and cam0.D[4] == 0
    # cam1 has only T_cn_cnm1: its pose chains through cam0's.
    T = np.array(_kalibr.yaml.safe_load(KALIBR_TEXT)["cam1"]["T_cn_cnm1"])
    np.testing.assert_allclose(rig.T("cam1", "cam0"), T, atol=1e-6)
    assert rig.T("cam1", "cam0")[0, 3] == pytest.approx(-0.110074, abs=1e-6)  # EuRoC baseline
    # And back: the written camchain reads to the same rig.
    out = tmp_path / "out.yaml"
    write_rig(rig, out, "kalibr")
    assert_rigs_close(read_rig(out), rig, atol=1e-12)


def test_kalibr_bad_model_names_key(tmp_path: Path) -> None:
    path = tmp_path / "camchain.yaml"
    path.write_text(KALIBR_TEXT.replace("distortion_model: radtan", "distortion_model: fov", 1))
    with pytest.raises(ConfigError, match=r"camchain.yaml:\d+: cam0.distortion_model: expected"):
        read_rig(path)
    path.write_text(KALIBR_TEXT.replace("intrinsics: [458.654, ", "intrinsics: [", 1))
    with pytest.raises(ConfigError, match=r"cam0.intrinsics: expected 4 numbers"):
        read_rig(path)


def test_kalibr_refuses_what_it_cannot_hold(tmp_path: Path) -> None:
    rig = load_calibration(SIM_RIG)  # plumb_bob camera with k3 = 0: fine
    write_rig(rig, tmp_path / "ok.yaml", "kalibr")
    bad = replace(
        rig,
        sensors={"camera": replace(rig.sensors["camera"], camera=camera("rational_polynomial"))},
    )
    with pytest.raises(ConfigError, match="rational_polynomial"):
        write_rig(bad, tmp_path / "bad.yaml", "kalibr")


# --- OpenCV FileStorage ------------------------------------------------------------------


def test_opencv_round_trips_the_sim_rig_exactly(tmp_path: Path) -> None:
    rig = load_calibration(SIM_RIG)
    path = tmp_path / "rig.yaml"
    write_rig(rig, path, "opencv")
    text = path.read_text()
    assert text.startswith("%YAML") and "!!opencv-matrix" in text
    assert guess_format(path) == "opencv"
    assert read_rig(path) == rig  # bit for bit, lidar included
    # Any OpenCV program reads it.
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    np.testing.assert_array_equal(
        fs.getNode("camera").getNode("camera_matrix").mat(),
        rig.sensors["camera"].camera.K,  # type: ignore[union-attr]
    )
    fs.release()


def test_opencv_reads_the_flat_and_stereo_layouts(tmp_path: Path) -> None:
    cam = camera("rational_polynomial")
    flat = tmp_path / "flat.yaml"
    fs = cv2.FileStorage(str(flat), cv2.FILE_STORAGE_WRITE)
    fs.write("image_width", 752)
    fs.write("image_height", 480)
    fs.write("camera_matrix", cam.K)
    fs.write("distortion_coefficients", np.append(cam.D, np.zeros(6)).reshape(1, -1))  # 14
    fs.write("avg_reprojection_error", 0.2)
    fs.release()
    assert read_rig(flat).sensors["camera"].camera == cam
    stereo = tmp_path / "extrinsics.yml"
    T = pose(0.01, -0.02, 0.003, (-0.12, 0.001, 0.0005))
    fs = cv2.FileStorage(str(stereo), cv2.FILE_STORAGE_WRITE)
    for k, v in {"M1": cam.K, "D1": cam.D, "M2": cam.K, "D2": cam.D, "R": T[:3, :3]}.items():
        fs.write(k, v)
    fs.write("T", T[:3, 3].reshape(3, 1))
    fs.write("image_width", 752)
    fs.write("image_height", 480)
    fs.release()
    rig = read_rig(stereo, "opencv")
    np.testing.assert_allclose(rig.T("right", "left"), T, atol=1e-12)


def test_opencv_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("%YAML:1.0\n---\nfoo: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not an OpenCV FileStorage file"):
        _opencv.read_opencv(bad)
    fs = cv2.FileStorage(str(bad), cv2.FILE_STORAGE_WRITE)
    fs.write("camera_matrix", np.eye(3)[:2])
    fs.write("image_width", 10)
    fs.release()
    with pytest.raises(ConfigError, match=r"bad.yaml: camera_matrix: expected a 3x3 matrix"):
        _opencv.read_opencv(bad)


# --- KITTI -------------------------------------------------------------------------------


def test_kitti_object_projects_like_the_devkit() -> None:
    calib = KITTI_OBJ / "calib" / "000000.txt"
    rig = read_rig(calib)
    assert guess_format(calib) == "kitti"
    cam2 = rig.sensors["cam2"].camera
    assert cam2 is not None and (cam2.width, cam2.height) == (1224, 370)  # from image_2
    v = _kitti.parse_kitti_txt(calib)
    P2 = v["P2"].reshape(3, 4)
    R0 = np.eye(4)
    R0[:3, :3] = v["R0_rect"].reshape(3, 3)
    Tr = np.vstack([v["Tr_velo_to_cam"].reshape(3, 4), [0, 0, 0, 1]])
    pts = np.fromfile(KITTI_OBJ / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    X = np.hstack([pts[:, :3].astype(np.float64), np.ones((len(pts), 1))])
    X = X[X[:, 0] > 5]  # in front of the camera
    devkit = (P2 @ R0 @ Tr @ X.T).T
    ours = (cam2.K @ rig.T("cam2", "lidar")[:3] @ X.T).T
    uv_devkit = devkit[:, :2] / devkit[:, 2:]
    uv_ours = ours[:, :2] / ours[:, 2:]
    assert np.max(np.abs(uv_devkit - uv_ours)) < 1e-3  # pixels
    # Rectified cameras: same orientation, camera 2 sits about 6 cm left of camera 0.
    T20 = rig.T("cam2", "cam0")
    np.testing.assert_allclose(T20[:3, :3], np.eye(3), atol=1e-9)
    assert T20[0, 3] == pytest.approx(0.0599, abs=1e-3)


def test_kitti_object_round_trips(tmp_path: Path) -> None:
    calib = KITTI_OBJ / "calib" / "000000.txt"
    rig = read_rig(calib)
    out = tmp_path / "000000.txt"
    write_rig(rig, out)
    a, b = _kitti.parse_kitti_txt(calib), _kitti.parse_kitti_txt(out)
    assert set(a) == set(b)
    for key in a:
        # P entries reach ~700: 1e-5 is 1e-8 relative (the poses chain through inverses).
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-5, err_msg=key)
    assert_rigs_close(read_rig(out, image_size=(1224, 370)), rig, atol=1e-9)


def test_kitti_object_errors(tmp_path: Path) -> None:
    lone = tmp_path / "000000.txt"
    shutil.copy(KITTI_OBJ / "calib" / "000000.txt", lone)
    with pytest.raises(ConfigError, match="--image-size"):
        read_rig(lone)
    assert "cam2" in read_rig(lone, image_size=(1242, 375)).sensors
    text = lone.read_text()
    lone.write_text(text.replace("Tr_velo_to_cam", "Tr_velo_to_cem"))
    with pytest.raises(ConfigError, match=r"000000.txt: Tr_velo_to_cam: expected this key"):
        read_rig(lone, image_size=(1242, 375))
    lone.write_text(text.replace("P2: 7.07", "P2: x.07"))
    with pytest.raises(ConfigError, match=r"000000.txt:3: P2: expected numbers"):
        read_rig(lone, image_size=(1242, 375))


def test_kitti_raw_round_trips_and_projects_like_the_devkit(tmp_path: Path) -> None:
    rig = read_rig(KITTI_RAW)
    assert guess_format(KITTI_RAW) == "kitti-raw"
    c = _kitti.parse_kitti_txt(KITTI_RAW / "calib_cam_to_cam.txt")
    v = _kitti.parse_kitti_txt(KITTI_RAW / "calib_velo_to_cam.txt")
    Tr = np.eye(4)
    Tr[:3, :3], Tr[:3, 3] = v["R"].reshape(3, 3), v["T"]
    R0 = np.eye(4)
    R0[:3, :3] = c["R_rect_00"].reshape(3, 3)
    devkit = c["P_rect_02"].reshape(3, 4) @ R0 @ Tr
    cam = rig.sensors["image_02_rect"].camera
    assert cam is not None
    ours = cam.K @ rig.T("image_02_rect", "lidar")[:3]
    np.testing.assert_allclose(ours / ours[2, 3], devkit / devkit[2, 3], rtol=1e-5, atol=1e-4)
    raw02 = rig.sensors["image_02"].camera
    assert raw02 is not None and raw02.distortion_model == "plumb_bob"
    assert (raw02.width, raw02.height) == (1392, 512)
    out = tmp_path / "kitti_calib"
    files = write_rig(rig, out, "kitti-raw")
    assert {f.name for f in files} == {
        "calib_cam_to_cam.txt",
        "calib_velo_to_cam.txt",
        "calib_imu_to_velo.txt",
    }
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt"):
        a = _kitti.parse_kitti_txt(KITTI_RAW / name)
        b = _kitti.parse_kitti_txt(out / name)
        for key in set(a) - {"corner_dist", "delta_f", "delta_c"}:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=2e-6, err_msg=key)
    assert_rigs_close(read_rig(out), rig, atol=1e-9)


def test_sim_rig_converts_through_every_format_that_holds_it(tmp_path: Path) -> None:
    rig = load_calibration(SIM_RIG)
    for fmt, name in (("edgefuse", "a.yaml"), ("opencv", "b.yaml"), ("opencv", "c.xml")):
        write_rig(rig, tmp_path / name, fmt)
        assert read_rig(tmp_path / name) == rig, fmt
