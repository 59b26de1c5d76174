"""What the ONNX importer knows of recurrent layers: ``LSTM`` and ``GRU``, forward, reverse or bidirectional.

An ONNX LSTM becomes two canonical nodes (:mod:`intsim.floatgraph.recurrent_ops`): ``LSTMCells``, the cell
state after every step (a tensor the converter calibrates, though ONNX never shows it), and ``LSTM``,
ONNX's ``Y``, which reads the cells tensor as an unused last input so that neither is ever dead while
``Y`` is used.  A GRU becomes one ``GRU`` node.  ``Y_h`` and ``Y_c`` are the last step of ``Y`` and of the
cells (``Slice`` + ``Squeeze``).  A bidirectional layer is two such layers, forward and reverse, whose
results are concatenated along ONNX's direction axis.

Refused with a typed error naming what is missing: ``sequence_lens`` other than the full length,
activations other than the defaults (sigmoid, tanh[, tanh]), ``clip``, ``input_forget``, ``layout = 1``,
and weights that are not constants.
"""

from __future__ import annotations

import numpy as np

from intsim.importers.onnx_ops import MULTI_OUTPUT, register_convert

# op: (gates, default activations per direction, inputs after the initial states: name and width in H)
_KINDS = {"LSTM": (4, ["Sigmoid", "Tanh", "Tanh"], (("P", 3),)), "GRU": (3, ["Sigmoid", "Tanh"], ())}
MULTI_OUTPUT.update(_KINDS)


def _direction(node) -> str:
    direction = node.attr("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in ("forward", "reverse", "bidirectional"):
        raise node.invalid(f"direction {direction!r} must be forward, reverse or bidirectional")
    return direction


def _weights(node, gates, directions):
    """``W, R, B`` and the extra constants (``P``) of every direction, checked."""
    x_shape = node.shape(0)
    if len(x_shape) != 3:
        raise node.invalid(f"X must be [seq_length, batch, input_size], found shape {x_shape}")
    w, r = node.const(1, "W"), node.const(2, "R")
    hidden = r.shape[-1]
    if w.ndim != 3 or w.shape[:2] != (directions, gates * hidden) or r.shape != (directions, gates * hidden, hidden):
        raise node.invalid(f"W {w.shape} and R {r.shape} must be [{directions}, {gates}H, I] and "
                           f"[{directions}, {gates}H, H]")
    if x_shape[2] is not None and x_shape[2] != w.shape[2]:
        raise node.invalid(f"X has {x_shape[2]} features, W expects {w.shape[2]}")
    b = node.const(3, "B") if node.has(3) else np.zeros((directions, 2 * gates * hidden), np.float32)
    if b.shape != (directions, 2 * gates * hidden):
        raise node.invalid(f"B {b.shape} must be [{directions}, {2 * gates}H]")
    if node.has(4):
        lengths = node.const(4, "sequence_lens")
        if x_shape[0] is None or np.any(lengths != x_shape[0]):
            raise node.fail(f"{node.op} sequence_lens {lengths.tolist()} other than the full length {x_shape[0]} "
                            "are not supported")
    extras = []
    for index, (name, width) in enumerate(_KINDS[node.op][2], start=7):
        value = node.const(index, name) if node.has(index) else np.zeros((directions, width * hidden), np.float32)
        if value.shape != (directions, width * hidden):
            raise node.invalid(f"{name} {value.shape} must be [{directions}, {width}H]")
        extras.append((value, name))
    return hidden, [(w, "W"), (r, "R"), (b, "B"), *extras]


@register_convert("LSTM", "GRU")
def _recurrent(node):
    gates, activations, _ = _KINDS[node.op]
    direction = _direction(node)
    directions = 2 if direction == "bidirectional" else 1
    names = node.attr("activations")
    names = activations * directions if names is None else [a.decode() if isinstance(a, bytes) else str(a)
                                                            for a in names]
    if names != activations * directions:
        raise node.fail(f"{node.op} activations {names} are not supported; only {activations} per direction")
    for key in ("clip", "input_forget", "layout"):
        if node.attr(key):
            raise node.fail(f"{node.op} attribute {key}={node.attr(key)!r} is not supported")
    hidden, constants = _weights(node, gates, directions)
    steps = node.shape(0)[0]
    wanted = [len(node.outputs) > i and bool(node.outputs[i]) for i in range(3)]
    if steps is None and (wanted[1] or wanted[2]):
        raise node.fail(f"{node.op} Y_h / Y_c of a symbolic sequence length are not supported; fix the length "
                        "with input_shapes")
    state_inputs = (5, 6) if node.op == "LSTM" else (5,)
    nodes, results = [], {0: [], 1: [], 2: []}
    for d in range(directions):
        sense = ("forward", "reverse")[d] if directions == 2 else direction
        attrs = {"direction": sense, "hidden_size": hidden, "initial_h": node.has(5),
                 "initial_c": node.op == "LSTM" and node.has(6)}
        if node.op == "GRU":
            attrs["linear_before_reset"] = bool(node.attr("linear_before_reset", 0))
        states = [_direction_of(node, nodes, i, d, directions) for i in state_inputs if node.has(i)]
        inputs = [node.inputs[0]] + [node.constant(v[d:d + 1].astype(np.float32), name)
                                     for v, name in constants] + states
        if node.op == "LSTM":
            cells = node.fresh("cells")
            nodes.append(node.make("LSTMCells", inputs, attrs, output=cells))
            inputs = inputs + [cells]
        y = node.outputs[0] if wanted[0] and directions == 1 else node.fresh("Y")
        nodes.append(node.make(node.op, inputs, attrs, output=y))
        results[0].append(y)
        sources = [(1, y)] + ([(2, cells)] if node.op == "LSTM" else [])
        last = 0 if sense == "reverse" else steps - 1
        for index, source in sources:
            if wanted[index]:
                step = node.fresh(f"last{index}")
                nodes.append(node.make("Slice", [source], {"axes": [0], "starts": [last], "ends": [last + 1],
                                                           "steps": [1]}, output=step))
                out = node.outputs[index] if directions == 1 else node.fresh(f"last{index}_squeezed")
                nodes.append(node.make("Squeeze", [step], {"axes": [0]}, output=out))
                results[index].append(out)
    if directions == 2:
        for index, axis in ((0, 1), (1, 0), (2, 0)):
            if results[index] and wanted[index]:
                nodes.append(node.make("Concat", results[index], {"axis": axis}, output=node.outputs[index]))
    return nodes


def _direction_of(node, nodes, index, direction, directions):
    """Initial state input ``index`` (``[directions, B, H]``) of one direction, ``[1, B, H]``."""
    if directions == 1:
        return node.inputs[index]
    part = node.fresh(f"state{index}_{direction}")
    nodes.append(node.make("Slice", [node.inputs[index]], {"axes": [0], "starts": [direction],
                                                           "ends": [direction + 1], "steps": [1]}, output=part))
    return part
