"""TensorRT backend and ``edgefuse compile``.

Without a GPU (here): the pure parts that decide everything (version parsing, the engine
cache key and paths, the sidecar check, the precision plan per TensorRT major, the Q/DQ and
FP16 detection on real ONNX graphs built with ``onnx.helper``), and the user-facing failure
paths (``tensorrt_usable()`` is False, opening the backend names the ``gpu`` extra,
``edgefuse compile`` prints the compatibility report and exits 3, a missing model exits 2).

With TensorRT and a GPU (``-m gpu``, skipped otherwise): a real engine build, the cache hit
on the second open, and parity with ONNX Runtime (FP32: relative difference <= 1e-4; FP16:
<= 5e-3 and cosine similarity >= 0.999).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefuse.errors import MissingExtraError
from edgefuse.runtime.backends import BackendError, BackendOptions, choose_auto, open_backend
from edgefuse.runtime.backends._tensorrt import (
    GpuInfo,
    ModelPrecision,
    atomic_write_bytes,
    cached_engine_matches,
    engine_cache_key,
    engine_path,
    file_sha256,
    key_digest,
    model_precision,
    parse_trt_version,
    plan_precision,
    profile_shapes,
    read_feed_shapes,
    read_sidecar,
    sidecar_path,
    tensorrt_availability,
    tensorrt_usable,
    timing_cache_path,
)
from edgefuse.runtime.compile import latency_summary
from tests.conftest import REPO, edgefuse_cli

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SHIPPED = REPO / "edgefuse" / "assets" / "model" / "fusion.onnx"
ORIN = GpuInfo(name="Orin", compute_capability=(8, 7), sm_count=16)
FP32_MODEL = ModelPrecision(has_qdq=False, has_fp16=False)
FP16_MODEL = ModelPrecision(has_qdq=False, has_fp16=True)
QDQ_MODEL = ModelPrecision(has_qdq=True, has_fp16=True)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return edgefuse_cli(*args, timeout_s=120)


# --------------------------------------------------------------------------------------------
# Version parsing, cache key, paths
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.3.0.30", (10, 3, 0, 30)),
        ("10.3.0", (10, 3, 0)),
        ("11.0.0rc1", (11, 0, 0)),
        ("10.3.0+cuda12.6", (10, 3, 0)),
        (" 11 ", (11,)),
    ],
)
def test_parse_trt_version(text: str, expected: tuple[int, ...]) -> None:
    assert parse_trt_version(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "v10.3"])
def test_parse_trt_version_rejects_non_versions(text: str) -> None:
    with pytest.raises(BackendError, match="TensorRT version"):
        parse_trt_version(text)


def _key(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "onnx_sha256": "a" * 64,
        "trt_version": "10.3.0.30",
        "gpu": ORIN,
        "precision": "fp16",
        "input_shapes": {"camera": (1, 3, 96, 128)},
    }
    args.update(over)
    return engine_cache_key(**args)


def test_cache_key_changes_with_every_component() -> None:
    base = _key()
    variants = {
        "onnx_sha256": _key(onnx_sha256="b" * 64),
        "tensorrt": _key(trt_version="10.3.0.31"),
        "tensorrt_major": _key(trt_version="11.0.0"),
        "gpu_name": _key(gpu=GpuInfo("Orin Nano", (8, 7), 16)),
        "compute_capability": _key(gpu=GpuInfo("Orin", (8, 6), 16)),
        "sm_count": _key(gpu=GpuInfo("Orin", (8, 7), 8)),
        "precision": _key(precision="fp32"),
        "input_shapes": _key(input_shapes={"camera": (1, 3, 96, 96)}),
        "no_input_shapes": _key(input_shapes=None),
    }
    digests = {key_digest(base)} | {key_digest(k) for k in variants.values()}
    assert len(digests) == len(variants) + 1, "some component does not reach the key"
    assert base["compute_capability"] == "8.7" and base["sm_count"] == 16
    json.dumps(base)  # JSON-ready: it goes into the sidecar as is


def test_cache_key_is_deterministic() -> None:
    assert _key() == _key()
    assert key_digest(_key()) == key_digest(_key())
    # Order of the input shapes does not matter (canonical JSON).
    a = _key(input_shapes={"camera": (1, 3), "mask": (1, 4)})
    b = _key(input_shapes={"mask": (1, 4), "camera": (1, 3)})
    assert key_digest(a) == key_digest(b)


def test_engine_path_is_stable_and_distinct(tmp_path: Path) -> None:
    p1 = engine_path(tmp_path, SHIPPED, _key())
    p2 = engine_path(tmp_path, SHIPPED, _key())
    assert p1 == p2
    assert p1.parent == tmp_path
    assert p1.name.startswith("fusion-fp16-") and p1.suffix == ".engine"
    assert engine_path(tmp_path, SHIPPED, _key(trt_version="11.0.0")) != p1
    assert engine_path(tmp_path, SHIPPED, _key(precision="fp32")).name.startswith("fusion-fp32-")
    assert sidecar_path(p1) == p1.with_suffix(".json")


def test_timing_cache_path_per_version_and_gpu(tmp_path: Path) -> None:
    p = timing_cache_path(tmp_path, "10.3.0.30", ORIN)
    assert p.parent == tmp_path and "10.3.0.30" in p.name and "8.7" in p.name
    assert timing_cache_path(tmp_path, "11.0.0", ORIN) != p
    assert timing_cache_path(tmp_path, "10.3.0.30", GpuInfo("H100", (9, 0), 132)) != p


# --------------------------------------------------------------------------------------------
# Atomic writes and the sidecar check
# --------------------------------------------------------------------------------------------


def _store(tmp_path: Path, key: dict[str, Any], data: bytes) -> Path:
    engine = engine_path(tmp_path, SHIPPED, key)
    atomic_write_bytes(engine, data)
    record = {
        "key": key,
        "engine_bytes": len(data),
        "engine_sha256": file_sha256(engine),
    }
    atomic_write_bytes(sidecar_path(engine), json.dumps(record).encode())
    return engine


def test_atomic_write_leaves_only_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "x.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["x.bin"]


def test_cached_engine_matches_only_the_exact_key_and_bytes(tmp_path: Path) -> None:
    key = _key()
    engine = _store(tmp_path, key, b"\x00engine-bytes" * 100)
    side = read_sidecar(sidecar_path(engine))
    assert cached_engine_matches(side, key, engine)
    # Another key (e.g. a new TensorRT version) is not this engine.
    assert not cached_engine_matches(side, _key(trt_version="10.3.0.31"), engine)
    # A truncated engine, a replaced engine, a missing engine: rebuilt.
    engine.write_bytes(b"\x00engine-bytes" * 50)
    assert not cached_engine_matches(side, key, engine)
    engine.write_bytes(b"\x01engine-bytes" * 100)
    assert not cached_engine_matches(side, key, engine)
    engine.unlink()
    assert not cached_engine_matches(side, key, engine)


def test_corrupt_or_missing_sidecar_means_rebuild(tmp_path: Path) -> None:
    key = _key()
    engine = _store(tmp_path, key, b"bytes")
    sidecar_path(engine).write_text("{not json")
    assert read_sidecar(sidecar_path(engine)) is None
    assert not cached_engine_matches(read_sidecar(sidecar_path(engine)), key, engine)
    sidecar_path(engine).write_text("[1, 2]")  # JSON, but not an object
    assert read_sidecar(sidecar_path(engine)) is None
    assert read_sidecar(tmp_path / "absent.json") is None


# --------------------------------------------------------------------------------------------
# Precision plan per TensorRT major
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("major", [10, 11, 12])
def test_fp32_plan_clears_tf32_and_sets_no_precision_flag(major: int) -> None:
    plan = plan_precision(major, "fp32", FP32_MODEL)
    assert plan.precision == "fp32"
    assert plan.set_flags == ()
    assert plan.clear_flags == ("TF32",)
    # Weak typing exists only on 10.x; 11.x networks are always strongly typed.
    assert plan.strongly_typed is (major != 10)


def test_fp16_on_10x_sets_the_builder_flag_on_an_fp32_model() -> None:
    plan = plan_precision(10, "fp16", FP32_MODEL)
    assert plan.set_flags == ("FP16",)
    assert not plan.strongly_typed


@pytest.mark.parametrize("major", [10, 11])
def test_fp16_model_is_built_strongly_typed_without_flags(major: int) -> None:
    plan = plan_precision(major, "fp16", FP16_MODEL)
    assert plan.strongly_typed
    assert plan.set_flags == ()


@pytest.mark.parametrize("major", [11, 12])
def test_fp16_with_an_fp32_model_on_11x_explains_strong_typing(major: int) -> None:
    with pytest.raises(BackendError) as err:
        plan_precision(major, "fp16", FP32_MODEL)
    text = str(err.value)
    assert "BuilderFlag.FP16" in text and "strongly typed" in text
    assert "AutoCast" in text and "--precision fp32" in text


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("facts", [FP32_MODEL, FP16_MODEL])
def test_int8_without_qdq_says_what_to_do(major: int, facts: ModelPrecision) -> None:
    with pytest.raises(BackendError) as err:
        plan_precision(major, "int8", facts)
    text = str(err.value)
    assert "QuantizeLinear/DequantizeLinear" in text
    assert "ModelOpt" in text and "calibrator" in text


@pytest.mark.parametrize("major", [10, 11])
def test_int8_with_qdq_is_explicit_quantization_strongly_typed(major: int) -> None:
    plan = plan_precision(major, "int8", QDQ_MODEL)
    assert plan.strongly_typed
    assert plan.set_flags == ()  # never BuilderFlag.INT8, never a calibrator


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_quantized_model_needs_int8(precision: Any) -> None:
    with pytest.raises(BackendError, match="--precision int8"):
        plan_precision(10, precision, QDQ_MODEL)


def test_fp16_model_is_not_fp32() -> None:
    with pytest.raises(BackendError, match="--precision fp16"):
        plan_precision(10, "fp32", FP16_MODEL)


def test_tensorrt_before_10_is_refused() -> None:
    with pytest.raises(BackendError, match=r"TensorRT 8\.x is not supported"):
        plan_precision(8, "fp32", FP32_MODEL)


def test_no_plan_uses_a_removed_flag() -> None:
    removed_in_11 = {"FP16", "INT8", "FP8", "BF16", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS"}
    for precision in ("fp32", "fp16", "int8"):
        for facts in (FP32_MODEL, FP16_MODEL, QDQ_MODEL):
            try:
                plan = plan_precision(11, precision, facts)  # type: ignore[arg-type]
            except BackendError:
                continue
            assert not set(plan.set_flags) & removed_in_11, (precision, facts)


# --------------------------------------------------------------------------------------------
# Q/DQ and FP16 detection on real ONNX graphs
# --------------------------------------------------------------------------------------------


def _model(
    nodes: Sequence[Any], inits: Sequence[Any] = (), io_type: int = TensorProto.FLOAT
) -> Any:
    """A checked opset-17 model: x [1, 1, 8, 8] -> nodes -> y [1, 2, 8, 8]."""
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info("x", io_type, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", io_type, [1, 2, 8, 8])],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(dtype: Any = np.float32) -> Any:
    return numpy_helper.from_array(np.ones((2, 1, 3, 3), dtype), "w")


def _conv_model() -> Any:
    return _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        [_weights()],
    )


def test_plain_fp32_model_has_neither() -> None:
    assert model_precision(_conv_model()) == ModelPrecision(has_qdq=False, has_fp16=False)


def test_qdq_model_is_detected(tmp_path: Path) -> None:
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "s")
    zp = numpy_helper.from_array(np.array(0, np.int8), "zp")
    model = _model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"]),
            helper.make_node("Conv", ["xd", "w"], ["y"], pads=[1, 1, 1, 1]),
        ],
        [scale, zp, _weights()],
    )
    path = tmp_path / "qdq.onnx"
    onnx.save(model, str(path))
    facts = model_precision(path)  # from a file, as the backend reads it
    assert facts.has_qdq and not facts.has_fp16
    with pytest.raises(BackendError, match="--precision int8"):
        plan_precision(10, "fp16", facts)
    assert plan_precision(10, "int8", facts).strongly_typed


def test_qdq_inside_a_subgraph_is_detected() -> None:
    def branch(name: str, ops: list[Any]) -> Any:
        return helper.make_graph(
            ops, name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1])]
        )

    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    then_g = branch(
        "then",
        [
            helper.make_node("Constant", [], ["t"], value=helper.make_tensor("v", 1, [1], [1.0])),
            helper.make_node("Constant", [], ["ts"], value=s),
            helper.make_node("QuantizeLinear", ["t", "ts"], ["tq"]),
            helper.make_node("DequantizeLinear", ["tq", "ts"], ["then_out"]),
        ],
    )
    else_g = branch(
        "else",
        [
            helper.make_node(
                "Constant", [], ["else_out"], value=helper.make_tensor("e", 1, [1], [0.0])
            )
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    assert model_precision(model).has_qdq


def test_fp16_cast_is_detected() -> None:
    # What AutoCast leaves with keep_io_types: FP32 I/O, Casts to FLOAT16 around FP16 layers.
    model = _model(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["w"], ["w16"], to=TensorProto.FLOAT16),
            helper.make_node("Conv", ["x16", "w16"], ["c16"], pads=[1, 1, 1, 1]),
            helper.make_node("Cast", ["c16"], ["y"], to=TensorProto.FLOAT),
        ],
        [_weights()],
    )
    facts = model_precision(model)
    assert facts.has_fp16 and not facts.has_qdq
    assert plan_precision(11, "fp16", facts).strongly_typed


def test_fp16_weights_and_io_are_detected() -> None:
    # A plain FP16 export: FP16 inputs, outputs and weights, no Cast at all.
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        [_weights(np.float16)],
        io_type=TensorProto.FLOAT16,
    )
    assert model_precision(model) == ModelPrecision(has_qdq=False, has_fp16=True)


def test_shipped_model_is_plain_fp32() -> None:
    facts = model_precision(SHIPPED)
    assert facts == FP32_MODEL
    # What the Jetson pipeline asks for works on 10.x and is refused, with a reason, on 11.x.
    assert plan_precision(10, "fp16", facts).set_flags == ("FP16",)
    with pytest.raises(BackendError, match="AutoCast"):
        plan_precision(11, "fp16", facts)


# --------------------------------------------------------------------------------------------
# Profiles and metadata shapes
# --------------------------------------------------------------------------------------------


def test_profile_shapes() -> None:
    assert profile_shapes("x", [1, 3, 8, 8], None) == ((1, 3, 8, 8),) * 3
    assert profile_shapes("x", [-1, 3, 8, 8], None) == ((1, 3, 8, 8),) * 3
    assert profile_shapes("x", [-1, 3, -1, 8], (1, 3, 16, 8)) == ((1, 3, 16, 8),) * 3
    with pytest.raises(BackendError, match="does not fit"):
        profile_shapes("x", [-1, 3, 8, 8], (1, 4, 8, 8))
    with pytest.raises(BackendError, match="does not fit"):
        profile_shapes("x", [-1, 3, 8, 8], (1, 3, 8))


def test_feed_shapes_come_from_the_shipped_metadata() -> None:
    shapes = read_feed_shapes(SHIPPED)
    meta = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert shapes == {n: tuple(spec["shape"]) for n, spec in meta["inputs"].items()}
    assert shapes["camera"] == (1, 3, 96, 128)
    assert read_feed_shapes(Path("/nonexistent/model.onnx")) == {}


def test_latency_summary() -> None:
    s = latency_summary([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert s["median"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert s["min"] == pytest.approx(1.0) and s["max"] == pytest.approx(100.0)
    with pytest.raises(ValueError):
        latency_summary([])


# --------------------------------------------------------------------------------------------
# This machine: no TensorRT, no GPU
# --------------------------------------------------------------------------------------------

no_tensorrt = pytest.mark.skipif(tensorrt_usable(), reason="TensorRT and a GPU are present")


@no_tensorrt
def test_tensorrt_is_not_usable_here() -> None:
    assert tensorrt_usable() is False
    avail = tensorrt_availability()
    assert not avail.usable and avail.reason
    if avail.tensorrt_version is None:
        assert "edgefuse[gpu]" in avail.reason and "JetPack" in avail.reason
    assert choose_auto(BackendOptions()) == "onnxruntime"


@no_tensorrt
def test_opening_the_tensorrt_backend_names_the_gpu_extra() -> None:
    with pytest.raises((MissingExtraError, BackendError)) as err:
        open_backend("tensorrt", SHIPPED, BackendOptions(precision="fp16"))
    text = str(err.value)
    if isinstance(err.value, MissingExtraError):
        assert "edgefuse[gpu]" in text and "docs/JETSON.md" in text
    else:  # TensorRT imports but there is no GPU
        assert "GPU" in text or "CUDA" in text


@no_tensorrt
def test_compile_runs_the_check_then_exits_3_naming_the_extra() -> None:
    r = _cli("compile", str(SHIPPED), "--precision", "fp16")
    assert r.returncode == 3, r.stderr
    assert "TensorRT compatibility: OK" in r.stdout
    assert "TensorRT 10.3 (JetPack 6, Jetson Orin): ok" in r.stdout
    assert "cannot build an engine on this machine" in r.stderr
    assert "edgefuse[gpu]" in r.stderr or "GPU" in r.stderr


@no_tensorrt
def test_compile_json_reports_the_check_and_why_it_stopped() -> None:
    r = _cli("compile", str(SHIPPED), "--json")
    assert r.returncode == 3, r.stderr
    report = json.loads(r.stdout)
    assert report["compat"]["ok"] is True
    assert report["compat"]["opset"] == 17
    assert report["tensorrt"]["usable"] is False
    assert report["exit_code"] == 3
    assert "cannot build" in report["error"]


def test_compile_missing_model_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    r = _cli("compile", str(missing))
    assert r.returncode == 2
    assert str(missing) in r.stderr and "not found" in r.stderr
    assert "TensorRT compatibility" not in r.stdout


def test_compile_exits_1_on_compatibility_problems(tmp_path: Path) -> None:
    # Unique is marked unsupported in onnx-tensorrt's operator matrix.
    graph = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "unique.onnx"
    onnx.save(model, str(path))
    r = _cli("compile", str(path))
    assert r.returncode == 1, r.stderr
    assert "TensorRT compatibility: FAILED" in r.stdout
    assert "Unique" in r.stdout
    assert "would not parse" in r.stderr


# --------------------------------------------------------------------------------------------
# With TensorRT and a GPU
# --------------------------------------------------------------------------------------------

needs_gpu = pytest.mark.skipif(
    not tensorrt_usable(),
    reason="needs TensorRT, PyCUDA and a CUDA GPU (pip install edgefuse[gpu])",
)


def _inputs(seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded inputs of the shipped model's shapes: all modalities, then each one missing."""
    rng = np.random.default_rng(seed)
    shapes = read_feed_shapes(SHIPPED)
    base = {n: rng.random(s, dtype=np.float32) for n, s in shapes.items() if n != "mask"}
    out = [{**base, "mask": np.ones(shapes["mask"], np.float32)}]
    for i, name in enumerate(("camera", "depth", "lidar", "audio")):
        mask = np.ones(shapes["mask"], np.float32)
        mask[0, i] = 0.0
        out.append({**base, name: np.zeros_like(base[name]), "mask": mask})
    return out


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a - b| / max |b|, cosine similarity) of a candidate ``a`` against ``b``."""
    rel = float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))
    fa, fb = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    norms = float(np.linalg.norm(fa)) * float(np.linalg.norm(fb))
    cos = float(fa @ fb) / max(norms, 1e-30)
    return rel, cos


def _parity(precision: Any, cache: Path) -> list[tuple[float, float]]:
    ref = open_backend("onnxruntime", SHIPPED, BackendOptions(device="cpu", threads=2))
    trt_backend = open_backend(
        "tensorrt", SHIPPED, BackendOptions(precision=precision, cache_dir=cache)
    )
    try:
        results = []
        for x in _inputs(0):
            want = ref.run(x)
            got = trt_backend.run(x)
            for name in want:
                assert got[name].shape == want[name].shape
                results.append(_compare(got[name], want[name]))
        return results
    finally:
        trt_backend.close()
        ref.close()


@pytest.mark.gpu
@needs_gpu
def test_fp32_engine_matches_onnxruntime_and_is_cached(tmp_path: Path) -> None:
    for rel, _cos in _parity("fp32", tmp_path):
        assert rel <= 1e-4
    backend = open_backend(
        "tensorrt", SHIPPED, BackendOptions(precision="fp32", cache_dir=tmp_path)
    )
    try:
        info = backend.info()
        assert info["engine_from_cache"] is True
        assert info["build_s"] is None and info["recorded_build_s"] is not None
        assert Path(info["engine_path"]).is_file()
        assert info["precision"] == "fp32" and info["compute_capability"]
        assert list(tmp_path.glob("timing-*.cache"))
    finally:
        backend.close()


@pytest.mark.gpu
@needs_gpu
def test_fp16_engine_matches_onnxruntime(tmp_path: Path) -> None:
    import tensorrt as trt

    if parse_trt_version(trt.__version__)[0] >= 11:
        # Strong typing: an FP32 ONNX cannot give FP16; the refusal is the tested behaviour.
        with pytest.raises(BackendError, match="AutoCast"):
            open_backend("tensorrt", SHIPPED, BackendOptions(precision="fp16", cache_dir=tmp_path))
        return
    for rel, cos in _parity("fp16", tmp_path):
        assert rel <= 5e-3
        assert cos >= 0.999


@pytest.mark.gpu
@needs_gpu
def test_compile_builds_and_times(tmp_path: Path) -> None:
    r = _cli(
        "compile",
        str(SHIPPED),
        "--cache-dir",
        str(tmp_path),
        "--iterations",
        "20",
        "--json",
        timeout_s=1200,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["engine"]["engine_bytes"] > 0
    lat = report["latency_ms"]
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
