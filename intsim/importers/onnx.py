"""Import an ONNX model (default domain, opsets 11 to 21) as a canonical :class:`FloatGraph`.

What each op becomes, in full: ``docs/converting.md``, *What the ONNX importer accepts and how it canonicalises*.
"""

from __future__ import annotations

import heapq
import math
import os
from collections.abc import Callable

import numpy as np
from google.protobuf.message import DecodeError

from intsim import onnxproto
from intsim.errors import IntsimError, ModelFormatError, UnsupportedOpError, ValidationError
from intsim.floatgraph.execute import run_node
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.importers.onnx_ops import CONVERT, FOLD, MULTI_OUTPUT, OnnxNode, read_initializer, same_values, unique_name
from intsim.importers.onnx_vision import upgrade_opset
from intsim.floatgraph import vision_ops  # noqa: F401  (registers the float ops of onnx_vision's forms)
from intsim.importers import onnx_sequence  # noqa: F401  (registers the ops of sequence models)
from intsim.importers import onnx_recurrent  # noqa: F401  (registers LSTM and GRU)
from intsim.importers import onnx_speech  # noqa: F401  (registers 1-D convolutions)
from intsim.floatgraph import recurrent_ops  # noqa: F401  (the float LSTM and GRU)


OPSETS = range(11, 22)
# The importer runs every node on placeholder inputs: each tensor it computes may hold at most this many
# elements, so a declared shape cannot make it allocate more than a few hundred MiB.
MAX_PLACEHOLDER_ELEMENTS = 2**24
WORLD_BATCH_SIZES = (1, 2)
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Integer graph inputs (token ids, attention masks): they reach the integer graph unquantized.
INTEGER_INPUT_TYPES = {onnxproto.TensorProto.INT64: np.int64, onnxproto.TensorProto.INT32: np.int32}


def import_onnx(model, *, batch_dynamic: bool = True, input_shapes=None) -> FloatGraph:
    """Import an ONNX model as a canonical float graph (forms in the module docstring).

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        The model, default-domain opset 11 to 21 (earlier opsets are upgraded to 11 by
        :func:`~intsim.importers.onnx_vision.upgrade_opset`), with float32 inputs (or int64 /
        int32 ones: token ids and masks, listed in ``integer_inputs``) whose
        dimensions other than dim 0 are static.
    batch_dynamic : bool
        Treat dim 0 of every graph input as a batch of any size, even where the
        file fixes it (torch exports without ``dynamic_axes`` fix it to 1).
        With ``False`` only a symbolic dim 0 is a batch.
    input_shapes : mapping of str to sequence of int or None, optional
        Fix the shapes of graph inputs by name, e.g. ``{"x": (1, 3, 48, 192)}``
        for a file declaring ``[-1, 3, None, None]``: each entry replaces the
        file's shape, its rank and every dimension the file fixes must agree,
        and only dim 0 may stay ``None``.  Dim 0 is still a batch of any size
        (see ``batch_dynamic``).

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
        An input neither float32 nor int64 / int32, a symbolic dimension other than the batch and not
        fixed by ``input_shapes``, an ``input_shapes`` entry naming no input or
        disagreeing with the file, an invalid attribute, or a node that fails to
        run on the placeholder inputs.
    """
    return _Importer(upgrade_opset(read_onnx(model)), batch_dynamic, input_shapes or {}).run()


def _fixed_dims(name: str, dims: list, given) -> list:
    """The file's ``dims`` of input ``name`` replaced by the user's ``given`` shape, checked against them."""
    try:
        wanted = [None if d is None else int(d) for d in given]
    except (TypeError, ValueError):
        raise ValidationError(f"input_shapes[{name!r}] must be a sequence of ints or None, found {given!r}") from None
    if len(wanted) != len(dims):
        raise ValidationError(f"input_shapes[{name!r}] = {tuple(wanted)} has rank {len(wanted)}, but graph input "
                              f"{name!r} has shape {dims} (rank {len(dims)})")
    for axis, (want, have) in enumerate(zip(wanted, dims)):
        if want is not None and want < 1:
            raise ValidationError(f"input_shapes[{name!r}] = {tuple(wanted)}: dim {axis} must be >= 1, found {want}")
        if axis and want is not None and have is not None and want != have:
            raise ValidationError(f"input_shapes[{name!r}] = {tuple(wanted)}: dim {axis} is fixed to {have} "
                                  f"by the file (shape {dims}), found {want}")
    return wanted


def read_onnx(model) -> onnxproto.ModelProto:
    if isinstance(model, onnxproto.ModelProto):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise ValidationError(f"model must be a path or an onnx.ModelProto, found {type(model).__name__}")
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path!r}: no such file")
    try:
        return onnxproto.load(path)  # external data is refused by read_initializer
    except DecodeError as exc:
        raise ModelFormatError(f"{path!r}: not an ONNX model ({exc})") from exc


def _default_opset(model: onnxproto.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise ModelFormatError(f"model {model.graph.name!r} imports no default-domain (ai.onnx) opset")
    if versions[0] not in OPSETS:
        raise UnsupportedOpError(
            f"model {model.graph.name!r}: opset {versions[0]} is not supported; intsim imports opsets "
            f"{OPSETS.start} to {OPSETS.stop - 1}"
        )
    return versions[0]


# The ops of a model onnxruntime's quantize_dynamic wrote: its activations are quantized at run time,
# from each tensor's own range, which no integer datapath with fixed scales reproduces.
DYNAMIC_QUANTIZATION_OPS = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM",
                            "DynamicQuantizeMatMul")


def _refuse_dynamic_quantization(model: onnxproto.ModelProto) -> None:
    found = sorted({n.op_type for n in model.graph.node if n.op_type in DYNAMIC_QUANTIZATION_OPS})
    if found:
        raise UnsupportedOpError(
            f"model {model.graph.name!r} is dynamically quantized (onnxruntime quantize_dynamic: {', '.join(found)}); "
            "intsim converts float models: give it the float model this one was made from")


def _sorted_nodes(graph: onnxproto.GraphProto, known: set[str]) -> list[onnxproto.NodeProto]:
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


def _nested_nodes(graph: onnxproto.GraphProto) -> tuple[list[onnxproto.NodeProto], set[str]]:
    """Every node of ``graph`` and of the subgraphs of its ``If`` nodes, and the names those subgraphs output."""
    nodes, outputs = [], set()
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnxproto.AttributeProto.GRAPH:
                inner, inner_outputs = _nested_nodes(attr.g)
                nodes += inner
                outputs |= inner_outputs | {t.name for t in attr.g.output}
    return nodes, outputs


class _Importer:
    def __init__(self, model: onnxproto.ModelProto, batch_dynamic: bool, input_shapes):
        self.graph = model.graph
        self.input_shapes = dict(input_shapes)
        unknown = sorted(set(self.input_shapes) - {t.name for t in self.graph.input})
        if unknown:
            raise ValidationError(f"input_shapes names {', '.join(map(repr, unknown))}, but the graph's inputs are "
                                  f"{', '.join(repr(t.name) for t in self.graph.input)}")
        self.opset = _default_opset(model)
        _refuse_dynamic_quantization(model)
        self.batch_dynamic = batch_dynamic
        self.values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.static: set[str] = set()
        self.alias: dict[str, str] = {}
        self.nodes: list[FloatNode] = []
        self.constants: dict[str, np.ndarray] = {}
        self.fixed_batches: set[int] = set()
        self.integer_inputs: list[str] = []
        self.node_names: set[str] = set()
        nodes, branch_outputs = _nested_nodes(self.graph)
        self.tensor_names = {t for n in nodes for t in (*n.input, *n.output)}
        self.tensor_names |= {t.name for t in self.graph.input} | {t.name for t in self.graph.initializer}
        self.consumed = {t for n in nodes for t in n.input} | {t.name for t in self.graph.output} | branch_outputs

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
            self.add_initializer(init)
        inputs = [self._add_input(t) for t in self.graph.input if t.name not in self.static]
        known = set(self.values)
        for index, proto in enumerate(_sorted_nodes(self.graph, known)):
            name = unique_name(proto.name or f"{proto.op_type}_{index}", self.node_names)
            try:
                self.import_node(OnnxNode(self, proto, name))
            except IntsimError:
                raise
            except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError, OverflowError,
                    AttributeError) as exc:
                raise ValidationError(f"node {name!r} ({proto.op_type}): malformed node "
                                      f"({type(exc).__name__}: {exc})") from None
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
            integer_inputs=self.integer_inputs,
        )

    def add_initializer(self, init: onnxproto.TensorProto) -> None:
        value = read_initializer(init)
        self.values[init.name] = (value, value)
        self.static.add(init.name)

    def _add_input(self, info: onnxproto.ValueInfoProto) -> str:
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type not in (onnxproto.TensorProto.FLOAT, *INTEGER_INPUT_TYPES):
            found = onnxproto.TensorProto.DataType.Name(tensor_type.elem_type)
            raise ValidationError(f"graph input {info.name!r} must be float32, or int64 / int32 (token ids, masks), "
                                  f"found {found}")
        if not tensor_type.HasField("shape"):
            raise ValidationError(f"graph input {info.name!r} has no shape")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if info.name in self.input_shapes:
            dims = _fixed_dims(info.name, dims, self.input_shapes[info.name])
        if dims and dims[0] is not None and self.batch_dynamic:
            self.fixed_batches.add(dims[0])
        if None in dims[1:]:
            raise ValidationError(
                f"graph input {info.name!r} has shape {dims}: only dim 0 (the batch) may be symbolic; fix the "
                f"others with input_shapes={{{info.name!r}: (1, ...)}} (CLI: --input-shape {info.name}:1,...)"
            )
        if any(d is not None and d < 1 for d in dims):
            raise ValidationError(f"graph input {info.name!r} has shape {dims}: sizes must be >= 1")
        placeholder = math.prod(d for d in dims[1:]) * max(WORLD_BATCH_SIZES)
        if placeholder > MAX_PLACEHOLDER_ELEMENTS:
            raise ValidationError(f"graph input {info.name!r} has shape {dims}: {placeholder} elements at batch size "
                                  f"{max(WORLD_BATCH_SIZES)}, over the importer's limit of {MAX_PLACEHOLDER_ELEMENTS}")
        rng = np.random.default_rng(len(self.values))
        worlds = []
        for batch in WORLD_BATCH_SIZES:
            shape = list(dims)
            if shape and (shape[0] is None or self.batch_dynamic):
                shape[0] = batch
            if tensor_type.elem_type in INTEGER_INPUT_TYPES:  # index 0 is valid for any table
                worlds.append(np.zeros(shape, INTEGER_INPUT_TYPES[tensor_type.elem_type]))
            else:
                worlds.append(rng.standard_normal(shape).astype(np.float32))
        if tensor_type.elem_type in INTEGER_INPUT_TYPES:
            self.integer_inputs.append(info.name)
        self.values[info.name] = tuple(worlds)
        return info.name

    def import_node(self, node: OnnxNode) -> None:
        if node.domain not in _DEFAULT_DOMAINS:
            raise node.fail(f"op '{node.domain}.{node.op}' is not supported")
        self._check_outputs(node)
        if node.op in ("Identity", "Dropout"):
            self.alias[node.outputs[0]] = node.inputs[0]
            return
        all_static = all(t in self.static for t in node.inputs if t)
        if node.op in FOLD and (all_static or node.op == "Shape"):
            fold = FOLD[node.op]
            args = [self.values[t] if t else (None, None) for t in node.inputs]
            value = self._in_worlds(node, node.op, lambda w: fold(node, *(a[w] for a in args)))
            self.values[node.outputs[0]] = value
            self.static.add(node.outputs[0])
            return
        if node.op not in CONVERT:
            raise node.fail(f"op {node.op!r} is not supported")
        for i, canonical in enumerate(CONVERT[node.op](node)):
            if all_static:
                self.static.add(canonical.outputs[0])
            else:
                if i > 0:
                    canonical.name = unique_name(f"{node.name}/{canonical.op}", self.node_names)
                for t in canonical.inputs:
                    if t in self.static:
                        self._add_constant(node, t)
                self.nodes.append(canonical)
            args = [self.values[t] for t in canonical.inputs]
            self.values[canonical.outputs[0]] = self._in_worlds(
                node, canonical.op, lambda w: run_node(canonical, [a[w] for a in args])[0]
            )

    def _check_outputs(self, node: OnnxNode) -> None:
        for out in [] if node.op in MULTI_OUTPUT else node.outputs[1:]:
            if out in self.consumed:
                raise node.fail(f"{node.op} output {out!r} (beyond the first) is used; only the first is supported")

    def _in_worlds(self, node: OnnxNode, op: str, fn: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        values = []
        for w, batch in enumerate(WORLD_BATCH_SIZES):
            try:
                values.append(fn(w))
            except MemoryError:
                raise node.invalid(f"needs more memory than is available at batch size {batch} ({op})") from None
            except (ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError, KeyError) as exc:
                hint = ""
                if w > 0 and self.batch_dynamic:
                    hint = "; does the model hard-code its batch size? (import with batch_dynamic=False)"
                raise node.invalid(f"fails at batch size {batch} ({op}: {exc}){hint}") from exc
            size = getattr(values[-1], "size", 1)
            if size > MAX_PLACEHOLDER_ELEMENTS:
                raise node.invalid(f"produces {size} elements at batch size {batch} ({op}), over the importer's "
                                   f"limit of {MAX_PLACEHOLDER_ELEMENTS}")
        return values[0], values[1]

    def _add_constant(self, node: OnnxNode, tensor: str) -> None:
        first, second = self.values[tensor]
        if not same_values(first, second):
            raise node.fail(f"input {tensor!r} is computed from the batch size and cannot be a constant")
        self.constants[tensor] = first.astype(np.float32) if first.dtype.kind == "f" else first

    def _output(self, name: str) -> str:
        target = self.resolve(name)
        if target not in self.values:
            raise ModelFormatError(f"graph output {name!r} is never produced (the graph has {len(self.graph.node)} "
                                   f"node(s))")
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
