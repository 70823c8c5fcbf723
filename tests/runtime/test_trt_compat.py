"""TensorRT compatibility check: real ONNX graphs, built with ``onnx.helper`` or exported from
small torch modules, each made to break exactly one rule, plus the shipped model, which must
pass for every targeted TensorRT family."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgefuse.errors import EdgefuseError  # noqa: E402
from edgefuse.runtime.trt_compat import (  # noqa: E402
    SUPPORTED_OPS_TRT10,
    SUPPORTED_OPS_TRT11,
    UNSUPPORTED_OPS,
    TrtCompatError,
    TrtCompatReport,
    check_tensorrt_compat,
)

SHIPPED = Path(__file__).resolve().parents[2] / "edgefuse" / "assets" / "model" / "fusion.onnx"
FLOAT = TensorProto.FLOAT


def _model(
    nodes: Sequence[Any],
    inputs: Sequence[Any],
    outputs: Sequence[Any],
    *,
    initializers: Sequence[Any] = (),
    opset: int | None = 17,
    extra_opsets: Sequence[tuple[str, int]] = (),
    functions: Sequence[Any] = (),
) -> Any:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    imports = [helper.make_opsetid(d, v) for d, v in extra_opsets]
    if opset is not None:
        imports.insert(0, helper.make_opsetid("", opset))
    return helper.make_model(graph, opset_imports=imports, functions=list(functions), ir_version=8)


def _x(shape: Sequence[int | str] = (1, 3, 8, 8), dtype: int = FLOAT, name: str = "x") -> Any:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _y(shape: Sequence[int | str] | None = None, dtype: int = FLOAT, name: str = "y") -> Any:
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def _relu_model(**kwargs: Any) -> Any:
    return _model([helper.make_node("Relu", ["x"], ["y"], name="relu0")], [_x()], [_y()], **kwargs)


def _kinds(report: TrtCompatReport, version: str) -> list[str]:
    return [p.kind for p in report.problems if p.version == version]


# -- the operator lists ----------------------------------------------------------------------


def test_op_lists_are_consistent() -> None:
    # Nothing is both supported and marked unsupported, and 10.3's list is a strict subset of
    # 11.x's: the operators added after 10.3 are in the 11 list only.
    assert not (SUPPORTED_OPS_TRT10 | SUPPORTED_OPS_TRT11) & UNSUPPORTED_OPS
    assert SUPPORTED_OPS_TRT10 < SUPPORTED_OPS_TRT11
    assert {"Conv", "Resize", "Gather", "Softmax", "Unsqueeze"} <= SUPPORTED_OPS_TRT10
    assert {"HannWindow", "STFT", "Attention", "Swish"} <= SUPPORTED_OPS_TRT11 - SUPPORTED_OPS_TRT10


# -- the shipped model -----------------------------------------------------------------------


def test_shipped_model_passes_both_versions() -> None:
    report = check_tensorrt_compat(SHIPPED)
    assert report.problems == (), report.format()
    assert report.ok
    assert report.versions == ("10", "11")
    assert report.ok_for("10") and report.ok_for("11")
    model = onnx.load(str(SHIPPED))
    assert report.ops == dict(Counter(n.op_type for n in model.graph.node))
    assert report.opset == 17


# -- clean graphs ----------------------------------------------------------------------------


def _clean_model() -> Any:
    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu0"),
        helper.make_node(
            "MaxPool", ["r"], ["p"], name="pool0", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node(
            "Resize",
            ["p", "", "scales"],
            ["y"],
            name="up0",
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
    ]
    return _model(nodes, [_x()], [_y((1, 4, 8, 8))], initializers=[w, scales])


def test_clean_static_graph_passes_and_reports_ops(tmp_path: Path) -> None:
    model = _clean_model()
    report = check_tensorrt_compat(model)
    assert report.ok, report.format()
    assert report.ops == {"Conv": 1, "Relu": 1, "MaxPool": 1, "Resize": 1}
    # The same model from a file gives the same verdict.
    path = tmp_path / "clean.onnx"
    onnx.save(model, str(path))
    assert check_tensorrt_compat(path) == report
    assert check_tensorrt_compat(str(path), versions="10").versions == ("10",)
    text = report.format()
    assert "OK" in text and "TensorRT 10.3" in text and "TensorRT 11" in text
    data = json.loads(report.to_json())
    assert data["ok"] is True and data["problems"] == [] and data["ops"]["Conv"] == 1


# The project exports with the TorchScript exporter (dynamo=False), which warns that it is legacy.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_export_with_dynamic_batch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self, mode: str) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.mode = mode

        def forward(self, x: Any) -> Any:
            y = self.body(x)
            return nn.functional.interpolate(y, scale_factor=2.0, mode=self.mode)

    def export(mode: str) -> Path:
        path = tmp_path / f"net_{mode}.onnx"
        with torch.inference_mode():
            torch.onnx.export(
                Net(mode).eval(),
                (torch.zeros(1, 3, 8, 8),),
                str(path),
                input_names=["image"],
                output_names=["features"],
                dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        return path

    bilinear = export("bilinear")
    without = check_tensorrt_compat(bilinear)
    assert not without.ok
    assert {p.kind for p in without.problems} == {"dynamic_shape"}
    assert any("'image'" in p.detail and "batch" in p.detail for p in without.problems)
    profile = {"image": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}
    assert check_tensorrt_compat(bilinear, profiles=profile).ok

    # Bicubic upsampling exports as Resize mode="cubic", which TensorRT does not implement.
    bicubic = check_tensorrt_compat(export("bicubic"), profiles=profile)
    assert not bicubic.ok
    assert {(p.version, p.kind, p.op) for p in bicubic.problems} == {
        ("10", "restriction", "Resize"),
        ("11", "restriction", "Resize"),
    }
    assert "cubic" in bicubic.problems[0].detail


# -- operators -------------------------------------------------------------------------------


def test_unsupported_op_fails_naming_node_and_op() -> None:
    # Det is marked "N" in onnx-tensorrt's operators.md.
    model = _model(
        [helper.make_node("Det", ["x"], ["y"], name="det0")], [_x((2, 3, 3))], [_y((2,))]
    )
    report = check_tensorrt_compat(model)
    assert not report.ok
    assert [(p.version, p.kind, p.node, p.op) for p in report.problems] == [
        ("10", "unsupported_op", "det0", "Det"),
        ("11", "unsupported_op", "det0", "Det"),
    ]
    assert "marked unsupported" in report.problems[0].detail
    assert "[10,11] unsupported_op: node 'det0' (Det)" in report.format()


def test_op_added_after_10_3_fails_only_for_10() -> None:
    size = numpy_helper.from_array(np.array(16, np.int64), "size")
    model = _model(
        [helper.make_node("HannWindow", ["size"], ["y"], name="window")],
        [],
        [_y((16,))],
        initializers=[size],
    )
    report = check_tensorrt_compat(model)
    assert not report.ok_for("10")
    assert report.ok_for("11")
    assert [(p.version, p.node, p.op) for p in report.problems] == [("10", "window", "HannWindow")]


def test_custom_domain_op_fails() -> None:
    model = _model(
        [helper.make_node("FancyNorm", ["x"], ["y"], name="fancy", domain="com.example")],
        [_x()],
        [_y()],
        extra_opsets=[("com.example", 1)],
    )
    report = check_tensorrt_compat(model)
    assert {(p.version, p.kind, p.node, p.op) for p in report.problems} == {
        ("10", "foreign_domain", "fancy", "com.example:FancyNorm"),
        ("11", "foreign_domain", "fancy", "com.example:FancyNorm"),
    }
    assert report.ops == {"com.example:FancyNorm": 1}


@pytest.mark.parametrize(("body_op", "ok"), [("Relu", True), ("Det", False)])
def test_local_function_bodies_are_checked(body_op: str, ok: bool) -> None:
    fn = helper.make_function(
        "local",
        "Block",
        ["a"],
        ["b"],
        [helper.make_node(body_op, ["a"], ["b"], name="inner")],
        [helper.make_opsetid("", 17)],
    )
    shape = (1, 3, 8, 8) if ok else (2, 3, 3)
    model = _model(
        [helper.make_node("Block", ["x"], ["y"], name="call", domain="local")],
        [_x(shape)],
        [_y()],
        extra_opsets=[("local", 1)],
        functions=[fn],
    )
    report = check_tensorrt_compat(model)
    assert report.ok is ok, report.format()
    if not ok:
        assert {(p.kind, p.node, p.op) for p in report.problems} == {
            ("unsupported_op", "call/inner", "Det")
        }


def test_ops_inside_if_branches_are_checked() -> None:
    then_branch = helper.make_graph(
        [helper.make_node("Det", ["m"], ["t"], name="det_inner")], "then", [], [_y(None, name="t")]
    )
    else_branch = helper.make_graph(
        [helper.make_node("ReduceSum", ["m"], ["e"], name="sum_inner", keepdims=0)],
        "else",
        [],
        [_y(None, name="e")],
    )
    model = _model(
        [
            helper.make_node(
                "If", ["cond"], ["y"], name="if0", then_branch=then_branch, else_branch=else_branch
            )
        ],
        [_x((1,), TensorProto.BOOL, "cond"), _x((2, 3, 3), name="m")],
        [_y()],
    )
    report = check_tensorrt_compat(model)
    assert {(p.kind, p.node, p.op) for p in report.problems} == {
        ("unsupported_op", "if0/then_branch/det_inner", "Det")
    }
    assert report.ops == {"If": 1, "Det": 1, "ReduceSum": 1}


# -- per-operator restrictions ---------------------------------------------------------------


def _restricted(case: str) -> Any:
    """A one-node model breaking the restriction named by ``case``."""
    x4 = _x()
    if case == "resize_cubic":
        scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")
        node = helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", mode="cubic")
        return _model([node], [x4], [_y()], initializers=[scales])
    if case == "resize_crop":
        scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s")
        node = helper.make_node(
            "Resize",
            ["x", "", "s"],
            ["y"],
            name="n",
            mode="linear",
            coordinate_transformation_mode="tf_crop_and_resize",
        )
        return _model([node], [x4], [_y()], initializers=[scales])
    if case == "maxpool_indices":
        node = helper.make_node("MaxPool", ["x"], ["y", "idx"], name="n", kernel_shape=[2, 2])
        return _model([node], [x4], [_y(), _y(None, TensorProto.INT64, "idx")])
    if case == "maxpool_1d":
        node = helper.make_node("MaxPool", ["x"], ["y"], name="n", kernel_shape=[2])
        return _model([node], [_x((1, 3, 8))], [_y()])
    if case == "scatternd_add":
        idx = numpy_helper.from_array(np.zeros((1, 1), np.int64), "i")
        upd = numpy_helper.from_array(np.zeros((1, 3, 8, 8), np.float32), "u")
        node = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="n", reduction="add")
        return _model([node], [x4], [_y()], initializers=[idx, upd])
    if case == "topk_unsorted":
        k = numpy_helper.from_array(np.array([2], np.int64), "k")
        node = helper.make_node("TopK", ["x", "k"], ["y", "ix"], name="n", sorted=0)
        return _model([node], [x4], [_y(), _y(None, TensorProto.INT64, "ix")], initializers=[k])
    if case == "reduce_dynamic_axes":
        node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="n")
        return _model([node], [x4, _x((1,), TensorProto.INT64, "axes")], [_y()])
    if case == "dropout_training":
        node = helper.make_node("Dropout", ["x", "", "train"], ["y"], name="n")
        return _model([node], [x4, _x((), TensorProto.BOOL, "train")], [_y()])
    if case == "pad_axes":
        pads = numpy_helper.from_array(np.array([1, 1], np.int64), "pads")
        axes = numpy_helper.from_array(np.array([3], np.int64), "axes")
        node = helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], name="n", mode="reflect")
        return _model([node], [x4], [_y()], initializers=[pads, axes], opset=18)
    if case == "einsum_ellipsis":
        node = helper.make_node("Einsum", ["x"], ["y"], name="n", equation="...ij->...ji")
        return _model([node], [x4], [_y()])
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "versions", "needle"),
    [
        ("resize_cubic", {"10", "11"}, "'cubic'"),
        ("resize_crop", {"10", "11"}, "tf_crop_and_resize"),
        ("maxpool_indices", {"10", "11"}, "Indices"),
        ("maxpool_1d", {"10", "11"}, "1D"),
        ("scatternd_add", {"10", "11"}, "'add'"),
        ("topk_unsorted", {"10", "11"}, "sorted=0"),
        ("reduce_dynamic_axes", {"10", "11"}, "`axes` must be an initializer"),
        ("dropout_training", {"10", "11"}, "training_mode"),
        ("pad_axes", {"10"}, "10.4"),
        ("einsum_ellipsis", {"10"}, "ellipsis"),
    ],
)
def test_restrictions(case: str, versions: set[str], needle: str) -> None:
    report = check_tensorrt_compat(_restricted(case))
    found = [p for p in report.problems if p.kind == "restriction"]
    assert {p.version for p in found} == versions, report.format()
    assert all(p.node == "n" and needle in p.detail for p in found), report.format()
    for v in {"10", "11"} - versions:
        assert report.ok_for(v), report.format()


# -- shapes and profiles ---------------------------------------------------------------------


def _dynamic_model() -> Any:
    return _model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu0")],
        [_x(("N", 3, 8, 8))],
        [_y(("N", 3, 8, 8))],
    )


def test_dynamic_batch_needs_a_profile() -> None:
    report = check_tensorrt_compat(_dynamic_model())
    assert _kinds(report, "10") == ["dynamic_shape"] and _kinds(report, "11") == ["dynamic_shape"]
    detail = report.problems[0].detail
    assert "'x'" in detail and "axis 0 (N)" in detail


def test_covering_profile_passes() -> None:
    profile = {"x": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}
    report = check_tensorrt_compat(_dynamic_model(), profiles=profile)
    assert report.ok, report.format()


@pytest.mark.parametrize(
    ("profile", "needle"),
    [
        ({"x": ((8, 3, 8, 8), (4, 3, 8, 8), (1, 3, 8, 8))}, "min <= opt <= max"),
        ({"x": ((1, 3, 8), (4, 3, 8), (8, 3, 8))}, "rank 3"),
        ({"x": ((1, 3, 8, 8), (4, 4, 8, 8), (8, 3, 8, 8))}, "axis 1 is static (3)"),
        ({"x": ((0, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}, "dim <= 0"),
        ({"x": ((1, 3, 8, 8), (8, 3, 8, 8))}, "triple"),
        ({"x": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8)), "z": ((1,), (1,), (1,))}, "'z'"),
    ],
)
def test_bad_profile_fails(profile: Any, needle: str) -> None:
    report = check_tensorrt_compat(_dynamic_model(), profiles=profile)
    assert not report.ok
    assert {p.kind for p in report.problems} == {"dynamic_shape"}
    assert any(needle in p.detail for p in report.problems), report.format()


def test_input_without_shape_fails_even_with_profile() -> None:
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu0")],
        [helper.make_tensor_value_info("x", FLOAT, None)],
        [_y()],
    )
    report = check_tensorrt_compat(model, profiles={"x": ((1,), (1,), (1,))})
    assert _kinds(report, "10") == ["dynamic_shape"]
    assert "no shape" in report.problems[0].detail


# -- data types ------------------------------------------------------------------------------


def test_float64_input_fails() -> None:
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu0")],
        [_x(dtype=TensorProto.DOUBLE)],
        [_y(dtype=TensorProto.DOUBLE)],
    )
    report = check_tensorrt_compat(model)
    problems = [p for p in report.problems if p.version == "10"]
    assert [p.kind for p in problems] == ["dtype", "dtype"]  # the input and the output
    assert "input 'x'" in problems[0].detail and "float64" in problems[0].detail
    assert "output 'y'" in problems[1].detail


def test_float64_initializer_and_intermediate_fail() -> None:
    w = numpy_helper.from_array(np.ones((1,), np.float64), "w64")
    nodes = [
        helper.make_node("Cast", ["x"], ["x64"], name="to_double", to=TensorProto.DOUBLE),
        helper.make_node("Mul", ["x64", "w64"], ["m"], name="mul"),
        helper.make_node("Cast", ["m"], ["y"], name="to_float", to=TensorProto.FLOAT),
    ]
    report = check_tensorrt_compat(_model(nodes, [_x()], [_y()], initializers=[w]))
    found = {(p.node, p.op) for p in report.problems if p.version == "11"}
    assert found == {(None, None), ("to_double", "Cast"), ("mul", "Mul")}, report.format()
    assert all(p.kind == "dtype" for p in report.problems)


def test_int64_and_uint8_io_are_fine() -> None:
    model = _model(
        [helper.make_node("Cast", ["x"], ["y"], name="cast", to=TensorProto.INT64)],
        [_x(dtype=TensorProto.UINT8)],
        [_y((1, 3, 8, 8), TensorProto.INT64)],
    )
    assert check_tensorrt_compat(model).ok


# -- opset -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("opset", "failing"), [(8, {"10", "11"}), (17, set()), (21, {"10"}), (25, {"10", "11"})]
)
def test_opset_range(opset: int, failing: set[str]) -> None:
    report = check_tensorrt_compat(_relu_model(opset=opset))
    assert {p.version for p in report.problems if p.kind == "opset"} == failing
    assert {p.kind for p in report.problems} <= {"opset"}
    assert report.opset == opset


def test_missing_default_opset_import_fails() -> None:
    report = check_tensorrt_compat(_relu_model(opset=None, extra_opsets=[("com.example", 1)]))
    assert _kinds(report, "10") == ["opset"] and _kinds(report, "11") == ["opset"]
    assert report.opset is None


# -- errors ----------------------------------------------------------------------------------


def test_corrupt_file_raises_named_error(tmp_path: Path) -> None:
    path = tmp_path / "broken_model.onnx"
    path.write_bytes(np.random.default_rng(7).bytes(4096))
    with pytest.raises(TrtCompatError, match=r"broken_model\.onnx") as info:
        check_tensorrt_compat(path)
    assert isinstance(info.value, EdgefuseError)


@pytest.mark.parametrize("content", [b"", b"\x08\x07"])
def test_empty_or_graphless_file_raises(tmp_path: Path, content: bytes) -> None:
    # Both decode as a valid but empty ModelProto: protobuf alone would not complain.
    path = tmp_path / "empty.onnx"
    path.write_bytes(content)
    with pytest.raises(TrtCompatError, match=r"empty\.onnx"):
        check_tensorrt_compat(path)


def test_missing_file_raises_named_error(tmp_path: Path) -> None:
    with pytest.raises(TrtCompatError, match=r"nowhere\.onnx"):
        check_tensorrt_compat(tmp_path / "nowhere.onnx")


@pytest.mark.parametrize("versions", [("9",), ("10", "12"), ()])
def test_unknown_version_raises(versions: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="accepted") as info:
        check_tensorrt_compat(_relu_model(), versions=versions)
    message = str(info.value)
    assert "'10' (TensorRT 10.3" in message and "'11' (TensorRT 11" in message
    if versions:
        assert repr(versions[-1]) in message  # names the offending version


def test_ok_for_rejects_unchecked_version() -> None:
    report = check_tensorrt_compat(_relu_model(), versions=("11",))
    assert report.versions == ("11",)
    with pytest.raises(ValueError, match="not checked"):
        report.ok_for("10")


def test_module_imports_without_onnx() -> None:
    # The edge runtime must import without the training extra; the check then says what to
    # install instead of failing with an ImportError traceback.
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "from edgefuse.errors import MissingExtraError\n"
        "import edgefuse.runtime.trt_compat as t\n"
        "try:\n"
        "    t.check_tensorrt_compat('x.onnx')\n"
        "except MissingExtraError as e:\n"
        "    print('missing:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "missing: onnx is not installed" in out.stdout
    assert "edgefuse[train]" in out.stdout
