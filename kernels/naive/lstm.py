"""Naive twin of :mod:`intsim.kernels.lstm`: LiteRT's integer LSTM step by step, one helper per
``portable_tensor_utils`` routine it calls, in Python integers."""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import multiply_by_quantized_multiplier_scalar, rounding_divide_by_pot_scalar, wrap
from intsim.fixedpoint_int16 import logistic_16, tanh_16
from intsim.kernels.lstm import (GATE_CELL, GATE_FORGET, GATE_INPUT, GATE_INTEGER_BITS, GATE_OUTPUT, PEEPHOLE_FORGET,
                                  PEEPHOLE_INPUT, PEEPHOLE_OUTPUT)


class _Count:
    def __init__(self):
        self.saturated = 0

    def clamp(self, value, lo, hi):
        clamped = min(max(value, lo), hi)
        self.saturated += clamped != value
        return clamped


def _requantize(acc, multiplier, shift, rounding, multiplier_bits):
    return int(multiply_by_quantized_multiplier_scalar(np.int64(acc), int(multiplier), int(shift), rounding,
                                                       multiplier_bits))


def _matrix_accumulate(count, gate_row, vector, weights, bias, multiplier, shift, rounding, multiplier_bits):
    """``MatrixBatchVectorMultiplyAccumulate`` (int16 output): ``sat16(gate + rq(bias + W v))``, int32 wrapping."""
    out = []
    for r, previous in enumerate(gate_row):
        acc = int(wrap(int(bias[r]) + sum(int(a) * int(w) for a, w in zip(vector, weights[r])), 32))
        out.append(count.clamp(previous + _requantize(acc, multiplier, shift, rounding, multiplier_bits), -32768,
                               32767))
    return out


def _gate(count, x, h, c, gate, peep, args, activation):
    (weight_input, weight_recurrent, bias_input, bias_recurrent, peephole, input_multiplier, input_shift,
     recurrent_multiplier, recurrent_shift, peephole_multiplier, peephole_shift, rounding, multiplier_bits,
     use_peephole) = args
    value = [0] * len(c)
    value = _matrix_accumulate(count, value, x, weight_input[gate], bias_input[gate], input_multiplier[gate],
                               input_shift[gate], rounding, multiplier_bits)
    value = _matrix_accumulate(count, value, h, weight_recurrent[gate], bias_recurrent[gate],
                               recurrent_multiplier[gate], recurrent_shift[gate], rounding, multiplier_bits)
    if use_peephole and peep is not None:
        value = [count.clamp(v + _requantize(int(p) * int(s), peephole_multiplier[peep], peephole_shift[peep],
                                             rounding, multiplier_bits), -32768, 32767)
                 for v, p, s in zip(value, peephole[peep], c)]
    return [int(activation(v, GATE_INTEGER_BITS)) for v in value]


def lstm_int8(x, h0, c0, weight_input, weight_recurrent, bias_input, bias_recurrent, peephole, input_multiplier,
              input_shift, recurrent_multiplier, recurrent_shift, peephole_multiplier, peephole_shift,
              hidden_multiplier, hidden_shift, hidden_zero_point, rounding, multiplier_bits, cell_shift, cell_clip,
              use_cifg, use_peephole, reverse):
    count = _Count()
    args = (weight_input, weight_recurrent, bias_input, bias_recurrent, peephole, input_multiplier, input_shift,
            recurrent_multiplier, recurrent_shift, peephole_multiplier, peephole_shift, rounding, multiplier_bits,
            use_peephole)
    steps, batch = x.shape[:2]
    h = [[int(v) for v in row] for row in h0]
    c = [[int(v) for v in row] for row in c0]
    y = np.empty((steps, batch, len(h[0])), np.int8)
    cells = np.empty((steps, batch, len(h[0])), np.int16)
    for t in (reversed(range(steps)) if reverse else range(steps)):
        for b in range(batch):
            forget = _gate(count, x[t, b], h[b], c[b], GATE_FORGET, PEEPHOLE_FORGET, args, logistic_16)
            cell_gate = _gate(count, x[t, b], h[b], c[b], GATE_CELL, None, args, tanh_16)
            admit = ([32767 - f for f in forget] if use_cifg
                     else _gate(count, x[t, b], h[b], c[b], GATE_INPUT, PEEPHOLE_INPUT, args, logistic_16))
            new_c = []
            for f, i, z, old in zip(forget, admit, cell_gate, c[b]):
                kept = int(wrap(rounding_divide_by_pot_scalar(np.int64(f * old), 15), 16))
                added = int(wrap(rounding_divide_by_pot_scalar(np.int64(i * z), 30 + int(cell_shift)), 16))
                value = count.clamp(kept + added, -32768, 32767)
                new_c.append(min(max(value, -cell_clip), cell_clip) if cell_clip > 0 else value)
            c[b] = new_c
            cells[t, b] = new_c
            output = _gate(count, x[t, b], h[b], c[b], GATE_OUTPUT, PEEPHOLE_OUTPUT, args, logistic_16)
            h[b] = [count.clamp(_requantize(o * int(tanh_16(s, 15 + int(cell_shift))), hidden_multiplier,
                                            hidden_shift, rounding, multiplier_bits) + int(hidden_zero_point),
                                -128, 127)
                    for o, s in zip(output, c[b])]
            y[t, b] = h[b]
    return y, cells, count.saturated
