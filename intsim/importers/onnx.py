"""Import an ONNX model (default domain, opsets 11 to 21) as a canonical :class:`FloatGraph`.

Every node of the result has one of the forms below, whatever the opset or the
exporter (ONNX op names, NCHW layout, ONNX semantics; attribute values are
plain Python ints, floats, strings and lists):

=====================  =========================================================
op                     inputs; attributes
=====================  =========================================================
Conv                   x, W[, B] (W [M, C/group, kh, kw] and B constants);
                       strides [sh, sw], dilations [dh, dw],
                       pads [top, left, bottom, right], group
BatchNormalization     x, scale, B, mean, var (constants); epsilon
Relu, Sigmoid, Tanh,   x
HardSwish
Clip                   x; min, max (floats, -inf / inf when absent)
LeakyRelu              x; alpha
HardSigmoid            x; alpha, beta
PRelu                  x, slope
Add, Sub, Mul, Div     a, b (numpy broadcasting; either may be a constant)
Concat                 x1, x2, ...; axis (non-negative)
MaxPool                x; kernel_shape, strides, pads (4), dilations
AveragePool            x; kernel_shape, strides, pads (4), count_include_pad (0/1)
ReduceMean             x; axes (sorted, non-negative), keepdims (0/1)
Gemm                   x, W[, B]: y = x @ W.T + B, W [out, in] and B [out] constants
MatMul                 a, b (b may be a constant)
Flatten                x; axis (non-negative)
Reshape                x; shape (ints; 0 copies the input dim, -1 is inferred)
Transpose              x; perm
Squeeze, Unsqueeze     x; axes (sorted, non-negative)
Pad                    x; pads (ONNX order, 2 * rank, non-negative),
                       mode "constant", value (float)
Softmax                x; axis (non-negative)
Resize                 x; sizes (full output shape, 0 at a batch axis: same as
                       the input), coordinate_transformation_mode, nearest_mode
                       (mode is always nearest)
=====================  =========================================================

Normalisation: ``auto_pad`` becomes explicit pads; ``ceil_mode=1`` becomes
extra bottom/right pads (MaxPool always; AveragePool where that is exact,
switching ``count_include_pad`` to 0 when the model has no pads of its own);
GlobalAveragePool becomes ReduceMean over axes 2.. with keepdims 1; Gemm's
transB, alpha and beta are folded into W and B (a Gemm whose B is not constant
becomes MatMul, with a Transpose for transB and an Add for C); Identity and
Dropout disappear.

**Folding and the batch.**  The importer runs every node twice, on placeholder
inputs whose batch dimension (dim 0 of every graph input) is 1 in the first
"world" and 2 in the second.  A tensor whose value does not depend on the
input data (initializers, Constant nodes, Shape outputs and everything
computed from them) is *static* and folded away.  A static tensor that is the
same in both worlds is a constant; one that differs carries the batch size
(the shape arithmetic exporters emit for ``x.view(x.size(0), -1)``) and may
only reach a Reshape target or Resize sizes, where the position holding the
input's batch dimension becomes 0 (copy); in a Reshape target, one other
batch-dependent position becomes -1.  A Reshape target or Resize sizes that
hard-code the file's fixed batch size at position 0 also get 0 there when
``batch_dynamic``.  A dimension whose size differs between the worlds is
``None`` in ``FloatGraph.shapes``.  ``auto_pad`` follows the ONNX formula
(dilated kernel), which onnxruntime's pools do not for dilations > 1.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Callable

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from intsim.errors import ModelFormatError, UnsupportedOpError, ValidationError
from intsim.floatgraph.execute import COORDINATE_MODES, NEAREST_MODES, run_node
from intsim.floatgraph import FloatGraph, FloatNode

OPSETS = range(11, 22)
WORLD_BATCH_SIZES = (1, 2)
_DEFAULT_DOMAINS = ("", "ai.onnx")


def import_onnx(model, *, batch_dynamic: bool = True) -> FloatGraph:
    """Import an ONNX model as a canonical float graph (forms in the module docstring).

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        The model, default-domain opset 11 to 21, with float32 inputs whose
        dimensions other than dim 0 are static.
    batch_dynamic : bool
        Treat dim 0 of every graph input as a batch of any size, even where the
        file fixes it (torch exports without ``dynamic_axes`` fix it to 1).
        With ``False`` only a symbolic dim 0 is a batch.

    Returns
    -------
    FloatGraph
        Nodes in topological order with unique names, ``inputs`` without
        initializers, ``constants`` holding only what the nodes use (float
        constants as float32), ``shapes`` for every tensor.

    Raises
    ------
    ModelFormatError
        The path is not a file, the file is not an ONNX model, or the graph is
        malformed (a tensor produced twice or never, a cycle, no default-domain
        opset).
    UnsupportedOpError
        An opset outside 11..21, or an op or attribute value with no canonical
        form that cannot be folded; names the node, its opset and the op.
    ValidationError
        A non-float32 input, a symbolic dimension other than the batch, an
        invalid attribute, or a node that fails to run on the placeholder inputs.
    """
    return _Importer(read_onnx(model), batch_dynamic).run()


def read_onnx(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise ValidationError(f"model must be a path or an onnx.ModelProto, found {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path!r}: no such file")
    try:
        return onnx.load(path)
    except DecodeError as exc:
        raise ModelFormatError(f"{path!r}: not an ONNX model ({exc})") from exc


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ModelFormatError(f"model {model.graph.name!r} imports no default-domain (ai.onnx) opset")
    if versions[0] not in OPSETS:
        raise UnsupportedOpError(
            f"model {model.graph.name!r}: opset {versions[0]} is not supported; intsim imports opsets "
            f"{OPSETS.start} to {OPSETS.stop - 1}"
        )
    return versions[0]


def _attr_value(attr: onnx.AttributeProto):
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    return value


def _unique(base: str, used: set[str]) -> str:
    name, k = base, 1
    while name in used:
        name, k = f"{base}_{k}", k + 1
    used.add(name)
    return name


def _sorted_nodes(graph: onnx.GraphProto, known: set[str]) -> list[onnx.NodeProto]:
    """The graph's nodes in topological order, ties kept in file order (Kahn's algorithm)."""
    producer = {}
    for i, node in enumerate(graph.node):
        for out in filter(None, node.output):
            if out in producer or out in known:
                raise ModelFormatError(f"graph {graph.name!r}: tensor {out!r} is produced twice")
            producer[out] = i
    waiting_on = []
    users = [[] for _ in graph.node]
    for i, node in enumerate(graph.node):
        deps = set()
        for t in filter(None, node.input):
            if t in producer:
                deps.add(producer[t])
            elif t not in known:
                raise ModelFormatError(
                    f"graph {graph.name!r}: input {t!r} of node {node.name!r} is neither a graph input, "
                    "an initializer nor a node output"
                )
        waiting_on.append(len(deps))
        for d in deps:
            users[d].append(i)
    ready = [i for i, n in enumerate(waiting_on) if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(graph.node[i])
        for u in users[i]:
            waiting_on[u] -= 1
            if waiting_on[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise ModelFormatError(f"graph {graph.name!r}: the nodes form a cycle")
    return order


class _Node:
    """One ONNX node being imported: its inputs resolved through removed Identities, its attributes."""

    def __init__(self, importer: "_Importer", proto: onnx.NodeProto, name: str):
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

    def ints(self, key: str, length: int, fill: int) -> list[int]:
        value = [int(v) for v in self.attrs.get(key, [fill] * length)]
        if len(value) != length:
            raise self.invalid(f"attribute {key} must have {length} values, found {value}")
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
        if not _same(first, second):
            raise self.fail(f"{self.op} input {i} ({what}) {self.inputs[i]!r} depends on the batch size")
        return first

    def is_const(self, i: int) -> bool:
        return self.has(i) and self.inputs[i] in self.importer.static and _same(*self.worlds(i))

    def scalar(self, i: int, what: str, default: float) -> float:
        if not self.has(i):
            return default
        value = self.const(i, what)
        if value.size != 1:
            raise self.invalid(f"input {i} ({what}) must be a scalar, found shape {value.shape}")
        return float(value.reshape(()))

    def fresh(self, hint: str) -> str:
        return _unique(f"{self.name}/{hint}", self.importer.tensor_names)

    def constant(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.importer.values[name] = (value, value)
        self.importer.static.add(name)
        return name

    def make(self, op: str, inputs: list[str], attrs: dict | None = None, output: str | None = None) -> FloatNode:
        return FloatNode(op, self.name, list(inputs), [output or self.outputs[0]], attrs or {})


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b)


class _Importer:
    def __init__(self, model: onnx.ModelProto, batch_dynamic: bool):
        self.graph = model.graph
        self.opset = _default_opset(model)
        self.batch_dynamic = batch_dynamic
        self.values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.static: set[str] = set()
        self.alias: dict[str, str] = {}
        self.nodes: list[FloatNode] = []
        self.constants: dict[str, np.ndarray] = {}
        self.fixed_batches: set[int] = set()
        self.node_names: set[str] = set()
        self.tensor_names = {t for n in self.graph.node for t in (*n.input, *n.output)}
        self.tensor_names |= {t.name for t in self.graph.input} | {t.name for t in self.graph.initializer}
        self.consumed = {t for n in self.graph.node for t in n.input} | {t.name for t in self.graph.output}

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def shape(self, tensor: str) -> tuple:
        first, second = (v.shape for v in self.values[tensor])
        if len(first) != len(second):
            raise ValidationError(
                f"tensor {tensor!r} has rank {len(first)} at batch size {WORLD_BATCH_SIZES[0]} but "
                f"{len(second)} at batch size {WORLD_BATCH_SIZES[1]}"
            )
        return tuple(a if a == b else None for a, b in zip(first, second))

    def run(self) -> FloatGraph:
        for init in self.graph.initializer:
            value = numpy_helper.to_array(init)
            self.values[init.name] = (value, value)
            self.static.add(init.name)
        inputs = [self._add_input(t) for t in self.graph.input if t.name not in self.static]
        known = set(self.values)
        for index, proto in enumerate(_sorted_nodes(self.graph, known)):
            name = _unique(proto.name or f"{proto.op_type}_{index}", self.node_names)
            self._import_node(_Node(self, proto, name))
        outputs = [self._output(t.name) for t in self.graph.output]
        tensors = inputs + list(self.constants) + [t for n in self.nodes for t in n.outputs]
        return FloatGraph(
            name=self.graph.name or "onnx",
            nodes=self.nodes,
            inputs=inputs,
            outputs=outputs,
            constants=self.constants,
            shapes={t: self.shape(t) for t in tensors},
            opset=self.opset,
        )

    def _add_input(self, info: onnx.ValueInfoProto) -> str:
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type != onnx.TensorProto.FLOAT:
            found = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
            raise ValidationError(f"graph input {info.name!r} must be float32, found {found}")
        if not tensor_type.HasField("shape"):
            raise ValidationError(f"graph input {info.name!r} has no shape")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if dims and dims[0] is not None and self.batch_dynamic:
            self.fixed_batches.add(dims[0])
        if None in dims[1:]:
            raise ValidationError(
                f"graph input {info.name!r} has shape {dims}: only dim 0 (the batch) may be symbolic"
            )
        rng = np.random.default_rng(len(self.values))
        worlds = []
        for batch in WORLD_BATCH_SIZES:
            shape = list(dims)
            if shape and (shape[0] is None or self.batch_dynamic):
                shape[0] = batch
            worlds.append(rng.standard_normal(shape).astype(np.float32))
        self.values[info.name] = tuple(worlds)
        return info.name

    def _import_node(self, node: _Node) -> None:
        if node.domain not in _DEFAULT_DOMAINS:
            raise node.fail(f"op '{node.domain}.{node.op}' is not supported")
        self._check_outputs(node)
        if node.op in ("Identity", "Dropout"):
            self.alias[node.outputs[0]] = node.inputs[0]
            return
        all_static = all(t in self.static for t in node.inputs if t)
        if node.op in _FOLD and (all_static or node.op == "Shape"):
            fold = _FOLD[node.op]
            args = [self.values[t] if t else (None, None) for t in node.inputs]
            value = self._in_worlds(node, node.op, lambda w: fold(node, *(a[w] for a in args)))
            self.values[node.outputs[0]] = value
            self.static.add(node.outputs[0])
            return
        if node.op not in _CONVERT:
            raise node.fail(f"op {node.op!r} is not supported")
        for i, canonical in enumerate(_CONVERT[node.op](node)):
            if all_static:
                self.static.add(canonical.outputs[0])
            else:
                if i > 0:
                    canonical.name = _unique(f"{node.name}/{canonical.op}", self.node_names)
                for t in canonical.inputs:
                    if t in self.static:
                        self._add_constant(node, t)
                self.nodes.append(canonical)
            args = [self.values[t] for t in canonical.inputs]
            self.values[canonical.outputs[0]] = self._in_worlds(
                node, canonical.op, lambda w: run_node(canonical, [a[w] for a in args])[0]
            )

    def _check_outputs(self, node: _Node) -> None:
        for out in node.outputs[1:]:
            if out in self.consumed:
                raise node.fail(f"{node.op} output {out!r} (beyond the first) is used; only the first is supported")

    def _in_worlds(self, node: _Node, op: str, fn: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        values = []
        for w, batch in enumerate(WORLD_BATCH_SIZES):
            try:
                values.append(fn(w))
            except (ValueError, IndexError, TypeError) as exc:
                hint = ""
                if w > 0 and self.batch_dynamic:
                    hint = "; does the model hard-code its batch size? (import with batch_dynamic=False)"
                raise node.invalid(f"fails at batch size {batch} ({op}: {exc}){hint}") from exc
        return values[0], values[1]

    def _add_constant(self, node: _Node, tensor: str) -> None:
        first, second = self.values[tensor]
        if not _same(first, second):
            raise node.fail(f"input {tensor!r} is computed from the batch size and cannot be a constant")
        self.constants[tensor] = first.astype(np.float32) if first.dtype.kind == "f" else first

    def _output(self, name: str) -> str:
        target = self.resolve(name)
        if target in self.static:
            raise UnsupportedOpError(f"graph output {name!r} is a constant; intsim graphs compute their outputs")
        if target == name:
            return name
        produced = any(target in n.outputs for n in self.nodes)
        if not produced or any(t.name == target for t in self.graph.output):
            raise UnsupportedOpError(
                f"graph output {name!r} is {target!r} through Identity/Dropout, which is itself a graph input "
                "or output; the two names cannot both be kept"
            )
        for node in self.nodes:
            node.inputs = [name if t == target else t for t in node.inputs]
            node.outputs = [name if t == target else t for t in node.outputs]
        self.values[name] = self.values.pop(target)
        return name


# --------------------------------------------------------------------------
# Folding: ops evaluated on static values, once per world, with ONNX semantics
# and the input's dtype.  Absent optional inputs arrive as None.
# --------------------------------------------------------------------------

_FOLD: dict[str, Callable[..., np.ndarray]] = {}


def _fold(name: str):
    def wrap(fn):
        _FOLD[name] = fn
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
_fold("Cast")(lambda node, x: x.astype(helper.tensor_dtype_to_np_dtype(node.attr("to"))))
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

_CONVERT: dict[str, Callable[[_Node], list[FloatNode]]] = {}


def _convert(*names: str):
    def wrap(fn):
        for name in names:
            _CONVERT[name] = fn
        return fn

    return wrap


def _axes(node: _Node, axes, rank: int) -> list[int]:
    axes = [int(a) for a in axes]
    if any(not -rank <= a < rank for a in axes) or len(set(a % rank for a in axes)) != len(axes):
        raise node.invalid(f"axes {axes} must be distinct and in [{-rank}, {rank})")
    return sorted(a % rank for a in axes)


def _axes_operand(node: _Node, since: int) -> list[int] | None:
    """Axes given as attribute before opset ``since`` and as input 1 from it on (None when absent)."""
    if node.opset < since:
        return node.attr("axes")
    return node.const(1, "axes").tolist() if node.has(1) else None


def _explicit_pads(node: _Node, kernel, strides, dilations) -> list[int]:
    """``pads`` [top, left, bottom, right], from ``auto_pad`` where the model uses it."""
    auto_pad = node.choice("auto_pad", "NOTSET", ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"))
    if auto_pad == "NOTSET":
        return node.ints("pads", 4, 0)
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for size, k, s, d in zip(node.shape(0)[2:], kernel, strides, dilations):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        begin.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
        end.append(total - begin[-1])
    return begin + end


def _ceil_overhang(size: int, k: int, stride: int, dilation: int, pad_begin: int, pad_end: int) -> int:
    """Extra end padding that makes floor-mode windows equal ceil-mode ones (onnxruntime's rule:
    a last window starting beyond the input and the begin padding is dropped)."""
    span = size + pad_begin + pad_end - (k - 1) * dilation - 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return max(0, (out - 1) * stride - span)


@_convert("Conv")
def _conv(node):
    weight = node.const(1, "weight")
    if weight.ndim != 4:
        raise node.fail(f"only 2-D convolutions are supported; weight has shape {weight.shape}")
    if node.has(2):
        node.const(2, "bias")
    strides, dilations = node.ints("strides", 2, 1), node.ints("dilations", 2, 1)
    attrs = {
        "strides": strides,
        "dilations": dilations,
        "pads": _explicit_pads(node, weight.shape[2:], strides, dilations),
        "group": int(node.attr("group", 1)),
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
    if kernel is None or len(kernel) != 2:
        raise node.fail(f"only 2-D pooling is supported; kernel_shape is {kernel}")
    strides, dilations = node.ints("strides", 2, 1), node.ints("dilations", 2, 1)
    pads = _explicit_pads(node, kernel, strides, dilations)
    overhang = [0, 0]
    if node.attr("ceil_mode", 0):
        sizes = node.shape(0)[2:]
        overhang = [_ceil_overhang(sizes[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + 2]) for i in (0, 1)]
    return list(kernel), strides, dilations, pads, overhang


@_convert("MaxPool")
def _max_pool(node):
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


@_convert("ReduceMean")
def _reduce_mean(node):
    rank = node.rank(0)
    axes = _axes_operand(node, since=18)
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            raise node.fail("ReduceMean with noop_with_empty_axes=1 and no axes is not supported")
        axes = range(rank)
    attrs = {"axes": _axes(node, axes, rank), "keepdims": int(node.attr("keepdims", 1))}
    return [node.make("ReduceMean", node.inputs[:1], attrs)]


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


def _stands_for_batch(node: _Node, axis: int, first: int, second: int) -> bool:
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
    node.choice("mode", "constant", ("constant",))
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
    attrs = {"pads": pads, "mode": "constant", "value": node.scalar(2, "constant_value", 0.0)}
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
