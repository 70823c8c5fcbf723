"""``edgefuse compile MODEL.onnx``: build (or reuse) the TensorRT engine and measure it.

What ``trtexec --onnx=MODEL.onnx`` gives a TensorRT user, for edgefuse's models and engine
cache:

1. The static TensorRT-compatibility check (:mod:`edgefuse.runtime.trt_compat`, for
   TensorRT 10.3 on JetPack 6 and 11.x) runs first and is printed, on any machine: a problem
   there ends the command with exit code 1 before any build is attempted.
2. Where TensorRT, PyCUDA and a GPU are present, the engine is built through the
   ``tensorrt`` backend (so into the same cache the pipeline's infer node uses) or taken from
   that cache, and the command reports the build time, the engine's size, whether it came
   from the cache, and the latency of one inference as the pipeline sees it (host-to-device
   copies, ``execute_async_v3``, device-to-host copies and the stream synchronize) as
   median/p90/p99 over ``--iterations`` runs after ``--warmup`` discarded ones.
3. Where TensorRT or a GPU is missing, it says which and what to install, after the
   compatibility report, and exits with code 3: on a development machine the command is
   still a useful pre-flight check.

Exit codes: 0 built and measured; 1 the compatibility check found problems; 2 the model file
is missing (or unreadable); 3 TensorRT, PyCUDA, a GPU or ``onnx`` (for the check) is
missing; 4 the build or a run failed (the message says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgefuse.runtime.backends.base import PRECISIONS

__all__ = [
    "EXIT_BUILD_FAILED",
    "EXIT_COMPAT",
    "EXIT_MISSING_MODEL",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "compile_model",
    "latency_summary",
    "register",
]

EXIT_OK = 0
EXIT_COMPAT = 1
EXIT_MISSING_MODEL = 2
EXIT_UNAVAILABLE = 3
EXIT_BUILD_FAILED = 4


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    """Milliseconds: median, p90, p99, mean, min and max of ``samples_s`` (seconds), with the
    percentiles interpolated linearly as :func:`numpy.percentile` does."""
    import numpy as np

    if not samples_s:
        raise ValueError("no latency samples")
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {
        "median": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }


def _measure(backend: Any, iterations: int, warmup: int) -> dict[str, Any]:
    """Time ``backend.run`` on fixed seeded inputs of the engine's shapes."""
    import numpy as np

    rng = np.random.default_rng(0)
    inputs = {
        name: (
            np.ones(shape, dtype=np.float32)  # every modality present
            if name == "mask"
            else rng.random(shape, dtype=np.float32)
        )
        for name, (shape, _dtype) in backend.input_specs().items()
    }
    for _ in range(warmup):
        backend.run(inputs)
    samples: list[float] = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        backend.run(inputs)
        samples.append(time.perf_counter() - t0)
    return {
        "iterations": iterations,
        "warmup": warmup,
        "what": "host-to-device copies + execute_async_v3 + device-to-host copies + sync",
        **{k: round(v, 4) for k, v in latency_summary(samples).items()},
    }


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _print_result(info: dict[str, Any], latency: dict[str, Any]) -> None:
    print(
        f"TensorRT {info['version']} on {info['gpu']} (compute capability "
        f"{info['compute_capability']}, {info['sm_count']} SMs)"
    )
    plan = info.get("plan") or {}
    note = f" ({plan['note']})" if plan.get("note") else ""
    print(f"precision: {info['precision']}{note}")
    if info["engine_from_cache"]:
        built = info.get("recorded_build_s")
        origin = "from cache" + (f" (built in {built:.1f} s)" if built is not None else "")
    else:
        origin = f"built in {info['build_s']:.1f} s"
    print(
        f"engine: {info['engine_path']} ({_fmt_bytes(info['engine_bytes'])}), {origin}, "
        f"loaded in {info['load_s']:.2f} s"
    )
    print(f"timing cache: {info['timing_cache']}")
    print(
        f"latency over {latency['iterations']} runs ({latency['warmup']} warm-up), "
        f"{latency['what']}: median {latency['median']:.3f} ms, p90 {latency['p90']:.3f} ms, "
        f"p99 {latency['p99']:.3f} ms"
    )


def compile_model(
    model: str | Path,
    *,
    precision: str = "fp32",
    cache_dir: str | Path | None = None,
    gpu: int = 0,
    iterations: int = 200,
    warmup: int = 20,
    rebuild: bool = False,
    as_json: bool = False,
) -> int:
    """Run the compatibility check, then build or reuse the engine and time it; print a text
    report (or one JSON object with ``as_json``) and return the exit code (see the module
    docstring). Raises :class:`~edgefuse.runtime.trt_compat.TrtCompatError` for a file that
    is not an ONNX model."""
    from edgefuse.errors import MissingExtraError
    from edgefuse.runtime.backends._tensorrt import TensorRTBackend, tensorrt_availability
    from edgefuse.runtime.backends.base import BackendOptions
    from edgefuse.runtime.backends.errors import BackendError
    from edgefuse.runtime.trt_compat import check_tensorrt_compat

    path = Path(model)
    report: dict[str, Any] = {"model": str(path), "precision": precision}

    def finish(code: int, error: str | None = None) -> int:
        if error is not None:
            report["error"] = error
            print(f"edgefuse compile: {error}", file=sys.stderr)
        if as_json:
            report["exit_code"] = code
            print(json.dumps(report, indent=2))
        return code

    if not path.is_file():
        return finish(EXIT_MISSING_MODEL, f"model file {path} not found")
    try:
        compat = check_tensorrt_compat(path)
    except MissingExtraError as exc:
        return finish(EXIT_UNAVAILABLE, f"the compatibility check needs onnx: {exc}")
    report["compat"] = compat.to_dict()
    if not as_json:
        print(compat.format())
    if not compat.ok:
        return finish(EXIT_COMPAT, "the model would not parse in TensorRT (see the report)")

    avail = tensorrt_availability()
    report["tensorrt"] = {
        "usable": avail.usable,
        "version": avail.tensorrt_version,
        "pycuda": avail.pycuda,
        "gpus": avail.gpu_count,
    }
    if not avail.usable:
        return finish(
            EXIT_UNAVAILABLE,
            f"cannot build an engine on this machine: {avail.reason} (only the compatibility "
            "check could run here)",
        )

    options = BackendOptions(
        device="cuda",
        gpu=gpu,
        precision=precision,  # type: ignore[arg-type]  # validated by BackendOptions
        cache_dir=Path(cache_dir) if cache_dir is not None else None,
    )
    try:
        backend = TensorRTBackend(path, options, rebuild=rebuild)
    except (BackendError, MissingExtraError) as exc:
        return finish(EXIT_BUILD_FAILED, str(exc))
    try:
        info = backend.info()
        latency = _measure(backend, iterations, warmup)
    except BackendError as exc:
        return finish(EXIT_BUILD_FAILED, str(exc))
    finally:
        backend.close()
    report["engine"] = info
    report["latency_ms"] = latency
    if not as_json:
        _print_result(info, latency)
    return finish(EXIT_OK)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with a message saying which it is not."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _cmd_compile(args: argparse.Namespace) -> int:
    return compile_model(
        args.model,
        precision=args.precision,
        cache_dir=args.cache_dir,
        gpu=args.gpu,
        iterations=args.iterations,
        warmup=args.warmup,
        rebuild=args.rebuild,
        as_json=args.json,
    )


def register(sub: Any) -> None:
    """Add ``compile`` to the ``edgefuse`` parser."""
    p = sub.add_parser(
        "compile",
        help="TensorRT: check the model, build (or reuse) its engine and time it",
        description="Check MODEL.onnx for TensorRT 10.3 (JetPack 6) and 11.x, then, where "
        "TensorRT and a GPU are present, build (or reuse) its engine and time it. Exit codes: "
        "0 ok, 1 compatibility problems, 2 model missing, 3 TensorRT/GPU missing, 4 build "
        "failed.",
    )
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32; fp16 (TensorRT 10.x: builder flag; 11.x: the ONNX must be FP16); "
        "int8 (the ONNX must carry Q/DQ nodes). Default fp32",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="engine and timing cache (default: ~/.cache/edgefuse/trt, as the infer node)",
    )
    p.add_argument("--gpu", type=_int_at_least(0), default=0, metavar="N", help="CUDA device index")
    p.add_argument(
        "--iterations", type=_int_at_least(1), default=200, help="timed runs (default 200)"
    )
    p.add_argument(
        "--warmup", type=_int_at_least(0), default=20, help="discarded runs first (default 20)"
    )
    p.add_argument("--rebuild", action="store_true", help="build even if a cached engine fits")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(fn=_cmd_compile)
