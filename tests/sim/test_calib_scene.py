"""The calibration scenario: varied poses the whole rig sees, a board the camera detects where
the truth puts it, depth and lidar returns on its plane, and a session carrying the truth."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edgefuse.calib.boards import Detector
from edgefuse.record import SessionReader
from edgefuse.sim.calib_scene import (
    BoardTarget,
    CalibrationScene,
    calibration_sources,
    default_scene,
    generate_calibration,
    scene_from_metadata,
)
from edgefuse.sim.rig import SimParams, load_rig
from edgefuse.sim.scenarios import scenario

PARAMS = SimParams(scenario="calibration")


@pytest.fixture(scope="module")
def scene() -> CalibrationScene:
    return default_scene(load_rig(PARAMS), hold_s=1.0, move_s=0.5)


def test_the_scenario_is_registered_and_empty() -> None:
    from edgefuse.sim.world import World

    assert scenario("calibration").spawn_rate_hz == {}
    assert World(scenario("calibration"), seed=0).objects_at(10.0) == []


def test_poses_are_varied_and_in_view(scene: CalibrationScene) -> None:
    rig = load_rig(PARAMS)
    T_cam_base = np.linalg.inv(rig.sensor("camera").T)
    T = np.array([T_cam_base @ p for p in scene.poses])
    centre = T[:, :3, :3] @ scene.target.centre + T[:, :3, 3]
    assert len(scene.poses) >= 20
    assert 2.5 <= centre[:, 2].min() < 3.0 and 5.5 < centre[:, 2].max() <= 6.0
    tilt = np.degrees(np.arccos(T[:, 2, 2]))  # board normal against the optical axis
    assert tilt.max() > 25 and np.ptp(T[:, 0, 2]) > 0.5 and np.ptp(T[:, 1, 2]) > 0.5
    u = centre[:, 0] / centre[:, 2] * 520 + 322
    assert u.min() < 200 and u.max() > 440  # across the image
    heights = np.array([p[2, 3] for p in scene.poses])
    assert heights.min() > 0.3


def test_schedule_holds_then_moves(scene: CalibrationScene) -> None:
    T0, i, still = scene.pose_at(0.5)
    assert i == 0 and still and np.array_equal(T0, scene.poses[0])
    T, i, still = scene.pose_at(1.25)  # half-way to pose 1
    assert i == 0 and not still
    np.testing.assert_allclose(T[:3, 3], (scene.poses[0][:3, 3] + scene.poses[1][:3, 3]) / 2)
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3))
    assert scene.pose_at(scene.duration_s + 5)[1] == len(scene.poses) - 1
    assert scene.duration_s == pytest.approx(len(scene.poses) * 1.5 - 0.5)


def test_sensors_see_the_board_where_the_truth_puts_it(scene: CalibrationScene) -> None:
    rig = load_rig(PARAMS)
    src = calibration_sources(PARAMS, scene, rates_hz={"camera": 5, "depth": 5, "lidar": 5})
    det = Detector(scene.target.board())
    cam = rig.sensor("camera")
    assert cam.camera is not None
    found = 0
    for i in (0, 8, 16, 24):
        t = i * 1.5 + 0.4
        T_base_board, _, still = scene.pose_at(t)
        assert still
        img = src["camera"].render(i, t)[0][0]
        view = det.detect(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
        if view is not None:
            found += 1
            T_cb = np.linalg.inv(cam.T) @ T_base_board
            obj = scene.target.board().object_points().astype(np.float64)
            uv, _ = cv2.projectPoints(obj, T_cb[:3, :3], T_cb[:3, 3], cam.camera.K, cam.camera.D)
            uv = uv.reshape(-1, 2)
            # A board of odd x odd squares looks the same turned by 180 degrees.
            err = min(
                np.median(np.linalg.norm(view.image_points - uv, axis=1)),
                np.median(np.linalg.norm(view.image_points[::-1] - uv, axis=1)),
            )
            assert err < 0.3
        for name in ("lidar", "depth"):
            s = rig.sensor(name)
            arr = src[name].render(i, t)[0][0]
            if name == "lidar":
                pts = arr[:, :3].astype(np.float64)
            else:
                K = s.camera.K if s.camera else np.eye(3)
                v, u = np.nonzero(arr)
                z = arr[v, u] * 1e-3
                pts = np.column_stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z])
            T_sb = np.linalg.inv(s.T) @ T_base_board
            q = (pts - T_sb[:3, 3]) @ T_sb[:3, :3]
            c = scene.target.centre
            on = (np.abs(q[:, 0] - c[0]) < 0.48) & (np.abs(q[:, 1] - c[1]) < 0.38)
            on &= np.abs(q[:, 2]) < 0.3
            assert on.sum() > (80 if name == "lidar" else 800), (name, i)
            # Unbiased along the board's normal (noise only).
            assert abs(float(np.median(q[on, 2]))) < 0.01, (name, i)
    assert found >= 3


def test_generated_session_carries_the_truth(tmp_path: Path) -> None:
    rig = load_rig(PARAMS)
    scene = CalibrationScene(
        target=BoardTarget(), poses=default_scene(rig, n=3).poses, hold_s=0.6, move_s=0.2
    )
    path = tmp_path / "cal.mcap"
    counts = generate_calibration(
        path, PARAMS, scene=scene, rates_hz={"camera": 5, "depth": 5, "lidar": 5}
    )
    assert set(counts) == {"camera/image", "depth/image", "lidar/points", "sim/board"}
    with SessionReader(path) as r:
        assert any(n.startswith("calibration/") for n in r.attachments())
        back = scene_from_metadata(r.metadata())
        assert all(np.allclose(a, b) for a, b in zip(back.poses, scene.poses, strict=True))
        epoch = int(r.metadata()["session"]["epoch_ns"])
        n = 0
        for msg in r.messages(["sim/board"]):
            assert msg.header.t_ns is not None
            T, i, still = scene.pose_at((msg.header.t_ns - epoch) * 1e-9)
            np.testing.assert_allclose(msg.arrays[0], T, atol=1e-9)
            assert msg.header.meta["pose"] == i and msg.header.meta["still"] == still
            n += 1
        assert n == counts["sim/board"] >= 10
