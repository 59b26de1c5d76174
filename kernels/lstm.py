"""The integer LSTM of LiteRT's fully-integer UNIDIRECTIONAL_SEQUENCE_LSTM (the "8x8_16" kernel:
``lstm_eval.cc`` ``LstmStepInteger8x8_16`` with ``portable_tensor_utils.cc``), over a whole sequence.

Shapes: ``x`` int8 ``[T, B, I]`` (time major), ``h0`` int8 ``[B, C]``, ``c0`` int16 ``[B, C]``; the
weights of the four gates in the order input, forget, cell, output: ``weight_input`` int8 ``[4, C, I]``,
``weight_recurrent`` int8 ``[4, C, C]``, int32 ``bias_input`` / ``bias_recurrent`` ``[4, C]`` (the
*effective* biases: the gate bias plus ``-z_x`` times each weight row's sum, and ``-z_h`` times each
recurrent row's sum), ``peephole`` int16 ``[3, C]`` (input, forget, output).  One multiplier and shift
per gate and matrix (``*_multiplier`` / ``*_shift``, int32 ``[4]`` or ``[3]``; positive shift = left).

Per time step and batch row, with ``rq(acc, m, s)`` the profile's integer requantization
(:func:`intsim.fixedpoint.multiply_by_quantized_multiplier_scalar`):

1. gate pre-activation, int16 in Q3.12 (scale 2**-12):
   ``g = sat16(rq(bias_input + W x, m_x, s_x))``, ``g = sat16(g + rq(bias_recurrent + R h, m_h, s_h))``
   and, with peepholes, ``g = sat16(g + rq(p * c, m_c, s_c))`` (the output gate reads the new cell);
   the int32 sums wrap (C's int32 arithmetic; ``|W x| <= I * 128 * 128`` stays far inside int32);
2. ``i, f, o = logistic_16(g, 3)``, ``z = tanh_16(g, 3)`` (Q0.15; with CIFG ``i = 32767 - f``);
3. ``c = wrap16(rdbpot(f c, 15))``; ``c = sat16(c + wrap16(rdbpot(i z, 30 + cell_shift)))``, clipped to
   ``±cell_clip`` when ``cell_clip > 0`` (the cell state's scale is ``2**cell_shift``, -15 <= cell_shift <= -9);
4. ``h = sat8(rq(o * tanh_16(c, 15 + cell_shift), m_hidden, s_hidden) + hidden_zero_point)`` (LiteRT's
   ``CwiseMul``, as ai-edge-litert 2.3.0 computes it: some TensorFlow sources subtract the zero point
   there); without projection ``h`` is the output.

``saturation_count`` counts every clamp that changed a value (gate, cell and hidden saturations).
``reverse`` runs the sequence from its last step to its first (ONNX's reverse direction); ``y[t]`` is
always the state after reading ``x[t]``.
"""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import multiply_by_quantized_multiplier_scalar, rounding_divide_by_pot_scalar, wrap
from intsim.fixedpoint_int16 import logistic_16, tanh_16
from intsim.jit import jit

GATE_INPUT, GATE_FORGET, GATE_CELL, GATE_OUTPUT = range(4)
PEEPHOLE_INPUT, PEEPHOLE_FORGET, PEEPHOLE_OUTPUT = range(3)
# Q3.12: the scale LiteRT's integer LSTM gives every gate pre-activation (without layer normalization).
GATE_INTEGER_BITS = 3
MIN_CELL_SHIFT, MAX_CELL_SHIFT = -15, -9


@jit
def clamp(value, lo, hi):
    """``value`` limited to ``[lo, hi]``."""
    return min(max(value, lo), hi)


@jit
def gate_matvec(vector, weights, bias, gate, row, multiplier, shift, rounding, multiplier_bits):
    """``rq(bias + weights[gate, row] . vector)`` for one gate and row: the int32 sum wraps as C's does
    (LiteRT's ``MatrixBatchVectorMultiplyAccumulate``; ``|W v| <= n 128 128`` stays far inside int32)."""
    acc = np.int64(bias[gate, row])
    for k in range(vector.shape[0]):
        acc += np.int64(vector[k]) * np.int64(weights[gate, row, k])
    return multiply_by_quantized_multiplier_scalar(wrap(acc, 32), multiplier[gate], shift[gate], rounding,
                                                   multiplier_bits)


@jit
def _preactivation(x, h, c, weight_input, weight_recurrent, bias_input, bias_recurrent, peephole, gate, peep, row,
                   input_multiplier, input_shift, recurrent_multiplier, recurrent_shift, peephole_multiplier,
                   peephole_shift, rounding, multiplier_bits, use_peephole):
    """One gate's int16 pre-activation for one cell, and how many of its three sums saturated."""
    raw = gate_matvec(x, weight_input, bias_input, gate, row, input_multiplier, input_shift, rounding,
                      multiplier_bits)
    value = clamp(raw, -32768, 32767)
    saturated = np.int64(value != raw)
    raw = value + gate_matvec(h, weight_recurrent, bias_recurrent, gate, row, recurrent_multiplier, recurrent_shift,
                              rounding, multiplier_bits)
    value = clamp(raw, -32768, 32767)
    saturated += value != raw
    if use_peephole and peep >= 0:
        product = np.int64(peephole[peep, row]) * np.int64(c[row])
        raw = value + multiply_by_quantized_multiplier_scalar(product, peephole_multiplier[peep],
                                                              peephole_shift[peep], rounding, multiplier_bits)
        value = clamp(raw, -32768, 32767)
        saturated += value != raw
    return value, saturated


@jit
def _lstm_core(x, h, c, weight_input, weight_recurrent, bias_input, bias_recurrent, peephole, input_multiplier,
               input_shift, recurrent_multiplier, recurrent_shift, peephole_multiplier, peephole_shift,
               hidden_multiplier, hidden_shift, hidden_zero_point, rounding, multiplier_bits, cell_shift, cell_clip,
               use_cifg, use_peephole, reverse, y, cells_out):
    steps, batch = x.shape[0], x.shape[1]
    cells = c.shape[1]
    gates = np.empty((4, cells), np.int64)
    h_previous = np.empty(cells, np.int8)
    saturated = 0
    for step in range(steps):
        t = steps - 1 - step if reverse else step
        for b in range(batch):
            h_previous[:] = h[b]
            for row in range(cells):
                for gate, peep in ((GATE_INPUT, PEEPHOLE_INPUT), (GATE_FORGET, PEEPHOLE_FORGET), (GATE_CELL, -1)):
                    if gate == GATE_INPUT and use_cifg:
                        continue
                    value, count = _preactivation(x[t, b], h_previous, c[b], weight_input, weight_recurrent,
                                                  bias_input, bias_recurrent, peephole, gate, peep, row,
                                                  input_multiplier, input_shift, recurrent_multiplier,
                                                  recurrent_shift, peephole_multiplier, peephole_shift, rounding,
                                                  multiplier_bits, use_peephole)
                    saturated += count
                    gates[gate, row] = (tanh_16(value, GATE_INTEGER_BITS) if gate == GATE_CELL
                                        else logistic_16(value, GATE_INTEGER_BITS))
            for row in range(cells):
                forget = gates[GATE_FORGET, row]
                admit = 32767 - forget if use_cifg else gates[GATE_INPUT, row]
                kept = wrap(rounding_divide_by_pot_scalar(forget * np.int64(c[b, row]), 15), 16)
                added = wrap(rounding_divide_by_pot_scalar(admit * gates[GATE_CELL, row], 30 + cell_shift), 16)
                value = clamp(kept + added, -32768, 32767)
                saturated += value != kept + added
                if cell_clip > 0:
                    value = clamp(value, -cell_clip, cell_clip)
                c[b, row] = value
                cells_out[t, b, row] = value
            for row in range(cells):
                value, count = _preactivation(x[t, b], h_previous, c[b], weight_input, weight_recurrent, bias_input,
                                              bias_recurrent, peephole, GATE_OUTPUT, PEEPHOLE_OUTPUT, row,
                                              input_multiplier, input_shift, recurrent_multiplier, recurrent_shift,
                                              peephole_multiplier, peephole_shift, rounding, multiplier_bits,
                                              use_peephole)
                saturated += count
                output = logistic_16(value, GATE_INTEGER_BITS)
                squashed = tanh_16(c[b, row], 15 + cell_shift)
                raw = multiply_by_quantized_multiplier_scalar(output * squashed, hidden_multiplier, hidden_shift,
                                                              rounding, multiplier_bits) + hidden_zero_point
                value = clamp(raw, -128, 127)
                saturated += value != raw
                h[b, row] = value
                y[t, b, row] = value
    return saturated


def lstm_int8(x, h0, c0, weight_input, weight_recurrent, bias_input, bias_recurrent, peephole, input_multiplier,
              input_shift, recurrent_multiplier, recurrent_shift, peephole_multiplier, peephole_shift,
              hidden_multiplier, hidden_shift, hidden_zero_point, rounding, multiplier_bits, cell_shift, cell_clip,
              use_cifg, use_peephole, reverse):
    """The integer LSTM over ``x`` (module docstring): ``(y [T, B, C] int8, cells [T, B, C] int16,
    saturation_count)``, the hidden and the cell state after every step."""
    h = np.array(h0, np.int8, copy=True)
    c = np.array(c0, np.int16, copy=True)
    y = np.empty((x.shape[0], x.shape[1], h.shape[1]), np.int8)
    cells = np.empty((x.shape[0], x.shape[1], h.shape[1]), np.int16)
    saturated = _lstm_core(np.ascontiguousarray(x, np.int8), h, c, weight_input, weight_recurrent, bias_input,
                           bias_recurrent, peephole, input_multiplier, input_shift, recurrent_multiplier,
                           recurrent_shift, peephole_multiplier, peephole_shift, np.int64(hidden_multiplier),
                           np.int64(hidden_shift), np.int64(hidden_zero_point), np.int64(rounding),
                           np.int64(multiplier_bits), np.int64(cell_shift), np.int64(cell_clip), bool(use_cifg),
                           bool(use_peephole), bool(reverse), y, cells)
    return y, cells, int(saturated)
