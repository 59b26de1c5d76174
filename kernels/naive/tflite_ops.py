"""Naive twins of :mod:`intsim.kernels.tflite_ops`: same names and signatures, plain loops.

The gemmlowp primitives of :mod:`intsim.fixedpoint` are the numeric contract
itself; the twin spells out the order in which the reference kernel uses them.
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
from intsim.kernels.tflite_ops import SOFTMAX_ACCUMULATION_INTEGER_BITS, SOFTMAX_SCALED_DIFF_INTEGER_BITS


def softmax_gemmlowp_lastaxis(x, input_multiplier, input_left_shift, diff_min, out_dtype):
    info = np.iinfo(out_dtype)
    out_bits = 8 * np.dtype(out_dtype).itemsize
    out = np.empty(x.shape, out_dtype)
    saturated = 0
    for row in range(x.shape[0]):
        codes = [int(v) for v in x[row]]
        diffs = [code - max(codes) for code in codes]
        exps = [
            int(exp_on_negative_values(
                int(multiply_by_quantized_multiplier_scalar(d, input_multiplier, input_left_shift, DOUBLE, 31)),
                SOFTMAX_SCALED_DIFF_INTEGER_BITS,
            )) if d >= diff_min else None
            for d in diffs
        ]
        total = sum(int(rounding_divide_by_pot_scalar(e, SOFTMAX_ACCUMULATION_INTEGER_BITS)) for e in exps if e is not None)
        reciprocal, bits_over_unit = (int(v) for v in get_reciprocal(total, SOFTMAX_ACCUMULATION_INTEGER_BITS))
        for col, e in enumerate(exps):
            if e is None:
                out[row, col] = info.min
                continue
            probability = int(rounding_divide_by_pot_scalar(int(rounding_high_mul(reciprocal, e, 31)),
                                                            bits_over_unit + 31 - out_bits))
            out[row, col] = min(max(probability + info.min, info.min), info.max)
            saturated += int(out[row, col] != probability + info.min)
    return out, saturated
