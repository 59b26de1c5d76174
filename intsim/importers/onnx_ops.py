"""What the ONNX importer knows of each op: a node's view of its attributes and inputs, the ops it folds
on static values once per world (with ONNX semantics), and the canonical float node(s) each ONNX op
becomes (both registries keyed by ONNX op type)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from intsim import onnxproto
from intsim.errors import ModelFormatError, UnsupportedOpError, ValidationError
from intsim.floatgraph.execute import COORDINATE_MODES, NEAREST_MODES
from intsim.floatgraph import FloatNode


def unique_name(base: str, used: set[str]) -> str:
    name, k = base, 1
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def read_initializer(tensor) -> np.ndarray:
    """An initializer's array; external data, or dims that contradict the data, are a ModelFormatError."""
    if tensor.data_location == onnxproto.TensorProto.EXTERNAL:
        raise ModelFormatError(f"initializer {tensor.name!r}: external data is not read (a model must be one file)")
    try:
        return onnxproto.to_array(tensor)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as exc:
        raise ModelFormatError(f"initializer {tensor.name!r}: dims {list(tensor.dims)} do not match its data "
                               f"({type(exc).__name__}: {exc})") from None


def _attr_value(attr: onnxproto.AttributeProto):
    value = onnxproto.attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnxproto.TensorProto):
        return read_initializer(value)
    return value


class OnnxNode:
    """One ONNX node being imported: its inputs resolved through removed Identities, its attributes."""

    def __init__(self, importer, proto: onnxproto.NodeProto, name: str):
        self.importer = importer
        self.op = proto.op_type
        self.domain = proto.domain
        self.name = name
        self.opset = importer.opset
        self.outputs = list(proto.output)
        inputs = [importer.resolve(t) for t in proto.input]
        while inputs and not inputs[-1]:
            inputs.pop()
        self.inputs = inputs
        self.attrs = {a.name: _attr_value(a) for a in proto.attribute}

    def where(self) -> str:
        return f"node {self.name!r} (opset {self.opset})"

    def fail(self, message: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.where()}: {message}")

    def invalid(self, message: str) -> ValidationError:
        return ValidationError(f"{self.where()}: {self.op} {message}")

    def attr(self, key: str, default=None):
        return self.attrs.get(key, default)

    def ints(self, key: str, length: int, fill: int, lo: int | None = None) -> list[int]:
        value = self.attrs.get(key, [fill] * length)
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.invalid(f"attribute {key} must be {length} integers, found {value!r}")
        if len(value) != length:
            raise self.invalid(f"attribute {key} must have {length} values, found {value}")
        if lo is not None and any(v < lo for v in value):
            raise self.invalid(f"attribute {key} must be >= {lo} everywhere, found {value}")
        return value

    def choice(self, key: str, default: str, allowed) -> str:
        value = self.attrs.get(key, default)
        if value not in allowed:
            raise self.fail(f"{self.op} {key} {value!r} is not supported; supported: {', '.join(allowed)}")
        return value

    def has(self, i: int) -> bool:
        return i < len(self.inputs) and bool(self.inputs[i])

    def worlds(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.importer.values[self.inputs[i]]

    def shape(self, i: int) -> tuple:
        return self.importer.shape(self.inputs[i])

    def rank(self, i: int) -> int:
        return len(self.shape(i))

    def static(self, i: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """The input's value in both worlds; it must not depend on the input data."""
        if not self.has(i):
            raise self.invalid(f"input {i} ({what}) is missing")
        if self.inputs[i] not in self.importer.static:
            raise self.fail(f"{self.op} input {i} ({what}) {self.inputs[i]!r} must be a constant")
        return self.worlds(i)

    def const(self, i: int, what: str) -> np.ndarray:
        """The input's value; it must be a constant (not even depend on the batch size)."""
        first, second = self.static(i, what)
        if not same_values(first, second):
            raise self.fail(f"{self.op} input {i} ({what}) {self.inputs[i]!r} depends on the batch size")
        return first

    def is_const(self, i: int) -> bool:
        return self.has(i) and self.inputs[i] in self.importer.static and same_values(*self.worlds(i))

    def scalar(self, i: int, what: str, default: float) -> float:
        if not self.has(i):
            return default
        value = self.const(i, what)
        if value.size != 1:
            raise self.invalid(f"input {i} ({what}) must be a scalar, found shape {value.shape}")
        return float(value.reshape(()))

    def fresh(self, hint: str) -> str:
        return unique_name(f"{self.name}/{hint}", self.importer.tensor_names)

    def constant(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.importer.values[name] = (value, value)
        self.importer.static.add(name)
        return name

    def make(self, op: str, inputs: list[str], attrs: dict | None = None, output: str | None = None) -> FloatNode:
        return FloatNode(op, self.name, list(inputs), [output or self.outputs[0]], attrs or {})


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc" and b.dtype.kind in "fc")


# --------------------------------------------------------------------------
# Folding: ops evaluated on static values, once per world, with ONNX semantics
# and the input's dtype.  Absent optional inputs arrive as None.
# --------------------------------------------------------------------------

FOLD: dict[str, Callable[..., np.ndarray]] = {}


def _fold(name: str):
    def wrap(fn):
        FOLD[name] = fn
        return fn

    return wrap


_CONSTANT_DTYPES = {
    "value": None,
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


@_fold("Constant")
def _fold_constant(node):
    for key, dtype in _CONSTANT_DTYPES.items():
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype=dtype)
    raise node.fail(f"Constant with attribute {', '.join(node.attrs)} is not supported")


@_fold("Shape")
def _fold_shape(node, x):
    return np.array(x.shape[node.attr("start", 0) : node.attr("end")], dtype=np.int64)


@_fold("Slice")
def _fold_slice(node, data, starts, ends, axes=None, steps=None):
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[int(axis)] = slice(int(start), int(end), int(step))
    return data[tuple(index)]


_fold("Gather")(lambda node, data, indices: np.take(data, indices, axis=node.attr("axis", 0)))
_fold("Cast")(lambda node, x: x.astype(onnxproto.np_dtype(node.attr("to"))))
_fold("Range")(lambda node, start, limit, delta: np.arange(start, limit, delta).astype(start.dtype))
_fold("Equal")(lambda node, a, b: np.equal(a, b))
_fold("Where")(lambda node, condition, a, b: np.where(condition, a, b))


@_fold("ConstantOfShape")
def _fold_constant_of_shape(node, shape):
    value = node.attr("value", np.zeros(1, np.float32))
    return np.full([int(d) for d in shape], value.reshape(()), dtype=value.dtype)


# --------------------------------------------------------------------------
# Canonical forms: each converter returns the canonical node(s) of one ONNX node.
# --------------------------------------------------------------------------

CONVERT: dict[str, Callable[[OnnxNode], list[FloatNode]]] = {}


def _convert(*names: str):
    def wrap(fn):
        for name in names:
            CONVERT[name] = fn
        return fn

    return wrap


register_fold = _fold
register_convert = _convert  # for modules that add ops (intsim.importers.onnx_vision)
# ONNX ops whose converter gives each output its own canonical node, so every output may be used.
MULTI_OUTPUT: set[str] = set()


def _axes(node: OnnxNode, axes, rank: int) -> list[int]:
    axes = [int(a) for a in axes]
    if any(not -rank <= a < rank for a in axes) or len(set(a % rank for a in axes)) != len(axes):
        raise node.invalid(f"axes {axes} must be distinct and in [{-rank}, {rank})")
    return sorted(a % rank for a in axes)


def _axes_operand(node: OnnxNode, since: int) -> list[int] | None:
    """Axes given as attribute before opset ``since`` and as input 1 from it on (None when absent)."""
    if node.opset < since:
        return node.attr("axes")
    return node.const(1, "axes").tolist() if node.has(1) else None


def _explicit_pads(node: OnnxNode, kernel, strides, dilations) -> list[int]:
    """``pads`` [top, left, bottom, right], from ``auto_pad`` where the model uses it."""
    auto_pad = node.choice("auto_pad", "NOTSET", ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"))
    if auto_pad == "NOTSET":
        return node.ints("pads", 4, 0, lo=0)
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for size, k, s, d in zip(node.shape(0)[2:], kernel, strides, dilations):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        end.append(total - begin[-1])
    return begin + end


axes_of, explicit_pads = _axes, _explicit_pads  # shared with intsim.importers.onnx_vision


def _ceil_overhang(size: int, k: int, stride: int, dilation: int, pad_begin: int, pad_end: int) -> int:
    """Extra end padding that makes floor-mode windows equal ceil-mode ones (onnxruntime's rule:
    a last window starting beyond the input and the begin padding is dropped)."""
    span = size + pad_begin + pad_end - (k - 1) * dilation - 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return max(0, (out - 1) * stride - span)


# Convolutions of other ranks, by the rank of their weight, as canonical 2-D ones (1-D: onnx_speech).
CONV_BY_RANK: dict[int, Callable[[OnnxNode], list[FloatNode]]] = {}


@_convert("Conv")
def _conv(node):
    weight = node.const(1, "weight")
    if weight.ndim in CONV_BY_RANK:
        return CONV_BY_RANK[weight.ndim](node)
    if weight.ndim != 4:
        raise node.fail(f"only 1-D and 2-D convolutions are supported; weight has shape {weight.shape}")
    if node.has(2):
        node.const(2, "bias")
    strides, dilations = node.ints("strides", 2, 1, lo=1), node.ints("dilations", 2, 1, lo=1)
    if "kernel_shape" in node.attrs and node.ints("kernel_shape", 2, 0) != list(weight.shape[2:]):
        raise node.invalid(f"kernel_shape {node.attr('kernel_shape')} contradicts the weight's "
                           f"{list(weight.shape[2:])}")
    group = node.attr("group", 1)
    if not isinstance(group, int) or group < 1 or weight.shape[0] % group:
        raise node.invalid(f"group must be an integer >= 1 dividing the {weight.shape[0]} output channels, "
                           f"found {group!r}")
    attrs = {
        "strides": strides,
        "dilations": dilations,
        "pads": _explicit_pads(node, weight.shape[2:], strides, dilations),
        "group": group,
    }
    return [node.make("Conv", node.inputs, attrs)]


@_convert("BatchNormalization")
def _batch_norm(node):
    if node.attr("training_mode", 0):
        raise node.fail("BatchNormalization with training_mode=1 is not supported")
    for i, what in enumerate(("scale", "B", "mean", "var"), start=1):
        node.const(i, what)
    return [node.make("BatchNormalization", node.inputs, {"epsilon": float(node.attr("epsilon", 1e-5))})]


@_convert("Relu", "Sigmoid", "Tanh", "HardSwish")
def _unary(node):
    return [node.make(node.op, node.inputs[:1])]


@_convert("PRelu", "Add", "Sub", "Mul", "Div", "MatMul")
def _binary(node):
    return [node.make(node.op, node.inputs[:2])]


@_convert("LeakyRelu")
def _leaky_relu(node):
    return [node.make("LeakyRelu", node.inputs[:1], {"alpha": float(node.attr("alpha", 0.01))})]


@_convert("HardSigmoid")
def _hard_sigmoid(node):
    attrs = {"alpha": float(node.attr("alpha", 0.2)), "beta": float(node.attr("beta", 0.5))}
    return [node.make("HardSigmoid", node.inputs[:1], attrs)]


@_convert("Clip")
def _clip(node):
    attrs = {"min": node.scalar(1, "min", -math.inf), "max": node.scalar(2, "max", math.inf)}
    return [node.make("Clip", node.inputs[:1], attrs)]


@_convert("Concat")
def _concat(node):
    return [node.make("Concat", node.inputs, {"axis": _axes(node, [node.attr("axis")], node.rank(0))[0]})]


def _pool_window(node):
    """kernel, strides, dilations, pads and the ceil_mode overhang [bottom, right] of a 2-D pool."""
    kernel = node.attr("kernel_shape")
    if not isinstance(kernel, list) or len(kernel) != 2:
        raise node.fail(f"only 2-D pooling is supported; kernel_shape is {kernel}")
    kernel = node.ints("kernel_shape", 2, 1, lo=1)
    strides, dilations = node.ints("strides", 2, 1, lo=1), node.ints("dilations", 2, 1, lo=1)
    pads = _explicit_pads(node, kernel, strides, dilations)
    overhang = [0, 0]
    if node.attr("ceil_mode", 0):
        sizes = node.shape(0)[2:]
        overhang = [_ceil_overhang(sizes[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + 2]) for i in (0, 1)]
    return list(kernel), strides, dilations, pads, overhang


@_convert("MaxPool")
def lower_max_pool(node):
    kernel, strides, dilations, pads, overhang = _pool_window(node)
    pads = pads[:2] + [pads[2] + overhang[0], pads[3] + overhang[1]]
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations}
    return [node.make("MaxPool", node.inputs, attrs)]


@_convert("AveragePool")
def _average_pool(node):
    kernel, strides, dilations, pads, overhang = _pool_window(node)
    if dilations != [1, 1]:
        raise node.fail(f"AveragePool with dilations {dilations} is not supported")
    count_include_pad = int(node.attr("count_include_pad", 0))
    if any(overhang) and count_include_pad:
        if any(pads):
            raise node.fail(
                "AveragePool with ceil_mode=1, count_include_pad=1 and pads is not supported: a window "
                "overhanging the input counts the pads but not the overhang, which no padding expresses"
            )
        # Without pads of its own, counting the (absent) pads changes nothing.
        count_include_pad = 0
    pads = pads[:2] + [pads[2] + overhang[0], pads[3] + overhang[1]]
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "count_include_pad": count_include_pad}
    return [node.make("AveragePool", node.inputs, attrs)]


@_convert("GlobalAveragePool")
def _global_average_pool(node):
    return [node.make("ReduceMean", node.inputs, {"axes": list(range(2, node.rank(0))), "keepdims": 1})]


@_convert("ReduceMean", "ReduceMax", "ReduceSum")
def _reduce(node):
    rank = node.rank(0)
    axes = _axes_operand(node, since=13 if node.op == "ReduceSum" else 18)
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            raise node.fail(f"{node.op} with noop_with_empty_axes=1 and no axes is not supported")
        axes = range(rank)
    attrs = {"axes": _axes(node, axes, rank), "keepdims": int(node.attr("keepdims", 1))}
    return [node.make(node.op, node.inputs[:1], attrs)]


@_convert("Gemm")
def _gemm(node):
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    if node.attr("transA", 0):
        raise node.fail("Gemm with transA=1 is not supported")
    trans_b = bool(node.attr("transB", 0))
    if node.is_const(1) and (not node.has(2) or node.is_const(2)):
        weight = node.const(1, "B")
        inputs = [node.inputs[0], node.inputs[1]]
        if not trans_b or alpha != 1:
            inputs[1] = node.constant((weight if trans_b else weight.T) * np.float32(alpha), "weight")
        if node.has(2):
            bias, out = node.const(2, "C"), weight.shape[0] if trans_b else weight.shape[1]
            if bias.size not in (1, out) or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
                raise node.fail(f"Gemm bias C of shape {bias.shape} is not supported; only a bias per output column")
            inputs.append(node.inputs[2])
            if bias.shape != (out,) or beta != 1:
                inputs[2] = node.constant(np.broadcast_to(bias.reshape(-1) * np.float32(beta), (out,)).copy(), "bias")
        return [node.make("Gemm", inputs)]
    if alpha != 1 or (node.has(2) and beta != 1):
        raise node.fail("Gemm with a non-constant B or C and alpha or beta other than 1 is not supported")
    nodes, b = [], node.inputs[1]
    if trans_b:
        b = node.fresh("B_transposed")
        nodes.append(node.make("Transpose", node.inputs[1:2], {"perm": [1, 0]}, output=b))
    if not node.has(2):
        return nodes + [node.make("MatMul", [node.inputs[0], b])]
    product = node.fresh("matmul")
    nodes.append(node.make("MatMul", [node.inputs[0], b], output=product))
    return nodes + [node.make("Add", [product, node.inputs[2]])]


@_convert("Flatten")
def _flatten(node):
    rank, axis = node.rank(0), int(node.attr("axis", 1))
    if not -rank <= axis <= rank:
        raise node.invalid(f"axis {axis} must be in [{-rank}, {rank}]")
    return [node.make("Flatten", node.inputs, {"axis": axis + rank if axis < 0 else axis})]


def _stands_for_batch(node: OnnxNode, axis: int, first: int, second: int) -> bool:
    """Whether a shape value (``first``, ``second`` in the two worlds) at ``axis`` is input 0's
    batch dimension there: equal to it in both worlds, or the file's fixed batch size at axis 0."""
    dims = [x.shape for x in node.worlds(0)]
    if axis >= len(dims[0]) or dims[0][axis] == dims[1][axis]:
        return False
    if first != second:
        return (first, second) == (dims[0][axis], dims[1][axis])
    return axis == 0 and first in node.importer.fixed_batches


@_convert("Reshape")
def _reshape(node):
    targets = [t.astype(np.int64).tolist() for t in node.static(1, "shape")]
    if node.attr("allowzero", 0) and (0 in targets[0] or 0 in targets[1]):
        raise node.fail("Reshape with allowzero=1 and a 0 in the shape is not supported")
    shape, varying = [], []
    for i, (first, second) in enumerate(zip(*targets)):
        if _stands_for_batch(node, i, first, second):
            shape.append(0)
        elif first != second:
            shape.append(None)
            varying.append(i)
        else:
            shape.append(first)
    if varying:
        if len(varying) > 1 or -1 in shape:
            raise node.fail(f"Reshape target depends on the batch size at positions {varying}; not expressible")
        shape[varying[0]] = -1
    return [node.make("Reshape", node.inputs[:1], {"shape": shape})]


@_convert("Transpose")
def _transpose(node):
    perm = node.attr("perm", list(range(node.rank(0)))[::-1])
    return [node.make("Transpose", node.inputs, {"perm": [int(p) for p in perm]})]


@_convert("Squeeze")
def _squeeze(node):
    axes = _axes_operand(node, since=13)
    shape = node.shape(0)
    if axes is None:
        axes = [i for i, d in enumerate(shape) if d == 1]
    return [node.make("Squeeze", node.inputs[:1], {"axes": _axes(node, axes, len(shape))})]


@_convert("Unsqueeze")
def _unsqueeze(node):
    axes = _axes_operand(node, since=13) or []
    return [node.make("Unsqueeze", node.inputs[:1], {"axes": _axes(node, axes, node.rank(0) + len(axes))})]


@_convert("Pad")
def _pad(node):
    mode = node.choice("mode", "constant", ("constant", "reflect", "edge"))
    rank, pads = node.rank(0), node.const(1, "pads").tolist()
    if node.has(3):
        axes = _axes(node, node.const(3, "axes").tolist(), rank)
        full = [0] * (2 * rank)
        for j, axis in enumerate(axes):
            full[axis], full[axis + rank] = pads[j], pads[j + len(axes)]
        pads = full
    if len(pads) != 2 * rank:
        raise node.invalid(f"pads {pads} must have 2 * rank = {2 * rank} values")
    if min(pads) < 0:
        raise node.fail(f"Pad with negative pads {pads} (cropping) is not supported")
    shape = node.shape(0)
    if mode != "constant" and any(p and shape[i % rank] is None for i, p in enumerate(pads)):
        raise node.fail(f"Pad mode {mode!r} of the batch axis is not supported")
    if mode == "reflect" and any(p >= shape[i % rank] for i, p in enumerate(pads) if p):
        raise node.invalid(f"reflect pads {pads} must be smaller than the padded axes of input {shape}")
    attrs = {"pads": pads, "mode": mode, "value": node.scalar(2, "constant_value", 0.0)}
    return [node.make("Pad", node.inputs[:1], attrs)]


@_convert("Softmax")
def _softmax(node):
    rank = node.rank(0)
    axis = _axes(node, [node.attr("axis", -1 if node.opset >= 13 else 1)], rank)[0]
    if node.opset < 13 and axis != rank - 1:
        raise node.fail(
            f"Softmax before opset 13 flattens the input to 2-D at axis {axis}; only axis {rank - 1} (the last) "
            "is supported"
        )
    return [node.make("Softmax", node.inputs, {"axis": axis})]


@_convert("Resize")
def _resize(node):
    node.choice("mode", "nearest", ("nearest",))
    node.choice("keep_aspect_ratio_policy", "stretch", ("stretch",))
    attrs = {
        "coordinate_transformation_mode": node.choice("coordinate_transformation_mode", "half_pixel", COORDINATE_MODES),
        "nearest_mode": node.choice("nearest_mode", "round_prefer_floor", NEAREST_MODES),
    }
    dims = [x.shape for x in node.worlds(0)]
    axes = _axes(node, node.attr("axes", range(len(dims[0]))), len(dims[0]))
    if node.has(3):
        targets = [t.astype(np.int64).tolist() for t in node.static(3, "sizes")]
    else:
        scales = node.const(2, "scales").astype(np.float64)
        targets = [[math.floor(d[a] * s) for a, s in zip(axes, scales)] for d in dims]
        inexact = [(a, float(s)) for a, s, t in zip(axes, scales, targets[0]) if t != dims[0][a] * s]
        if inexact:
            raise node.fail(f"Resize scales {inexact} (axis, scale) give a fractional output size; use sizes")
    full = [list(d) for d in dims]
    for j, axis in enumerate(axes):
        full[0][axis], full[1][axis] = targets[0][j], targets[1][j]
    sizes = []
    for axis, (first, second) in enumerate(zip(*full)):
        if _stands_for_batch(node, axis, first, second):
            sizes.append(0)
        elif dims[0][axis] != dims[1][axis]:
            raise node.fail(f"Resize of the batch axis {axis} is not supported")
        elif first != second:
            raise node.fail(f"Resize size of axis {axis} depends on the batch size")
        else:
            sizes.append(first)
    return [node.make("Resize", node.inputs[:1], {"sizes": sizes, **attrs})]
