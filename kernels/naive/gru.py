"""Naive twin of :mod:`intsim.kernels.gru`: the integer GRU step by step, whole vectors at a time, in
Python integers."""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import multiply_by_quantized_multiplier_scalar, rounding_divide_by_pot_scalar, wrap
from intsim.fixedpoint_int16 import logistic_16, tanh_16
from intsim.kernels.lstm import GATE_INTEGER_BITS


def gru_int8(x, h0, weight_input, weight_recurrent, bias_input, bias_recurrent, input_multiplier, input_shift,
             recurrent_multiplier, recurrent_shift, hidden_multiplier, hidden_shift, hidden_zero_point, rounding,
             multiplier_bits, linear_before_reset, reverse):
    saturated = 0

    def clamp(value, lo, hi):
        nonlocal saturated
        clamped = min(max(value, lo), hi)
        saturated += clamped != value
        return clamped

    def rq(acc, multiplier, shift):
        return int(multiply_by_quantized_multiplier_scalar(np.int64(acc), int(multiplier), int(shift), rounding,
                                                           multiplier_bits))

    def matvec(vector, weights, bias, multiplier, shift):
        return [rq(int(wrap(int(bias[r]) + sum(int(a) * int(w) for a, w in zip(vector, weights[r])), 32)),
                   multiplier, shift) for r in range(len(bias))]

    def rdbpot(value, exponent):
        return int(rounding_divide_by_pot_scalar(np.int64(value), exponent))

    zh = int(hidden_zero_point)
    steps, batch = x.shape[:2]
    h = [[int(v) for v in row] for row in h0]
    y = np.empty((steps, batch, len(h[0])), np.int8)
    for t in (reversed(range(steps)) if reverse else range(steps)):
        for b in range(batch):
            gates = []
            for g in (0, 1):
                from_x = [clamp(v, -32768, 32767) for v in matvec(x[t, b], weight_input[g], bias_input[g],
                                                                  input_multiplier[g], input_shift[g])]
                from_h = matvec(h[b], weight_recurrent[g], bias_recurrent[g], recurrent_multiplier[g],
                                recurrent_shift[g])
                gates.append([int(logistic_16(clamp(a + c, -32768, 32767), GATE_INTEGER_BITS))
                              for a, c in zip(from_x, from_h)])
            update, reset = gates
            from_x = [clamp(v, -32768, 32767) for v in matvec(x[t, b], weight_input[2], bias_input[2],
                                                              input_multiplier[2], input_shift[2])]
            if linear_before_reset:
                from_h = [clamp(v, -32768, 32767) for v in matvec(h[b], weight_recurrent[2], bias_recurrent[2],
                                                                  recurrent_multiplier[2], recurrent_shift[2])]
                pre = [a + rdbpot(r * c, 15) for a, r, c in zip(from_x, reset, from_h)]
            else:
                reset_h = [clamp(zh + rdbpot(r * (v - zh), 15), -128, 127) for r, v in zip(reset, h[b])]
                from_h = matvec(reset_h, weight_recurrent[2], bias_recurrent[2], recurrent_multiplier[2],
                                recurrent_shift[2])
                pre = [a + c for a, c in zip(from_x, from_h)]
            new = [int(tanh_16(clamp(v, -32768, 32767), GATE_INTEGER_BITS)) for v in pre]
            h[b] = [clamp(zh + rq((32768 - z) * n, hidden_multiplier, hidden_shift) + rdbpot(z * (v - zh), 15),
                          -128, 127)
                    for z, n, v in zip(update, new, h[b])]
            y[t, b] = h[b]
    return y, saturated
