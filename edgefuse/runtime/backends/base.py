"""The interface every inference backend implements, and the options they take."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "int8")
#: The graph's outputs, in order (see ``edgefuse.model.network``).
OUTPUT_NAMES = ("heatmap", "boxes")


@dataclass(frozen=True, kw_only=True)
class BackendOptions:
    """How a backend runs the model; each backend reads the fields that apply to it."""

    #: CPU intra-op threads (ONNX Runtime, PyTorch on CPU).
    threads: int = 2
    #: ``cpu`` or ``cuda``; ``auto`` takes the GPU where the backend finds one.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: CUDA device index.
    gpu: int = 0
    #: TensorRT engine precision (fp16 / int8 need a model that carries them, see docs/JETSON.md).
    precision: Precision = "fp32"
    #: Where TensorRT keeps engines and its timing cache (default: ``~/.cache/edgefuse/trt``).
    cache_dir: Path | None = None
    #: PyTorch weights; default: the ``.pt`` beside the ONNX file.
    checkpoint: Path | None = None
    #: PyTorch: the rig calibration the network was built for (its camera lift); default
    #: ``calibration/<rig>.yaml`` of the rig named in the model's metadata.
    rig: Path | None = None
    #: PyTorch on CUDA: capture the network in a CUDA graph.
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


class Backend(Protocol):
    """One loaded model that turns network inputs into outputs, batch 1.

    ``run`` takes the inputs by name (fp32 arrays of the model's static shapes, as
    :class:`~edgefuse.runtime.preprocess.Preprocessor` makes them) and returns the outputs by
    name (``heatmap``, ``boxes``) as host numpy arrays the caller may keep."""

    name: str
    input_names: tuple[str, ...]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of one set."""
        ...

    def info(self) -> dict[str, Any]:
        """What runs the model: library version, device, precision, providers (JSON-ready)."""
        ...

    def close(self) -> None:
        """Release the session, engine and device buffers."""
        ...
