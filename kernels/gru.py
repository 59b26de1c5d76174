"""An integer GRU in the style of LiteRT's fully-integer LSTM (:mod:`intsim.kernels.lstm`): int8 input and
hidden state, int8 weights, int16 Q3.12 gate pre-activations, gemmlowp's int16 sigmoid / tanh.  LiteRT
has no integer GRU kernel; this is intsim's own, with the same building blocks and ONNX's GRU equations.

Shapes: ``x`` int8 ``[T, B, I]``, ``h0`` int8 ``[B, H]``; gates update ``z``, reset ``r``, new ``n``:
``weight_input`` int8 ``[3, H, I]``, ``weight_recurrent`` int8 ``[3, H, H]``, int32 effective biases
``bias_input`` / ``bias_recurrent`` ``[3, H]`` (zero points folded in), multipliers and shifts ``[3]``.

Per step and batch row (``rq`` the profile's integer requantization, ``z_h`` the hidden zero point):

1. ``z, r = logistic_16(sat16(sat16(rq(b_x + W x)) + rq(b_h + R h)), 3)``;
2. with ``linear_before_reset``: ``a = sat16(rq(b_x + W_n x) + rdbpot(r * sat16(rq(b_h + R_n h)), 15))``;
   without: ``a = sat16(rq(b_x + W_n x) + rq(b_h + R_n q))`` where ``q = sat8(z_h + rdbpot(r (h - z_h), 15))``
   is ``r * h`` in the hidden state's format;
3. ``n = tanh_16(a, 3)``;
4. ``h = sat8(z_h + rq((32768 - z) n, m_hidden, s_hidden) + rdbpot(z (h - z_h), 15))``: ``(1 - z) n`` is
   Q0.30 (``m_hidden`` = ``2**-30 / s_h``), ``z (h - z_h)`` stays in the hidden state's codes.

``saturation_count`` counts every clamp that changed a value; ``reverse`` runs from the last step.
"""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import multiply_by_quantized_multiplier_scalar, rounding_divide_by_pot_scalar
from intsim.fixedpoint_int16 import logistic_16, tanh_16
from intsim.jit import jit
from intsim.kernels.lstm import GATE_INTEGER_BITS, clamp, gate_matvec

GATE_UPDATE, GATE_RESET, GATE_NEW = range(3)


@jit
def _gru_core(x, h, weight_input, weight_recurrent, bias_input, bias_recurrent, input_multiplier, input_shift,
              recurrent_multiplier, recurrent_shift, hidden_multiplier, hidden_shift, hidden_zero_point, rounding,
              multiplier_bits, linear_before_reset, reverse, y):
    steps, batch = x.shape[0], x.shape[1]
    hidden = h.shape[1]
    gates = np.empty((2, hidden), np.int64)
    previous = np.empty(hidden, np.int8)
    reset_h = np.empty(hidden, np.int8)
    saturated = 0
    for step in range(steps):
        t = steps - 1 - step if reverse else step
        for b in range(batch):
            previous[:] = h[b]
            for gate in (GATE_UPDATE, GATE_RESET):
                for row in range(hidden):
                    raw = gate_matvec(x[t, b], weight_input, bias_input, gate, row, input_multiplier, input_shift,
                                  rounding, multiplier_bits)
                    value = clamp(raw, -32768, 32767)
                    saturated += value != raw
                    raw = value + gate_matvec(previous, weight_recurrent, bias_recurrent, gate, row,
                                          recurrent_multiplier, recurrent_shift, rounding, multiplier_bits)
                    value = clamp(raw, -32768, 32767)
                    saturated += value != raw
                    gates[gate, row] = logistic_16(value, GATE_INTEGER_BITS)
            if not linear_before_reset:
                for k in range(hidden):
                    raw = hidden_zero_point + rounding_divide_by_pot_scalar(
                        gates[GATE_RESET, k] * (np.int64(previous[k]) - hidden_zero_point), 15)
                    reset_h[k] = clamp(raw, -128, 127)
                    saturated += reset_h[k] != raw
            for row in range(hidden):
                raw = gate_matvec(x[t, b], weight_input, bias_input, GATE_NEW, row, input_multiplier, input_shift,
                              rounding, multiplier_bits)
                value = clamp(raw, -32768, 32767)
                saturated += value != raw
                if linear_before_reset:
                    recurrent = gate_matvec(previous, weight_recurrent, bias_recurrent, GATE_NEW, row,
                                        recurrent_multiplier, recurrent_shift, rounding, multiplier_bits)
                    recurrent_16 = clamp(recurrent, -32768, 32767)
                    saturated += recurrent_16 != recurrent
                    raw = value + rounding_divide_by_pot_scalar(gates[GATE_RESET, row] * recurrent_16, 15)
                else:
                    raw = value + gate_matvec(reset_h, weight_recurrent, bias_recurrent, GATE_NEW, row,
                                          recurrent_multiplier, recurrent_shift, rounding, multiplier_bits)
                value = clamp(raw, -32768, 32767)
                saturated += value != raw
                new = tanh_16(value, GATE_INTEGER_BITS)
                update = gates[GATE_UPDATE, row]
                raw = (hidden_zero_point
                       + multiply_by_quantized_multiplier_scalar((32768 - update) * new, hidden_multiplier,
                                                                 hidden_shift, rounding, multiplier_bits)
                       + rounding_divide_by_pot_scalar(update * (np.int64(previous[row]) - hidden_zero_point), 15))
                value = clamp(raw, -128, 127)
                saturated += value != raw
                h[b, row] = value
                y[t, b, row] = value
    return saturated


def gru_int8(x, h0, weight_input, weight_recurrent, bias_input, bias_recurrent, input_multiplier, input_shift,
             recurrent_multiplier, recurrent_shift, hidden_multiplier, hidden_shift, hidden_zero_point, rounding,
             multiplier_bits, linear_before_reset, reverse):
    """The integer GRU over ``x`` (module docstring): ``(y [T, B, H] int8, saturation_count)``."""
    h = np.array(h0, np.int8, copy=True)
    y = np.empty((x.shape[0], x.shape[1], h.shape[1]), np.int8)
    saturated = _gru_core(np.ascontiguousarray(x, np.int8), h, weight_input, weight_recurrent, bias_input,
                          bias_recurrent, input_multiplier, input_shift, recurrent_multiplier, recurrent_shift,
                          np.int64(hidden_multiplier), np.int64(hidden_shift), np.int64(hidden_zero_point),
                          np.int64(rounding), np.int64(multiplier_bits), bool(linear_before_reset), bool(reverse), y)
    return y, int(saturated)
