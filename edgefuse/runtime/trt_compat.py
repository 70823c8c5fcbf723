"""Can TensorRT's ONNX parser take this model? A static check that needs neither GPU nor TensorRT.

The deployment targets are two TensorRT families: **"10"**, TensorRT 10.3 as shipped in
JetPack 6 on Jetson Orin, and **"11"**, TensorRT 11.x on the desktop. Building an engine is the
only full proof, but it needs the device; this module catches, on any machine and in
milliseconds, the failures that the parser would report when the model first reaches the
target. It reads the ONNX graph only (weights need not be loaded) and checks, per family:

1. **Operators.** Every node of the default domain (``""`` / ``"ai.onnx"``), including those in
   ``If``/``Loop``/``Scan`` bodies and in model-local functions (which the parser inlines), must
   be in the family's operator list, taken from onnx-tensorrt's ``docs/operators.md`` (see
   :data:`SUPPORTED_OPS_TRT10`). A node of any other domain is a problem unless it is a
   TensorRT plugin we ship (:data:`ACCEPTED_PLUGINS`, empty for now) or a local function.
2. **Opset.** The model must import the default domain explicitly, at a version inside the
   family's range (9..20 for 10.3, 9..24 for 11.x).
3. **Shapes.** TensorRT builds an engine for fixed shapes or for the ranges of an optimization
   profile: every graph input must be fully static (all dims known and > 0) or be covered by a
   caller-supplied profile ``{name: (min_shape, opt_shape, max_shape)}`` of the input's rank
   with ``min <= opt <= max`` and the static dims reproduced exactly.
4. **Data types.** Graph inputs/outputs must be FP32, FP16, BF16, INT32, INT64, INT8, UINT8 or
   BOOL. FP64 anywhere (input, output, initializer, ``Constant``, an intermediate tensor such
   as a ``Cast`` to double) is reported: TensorRT has no FP64 kernels, and the parser only
   "supports" DOUBLE by silently down-casting (with clamping to +-FLT_MAX), so the engine
   would not compute what was validated in ONNX Runtime. Fix the export instead. INT64 is
   *not* a problem: since TensorRT 9 the parser keeps INT64 natively (onnx-tensorrt changelog,
   9.0 EA; the old cast to INT32 with a warning is TensorRT 8 behaviour).
5. **Per-operator restrictions** from the "Restrictions" column that matter for exported CNNs
   and can be decided from the graph alone:

   - ``Resize``: ``mode`` nearest|linear (no cubic, i.e. no bicubic ``F.interpolate``);
     ``coordinate_transformation_mode`` half_pixel|pytorch_half_pixel|tf_half_pixel_for_nn|
     asymmetric|align_corners (no tf_crop_and_resize); ``nearest_mode`` floor|ceil|
     round_prefer_floor|round_prefer_ceil; no ``antialias``; ``keep_aspect_ratio_policy``
     stretch.
   - ``MaxPool``/``AveragePool``: 2D or 3D only, ``dilations`` all ones; ``MaxPool``'s
     ``Indices`` output unused. ``LpPool``: ``dilations`` all ones.
   - ``Pad``: a known ``mode`` (constant|reflect|edge|wrap); for "10" no tensor ``axes`` input
     (added in 10.4).
   - ``ScatterND``: ``reduction`` none.
   - ``TopK``: ``sorted`` = 1 and a constant ``K`` below 3840.
   - ``ReduceXxx`` with an ``axes`` input: ``axes`` an initializer (or ``Constant``).
   - "10" only (lifted later in 10.x): ``Squeeze``/``Unsqueeze`` ``axes`` and ``CumSum``
     ``axis`` constant (dynamic axes came in 10.7/10.8); ``Einsum`` without ellipsis or
     diagonal terms (10.12).
   - ``Dropout``: ``training_mode`` absent or a constant false. ``LayerNormalization``: only
     the ``Y`` output used. ``LSTM``: ``input_forget`` = 0, ``layout`` = 0. ``Constant``: no
     sparse or string values. ``QuantizeLinear``/``DequantizeLinear``: constant zero points all
     zero.

Not checked (need shapes or values the graph may not carry): broadcast rules, ``If`` branch
ranks, ``GridSample`` rank, conv/deconv dimensionality, engine-build limits (memory, tactics).
A model that passes can still fail to *build*; one that fails here will fail to *parse*.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefuse.errors import EdgefuseError, require_extra

if TYPE_CHECKING:
    import numpy as np
    import onnx

__all__ = [
    "ACCEPTED_PLUGINS",
    "PROBLEM_KINDS",
    "SUPPORTED_OPS_TRT10",
    "SUPPORTED_OPS_TRT11",
    "TRT_VERSIONS",
    "UNSUPPORTED_OPS",
    "Profile",
    "TrtCompatError",
    "TrtCompatReport",
    "TrtProblem",
    "check_tensorrt_compat",
]


class TrtCompatError(EdgefuseError):
    """The model could not be read (missing file, not an ONNX model); the message names it."""


# --------------------------------------------------------------------------------------------
# The operator lists (data). Source: onnx/onnx-tensorrt, docs/operators.md, "Operator Support
# Matrix" of the TensorRT 10.15 release ("TensorRT 10.15 supports operators in the inclusive
# range of opset 9 to opset 24"), the newest 10.x list available; every operator marked "Y".
# The "10" family is JetPack 6's TensorRT 10.3, so the operators that onnx-tensorrt's
# docs/Changelog.md says were added after 10.3 are removed from it: BlackmanWindow,
# HammingWindow, HannWindow (10.4), STFT (10.5), Attention (10.14), RMSNormalization,
# RotaryEmbedding, TensorScatter (10.15). Its opset range, 9..20, is the header of the same
# file for TensorRT 10.0 (the changelog logs no ONNX submodule update between 10.0 and 10.6).
# The "11" family is the 10.15 list plus Swish (TensorRT 11.0 release notes, "Parsers: Added
# support for Swish operator"); its opset range stops at 24, the 10.15 header, because
# opset 25 only arrived in 11.5 and the check must hold for every 11.x.
# --------------------------------------------------------------------------------------------

_OPS_TRT_10_15: frozenset[str] = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan",
        "Atanh", "Attention", "AveragePool", "BatchNormalization", "BlackmanWindow", "Cast",
        "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape", "Conv",
        "ConvTranspose", "Cos", "Cosh", "CumSum", "DeformConv", "DepthToSpace",
        "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand",
        "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
        "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
        "GridSample", "GroupNormalization", "GRU", "HammingWindow", "HannWindow",
        "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If", "ImageScaler",
        "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less",
        "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool",
        "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod",
        "Mul", "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad",
        "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal",
        "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize",
        "ReverseSequence", "RMSNormalization", "RNN", "RoiAlign", "RotaryEmbedding", "Round",
        "STFT", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu",
        "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax",
        "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum", "Tan",
        "Tanh", "TensorScatter", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu",
        "Unsqueeze", "Upsample", "Where", "Xor",
    }
)  # fmt: skip

#: Default-domain operators TensorRT 10.3 (JetPack 6) parses (see the source note above).
SUPPORTED_OPS_TRT10: frozenset[str] = _OPS_TRT_10_15 - {
    "BlackmanWindow",
    "HammingWindow",
    "HannWindow",
    "STFT",
    "Attention",
    "RMSNormalization",
    "RotaryEmbedding",
    "TensorScatter",
}

#: Default-domain operators TensorRT 11.x parses (see the source note above).
SUPPORTED_OPS_TRT11: frozenset[str] = _OPS_TRT_10_15 | {"Swish"}

#: Operators the same operators.md marks "N" (unsupported) for 10.15. Only used to word the
#: report ("marked unsupported" rather than "not in the list"): anything outside the
#: supported set is a problem either way.
UNSUPPORTED_OPS: frozenset[str] = frozenset(
    {
        "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr",
        "BitwiseXor", "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence",
        "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear", "ImageDecoder", "MatMulInteger",
        "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
        "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement",
        "QLinearConv", "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct",
        "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap",
        "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer",
        "StringSplit", "TfIdfVectorizer", "Unique",
    }
)  # fmt: skip

#: (domain, op_type) of TensorRT plugins our engines are built with; such nodes pass. None yet.
ACCEPTED_PLUGINS: frozenset[tuple[str, str]] = frozenset()

#: The ``kind`` of a :class:`TrtProblem`.
PROBLEM_KINDS: tuple[str, ...] = (
    "unsupported_op",
    "foreign_domain",
    "opset",
    "dynamic_shape",
    "dtype",
    "restriction",
)

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})

# Tensor element types (TensorProto.DataType names). Graph inputs and outputs: operators.md's
# list less DOUBLE (see the module docstring) and less the quantized types, which exist only
# inside the network.
_IO_DTYPES = frozenset({"FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "INT8", "UINT8", "BOOL"})
# Inside the network (initializers, intermediates) the quantized types are fine too.
_INNER_DTYPES = _IO_DTYPES | {"FLOAT8E4M3FN", "INT4", "FLOAT4E2M1"}

_RESIZE_MODES = frozenset({"nearest", "linear"})
_RESIZE_COORD_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
_RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
_PAD_MODES = frozenset({"constant", "reflect", "edge", "wrap"})
_REDUCE_OPS = frozenset(
    {
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
        "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare",
    }
)  # fmt: skip
_TOPK_MAX_K = 3840  # operators.md: "`K` input must be less than 3840"


@dataclass(frozen=True)
class _Family:
    """One targeted TensorRT family: its operator list, opset range and later-lifted limits."""

    key: str
    label: str
    ops: frozenset[str]
    opset_min: int
    opset_max: int
    # Restrictions of 10.3 that later 10.x releases lifted (onnx-tensorrt changelog).
    pad_axes_input: bool  # Pad with a tensor `axes` input (10.4)
    dynamic_squeeze_axes: bool  # Squeeze/Unsqueeze with non-constant axes (10.7)
    dynamic_cumsum_axis: bool  # CumSum with a non-constant axis (10.8)
    full_einsum: bool  # Einsum ellipsis / diagonal (10.12)


_FAMILIES: dict[str, _Family] = {
    "10": _Family(
        key="10",
        label="TensorRT 10.3 (JetPack 6, Jetson Orin)",
        ops=SUPPORTED_OPS_TRT10,
        opset_min=9,
        opset_max=20,
        pad_axes_input=False,
        dynamic_squeeze_axes=False,
        dynamic_cumsum_axis=False,
        full_einsum=False,
    ),
    "11": _Family(
        key="11",
        label="TensorRT 11.x (desktop)",
        ops=SUPPORTED_OPS_TRT11,
        opset_min=9,
        opset_max=24,
        pad_axes_input=True,
        dynamic_squeeze_axes=True,
        dynamic_cumsum_axis=True,
        full_einsum=True,
    ),
}

#: The accepted ``versions`` strings and what each stands for.
TRT_VERSIONS: Mapping[str, str] = {k: f.label for k, f in _FAMILIES.items()}

#: An optimization profile for one input: (min_shape, opt_shape, max_shape), dims in elements.
Profile = tuple[Sequence[int], Sequence[int], Sequence[int]]


@dataclass(frozen=True)
class TrtProblem:
    """One reason the model would not parse on one TensorRT family.

    ``kind`` is one of :data:`PROBLEM_KINDS`; ``node`` and ``op`` name the ONNX node when the
    problem belongs to one (nodes inside subgraphs or local functions are named
    ``outer/inner``); ``detail`` says what is wrong and, where useful, what would be accepted.
    """

    version: str
    kind: str
    node: str | None
    op: str | None
    detail: str


@dataclass(frozen=True)
class TrtCompatReport:
    """The result of :func:`check_tensorrt_compat`.

    ``ok`` is true when no family has a problem; ``versions`` are the families checked;
    ``problems`` lists each problem once per family it affects; ``ops`` counts the nodes per
    operator over the whole model (``domain:Op`` for operators outside the default domain);
    ``opset`` is the default-domain opset the model imports (None when it imports none).
    """

    ok: bool
    versions: tuple[str, ...]
    problems: tuple[TrtProblem, ...]
    ops: dict[str, int]
    opset: int | None = None

    def ok_for(self, version: str) -> bool:
        """True when no problem concerns ``version`` (one of :attr:`versions`)."""
        if version not in self.versions:
            raise ValueError(f"{version!r} was not checked (checked: {', '.join(self.versions)})")
        return not any(p.version == version for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict: the fields, problems as dicts, op counts sorted by name."""
        return {
            "ok": self.ok,
            "versions": list(self.versions),
            "targets": {v: TRT_VERSIONS[v] for v in self.versions},
            "opset": self.opset,
            "ops": dict(sorted(self.ops.items())),
            "problems": [dataclasses.asdict(p) for p in self.problems],
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON text (``kwargs`` go to :func:`json.dumps`)."""
        return json.dumps(self.to_dict(), **kwargs)

    def format(self) -> str:
        """A human-readable summary: one verdict line per family, then each problem once.

        A problem that affects several families is printed once, tagged with all of them.
        """
        n_nodes = sum(self.ops.values())
        lines = [
            f"TensorRT compatibility: {'OK' if self.ok else 'FAILED'} "
            f"(opset {self.opset if self.opset is not None else 'missing'}, "
            f"{n_nodes} nodes, {len(self.ops)} op types)"
        ]
        for v in self.versions:
            count = sum(1 for p in self.problems if p.version == v)
            verdict = "ok" if count == 0 else f"{count} problem{'s' if count != 1 else ''}"
            lines.append(f"  {v}: {TRT_VERSIONS[v]}: {verdict}")
        grouped: dict[tuple[str, str | None, str | None, str], list[str]] = {}
        for p in self.problems:
            grouped.setdefault((p.kind, p.node, p.op, p.detail), []).append(p.version)
        for (kind, node, op, detail), versions in grouped.items():
            where = ""
            if node is not None or op is not None:
                where = f" node {node!r}" if node is not None else ""
                where += f" ({op})" if op is not None else ""
                where += ":"
            lines.append(f"  [{','.join(versions)}] {kind}:{where} {detail}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Issue:
    """A problem before it is stamped with versions: ``only`` limits it to some families."""

    kind: str
    node: str | None
    op: str | None
    detail: str
    only: frozenset[str] | None = None


@dataclass
class _Scope:
    """What a graph (or function body) can see: constant tensors by name, inferred types."""

    constants: dict[str, onnx.TensorProto | None] = field(default_factory=dict)
    elem_types: dict[str, int] = field(default_factory=dict)


def _require_onnx() -> None:
    # Imported lazily so that the edge runtime imports without the training extra.
    require_extra("onnx", "train")


def _resolve_versions(versions: Sequence[str]) -> tuple[str, ...]:
    if isinstance(versions, str):
        # A bare "10" would otherwise iterate as "1", "0".
        versions = (versions,)
    accepted = ", ".join(f"{k!r} ({label})" for k, label in TRT_VERSIONS.items())
    out: list[str] = []
    for v in versions:
        if v not in _FAMILIES:
            raise ValueError(f"unknown TensorRT version {v!r}; accepted: {accepted}")
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError(f"no TensorRT version given; accepted: {accepted}")
    return tuple(out)


def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrtCompatError(f"{path}: cannot read the ONNX model: {exc.strerror or exc}") from exc
    try:
        # Parse the bytes ourselves: external weights are not needed for any check.
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError, ... by version
        raise TrtCompatError(
            f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})"
        ) from exc
    # Arbitrary bytes can decode as an empty or garbage message without raising.
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.node:
        raise TrtCompatError(f"{path}: not a valid ONNX model (no IR version or an empty graph)")
    return proto


def _dtype_name(elem_type: int) -> str:
    import onnx

    try:
        return str(onnx.TensorProto.DataType.Name(elem_type))
    except ValueError:
        return f"type {elem_type}"


def _dtype_label(name: str) -> str:
    return {"DOUBLE": "float64 (DOUBLE)", "UNDEFINED": "undefined"}.get(name, name)


def _node_label(node: onnx.NodeProto, index: int, prefix: str) -> str:
    name = node.name or f"<{node.op_type} #{index}>"
    return f"{prefix}{name}"


def _attr(node: onnx.NodeProto, name: str) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            value = onnx.helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return None


def _has_input(node: onnx.NodeProto, i: int) -> bool:
    return len(node.input) > i and node.input[i] != ""


def _has_output(node: onnx.NodeProto, i: int) -> bool:
    return len(node.output) > i and node.output[i] != ""


def _constant_value(scope: _Scope, name: str) -> np.ndarray | None:
    """The value of a constant tensor when it is known here (not external data), else None."""
    import onnx.numpy_helper

    tensor = scope.constants.get(name)
    if tensor is None:
        return None
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None
    try:
        return onnx.numpy_helper.to_array(tensor)
    except Exception:  # an odd encoding: the value is simply unknown
        return None


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a ``Constant`` node produces, for the attribute forms that carry numbers."""
    import numpy as np
    import onnx

    value = _attr(node, "value")
    if isinstance(value, onnx.TensorProto):
        return value
    for attr, dtype in (
        ("value_float", np.float32),
        ("value_floats", np.float32),
        ("value_int", np.int64),
        ("value_ints", np.int64),
    ):
        v = _attr(node, attr)
        if v is not None:
            return onnx.numpy_helper.from_array(np.asarray(v, dtype=dtype))
    return None


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    import onnx

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(a.graphs):
                yield f"{a.name}[{i}]", g


class _Checker:
    """Walks the model once and collects :class:`_Issue` objects (families applied later)."""

    def __init__(self, model: onnx.ModelProto, families: Sequence[_Family]) -> None:
        self.model = model
        self.families = families
        self.issues: list[_Issue] = []
        self.ops: Counter[str] = Counter()
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.opset = next(
            (o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None
        )
        self.graph_outputs = {o.name for o in model.graph.output}

    def add(
        self,
        kind: str,
        detail: str,
        *,
        node: str | None = None,
        op: str | None = None,
        only: Sequence[str] | None = None,
    ) -> None:
        scope = frozenset(only) if only is not None else None  # None: every family
        self.issues.append(_Issue(kind, node, op, detail, scope))

    def only_where(self, lacking: str) -> list[str]:
        """The checked families whose flag ``lacking`` is false (they have the restriction)."""
        return [f.key for f in self.families if not getattr(f, lacking)]

    # -- opset ---------------------------------------------------------------------------------

    def check_opset(self) -> None:
        if self.opset is None:
            self.add(
                "opset",
                "no default-domain ('' / 'ai.onnx') opset import; TensorRT needs it explicit",
            )
            return
        for f in self.families:
            if not f.opset_min <= self.opset <= f.opset_max:
                self.add(
                    "opset",
                    f"default-domain opset {self.opset} is outside {f.label}'s supported "
                    f"range {f.opset_min}..{f.opset_max}",
                    only=[f.key],
                )

    # -- inputs, outputs, shapes ---------------------------------------------------------------

    def check_io(self, profiles: Mapping[str, Profile] | None) -> None:
        graph = self.model.graph
        initializers = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in initializers]
        input_names = {i.name for i in inputs}
        profiles = profiles or {}
        for vi in inputs:
            self._check_value_dtype(vi, "input")
            if vi.type.HasField("tensor_type"):
                self._check_input_shape(vi, profiles.get(vi.name))
        for name in profiles:
            if name not in input_names:
                self.add(
                    "dynamic_shape",
                    f"optimization profile for {name!r}, which is not a graph input "
                    f"(inputs: {', '.join(sorted(input_names)) or 'none'})",
                )
        for vi in graph.output:
            self._check_value_dtype(vi, "output")

    def _check_value_dtype(self, vi: onnx.ValueInfoProto, what: str) -> None:
        if not vi.type.HasField("tensor_type"):
            self.add("dtype", f"graph {what} {vi.name!r} is not a tensor (TensorRT needs tensors)")
            return
        name = _dtype_name(vi.type.tensor_type.elem_type)
        if name not in _IO_DTYPES:
            self.add(
                "dtype",
                f"graph {what} {vi.name!r} is {_dtype_label(name)}; TensorRT I/O must be one of "
                f"{', '.join(sorted(_IO_DTYPES))}",
            )

    def _check_input_shape(self, vi: onnx.ValueInfoProto, profile: Profile | None) -> None:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            self.add(
                "dynamic_shape",
                f"input {vi.name!r} has no shape: TensorRT needs at least its rank",
            )
            return
        dims: list[int | None] = []  # None: symbolic or unknown
        labels: list[str] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
                labels.append(str(d.dim_value))
            else:
                dims.append(None)
                labels.append(d.dim_param or "?")
        dynamic = [i for i, d in enumerate(dims) if d is None]
        shape_text = f"[{', '.join(labels)}]"
        if profile is None:
            if dynamic:
                axes = ", ".join(f"axis {i} ({labels[i]})" for i in dynamic)
                self.add(
                    "dynamic_shape",
                    f"input {vi.name!r} {shape_text} is dynamic in {axes} and no optimization "
                    "profile covers it",
                )
            return
        for detail in _profile_errors(dims, profile):
            self.add("dynamic_shape", f"input {vi.name!r} {shape_text}: profile {detail}")

    # -- nodes ---------------------------------------------------------------------------------

    def check_graph(self) -> None:
        self._walk_graph(self.model.graph, prefix="", outer=_Scope(), inferred=self._infer())
        self._check_initializer_dtypes(self.model.graph, prefix="")

    def _infer(self) -> dict[str, int]:
        """Element types of intermediate tensors, by ONNX shape inference (best effort)."""
        import onnx

        graph = self.model.graph
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False).graph
        except Exception:  # inference is a bonus: fall back to what the file records
            inferred = graph
        return {
            vi.name: vi.type.tensor_type.elem_type
            for vi in (*inferred.value_info, *inferred.output)
            if vi.type.HasField("tensor_type")
        }

    def _check_initializer_dtypes(self, graph: onnx.GraphProto, prefix: str) -> None:
        for t in graph.initializer:
            name = _dtype_name(t.data_type)
            if name not in _INNER_DTYPES:
                self.add("dtype", f"initializer {prefix}{t.name!r} is {_dtype_label(name)}")

    def _walk_graph(
        self, graph: onnx.GraphProto, prefix: str, outer: _Scope, inferred: dict[str, int]
    ) -> None:
        scope = _Scope(constants=dict(outer.constants), elem_types=dict(outer.elem_types))
        scope.constants.update({t.name: t for t in graph.initializer})
        scope.elem_types.update(inferred)
        for vi in graph.value_info:
            if vi.type.HasField("tensor_type"):
                scope.elem_types.setdefault(vi.name, vi.type.tensor_type.elem_type)
        for i, node in enumerate(graph.node):
            label = _node_label(node, i, prefix)
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
                scope.constants[node.output[0]] = _constant_tensor(node)
            self._check_node(node, label, scope)
            for attr_name, sub in _subgraphs(node):
                self._walk_graph(sub, f"{label}/{attr_name}/", scope, {})
                self._check_initializer_dtypes(sub, f"{label}/{attr_name}/")

    def _check_node(
        self, node: onnx.NodeProto, label: str, scope: _Scope, *, count: bool = True
    ) -> None:
        domain, op = node.domain, node.op_type
        default = domain in _DEFAULT_DOMAINS
        if count:  # the nodes of the graphs, not those inside local function bodies
            self.ops[op if default else f"{domain}:{op}"] += 1
        if default:
            for f in self.families:
                if op not in f.ops:
                    why = (
                        "marked unsupported ('N')"
                        if op in UNSUPPORTED_OPS
                        else "not in the supported list"
                    )
                    self.add(
                        "unsupported_op",
                        f"{op} is {why} in onnx-tensorrt's operator matrix for this version",
                        node=label,
                        op=op,
                        only=[f.key],
                    )
            self._check_restrictions(node, label, scope)
        elif (domain, op) in self.functions:
            # TensorRT (>= 9) inlines model-local functions: their bodies must parse.
            fn = self.functions[(domain, op)]
            fn_scope = _Scope(elem_types=dict(scope.elem_types))
            for i, inner in enumerate(fn.node):
                inner_label = _node_label(inner, i, f"{label}/")
                if inner.op_type == "Constant" and inner.domain in _DEFAULT_DOMAINS:
                    fn_scope.constants[inner.output[0]] = _constant_tensor(inner)
                self._check_node(inner, inner_label, fn_scope, count=False)
        elif (domain, op) not in ACCEPTED_PLUGINS:
            self.add(
                "foreign_domain",
                f"operator {op!r} of domain {domain!r} is neither standard ONNX nor an "
                "accepted TensorRT plugin",
                node=label,
                op=f"{domain}:{op}",
            )
        self._check_output_dtypes(node, label, scope)

    def _check_output_dtypes(self, node: onnx.NodeProto, label: str, scope: _Scope) -> None:
        for out in node.output:
            if not out or out in self.graph_outputs:
                continue  # graph outputs are reported as such
            elem = scope.elem_types.get(out)
            if elem is None:
                continue
            name = _dtype_name(elem)
            if name != "UNDEFINED" and name not in _INNER_DTYPES:
                self.add(
                    "dtype",
                    f"produces {out!r} as {_dtype_label(name)}, a type TensorRT does not have",
                    node=label,
                    op=node.op_type,
                )
        # A Constant's type is known from its value even where inference did not record it.
        if node.op_type == "Constant" and node.output and node.output[0] not in scope.elem_types:
            tensor = scope.constants.get(node.output[0])
            if tensor is not None and _dtype_name(tensor.data_type) not in _INNER_DTYPES:
                self.add(
                    "dtype",
                    f"constant is {_dtype_label(_dtype_name(tensor.data_type))}",
                    node=label,
                    op=node.op_type,
                )

    def _restriction(
        self,
        node: onnx.NodeProto,
        label: str,
        detail: str,
        only: Sequence[str] | None = None,
    ) -> None:
        if only is not None and not only:
            return  # no checked family has this restriction
        self.add("restriction", detail, node=label, op=node.op_type, only=only)

    def _is_constant(self, scope: _Scope, name: str) -> bool:
        return name in scope.constants

    def _check_restrictions(self, node: onnx.NodeProto, label: str, scope: _Scope) -> None:
        op = node.op_type
        r = self._restriction
        if op == "Resize":
            mode = _attr(node, "mode") or "nearest"
            coord = _attr(node, "coordinate_transformation_mode") or "half_pixel"
            nearest = _attr(node, "nearest_mode") or "round_prefer_floor"
            if mode not in _RESIZE_MODES:
                r(node, label, f"Resize mode {mode!r} unsupported (nearest, linear only)")
            if coord not in _RESIZE_COORD_MODES:
                r(
                    node,
                    label,
                    f"Resize coordinate_transformation_mode {coord!r} unsupported "
                    f"({', '.join(sorted(_RESIZE_COORD_MODES))})",
                )
            if mode == "nearest" and nearest not in _RESIZE_NEAREST_MODES:
                r(node, label, f"Resize nearest_mode {nearest!r} unsupported")
            if _attr(node, "antialias"):
                r(node, label, "Resize antialias is not supported")
            policy = _attr(node, "keep_aspect_ratio_policy")
            if policy not in (None, "stretch"):
                r(node, label, f"Resize keep_aspect_ratio_policy {policy!r} (only 'stretch')")
        elif op in ("MaxPool", "AveragePool", "LpPool"):
            kernel = _attr(node, "kernel_shape")
            if op != "LpPool" and kernel is not None and len(kernel) not in (2, 3):
                r(node, label, f"{op} is {len(kernel)}D; only 2D or 3D pooling is supported")
            dilations = _attr(node, "dilations")
            if dilations and any(d != 1 for d in dilations):
                r(node, label, f"{op} dilations {list(dilations)}: must be empty or all ones")
            if op == "MaxPool" and _has_output(node, 1):
                r(node, label, "MaxPool Indices output is unsupported")
        elif op == "Pad":
            mode = _attr(node, "mode") or "constant"
            if mode not in _PAD_MODES:
                r(node, label, f"Pad mode {mode!r} unsupported ({', '.join(sorted(_PAD_MODES))})")
            if _has_input(node, 3):
                r(
                    node,
                    label,
                    "Pad with an `axes` input needs TensorRT >= 10.4",
                    only=self.only_where("pad_axes_input"),
                )
        elif op == "ScatterND":
            reduction = _attr(node, "reduction") or "none"
            if reduction != "none":
                r(node, label, f"ScatterND reduction {reduction!r} unsupported (only 'none')")
        elif op == "TopK":
            if _attr(node, "sorted") == 0:
                r(node, label, "TopK sorted=0 unsupported (must be 1)")
            if _has_input(node, 1):
                k = _constant_value(scope, node.input[1])
                if k is not None and k.size == 1 and int(k.reshape(-1)[0]) >= _TOPK_MAX_K:
                    r(node, label, f"TopK K={int(k.reshape(-1)[0])} must be < {_TOPK_MAX_K}")
        elif op in _REDUCE_OPS:
            if _has_input(node, 1) and not self._is_constant(scope, node.input[1]):
                r(node, label, f"{op} `axes` must be an initializer")
        elif op in ("Squeeze", "Unsqueeze"):
            if _has_input(node, 1) and not self._is_constant(scope, node.input[1]):
                r(
                    node,
                    label,
                    f"{op} `axes` must be an initializer before TensorRT 10.7",
                    only=self.only_where("dynamic_squeeze_axes"),
                )
        elif op == "CumSum":
            if _has_input(node, 1) and not self._is_constant(scope, node.input[1]):
                r(
                    node,
                    label,
                    "CumSum `axis` must be an initializer before TensorRT 10.8",
                    only=self.only_where("dynamic_cumsum_axis"),
                )
        elif op == "Einsum":
            self._check_einsum(node, label)
        elif op == "Dropout":
            if _has_input(node, 2):
                training = _constant_value(scope, node.input[2])
                if training is None or bool(training.any()):
                    r(node, label, "Dropout training_mode must be a constant False")
        elif op == "LayerNormalization":
            if _has_output(node, 1) or _has_output(node, 2):
                r(node, label, "LayerNormalization: only the first output Y is supported")
        elif op == "LSTM":
            if _attr(node, "input_forget"):
                r(node, label, "LSTM input_forget must be 0")
            if _attr(node, "layout"):
                r(node, label, "LSTM layout must be 0")
        elif op == "Constant":
            for a in ("sparse_value", "value_string", "value_strings"):
                if _attr(node, a) is not None:
                    r(node, label, f"Constant attribute {a!r} is unsupported")
        elif op in ("QuantizeLinear", "DequantizeLinear") and _has_input(node, 2):
            zp = _constant_value(scope, node.input[2])
            if zp is not None and bool(zp.astype("float64").any()):
                r(node, label, f"{op} zero point must be 0")

    def _check_einsum(self, node: onnx.NodeProto, label: str) -> None:
        only = self.only_where("full_einsum")
        equation = str(_attr(node, "equation") or "").replace(" ", "")
        lhs = equation.split("->", 1)[0]
        if "..." in lhs:
            self._restriction(node, label, "Einsum ellipsis needs TensorRT >= 10.12", only=only)
        for term in lhs.split(","):
            letters = term.replace("...", "")
            if len(set(letters)) != len(letters):
                self._restriction(
                    node,
                    label,
                    f"Einsum diagonal term {term!r} needs TensorRT >= 10.12",
                    only=only,
                )
                break


def _profile_errors(dims: Sequence[int | None], profile: object) -> list[str]:
    """What is wrong with ``profile`` for an input of ``dims`` (None = dynamic); [] if fine."""
    if not isinstance(profile, (tuple, list)) or len(profile) != 3:
        return ["must be a (min_shape, opt_shape, max_shape) triple"]
    shapes: list[list[int]] = []
    for which, shape in zip(("min", "opt", "max"), profile, strict=True):
        if not isinstance(shape, (tuple, list)) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            return [f"{which} shape {shape!r} is not a sequence of ints"]
        shapes.append([int(d) for d in shape])
    errors: list[str] = []
    rank = len(dims)
    for which, shape in zip(("min", "opt", "max"), shapes, strict=True):
        if len(shape) != rank:
            errors.append(f"{which} shape {shape} has rank {len(shape)}, the input has {rank}")
        elif any(d <= 0 for d in shape):
            errors.append(f"{which} shape {shape} has a dim <= 0")
    if errors:
        return errors
    lo, opt, hi = shapes
    for axis, (d, a, b, c) in enumerate(zip(dims, lo, opt, hi, strict=True)):
        if d is not None:
            # A static dim cannot vary: the profile must repeat it exactly.
            if not a == b == c == d:
                errors.append(f"axis {axis} is static ({d}) but the profile gives {a}, {b}, {c}")
        elif not a <= b <= c:
            errors.append(f"axis {axis}: needs min <= opt <= max, got {a}, {b}, {c}")
    return errors


def check_tensorrt_compat(
    model: str | Path | onnx.ModelProto,
    *,
    versions: Sequence[str] = ("10", "11"),
    profiles: Mapping[str, Profile] | None = None,
) -> TrtCompatReport:
    """Check, without TensorRT, whether its ONNX parser would take ``model`` on each family.

    ``model`` is a path to an ``.onnx`` file or a loaded ``onnx.ModelProto`` (external weights
    are never read). ``versions`` picks the families among :data:`TRT_VERSIONS` ("10": 10.3 on
    JetPack 6, "11": 11.x desktop). ``profiles`` maps input names to (min, opt, max) shapes
    for inputs with dynamic dims, as the engine build would receive them. Returns a
    :class:`TrtCompatReport` listing every problem found (operators, opset, shapes, data types,
    per-operator restrictions; see the module docstring); raises :class:`ValueError` for an
    unknown version, :class:`TrtCompatError` for an unreadable or invalid file and
    :class:`~edgefuse.errors.MissingExtraError` when ``onnx`` is not installed.
    """
    keys = _resolve_versions(versions)
    _require_onnx()
    proto = _load(model)
    checker = _Checker(proto, [_FAMILIES[k] for k in keys])
    checker.check_opset()
    checker.check_io(profiles)
    checker.check_graph()
    problems: list[TrtProblem] = []
    seen: set[TrtProblem] = set()
    for issue in checker.issues:
        for k in keys:
            if issue.only is not None and k not in issue.only:
                continue
            p = TrtProblem(k, issue.kind, issue.node, issue.op, issue.detail)
            if p not in seen:
                seen.add(p)
                problems.append(p)
    return TrtCompatReport(
        ok=not problems,
        versions=keys,
        problems=tuple(problems),
        ops=dict(checker.ops),
        opset=checker.opset,
    )
