"""What the ONNX importer knows of the ops of sequence models (BERT-style encoders): embedding and index
gathers (Gather, GatherElements), layer normalization, the functions GELU is written with (Erf, Pow, Sqrt, Tanh), the attention-mask
logic (Cast, Equal, Not, And, Or, Where, Expand, ReduceSum) and ``If`` with a constant condition.  Erf,
Pow, Sqrt and Expand of an activation convert in :mod:`intsim.importers.onnx_vision`, ReduceSum in
:mod:`intsim.importers.onnx_ops`; here they only fold.

Each op registers into :data:`intsim.importers.onnx_ops.FOLD` (evaluated when every input is static: shape
and mask subgraphs that do not depend on the data fold away) and :data:`~intsim.importers.onnx_ops.CONVERT`
(the canonical float node when an input is an activation or an integer graph input).
"""

from __future__ import annotations

import numpy as np

from intsim import onnxproto
from intsim.floatgraph.sequence_ops import gather_elements
from intsim.importers.onnx_ops import MULTI_OUTPUT, OnnxNode, _axes, _convert, _fold, unique_name

_fold("Not")(lambda node, x: np.logical_not(x))
_fold("And")(lambda node, a, b: np.logical_and(a, b))
_fold("Or")(lambda node, a, b: np.logical_or(a, b))
_fold("Less")(lambda node, a, b: np.less(a, b))
_fold("Greater")(lambda node, a, b: np.greater(a, b))
_fold("Neg")(lambda node, x: np.negative(x))
_fold("Size")(lambda node, x: np.array(np.size(x), dtype=np.int64))
_fold("Expand")(lambda node, x, shape: x * np.ones([int(d) for d in shape], dtype=x.dtype))
_fold("Sqrt")(lambda node, x: np.sqrt(x))
_fold("Pow")(lambda node, x, y: np.power(x, y).astype(x.dtype))
_fold("GatherElements")(lambda node, x, indices: gather_elements(x, indices, node.attr("axis", 0)))


@_fold("ReduceSum")
def _fold_reduce_sum(node, x, axes=None):
    if node.opset < 13:
        axes = node.attr("axes")
    if axes is None or np.size(axes) == 0:
        if node.attr("noop_with_empty_axes", 0):
            return x
        axes = range(x.ndim)
    return np.sum(x, axis=tuple(int(a) for a in np.ravel(axes)), keepdims=bool(node.attr("keepdims", 1)))


@_convert("Gather")
def _gather(node: OnnxNode):
    """An embedding lookup (constant table, computed indices: only axis 0) or an index gather
    (computed data, constant or computed integer indices)."""
    rank = node.rank(0)
    axis = _axes(node, [node.attr("axis", 0)], rank)[0]
    if node.is_const(0):
        if axis != 0:
            raise node.fail(f"Gather from a constant table along axis {axis} is not supported; only axis 0")
        return [node.make("Gather", node.inputs[:2], {"axis": 0})]
    if not node.is_const(1):  # indices computed from an integer input: checked when lowered and when run
        return [node.make("Gather", node.inputs[:2], {"axis": axis})]
    indices = node.const(1, "indices")
    if indices.dtype.kind not in "iu":
        raise node.invalid(f"indices must be integers, found {indices.dtype}")
    size = node.shape(0)[axis]
    if size is not None and (indices.min(initial=0) < -size or indices.max(initial=0) >= size):
        raise node.invalid(f"indices must lie in [{-size}, {size}) for axis {axis}, found "
                           f"[{indices.min()}, {indices.max()}]")
    return [node.make("Gather", node.inputs[:2], {"axis": axis})]


@_convert("GatherElements")
def _gather_elements(node: OnnxNode):
    """Codes picked along an axis by constant indices (a computed index tensor is not lowered)."""
    rank = node.rank(0)
    axis = _axes(node, [node.attr("axis", 0)], rank)[0]
    indices = node.const(1, "indices")
    if indices.dtype.kind not in "iu" or indices.ndim != rank:
        raise node.invalid(f"indices must be integers of the data's rank {rank}, found {indices.dtype} {indices.shape}")
    size = node.shape(0)[axis]
    if size is None or indices.min(initial=0) < -size or indices.max(initial=0) >= size:
        raise node.invalid(f"indices must lie in [-n, n) of axis {axis} of known size n ({size}), found "
                           f"[{indices.min(initial=0)}, {indices.max(initial=0)}]")
    return [node.make("GatherElements", node.inputs[:2], {"axis": axis})]


@_convert("Not", "Neg")
def _unary(node: OnnxNode):
    return [node.make(node.op, node.inputs[:1])]


@_convert("Equal", "And", "Or", "Less", "Greater", "Where")
def _logic(node: OnnxNode):
    return [node.make(node.op, node.inputs)]


@_convert("Cast")
def _cast(node: OnnxNode):
    """A Cast, or nothing where the input already has the target type (torch exports write float32 to
    float32 Casts): the output is then the input, as for Identity."""
    to = np.dtype(onnxproto.np_dtype(node.attr("to"))).name
    if all(world.dtype == to for world in node.worlds(0)):
        node.importer.alias[node.outputs[0]] = node.inputs[0]
        return []
    return [node.make("Cast", node.inputs[:1], {"to": to})]


@_convert("LayerNormalization")
def _layer_norm(node: OnnxNode):
    rank = node.rank(0)
    axis = _axes(node, [node.attr("axis", -1)], rank)[0]
    if axis != rank - 1:
        raise node.fail(f"LayerNormalization over axes {list(range(axis, rank))} is not supported; only the last")
    width = node.shape(0)[-1]
    scale = node.const(1, "scale")
    bias = node.const(2, "B") if node.has(2) else np.zeros(width, np.float32)
    if scale.size not in (1, width) or bias.size not in (1, width):
        raise node.invalid(f"scale {scale.shape} and bias {bias.shape} must have one value per channel ({width})")
    inputs = [node.inputs[0], node.constant(np.broadcast_to(scale.reshape(-1), (width,)).astype(np.float32), "scale"),
              node.constant(np.broadcast_to(bias.reshape(-1), (width,)).astype(np.float32), "bias")]
    return [node.make("LayerNormalization", inputs, {"epsilon": float(node.attr("epsilon", 1e-5))})]


MULTI_OUTPUT.add("If")


@_convert("If")
def _if(node: OnnxNode):
    """An ``If`` whose condition is static: the taken branch's nodes are imported in its place."""
    condition = node.const(0, "cond")
    if condition.size != 1:
        raise node.invalid(f"condition must be a single value, found shape {condition.shape}")
    branch = node.attr("then_branch" if bool(condition.reshape(())) else "else_branch")
    importer = node.importer
    for init in branch.initializer:
        importer.add_initializer(init)
    for index, proto in enumerate(branch.node):
        name = unique_name(proto.name or f"{node.name}/{proto.op_type}_{index}", importer.node_names)
        importer.import_node(OnnxNode(importer, proto, name))
    if len(branch.output) != len(node.outputs):
        raise node.invalid(f"branch {branch.name!r} has {len(branch.output)} outputs, the node {len(node.outputs)}")
    for out, produced in zip(node.outputs, branch.output):
        importer.alias[out] = importer.resolve(produced.name)
    return []

