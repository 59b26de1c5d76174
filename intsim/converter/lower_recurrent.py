"""Lowering of ONNX's LSTM and GRU (:mod:`intsim.importers.onnx_recurrent`) onto the integer ``lstm`` and
``gru`` ops, in the integer style of LiteRT's fully-integer LSTM (:mod:`intsim.kernels.lstm`,
:mod:`intsim.kernels.gru`), registered by float op type in :data:`RECURRENT_LOWERINGS`.

- ``x`` and ``h`` are int8 activations (the input's and ``Y``'s calibrated scales); an initial ``h`` is
  rescaled to ``Y``'s scale, an initial ``c`` to the cell state's;
- weights are int8, symmetric, one scale per gate and matrix; the two ONNX biases are summed and stored
  in int32 at ``s_x s_w`` with the zero points folded in (``bias - z_x rowsum(W)``, ``-z_h rowsum(R)``);
- every gate pre-activation is int16 Q3.12, activated by gemmlowp's fixed-point sigmoid / tanh;
- the cell state is int16 with a power-of-two scale ``2**k``: the smallest that covers the calibrated
  range of ``LSTMCells`` (``k`` clamped to [-15, -9], the kernel's range, so ``|c| <= 64``);
- peepholes are int16, one symmetric scale per gate;
- a GRU's biases of the update and reset gates are summed like the LSTM's; the new gate keeps its
  recurrent bias with the recurrent product (at ``s_h s_r``) when ``linear_before_reset``, else sums it.

A profile without 8-bit signed activations, or without an integer rounding mode, gets an
:class:`~intsim.errors.UnsupportedOpError` naming what the op needs.
"""

from __future__ import annotations

import math

import numpy as np

from intsim.converter.layer_config import ActivationFormat
from intsim.errors import UnsupportedOpError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES
from intsim.graph import Node
from intsim.kernels.lstm import GATE_INTEGER_BITS, MAX_CELL_SHIFT, MIN_CELL_SHIFT

RECURRENT_LOWERINGS = {}
# ONNX stacks the gates i, o, f, c (W, R, B) and the peepholes i, o, f (P); the kernel reads i, f, c, o
# and i, f, o.
_GATES_FROM_ONNX = (0, 2, 3, 1)
_PEEPHOLES_FROM_ONNX = (0, 2, 1)
_GATE_SCALE = 2.0 ** (GATE_INTEGER_BITS - 15)
_STATE_BITS = 16


def _lowers(kind):
    def wrap(fn):
        RECURRENT_LOWERINGS[kind] = fn
        return fn

    return wrap


def cell_shift(magnitude: float) -> int:
    """The exponent ``k`` of the smallest power-of-two int16 scale ``2**k`` with ``32767 2**k >= magnitude``,
    clamped to the kernel's [-15, -9]."""
    if magnitude <= 0:
        return MIN_CELL_SHIFT
    return min(max(math.ceil(math.log2(magnitude / (2**15 - 1))), MIN_CELL_SHIFT), MAX_CELL_SHIFT)


def _symmetric_codes(blocks, bits):
    """Per-block symmetric codes of ``bits`` bits: ``(codes, scales)``."""
    top = 2 ** (bits - 1) - 1
    scales = np.array([np.abs(block).max() / top if np.abs(block).max() > 0 else 1.0 for block in blocks])
    codes = np.stack([np.clip(np.rint(block / s), -top, top) for block, s in zip(blocks, scales)])
    return codes, scales


def _check_profile(lw, node):
    p = lw.profile
    fmt = lw.act or ActivationFormat.of(p)
    if p.rounding not in INTEGER_ROUNDING_MODES:
        raise UnsupportedOpError(f"node {node.name!r}: the integer {node.op} needs an integer rounding mode; profile "
                                 f"{p.name!r} rounds {p.rounding!r}")
    if (fmt.bits, fmt.signed) != (8, True) or p.weight_bits > 8:
        raise UnsupportedOpError(f"node {node.name!r}: the integer {node.op} takes int8 activations and weights of at "
                                 f"most 8 bits; profile {p.name!r} has {fmt.bits}-bit "
                                 f"{'signed' if fmt.signed else 'unsigned'} activations and {p.weight_bits}-bit "
                                 "weights")


def _range_magnitude(lw, float_name) -> float:
    scale, zp = lw.out_params(float_name)
    return max(abs(scale * (c - zp)) for c in lw.profile.activation_range())


def _state(lw, node, float_name, scale, zero_point, dtype):
    """The initial state ``float_name`` ``[1, B, H]`` as ``[B, H]`` codes at ``scale`` / ``zero_point``."""
    source = lw.need(float_name, (0, 1, 2))
    info = lw.tensors[source]
    hidden = lw.fg.shapes[float_name][2]
    flat = lw.new_tensor(f"{source}.flat", float_name, (0, 1, 2), info.scale, info.zero_point,
                         shape=info.shape[1:], dtype=info.dtype)
    lw.nodes.append(Node("reshape", f"{flat}/reshape", [source], [flat], {"shape": [-1, hidden]}))
    out = lw.new_tensor(f"{source}.state", float_name, (0, 1, 2), scale, zero_point, shape=info.shape[1:],
                        dtype=dtype)
    lo, hi = lw.tensors[out].code_range
    lw.nodes.append(Node("rescale", f"{out}/rescale", [flat], [out], {"clamp": [lo, hi]},
                         lw.rescale(info.scale / scale)))
    lw.meta["real_multiplier"][f"{out}/rescale"] = [info.scale / scale]
    return out


@_lowers("LSTMCells")
def lower_lstm_cells(lw, step):
    """Nothing to emit: the ``LSTM`` step that reads these cells writes them (its op's second output)."""


@_lowers("LSTM")
def lower_lstm(lw, step):
    node = step.nodes[0]
    _check_profile(lw, node)
    x_name, w_name, r_name, b_name, p_name, *states, cells = node.inputs
    hidden = int(node.attrs["hidden_size"])
    x = lw.tensors[lw.need(x_name, (0, 1, 2))]
    y_scale, y_zp = lw.out_params(step.output)
    shift = cell_shift(_range_magnitude(lw, cells))
    cell_scale = 2.0**shift
    w, r = (lw.fg.constants[t][0].astype(np.float64) for t in (w_name, r_name))
    b = lw.fg.constants[b_name][0].astype(np.float64)
    p = lw.fg.constants[p_name][0].astype(np.float64)
    bits = lw.profile.weight_bits
    w_codes, w_scales = _symmetric_codes([w[g * hidden:(g + 1) * hidden] for g in _GATES_FROM_ONNX], bits)
    r_codes, r_scales = _symmetric_codes([r[g * hidden:(g + 1) * hidden] for g in _GATES_FROM_ONNX], bits)
    bias = np.stack([b[g * hidden:(g + 1) * hidden] + b[(4 + g) * hidden:(5 + g) * hidden] for g in _GATES_FROM_ONNX])
    bias_codes = np.rint(bias / (x.scale * w_scales[:, None]))
    bias_int = np.clip(bias_codes, -(2**31), 2**31 - 1)
    bias_input = bias_int - x.zero_point * w_codes.sum(axis=2)
    bias_recurrent = -y_zp * r_codes.sum(axis=2)
    params = {"weight_input": w_codes.astype(np.int8), "weight_recurrent": r_codes.astype(np.int8),
              "bias_input": np.clip(bias_input, -(2**31), 2**31 - 1).astype(np.int32),
              "bias_recurrent": np.clip(bias_recurrent, -(2**31), 2**31 - 1).astype(np.int32),
              **lw.rescale(x.scale * w_scales / _GATE_SCALE, "input_"),
              **lw.rescale(y_scale * r_scales / _GATE_SCALE, "recurrent_"),
              **lw.rescale(2.0**-30 / y_scale, "hidden_")}
    if np.any(p):
        p_codes, p_scales = _symmetric_codes([p[g * hidden:(g + 1) * hidden] for g in _PEEPHOLES_FROM_ONNX],
                                             _STATE_BITS)
        params["peephole"] = p_codes.astype(np.int16)
        params.update(lw.rescale(cell_scale * p_scales / _GATE_SCALE, "peephole_"))
    if len(states) == 1:
        raise UnsupportedOpError(f"node {node.name!r}: an LSTM given only one of initial_h and initial_c is not "
                                 "supported; give both or neither")
    inputs = [x.name]
    if states:
        inputs += [_state(lw, node, states[0], y_scale, y_zp, "int8"),
                   _state(lw, node, states[1], cell_scale, 0, "int16")]
    steps, batch = lw.tensors[x.name].shape[:2]
    y_seq = lw.new_tensor(f"{node.name}/y", step.output, (0, 1, 2, 3), y_scale, y_zp,
                          shape=(steps, batch, hidden), dtype="int8")
    c_seq = lw.new_tensor(f"{node.name}/cells", cells, (0, 1, 2, 3), cell_scale, 0, shape=(steps, batch, hidden),
                          dtype="int16")
    attrs = {"cell_shift": shift, "cell_clip": 0, "hidden_zero_point": int(y_zp), "cifg": False,
             "reverse": node.attrs["direction"] == "reverse"}
    lw.nodes.append(Node("lstm", node.name, inputs, [y_seq, c_seq], attrs, params))
    for float_name, source, scale, zp, dtype in ((step.output, y_seq, y_scale, y_zp, "int8"),
                                                 (cells, c_seq, cell_scale, 0, "int16")):
        out = lw.bind(float_name, (0, 1, 2, 3), scale, zp, dtype=dtype)
        lw.nodes.append(Node("reshape", f"{out}/reshape", [source], [out], {"shape": [0, 1, -1, hidden]}))
    lw.meta["weight_scale"][node.name] = [float(s) for s in (*w_scales, *r_scales)]
    lw.meta["bias_overflow"][node.name] = int(np.sum(bias_codes != bias_int))
    lw.meta["real_multiplier"][node.name] = (x.scale * w_scales / _GATE_SCALE).tolist()


@_lowers("GRU")
def lower_gru(lw, step):
    node = step.nodes[0]
    _check_profile(lw, node)
    x_name, w_name, r_name, b_name, *states = node.inputs
    hidden = int(node.attrs["hidden_size"])
    x = lw.tensors[lw.need(x_name, (0, 1, 2))]
    y_scale, y_zp = lw.out_params(step.output)
    w, r = (lw.fg.constants[t][0].astype(np.float64) for t in (w_name, r_name))
    b = lw.fg.constants[b_name][0].astype(np.float64)
    bits = lw.profile.weight_bits
    w_codes, w_scales = _symmetric_codes([w[g * hidden:(g + 1) * hidden] for g in range(3)], bits)
    r_codes, r_scales = _symmetric_codes([r[g * hidden:(g + 1) * hidden] for g in range(3)], bits)
    w_bias = b[:3 * hidden].reshape(3, hidden)
    r_bias = b[3 * hidden:].reshape(3, hidden)
    separate = bool(node.attrs["linear_before_reset"])
    input_bias = w_bias + r_bias * np.array([[1.0], [1.0], [0.0 if separate else 1.0]])
    input_codes = np.rint(input_bias / (x.scale * w_scales[:, None]))
    recurrent_codes = np.zeros((3, hidden))
    if separate:
        recurrent_codes[2] = np.rint(r_bias[2] / (y_scale * r_scales[2]))
    bias_input = np.clip(input_codes, -(2**31), 2**31 - 1) - x.zero_point * w_codes.sum(axis=2)
    bias_recurrent = np.clip(recurrent_codes, -(2**31), 2**31 - 1) - y_zp * r_codes.sum(axis=2)
    params = {"weight_input": w_codes.astype(np.int8), "weight_recurrent": r_codes.astype(np.int8),
              "bias_input": np.clip(bias_input, -(2**31), 2**31 - 1).astype(np.int32),
              "bias_recurrent": np.clip(bias_recurrent, -(2**31), 2**31 - 1).astype(np.int32),
              **lw.rescale(x.scale * w_scales / _GATE_SCALE, "input_"),
              **lw.rescale(y_scale * r_scales / _GATE_SCALE, "recurrent_"),
              **lw.rescale(2.0**-30 / y_scale, "hidden_")}
    inputs = [x.name] + [_state(lw, node, s, y_scale, y_zp, "int8") for s in states]
    steps, batch = lw.tensors[x.name].shape[:2]
    y_seq = lw.new_tensor(f"{node.name}/y", step.output, (0, 1, 2, 3), y_scale, y_zp,
                          shape=(steps, batch, hidden), dtype="int8")
    attrs = {"hidden_zero_point": int(y_zp), "linear_before_reset": separate,
             "reverse": node.attrs["direction"] == "reverse"}
    lw.nodes.append(Node("gru", node.name, inputs, [y_seq], attrs, params))
    out = lw.bind(step.output, (0, 1, 2, 3), y_scale, y_zp, dtype="int8")
    lw.nodes.append(Node("reshape", f"{out}/reshape", [y_seq], [out], {"shape": [0, 1, -1, hidden]}))
    lw.meta["weight_scale"][node.name] = [float(s) for s in (*w_scales, *r_scales)]
    lw.meta["bias_overflow"][node.name] = int(np.sum(np.abs(input_codes) > 2**31 - 1))
    lw.meta["real_multiplier"][node.name] = (x.scale * w_scales / _GATE_SCALE).tolist()
