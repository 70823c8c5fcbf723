"""The fusion network: shapes, the mask contract, its configuration and the camera lift tables.

The mask contract is what lets one network run with any subset of sensors: an absent
modality's input must not reach the outputs at all (not merely be small), in every fusion
module, while a present one must.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from torch import Tensor

from edgefuse.calib.model import RigCalibration, find_calibration, load_calibration
from edgefuse.model.network import (
    AUDIO_RINGS_M,
    FUSIONS,
    FusionNet,
    ModelConfig,
    camera_lift_tables,
)
from edgefuse.runtime.preprocess import MODALITIES, FeatureSpec

#: The configurations checked: every fusion over all modalities, and a lidar-only baseline.
CONFIGS: dict[str, ModelConfig] = {f: ModelConfig(fusion=f) for f in FUSIONS}
CONFIGS["lidar_only"] = ModelConfig(modalities=("lidar",))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: these networks are small, and threads only contend on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rig() -> RigCalibration:
    return load_calibration(find_calibration("calibration/sim_rig.yaml"))


@pytest.fixture(scope="module")
def nets(rig: RigCalibration) -> Callable[[str], FusionNet]:
    """Networks by ``CONFIGS`` key, built once (seeded) and in eval mode."""
    cache: dict[str, FusionNet] = {}

    def get(name: str) -> FusionNet:
        if name not in cache:
            torch.manual_seed(0)
            net = FusionNet(CONFIGS[name], rig).eval()
            if net.audio_evidence is not None:
                # Zero at initialisation; made live so the mask contract covers that path too.
                torch.nn.init.normal_(net.audio_evidence.weight, std=0.1)
            cache[name] = net
        return cache[name]

    return get


def _random_inputs(cfg: ModelConfig, seed: int = 1) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = cfg.spec.input_shapes()
    x = {m: torch.rand(shapes[m], generator=g) for m in MODALITIES}
    x["mask"] = torch.ones(shapes["mask"])
    return x


def _run(net: FusionNet, x: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        out: tuple[Tensor, Tensor] = net(*(x[n] for n in net.input_names()))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_outputs_have_the_head_grid_shape_and_probabilities(
    nets: Callable[[str], FusionNet], name: str
) -> None:
    net = nets(name)
    cfg = CONFIGS[name]
    assert net.input_names() == [*cfg.modalities, "mask"]
    heat, boxes = _run(net, _random_inputs(cfg))
    assert heat.shape == (1, 4, 40, 40)
    assert boxes.shape == (1, 8, 40, 40)
    assert cfg.grid_shape == (40, 40)
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    assert torch.isfinite(boxes).all()


@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_masked_out_modality_does_not_reach_the_outputs(
    nets: Callable[[str], FusionNet], fusion: str
) -> None:
    net = nets(fusion)
    cfg = CONFIGS[fusion]
    base = _random_inputs(cfg)
    full = _run(net, base)
    for k, m in enumerate(MODALITIES):
        masked = {**base, "mask": base["mask"].clone()}
        masked["mask"][0, k] = 0.0
        zeroed = {**masked, m: torch.zeros_like(base[m])}
        a, b = _run(net, masked), _run(net, zeroed)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (fusion, m)
        # Present, the same modality's input does change the outputs.
        changed = _run(net, {**base, m: torch.zeros_like(base[m])})
        diff = max(float((changed[i] - full[i]).abs().max()) for i in (0, 1))
        assert diff > 1e-6, (fusion, m, diff)


def test_single_modality_network_ignores_the_other_inputs(
    nets: Callable[[str], FusionNet],
) -> None:
    net = nets("lidar_only")
    cfg = CONFIGS["lidar_only"]
    x = _random_inputs(cfg)
    out = _run(net, x)
    # Only lidar and the mask are inputs; the other modalities' mask bits do not matter.
    other = {**x, "mask": torch.tensor([[0.0, 0.0, 1.0, 0.0]])}
    again = _run(net, other)
    assert torch.equal(out[0], again[0]) and torch.equal(out[1], again[1])
    changed = _run(net, {**x, "lidar": torch.zeros_like(x["lidar"])})
    assert not torch.equal(out[0], changed[0])


def test_model_config_round_trips_through_json() -> None:
    cfg = ModelConfig(
        modalities=("camera", "lidar"),
        fusion="gated",
        class_names=("car", "pedestrian"),
        channels=24,
        heads=3,
        spec=FeatureSpec(bev_cell_m=0.25, camera_hw=(64, 96)),
    )
    back = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert back.grid_shape == (80, 80) and back.grid_cell_m == 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modalities": ("camera", "radar")}, "modalities"),
        ({"modalities": ()}, "modalities"),
        ({"fusion": "sum"}, "fusion"),
        ({"channels": 30, "heads": 4}, "multiple of heads"),
    ],
)
def test_bad_model_config_raises(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


def test_camera_lift_tables_follow_the_cameras_view(rig: RigCalibration) -> None:
    cfg = ModelConfig()
    fh, fw = 24, 32
    t = camera_lift_tables(rig, cfg, feat_hw=(fh, fw))
    rows, cols = cfg.grid_shape
    cells = rows * cols
    assert t["ipm_index"].shape == (cells, 4) and t["col_index"].shape == (cells, 2)
    cell = cfg.grid_cell_m
    x = cfg.spec.bev_x_m[0] + (np.arange(rows) + 0.5) * cell
    y = cfg.spec.bev_y_m[0] + (np.arange(cols) + 0.5) * cell
    gx, gy = (a.ravel() for a in np.meshgrid(x, y, indexing="ij"))
    cam_x = rig.sensor("camera").T[0, 3]
    bearing = np.degrees(np.abs(np.arctan2(gy, gx - cam_x)))
    # The camera looks straight ahead with about +-32 degrees of horizontal view.
    outside = bearing > 50.0
    assert outside.sum() > 100
    assert not t["in_view"][outside].any()
    assert not t["ipm_weight"][outside].any()
    assert not t["col_weight"][outside].any()
    inside = (bearing < 25.0) & (gx > cam_x + 2.0)
    assert t["in_view"][inside].all()
    np.testing.assert_allclose(t["col_weight"][inside].sum(1), 1.0, atol=1e-6)
    # Straight ahead at x ~ 10 m, just left and just right of the axis: in view, the ground
    # point below the horizon (the lower half of the feature map), near the middle column,
    # left of the axis (+y) left in the image.
    left, right = (int(np.argmin((gx - 10.5) ** 2 + (gy - s) ** 2)) for s in (0.5, -0.5))
    for ahead in (left, right):
        assert abs(gx[ahead] - 10.0) <= cell and abs(gy[ahead]) <= cell
        assert t["in_view"][ahead] == 1.0
        assert t["ipm_weight"][ahead].sum() == pytest.approx(1.0, abs=1e-6)
        tap_rows = t["ipm_index"][ahead] // fw
        assert (tap_rows > (fh - 1) / 2).all(), tap_rows
        tap_cols = t["ipm_index"][ahead] % fw
        assert (np.abs(tap_cols - (fw - 1) / 2) <= 3).all(), tap_cols
        assert (np.abs(t["col_index"][ahead] - (fw - 1) / 2) <= 3).all()
        assert math.isclose(float(t["col_weight"][ahead].sum()), 1.0, abs_tol=1e-6)
    assert t["ipm_index"][left].max() % fw < t["ipm_index"][right].min() % fw
    assert t["col_index"][left].max() < t["col_index"][right].min()


def test_audio_scene_head_reads_the_audio_vector_only(nets: Callable[[str], FusionNet]) -> None:
    """The training-only acoustic-scene head: on audio networks, a function of the audio input
    alone, and absent from the graph's outputs (a lidar-only network has none)."""
    net = nets("attention")
    cfg = CONFIGS["attention"]
    x = _random_inputs(cfg)
    with torch.no_grad():
        scene = net.audio_scene_logits(x["audio"])
        again = net.audio_scene_logits(x["audio"].clone())
        other = net.audio_scene_logits(torch.zeros_like(x["audio"]))
    assert scene.shape == (1, len(cfg.class_names) * len(AUDIO_RINGS_M))
    assert torch.equal(scene, again) and not torch.equal(scene, other)
    with pytest.raises(ValueError, match="no audio"):
        nets("lidar_only").audio_scene_logits(x["audio"])
