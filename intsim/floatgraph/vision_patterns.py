"""Float graph rewrites that undo what exporters decompose, so that one integer op replaces several
8-bit tensors (white paper §2.3: every tensor between two ops is a quantization point of its own).

- :func:`fold_affine_into_layers`: a constant ``Mul``, ``Div``, ``Add`` or ``Sub`` right after a
  Conv, ConvTranspose or Gemm (paddle2onnx writes each batch norm as ``Mul`` then ``Add``) goes
  into the layer's weights and bias.
- :func:`fuse_hardswish`: ``x * clip(x + 3, 0, 6) / 6`` and its variants become one HardSwish.
- :func:`square_and_reciprocal`: ``x ** 2`` as ``x * x``, ``a / b`` as ``a * reciprocal(b)`` (``b`` computed).
- :func:`remove_identities`: ``x * 1``, ``x + 0`` and the like disappear.

Both keep what the graph computes (up to float32 rounding) and return a new graph.  ``x * sigmoid(x)``
(SiLU) needs no rewrite: :func:`intsim.converter.lowering.plan_steps` lowers the pair as one table.
"""

from __future__ import annotations

import numpy as np

from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.edit import copy_graph, drop_unused, fresh_name

AFFINE_LAYERS = ("Conv", "ConvTranspose", "Gemm")
# Where each layer keeps its output channels: the axis of its weight, and of its output tensor.
_WEIGHT_OUT_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0}


def _consumers(graph: FloatGraph) -> dict[str, list[FloatNode]]:
    users: dict[str, list[FloatNode]] = {}
    for node in graph.nodes:
        for t in node.inputs:
            users.setdefault(t, []).append(node)
    return users


def _sole_user(graph, users, tensor) -> FloatNode | None:
    """The one node reading ``tensor``, when exactly one does and it is not a graph output."""
    readers = users.get(tensor, [])
    return readers[0] if len(readers) == 1 and tensor not in graph.outputs else None


def _constant_operand(graph, node) -> tuple[int, np.ndarray] | None:
    """``(index of the activation operand, the constant)`` of a binary node with one constant operand."""
    if len(node.inputs) != 2:
        return None
    first, second = (t in graph.constants for t in node.inputs)
    if first == second:
        return None
    return (1, graph.constants[node.inputs[0]]) if first else (0, graph.constants[node.inputs[1]])


def _per_channel(constant: np.ndarray, out_rank: int, channels: int) -> np.ndarray | None:
    """The constant as one value per output channel (axis 1 of the layer's output, the last axis of a
    Gemm's), or None when it varies along another axis or would change the output's shape."""
    if constant.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - constant.ndim) + constant.shape
    axis = 1 if out_rank > 2 else out_rank - 1
    if any(d != 1 for i, d in enumerate(shape) if i != axis) or shape[axis] not in (1, channels):
        return None
    return np.broadcast_to(constant.astype(np.float64).reshape(-1), (channels,))


def _fold_one(graph, layer, node, index, constant) -> bool:
    out_rank = len(graph.shapes[layer.outputs[0]])
    weight = graph.constants[layer.inputs[1]].astype(np.float64)
    group = layer.attrs.get("group", 1)
    axis = _WEIGHT_OUT_AXIS[layer.op]
    channels = weight.shape[axis] * (group if layer.op == "ConvTranspose" else 1)
    values = _per_channel(constant, out_rank, channels)
    if values is None or (node.op in ("Div", "Sub") and index != 0):
        return False
    if node.op == "Div" and np.any(values == 0):
        return False
    bias = graph.constants[layer.inputs[2]].astype(np.float64) if len(layer.inputs) > 2 else np.zeros(channels)
    if node.op in ("Mul", "Div"):
        factor = values if node.op == "Mul" else 1.0 / values
        per_weight = factor.reshape(group, -1) if layer.op == "ConvTranspose" else factor
        shape = [1] * weight.ndim
        shape[axis] = -1
        if layer.op == "ConvTranspose":
            weight = (weight.reshape(group, -1, *weight.shape[1:]) * per_weight.reshape(group, 1, -1, 1, 1)
                      ).reshape(weight.shape)
        else:
            weight = weight * per_weight.reshape(shape)
        bias = bias * factor
    else:
        bias = bias + (values if node.op == "Add" else -values)
    weight_name = fresh_name(graph, f"{layer.name}/weight_{node.op.lower()}_folded")
    bias_name = fresh_name(graph, f"{layer.name}/bias_{node.op.lower()}_folded")
    graph.constants[weight_name], graph.constants[bias_name] = weight.astype(np.float32), bias.astype(np.float32)
    graph.shapes[weight_name], graph.shapes[bias_name] = weight.shape, bias.shape
    layer.inputs = [layer.inputs[0], weight_name, bias_name]
    layer.outputs = list(node.outputs)
    graph.nodes.remove(node)
    return True


def fold_affine_into_layers(graph: FloatGraph) -> FloatGraph:
    """Fold each constant ``Mul`` / ``Div`` / ``Add`` / ``Sub`` that follows a Conv, ConvTranspose or
    Gemm into its weights and bias (white paper §2.3.1, as batch-norm folding).

    The constant must be one value per output channel or a scalar (``y * c`` scales output channel
    ``i``'s weights and bias by ``c_i``; ``y + c`` adds ``c_i`` to its bias); ``Div`` and ``Sub``
    only with the constant second.  The layer's output must have no other reader and not be a
    graph output.  Chains fold one after another (``Mul`` then ``Add``).  Returns a new graph.
    """
    graph = copy_graph(graph)
    changed = True
    while changed:
        changed = False
        users = _consumers(graph)
        for layer in [n for n in graph.nodes if n.op in AFFINE_LAYERS and n.inputs[1] in graph.constants]:
            node = _sole_user(graph, users, layer.outputs[0])
            if node is None or node.op not in ("Mul", "Div", "Add", "Sub"):
                continue
            operand = _constant_operand(graph, node)
            if operand is not None and _fold_one(graph, layer, node, *operand):
                changed = True
                break
    drop_unused(graph)
    return graph


def _scalar(graph, tensor) -> float | None:
    value = graph.constants.get(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def _other(node, tensor) -> str | None:
    """The operand of a binary node that is not ``tensor`` (None unless ``tensor`` is one of two)."""
    if len(node.inputs) != 2 or tensor not in node.inputs:
        return None
    return node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]


def _is_scale_by(graph, node, tensor, factor) -> bool:
    """Whether ``node`` computes ``tensor * factor`` (a Mul by it or a Div by its reciprocal)."""
    if node.op == "Div" and node.inputs[0] == tensor:
        divisor = _scalar(graph, node.inputs[1])
        return divisor is not None and np.isclose(1.0 / divisor, factor, rtol=1e-6)
    if node.op == "Mul":
        other = _other(node, tensor)
        value = None if other is None else _scalar(graph, other)
        return value is not None and np.isclose(value, factor, rtol=1e-6)
    return False


def _hard_sigmoid_of(graph, users, gate) -> tuple[str, list[FloatNode]] | None:
    """``(x, nodes)`` when tensor ``gate`` is ``clip(x + 3, 0, 6) / 6`` (or ``hard_sigmoid(x)`` with
    alpha 1/6, beta 1/2) computed by ``nodes``, each read by the next alone."""
    producer = graph.producer(gate)
    if producer is None:
        return None
    if producer.op == "HardSigmoid":
        ok = np.isclose(producer.attrs["alpha"], 1 / 6, rtol=1e-6) and np.isclose(producer.attrs["beta"], 0.5)
        return (producer.inputs[0], [producer]) if ok else None
    if producer.op == "Div":
        clip = graph.producer(producer.inputs[0])
    elif producer.op == "Mul":
        clip = next((graph.producer(t) for t in producer.inputs if t not in graph.constants), None)
    else:
        return None
    if clip is None or not _is_scale_by(graph, producer, clip.outputs[0], 1 / 6):
        return None
    if _sole_user(graph, users, clip.outputs[0]) is not producer:
        return None
    x_plus_3 = _shifted_clip(graph, users, clip)
    if x_plus_3 is None:
        return None
    x, add = x_plus_3
    return x, [add, clip, producer]


def _shifted_clip(graph, users, clip) -> tuple[str, FloatNode] | None:
    """``(x, add)`` when ``clip`` is ``Clip(0, 6)`` of ``add = x + 3``, read by the clip alone."""
    if clip is None or clip.op != "Clip" or clip.attrs["min"] != 0.0 or clip.attrs["max"] != 6.0:
        return None
    add = graph.producer(clip.inputs[0])
    if add is None or add.op != "Add" or _sole_user(graph, users, add.outputs[0]) is not clip:
        return None
    operand = _constant_operand(graph, add)
    if operand is None or operand[1].size != 1 or float(operand[1].reshape(())) != 3.0:
        return None
    return add.inputs[operand[0]], add


def fuse_hardswish(graph: FloatGraph) -> FloatGraph:
    """Replace decomposed hard-swish subgraphs by one ``HardSwish`` node.

    Recognised, for an activation ``x``: ``x * clip(x + 3, 0, 6) / 6`` (the ``/ 6`` a Div by 6 or a
    Mul by 1/6, after the product or on the clip), and ``x * hard_sigmoid(x)`` with alpha 1/6 and
    beta 1/2 (``Clip(0, 6)`` is ReLU6).  Every intermediate tensor must have no reader outside the
    pattern.  Returns a new graph.
    """
    graph = copy_graph(graph)
    changed = True
    while changed:
        changed = False
        users = _consumers(graph)
        for mul in [n for n in graph.nodes if n.op == "Mul" and len(n.inputs) == 2]:
            match = _hardswish_at(graph, users, mul)
            if match is None:
                continue
            x, removed, last = match
            position = graph.nodes.index(last)
            graph.nodes[position] = FloatNode("HardSwish", last.name, [x], list(last.outputs))
            for node in removed:
                graph.nodes.remove(node)
            changed = True
            break
    drop_unused(graph)
    return graph


def _hardswish_at(graph, users, mul) -> tuple[str, list[FloatNode], FloatNode] | None:
    """``(x, nodes to remove, node whose output is the hard swish)`` for a Mul at the heart of one."""
    for i in (0, 1):
        x, gate = mul.inputs[i], mul.inputs[1 - i]
        if x in graph.constants or gate in graph.constants or _sole_user(graph, users, gate) is not mul:
            continue
        found = _hard_sigmoid_of(graph, users, gate)
        if found is not None and found[0] == x:
            return x, found[1], mul
        clip = graph.producer(gate)
        shifted = _shifted_clip(graph, users, clip)
        after = _sole_user(graph, users, mul.outputs[0])
        if shifted is not None and shifted[0] == x and after is not None and _is_scale_by(
                graph, after, mul.outputs[0], 1 / 6):
            return x, [shifted[1], clip, mul], after
    return None


def square_and_reciprocal(graph: FloatGraph) -> FloatGraph:
    """Rewrite ``Pow(x, 2)`` as ``Mul(x, x)`` (one integer multiply of the codes, no table) and
    ``Div(a, b)`` by an activation ``b`` as ``Mul(a, Reciprocal(b))`` (the reciprocal a table with a
    calibrated output range of its own; ``a`` an activation or a constant).  Returns a new graph."""
    graph = copy_graph(graph)
    nodes = []
    for node in graph.nodes:
        if node.op == "Pow" and node.attrs["exponent"] == 2.0:
            nodes.append(FloatNode("Mul", node.name, [node.inputs[0], node.inputs[0]], list(node.outputs)))
        elif node.op == "Div" and node.inputs[1] not in graph.constants:
            reciprocal = fresh_name(graph, f"{node.inputs[1]}/reciprocal")
            graph.shapes[reciprocal] = graph.shapes[node.inputs[1]]
            nodes.append(FloatNode("Reciprocal", f"{node.name}/reciprocal", [node.inputs[1]], [reciprocal]))
            nodes.append(FloatNode("Mul", node.name, [node.inputs[0], reciprocal], list(node.outputs)))
        else:
            nodes.append(node)
    graph.nodes = nodes
    return graph


# op: (the neutral constant, the positions the other operand may take)
_NEUTRAL = {"Mul": (1.0, (0, 1)), "Div": (1.0, (0,)), "Add": (0.0, (0, 1)), "Sub": (0.0, (0,))}


def remove_identities(graph: FloatGraph) -> FloatGraph:
    """Drop ``x * 1``, ``x / 1``, ``x + 0`` and ``x - 0`` (a constant of ones or zeros that does not
    change ``x``'s shape): paddle2onnx writes swish as ``x * sigmoid(1 * x)``, which then lowers as
    one SiLU table.  A node computing a graph output stays.  Returns a new graph."""
    graph = copy_graph(graph)
    rename: dict[str, str] = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [rename.get(t, t) for t in node.inputs]
        operand = _constant_operand(graph, node) if node.op in _NEUTRAL else None
        if operand is not None and not set(node.outputs) & set(graph.outputs):
            index, constant = operand
            neutral, positions = _NEUTRAL[node.op]
            x = node.inputs[index]
            same_shape = graph.shapes.get(x) == graph.shapes.get(node.outputs[0])
            if index in positions and same_shape and np.all(constant == neutral):
                rename[node.outputs[0]] = x
                continue
        kept.append(node)
    graph.nodes = kept
    drop_unused(graph)
    return graph
