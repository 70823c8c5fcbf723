"""Training targets and the counting rule, on hand-placed objects.

The targets must be what the decoder reads back: fed to ``decode`` as if they were the
network's outputs, an object's targets give back its class and its exact 3D box. Hidden and
off-grid objects must leave no peak (hidden ones also no loss around them).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgefuse.calib.model import RigCalibration, find_calibration, load_calibration
from edgefuse.model.labels import MIN_VISIBILITY, LabelRules, Objects, audio_scene
from edgefuse.model.network import AUDIO_RINGS_M, ModelConfig
from edgefuse.model.train import label_rules
from edgefuse.runtime.postprocess import GridSpec, decode

CFG = ModelConfig()


@pytest.fixture(scope="module")
def rules() -> LabelRules:
    rig: RigCalibration = load_calibration(find_calibration("calibration/sim_rig.yaml"))
    return label_rules(CFG, rig)


def _grid(cfg: ModelConfig) -> GridSpec:
    return GridSpec(
        x_min_m=cfg.spec.bev_x_m[0],
        y_min_m=cfg.spec.bev_y_m[0],
        cell_m=cfg.grid_cell_m,
        shape=cfg.grid_shape,
        class_names=cfg.class_names,
    )


def _objects(rows: list[tuple[int, list[float], float]]) -> Objects:
    return Objects(
        class_id=np.array([r[0] for r in rows], np.int64),
        box3d=np.array([r[1] for r in rows], np.float64).reshape(-1, 7),
        visibility=np.array([r[2] for r in rows], np.float64),
    )


def _cell(x: float, y: float) -> tuple[int, int]:
    sp, cell = CFG.spec, CFG.grid_cell_m
    return int((x - sp.bev_x_m[0]) // cell), int((y - sp.bev_y_m[0]) // cell)


@pytest.mark.parametrize(
    ("class_id", "box"),
    [
        (2, [12.3, 1.6, 0.85, 0.5, 0.55, 1.7, 0.7]),  # a pedestrian ahead
        (0, [20.71, -3.42, 0.76, 4.4, 1.8, 1.52, 4.0]),  # a car, yaw past pi
        (3, [8.64, 2.27, 0.9, 1.75, 0.6, 1.8, -2.9]),  # a cyclist
        (1, [10.0, -1.0, 0.75, 4.6, 1.8, 1.5, 0.0]),  # an EV centred on a cell corner
    ],
)
def test_targets_of_one_object_peak_at_its_cell_and_decode_to_its_box(
    rules: LabelRules, class_id: int, box: list[float]
) -> None:
    objs = _objects([(class_id, box, 0.8)])
    assert rules.split(objs)[0].tolist() == [True]
    heat, boxes, box_mask, weight = rules.targets(objs)
    i, j = _cell(box[0], box[1])
    assert heat[class_id].max() == 1.0 and heat[class_id, i, j] == 1.0
    others = [k for k in range(len(CFG.class_names)) if k != class_id]
    assert not heat[others].any()
    assert np.argwhere(box_mask).tolist() == [[i, j]]
    assert (weight == 1.0).all()
    # The targets as network outputs decode back to the object.
    det = decode(heat, boxes, _grid(CFG))
    assert len(det) == 1
    assert det.class_id.tolist() == [class_id]
    got = det.box3d[0].astype(np.float64)
    np.testing.assert_allclose(got[:6], box[:6], atol=1e-5)
    dyaw = (got[6] - box[6] + math.pi) % (2 * math.pi) - math.pi
    assert abs(dyaw) < 1e-5


def test_hidden_object_in_view_is_ignored_without_a_peak(rules: LabelRules) -> None:
    box = [15.2, 0.4, 0.76, 4.4, 1.8, 1.5, 0.3]
    objs = _objects([(0, box, 0.01)])
    counted, ignored = rules.split(objs)
    assert counted.tolist() == [False] and ignored.tolist() == [True]
    heat, _, box_mask, weight = rules.targets(objs)
    assert not heat.any() and not box_mask.any()
    i, j = _cell(box[0], box[1])
    # No loss at and around it (a car: more than its half length), full loss far from it.
    assert not weight[i - 2 : i + 3, j - 2 : j + 3].any()
    assert weight[i + 6, j] == 1.0 and weight[i, j - 6] == 1.0
    assert weight.min() == 0.0 and (weight == 1.0).sum() > 0.9 * weight.size


@pytest.mark.parametrize("xy", [(-5.0, 0.0), (45.0, 0.0), (10.0, 25.0), (10.0, -20.5)])
def test_object_off_the_grid_gives_no_target(rules: LabelRules, xy: tuple[float, float]) -> None:
    objs = _objects([(0, [*xy, 0.75, 4.4, 1.8, 1.5, 0.0], 1.0)])
    assert rules.split(objs)[0].tolist() == [False]
    assert rules.split(objs)[1].tolist() == [False]
    heat, boxes, box_mask, weight = rules.targets(objs)
    assert not heat.any() and not boxes.any() and not box_mask.any()
    assert (weight == 1.0).all()


def test_split_counts_seen_objects_in_view_and_ignores_hidden_ones(rules: LabelRules) -> None:
    car = [0.75, 4.4, 1.8, 1.5, 0.0]
    objs = _objects(
        [
            (0, [12.0, 1.0, *car], 0.5),  # in view, seen: counted
            (1, [18.0, -2.0, *car], 0.01),  # in view, hidden: ignored
            (2, [25.0, 3.0, *car], MIN_VISIBILITY),  # in view, just visible enough: counted
            (0, [5.0, -15.0, *car], 0.9),  # on the grid, beside the rig: out of view
            (3, [45.0, 0.0, *car], 0.9),  # beyond the grid
            (0, [-3.0, 0.0, *car], 0.9),  # behind the rig, off the grid
        ]
    )
    counted, ignored = rules.split(objs)
    assert counted.tolist() == [True, False, True, False, False, False]
    assert ignored.tolist() == [False, True, False, False, False, False]
    # Out of the view but on the grid still gets a box target (the lidar sees all around);
    # the ignored one does not.
    _, _, box_mask, _ = rules.targets(objs)
    assert sorted(map(tuple, np.argwhere(box_mask).tolist())) == sorted(
        [_cell(12.0, 1.0), _cell(25.0, 3.0), _cell(5.0, -15.0)]
    )
    assert not rules.split(_objects([]))[0].size


def test_audio_scene_marks_each_class_in_its_distance_ring() -> None:
    # A car 5 m ahead, an ev 15 m behind (sound goes round: all around counts), a pedestrian
    # at 30 m to the side, a cyclist at 60 m (beyond the last ring: nothing).
    objs = _objects(
        [
            (0, [5.0, 0.0, 0.0, 4.5, 1.8, 1.5, 0.0], 1.0),
            (1, [-15.0, 0.0, 0.0, 4.5, 1.8, 1.5, 0.0], 0.0),
            (2, [0.0, 30.0, 0.0, 0.5, 0.5, 1.7, 0.0], 1.0),
            (3, [60.0, 0.0, 0.0, 1.8, 0.6, 1.7, 0.0], 1.0),
        ]
    )
    k, rings = len(CFG.class_names), len(AUDIO_RINGS_M)
    scene = audio_scene(objs, k).reshape(k, rings)
    expected = np.zeros((k, rings), np.float32)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1.0
    np.testing.assert_array_equal(scene, expected)
    assert not audio_scene(_objects([]), k).any()
