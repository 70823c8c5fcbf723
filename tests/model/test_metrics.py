"""Detection metrics (nuScenes centre-distance AP, pair accuracy) and the evaluation plots."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from edgefuse.model.metrics import (
    DEFAULT_THRESHOLDS_M,
    FrameDetections,
    FrameTruth,
    center_distance_ap,
    pair_accuracy,
)

CLASSES = ("car", "pedestrian")
Frame = tuple[FrameDetections, FrameTruth]


def _det(
    cls: Sequence[int], score: Sequence[float], xy: Sequence[Sequence[float]]
) -> FrameDetections:
    return FrameDetections(
        class_id=np.asarray(cls, dtype=np.int64),
        score=np.asarray(score, dtype=np.float64),
        center_xy_m=np.asarray(xy, dtype=np.float64).reshape(-1, 2),
    )


def _truth(cls: Sequence[int], xy: Sequence[Sequence[float]]) -> FrameTruth:
    return FrameTruth(
        class_id=np.asarray(cls, dtype=np.int64),
        center_xy_m=np.asarray(xy, dtype=np.float64).reshape(-1, 2),
    )


def _no_det() -> FrameDetections:
    return _det([], [], [])


def _ap(frames: Sequence[Frame], *, min_recall: float = 0.1, min_precision: float = 0.1) -> float:
    """The AP of class 0, "car", the only class, at the default thresholds."""
    result = center_distance_ap(
        frames, class_names=["car"], min_recall=min_recall, min_precision=min_precision
    )
    return result.per_class["car"].ap


# -- the basic cases ---------------------------------------------------------------------------


def test_perfect_detections_give_ap_one() -> None:
    frames = [
        (_det([0, 1], [0.9, 0.8], [[5, 1], [12, -3]]), _truth([0, 1], [[5, 1], [12, -3]])),
        (_det([0], [0.4], [[30, 2]]), _truth([0], [[30, 2]])),
        (_det([1, 1], [0.3, 0.2], [[1, 1], [2, 2]]), _truth([1, 1], [[1, 1], [2, 2]])),
    ]
    result = center_distance_ap(frames, class_names=CLASSES)
    assert result.n_frames == 3
    assert result.thresholds_m == DEFAULT_THRESHOLDS_M
    for name, n_truth in (("car", 2), ("pedestrian", 3)):
        c = result.per_class[name]
        assert c.n_truth == n_truth
        assert c.ap_by_threshold == dict.fromkeys(DEFAULT_THRESHOLDS_M, 1.0)
        assert c.ap == 1.0
    assert result.map == 1.0


def test_no_detections_give_zero() -> None:
    frames = [(_no_det(), _truth([0, 1], [[5, 1], [12, -3]])), (_no_det(), _truth([0], [[1, 1]]))]
    result = center_distance_ap(frames, class_names=CLASSES)
    assert result.per_class["car"].ap_by_threshold == dict.fromkeys(DEFAULT_THRESHOLDS_M, 0.0)
    assert result.per_class["car"].ap == 0.0
    assert result.per_class["pedestrian"].ap == 0.0
    assert result.map == 0.0
    recall, precision = result.curves["car"][2.0]
    np.testing.assert_array_equal(recall, np.linspace(0, 1, 101))
    assert not precision.any()


def test_offset_detection_counts_only_at_thresholds_above_the_offset() -> None:
    frames = [(_det([0], [0.9], [[11.5, 0.0]]), _truth([0], [[10.0, 0.0]]))]  # 1.5 m off
    c = center_distance_ap(frames, class_names=["car"]).per_class["car"]
    assert c.ap_by_threshold == {0.5: 0.0, 1.0: 0.0, 2.0: 1.0, 4.0: 1.0}
    assert c.ap == 0.5


def test_distance_must_be_strictly_below_the_threshold() -> None:
    # nuScenes matches on min_dist < dist_th: exactly 2 m away is a miss at the 2 m threshold.
    frames = [(_det([0], [0.9], [[0.0, 2.0]]), _truth([0], [[0.0, 0.0]]))]
    c = center_distance_ap(frames, class_names=["car"]).per_class["car"]
    assert c.ap_by_threshold == {0.5: 0.0, 1.0: 0.0, 2.0: 0.0, 4.0: 1.0}


# -- hand-computed precision-recall cases ------------------------------------------------------


def test_high_scored_false_positive_costs_the_hand_computed_amount() -> None:
    # 2 truths; detections by score: FP 0.9, TP 0.8, TP 0.7.
    #   cumulative tp = [0, 1, 2], fp = [1, 1, 1]
    #   recall = [0, 0.5, 1], precision = [0, 1/2, 2/3]
    # Resampled at r = 0, 0.01, ..., 1 by linear interpolation on these raw points (the devkit
    # takes no envelope): p(r) = r for r <= 0.5, p(r) = 1/2 + (r - 1/2) / 3 for r >= 0.5.
    # calc_ap keeps r = 0.11 ... 1.00 (90 points), subtracts 0.1, clips at 0:
    #   r = 0.11 ... 0.50: sum(r - 0.1) = 0.01 + ... + 0.40 = 8.2
    #   r = 0.51 ... 1.00: sum(0.4 + k / 300, k = 1..50) = 20 + 1275 / 300 = 24.25
    #   AP = (8.2 + 24.25) / 90 / 0.9 = 32.45 / 81
    truth = _truth([0, 0], [[0.0, 0.0], [10.0, 0.0]])
    with_fp = [(_det([0, 0, 0], [0.9, 0.8, 0.7], [[50, 0], [0, 0], [10, 0]]), truth)]
    without_fp = [(_det([0, 0], [0.8, 0.7], [[0, 0], [10, 0]]), truth)]
    assert _ap(without_fp) == 1.0
    assert _ap(with_fp) == pytest.approx(32.45 / 81, abs=1e-12)


def test_false_positive_after_full_recall_costs_only_the_last_point() -> None:
    # 2 truths; TP 0.9, TP 0.8, FP 0.7: recall = [0.5, 1, 1], precision = [1, 1, 2/3].
    # np.interp takes the last of equal recalls, so p(1.0) = 2/3 and p(r) = 1 below it:
    #   AP = (89 * 0.9 + (2/3 - 0.1)) / 90 / 0.9
    truth = _truth([0, 0], [[0.0, 0.0], [10.0, 0.0]])
    frames = [(_det([0, 0, 0], [0.9, 0.8, 0.7], [[0, 0], [10, 0], [50, 0]]), truth)]
    assert _ap(frames) == pytest.approx((89 * 0.9 + (2 / 3 - 0.1)) / 81, abs=1e-12)


def test_one_detection_cannot_match_two_truths() -> None:
    # One detection between two truths 0.2 m apart: one TP, recall 0.5 at precision 1, then 0.
    # p(r) = 1 for r <= 0.5 (np.interp's left value), 0 above: AP = 40 * 0.9 / 90 / 0.9 = 4/9.
    frames = [(_det([0], [0.9], [[0.1, 0.0]]), _truth([0, 0], [[0.0, 0.0], [0.2, 0.0]]))]
    assert _ap(frames) == pytest.approx(4 / 9, abs=1e-12)
    # Two detections on one truth: the second is a false positive, not a second match.
    # recall = [1, 1], precision = [1, 1/2]: AP = (89 * 0.9 + 0.4) / 90 / 0.9.
    frames = [(_det([0, 0], [0.9, 0.8], [[0.0, 0.0], [0.1, 0.0]]), _truth([0], [[0.0, 0.0]]))]
    assert _ap(frames) == pytest.approx((89 * 0.9 + 0.4) / 81, abs=1e-12)


def test_equal_scores_are_taken_in_input_order() -> None:
    # One truth; an FP and a TP with the same score. FP first: recall = [0, 1], precision =
    # [0, 1/2], p(r) = r / 2, AP = sum(r/2 - 0.1, r = 0.21..1.00) / 90 / 0.9 = 16.2 / 81 = 0.2.
    # TP first: recall = [1, 1], precision = [1, 1/2], AP = (89 * 0.9 + 0.4) / 81.
    truth = _truth([0], [[0.0, 0.0]])
    fp_first = [(_det([0, 0], [0.5, 0.5], [[50, 0], [0, 0]]), truth)]
    tp_first = [(_det([0, 0], [0.5, 0.5], [[0, 0], [50, 0]]), truth)]
    assert _ap(fp_first) == pytest.approx(0.2, abs=1e-12)
    assert _ap(tp_first) == pytest.approx((89 * 0.9 + 0.4) / 81, abs=1e-12)


def test_nearest_free_truth_is_matched() -> None:
    # The top detection is 0.30 m from truth A and 0.45 m from truth B, listed first: it takes
    # A, the nearer. The second is 0.59 m from A and 0.43 m from B, so at 0.5 m both are true
    # positives; taking the first truth in range (B) instead would leave the second a miss.
    frames = [
        (
            _det([0, 0], [0.9, 0.8], [[0.3, 0.0], [0.55, -0.2]]),
            _truth([0, 0], [[0.7, 0.2], [0.0, 0.0]]),
        )
    ]
    c = center_distance_ap(frames, class_names=["car"]).per_class["car"]
    assert c.ap_by_threshold[0.5] == 1.0


# -- what may and may not match ----------------------------------------------------------------


def test_detections_of_another_class_do_not_match() -> None:
    frames = [(_det([1], [0.9], [[3.0, 4.0]]), _truth([0], [[3.0, 4.0]]))]
    result = center_distance_ap(frames, class_names=CLASSES)
    assert result.per_class["car"].ap == 0.0
    assert math.isnan(result.per_class["pedestrian"].ap)
    assert result.map == 0.0


def test_matching_is_per_frame() -> None:
    frames = [
        (_det([0], [0.9], [[3.0, 4.0]]), _truth([], [])),
        (_no_det(), _truth([0], [[3.0, 4.0]])),
    ]
    assert _ap(frames) == 0.0
    # The same detection in the truth's frame matches.
    assert _ap([(frames[0][0], frames[1][1])]) == 1.0


def test_class_without_truth_is_nan_and_left_out_of_the_map() -> None:
    frames = [
        (_det([0, 1, 1], [0.9, 0.8, 0.7], [[1, 1], [5, 5], [6, 6]]), _truth([0], [[1, 1]])),
    ]
    result = center_distance_ap(frames, class_names=CLASSES)
    ped = result.per_class["pedestrian"]
    assert ped.n_truth == 0
    assert math.isnan(ped.ap)
    assert all(math.isnan(v) for v in ped.ap_by_threshold.values())
    assert "pedestrian" not in result.curves
    assert result.map == 1.0
    # The JSON form has None for nan, string thresholds and no curves.
    d = result.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["map"] == 1.0
    assert d["n_frames"] == 1
    assert d["thresholds_m"] == [0.5, 1.0, 2.0, 4.0]
    assert d["per_class"]["pedestrian"] == {
        "n_truth": 0,
        "ap": None,
        "ap_by_threshold": {"0.5": None, "1.0": None, "2.0": None, "4.0": None},
    }
    assert d["per_class"]["car"]["ap_by_threshold"]["2.0"] == 1.0
    assert "curves" not in d


def test_no_truth_at_all_gives_nan_map() -> None:
    result = center_distance_ap([(_det([0], [0.9], [[1, 1]]), _truth([], []))], class_names=CLASSES)
    assert math.isnan(result.map)
    assert result.to_dict()["map"] is None


def test_thresholds_and_limits_are_used() -> None:
    frames = [(_det([0], [0.9], [[0.0, 0.7]]), _truth([0], [[0.0, 0.0]]))]
    c = center_distance_ap(frames, class_names=["car"], thresholds_m=[0.6, 0.8]).per_class["car"]
    assert c.ap_by_threshold == {0.6: 0.0, 0.8: 1.0}
    # min_precision 0: AP is the plain mean precision over r = 0.01 ... 1 (100 points).
    # One TP of two truths: p = 1 up to r = 0.5 -> AP = 50 / 100 = 0.5 with min_recall 0.
    two = [(_det([0], [0.9], [[0.0, 0.0]]), _truth([0, 0], [[0.0, 0.0], [9.0, 9.0]]))]
    assert _ap(two, min_recall=0.0, min_precision=0.0) == pytest.approx(0.5)
    assert _ap(two, min_recall=0.3, min_precision=0.0) == pytest.approx(20 / 70)


# -- against a plain re-implementation ---------------------------------------------------------


def _interp_like_numpy(x: float, xp: list[float], fp: list[float]) -> float:
    """np.interp(x, xp, fp, right=0) for non-decreasing xp: the last of equal xp wins."""
    i = -1
    for k, v in enumerate(xp):
        if v <= x:
            i = k
    if i == -1:
        return fp[0]
    if i == len(xp) - 1:
        return fp[i] if x == xp[i] else 0.0
    if xp[i] == x:
        return fp[i]
    return fp[i] + (fp[i + 1] - fp[i]) * (x - xp[i]) / (xp[i + 1] - xp[i])


def _reference_ap(
    frames: Sequence[Frame], n_classes: int, thresholds: Sequence[float]
) -> dict[int, dict[float, float]]:
    """The nuScenes accumulate + calc_ap written out with loops (min recall/precision 0.1)."""
    out: dict[int, dict[float, float]] = {}
    for c in range(n_classes):
        n_truth = sum(int(t.class_id[j] == c) for _, t in frames for j in range(len(t.class_id)))
        if n_truth == 0:
            continue
        dets = []
        for i, (d, _) in enumerate(frames):
            for k in range(len(d.class_id)):
                if d.class_id[k] == c:
                    dets.append((float(d.score[k]), i, k))
        dets = sorted(dets, key=lambda e: -e[0])  # sorted() is stable: ties in input order
        out[c] = {}
        for th in thresholds:
            taken: set[tuple[int, int]] = set()
            tp_flags = []
            for _, i, k in dets:
                d, t = frames[i]
                best, best_j = math.inf, -1
                for j in range(len(t.class_id)):
                    if t.class_id[j] != c or (i, j) in taken:
                        continue
                    dx = float(t.center_xy_m[j][0] - d.center_xy_m[k][0])
                    dy = float(t.center_xy_m[j][1] - d.center_xy_m[k][1])
                    dist = math.sqrt(dx * dx + dy * dy)
                    if dist < best:
                        best, best_j = dist, j
                if best < th:
                    taken.add((i, best_j))
                tp_flags.append(best < th)
            if not dets:
                out[c][th] = 0.0
                continue
            rec, prec, tp, fp = [], [], 0, 0
            for flag in tp_flags:
                tp, fp = tp + flag, fp + (not flag)
                rec.append(tp / float(n_truth))
                prec.append(tp / float(tp + fp))
            total = 0.0
            for r in np.linspace(0, 1, 101)[11:]:
                total += max(0.0, _interp_like_numpy(float(r), rec, prec) - 0.1)
            out[c][th] = total / 90 / 0.9
    return out


@pytest.mark.parametrize("seed", range(8))
def test_matches_a_plain_reimplementation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_classes = 3
    frames: list[Frame] = []
    for _ in range(int(rng.integers(1, 12))):
        m = int(rng.integers(0, 7))
        gt_cls = rng.integers(0, n_classes, m)
        gt_xy = rng.uniform(0, 15, (m, 2))
        n = int(rng.integers(0, 10))
        det_cls = rng.integers(0, n_classes, n)
        det_xy = rng.uniform(0, 15, (n, 2))
        k = min(m, n)
        # Most detections near a truth (some of the wrong class), the rest anywhere.
        det_xy[:k] = gt_xy[:k] + rng.normal(0, 1.5, (k, 2))
        det_cls[:k] = np.where(rng.random(k) < 0.8, gt_cls[:k], det_cls[:k])
        score = np.round(rng.random(n), 1)  # one decimal: plenty of tied scores
        frames.append(
            (
                FrameDetections(class_id=det_cls, score=score, center_xy_m=det_xy),
                FrameTruth(class_id=gt_cls, center_xy_m=gt_xy),
            )
        )
    names = [f"c{k}" for k in range(n_classes)]
    result = center_distance_ap(frames, class_names=names)
    expected = _reference_ap(frames, n_classes, DEFAULT_THRESHOLDS_M)
    for c, name in enumerate(names):
        got = result.per_class[name]
        if c not in expected:
            assert math.isnan(got.ap)
            continue
        for th in DEFAULT_THRESHOLDS_M:
            assert got.ap_by_threshold[th] == pytest.approx(expected[c][th], abs=1e-9)
    class_aps = [sum(v.values()) / len(v) for v in expected.values()]
    want_map = sum(class_aps) / len(class_aps) if class_aps else math.nan
    assert result.map == pytest.approx(want_map, abs=1e-9, nan_ok=True)


# -- pair accuracy -----------------------------------------------------------------------------

CAR, TRUCK, PED = 0, 1, 2


def _pair_frames() -> list[Frame]:
    return [
        (
            # truck 0.9 is nearest the car truth (wrong class); truck 0.8 takes the truck truth
            # (right); the car det 0.7 is nearer the car truth but comes after the truck 0.9 took
            # it, and no other truth of the pair is within 2 m; the pedestrian is not in the pair.
            _det(
                [TRUCK, TRUCK, CAR, PED],
                [0.9, 0.8, 0.7, 0.95],
                [[0.5, 0], [10.3, 0], [0.2, 0], [0.1, 0]],
            ),
            _truth([CAR, TRUCK, PED], [[0, 0], [10, 0], [20, 0]]),
        ),
        (
            # the car truth's only detection is 3 m away (unmatched within 2 m); the truck truth
            # gets a car detection (wrong class).
            _det([CAR, CAR], [0.6, 0.5], [[-3, 0], [5.5, 0]]),
            _truth([CAR, TRUCK], [[0, 0], [5, 0]]),
        ),
    ]


def test_pair_accuracy_by_hand() -> None:
    frames = _pair_frames()
    # Matched: frame 0 car (truck det, wrong), frame 0 truck (right), frame 1 truck (wrong).
    assert pair_accuracy(frames, pair=(CAR, TRUCK)) == (1 / 3, 3)
    # Only frame 0's truck and frame 1's car and truck: right, unmatched, wrong.
    select = [np.array([False, True, False]), np.array([True, True])]
    assert pair_accuracy(frames, pair=(CAR, TRUCK), select=select) == (0.5, 2)
    # A larger radius lets frame 1's car detection at 3 m match its car truth: right.
    assert pair_accuracy(frames, pair=(CAR, TRUCK), match_m=3.5) == (2 / 4, 4)


def test_pair_accuracy_unselected_truth_still_takes_its_detection() -> None:
    # The truck det sits on the unselected car truth; the selected car truth 1.5 m away must
    # not be credited with it: the det is used by the unselected truth.
    frames = [(_det([TRUCK], [0.9], [[0, 0]]), _truth([CAR, CAR], [[0, 0], [1.5, 0]]))]
    select = [np.array([False, True])]
    accuracy, n = pair_accuracy(frames, pair=(CAR, TRUCK), select=select)
    assert n == 0
    assert math.isnan(accuracy)


def test_pair_accuracy_with_no_match_is_nan() -> None:
    # A pedestrian is outside the pair; a car exactly match_m away is out of reach (strict <).
    frames = [(_det([PED, CAR], [0.9, 0.8], [[0, 0], [2, 0]]), _truth([CAR], [[0, 0]]))]
    accuracy, n = pair_accuracy(frames, pair=(CAR, TRUCK), match_m=2.0)
    assert n == 0
    assert math.isnan(accuracy)
    assert pair_accuracy(frames, pair=(CAR, TRUCK), match_m=2.1) == (1.0, 1)


def test_pair_accuracy_bad_inputs() -> None:
    frames = _pair_frames()
    with pytest.raises(ValueError, match="pair"):
        pair_accuracy(frames, pair=(CAR, CAR))
    with pytest.raises(ValueError, match="match_m"):
        pair_accuracy(frames, pair=(CAR, TRUCK), match_m=0.0)
    with pytest.raises(ValueError, match="2 frames"):
        pair_accuracy(frames, pair=(CAR, TRUCK), select=[np.array([True, True, True])])
    with pytest.raises(ValueError, match=r"frame 1: select must have shape \(2,\)"):
        pair_accuracy(frames, pair=(CAR, TRUCK), select=[np.ones(3, bool), np.ones(3, bool)])
    with pytest.raises(ValueError, match="frame 0: select must be booleans"):
        pair_accuracy(frames, pair=(CAR, TRUCK), select=[np.array([0, 1, 0]), np.ones(2, bool)])


# -- input validation --------------------------------------------------------------------------


def _good() -> Frame:
    return (_det([0], [0.9], [[0, 0]]), _truth([0], [[0, 0]]))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ((_det([0, 5], [0.9, 0.8], [[0, 0], [1, 1]]), _truth([0], [[0, 0]])), "class_id 5 out"),
        ((_det([0], [0.9], [[0, 0]]), _truth([-1], [[0, 0]])), "truth.class_id -1 out"),
        ((_det([0, 1], [0.9], [[0, 0], [1, 1]]), _truth([], [])), "detections.score must have"),
        (
            (
                FrameDetections(
                    class_id=np.array([0]), score=np.array([0.9]), center_xy_m=np.zeros((1, 3))
                ),
                _truth([], []),
            ),
            r"center_xy_m must have shape \(N, 2\)",
        ),
        ((_det([0], [0.9], [[0, 0]]), _truth([0, 1], [[0, 0]])), "truth.center_xy_m must have"),
        ((_det([0], [math.nan], [[0, 0]]), _truth([], [])), "score has non-finite"),
        ((_det([0], [0.9], [[0, math.inf]]), _truth([], [])), "center_xy_m has non-finite"),
        (
            (
                FrameDetections(
                    class_id=np.array([0.0]), score=np.array([0.9]), center_xy_m=np.zeros((1, 2))
                ),
                _truth([], []),
            ),
            "class_id must be integers",
        ),
        (
            (
                FrameDetections(
                    class_id=np.zeros((1, 1), dtype=int),
                    score=np.array([0.9]),
                    center_xy_m=np.zeros((1, 2)),
                ),
                _truth([], []),
            ),
            r"class_id must have shape \(N,\)",
        ),
    ],
)
def test_bad_frames_raise_naming_the_frame(bad: Frame, message: str) -> None:
    frames = [_good(), _good(), bad]
    with pytest.raises(ValueError, match=f"frame 2: .*{message}"):
        center_distance_ap(frames, class_names=CLASSES)


def test_swapped_pair_is_a_type_error_naming_the_frame() -> None:
    det, truth = _good()
    with pytest.raises(TypeError, match=r"frame 1: expected \(FrameDetections, FrameTruth\)"):
        center_distance_ap([_good(), (truth, det)], class_names=CLASSES)  # type: ignore[list-item]


def test_empty_arrays_of_any_dtype_are_an_empty_frame() -> None:
    empty = FrameDetections(class_id=np.array([]), score=np.array([]), center_xy_m=np.array([]))
    frames = [(empty, FrameTruth(class_id=np.array([]), center_xy_m=np.array([]))), _good()]
    assert _ap(frames) == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_names": []}, "class_names"),
        ({"class_names": ["car", "car"]}, "unique"),
        ({"class_names": "car"}, "not one string"),
        ({"class_names": CLASSES, "thresholds_m": []}, "thresholds_m"),
        ({"class_names": CLASSES, "thresholds_m": [1.0, -2.0]}, "thresholds_m"),
        ({"class_names": CLASSES, "min_recall": 1.0}, "min_recall"),
        ({"class_names": CLASSES, "min_precision": 1.0}, "min_precision"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        center_distance_ap([_good()], **kwargs)  # type: ignore[arg-type]


def test_metrics_import_without_torch_or_matplotlib() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['matplotlib'] = None\n"
        "import edgefuse.model.metrics, edgefuse.model.plots\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- plots -------------------------------------------------------------------------------------


def _report(with_scenarios: bool) -> dict[str, object]:
    classes = ["car", "truck", "pedestrian", "bicycle"]
    rng = np.random.default_rng(3)
    subsets: dict[str, object] = {
        name: {"map": float(m), "per_class": {c: {"ap": float(rng.random())} for c in classes}}
        for name, m in zip(
            [
                "camera+depth+lidar+mic",
                "camera+lidar",
                "lidar",
                "camera",
                "depth",
                "mic",
                "lidar+mic",
            ],
            rng.random(7),
            strict=True,
        )
    }
    subsets["radar"] = {"map": None}  # measured nothing: drawn as n/a, no class bars
    report: dict[str, object] = {"subsets": subsets}
    if with_scenarios:
        report["scenarios"] = {"day": {"map": 0.64}, "night": {"map": 0.41}, "fog": {"map": None}}
    return report


def _read_png(path: Path) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    assert path.stat().st_size > 0
    image = cv2.imread(str(path))
    assert image is not None
    return image  # type: ignore[no-any-return]


@pytest.mark.parametrize("with_scenarios", [True, False])
def test_plot_report_writes_a_png(tmp_path: Path, with_scenarios: bool) -> None:
    pytest.importorskip("matplotlib")
    from edgefuse.model.plots import plot_report

    out = plot_report(_report(with_scenarios), tmp_path / "sub" / "report.png", title="eval")
    assert out == tmp_path / "sub" / "report.png"
    image = _read_png(out)
    assert image.shape == (550, 1320, 3)
    assert image.std() > 10  # something was drawn, not a blank canvas


def test_plot_report_partial_and_empty_reports(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from edgefuse.model.plots import plot_report

    only_scenarios = {"scenarios": {"day": {"map": 0.5}, "night": {"map": 0.25}}}
    assert _read_png(plot_report(only_scenarios, tmp_path / "a.png")).shape == (550, 1320, 3)
    no_classes = {"subsets": {"lidar": {"map": 0.5}, "camera": {"map": 0.3}}}
    assert _read_png(plot_report(no_classes, str(tmp_path / "b.png"))).shape == (550, 1320, 3)
    with pytest.raises(ValueError, match="no subsets and no scenarios"):
        plot_report({}, tmp_path / "c.png")
    with pytest.raises(ValueError, match="subsets"):
        plot_report({"subsets": [0.5]}, tmp_path / "d.png")
    assert not (tmp_path / "c.png").exists()


def test_plot_pr_curves_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from edgefuse.model.plots import plot_pr_curves

    frames = [
        (
            _det([0, 0, 1], [0.9, 0.8, 0.7], [[50, 0], [0, 0], [5, 5]]),
            _truth([0, 1], [[0, 0], [5, 5]]),
        )
    ]
    result = center_distance_ap(frames, class_names=CLASSES)
    image = _read_png(plot_pr_curves(result, tmp_path / "pr.png", threshold_m=1.0))
    assert image.shape == (550, 770, 3)
    assert image.std() > 10
    with pytest.raises(ValueError, match="not one of"):
        plot_pr_curves(result, tmp_path / "pr3.png", threshold_m=3.0)
    no_truth = center_distance_ap(
        [(_det([0], [0.9], [[0, 0]]), _truth([], []))], class_names=CLASSES
    )
    with pytest.raises(ValueError, match="no class has ground truth"):
        plot_pr_curves(no_truth, tmp_path / "pr_none.png")


def test_plots_without_matplotlib_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgefuse.model.plots import plot_pr_curves, plot_report

    # None in sys.modules makes `import matplotlib` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'edgefuse\[train\]'"):
        plot_report({"scenarios": {"day": {"map": 0.5}}}, tmp_path / "r.png")
    result = center_distance_ap([_good()], class_names=CLASSES)
    with pytest.raises(ImportError, match=r"pip install 'edgefuse\[train\]'"):
        plot_pr_curves(result, tmp_path / "p.png")
