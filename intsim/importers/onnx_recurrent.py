"""What the ONNX importer knows of recurrent layers: ``LSTM``, forward, reverse or bidirectional.

An ONNX LSTM becomes two canonical nodes (:mod:`intsim.floatgraph.recurrent_ops`): ``LSTMCells``, the cell
state after every step (a tensor the converter calibrates, though ONNX never shows it), and ``LSTM``,
ONNX's ``Y``, which reads the cells tensor as an unused last input so that neither is ever dead while
``Y`` is used.  ``Y_h`` and ``Y_c`` are the last step of each (``Slice`` + ``Squeeze``).  A bidirectional
LSTM is two such LSTMs, forward and reverse, whose results are concatenated along ONNX's direction axis.

Refused with a typed error naming what is missing: ``sequence_lens`` other than the
full length, activations other than sigmoid/tanh/tanh, ``clip``, ``input_forget``, ``layout = 1``, and
weights that are not constants.
"""

from __future__ import annotations

import numpy as np

from intsim.importers.onnx_ops import MULTI_OUTPUT, register_convert

_DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]
MULTI_OUTPUT.add("LSTM")


def _activations(node, directions):
    names = node.attr("activations")
    if names is None:
        return _DEFAULT_ACTIVATIONS * directions
    return [a.decode() if isinstance(a, bytes) else str(a) for a in names]


@register_convert("LSTM")
def _lstm(node):
    direction = node.attr("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in ("forward", "reverse", "bidirectional"):
        raise node.invalid(f"direction {direction!r} must be forward, reverse or bidirectional")
    directions = 2 if direction == "bidirectional" else 1
    if _activations(node, directions) != _DEFAULT_ACTIVATIONS * directions:
        raise node.fail(f"LSTM activations {_activations(node, directions)} are not supported; only "
                        f"{_DEFAULT_ACTIVATIONS} per direction")
    for key in ("clip", "input_forget", "layout"):
        if node.attr(key):
            raise node.fail(f"LSTM attribute {key}={node.attr(key)!r} is not supported")
    x_shape = node.shape(0)
    if len(x_shape) != 3:
        raise node.invalid(f"X must be [seq_length, batch, input_size], found shape {x_shape}")
    w, r = node.const(1, "W"), node.const(2, "R")
    hidden = r.shape[-1]
    if w.ndim != 3 or w.shape[:2] != (directions, 4 * hidden) or r.shape != (directions, 4 * hidden, hidden):
        raise node.invalid(f"W {w.shape} and R {r.shape} must be [{directions}, 4H, I] and [{directions}, 4H, H]")
    if x_shape[2] is not None and x_shape[2] != w.shape[2]:
        raise node.invalid(f"X has {x_shape[2]} features, W expects {w.shape[2]}")
    b = node.const(3, "B") if node.has(3) else np.zeros((directions, 8 * hidden), np.float32)
    p = node.const(7, "P") if node.has(7) else np.zeros((directions, 3 * hidden), np.float32)
    if b.shape != (directions, 8 * hidden) or p.shape != (directions, 3 * hidden):
        raise node.invalid(f"B {b.shape} and P {p.shape} must be [{directions}, 8H] and [{directions}, 3H]")
    if node.has(4):
        lengths = node.const(4, "sequence_lens")
        if x_shape[0] is None or np.any(lengths != x_shape[0]):
            raise node.fail(f"LSTM sequence_lens {lengths.tolist()} other than the full length {x_shape[0]} are "
                            "not supported")
    steps = x_shape[0]
    wanted = [len(node.outputs) > i and bool(node.outputs[i]) for i in range(3)]
    if steps is None and (wanted[1] or wanted[2]):
        raise node.fail("LSTM Y_h / Y_c of a symbolic sequence length are not supported; fix the length with "
                        "input_shapes")
    nodes, results = [], {0: [], 1: [], 2: []}
    for d in range(directions):
        sense = ("forward", "reverse")[d] if directions == 2 else direction
        attrs = {"direction": sense, "hidden_size": hidden, "initial_h": node.has(5), "initial_c": node.has(6)}
        states = [_direction_of(node, nodes, i, d, directions) for i in (5, 6) if node.has(i)]
        inputs = [node.inputs[0]] + [node.constant(v[d:d + 1].astype(np.float32), name)
                                     for v, name in ((w, "W"), (r, "R"), (b, "B"), (p, "P"))] + states
        cells = node.fresh("cells")
        nodes.append(node.make("LSTMCells", inputs, attrs, output=cells))
        y = node.outputs[0] if wanted[0] and directions == 1 else node.fresh("Y")
        nodes.append(node.make("LSTM", inputs + [cells], attrs, output=y))
        results[0].append(y)
        last = 0 if sense == "reverse" else steps - 1
        for index, source in ((1, y), (2, cells)):
            if wanted[index]:
                step = node.fresh(f"last{index}")
                nodes.append(node.make("Slice", [source], {"axes": [0], "starts": [last], "ends": [last + 1],
                                                           "steps": [1]}, output=step))
                out = node.outputs[index] if directions == 1 else node.fresh(f"last{index}_squeezed")
                nodes.append(node.make("Squeeze", [step], {"axes": [0]}, output=out))
                results[index].append(out)
    if directions == 2:
        for index, axis in ((0, 1), (1, 0), (2, 0)):
            if wanted[index]:
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
