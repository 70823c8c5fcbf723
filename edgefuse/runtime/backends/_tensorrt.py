"""TensorRT: an engine built from the ONNX model on the device it runs on, and cached.

TensorRT compiles the ONNX graph into an *engine* for one GPU, one TensorRT version and one
precision. Building takes seconds to minutes (the builder times candidate kernels), so this
backend keeps two caches in ``cache_dir`` (default ``~/.cache/edgefuse/trt``):

- the **engine cache**: ``<model>-<precision>-<digest>.engine`` plus a JSON sidecar holding
  the key it was built for (:func:`engine_cache_key`: the ONNX file's SHA-256, the TensorRT
  version, the GPU's name, compute capability and SM count, the precision, and the input
  shapes from the model's metadata, which a dynamic model's optimization profile is made
  of). A sidecar whose key differs, an engine whose size or hash differs from the
  sidecar's record, or an engine TensorRT refuses to deserialize is rebuilt. Both files are
  written atomically (temporary file, ``fsync``, ``os.replace``), the sidecar last, so a
  crash mid-write leaves either the old pair or no pair.
- the **timing cache**, one per TensorRT version and GPU, shared by every build: kernel
  timings measured once are reused, so a rebuild (new model, other precision) is much faster
  than the first build.

Precision depends on the TensorRT major version (:func:`plan_precision`):

- **10.x** (JetPack 6 on Jetson Orin) builds *weakly typed* networks: ``fp16`` from an FP32
  ONNX sets ``BuilderFlag.FP16`` and TensorRT picks FP16 kernels where they are faster.
  ``fp32`` clears ``BuilderFlag.TF32`` (on by default per the ``BuilderFlag`` reference), so
  FP32 means FP32 on Ampere-class GPUs such as Orin.
- **11.x** removed weak typing: every network is strongly typed and the precision comes from
  the ONNX itself (an FP16 export, or ModelOpt AutoCast). ``fp16`` with an FP32 ONNX is
  therefore refused with an explanation instead of silently building FP32.
- ``int8`` only from explicit quantization (``QuantizeLinear``/``DequantizeLinear`` in the
  ONNX, e.g. from ModelOpt), built strongly typed on both: the INT8 calibrators are deprecated
  since 10.1 and removed in 11.x, so they are never used.

Sources (looked up, not guessed): NVIDIA, "Migrating from TensorRT 10.x to 11.x" and
"Removed Python APIs and Replacements" (docs.nvidia.com/deeplearning/tensorrt/latest/api/
migration/tensorrt-10x-to-11x-python-api-reference.html: ``BuilderFlag.FP16`` -> "Strong
typing with ModelOpt AutoCast", ``BuilderFlag.INT8`` and ``IBuilderConfig.int8_calibrator`` ->
"Explicit quantization with Q/DQ nodes"); "TensorRT 11.0.0 Release Notes" ("Strongly typed
networks are now the default ... Weak typing is no longer supported"); the C++ API
deprecation list ("IInt8EntropyCalibrator2: Deprecated in TensorRT 10.1. Superseded by
explicit quantization"); "Explicit Quantization" ("Use explicit quantization with Strong
Typing. Precision-control build flags are not required and should not be specified").

Runtime (NVIDIA, "Migrating Python Code from TensorRT 8.x to 10.x": named I/O tensors,
``set_tensor_address``, ``execute_async_v3``; PyCUDA "Device Interface" docs): the device's
*primary* context (``Device.retain_primary_context``, the one the CUDA runtime and therefore
TensorRT use), one ``pycuda.driver.Stream``, one device buffer and one page-locked host buffer
per I/O tensor, addresses bound once; a run is async H2D copies, ``execute_async_v3``, async
D2H copies, one stream synchronize.

Everything that decides something (version parsing, the cache key, paths, the precision plan,
the model's precision facts, the profile shapes) is a small pure function, tested without a
GPU; the class around them is the thin part that needs one.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefuse.errors import MissingExtraError, require_extra
from edgefuse.runtime.backends.base import OUTPUT_NAMES, BackendOptions, Precision
from edgefuse.runtime.backends.errors import BackendError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "ENGINE_FORMAT",
    "GpuInfo",
    "ModelPrecision",
    "PrecisionPlan",
    "TensorRTBackend",
    "TrtAvailability",
    "atomic_write_bytes",
    "cached_engine_matches",
    "default_cache_dir",
    "engine_cache_key",
    "engine_path",
    "file_sha256",
    "key_digest",
    "model_precision",
    "parse_trt_version",
    "plan_precision",
    "profile_shapes",
    "read_feed_shapes",
    "sidecar_path",
    "tensorrt_availability",
    "tensorrt_usable",
    "timing_cache_path",
]

log = logging.getLogger(__name__)

#: Bumped when the way engines are built changes, so that old cached engines are rebuilt.
ENGINE_FORMAT = 1

#: Where TensorRT and PyCUDA come from on a Jetson (not from pip's ``gpu`` extra).
_JETSON_HINT = (
    "on Jetson TensorRT comes with JetPack (sudo apt install python3-libnvinfer, do not pip "
    "install tensorrt there) and PyCUDA is built against JetPack's CUDA, see docs/JETSON.md"
)
#: The hint wherever TensorRT is missing: pip has it on desktops, JetPack on Jetson.
_INSTALL_HINT = f"pip install 'edgefuse[gpu]' on a desktop with an NVIDIA GPU; {_JETSON_HINT}"

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


# --------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrtAvailability:
    """What this machine has of TensorRT: its version (None when it does not import), whether
    PyCUDA imports, how many CUDA devices the driver reports, and, when TensorRT cannot be
    used, ``reason`` in words naming what to install."""

    tensorrt_version: str | None
    pycuda: bool
    gpu_count: int
    reason: str | None

    @property
    def usable(self) -> bool:
        """True when TensorRT and PyCUDA import and a CUDA device exists."""
        return self.reason is None


def tensorrt_availability() -> TrtAvailability:
    """Probe TensorRT, PyCUDA and the CUDA driver without raising and without creating a CUDA
    context: ``cuInit`` (``pycuda.driver.init``) and the device count need none (a context is
    only created by ``make_context``/``retain_primary_context`` or ``pycuda.autoinit``)."""
    version: str | None = None
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            import tensorrt as trt

            version = str(trt.__version__)
        except Exception as exc:  # a wheel whose native libraries fail to load
            return TrtAvailability(None, False, 0, f"TensorRT does not import ({exc})")
    if version is None:
        return TrtAvailability(None, False, 0, f"TensorRT is not installed: {_INSTALL_HINT}")
    if importlib.util.find_spec("pycuda") is None:
        return TrtAvailability(
            version,
            False,
            0,
            f"PyCUDA is not installed: pip install 'edgefuse[gpu]'; {_JETSON_HINT}",
        )
    try:
        import pycuda.driver as cuda

        cuda.init()
        count = int(cuda.Device.count())
    except Exception as exc:  # no libcuda.so (no NVIDIA driver), or cuInit failing
        return TrtAvailability(
            version, True, 0, f"no usable CUDA driver/GPU ({type(exc).__name__}: {exc})"
        )
    if count == 0:
        return TrtAvailability(version, True, 0, "no CUDA GPU found (the driver reports none)")
    return TrtAvailability(version, True, count, None)


@functools.lru_cache(maxsize=1)
def tensorrt_usable() -> bool:
    """True only when ``tensorrt`` and ``pycuda`` import and a CUDA device exists; never
    raises, creates no CUDA context, and is cached (a GPU does not appear mid-process)."""
    try:
        return tensorrt_availability().usable
    except Exception:  # the probe must never take ``auto`` down
        return False


# --------------------------------------------------------------------------------------------
# Pure logic: versions, cache key and paths
# --------------------------------------------------------------------------------------------


def parse_trt_version(version: str) -> tuple[int, ...]:
    """``"10.3.0.30"`` -> ``(10, 3, 0, 30)``; leading numeric components only (a suffix such
    as ``"10.3.0+cuda12"`` or ``"11.0.0rc1"`` ends the parse). Raises :class:`BackendError`
    when not even the major version is a number."""
    parts: list[int] = []
    for piece in str(version).strip().split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    if not parts:
        raise BackendError(f"cannot parse the TensorRT version {version!r}")
    return tuple(parts)


@dataclass(frozen=True)
class GpuInfo:
    """The properties of a GPU an engine is specific to (TensorRT engines are not portable
    across GPU models: the kernels are chosen by timing on this one)."""

    name: str
    compute_capability: tuple[int, int]
    sm_count: int

    @property
    def cc(self) -> str:
        """Compute capability as ``"8.7"``."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def engine_cache_key(
    *,
    onnx_sha256: str,
    trt_version: str,
    gpu: GpuInfo,
    precision: Precision,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """The identity of an engine as a JSON-ready dict: everything that makes a built engine
    invalid or different when it changes. ``input_shapes`` (input -> shape, from the model's
    metadata) are the shapes the runtime feeds, from which a dynamic model's optimization
    profile is made; they are part of the key when known."""
    key: dict[str, Any] = {
        "format": ENGINE_FORMAT,
        "onnx_sha256": onnx_sha256,
        "tensorrt": trt_version,
        "gpu": gpu.name,
        "compute_capability": gpu.cc,
        "sm_count": gpu.sm_count,
        "precision": precision,
    }
    if input_shapes:
        key["input_shapes"] = {
            name: [int(d) for d in shape] for name, shape in sorted(input_shapes.items())
        }
    return key


def key_digest(key: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``key``: the same key gives the same digest."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edgefuse/trt``, by default ``~/.cache/edgefuse/trt``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefuse" / "trt"


def engine_path(cache_dir: Path, model: Path, key: Mapping[str, Any]) -> Path:
    """Where the engine for ``key`` lives: ``<cache_dir>/<model stem>-<precision>-<digest16>
    .engine``; a pure function of its arguments, so the same model, GPU, TensorRT and
    precision always find the same file."""
    return Path(cache_dir) / f"{_slug(model.stem)}-{key['precision']}-{key_digest(key)[:16]}.engine"


def sidecar_path(engine: Path) -> Path:
    """The JSON sidecar beside ``engine`` that records the key it was built for."""
    return engine.with_suffix(".json")


def timing_cache_path(cache_dir: Path, trt_version: str, gpu: GpuInfo) -> Path:
    """The timing cache shared by all builds with this TensorRT version on this GPU model
    (a cache from another version or device would be rejected by TensorRT anyway)."""
    return Path(cache_dir) / f"timing-trt{trt_version}-{_slug(gpu.name)}-sm{gpu.cc}.cache"


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never
    a partial one: a temporary file in the same folder, ``fsync``, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's content, or None when it is missing or not a JSON object (a corrupt
    sidecar only means a rebuild)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_engine_matches(
    sidecar: Mapping[str, Any] | None, key: Mapping[str, Any], engine: Path
) -> bool:
    """Whether the engine file may be loaded for ``key``: the sidecar records exactly this key,
    and the engine file has the size and SHA-256 the sidecar recorded (a truncated or
    replaced file is rebuilt rather than handed to the deserializer)."""
    if sidecar is None or sidecar.get("key") != dict(key):
        return False
    try:
        size = engine.stat().st_size
    except OSError:
        return False
    if size != sidecar.get("engine_bytes"):
        return False
    return file_sha256(engine) == sidecar.get("engine_sha256")


# --------------------------------------------------------------------------------------------
# Pure logic: the model's precision and the build plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelPrecision:
    """What precision an ONNX graph carries by itself: ``has_qdq`` when it has
    ``QuantizeLinear``/``DequantizeLinear`` nodes (explicit quantization), ``has_fp16`` when
    any tensor, initializer, constant or cast is FP16 or BF16 (an FP16 export, AutoCast)."""

    has_qdq: bool
    has_fp16: bool


def _iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_graphs(g)


def model_precision(model: str | Path | onnx.ModelProto) -> ModelPrecision:
    """Read ``model`` (a path or a loaded ``ModelProto``; external weights are never loaded)
    and say whether it carries Q/DQ nodes and FP16/BF16 types, including inside ``If``/
    ``Loop``/``Scan`` bodies and model-local functions. Needs ``onnx``."""
    onnx: Any = require_extra("onnx", "train")
    proto: Any = model
    if not isinstance(model, onnx.ModelProto):
        proto = onnx.load(str(model), load_external_data=False)
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    has_qdq = False
    has_fp16 = False
    node_lists: list[Any] = []
    for g in _iter_graphs(proto.graph):
        node_lists.append(g.node)
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in half:
                has_fp16 = True
        if any(init.data_type in half for init in g.initializer):
            has_fp16 = True
    node_lists += [fn.node for fn in proto.functions]
    for nodes in node_lists:
        for node in nodes:
            has_qdq = has_qdq or node.op_type in _QDQ_OPS
            for attr in node.attribute:
                casts_to_half = node.op_type == "Cast" and attr.name == "to" and attr.i in half
                half_constant = attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in half
                has_fp16 = has_fp16 or casts_to_half or half_constant
    return ModelPrecision(has_qdq=has_qdq, has_fp16=has_fp16)


@dataclass(frozen=True)
class PrecisionPlan:
    """How to build for a precision: ``strongly_typed`` (create the network with
    ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), the ``BuilderFlag`` names to set and to
    clear, and ``note``, one line saying where the precision comes from."""

    precision: Precision
    trt_major: int
    strongly_typed: bool
    set_flags: tuple[str, ...] = ()
    clear_flags: tuple[str, ...] = ()
    note: str = ""


_QDQ_HOWTO = (
    "quantize the ONNX explicitly with NVIDIA ModelOpt (modelopt.onnx.quantization.quantize("
    "onnx_path='MODEL.onnx', quantize_mode='int8', calibration_data=...)), which inserts "
    "QuantizeLinear/DequantizeLinear nodes, and build that file; TensorRT's INT8 calibrators "
    "are deprecated since 10.1 and removed in 11.x, so edgefuse does not use them"
)
_AUTOCAST_HOWTO = (
    "TensorRT 11.x removed BuilderFlag.FP16 (weak typing): networks are strongly typed and "
    "take their precision from the ONNX. Convert the model first with ModelOpt AutoCast "
    "(python -m modelopt.onnx.autocast --onnx_path MODEL.onnx, or "
    "modelopt.onnx.autocast.convert_to_mixed_precision(onnx_path=..., low_precision_type="
    "'fp16', keep_io_types=True)) or export it in FP16, and build that file; or use "
    "--precision fp32"
)


def plan_precision(trt_major: int, precision: Precision, facts: ModelPrecision) -> PrecisionPlan:
    """Decide how to build ``precision`` with TensorRT ``trt_major`` for a model with
    ``facts``, or raise :class:`BackendError` saying what to do instead.

    - The model's own types must fit the request: Q/DQ nodes mean ``int8``; FP16/BF16 tensors
      (without Q/DQ) mean ``fp16``; asking ``fp32`` of either would silently not be FP32.
    - ``fp32``: no precision flag; ``TF32`` cleared (it is on by default and rounds FP32
      convolutions/matmuls to 10-bit mantissas on Ampere and newer, e.g. Orin), so the engine
      matches ONNX Runtime to FP32 tolerances. Weakly typed on 10.x, strongly typed on 11.x.
    - ``fp16``: on 10.x an FP32 ONNX gets ``BuilderFlag.FP16`` (weak typing); an ONNX that
      already carries FP16 is built strongly typed so its FP32 islands stay FP32. On 11.x the
      ONNX must carry FP16 (the flag is gone): an FP32 ONNX is refused with the way out.
    - ``int8``: explicit quantization only (Q/DQ in the ONNX), strongly typed, no flags (as
      NVIDIA's "Explicit Quantization" guide prescribes); without Q/DQ it is refused.
    - TensorRT before 10 is refused; majors after 11 are treated like 11 (strongly typed).
    """
    if trt_major < 10:
        raise BackendError(
            f"TensorRT {trt_major}.x is not supported: edgefuse needs TensorRT 10.x "
            "(JetPack 6.1 or later) or 11.x"
        )
    legacy = trt_major == 10  # weak typing still exists
    if precision == "int8":
        if not facts.has_qdq:
            raise BackendError(
                "precision int8 needs an explicitly quantized model, but this ONNX has no "
                f"QuantizeLinear/DequantizeLinear nodes: {_QDQ_HOWTO}"
            )
        return PrecisionPlan(
            "int8",
            trt_major,
            strongly_typed=True,
            note="explicit quantization: INT8 where the ONNX has Q/DQ, other layers in the "
            "ONNX's types (strongly typed)",
        )
    if facts.has_qdq:
        raise BackendError(
            f"this ONNX is quantized (QuantizeLinear/DequantizeLinear nodes): build it with "
            f"--precision int8, not {precision}"
        )
    if precision == "fp32":
        if facts.has_fp16:
            raise BackendError(
                "this ONNX carries FP16/BF16 tensors (an FP16 export or AutoCast), so a "
                "strongly typed engine would not be FP32: build it with --precision fp16, or "
                "use the FP32 export"
            )
        return PrecisionPlan(
            "fp32",
            trt_major,
            strongly_typed=not legacy,
            clear_flags=("TF32",),
            note="FP32 kernels, TF32 off",
        )
    if precision != "fp16":
        raise BackendError(f"unknown precision {precision!r}; expected fp32, fp16 or int8")
    if facts.has_fp16:
        return PrecisionPlan(
            "fp16",
            trt_major,
            strongly_typed=True,
            note="FP16 as typed in the ONNX (strongly typed)",
        )
    if legacy:
        return PrecisionPlan(
            "fp16",
            trt_major,
            strongly_typed=False,
            set_flags=("FP16",),
            note="BuilderFlag.FP16 on an FP32 ONNX: TensorRT picks FP16 kernels where faster",
        )
    raise BackendError(
        f"precision fp16 with an FP32 ONNX on TensorRT {trt_major}.x: {_AUTOCAST_HOWTO}"
    )


def profile_shapes(
    name: str, dims: Sequence[int], feed: Sequence[int] | None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """The optimization profile (min, opt, max) for an input of ``dims`` (-1 = dynamic).

    The runtime always feeds one shape (batch 1, the shapes in the model's metadata), so the
    profile is that shape exactly (min = opt = max), which lets TensorRT pick the best
    kernels for it. ``feed`` is that shape (None: each dynamic dim becomes 1); it must have
    the input's rank and repeat its static dims."""
    dims = [int(d) for d in dims]
    if feed is None:
        shape = tuple(d if d >= 0 else 1 for d in dims)
    else:
        shape = tuple(int(d) for d in feed)
        if len(shape) != len(dims) or any(
            d >= 0 and d != f for d, f in zip(dims, shape, strict=True)
        ):
            raise BackendError(
                f"input {name!r}: the metadata's shape {list(shape)} does not fit the "
                f"network's {dims}"
            )
        if any(f <= 0 for f in shape):
            raise BackendError(f"input {name!r}: shape {list(shape)} has a dim <= 0")
    return shape, shape, shape


def read_feed_shapes(model: Path) -> dict[str, tuple[int, ...]]:
    """The input shapes the runtime feeds, from the model's metadata file (``<model>.json``
    beside it, key ``inputs``); empty when there is none (read as plain JSON: no ``onnx`` or
    ``torch`` needed on the device)."""
    meta = read_sidecar(Path(model).with_suffix(".json"))
    inputs = meta.get("inputs") if meta else None
    if not isinstance(inputs, dict):
        return {}
    out: dict[str, tuple[int, ...]] = {}
    for name, spec in inputs.items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            out[str(name)] = tuple(shape)
    return out


# --------------------------------------------------------------------------------------------
# The backend (needs TensorRT, PyCUDA and a GPU)
# --------------------------------------------------------------------------------------------


def _import_gpu_stack() -> tuple[Any, Any]:
    """``(tensorrt, pycuda.driver)``, or :class:`MissingExtraError` naming the ``gpu`` extra
    (and, for Jetson, JetPack)."""
    try:
        trt = require_extra("tensorrt", "gpu")
        cuda = require_extra("pycuda.driver", "gpu")
    except MissingExtraError as exc:
        raise MissingExtraError(f"tensorrt backend: {exc}; {_JETSON_HINT}") from exc
    return trt, cuda


_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def _get_logger(trt: Any) -> Any:
    """The process's one ``trt.ILogger``: it forwards warnings and errors to Python logging
    and keeps the last errors, so that a failed parse or build can say why.

    One per process because TensorRT treats the logger as a singleton ("multiple instances of
    Runtime and/or Builder must all use the same logger", TensorRT Python API, ``Logger``); it
    must be thread safe and outlive every object created with it, hence a module-level
    instance with a lock. Subclassing ``ILogger`` and calling its ``__init__`` is the
    documented way to implement one in Python."""
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is not None:
            return _LOGGER
        sev = trt.ILogger.Severity

        class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: collections.deque[str] = collections.deque(maxlen=20)
                self.lock = threading.Lock()

            def log(self, severity: Any, msg: str) -> None:
                if severity in (sev.INTERNAL_ERROR, sev.ERROR):
                    with self.lock:
                        self.errors.append(str(msg))
                    log.error("TensorRT: %s", msg)
                elif severity == sev.WARNING:
                    log.warning("TensorRT: %s", msg)
                else:
                    log.debug("TensorRT: %s", msg)

            def recent_errors(self, n: int = 5) -> list[str]:
                with self.lock:
                    return list(self.errors)[-n:]

        _LOGGER = _Logger()
        return _LOGGER


@dataclass
class _Io:
    """One I/O tensor: its name, shape and dtype, device buffer and page-locked host buffer."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    device: Any = None
    host: Any = None


@dataclass
class _BuildResult:
    data: bytes
    plan: PrecisionPlan
    seconds: float
    facts: ModelPrecision


class TensorRTBackend:
    """The model as a TensorRT engine on one CUDA GPU, built once and cached.

    ``options`` used: ``gpu`` (CUDA device index), ``precision``, ``cache_dir`` (default
    :func:`default_cache_dir`). ``rebuild`` forces a new build even when a cached engine
    matches. Raises :class:`~edgefuse.errors.MissingExtraError` (naming the ``gpu`` extra)
    when TensorRT or PyCUDA is missing and :class:`BackendError` for everything else (no GPU,
    a parser error with its text, a precision the model or TensorRT version cannot give, a
    failed build)."""

    name = "tensorrt"

    def __init__(
        self, model: str | Path, options: BackendOptions, *, rebuild: bool = False
    ) -> None:
        trt, cuda = _import_gpu_stack()
        self._trt: Any = trt
        self._cuda: Any = cuda
        path = Path(model)
        if not path.is_file():
            raise BackendError(f"model file {path} not found")
        if options.device == "cpu":
            raise BackendError("tensorrt: device cpu asked for; TensorRT runs on a CUDA GPU only")
        try:
            cuda.init()
            count = int(cuda.Device.count())
        except Exception as exc:
            raise BackendError(f"tensorrt: no usable CUDA driver ({exc})") from exc
        if count == 0:
            raise BackendError("tensorrt: no CUDA GPU found (use the onnxruntime backend)")
        if not 0 <= options.gpu < count:
            raise BackendError(f"tensorrt: GPU {options.gpu} asked for, {count} present")
        device = cuda.Device(options.gpu)
        self.gpu = GpuInfo(
            name=str(device.name()),
            compute_capability=tuple(int(v) for v in device.compute_capability()),  # type: ignore[arg-type]
            sm_count=int(device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
        )
        self.version = str(trt.__version__)
        self.precision: Precision = options.precision
        self._model = path
        self._gpu_index = options.gpu
        self._cache_dir = Path(options.cache_dir) if options.cache_dir else default_cache_dir()
        self.recorded_build_s: float | None = None
        self._logger = _get_logger(trt)
        self._io: dict[str, _Io] = {}
        self._engine: Any = None
        self._context: Any = None
        self._runtime: Any = None
        self._stream: Any = None
        # The primary context is the one the CUDA runtime (and so TensorRT) uses; retaining it
        # rather than make_context() avoids a second context per process on the device.
        self._ctx: Any = device.retain_primary_context()
        self._ctx.push()
        try:
            self._load_or_build(rebuild)
            self._allocate()
        except BaseException:
            self._release()
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None
            raise
        self._ctx.pop()

    # ---- engine: cache or build ----------------------------------------------------------

    def _load_or_build(self, rebuild: bool) -> None:
        trt = self._trt
        feed = read_feed_shapes(self._model)
        # Nothing here parses the model: a cache hit costs a hash, a file read and a
        # deserialization, not a TensorRT builder.
        key = engine_cache_key(
            onnx_sha256=file_sha256(self._model),
            trt_version=self.version,
            gpu=self.gpu,
            precision=self.precision,
            input_shapes=feed,
        )
        engine_file = engine_path(self._cache_dir, self._model, key)
        side = sidecar_path(engine_file)
        self.engine_path = engine_file
        self.from_cache = False
        self.build_s: float | None = None
        self.load_s = 0.0
        self.plan: dict[str, Any] | None = None
        self._runtime = trt.Runtime(self._logger)
        sidecar = None if rebuild else read_sidecar(side)
        if cached_engine_matches(sidecar, key, engine_file):
            t0 = time.perf_counter()
            engine = self._deserialize(engine_file.read_bytes())
            if engine is not None:
                self._engine = engine
                self.from_cache = True
                self.load_s = time.perf_counter() - t0
                assert sidecar is not None
                self.plan = sidecar.get("plan")
                self.recorded_build_s = sidecar.get("build_s")
                log.info("tensorrt: engine from cache %s", engine_file)
                return
            log.warning("tensorrt: cached engine %s does not deserialize; rebuilding", engine_file)
        result = self._build(feed)
        atomic_write_bytes(engine_file, result.data)
        record = {
            "key": key,
            "digest": key_digest(key),
            "engine_file": engine_file.name,
            "engine_bytes": len(result.data),
            "engine_sha256": hashlib.sha256(result.data).hexdigest(),
            "build_s": round(result.seconds, 3),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": str(self._model),
            "plan": asdict(result.plan),
            "model_precision": asdict(result.facts),
        }
        # The sidecar is written last: it is what makes the engine count as cached.
        atomic_write_bytes(side, (json.dumps(record, indent=2) + "\n").encode())
        self.build_s = result.seconds
        self.recorded_build_s = result.seconds
        self.plan = asdict(result.plan)
        t0 = time.perf_counter()
        engine = self._deserialize(result.data)
        if engine is None:
            raise BackendError(
                f"tensorrt: the engine just built does not deserialize: {self._errors()}"
            )
        self._engine = engine
        self.load_s = time.perf_counter() - t0

    def _deserialize(self, data: bytes) -> Any:
        try:
            return self._runtime.deserialize_cuda_engine(data)
        except Exception as exc:  # some versions raise instead of returning None
            log.warning("tensorrt: deserialize_cuda_engine failed: %s", exc)
            return None

    def _errors(self) -> str:
        errs = self._logger.recent_errors()
        return "; ".join(errs) if errs else "no error logged (run with -v for the TensorRT log)"

    def _new_network(self, strongly_typed: bool) -> tuple[Any, Any, Any]:
        """A builder, an empty network (strongly typed or not) and the ONNX parsed into it."""
        trt = self._trt
        builder = trt.Builder(self._logger)
        flags = 0
        if strongly_typed:
            flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            if flag is not None:
                flags |= 1 << int(flag)
            elif parse_trt_version(self.version)[0] < 11:
                raise BackendError(f"TensorRT {self.version} has no STRONGLY_TYPED network flag")
            # On 11.x every network is strongly typed; the flag is accepted and ignored.
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        # parse_from_file resolves external weights relative to the model file.
        if not parser.parse_from_file(str(self._model)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise BackendError(
                f"tensorrt: the ONNX parser rejected {self._model}: "
                + ("; ".join(errors) or self._errors())
                + " (edgefuse compile runs a static compatibility check that explains most "
                "parser errors)"
            )
        return builder, network, parser

    def _model_precision(self) -> ModelPrecision:
        """The model's precision facts: from the ONNX when ``onnx`` is installed, else from
        the parsed network's layers (edge installs need not carry ``onnx``)."""
        if importlib.util.find_spec("onnx") is not None:
            return model_precision(self._model)
        trt = self._trt
        _, network, _ = self._new_network(strongly_typed=False)
        half = {trt.DataType.HALF, getattr(trt.DataType, "BF16", trt.DataType.HALF)}
        qdq = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
        has_qdq = has_fp16 = False
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            has_qdq = has_qdq or layer.type in qdq
            for j in range(layer.num_outputs):
                has_fp16 = has_fp16 or layer.get_output(j).dtype in half
        for i in range(network.num_inputs):
            has_fp16 = has_fp16 or network.get_input(i).dtype in half
        return ModelPrecision(has_qdq=has_qdq, has_fp16=has_fp16)

    def _build(self, feed: Mapping[str, tuple[int, ...]]) -> _BuildResult:
        trt = self._trt
        facts = self._model_precision()
        plan = plan_precision(parse_trt_version(self.version)[0], self.precision, facts)
        builder, network, _parser = self._new_network(plan.strongly_typed)
        config = builder.create_builder_config()
        for name in plan.set_flags:
            flag = getattr(trt.BuilderFlag, name, None)
            if flag is None:
                raise BackendError(f"TensorRT {self.version} has no BuilderFlag.{name}")
            config.set_flag(flag)
        for name in plan.clear_flags:
            flag = getattr(trt.BuilderFlag, name, None)
            if flag is not None:  # a flag a version no longer has is off by definition
                config.clear_flag(flag)
        # Dynamic inputs (none in the shipped model) need an optimization profile.
        profile = None
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            name, dims = str(tensor.name), [int(d) for d in tensor.shape]
            if any(d < 0 for d in dims):
                profile = profile or builder.create_optimization_profile()
                lo, opt, hi = profile_shapes(name, dims, feed.get(name))
                profile.set_shape(name, lo, opt, hi)
        if profile is not None:
            config.add_optimization_profile(profile)
        timing_file = timing_cache_path(self._cache_dir, self.version, self.gpu)
        blob = timing_file.read_bytes() if timing_file.is_file() else b""
        cache = None
        try:
            cache = config.create_timing_cache(blob)
        except Exception as exc:  # a corrupt cache file: start a fresh one
            log.warning(
                "tensorrt: timing cache %s unusable (%s); starting afresh", timing_file, exc
            )
        if cache is None:
            cache = config.create_timing_cache(b"")
        # ignore_mismatch=False: entries from another device or version are not trusted; a
        # cache TensorRT refuses (set_timing_cache returns False) is replaced by a fresh one.
        if config.set_timing_cache(cache, ignore_mismatch=False) is False:
            log.warning("tensorrt: timing cache %s rejected; starting afresh", timing_file)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        log.info(
            "tensorrt: building %s engine for %s on %s (TensorRT %s); this takes a while once",
            plan.precision,
            self._model.name,
            self.gpu.name,
            self.version,
        )
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - t0
        if serialized is None:
            raise BackendError(f"tensorrt: engine build failed: {self._errors()}")
        try:
            atomic_write_bytes(timing_file, bytes(config.get_timing_cache().serialize()))
        except OSError as exc:  # the engine is fine; only the next build is slower
            log.warning("tensorrt: cannot save the timing cache %s: %s", timing_file, exc)
        return _BuildResult(bytes(serialized), plan, seconds, facts)

    # ---- buffers and execution -----------------------------------------------------------

    def _allocate(self) -> None:
        trt, cuda, engine = self._trt, self._cuda, self._engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"tensorrt: cannot create an execution context: {self._errors()}")
        self._stream = cuda.Stream()
        inputs: list[str] = []
        outputs: list[str] = []
        for i in range(engine.num_io_tensors):
            name = str(engine.get_tensor_name(i))
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            if is_input and any(d < 0 for d in shape):
                # Dynamic input: bind the profile's (only) shape, min = opt = max.
                shape = tuple(int(d) for d in engine.get_tensor_profile_shape(name, 0)[1])
                self._context.set_input_shape(name, shape)
            (inputs if is_input else outputs).append(name)
            self._io[name] = _Io(name, shape, np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
        for name in outputs:  # output shapes are known once every input shape is set
            self._io[name].shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
        if set(outputs) != set(OUTPUT_NAMES):
            raise BackendError(
                f"{self._model}: engine outputs {outputs}, expected {list(OUTPUT_NAMES)}"
            )
        for io in self._io.values():
            io.host = cuda.pagelocked_empty(io.shape, io.dtype)
            io.device = cuda.mem_alloc(max(1, io.host.nbytes))
            # Addresses are bound once: the buffers live as long as the context.
            self._context.set_tensor_address(io.name, int(io.device))
        self.input_names = tuple(inputs)

    def input_specs(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        """Each input's shape and dtype as the engine takes it (for benchmarks)."""
        return {n: (self._io[n].shape, self._io[n].dtype) for n in self.input_names}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The outputs of one set: async copies in, ``execute_async_v3``, async copies out,
        one synchronize; returned as FP32 arrays the caller may keep."""
        if self._ctx is None:
            raise BackendError("tensorrt: backend is closed")
        cuda = self._cuda
        self._ctx.push()
        try:
            for name in self.input_names:
                io = self._io[name]
                arr = np.asarray(inputs[name])
                if arr.shape != io.shape:
                    raise BackendError(
                        f"tensorrt: input {name!r} has shape {arr.shape}, the engine takes "
                        f"{io.shape}"
                    )
                np.copyto(io.host, arr, casting="same_kind")
                cuda.memcpy_htod_async(io.device, io.host, self._stream)
            if not self._context.execute_async_v3(self._stream.handle):
                raise BackendError(f"tensorrt: execute_async_v3 failed: {self._errors()}")
            for name in OUTPUT_NAMES:
                io = self._io[name]
                cuda.memcpy_dtoh_async(io.host, io.device, self._stream)
            self._stream.synchronize()
        finally:
            self._ctx.pop()
        return {n: self._io[n].host.astype(np.float32) for n in OUTPUT_NAMES}

    def info(self) -> dict[str, Any]:
        """TensorRT version, GPU, precision and how it was obtained, engine file and origin."""
        return {
            "backend": self.name,
            "version": self.version,
            "device": f"cuda:{self._gpu_index}",
            "gpu": self.gpu.name,
            "compute_capability": self.gpu.cc,
            "sm_count": self.gpu.sm_count,
            "precision": self.precision,
            "plan": self.plan,
            "engine_path": str(self.engine_path),
            "engine_bytes": self.engine_path.stat().st_size if self.engine_path.exists() else None,
            "engine_from_cache": self.from_cache,
            "build_s": None if self.build_s is None else round(self.build_s, 3),
            "recorded_build_s": (
                None if self.recorded_build_s is None else round(self.recorded_build_s, 3)
            ),
            "load_s": round(self.load_s, 3),
            "timing_cache": str(timing_cache_path(self._cache_dir, self.version, self.gpu)),
        }

    def _release(self) -> None:
        for io in self._io.values():
            if io.device is not None:
                io.device.free()
                io.device = None
            io.host = None
        self._io = {}
        # Context before engine before runtime: each depends on the next.
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None

    def close(self) -> None:
        """Free the device buffers, the context, the engine and the stream, and release the
        primary context retained at construction."""
        if self._ctx is None:
            return
        self._ctx.push()
        try:
            self._release()
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None
