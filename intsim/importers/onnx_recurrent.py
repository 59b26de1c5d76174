"""What the ONNX importer knows of recurrent layers: ``LSTM`` with one direction (forward or reverse).

An ONNX LSTM becomes two canonical nodes (:mod:`intsim.floatgraph.recurrent_ops`): ``LSTMCells``, the cell
state after every step (a tensor the converter calibrates, though ONNX never shows it), and ``LSTM``,
ONNX's ``Y``, which reads the cells tensor as an unused last input so that neither is ever dead while
``Y`` is used.  ``Y_h`` and ``Y_c`` are the last step of each (``Slice`` + ``Squeeze``).

Refused with a typed error naming what is missing: bidirectional LSTMs, ``sequence_lens`` other than the
full length, activations other than sigmoid/tanh/tanh, ``clip``, ``input_forget``, ``layout = 1``, and
weights that are not constants.
"""

from __future__ import annotations

import numpy as np

from intsim.importers.onnx_ops import MULTI_OUTPUT, register_convert

_DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]
MULTI_OUTPUT.add("LSTM")


def _activations(node):
    names = node.attr("activations")
    if names is None:
        return _DEFAULT_ACTIVATIONS
    return [a.decode() if isinstance(a, bytes) else str(a) for a in names]


@register_convert("LSTM")
def _lstm(node):
    direction = node.attr("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else str(direction)
    if direction not in ("forward", "reverse"):
        raise node.fail(f"LSTM direction {direction!r} is not supported; only 'forward' and 'reverse' (split a "
                        "bidirectional LSTM into two)")
    if _activations(node) != _DEFAULT_ACTIVATIONS:
        raise node.fail(f"LSTM activations {_activations(node)} are not supported; only {_DEFAULT_ACTIVATIONS}")
    for key in ("clip", "input_forget", "layout"):
        if node.attr(key):
            raise node.fail(f"LSTM attribute {key}={node.attr(key)!r} is not supported")
    x_shape = node.shape(0)
    if len(x_shape) != 3:
        raise node.invalid(f"X must be [seq_length, batch, input_size], found shape {x_shape}")
    w, r = node.const(1, "W"), node.const(2, "R")
    hidden = r.shape[-1]
    if w.ndim != 3 or w.shape[:2] != (1, 4 * hidden) or r.shape != (1, 4 * hidden, hidden):
        raise node.invalid(f"W {w.shape} and R {r.shape} must be [1, 4H, I] and [1, 4H, H]")
    if x_shape[2] is not None and x_shape[2] != w.shape[2]:
        raise node.invalid(f"X has {x_shape[2]} features, W expects {w.shape[2]}")
    b = node.const(3, "B") if node.has(3) else np.zeros((1, 8 * hidden), np.float32)
    p = node.const(7, "P") if node.has(7) else np.zeros((1, 3 * hidden), np.float32)
    if b.shape != (1, 8 * hidden) or p.shape != (1, 3 * hidden):
        raise node.invalid(f"B {b.shape} and P {p.shape} must be [1, 8H] and [1, 3H]")
    if node.has(4):
        lengths = node.const(4, "sequence_lens")
        if x_shape[0] is None or np.any(lengths != x_shape[0]):
            raise node.fail(f"LSTM sequence_lens {lengths.tolist()} other than the full length {x_shape[0]} are "
                            "not supported")
    states = [node.inputs[i] for i in (5, 6) if node.has(i)]
    attrs = {"direction": direction, "hidden_size": hidden, "initial_h": node.has(5), "initial_c": node.has(6)}
    inputs = [node.inputs[0], node.constant(w.astype(np.float32), "W"), node.constant(r.astype(np.float32), "R"),
              node.constant(b.astype(np.float32), "B"), node.constant(p.astype(np.float32), "P"), *states]
    cells = node.fresh("cells")
    nodes = [node.make("LSTMCells", inputs, attrs, output=cells)]
    y = node.outputs[0] if node.outputs and node.outputs[0] else node.fresh("Y")
    nodes.append(node.make("LSTM", inputs + [cells], attrs, output=y))
    steps = x_shape[0]
    if steps is None and any(len(node.outputs) > i and node.outputs[i] for i in (1, 2)):
        raise node.fail("LSTM Y_h / Y_c of a symbolic sequence length are not supported; fix the length with "
                        "input_shapes")
    last = 0 if direction == "reverse" else steps - 1
    for index, source in ((1, y), (2, cells)):
        if len(node.outputs) > index and node.outputs[index]:
            step = node.fresh(f"last{index}")
            nodes.append(node.make("Slice", [source], {"axes": [0], "starts": [last], "ends": [last + 1],
                                                       "steps": [1]}, output=step))
            nodes.append(node.make("Squeeze", [step], {"axes": [0]}, output=node.outputs[index]))
    return nodes
