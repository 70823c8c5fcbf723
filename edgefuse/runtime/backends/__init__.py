"""Inference backends behind one interface, chosen by name or ``auto``.

=================  ==========================================================================
``onnxruntime``    ONNX Runtime; CPU everywhere, CUDA with ``onnxruntime-gpu`` (core dependency)
``tensorrt``       a TensorRT engine built from the ONNX and cached (extra ``gpu``; 10.x on
                   JetPack 6, 11.x on desktops)
``torch``          PyTorch eager from the weights beside the ONNX: the reference (extra ``train``)
=================  ==========================================================================

``auto`` takes TensorRT where it imports and a GPU is present, else ONNX Runtime with CUDA,
else ONNX Runtime on CPU. Each backend module is imported only when it is opened, so the
runtime needs none of the optional libraries. More backends register with
:func:`register_backend`.

    from edgefuse.runtime.backends import BackendOptions, open_backend
    backend = open_backend("auto", "fusion.onnx", BackendOptions(threads=2))
    outputs = backend.run(inputs)          # {"heatmap": ..., "boxes": ...}
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from edgefuse.runtime.backends.base import (
    OUTPUT_NAMES,
    PRECISIONS,
    Backend,
    BackendOptions,
    Precision,
)
from edgefuse.runtime.backends.errors import BackendError

__all__ = [
    "OUTPUT_NAMES",
    "PRECISIONS",
    "Backend",
    "BackendError",
    "BackendOptions",
    "Precision",
    "backend_names",
    "choose_auto",
    "open_backend",
    "register_backend",
]

Factory = Callable[[Path, BackendOptions], Backend]

# name -> "module:Class", imported on first use.
_REGISTRY: dict[str, str | Factory] = {
    "onnxruntime": "edgefuse.runtime.backends._onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "edgefuse.runtime.backends._tensorrt:TensorRTBackend",
    "torch": "edgefuse.runtime.backends._torch:TorchBackend",
}


def register_backend(name: str, factory: Factory) -> None:
    """Make ``factory(model_path, options)`` available as backend ``name``."""
    if name == "auto":
        raise ValueError("'auto' is not a backend name")
    _REGISTRY[name] = factory


def backend_names() -> tuple[str, ...]:
    """The registered backend names (``auto`` is not one of them)."""
    return tuple(_REGISTRY)


def _factory(name: str) -> Factory:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise BackendError(f"unknown backend {name!r}; expected auto or one of {backend_names()}")
    if isinstance(entry, str):
        module, cls = entry.split(":")
        factory: Factory = getattr(importlib.import_module(module), cls)
        return factory
    return entry


def choose_auto(options: BackendOptions) -> str:
    """The backend ``auto`` means here: TensorRT where it imports and sees a GPU (and the
    options do not ask for the CPU), else ONNX Runtime (which itself takes CUDA if it can)."""
    if options.device != "cpu":
        from edgefuse.runtime.backends._tensorrt import tensorrt_usable

        if tensorrt_usable():
            return "tensorrt"
    return "onnxruntime"


def open_backend(name: str, model: str | Path, options: BackendOptions | None = None) -> Backend:
    """Open ``model`` (an ONNX file) with backend ``name`` (or ``auto``); ``BackendError``
    names what is missing (the model, the library and the extra to install, a GPU)."""
    options = options or BackendOptions()
    path = Path(model)
    if not path.is_file():
        raise BackendError(f"model file {path} not found")
    if name == "auto":
        name = choose_auto(options)
    return _factory(name)(path, options)
