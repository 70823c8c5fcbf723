"""Export to ONNX: opset 17, static shapes (batch 1), fp32 inputs and outputs, with metadata.

The graph's inputs are this network's modalities and ``mask`` (see
:meth:`~edgefuse.runtime.preprocess.FeatureSpec.input_shapes`), its outputs ``heatmap`` and
``boxes``. After writing, the file is checked with ``onnx.checker`` (full check, shapes
inferred) and run in ONNX Runtime against PyTorch on seeded inputs under several modality
masks; the largest relative difference is recorded and must stay within ``1e-4``.

The weights alone go to ``<model>.pt`` beside it (the PyTorch reference). The metadata
(``<model>.json`` beside the graph, and the same JSON in the graph's
``metadata_props`` under ``edgefuse``) says everything the runtime needs without PyTorch:
classes, inputs and outputs, preprocessing (the feature spec), the output grid, the rig the
camera lift was built for, the training data's hash and settings, and the evaluation metrics.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.errors import EdgefuseError
from edgefuse.runtime.preprocess import MODALITIES

OPSET = 17
METADATA_VERSION = 1
#: Largest accepted relative difference between ONNX Runtime and PyTorch outputs.
PARITY_RTOL = 1e-4


class ExportError(EdgefuseError):
    """The exported graph failed a check."""


def metadata_path(model: str | Path) -> Path:
    """Where the metadata of ``model.onnx`` lives (``model.json``)."""
    return Path(model).with_suffix(".json")


def read_metadata(model: str | Path) -> dict[str, Any]:
    """The metadata of an exported model: the file beside it, else the graph's own copy."""
    side = metadata_path(model)
    if side.exists():
        return dict(json.loads(side.read_text()))
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    for p in m.metadata_props:
        if p.key == "edgefuse":
            return dict(json.loads(p.value))
    raise ExportError(f"{model}: no edgefuse metadata (neither {side.name} nor metadata_props)")


def sample_inputs(net: Any, *, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Seeded inputs in the ranges preprocessing produces, under several masks (all present,
    each modality missing, only the first one)."""
    rng = np.random.default_rng(seed)
    shapes = net.cfg.spec.input_shapes()
    base = {}
    for name in net.input_names():
        shape = shapes[name]
        if name == "camera":
            base[name] = rng.random(shape, dtype=np.float32)
        elif name == "mask":
            base[name] = np.ones(shape, np.float32)
        else:
            base[name] = (
                rng.random(shape, dtype=np.float32) * (rng.random(shape) < 0.1) * 3
            ).astype(np.float32)
    out = [base]
    for m in net.cfg.modalities:
        x = {k: v.copy() for k, v in base.items()}
        x["mask"][0, MODALITIES.index(m)] = 0.0
        x[m][:] = 0.0
        out.append(x)
    return out


def parity(net: Any, session: Any, *, seed: int = 0) -> float:
    """Largest relative difference of ONNX Runtime against PyTorch over :func:`sample_inputs`
    (per output: max |a - b| / max |b|)."""
    import torch

    worst = 0.0
    with torch.inference_mode():
        for x in sample_inputs(net, seed=seed):
            ref = [t.numpy() for t in net(*(torch.from_numpy(x[n]) for n in net.input_names()))]
            got = session.run(["heatmap", "boxes"], x)
            for a, b in zip(got, ref, strict=True):
                worst = max(worst, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)))
    return worst


def export_onnx(
    net: Any,
    path: str | Path,
    *,
    checkpoint_info: dict[str, Any] | None = None,
    rig_path: str | Path | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``net`` (eval mode) to ``path`` with its metadata; check it; return a summary."""
    import onnx
    import onnxruntime as ort
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval()
    cfg = net.cfg
    names = net.input_names()
    shapes = cfg.spec.input_shapes()
    example = tuple(torch.zeros(shapes[n]) for n in names)
    tmp = path.with_name(path.name + ".tmp")
    with torch.inference_mode():
        torch.onnx.export(
            net,
            example,
            str(tmp),
            input_names=names,
            output_names=["heatmap", "boxes"],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    onnx.checker.check_model(model, full_check=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    worst = parity(net, session)
    if worst > PARITY_RTOL:
        raise ExportError(
            f"ONNX Runtime differs from PyTorch by {worst:.2e} relative (> {PARITY_RTOL})"
        )
    grid = cfg.grid
    info = dict(checkpoint_info or {})
    meta: dict[str, Any] = {
        "metadata_version": METADATA_VERSION,
        "format": "onnx",
        "opset": OPSET,
        "classes": list(cfg.class_names),
        "modalities": list(cfg.modalities),
        "inputs": {n: {"shape": list(shapes[n]), "dtype": "float32"} for n in names},
        "outputs": {
            "heatmap": {"shape": [1, len(cfg.class_names), *cfg.grid_shape], "dtype": "float32"},
            "boxes": {"shape": [1, 8, *cfg.grid_shape], "dtype": "float32"},
        },
        "preprocessing": {
            "module": "edgefuse.runtime.preprocess",
            "spec": cfg.spec.to_dict(),
            "mask_order": list(MODALITIES),
        },
        "grid": grid.to_dict(),
        "model_config": cfg.to_dict(),
        "rig": {
            "name": info.get("rig"),
            "sha256": hashlib.sha256(Path(rig_path).read_bytes()).hexdigest() if rig_path else None,
        },
        "training": {
            "data_sha256": info.get("data_digest"),
            "train_config": info.get("train_config"),
            "epochs": info.get("epoch"),
            "history": info.get("history"),
        },
        "parity_max_rel": worst,
        "metrics": metrics or {},
    }
    model.metadata_props.append(onnx.StringStringEntryProto(key="edgefuse", value=json.dumps(meta)))
    onnx.save(model, str(tmp))
    tmp.replace(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    meta["onnx_sha256"] = sha
    metadata_path(path).write_text(json.dumps(meta, indent=2) + "\n")
    # The weights alone (no optimiser state) beside the graph: the PyTorch reference backend
    # and `edgefuse bench infer` load them with `load_checkpoint`.
    weights = path.with_suffix(".pt")
    torch.save(
        {
            "model": net.state_dict(),
            "model_config": cfg.to_dict(),
            "rig": info.get("rig"),
            "epoch": info.get("epoch"),
            "data_digest": info.get("data_digest"),
            "train_config": info.get("train_config"),
        },
        weights,
    )
    return {
        "onnx": str(path),
        "metadata": str(metadata_path(path)),
        "weights": str(path.with_suffix(".pt")),
        "bytes": path.stat().st_size,
        "sha256": sha,
        "parity_max_rel": worst,
        "ops": sorted({n.op_type for n in model.graph.node}),
    }
