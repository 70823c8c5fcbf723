"""The simulated sensors see one world through the rig calibration.

A lidar point and a depth pixel of the same surface agree within noise once the calibration is
applied (and stop agreeing when it is wrong); the 2D truth box holds the object's lidar points
projected into the image; the camera really painted something inside each visible box.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from edgefuse.calib.model import RigCalibration, SensorCalibration, load_calibration, matrix4
from edgefuse.sim.camera import CameraRenderer
from edgefuse.sim.geometry import box_corners
from edgefuse.sim.raycast import DepthRenderer, LidarRenderer
from edgefuse.sim.scenarios import scenario
from edgefuse.sim.truth import TruthRenderer
from edgefuse.sim.world import World
from tests.conftest import REPO

T_S = 1.0


@pytest.fixture(scope="module")
def rig() -> RigCalibration:
    return load_calibration(REPO / "calibration/sim_rig.yaml")


@pytest.fixture(scope="module")
def world() -> World:
    return World(scenario("static"), seed=4)


def _lidar_in_base(rig: RigCalibration, world: World) -> np.ndarray:
    lidar = LidarRenderer(rig.sensor("lidar"), seed=1)
    pts, ring = lidar.render(world.objects_between(T_S, T_S + 0.1), T_S, 0.1, 0)
    assert len(pts) > 10_000 and ring.min() == 0 and ring.max() >= 20
    T = rig.sensor("lidar").T
    return np.asarray(pts[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3])


def _depth_residuals(cal: SensorCalibration, depth: np.ndarray, p_base: np.ndarray) -> np.ndarray:
    """Measured depth minus the lidar point's depth, at the pixels lidar points project to."""
    assert cal.camera is not None
    T = np.linalg.inv(cal.T)
    p = p_base @ T[:3, :3].T + T[:3, 3]
    p = p[(p[:, 2] > 0.5) & (p[:, 2] < 7.0)]
    uv = p[:, :2] / p[:, 2:3] * np.diag(cal.camera.K)[:2] + cal.camera.K[:2, 2]
    u, v = np.round(uv).astype(int).T
    inside = (u >= 0) & (u < cal.camera.width) & (v >= 0) & (v < cal.camera.height)
    z_meas = depth[v[inside], u[inside]] / 1000.0
    ok = z_meas > 0
    return np.asarray(z_meas[ok] - p[inside][ok, 2])


def test_lidar_and_depth_agree_after_calibration(rig: RigCalibration, world: World) -> None:
    p_base = _lidar_in_base(rig, world)
    cal = rig.sensor("depth")
    depth = DepthRenderer(cal, seed=1).render(world.objects_at(T_S), T_S, 0)
    assert depth.dtype == np.uint16 and depth.shape == (240, 320)
    res = _depth_residuals(cal, depth, p_base)
    assert len(res) > 500
    # Noise: depth ~2-10 cm at these ranges, lidar 1.5 cm; edges give a few outliers.
    assert abs(np.median(res)) < 0.02
    assert np.percentile(np.abs(res), 80) < 0.12
    # The same check with a calibration 10 cm and 1 degree off fails clearly.
    T_bad = cal.T.copy()
    T_bad[:3, 3] += [0.0, 0.0, 0.1]
    c, s = np.cos(np.radians(1)), np.sin(np.radians(1))
    T_bad[:3, :3] = T_bad[:3, :3] @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    bad = dataclasses.replace(cal, T_base_link_sensor=matrix4(T_bad))
    res_bad = _depth_residuals(bad, depth, p_base)
    assert np.percentile(np.abs(res_bad), 80) > 2 * np.percentile(np.abs(res), 80)


def test_depth_range_limit_and_edge_dropouts(rig: RigCalibration, world: World) -> None:
    r = DepthRenderer(rig.sensor("depth"), seed=1)
    depth = r.render(world.objects_at(T_S), T_S, 0)
    valid = depth[depth > 0]
    assert valid.max() <= r.model.range_max_m * 1000 * 1.1
    assert (depth == 0).mean() > 0.2  # sky and beyond-range ground
    no_edges = dataclasses.replace(r.model, edge_dropout=0.0, random_dropout=0.0)
    clean = DepthRenderer(rig.sensor("depth"), seed=1, model=no_edges).render(
        world.objects_at(T_S), T_S, 0
    )
    assert (clean == 0).sum() < (depth == 0).sum()


def test_truth_box_holds_the_objects_lidar_points(rig: RigCalibration, world: World) -> None:
    p_base = _lidar_in_base(rig, world)
    objs = world.objects_at(T_S)
    truth = TruthRenderer(rig.sensor("camera")).frame(objs, T_S)
    cam = rig.sensor("camera")
    assert cam.camera is not None
    T = np.linalg.inv(cam.T)
    checked = 0
    for i in range(len(truth)):
        if truth.visibility[i] < 0.5 or truth.truncation[i] > 0:
            continue
        box = truth.box3d[i]
        # Lidar points inside the object's 3D box (in its own frame), off the ground.
        c, s = np.cos(box[6]), np.sin(box[6])
        d = p_base - box[:3]
        local = np.c_[c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]]
        inside = (np.abs(local) <= box[3:6] / 2 + 0.05).all(1) & (p_base[:, 2] > 0.1)
        pts = p_base[inside]
        if len(pts) < 5:
            continue
        p_cam = pts @ T[:3, :3].T + T[:3, 3]
        uv, _ = cv2.projectPoints(p_cam, np.zeros(3), np.zeros(3), cam.camera.K, cam.camera.D)
        uv = uv.reshape(-1, 2)
        x0, y0, x1, y1 = truth.box2d[i]
        assert (uv[:, 0] >= x0 - 1.5).all() and (uv[:, 0] <= x1 + 1.5).all()
        assert (uv[:, 1] >= y0 - 1.5).all() and (uv[:, 1] <= y1 + 1.5).all()
        # ... and the box is tight: the points span most of it.
        assert uv[:, 0].max() - uv[:, 0].min() > 0.5 * (x1 - x0)
        checked += 1
    assert checked >= 2


def test_camera_paints_objects_inside_their_boxes(rig: RigCalibration, world: World) -> None:
    cam = CameraRenderer(rig.sensor("camera"), lighting="day", seed=1)
    objs = world.objects_at(T_S)
    img = cam.render(objs, T_S, 0).astype(np.int16)
    empty = cam.render([], T_S, 0).astype(np.int16)
    assert img.shape == (480, 640, 3)
    truth = TruthRenderer(rig.sensor("camera")).frame(objs, T_S)
    diff = np.abs(img - empty).max(-1)
    covered = np.zeros(diff.shape, bool)
    for i in np.flatnonzero(truth.visibility > 0):
        x0, y0, x1, y1 = np.round(truth.box2d[i]).astype(int)
        if truth.visibility[i] > 0.3:
            assert (diff[y0:y1, x0:x1] > 10).mean() > 0.2
        # Anti-aliased edges reach a pixel past the box.
        covered[max(y0 - 2, 0) : y1 + 2, max(x0 - 2, 0) : x1 + 2] = True
    # Outside every box, only shadows change the picture (below the horizon, darker).
    changed_outside = (diff > 10) & ~covered
    assert (img[changed_outside] <= empty[changed_outside] + 10).all()


def test_night_hides_what_is_beyond_the_lamp(rig: RigCalibration, world: World) -> None:
    objs = world.objects_at(T_S)
    truth = TruthRenderer(rig.sensor("camera")).frame(objs, T_S)
    far = [
        i
        for i in range(len(truth))
        if np.linalg.norm(truth.box3d[i, :2]) > 20 and truth.visibility[i] > 0.8
    ]
    assert far
    for lighting, lo, hi in (("day", 15.0, 255.0), ("night", 0.0, 4.0)):
        cam = CameraRenderer(rig.sensor("camera"), lighting=lighting, seed=1)
        img = cam.render(objs, T_S, 0).astype(np.float64)
        empty = cam.render([], T_S, 0).astype(np.float64)
        for i in far:
            x0, y0, x1, y1 = np.round(truth.box2d[i]).astype(int)
            contrast = np.abs(img[y0:y1, x0:x1] - empty[y0:y1, x0:x1]).mean()
            assert lo <= contrast <= hi, (lighting, i, contrast)


def test_lidar_cut_angle_moves_the_front_to_the_end_of_the_sweep(rig: RigCalibration) -> None:
    from edgefuse.sim.rig import LidarSource, SimParams

    params = SimParams(scenario="static", seed=4, lidar_cut_azimuth_deg=-35.0)
    source = LidarSource(params, rate_hz=10.0, rig=rig)
    s = source.sample(30)
    assert s is not None and s.meta["cut_azimuth_deg"] == -35.0
    pts = s.arrays[0]
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    sweep_s = float(pts[:, 4].max())
    # Clockwise from -35 deg: straight ahead 325 deg later (the camera's view, +-32 deg, is
    # the end of the sweep); beyond the cut, right of the view, the very start.
    ahead = np.abs(az) < 5
    assert np.median(pts[ahead, 4]) == pytest.approx(0.1 * 325 / 360, abs=0.003)
    just_right = (az < -36) & (az > -45)
    assert np.median(pts[just_right, 4]) < 0.01 and sweep_s < 0.1
    with pytest.raises(ValueError, match="lidar_cut_azimuth_deg"):
        SimParams(lidar_cut_azimuth_deg=400.0)


def test_lidar_sweep_times_and_moving_objects(rig: RigCalibration) -> None:
    lidar = LidarRenderer(rig.sensor("lidar"), seed=1)
    w = World(scenario("day"), seed=2)
    pts, ring = lidar.render(w.objects_between(10.0, 10.1), 10.0, 0.1, 7)
    t = pts[:, 4]
    assert t.min() >= 0 and t.max() < 0.1
    # Column order is clockwise from the cut angle (behind): time grows as the azimuth falls.
    az = np.degrees(np.arctan2(pts[:, 1], pts[:, 0]))
    ahead = np.abs(az) < 5
    assert np.allclose(t[ahead].mean(), 0.05, atol=0.003)
    far = np.linalg.norm(pts[:, :2], axis=1)
    assert far.max() > 20  # lidar sees beyond the depth camera's 8 m
    # Same seed and sweep index: identical bytes.
    again, ring2 = lidar.render(w.objects_between(10.0, 10.1), 10.0, 0.1, 7)
    assert again.tobytes() == pts.tobytes() and ring2.tobytes() == ring.tobytes()


def test_box_corners_match_box(world: World) -> None:
    o = world.objects_at(T_S)[0]
    box = o.box(T_S)
    c = box_corners(box)
    assert np.allclose(c.mean(0), box[:3])
    assert np.allclose(c[:, 2].min(), 0.0)
