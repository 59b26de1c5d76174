"""Kernels that reproduce LiteRT reference kernels (``BUILTIN_REF``) no other intsim op covers.

Each public function allocates its output and calls a private numba core;
inputs are trusted.  The naive twins live in :mod:`intsim.kernels.naive_tflite_ops`.
"""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import (
    DOUBLE,
    exp_on_negative_values,
    get_reciprocal,
    multiply_by_quantized_multiplier_scalar,
    rounding_divide_by_pot_scalar,
    rounding_high_mul,
)
from intsim.jit import jit

# gemmlowp formats of LiteRT's reference softmax (reference/softmax.h).
SOFTMAX_SCALED_DIFF_INTEGER_BITS = 5  # x - max(x) rescaled to Q5.26
SOFTMAX_ACCUMULATION_INTEGER_BITS = 12  # sum of exps in Q12.19: up to 4096 columns cannot overflow


@jit
def _softmax_gemmlowp_core(x, input_multiplier, input_left_shift, diff_min, out_min, out_max, out_bits, out):
    rows, columns = x.shape
    saturated = 0
    for row in range(rows):
        row_max = np.int64(x[row, 0])
        for col in range(1, columns):
            row_max = max(row_max, np.int64(x[row, col]))
        sum_of_exps = np.int64(0)
        for col in range(columns):
            diff = np.int64(x[row, col]) - row_max
            if diff >= diff_min:
                scaled = multiply_by_quantized_multiplier_scalar(diff, input_multiplier, input_left_shift, DOUBLE, 31)
                exp_q0 = exp_on_negative_values(scaled, SOFTMAX_SCALED_DIFF_INTEGER_BITS)
                sum_of_exps += rounding_divide_by_pot_scalar(exp_q0, SOFTMAX_ACCUMULATION_INTEGER_BITS)
        reciprocal, bits_over_unit = get_reciprocal(sum_of_exps, SOFTMAX_ACCUMULATION_INTEGER_BITS)
        for col in range(columns):
            diff = np.int64(x[row, col]) - row_max
            value = out_min
            if diff >= diff_min:
                scaled = multiply_by_quantized_multiplier_scalar(diff, input_multiplier, input_left_shift, DOUBLE, 31)
                exp_q0 = exp_on_negative_values(scaled, SOFTMAX_SCALED_DIFF_INTEGER_BITS)
                probability = rounding_divide_by_pot_scalar(
                    rounding_high_mul(reciprocal, exp_q0, 31), bits_over_unit + 31 - out_bits
                )
                value = min(max(probability + out_min, out_min), out_max)
                saturated += value != probability + out_min  # a probability of 1 is 2**bits codes: clamped
            out[row, col] = value
    return saturated


def softmax_gemmlowp_lastaxis(x, input_multiplier, input_left_shift, diff_min, out_dtype):
    """LiteRT reference int8/uint8 softmax over the last axis of ``x`` [rows, C] (reference/softmax.h).

    ``d = x - max_row(x)``; where ``d >= diff_min``, ``d`` is rescaled to Q5.26 by
    ``input_multiplier * 2**input_left_shift`` (beta times the input scale) and
    ``exp`` is gemmlowp's ``exp_on_negative_values``; the exps are summed in
    Q12.19, the sum inverted by ``GetReciprocal`` and each probability
    rounded to the output's ``2**-bits`` scale, offset by the dtype minimum
    (output zero point) and clamped.  Where ``d < diff_min`` the output is the
    dtype minimum (probability 0).

    Returns
    -------
    out : array of ``out_dtype``, [rows, C]
    saturation_count : int
        Outputs the clamp changed (a probability that rounds to 1).
    """
    out = np.empty(x.shape, out_dtype)
    info = np.iinfo(out_dtype)
    saturated = _softmax_gemmlowp_core(np.ascontiguousarray(x), int(input_multiplier), int(input_left_shift), int(diff_min),
                           int(info.min), int(info.max), 8 * np.dtype(out_dtype).itemsize, out)
    return out, int(saturated)
