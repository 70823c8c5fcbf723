"""ONNX Runtime: the CPU default everywhere, and CUDA where ``onnxruntime-gpu`` finds a GPU."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.runtime.backends.base import OUTPUT_NAMES, BackendOptions
from edgefuse.runtime.backends.errors import BackendError


def cuda_available() -> bool:
    """Whether this ONNX Runtime build has the CUDA execution provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


class OnnxRuntimeBackend:
    """An ``InferenceSession`` set up for an edge device that also captures sensors.

    CPU: ``threads`` intra-op threads, one inter-op thread, sequential execution, all graph
    optimisations, and no spinning: idle pool threads sleep instead of burning the cores the
    capture nodes need. CUDA (``device`` cuda, or auto with a GPU build): the CUDA provider on
    ``gpu``, CPU as the fallback for any op it lacks."""

    name = "onnxruntime"

    def __init__(self, model: str | Path, options: BackendOptions) -> None:
        import onnxruntime as ort

        path = Path(model)
        if not path.is_file():
            raise BackendError(f"model file {path} not found")
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        use_cuda = options.device == "cuda" or (options.device == "auto" and cuda_available())
        if options.device == "cuda" and not cuda_available():
            raise BackendError(
                "onnxruntime: device cuda asked for, but this ONNX Runtime has no CUDA provider "
                "(install onnxruntime-gpu matching your CUDA, see docs/JETSON.md)"
            )
        providers: list[Any] = ["CPUExecutionProvider"]
        if use_cuda:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": options.gpu}))
        try:
            self._session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf types
            raise BackendError(f"onnxruntime cannot load {path}: {e}") from e
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        outputs = [o.name for o in self._session.get_outputs()]
        if tuple(outputs) != OUTPUT_NAMES:
            raise BackendError(f"{path}: outputs {outputs}, expected {list(OUTPUT_NAMES)}")
        self._version = str(ort.__version__)
        self._threads = options.threads

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of one set."""
        out = self._session.run(list(OUTPUT_NAMES), {n: inputs[n] for n in self.input_names})
        return dict(zip(OUTPUT_NAMES, out, strict=True))

    def info(self) -> dict[str, Any]:
        """Version, providers in use and threads."""
        return {
            "backend": self.name,
            "version": self._version,
            "providers": list(self._session.get_providers()),
            "threads": self._threads,
            "precision": "fp32",
        }

    def close(self) -> None:
        """Drop the session."""
        self.__dict__.pop("_session", None)
