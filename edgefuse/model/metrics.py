"""Detection metrics for the fusion model, nuScenes-style: centre-distance AP and class confusion.

:func:`center_distance_ap` is the nuScenes detection mAP (nuscenes-devkit
``nuscenes/eval/detection/algo.py``: ``accumulate`` and ``calc_ap``) on ground-plane centres in
base_link. Per class and distance threshold, the detections of that class from every frame are
taken by score, highest first, and each one is matched to the closest not-yet-matched truth of
its class *in its own frame* if that truth is nearer than the threshold (strictly). The
cumulative precision and recall are resampled at 101 recall points (``np.interp`` on the raw
precision, 0 beyond the largest recall reached, as the devkit does: no precision envelope), and
AP is the mean of the precision above ``min_recall``, less ``min_precision`` and clipped at 0,
scaled by ``1 / (1 - min_precision)``. A class's AP is the mean over the thresholds; mAP is the
mean over the classes that have truth.

One deliberate difference from the devkit: detections with equal scores are taken in input
order (frame order, then index in the frame), where the devkit takes the later one first. Only
exactly tied scores are affected, and input order is the one a reader can predict.

:func:`pair_accuracy` measures confusion between two classes (car and truck, say): of the truths
of either class matched to a detection of either class, the share given the right class.

Numpy only: this module is imported by evaluation scripts and tests that have neither torch nor
matplotlib (the plots are in :mod:`edgefuse.model.plots`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_THRESHOLDS_M",
    "APResult",
    "ClassAP",
    "FrameDetections",
    "FrameTruth",
    "center_distance_ap",
    "pair_accuracy",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: The nuScenes detection distance thresholds (``dist_ths``), metres between centres.
DEFAULT_THRESHOLDS_M: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)

#: Recall points the precision is resampled at: 0 %, 1 %, ..., 100 % (nuScenes ``nelem``).
_N_RECALL = 101
_RECALL_GRID: FloatArray = np.linspace(0.0, 1.0, _N_RECALL)
_RECALL_GRID.setflags(write=False)


@dataclass(frozen=True, kw_only=True, eq=False)
class FrameDetections:
    """One frame's detections: class index, confidence and ground-plane centre (base_link, m).

    ``class_id`` is ``(N,)`` integers indexing the ``class_names`` given to the metric,
    ``score`` ``(N,)`` finite floats (higher is more confident), ``center_xy_m`` ``(N, 2)``.
    Arrays are checked when a metric reads them, so that the error can name the frame. (No
    ``==``: comparing arrays element-wise has no single truth value.)
    """

    class_id: npt.NDArray[Any]
    score: npt.NDArray[Any]
    center_xy_m: npt.NDArray[Any]


@dataclass(frozen=True, kw_only=True, eq=False)
class FrameTruth:
    """One frame's ground truth: class index ``(M,)`` and ground-plane centre ``(M, 2)`` in m."""

    class_id: npt.NDArray[Any]
    center_xy_m: npt.NDArray[Any]


@dataclass(frozen=True, kw_only=True)
class ClassAP:
    """One class's AP: per distance threshold, and their mean (nan when it has no truth)."""

    name: str
    n_truth: int
    ap_by_threshold: dict[float, float]
    ap: float


@dataclass(frozen=True, kw_only=True)
class APResult:
    """The result of :func:`center_distance_ap`.

    ``map`` is the mean AP over the classes that have truth (nan if none has). ``curves`` keeps,
    per class with truth and per threshold, the ``(recall, precision)`` resampled at the 101
    recall points (read-only arrays), for :func:`edgefuse.model.plots.plot_pr_curves`; it is
    left out of :meth:`to_dict` and of comparisons.
    """

    per_class: dict[str, ClassAP]
    thresholds_m: tuple[float, ...]
    map: float
    n_frames: int
    curves: dict[str, dict[float, tuple[FloatArray, FloatArray]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def to_dict(self) -> dict[str, Any]:
        """Return the result as plain JSON-ready values, nan written as ``None``.

        Thresholds become string keys (``"0.5"``) because JSON object keys are strings; the
        precision-recall curves are left out (they are for plots and would dwarf the numbers).
        The result passes ``json.dumps(..., allow_nan=False)``.
        """
        return {
            "map": _json_float(self.map),
            "n_frames": self.n_frames,
            "thresholds_m": [float(t) for t in self.thresholds_m],
            "per_class": {
                name: {
                    "n_truth": c.n_truth,
                    "ap": _json_float(c.ap),
                    "ap_by_threshold": {
                        str(float(t)): _json_float(v) for t, v in c.ap_by_threshold.items()
                    },
                }
                for name, c in self.per_class.items()
            },
        }


def center_distance_ap(
    frames: Sequence[tuple[FrameDetections, FrameTruth]],
    *,
    class_names: Sequence[str],
    thresholds_m: Sequence[float] = DEFAULT_THRESHOLDS_M,
    min_recall: float = 0.1,
    min_precision: float = 0.1,
) -> APResult:
    """Compute nuScenes centre-distance AP per class and threshold, per class, and the mAP.

    ``frames`` pairs each frame's detections with its truth; ``class_names[k]`` names class id
    ``k``. Matching, resampling and the AP follow the nuscenes-devkit (see the module docstring),
    with ties in score taken in input order. A class with truth but no detections has AP 0; a
    class without truth has AP nan and is left out of the mAP (its detections are not
    penalised, as in nuScenes). Raises ``ValueError`` naming the frame for a bad shape, a
    non-finite value or a class id out of range, and for bad thresholds or limits.
    """
    names = _check_class_names(class_names)
    ths = _check_thresholds(thresholds_m)
    if not (math.isfinite(min_precision) and 0.0 <= min_precision < 1.0):
        raise ValueError(f"min_precision must be in [0, 1), got {min_precision!r}")
    first = round((_N_RECALL - 1) * min_recall) + 1 if math.isfinite(min_recall) else -1
    # The devkit's slice drops the min_recall bin itself; at least one point must remain.
    if not (0.0 <= min_recall <= 1.0 and first < _N_RECALL):
        raise ValueError(f"min_recall must be in [0, 0.99], got {min_recall!r}")
    checked = _check_frames(frames, n_classes=len(names))

    per_class: dict[str, ClassAP] = {}
    curves: dict[str, dict[float, tuple[FloatArray, FloatArray]]] = {}
    for class_id, name in enumerate(names):
        pool = _pool_class(checked, class_id)
        if pool.n_truth == 0:
            per_class[name] = ClassAP(
                name=name, n_truth=0, ap_by_threshold=dict.fromkeys(ths, math.nan), ap=math.nan
            )
            continue
        by_threshold: dict[float, float] = {}
        curves[name] = {}
        for th in ths:
            recall, precision = _pr_curve(_match(pool, th), pool.n_truth)
            by_threshold[th] = _calc_ap(precision, first, min_precision)
            curves[name][th] = (recall, precision)
        per_class[name] = ClassAP(
            name=name,
            n_truth=pool.n_truth,
            ap_by_threshold=by_threshold,
            ap=float(np.mean(list(by_threshold.values()))),
        )
    with_truth = [c.ap for c in per_class.values() if c.n_truth > 0]
    return APResult(
        per_class=per_class,
        thresholds_m=ths,
        map=float(np.mean(with_truth)) if with_truth else math.nan,
        n_frames=len(checked),
        curves=curves,
    )


def pair_accuracy(
    frames: Sequence[tuple[FrameDetections, FrameTruth]],
    *,
    pair: tuple[int, int],
    match_m: float = 2.0,
    select: Sequence[npt.NDArray[np.bool_]] | None = None,
) -> tuple[float, int]:
    """Return how often two confusable classes are told apart, and on how many objects.

    In each frame the truths and detections whose class is in ``pair`` are matched ignoring
    which of the two classes they are: detections by score, highest first (ties in input
    order), each to the nearest truth not yet matched if it is nearer than ``match_m``
    (strictly), each detection and truth used once. Of the matched truths (only those with
    ``select[i][j]`` true for truth ``j`` of frame ``i``, when ``select`` is given) the result
    is the share whose detection has the truth's class, and their count; the share is nan when
    none matched. Unselected truths still take part in the matching, so that a detection of an
    unselected object is never credited to a selected one. Raises ``ValueError`` naming the frame
    for bad inputs.
    """
    if len(pair) != 2 or not all(_is_int(c) and c >= 0 for c in pair) or pair[0] == pair[1]:
        raise ValueError(f"pair must be two different non-negative class ids, got {pair!r}")
    if not (math.isfinite(match_m) and match_m > 0.0):
        raise ValueError(f"match_m must be a positive distance in metres, got {match_m!r}")
    checked = _check_frames(frames, n_classes=None)
    masks = _check_select(select, checked)
    wanted = np.asarray(pair, dtype=np.int64)

    n_matched = 0
    n_right = 0
    for i, f in enumerate(checked):
        gt_idx = np.flatnonzero(np.isin(f.gt_class, wanted))
        det_idx = np.flatnonzero(np.isin(f.det_class, wanted))
        if gt_idx.size == 0 or det_idx.size == 0:
            continue
        det_idx = det_idx[np.argsort(-f.det_score[det_idx], kind="stable")]
        gt_xy = f.gt_xy[gt_idx]
        taken = np.zeros(gt_idx.size, dtype=bool)
        for d in det_idx:
            dist = np.linalg.norm(gt_xy - f.det_xy[d], axis=1)
            dist[taken] = np.inf
            j = int(np.argmin(dist))
            if not dist[j] < match_m:
                continue
            taken[j] = True
            g = int(gt_idx[j])
            if masks is None or masks[i][g]:
                n_matched += 1
                n_right += int(f.det_class[d] == f.gt_class[g])
    return (n_right / n_matched if n_matched else math.nan), n_matched


# -- matching and AP ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, eq=False)
class _Frame:
    """A validated frame: contiguous int64 / float64 arrays of known shapes."""

    det_class: IntArray
    det_score: FloatArray
    det_xy: FloatArray
    gt_class: IntArray
    gt_xy: FloatArray


@dataclass(frozen=True, kw_only=True, eq=False)
class _ClassPool:
    """One class's detections from every frame, in the order they are matched.

    ``dist_m[k]`` holds the distances from the ``k``-th detection (in score order) to the truths
    of the class in its frame, and ``frame[k]`` that frame, whose truths' taken flags are shared
    by all its detections. Distances do not depend on the threshold, so they are computed once.
    """

    frame: IntArray
    dist_m: list[FloatArray]
    truth_per_frame: IntArray
    n_truth: int


def _pool_class(frames: Sequence[_Frame], class_id: int) -> _ClassPool:
    """Gather one class's detections across frames, sorted by score, with their distances."""
    frame_of: list[IntArray] = []
    scores: list[FloatArray] = []
    dists: list[FloatArray] = []
    truth_per_frame = np.zeros(len(frames), dtype=np.int64)
    for i, f in enumerate(frames):
        gt_xy = f.gt_xy[f.gt_class == class_id]
        truth_per_frame[i] = len(gt_xy)
        det = f.det_class == class_id
        det_xy = f.det_xy[det]
        scores.append(f.det_score[det])
        frame_of.append(np.full(len(det_xy), i, dtype=np.int64))
        # (n_det, n_truth): Euclidean norm of the difference, as the devkit's center_distance.
        dists.extend(np.linalg.norm(det_xy[:, None, :] - gt_xy[None, :, :], axis=2))
    score = np.concatenate(scores) if scores else np.zeros(0)
    # Stable on the negated score: highest first, equal scores in input order.
    order = np.argsort(-score, kind="stable")
    frame = np.concatenate(frame_of)[order] if frame_of else np.zeros(0, dtype=np.int64)
    return _ClassPool(
        frame=frame,
        dist_m=[dists[k] for k in order],
        truth_per_frame=truth_per_frame,
        n_truth=int(truth_per_frame.sum()),
    )


def _match(pool: _ClassPool, threshold_m: float) -> BoolArray:
    """Mark each detection (in score order) a true positive or not at one threshold."""
    taken = [np.zeros(n, dtype=bool) for n in pool.truth_per_frame]
    is_tp = np.zeros(len(pool.dist_m), dtype=bool)
    for k, (i, dist) in enumerate(zip(pool.frame, pool.dist_m, strict=True)):
        if dist.size == 0:
            continue
        free = np.where(taken[i], np.inf, dist)
        # argmin takes the first of equal distances, as the devkit's strict `<` scan does.
        j = int(np.argmin(free))
        if free[j] < threshold_m:
            taken[i][j] = True
            is_tp[k] = True
    return is_tp


def _pr_curve(is_tp: BoolArray, n_truth: int) -> tuple[FloatArray, FloatArray]:
    """Return ``(recall, precision)`` resampled at the 101 recall points (read-only)."""
    recall = _RECALL_GRID
    if is_tp.size == 0:
        # The devkit's no_predictions(): precision 0 at every recall, hence AP 0.
        precision = np.zeros(_N_RECALL)
    else:
        tp = np.cumsum(is_tp).astype(np.float64)
        fp = np.cumsum(~is_tp).astype(np.float64)
        # Raw precision, no envelope: the devkit interpolates the points as they are, so a
        # false positive ranked above the true ones lowers the precision at low recall.
        precision = np.interp(_RECALL_GRID, tp / n_truth, tp / (tp + fp), right=0.0)
    precision.setflags(write=False)
    return recall, precision


def _calc_ap(precision: FloatArray, first: int, min_precision: float) -> float:
    """The devkit's calc_ap on the resampled precision, ``first`` the first recall index kept."""
    kept = np.clip(precision[first:] - min_precision, 0.0, None)
    # AP cannot exceed 1; the cap only removes rounding (mean(0.9, ...) / 0.9 = 1 + 4e-16), so
    # perfect detections read exactly 1.0 rather than the devkit's 1.0000000000000004.
    return min(1.0, float(np.mean(kept)) / (1.0 - min_precision))


# -- validation --------------------------------------------------------------------------------


def _check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """The class names as a tuple: non-empty, strings, unique (they key the result)."""
    if isinstance(class_names, str):
        raise ValueError("class_names must be a sequence of names, not one string")
    names = tuple(class_names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class_names must be non-empty strings, got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names!r}")
    return names


def _check_thresholds(thresholds_m: Sequence[float]) -> tuple[float, ...]:
    """The thresholds as a tuple of floats: at least one, each positive and finite, unique."""
    ths = tuple(float(t) for t in thresholds_m)
    if not ths or not all(math.isfinite(t) and t > 0.0 for t in ths):
        raise ValueError(f"thresholds_m must be positive distances in metres, got {ths!r}")
    if len(set(ths)) != len(ths):
        raise ValueError(f"thresholds_m must be unique, got {ths!r}")
    return ths


def _check_frames(
    frames: Sequence[tuple[FrameDetections, FrameTruth]], *, n_classes: int | None
) -> list[_Frame]:
    """Validate every frame and return it as arrays of fixed dtype and shape."""
    checked: list[_Frame] = []
    for i, item in enumerate(frames):
        # Lists too: pairs read back from JSON or built by zip-and-list are lists.
        if not (
            isinstance(item, (tuple, list))
            and len(item) == 2
            and isinstance(item[0], FrameDetections)
            and isinstance(item[1], FrameTruth)
        ):
            kinds = (
                tuple(type(x).__name__ for x in item)
                if isinstance(item, (tuple, list))
                else type(item).__name__
            )
            raise TypeError(f"frame {i}: expected (FrameDetections, FrameTruth), got {kinds}")
        det, truth = item
        det_class = _class_ids(det.class_id, i, "detections", n_classes)
        gt_class = _class_ids(truth.class_id, i, "truth", n_classes)
        n, m = len(det_class), len(gt_class)
        checked.append(
            _Frame(
                det_class=det_class,
                det_score=_floats(det.score, i, "detections.score", (n,)),
                det_xy=_floats(det.center_xy_m, i, "detections.center_xy_m", (n, 2)),
                gt_class=gt_class,
                gt_xy=_floats(truth.center_xy_m, i, "truth.center_xy_m", (m, 2)),
            )
        )
    return checked


def _class_ids(value: object, frame: int, what: str, n_classes: int | None) -> IntArray:
    """Class ids as int64 ``(N,)``; integers only, within ``[0, n_classes)`` when given."""
    arr = np.asarray(value)
    if arr.size == 0:
        # np.array([]) is float64: an empty frame is valid whatever dtype it was built with.
        return np.zeros(0, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"frame {frame}: {what}.class_id must have shape (N,), got {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"frame {frame}: {what}.class_id must be integers, got {arr.dtype}")
    ids = arr.astype(np.int64)
    bad = (ids < 0) | (ids >= n_classes) if n_classes is not None else ids < 0
    if bad.any():
        valid = f"[0, {n_classes})" if n_classes is not None else "non-negative"
        raise ValueError(
            f"frame {frame}: {what}.class_id {int(ids[bad][0])} out of range {valid}"
            f" (index {int(np.flatnonzero(bad)[0])})"
        )
    return ids


def _floats(value: object, frame: int, what: str, shape: tuple[int, ...]) -> FloatArray:
    """A finite float64 array of exactly ``shape`` (an empty one of any shape when it is 0)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"frame {frame}: {what} is not numeric ({exc})") from exc
    if arr.size == 0 and shape[0] == 0:
        return np.zeros(shape, dtype=np.float64)
    if arr.shape != shape:
        want = "(N, 2)" if len(shape) == 2 else "(N,)"
        raise ValueError(
            f"frame {frame}: {what} must have shape {want} with N={shape[0]} as class_id,"
            f" got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"frame {frame}: {what} has non-finite values")
    return np.ascontiguousarray(arr)


def _check_select(
    select: Sequence[npt.NDArray[np.bool_]] | None, frames: Sequence[_Frame]
) -> list[BoolArray] | None:
    """The per-frame truth masks of :func:`pair_accuracy`: one boolean ``(M_i,)`` per frame."""
    if select is None:
        return None
    if len(select) != len(frames):
        raise ValueError(f"select has {len(select)} masks for {len(frames)} frames")
    masks: list[BoolArray] = []
    for i, (mask, f) in enumerate(zip(select, frames, strict=True)):
        arr = np.asarray(mask)
        n = len(f.gt_class)
        if arr.size == 0 and n == 0:
            masks.append(np.zeros(0, dtype=bool))
            continue
        if arr.shape != (n,):
            raise ValueError(f"frame {i}: select must have shape ({n},), got {arr.shape}")
        # Integer masks are refused: 0/1 and truth indices look alike and mean different things.
        if arr.dtype != np.bool_:
            raise ValueError(f"frame {i}: select must be booleans, got {arr.dtype}")
        masks.append(arr)
    return masks


def _is_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), bools excluded."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _json_float(value: float) -> float | None:
    """``value`` as a float, or ``None`` for nan (JSON has no nan)."""
    return None if math.isnan(value) else float(value)
