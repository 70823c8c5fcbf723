"""Evaluation: nuScenes-style center-distance mAP per class, scenario and modality subset.

A *predictor* maps a batch of network inputs to the output maps; it is a PyTorch network or an
ONNX Runtime session of the exported graph, so the shipped artifact is what gets scored. Each
frame's output maps are decoded by the runtime's own postprocessing; objects count by the rule
of :mod:`edgefuse.model.labels` (in the camera's view, visible to it); detections outside the
view, and those whose nearest object within 2 m is one nobody can see, are left out.

Modality subsets are evaluated by masking at run time (the absent inputs zero, their ``mask``
entries 0), exactly as a missing sensor reaches the network live.

The class pair only sound separates (``car``/``ev``) gets its own figure: of the vehicles that
are the only car or EV within :data:`EARSHOT_M` of the microphone (so a single mono microphone
can tell whose sound it hears), the share classified right among those detected.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from edgefuse.model.dataset import Frames
from edgefuse.model.labels import LabelRules
from edgefuse.model.metrics import FrameDetections, FrameTruth, center_distance_ap, pair_accuracy
from edgefuse.runtime.postprocess import Detections, GridSpec, decode
from edgefuse.runtime.preprocess import MODALITIES

#: A vehicle is "alone in earshot" when no other car or EV is within this distance (m).
EARSHOT_M = 20.0

Predictor = Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


def torch_predictor(net: Any, *, batch: int = 32) -> Predictor:
    """A predictor running a :class:`~edgefuse.model.network.FusionNet` in eval mode."""
    import torch

    names = net.input_names()

    def run(inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        n = len(inputs["mask"])
        hm, bx = [], []
        with torch.inference_mode():
            for i in range(0, n, batch):
                h, b = net(*(torch.from_numpy(inputs[k][i : i + batch]) for k in names))
                hm.append(h.numpy())
                bx.append(b.numpy())
        return np.concatenate(hm), np.concatenate(bx)

    return run


def onnx_predictor(session: Any) -> Predictor:
    """A predictor running an ONNX Runtime session of an exported model (batch 1 graph)."""
    names = [i.name for i in session.get_inputs()]

    def run(inputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        n = len(inputs["mask"])
        hm, bx = [], []
        for i in range(n):
            h, b = session.run(["heatmap", "boxes"], {k: inputs[k][i : i + 1] for k in names})
            hm.append(h)
            bx.append(b)
        return np.concatenate(hm), np.concatenate(bx)

    return run


def subset_name(subset: Sequence[str]) -> str:
    """``camera+lidar`` style name of a modality subset (in :data:`MODALITIES` order)."""
    return "+".join(m for m in MODALITIES if m in subset)


def all_subsets(modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``modalities``, largest first."""
    out = []
    for k in range(len(modalities), 0, -1):
        out += list(itertools.combinations(modalities, k))
    return out


def detect(
    frames: Frames,
    predictor: Predictor,
    input_names: Sequence[str],
    grid: GridSpec,
    *,
    subset: Sequence[str],
    idx: np.ndarray | None = None,
    chunk: int = 64,
) -> list[Detections]:
    """Decoded detections of ``frames`` (or ``idx`` of them) with only ``subset`` present."""
    idx = np.arange(len(frames)) if idx is None else idx
    out: list[Detections] = []
    for i in range(0, len(idx), chunk):
        sel = idx[i : i + chunk]
        x = frames.inputs(sel, [*MODALITIES, "mask"])
        for k, m in enumerate(MODALITIES):
            if m not in subset:
                x[m][:] = 0.0
                x["mask"][:, k] = 0.0
            else:
                x[m][x["mask"][:, k] == 0] = 0.0
        hm, bx = predictor({n: x[n] for n in input_names})
        out += [decode(hm[j], bx[j], grid) for j in range(len(sel))]
    return out


def score(
    frames: Frames,
    detections: Sequence[Detections],
    rules: LabelRules,
    class_names: Sequence[str],
    *,
    idx: np.ndarray | None = None,
    pair: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """mAP (per class, per threshold) and the sound-pair accuracy of ``detections`` against
    the labels of ``frames`` (``idx`` of them, in the same order)."""
    idx = np.arange(len(frames)) if idx is None else idx
    pairs: list[tuple[FrameDetections, FrameTruth]] = []
    alone: list[np.ndarray] = []
    for det, i in zip(detections, idx, strict=True):
        objs = frames.objects[int(i)]
        counted, _ = rules.split(objs)
        pairs.append(rules.score_pair(det, objs))
        # Alone in earshot: among *all* objects of the world (behind the rig too).
        veh = np.isin(objs.class_id, pair)
        vxy = objs.box3d[veh, :2]
        c_xy = objs.box3d[counted, :2]
        c_veh = np.isin(objs.class_id[counted], pair)
        sel = np.zeros(int(counted.sum()), bool)
        for j in np.flatnonzero(c_veh):
            dist_mic = float(np.linalg.norm(c_xy[j]))
            others = np.linalg.norm(vxy - c_xy[j], axis=1) > 1e-6
            near_others = np.linalg.norm(vxy[others], axis=1) < EARSHOT_M
            sel[j] = dist_mic < EARSHOT_M and not near_others.any()
        alone.append(sel)
    # Chance for the pair: always answering the more common class of the selected vehicles.
    sel_classes = np.concatenate(
        [p[1].class_id[s] for p, s in zip(pairs, alone, strict=True)] or [np.zeros(0, int)]
    )
    majority = max(float(np.mean(sel_classes == c)) for c in pair) if len(sel_classes) else None
    ap = center_distance_ap(pairs, class_names=class_names)
    acc_all, n_all = pair_accuracy(pairs, pair=pair)
    acc_alone, n_alone = pair_accuracy(pairs, pair=pair, select=alone)
    out = ap.to_dict()
    out["sound_pair"] = {
        "classes": [class_names[pair[0]], class_names[pair[1]]],
        "accuracy_alone_in_earshot": None if np.isnan(acc_alone) else acc_alone,
        "matched_alone_in_earshot": n_alone,
        "majority_share_alone_in_earshot": majority,
        "accuracy_all": None if np.isnan(acc_all) else acc_all,
        "matched_all": n_all,
    }
    return out


def evaluate(
    frames: Frames,
    predictor: Predictor,
    *,
    input_names: Sequence[str],
    modalities: Sequence[str],
    grid: GridSpec,
    rules: LabelRules,
    subsets: Sequence[Sequence[str]] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The evaluation report: per modality subset the overall scores and per scenario."""
    from tqdm import tqdm

    subsets = all_subsets(modalities) if subsets is None else subsets
    report: dict[str, Any] = {"frames": len(frames), "subsets": {}, "scenarios": {}}
    scenarios = sorted(set(frames.scenario.tolist()))
    for subset in tqdm(subsets, desc="subsets", disable=not progress, leave=False):
        name = subset_name(subset)
        dets = detect(frames, predictor, input_names, grid, subset=subset)
        report["subsets"][name] = score(frames, dets, rules, grid.class_names)
        for sc in scenarios:
            idx = np.flatnonzero(frames.scenario == sc)
            sub = [dets[i] for i in idx]
            report["scenarios"].setdefault(sc, {})[name] = score(
                frames, sub, rules, grid.class_names, idx=idx
            )
    full = subset_name(modalities)
    report["full"] = full
    report["map"] = report["subsets"].get(full, {}).get("map")
    return report


def plot_view(report: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` as :func:`~edgefuse.model.plots.plot_report` reads it: the scenarios of the
    model with all its sensors (the report holds each scenario for every subset)."""
    full = report["full"]
    scenarios = {sc: by[full] for sc, by in report.get("scenarios", {}).items() if full in by}
    return {**report, "scenarios": scenarios}


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a fixed-width table a person can read."""
    classes = None
    lines = []
    for name, r in report["subsets"].items():
        if classes is None:
            classes = list(r["per_class"])
            head = f"{'modalities':<28} {'mAP':>6} " + " ".join(f"{c:>10}" for c in classes)
            head += "   " + " ".join(f"{s:>7}" for s in report["scenarios"]) + "  car/ev alone"
            lines += [head, "-" * len(head)]
        cells = [f"{name:<28}", _pct(r["map"])]
        cells += [f"{_pct(r['per_class'][c]['ap']):>10}" for c in classes or []]
        row = " ".join(cells) + "   "
        row += " ".join(
            f"{_pct(report['scenarios'][s][name]['map']):>7}" for s in report["scenarios"]
        )
        sp = r["sound_pair"]
        row += f"  {_pct(sp['accuracy_alone_in_earshot']):>6} (n={sp['matched_alone_in_earshot']})"
        lines.append(row)
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "   n/a" if v is None else f"{100 * v:6.1f}"
