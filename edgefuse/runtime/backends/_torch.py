"""PyTorch eager: the reference backend (CPU, or CUDA with an optional CUDA graph)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgefuse.errors import require_extra
from edgefuse.runtime.backends.base import OUTPUT_NAMES, BackendOptions
from edgefuse.runtime.backends.errors import BackendError


class TorchBackend:
    """The network rebuilt from its weights (``.pt`` beside the ONNX file, or
    ``options.checkpoint``) and run eagerly under ``torch.inference_mode``.

    The ONNX file's metadata names the configuration; a checkpoint of another configuration is
    refused. On CUDA with ``cuda_graphs`` the forward pass is captured once into a CUDA graph
    on static input buffers and replayed per set (no per-kernel launch cost)."""

    name = "torch"

    def __init__(self, model: str | Path, options: BackendOptions) -> None:
        torch: Any = require_extra("torch", "train")
        from edgefuse.calib.model import find_calibration, load_calibration
        from edgefuse.model.train import load_checkpoint
        from edgefuse.runtime.infer import model_metadata as read_metadata

        self._torch: Any = torch
        path = Path(model)
        ckpt = options.checkpoint or path.with_suffix(".pt")
        if not Path(ckpt).is_file():
            raise BackendError(f"torch: no weights at {ckpt} (pass the checkpoint explicitly)")
        meta = read_metadata(path)
        rig_path = options.rig or Path("calibration") / f"{meta['rig']['name']}.yaml"
        rig = load_calibration(find_calibration(rig_path))
        net, _ = load_checkpoint(ckpt, rig)
        if json.loads(json.dumps(net.cfg.to_dict())) != meta["model_config"]:
            raise BackendError(f"torch: {ckpt} is of another model configuration than {path}")
        cuda = bool(torch.cuda.is_available())
        if options.device == "cuda" and not cuda:
            raise BackendError("torch: device cuda asked for, but PyTorch sees no CUDA GPU")
        self._device = f"cuda:{options.gpu}" if options.device != "cpu" and cuda else "cpu"
        if self._device == "cpu":
            torch.set_num_threads(options.threads)
        self._net = net.to(self._device).eval()
        self.input_names = tuple(net.input_names())
        self._graph: Any = None
        self._static_in: dict[str, Any] = {}
        self._static_out: tuple[Any, ...] = ()
        if self._device != "cpu" and options.cuda_graphs:
            self._capture(meta)
        self._version = str(torch.__version__)

    def _capture(self, meta: Mapping[str, Any]) -> None:
        torch = self._torch
        shapes = {n: spec["shape"] for n, spec in meta["inputs"].items()}
        self._static_in = {n: torch.zeros(shapes[n], device=self._device) for n in self.input_names}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm-up on a side stream before capture (CUDA graph rules)
                self._net(*self._static_in.values())
        torch.cuda.current_stream().wait_stream(stream)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph), torch.inference_mode():
            self._static_out = self._net(*self._static_in.values())

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of one set."""
        torch = self._torch
        if self._graph is not None:
            for n in self.input_names:
                self._static_in[n].copy_(torch.from_numpy(inputs[n]), non_blocking=False)
            self._graph.replay()
            outs = self._static_out
        else:
            with torch.inference_mode():
                outs = self._net(
                    *(torch.from_numpy(inputs[n]).to(self._device) for n in self.input_names)
                )
        return {k: o.detach().cpu().numpy().copy() for k, o in zip(OUTPUT_NAMES, outs, strict=True)}

    def info(self) -> dict[str, Any]:
        """Version, device and whether a CUDA graph replays the network."""
        return {
            "backend": self.name,
            "version": self._version,
            "device": self._device,
            "cuda_graph": self._graph is not None,
            "precision": "fp32",
        }

    def close(self) -> None:
        """Drop the network and its CUDA graph."""
        self._graph = None
        self._static_in = {}
        self._static_out = ()
