"""Float graph passes that recognise what exporters write out op by op in sequence models, so that each
becomes one integer op (white paper §2.3: fewer quantization points, fewer roundings):

- :func:`fuse_batched_linear`: ``MatMul(x, W) [+ b]`` with a 3-D (or higher) ``x`` and a constant ``W``
  becomes ``Reshape -> Gemm -> Reshape`` (the bias joins the Gemm);
- :func:`fold_scalar_into_linear`: a ``Div`` or ``Mul`` by a positive scalar after a ``MatMul`` of two
  activations moves into the weights and bias of the Gemm one operand comes from (attention's
  ``1 / sqrt(d)``);
- :func:`fuse_gelu`: ``0.5 x (1 + erf(x / sqrt 2))`` and ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``
  in any order of their multiplications become ``Gelu``;
- :func:`fuse_layer_norm`: ``ReduceMean - Sub - Pow - ReduceMean - Add - Sqrt - Div [- Mul] [- Add]`` over
  the last axis becomes ``LayerNormalization``;
- :func:`fuse_attention_mask`: ``Softmax(x + f(mask))``, where ``f`` turns an integer input that is 1 where
  a position is kept and 0 where it is masked into 0 and a large negative number, becomes
  ``MaskedSoftmax(x, mask)``;
- :func:`fuse_constant_mask`: ``Softmax(Where(keep, x, -inf))`` with a constant condition (a causal
  mask) becomes ``MaskedSoftmax(x, keep)``.

Each pass returns a new graph (:func:`~intsim.floatgraph.passes.copy_graph`); :func:`recognise` runs
them all.  Nothing here changes what the graph computes beyond float32 rounding.
"""

from __future__ import annotations

import math

import numpy as np

from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.execute import run_float
from intsim.floatgraph.passes import copy_graph, default_passes, fresh_name, remove_dead_nodes, run_passes
from intsim.floatgraph.vision_patterns import square_and_reciprocal

LAYOUT_OPS = ("Reshape", "Transpose")
# f(0) must be at most this for a position to count as masked (BERT exports write -10000 or finfo.min).
MASKED_BIAS = -1.0e4
# The elementwise and layout ops an additive attention mask is computed with from the integer mask.
MASK_OPS = ("Unsqueeze", "Reshape", "Squeeze", "Expand", "Tile", "Cast", "Sub", "Add", "Mul", "Div", "Neg", "Not",
            "Equal", "Where")


class _View:
    """Producer and consumer look-ups of a graph being rewritten."""

    def __init__(self, graph: FloatGraph):
        self.graph = graph
        self.producer = {t: n for n in graph.nodes for t in n.outputs}
        self.consumers: dict[str, list[FloatNode]] = {}
        for node in graph.nodes:
            for t in node.inputs:
                self.consumers.setdefault(t, []).append(node)

    def only_user(self, tensor: str, op) -> FloatNode | None:
        """The one consumer of ``tensor`` when it has exactly one, of op type ``op`` (str or tuple), and
        ``tensor`` is not a graph output."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.graph.outputs:
            return None
        return users[0] if users[0].op in ((op,) if isinstance(op, str) else op) else None

    def made_by(self, tensor: str, op: str) -> FloatNode | None:
        node = self.producer.get(tensor)
        return node if node is not None and node.op == op else None

    def scalar(self, tensor: str) -> float | None:
        value = self.graph.constants.get(tensor)
        if value is None or value.size != 1 or value.dtype.kind != "f":
            return None
        return float(value.reshape(()))

    def other(self, node: FloatNode, tensor: str) -> str | None:
        """The other input of a binary node that has ``tensor`` as one input."""
        if len(node.inputs) != 2 or tensor not in node.inputs:
            return None
        return node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]

    def scalar_partner(self, node: FloatNode, tensor: str, value: float, rel: float = 1e-4) -> bool:
        """Whether ``node``'s other input is the scalar constant ``value`` (to a relative ``rel``)."""
        other = self.other(node, tensor)
        found = None if other is None else self.scalar(other)
        return found is not None and math.isclose(found, value, rel_tol=rel)


def _replace(graph: FloatGraph, remove: list[FloatNode], new: FloatNode) -> None:
    """Put ``new`` where the last of ``remove`` was and drop them all (in place)."""
    index = max(graph.nodes.index(n) for n in remove)
    graph.nodes[index] = new
    gone = {id(n) for n in remove}
    graph.nodes = [n for n in graph.nodes if id(n) not in gone]


def _add_constant(graph: FloatGraph, base: str, value: np.ndarray) -> str:
    name = fresh_name(graph, base)
    graph.constants[name] = value
    graph.shapes[name] = value.shape
    return name


# --------------------------------------------------------------------------
# Linear layers on sequences.
# --------------------------------------------------------------------------


def fuse_batched_linear(graph: FloatGraph) -> FloatGraph:
    """``MatMul(x, W)`` (``x`` of rank >= 3 with at most one free dimension, ``W`` a 2-D constant), with
    the ``Add`` of a constant bias per output column when it follows, becomes ``Reshape(x, [-1, in]) ->
    Gemm(W.T, b) -> Reshape(y, [..., out])``.  Returns a new graph."""
    graph = copy_graph(graph)
    view = _View(graph)
    for node in [n for n in graph.nodes if n.op == "MatMul"]:
        x, w = node.inputs
        shape = graph.shapes[x]
        weight = graph.constants.get(w)
        if weight is None or weight.ndim != 2 or len(shape) < 3 or x in graph.constants:
            continue
        if sum(d is None for d in shape) > 1:
            continue
        remove, out = [node], node.outputs[0]
        bias = None
        add = view.only_user(out, "Add")
        if add is not None:
            b = graph.constants.get(view.other(add, out))
            per_column = b is not None and b.shape[-1:] == (weight.shape[1],) and b.size == weight.shape[1]
            if per_column and b.dtype.kind == "f":
                bias, remove, out = b.reshape(-1), [node, add], add.outputs[0]
        flat = fresh_name(graph, f"{node.name}/rows")
        product = fresh_name(graph, f"{node.name}/gemm")
        graph.shapes[flat] = (None, weight.shape[0])
        graph.shapes[product] = (None, weight.shape[1])
        inputs = [flat, _add_constant(graph, f"{node.name}/weight", np.ascontiguousarray(weight.T))]
        if bias is not None:
            inputs.append(_add_constant(graph, f"{node.name}/bias", bias.astype(np.float32)))
        target = [-1 if d is None else d for d in graph.shapes[out][:-1]] + [weight.shape[1]]
        nodes = [FloatNode("Reshape", f"{node.name}/rows", [x], [flat], {"shape": [-1, weight.shape[0]]}),
                 FloatNode("Gemm", node.name, inputs, [product]),
                 FloatNode("Reshape", f"{node.name}/unrows", [product], [out], {"shape": target})]
        index = graph.nodes.index(remove[-1])
        graph.nodes[index:index + 1] = nodes
        for n in remove[:-1]:
            graph.nodes.remove(n)
    return graph


def _linear_behind(view: _View, tensor: str) -> FloatNode | None:
    """The Gemm ``tensor`` is computed from through layout ops only, each the only reader of its input."""
    while True:
        node = view.producer.get(tensor)
        if node is None or len(view.consumers.get(node.outputs[0], [])) != 1:
            return None
        if node.op == "Gemm":
            return node
        if node.op not in LAYOUT_OPS:
            return None
        tensor = node.inputs[0]


def fold_scalar_into_linear(graph: FloatGraph) -> FloatGraph:
    """``MatMul(a, b) / c`` or ``MatMul(a, b) * c`` with a positive scalar constant ``c``: the factor moves
    into the weights and bias of the Gemm behind ``a`` (or ``b``), through Reshape / Transpose only.
    Returns a new graph."""
    graph = copy_graph(graph)
    view = _View(graph)
    for node in [n for n in graph.nodes if n.op in ("Div", "Mul")]:
        source = view.made_by(node.inputs[0], "MatMul")
        value = view.scalar(node.inputs[1])
        if source is None or value is None or value <= 0 or len(view.consumers[node.inputs[0]]) != 1:
            continue
        factor = 1.0 / value if node.op == "Div" else value
        linear = _linear_behind(view, source.inputs[0]) or _linear_behind(view, source.inputs[1])
        if linear is None:
            continue
        scaled = [_add_constant(graph, f"{linear.name}/{what}_scaled",
                                (graph.constants[t].astype(np.float64) * factor).astype(np.float32))
                  for what, t in zip(("weight", "bias"), linear.inputs[1:])]
        linear.inputs = [linear.inputs[0], *scaled]
        source.outputs = list(node.outputs)
        graph.nodes.remove(node)
    return remove_dead_nodes(graph)


# --------------------------------------------------------------------------
# GELU.
# --------------------------------------------------------------------------


def _erf_argument(view: _View, node: FloatNode) -> str | None:
    """``x`` when ``node`` (an Erf) computes ``erf(x / sqrt 2)``."""
    inner = view.producer.get(node.inputs[0])
    if inner is None or len(inner.inputs) != 2:
        return None
    x = inner.inputs[0]
    if inner.op == "Div" and view.scalar_partner(inner, x, math.sqrt(2.0)):
        return x
    if inner.op == "Mul":
        for x in inner.inputs:
            if view.scalar_partner(inner, x, 1.0 / math.sqrt(2.0)):
                return x
    return None


def _cubic_of(view: _View, tensor: str) -> str | None:
    """``x`` when ``tensor`` is ``x^3`` (Pow 3, or x*x*x)."""
    node = view.producer.get(tensor)
    if node is None:
        return None
    if node.op == "Pow" and node.attrs.get("exponent") == 3.0:
        return node.inputs[0]
    if node.op == "Mul":
        a, b = node.inputs
        for square, x in ((a, b), (b, a)):
            sq = view.made_by(square, "Mul")
            if sq is not None and sq.inputs == [x, x]:
                return x
    return None


def _tanh_argument(view: _View, node: FloatNode) -> str | None:
    """``x`` when ``node`` (a Tanh) computes ``tanh(sqrt(2/pi) (x + 0.044715 x^3))``."""
    outer = view.made_by(node.inputs[0], "Mul")
    if outer is None:
        return None
    total = next((t for t in outer.inputs if view.scalar_partner(outer, t, math.sqrt(2.0 / math.pi))), None)
    add = view.made_by(total, "Add") if total else None
    if add is None:
        return None
    for x, cubic in (add.inputs, add.inputs[::-1]):
        scaled = view.made_by(cubic, "Mul")
        if scaled is None:
            continue
        for c in scaled.inputs:
            if view.scalar_partner(scaled, c, 0.044715) and _cubic_of(view, c) == x:
                return x
    return None


def fuse_gelu(graph: FloatGraph) -> FloatGraph:
    """``0.5 x (1 + erf(x / sqrt 2))`` (and its tanh approximation) becomes ``Gelu(x)`` with attribute
    ``approximate`` ``"none"`` or ``"tanh"``; the half may multiply ``x``, the sum or the product.
    Returns a new graph."""
    graph = copy_graph(graph)
    view = _View(graph)
    for node in [n for n in graph.nodes if n.op in ("Erf", "Tanh")]:
        x = _erf_argument(view, node) if node.op == "Erf" else _tanh_argument(view, node)
        if x is None:
            continue
        one = view.only_user(node.outputs[0], "Add")
        if one is None or not view.scalar_partner(one, node.outputs[0], 1.0):
            continue
        mul = view.only_user(one.outputs[0], "Mul")
        if mul is None:
            continue
        partner = view.other(mul, one.outputs[0])
        half_x = view.made_by(partner, "Mul")
        if partner == x:  # (x * (1 + erf)) * 0.5
            last = view.only_user(mul.outputs[0], "Mul")
            if last is None or not view.scalar_partner(last, mul.outputs[0], 0.5):
                continue
            chain = [mul, last]
        elif half_x is not None and x in half_x.inputs and view.scalar_partner(half_x, x, 0.5):
            chain = [half_x, mul]  # (0.5 * x) * (1 + erf)
        else:
            continue
        inner = [n for n in graph.nodes if n.outputs[0] in node.inputs] if node.op == "Erf" else []
        fused = FloatNode("Gelu", node.name, [x], list(chain[-1].outputs),
                          {"approximate": "none" if node.op == "Erf" else "tanh"})
        _replace(graph, inner + [node, one] + chain, fused)
        view = _View(graph)
    return remove_dead_nodes(graph)


# --------------------------------------------------------------------------
# Layer normalization.
# --------------------------------------------------------------------------


def _last_axis_mean(view: _View, node: FloatNode | None) -> bool:
    if node is None or node.op != "ReduceMean" or not node.attrs.get("keepdims", 1):
        return False
    rank = len(view.graph.shapes[node.inputs[0]])
    return list(node.attrs["axes"]) == [rank - 1]


def fuse_layer_norm(graph: FloatGraph) -> FloatGraph:
    """``(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* gamma] [+ beta]`` over the last axis becomes
    ``LayerNormalization(x, gamma, beta)``.  Returns a new graph."""
    graph = copy_graph(graph)
    view = _View(graph)
    for sub in [n for n in graph.nodes if n.op == "Sub"]:
        x, mean_t = sub.inputs
        mean = view.producer.get(mean_t)
        if not _last_axis_mean(view, mean) or mean.inputs[0] != x:
            continue
        d = sub.outputs[0]
        users = view.consumers.get(d, [])
        square = next((n for n in users if (n.op == "Pow" and n.attrs.get("exponent") == 2.0)
                       or (n.op == "Mul" and n.inputs == [d, d])), None)
        div = next((n for n in users if n.op == "Div" and n.inputs[0] == d), None)
        if square is None or div is None or len(users) != 2:
            continue
        var = view.only_user(square.outputs[0], "ReduceMean")
        add = view.only_user(var.outputs[0], "Add") if _last_axis_mean(view, var) else None
        eps = view.scalar(view.other(add, var.outputs[0])) if add is not None else None
        sqrt = view.only_user(add.outputs[0], "Sqrt") if eps is not None else None
        if sqrt is None or div.inputs[1] != sqrt.outputs[0]:
            continue
        width = graph.shapes[x][-1]
        chain, out = [mean, sub, square, var, add, sqrt, div], div.outputs[0]
        affine = {"Mul": np.ones(width, np.float32), "Add": np.zeros(width, np.float32)}
        for op in ("Mul", "Add"):
            step = view.only_user(out, op)
            value = graph.constants.get(view.other(step, out)) if step is not None else None
            if value is None or value.size not in (1, width) or value.dtype.kind != "f":
                continue
            affine[op] = np.broadcast_to(value.reshape(-1), (width,)).astype(np.float32)
            chain.append(step)
            out = step.outputs[0]
        inputs = [x, _add_constant(graph, f"{div.name}/scale", affine["Mul"]),
                  _add_constant(graph, f"{div.name}/bias", affine["Add"])]
        _replace(graph, chain, FloatNode("LayerNormalization", div.name, inputs, [out], {"epsilon": eps}))
        view = _View(graph)
    return graph


# --------------------------------------------------------------------------
# Attention masks.
# --------------------------------------------------------------------------


def _mask_source(view: _View, tensor: str) -> str | None:
    """The one integer graph input ``tensor`` is computed from, with constants and :data:`MASK_OPS`
    only, else None."""
    graph, sources, stack, seen = view.graph, set(), [tensor], set()
    while stack:
        t = stack.pop()
        if t in seen or t in graph.constants:
            continue
        seen.add(t)
        if t in graph.inputs:
            if t not in graph.integer_inputs:
                return None
            sources.add(t)
            continue
        if view.producer[t].op not in MASK_OPS:
            return None
        stack.extend(view.producer[t].inputs)
    return sources.pop() if len(sources) == 1 else None


def _mask_bias(graph: FloatGraph, bias: str, mask: str, fill: int) -> np.ndarray:
    """``bias`` computed with every element of ``mask`` equal to ``fill`` (batch of one)."""
    sub = FloatGraph(graph.name, graph.nodes, [mask], [bias], graph.constants, graph.shapes, graph.opset,
                     integer_inputs=[mask])
    shape = [1 if d is None else d for d in graph.shapes[mask]]
    nodes = []
    needed = {bias}
    for node in reversed(graph.nodes):
        if needed & set(node.outputs):
            nodes.append(node)
            needed.update(node.inputs)
    sub.nodes = nodes[::-1]
    return run_float(sub, [np.full(shape, fill, np.int64)], outputs=[bias])[bias]


def fuse_attention_mask(graph: FloatGraph) -> FloatGraph:
    """``Softmax(x + f(mask), axis=-1)``: where ``f`` of an integer graph input gives exactly 0 for a mask
    of ones and at most ``MASKED_BIAS`` for a mask of zeros, shaped like the mask with singleton axes
    inserted after the batch (``[B, S] -> [B, 1, 1, S]``), the two become ``MaskedSoftmax(x, mask)`` with
    those ``mask_axes``: positions whose mask is 0 get probability 0.  Returns a new graph."""
    graph = copy_graph(graph)
    view = _View(graph)
    for add in [n for n in graph.nodes if n.op == "Add"]:
        softmax = view.only_user(add.outputs[0], "Softmax")
        if softmax is None or softmax.attrs["axis"] != len(graph.shapes[add.outputs[0]]) - 1:
            continue
        for x, bias in (add.inputs, add.inputs[::-1]):
            mask = _mask_source(view, bias) if bias not in graph.constants else None
            if mask is None:
                continue
            mask_shape, bias_shape = graph.shapes[mask], graph.shapes[bias]
            inserted = len(bias_shape) - len(mask_shape)
            if len(graph.shapes[x]) != len(bias_shape) or inserted < 0 or len(mask_shape) < 2:
                continue
            if tuple(bias_shape) != (mask_shape[0], *([1] * inserted), *mask_shape[1:]):
                continue
            kept, masked = _mask_bias(graph, bias, mask, 1), _mask_bias(graph, bias, mask, 0)
            if not (np.all(kept == 0) and np.all(masked <= MASKED_BIAS)):
                continue
            fused = FloatNode("MaskedSoftmax", softmax.name, [x, mask], list(softmax.outputs),
                              {"mask_axes": list(range(1, 1 + inserted))})
            _replace(graph, [add, softmax], fused)
            view = _View(graph)
            break
    return remove_dead_nodes(graph)


def fuse_constant_mask(graph: FloatGraph) -> FloatGraph:
    """``Softmax(Where(keep, x, fill))`` (or ``Where(masked, fill, x)``) with a constant boolean condition and
    a scalar ``fill`` of at most ``MASKED_BIAS`` (a causal mask) becomes ``MaskedSoftmax(x, keep)`` with the
    condition stored as an int32 constant of x's rank.  Returns a new graph."""
    graph = copy_graph(graph)
    view = _View(graph)
    for where in [n for n in graph.nodes if n.op == "Where"]:
        softmax = view.only_user(where.outputs[0], "Softmax")
        condition = graph.constants.get(where.inputs[0])
        rank = len(graph.shapes[where.outputs[0]])
        if softmax is None or condition is None or softmax.attrs["axis"] != rank - 1:
            continue
        for x, fill, keep in ((where.inputs[1], where.inputs[2], condition), (where.inputs[2], where.inputs[1],
                                                                              ~condition.astype(bool))):
            value = view.scalar(fill)
            if x in graph.constants or value is None or value > MASKED_BIAS or condition.ndim > rank:
                continue
            keep = np.asarray(keep, bool).reshape((1,) * (rank - condition.ndim) + condition.shape)
            mask = _add_constant(graph, f"{where.name}/keep", keep.astype(np.int32))
            fused = FloatNode("MaskedSoftmax", softmax.name, [x, mask], list(softmax.outputs), {"mask_axes": []})
            _replace(graph, [where, softmax], fused)
            view = _View(graph)
            break
    return graph


PATTERN_PASSES = (fuse_batched_linear, fold_scalar_into_linear, fuse_gelu, fuse_layer_norm, fuse_attention_mask,
                  fuse_constant_mask)


def recognise(graph: FloatGraph) -> FloatGraph:
    """Run :data:`PATTERN_PASSES` in order; returns a new graph."""
    return run_passes(graph, PATTERN_PASSES)


def simplify(graph: FloatGraph) -> FloatGraph:
    """The default passes (:func:`~intsim.floatgraph.passes.default_passes`), then :func:`recognise`, then
    :func:`~intsim.floatgraph.vision_patterns.square_and_reciprocal` (after the layer-norm pattern, which
    reads the ``Pow`` and ``Div`` that pass rewrites)."""
    return remove_dead_nodes(square_and_reciprocal(recognise(default_passes(graph))))
