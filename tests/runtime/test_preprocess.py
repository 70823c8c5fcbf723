"""Preprocessing: aligned-set payloads -> the network's fixed-shape inputs.

Each modality is fed a synthetic input whose answer is known from the rig's geometry (a point
at a chosen place, a wall at a chosen distance, a tone at a chosen pitch, a flat colour), so a
wrong frame, axis order, scale or channel shows up as a wrong cell or value.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgefuse.calib.model import RigCalibration, find_calibration, load_calibration
from edgefuse.runtime.preprocess import (
    GROUND_Z_M,
    MODALITIES,
    FeatureSpec,
    Preprocessor,
    mel_filterbank,
)


@pytest.fixture(scope="module")
def rig() -> RigCalibration:
    return load_calibration(find_calibration("calibration/sim_rig.yaml"))


@pytest.fixture
def pre(rig: RigCalibration) -> Preprocessor:
    return Preprocessor(rig)


def _tone(freq_hz: float, amplitude: float, spec: FeatureSpec) -> np.ndarray:
    t = np.arange(spec.audio_samples) / spec.audio_rate_hz
    return np.round(amplitude * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def _wall_depth(rig: RigCalibration, wall_x_m: float) -> tuple[np.ndarray, np.ndarray]:
    """A z16 image (mm) of a vertical wall at ``x = wall_x_m`` in base_link, as the depth
    camera sees it (pixels whose ray meets the wall below the ground read 0, invalid), and the
    height (m) of the wall point behind each pixel."""
    cal = rig.sensor("depth")
    assert cal.camera is not None
    cam = cal.camera
    v, u = np.mgrid[0 : cam.height, 0 : cam.width].astype(np.float64)
    K = cam.K
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    R, t = cal.T[:3, :3], cal.T[:3, 3]
    dirs = rays @ R.T  # base_link direction per unit of optical depth
    depth = (wall_x_m - t[0]) / dirs[..., 0]
    height = t[2] + depth * dirs[..., 2]
    z16 = np.where(height >= 0.0, np.round(depth * 1000.0), 0).astype(np.uint16)
    return z16, height


def test_input_shapes_match_the_spec_for_all_and_for_no_modality(
    rig: RigCalibration, pre: Preprocessor
) -> None:
    spec = pre.spec
    cam = rig.sensor("depth").camera
    assert cam is not None
    raw = {
        "camera": np.zeros((480, 640, 3), np.uint8),
        "depth": (np.full((cam.height, cam.width), 5000, np.uint16), 1e-3),
        "lidar": np.array([[5.0, 0.0, 0.0, 10.0]], np.float32),
        "audio": _tone(440.0, 0.1, spec),
    }
    for given in (raw, {}):
        out = pre.inputs(given)
        assert {k: v.shape for k, v in out.items()} == spec.input_shapes()
        assert all(v.dtype == np.float32 for v in out.values())
    # A non-default spec changes the shapes the same way on both sides.
    small = Preprocessor(rig, FeatureSpec(bev_cell_m=1.0, camera_hw=(48, 64)))
    out = small.inputs(raw)
    assert {k: v.shape for k, v in out.items()} == small.spec.input_shapes()
    assert out["lidar"].shape == (1, 4, 40, 40)
    assert out["camera"].shape == (1, 3, 48, 64)


def test_absent_modalities_are_zero_with_mask_zero(pre: Preprocessor) -> None:
    raw = {
        "camera": np.full((480, 640, 3), 77, np.uint8),
        "lidar": np.array([[10.0, 1.0, 0.0, 100.0]], np.float32),
        "audio": None,  # None is absent too
    }
    out = pre.inputs(raw)
    assert out["mask"].tolist() == [[1.0, 0.0, 1.0, 0.0]]
    assert MODALITIES == ("camera", "depth", "lidar", "audio")
    assert not out["depth"].any() and not out["audio"].any()
    assert out["camera"].any() and out["lidar"].any()
    assert not pre.inputs({})["mask"].any()


def test_lidar_points_land_in_their_bev_cell_with_height_and_intensity(
    rig: RigCalibration, pre: Preprocessor
) -> None:
    spec = pre.spec
    # Two points above the ground in one cell, one ground point elsewhere (base_link).
    base = np.array([[12.3, -4.7, 1.1], [12.4, -4.6, 0.6], [8.2, 3.3, 0.05]])
    intensity = np.array([200.0, 100.0, 50.0])
    T_lidar_base = np.linalg.inv(rig.sensor("lidar").T)
    in_lidar = base @ T_lidar_base[:3, :3].T + T_lidar_base[:3, 3]
    grid = pre.lidar(np.c_[in_lidar, intensity].astype(np.float32))
    assert grid.shape == (4, *spec.bev_shape)

    def cell(x: float, y: float) -> tuple[int, int]:
        return (
            int(np.floor((x - spec.bev_x_m[0]) / spec.bev_cell_m)),
            int(np.floor((y - spec.bev_y_m[0]) / spec.bev_cell_m)),
        )

    above = cell(12.3, -4.7)
    assert above == cell(12.4, -4.6) == (24, 30)
    ground = cell(8.2, 3.3)
    assert np.argwhere(grid[0]).tolist() == [list(above)]
    assert grid[0][above] == pytest.approx(np.log1p(2.0))
    assert grid[1][above] == pytest.approx(1.1 / spec.height_scale_m, abs=1e-5)
    assert grid[2][above] == pytest.approx((200.0 + 100.0) / 2 / 255.0, abs=1e-6)
    assert np.argwhere(grid[1]).tolist() == [list(above)]
    assert np.argwhere(grid[2]).tolist() == [list(above)]
    # The ground point counts only in the ground channel.
    assert np.argwhere(grid[3]).tolist() == [list(ground)]
    assert grid[3][ground] == pytest.approx(np.log1p(1.0))
    assert 0.05 < GROUND_Z_M < 0.6


def test_depth_wall_lifts_to_its_bev_row(rig: RigCalibration, pre: Preprocessor) -> None:
    spec = pre.spec
    wall_x = 10.25  # the middle of row 20 (10.0 .. 10.5 m)
    z16, height = _wall_depth(rig, wall_x)
    grid = pre.depth(z16, depth_scale_m=1e-3)
    assert grid.shape == (3, *spec.bev_shape)
    row = int((wall_x - spec.bev_x_m[0]) / spec.bev_cell_m)
    for ch in (0, 1, 2):
        rows = np.unique(np.nonzero(grid[ch])[0])
        assert rows.tolist() == [row], (ch, rows)
    s = spec.depth_stride
    h = height[::s, ::s]
    valid = h >= 0.0
    # Every valid sampled pixel is one point on the grid (invalid zeros are dropped, not put
    # at the sensor), split at the ground threshold.
    n_above = int((h[valid] >= GROUND_Z_M).sum())
    n_ground = int(valid.sum()) - n_above
    assert np.expm1(grid[0]).sum() == pytest.approx(n_above, rel=1e-4)
    assert np.expm1(grid[2]).sum() == pytest.approx(n_ground, rel=1e-3)
    assert n_ground > 0 and n_above > 100
    assert grid[1].max() == pytest.approx(h.max() / spec.height_scale_m, abs=1e-3)
    # The wall is seen across the view, left and right of the rig.
    cols = np.nonzero(grid[0][row])[0]
    ys = spec.bev_y_m[0] + (cols + 0.5) * spec.bev_cell_m
    assert ys.min() < -3.0 and ys.max() > 3.0


def test_audio_tone_peaks_in_the_nearest_mel_band_and_scales_in_db(pre: Preprocessor) -> None:
    spec = pre.spec
    fb = mel_filterbank(spec)
    freqs = np.linspace(0.0, spec.audio_rate_hz / 2, spec.audio_n_fft // 2 + 1)
    centres = (fb * freqs).sum(1) / fb.sum(1)
    band = int(np.abs(centres - 1000.0).argmin())
    quiet = pre.audio(_tone(1000.0, 0.05, spec))
    loud = pre.audio(_tone(1000.0, 0.5, spec))
    assert quiet.shape == (1, spec.audio_mels, spec.audio_frames)
    profile = quiet[0].mean(axis=1)
    assert int(profile.argmax()) == band
    # 20 dB louder is +20/60 in the output, in every frame of the peak band.
    gain = loud[0, band] - quiet[0, band]
    np.testing.assert_allclose(gain, 20.0 / 60.0, atol=2e-3)
    # Two identical channels mix to the same mono window.
    stereo = np.stack([_tone(1000.0, 0.05, spec)] * 2, axis=1)
    np.testing.assert_allclose(pre.audio(stereo), quiet, atol=1e-6)


def test_camera_is_rgb_in_0_1_resized_with_rows_as_height(pre: Preprocessor) -> None:
    bgr = np.zeros((480, 640, 3), np.uint8)
    bgr[:240] = (10, 100, 200)  # top half: B, G, R
    bgr[240:] = (255, 0, 30)
    out = pre.camera(bgr)
    h, w = pre.spec.camera_hw
    assert out.shape == (3, h, w) and out.dtype == np.float32
    top = np.broadcast_to(np.array([200, 100, 10])[:, None, None] / 255.0, (3, h // 2, w))
    bottom = np.broadcast_to(np.array([30, 0, 255])[:, None, None] / 255.0, (3, h // 2, w))
    np.testing.assert_allclose(out[:, : h // 2], top, rtol=1e-6)
    np.testing.assert_allclose(out[:, h // 2 :], bottom, rtol=1e-6)


@pytest.mark.parametrize(
    ("modality", "value"),
    [
        ("camera", np.zeros((480, 640), np.uint8)),
        ("camera", np.zeros((480, 640, 3), np.float32)),
        ("camera", np.zeros((480, 640, 4), np.uint8)),
        ("depth", (np.zeros((240, 320, 1), np.uint16), 1e-3)),
        ("depth", (np.zeros((120, 160), np.uint16), 1e-3)),
        ("lidar", np.zeros((10, 3), np.float32)),
        ("lidar", np.zeros(40, np.float32)),
        ("audio", np.zeros((16000, 2, 1), np.int16)),
    ],
)
def test_bad_inputs_raise_naming_the_modality(
    pre: Preprocessor, modality: str, value: object
) -> None:
    with pytest.raises(ValueError, match=rf"^{modality}"):
        pre.inputs({modality: value})


def test_feature_spec_round_trips_and_rejects_unknown_keys() -> None:
    spec = FeatureSpec(bev_x_m=(-10.0, 30.0), bev_cell_m=0.25, camera_hw=(64, 96), audio_mels=40)
    d = json.loads(json.dumps(spec.to_dict()))
    back = FeatureSpec.from_dict(d)
    assert back == spec
    assert back.input_shapes() == spec.input_shapes()
    with pytest.raises(ValueError, match="bev_cel"):
        FeatureSpec.from_dict({**d, "bev_cel": 0.5})
    with pytest.raises(ValueError, match="bev_x_m"):
        FeatureSpec(bev_x_m=(10.0, 0.0))
