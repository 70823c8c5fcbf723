"""One aligned set in, detections out: preprocess, the backend, decode and 2D boxes, timed.

:class:`Inference` is what the infer node (``runtime/node.py``) and the benchmarks run; it
reads everything it needs from the exported model's metadata (``<model>.json`` beside the
ONNX, else the graph's ``metadata_props`` read through ONNX Runtime), so a deployed model
carries its own preprocessing, output grid and class names. It never imports PyTorch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import edgefuse
from edgefuse.calib.model import RigCalibration
from edgefuse.errors import EdgefuseError
from edgefuse.runtime.backends import Backend, BackendOptions, open_backend
from edgefuse.runtime.postprocess import Detections, GridSpec, decode, project_boxes
from edgefuse.runtime.preprocess import MODALITIES, FeatureSpec, Preprocessor
from edgefuse.sync.aligned_set import AlignedSet

#: The model shipped in the package (``make model`` rebuilds it).
DEFAULT_MODEL = Path(edgefuse.__file__).resolve().parent / "assets" / "model" / "fusion.onnx"


class ModelMetadataError(EdgefuseError):
    """A model without usable edgefuse metadata (not exported by ``edgefuse export``)."""


def model_metadata(model: str | Path) -> dict[str, Any]:
    """The metadata of an exported model: ``<model>.json`` beside it, else the copy in the
    graph's ``metadata_props`` (read with ONNX Runtime, so no ``onnx`` package is needed)."""
    path = Path(model)
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            return dict(json.loads(side.read_text()))
        except json.JSONDecodeError as e:
            raise ModelMetadataError(f"{side}: not valid JSON ({e})") from None
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelMetadataError(f"{path}: not a loadable ONNX model ({e})") from None
    props = sess.get_modelmeta().custom_metadata_map
    if "edgefuse" not in props:
        raise ModelMetadataError(
            f"{path}: no edgefuse metadata (neither {side.name} nor metadata_props); "
            "export the model with `edgefuse export`"
        )
    return dict(json.loads(props["edgefuse"]))


@dataclass(frozen=True, kw_only=True)
class Timings:
    """Milliseconds spent per stage on one set."""

    preprocess_ms: float
    network_ms: float
    postprocess_ms: float

    def as_dict(self) -> dict[str, float]:
        """``{"preprocess": ..., "network": ..., "postprocess": ...}``."""
        return {
            "preprocess": self.preprocess_ms,
            "network": self.network_ms,
            "postprocess": self.postprocess_ms,
        }


class Inference:
    """The exported model on a backend, with the runtime's own pre- and postprocessing.

    ``streams`` maps the aligned set's stream names to modalities (the default pipeline's
    ``camera``, ``depth``, ``lidar``, ``mic``); ``camera`` names the rig sensor whose image
    the 2D boxes are in."""

    def __init__(
        self,
        model: str | Path,
        rig: RigCalibration,
        *,
        backend: str = "auto",
        options: BackendOptions | None = None,
        streams: dict[str, str] | None = None,
        camera: str = "camera",
        score_threshold: float = 0.1,
    ) -> None:
        self.model = Path(model)
        self.meta = model_metadata(self.model)
        if self.meta.get("rig", {}).get("name") not in (None, rig.rig):
            raise ModelMetadataError(
                f"{self.model} was trained for rig {self.meta['rig']['name']!r}, "
                f"not {rig.rig!r}: its camera lift is built from that rig's calibration"
            )
        self.spec = FeatureSpec.from_dict(self.meta["preprocessing"]["spec"])
        self.grid = GridSpec.from_dict(self.meta["grid"])
        self.modalities = tuple(self.meta["modalities"])
        pre_kw: dict[str, Any] = {} if streams is None else {"streams": dict(streams)}
        self.preprocessor = Preprocessor(rig, self.spec, **pre_kw)
        self.camera = rig.sensor(camera)
        self.score_threshold = score_threshold
        self.backend: Backend = open_backend(backend, self.model, options or BackendOptions())
        missing = set(self.backend.input_names) - {*MODALITIES, "mask"}
        if missing:
            raise ModelMetadataError(f"{self.model}: inputs {sorted(missing)} are not ours")
        self.sha256 = (
            self.meta.get("onnx_sha256") or hashlib.sha256(self.model.read_bytes()).hexdigest()
        )

    def present(self, inputs: dict[str, np.ndarray]) -> dict[str, bool]:
        """Which of the model's modalities the inputs hold (the mask)."""
        mask = inputs["mask"][0]
        return {m: bool(mask[MODALITIES.index(m)] > 0) for m in self.modalities}

    def run_inputs(self, inputs: dict[str, np.ndarray]) -> tuple[Detections, float, float]:
        """Network and postprocessing of preprocessed inputs: (detections, network ms,
        postprocess ms)."""
        t0 = time.perf_counter_ns()
        out = self.backend.run({n: inputs[n] for n in self.backend.input_names})
        t1 = time.perf_counter_ns()
        dets = decode(
            out["heatmap"][0], out["boxes"][0], self.grid, score_threshold=self.score_threshold
        )
        dets = dataclasses.replace(dets, box2d=project_boxes(dets.box3d, self.camera))
        t2 = time.perf_counter_ns()
        return dets, (t1 - t0) / 1e6, (t2 - t1) / 1e6

    def __call__(self, aligned: AlignedSet) -> tuple[Detections, dict[str, bool], Timings]:
        """Detections of one set, which modalities it had, and the time of each stage."""
        t0 = time.perf_counter_ns()
        inputs = self.preprocessor(aligned)
        pre_ms = (time.perf_counter_ns() - t0) / 1e6
        dets, net_ms, post_ms = self.run_inputs(inputs)
        timings = Timings(preprocess_ms=pre_ms, network_ms=net_ms, postprocess_ms=post_ms)
        return dets, self.present(inputs), timings

    def warm_up(self, runs: int = 3) -> float:
        """Run the network and decoder ``runs`` times on zero inputs of the model's shapes, so
        the first real set does not pay for lazy allocations, kernel selection or an engine's
        first launch (trtexec warms up for the same reason); returns the slowest run in ms."""
        shapes = self.meta["inputs"]
        zeros = {
            n: np.zeros(shapes[n]["shape"], np.dtype(shapes[n].get("dtype", "float32")))
            for n in self.backend.input_names
        }
        slowest = 0.0
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            self.run_inputs(zeros)
            slowest = max(slowest, (time.perf_counter_ns() - t0) / 1e6)
        return slowest

    def close(self) -> None:
        """Release the backend."""
        self.backend.close()
