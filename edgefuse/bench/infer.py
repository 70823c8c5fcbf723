"""``edgefuse bench infer``: per-set inference latency, ONNX Runtime against PyTorch eager.

Each measured iteration takes the next of a few seconds of real aligned sets (a simulated
session, aligned offline as ``pipelines/sim.yaml`` aligns it live; cycled) through the three
stages of the runtime, each timed on its own:

- **preprocess**: :class:`~edgefuse.runtime.preprocess.Preprocessor` on the set (resize, BEV
  binning, log-mel), so its cost is that of real payloads;
- **network**: the exported graph in ONNX Runtime (CPU, ``--threads`` intra-op threads, one
  inter-op thread, sequential, all graph optimisations, no spinning so idle threads leave the
  cores to capture) or the checkpoint it was exported from in PyTorch eager
  (``torch.set_num_threads``, ``torch.inference_mode``);
- **postprocess**: :func:`~edgefuse.runtime.postprocess.decode` and the camera projection of
  the boxes (:func:`~edgefuse.runtime.postprocess.project_boxes`);

and ``total``, the three together. The backends run one after the other in the same process
on the same sets, each after its own warm-up; medians, p90 and p99 in milliseconds. The goal:
the ONNX Runtime network stage at most :data:`GOAL_ONNXRUNTIME_NETWORK_MS` (median) and at
least :data:`GOAL_SPEEDUP` times faster than PyTorch eager (ratio of network medians).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import edgefuse
from edgefuse.calib.model import (
    RigCalibration,
    SensorCalibration,
    find_calibration,
    load_calibration,
)
from edgefuse.errors import EdgefuseError
from edgefuse.runtime.infer import DEFAULT_MODEL
from edgefuse.runtime.postprocess import GridSpec, decode, project_boxes
from edgefuse.runtime.preprocess import FeatureSpec, Preprocessor
from edgefuse.sync.aligned_set import AlignedSet

DEFAULT_PIPELINE = "pipelines/sim.yaml"
DEFAULT_RIG = "calibration/sim_rig.yaml"
BACKENDS = ("onnxruntime", "torch", "tensorrt")
STAGES = ("preprocess", "network", "postprocess", "total")
DEFAULT_ITERATIONS = 200
DEFAULT_WARMUP = 20
DEFAULT_THREADS = 2
#: The input session: scenario, seed and seconds of the simulated rig.
SESSION = ("day", 0, 3.0)
GOAL_ONNXRUNTIME_NETWORK_MS = 10.0
_THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENCV_FOR_THREADS_NUM",
)
GOAL_SPEEDUP = 2.0

#: Network inputs by name -> (heatmap, boxes), batch 1.
Network = Callable[[Mapping[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


class InferBenchError(EdgefuseError):
    """The benchmark cannot run as asked (a missing model or checkpoint): a usage error."""


def resolve_model(model: str | Path | None) -> Path:
    """The ONNX file to measure: ``model``, else the shipped one; ``InferBenchError`` naming
    the file when it does not exist."""
    if model is None:
        if not DEFAULT_MODEL.is_file():
            raise InferBenchError(
                f"no model at {DEFAULT_MODEL}: the shipped model is not built yet; make it with "
                f"`edgefuse export CHECKPOINT.pt -o {DEFAULT_MODEL}` or pass --model MODEL.onnx"
            )
        return DEFAULT_MODEL
    path = Path(model)
    if not path.is_file():
        raise InferBenchError(f"model file {path} not found (make one with `edgefuse export`)")
    return path


def resolve_checkpoint(model: Path, checkpoint: str | Path | None) -> tuple[Path | None, str]:
    """The PyTorch checkpoint to compare with: ``checkpoint`` (``InferBenchError`` if it does
    not exist), else the ``.pt`` beside ``model`` with its stem; (None, why) when there is none."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise InferBenchError(f"checkpoint file {path} not found")
        return path, ""
    beside = model.with_suffix(".pt")
    if beside.is_file():
        return beside, ""
    return None, f"no checkpoint: {beside} does not exist and --checkpoint was not given"


def _pipeline_path(pipeline: str) -> Path:
    """``pipeline`` relative to the repository root, else to the working directory."""
    p = Path(pipeline)
    if p.is_absolute():
        return p
    repo = Path(edgefuse.__file__).resolve().parents[1] / p
    return repo if repo.exists() else p


def input_sets(
    *,
    scenario: str = SESSION[0],
    seed: int = SESSION[1],
    seconds: float = SESSION[2],
    pipeline: str = DEFAULT_PIPELINE,
) -> list[AlignedSet]:
    """The aligned sets of a freshly simulated session (kept in memory; the file is removed)."""
    from edgefuse.record import SessionReader
    from edgefuse.sim.generate import generate
    from edgefuse.sim.rig import SimParams
    from edgefuse.sync.offline import align_messages, aligner_from_pipeline

    aligner = aligner_from_pipeline(_pipeline_path(pipeline))
    with tempfile.TemporaryDirectory(prefix="edgefuse-bench-infer-") as d:
        session = Path(d) / "session.mcap"
        generate(session, SimParams(scenario=scenario, seed=seed), duration_s=seconds)
        with SessionReader(session) as reader:
            # Payloads are views of the records read, which stay alive with the sets.
            return list(align_messages(reader.messages(), aligner))


def onnx_network(model: Path, *, threads: int) -> tuple[Network, list[str], str]:
    """The runtime's ONNX Runtime backend on ``model`` (CPU, as deployed on the edge), its
    input names and the runtime's version."""
    from edgefuse.runtime.backends import BackendOptions, open_backend

    backend = open_backend("onnxruntime", model, BackendOptions(threads=threads, device="cpu"))

    def run(x: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = backend.run(x)
        return out["heatmap"], out["boxes"]

    return run, list(backend.input_names), str(backend.info()["version"])


def tensorrt_network(model: Path, *, precision: str) -> tuple[Network | None, str, str]:
    """The runtime's TensorRT backend on ``model`` (engine from the cache, built on first use):
    (network, "", TensorRT version), or (None, why it cannot run here, "")."""
    from edgefuse.runtime.backends import BackendOptions, open_backend
    from edgefuse.runtime.backends._tensorrt import tensorrt_availability

    avail = tensorrt_availability()
    if not avail.usable:
        return None, f"TensorRT cannot run here: {avail.reason}", ""
    backend = open_backend(
        "tensorrt",
        model,
        BackendOptions(device="cuda", precision=precision),  # type: ignore[arg-type]
    )

    def run(x: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = backend.run(x)
        return out["heatmap"], out["boxes"]

    return run, "", str(backend.info().get("version", ""))


def parity(
    reference: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
    """How far ``other``'s outputs are from ``reference``'s: largest absolute and relative
    difference (relative to the largest reference magnitude of each output) and the cosine
    similarity of all outputs together."""
    a = np.concatenate([np.ravel(x).astype(np.float64) for x in reference])
    b = np.concatenate([np.ravel(x).astype(np.float64) for x in other])
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
    return {
        "max_abs": float(np.max(np.abs(a - b))),
        "max_rel": _max_rel_diff(reference, other),
        "cosine": round(cos, 9),
    }


def torch_network(
    checkpoint: Path, rig: RigCalibration, *, model_config: Mapping[str, Any]
) -> tuple[Network | None, str, str]:
    """PyTorch eager on ``checkpoint``: (network, "", torch version), or (None, why skipped,
    version) when torch is not installed or the checkpoint is of another configuration than
    the ONNX model (``model_config`` from its metadata). Threads: set by the caller."""
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed (pip install 'edgefuse[train]')", ""
    from edgefuse.model.train import load_checkpoint

    net, _ = load_checkpoint(checkpoint, rig)
    version = str(torch.__version__)
    if json.loads(json.dumps(net.cfg.to_dict())) != dict(model_config):
        return None, f"{checkpoint} is of another model configuration than the ONNX model", version
    names = net.input_names()

    def run(x: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            heatmap, boxes = net(*(torch.from_numpy(x[n]) for n in names))
        return heatmap.numpy(), boxes.numpy()

    return run, "", version


def _postprocess(grid: GridSpec, camera: SensorCalibration) -> Callable[..., Any]:
    def run(heatmap: np.ndarray, boxes: np.ndarray) -> Any:
        dets = decode(heatmap[0], boxes[0], grid)
        return dataclasses.replace(dets, box2d=project_boxes(dets.box3d, camera))

    return run


def summarize_ms(samples_ns: Sequence[int]) -> dict[str, float]:
    """Median, p90 and p99 (ms, 4 decimals) of durations in ns."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {
        "median": round(float(np.median(a)), 4),
        "p90": round(float(np.percentile(a, 90)), 4),
        "p99": round(float(np.percentile(a, 99)), 4),
    }


def measure(
    sets: Sequence[AlignedSet],
    preprocess: Callable[[AlignedSet], dict[str, np.ndarray]],
    network: Network,
    postprocess: Callable[[np.ndarray, np.ndarray], Any],
    *,
    iterations: int,
    warmup: int,
) -> dict[str, dict[str, float]]:
    """``warmup`` then ``iterations`` sets (cycling over ``sets``) through the three stages;
    each stage's and the total's distribution (ms)."""
    times: dict[str, list[int]] = {s: [] for s in STAGES}
    clock = time.perf_counter_ns
    for i in range(warmup + iterations):
        s = sets[i % len(sets)]
        t0 = clock()
        x = preprocess(s)
        t1 = clock()
        heatmap, boxes = network(x)
        t2 = clock()
        postprocess(heatmap, boxes)
        t3 = clock()
        if i >= warmup:
            times["preprocess"].append(t1 - t0)
            times["network"].append(t2 - t1)
            times["postprocess"].append(t3 - t2)
            times["total"].append(t3 - t0)
    return {f"{s}_ms": summarize_ms(times[s]) for s in STAGES}


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # not on every platform
        return None


def _max_rel_diff(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    return max(
        float(np.abs(x - y).max() / max(float(np.abs(y).max()), 1e-12))
        for x, y in zip(a, b, strict=True)
    )


def run(
    *,
    model: str | Path | None = None,
    checkpoint: str | Path | None = None,
    backend: str = "all",
    precision: str = "fp32",
    threads: int = DEFAULT_THREADS,
    iterations: int = DEFAULT_ITERATIONS,
    warmup: int = DEFAULT_WARMUP,
    rig: str = DEFAULT_RIG,
    pipeline: str = DEFAULT_PIPELINE,
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole benchmark as one JSON-ready document; ``InferBenchError`` when it cannot run
    as asked (no model; ``backend="torch"`` without a usable checkpoint)."""
    from edgefuse.runtime.infer import model_metadata as read_metadata

    if backend not in (*BACKENDS, "all"):
        raise InferBenchError(f"unknown backend {backend!r}; expected {', '.join(BACKENDS)} or all")
    if threads < 1 or iterations < 1 or warmup < 0:
        raise InferBenchError("--threads and --iterations must be >= 1, --warmup >= 0")
    model_path = resolve_model(model)
    wanted = BACKENDS if backend == "all" else (backend,)
    ck_path, ck_reason = (
        (None, "") if "torch" not in wanted else resolve_checkpoint(model_path, checkpoint)
    )
    if backend == "torch" and ck_path is None:
        raise InferBenchError(ck_reason)
    load_before = _loadavg()
    meta = read_metadata(model_path)
    spec = FeatureSpec.from_dict(meta["preprocessing"]["spec"])
    grid = GridSpec.from_dict(meta["grid"])
    rig_cal = load_calibration(find_calibration(rig))
    pre = Preprocessor(rig_cal, spec)
    post = _postprocess(grid, rig_cal.sensor("camera"))

    if progress:
        progress(f"simulating {SESSION[2]:g} s ({SESSION[0]}, seed {SESSION[1]}) and aligning it")
    sets = input_sets(pipeline=pipeline)
    if not sets:
        raise InferBenchError("the simulated session gave no aligned sets")

    networks: dict[str, Network] = {}
    backends: dict[str, Any] = {}
    versions: dict[str, str] = {}
    if "onnxruntime" in wanted:
        networks["onnxruntime"], _, versions["onnxruntime"] = onnx_network(
            model_path, threads=threads
        )
    torch_threads: int | None = None
    if "torch" in wanted:
        if ck_path is None:
            backends["torch"] = {"skipped": ck_reason}
        else:
            net, reason, version = torch_network(
                ck_path, rig_cal, model_config=meta["model_config"]
            )
            if version:
                versions["torch"] = version
            if net is None:
                if backend == "torch":
                    raise InferBenchError(reason)
                backends["torch"] = {"skipped": reason}
            else:
                import torch

                torch_threads = torch.get_num_threads()
                torch.set_num_threads(threads)
                networks["torch"] = net

    if "tensorrt" in wanted:
        trt_net, reason, version = tensorrt_network(model_path, precision=precision)
        if trt_net is None:
            if backend == "tensorrt":
                raise InferBenchError(reason)
            backends["tensorrt"] = {"skipped": reason}
        else:
            versions["tensorrt"] = version
            networks["tensorrt"] = trt_net

    try:
        rel = None
        against_ort: dict[str, dict[str, float]] = {}
        if "onnxruntime" in networks:
            x = pre(sets[0])
            ref = networks["onnxruntime"](x)
            for name, net in networks.items():
                if name != "onnxruntime":
                    against_ort[name] = parity(ref, net(x))
            if "torch" in against_ort:
                rel = against_ort["torch"]["max_rel"]
        for name, net in networks.items():
            if progress:
                progress(f"{name}: {warmup} + {iterations} sets")
            backends[name] = measure(sets, pre, net, post, iterations=iterations, warmup=warmup)
    finally:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)

    ort_ms = backends.get("onnxruntime", {}).get("network_ms", {}).get("median")
    torch_ms = backends.get("torch", {}).get("network_ms", {}).get("median")
    speedup = round(torch_ms / ort_ms, 3) if ort_ms and torch_ms else None
    network_ok = ort_ms is not None and ort_ms <= GOAL_ONNXRUNTIME_NETWORK_MS
    speedup_ok = speedup is not None and speedup >= GOAL_SPEEDUP
    return {
        "benchmark": "infer",
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "versions": versions,
            # Other work on the machine shows here first (a busy machine hits multi-threaded
            # eager PyTorch hardest: its threads wait for each other at every operator).
            "loadavg_1min": {"before": load_before, "after": _loadavg()},
            # Thread settings that change the figures (PyTorch's OpenMP threads spin-wait by
            # default, numpy's OpenBLAS ones too; on a busy machine they take turns at waiting).
            "env": {k: os.environ[k] for k in _THREAD_ENV if k in os.environ},
        },
        "model": str(model_path),
        "onnx_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "checkpoint": str(ck_path) if ck_path is not None else None,
        "model_config": meta["model_config"],
        "threads": threads,
        "iterations": iterations,
        "warmup": warmup,
        "input": {
            "scenario": SESSION[0],
            "seed": SESSION[1],
            "seconds": SESSION[2],
            "pipeline": pipeline,
            "rig": rig,
        },
        "sets": len(sets),
        "complete_sets": sum(1 for s in sets if s.complete),
        "backends": backends,
        "backend_max_rel_diff": rel,
        # Each other backend's outputs against ONNX Runtime's on the same set.
        "parity_vs_onnxruntime": against_ort,
        "precision": precision,
        "speedup_onnxruntime_vs_torch": speedup,
        "goal": {
            "onnxruntime_network_ms_max": GOAL_ONNXRUNTIME_NETWORK_MS,
            "speedup_min": GOAL_SPEEDUP,
            # Not met while either figure is unmeasured (a backend not run or skipped).
            "met": bool(network_ok and speedup_ok),
        },
    }


def format_table(doc: dict[str, Any]) -> str:
    """A few human lines for a terminal."""
    lines = [
        f"edgefuse bench infer  {Path(doc['model']).name} (sha256 {doc['onnx_sha256'][:12]})  "
        f"threads {doc['threads']}  {doc['sets']} sets, {doc['iterations']} iterations "
        f"after {doc['warmup']}",
        f"  {'ms median / p90 / p99':22s}" + "".join(f"  {s:>24s}" for s in STAGES),
    ]
    for name, b in doc["backends"].items():
        if "skipped" in b:
            lines.append(f"  {name:22s}skipped: {b['skipped']}")
            continue
        cells = "".join(
            "  {:>24s}".format("{median:.2f} / {p90:.2f} / {p99:.2f}".format(**b[f"{s}_ms"]))
            for s in STAGES
        )
        lines.append(f"  {name:22s}{cells}")
    speedup = doc["speedup_onnxruntime_vs_torch"]
    lines.append(
        "  speedup onnxruntime vs torch (network medians): "
        + (f"x{speedup}" if speedup is not None else "not measured")
    )
    g = doc["goal"]
    lines.append(
        f"goal: onnxruntime network median <= {g['onnxruntime_network_ms_max']:g} ms and "
        f"speedup >= {g['speedup_min']:g}: {'met' if g['met'] else 'not met'}"
    )
    return "\n".join(lines)
