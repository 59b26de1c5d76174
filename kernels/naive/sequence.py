"""Naive twins of :mod:`intsim.kernels.sequence`: the definitions the fast kernels must match, in Python
integers and plain loops (``math.isqrt`` is the integer square root the fast kernel's Newton iteration
must reproduce)."""

from __future__ import annotations

import math

import numpy as np

from intsim.fixedpoint import rescale_scalar, round_half_away_divide, rounding_divide_by_pot_scalar
from intsim.kernels.sequence import NORMALIZED_BITS, RECIPROCAL_BITS

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def layer_norm_lastaxis(x, x_zero_point, variance_shift, eps_term, gamma_sign, bias, multiplier, shift, rounding,
                        multiplier_bits, out_zero_point, clamp_min, clamp_max, out_dtype):
    rows, width = x.shape
    out = np.empty(x.shape, out_dtype)
    saturated = 0
    for row in range(rows):
        codes = [int(v) - int(x_zero_point) for v in x[row]]
        centred = [width * c - sum(codes) for c in codes]
        variance = sum((c >> int(variance_shift)) ** 2 for c in centred)
        std = math.isqrt((variance + int(eps_term)) // width) << int(variance_shift)
        factor = 2**RECIPROCAL_BITS // max(std, 1)
        for i in range(width):
            q = int(rounding_divide_by_pot_scalar(np.int64(centred[i] * factor), RECIPROCAL_BITS - NORMALIZED_BITS))
            exact = int(gamma_sign[i]) * q + int(bias[i])
            acc = min(max(exact, INT32_MIN), INT32_MAX)
            value = int(rescale_scalar(np.int32(acc), multiplier[i], shift[i], 0.0, rounding, multiplier_bits))
            value += int(out_zero_point)
            out[row, i] = min(max(value, clamp_min), clamp_max)
            saturated += int(out[row, i] != value or acc != exact)
    return out, saturated


def embedding_lookup(table, indices):
    out = np.empty(indices.shape + (table.shape[1],), table.dtype)
    for position in np.ndindex(indices.shape):
        out[position] = table[int(indices[position])]
    return out


def gather_axis(x, indices, axis):
    out = np.empty(x.shape[:axis] + indices.shape + x.shape[axis + 1:], x.dtype)
    for position in np.ndindex(out.shape):
        index = int(indices[position[axis:axis + indices.ndim]])
        source = position[:axis] + (index % x.shape[axis],) + position[axis + indices.ndim:]
        out[position] = x[source]
    return out


def gather_elements(x, indices, axis):
    out = np.empty(indices.shape, x.dtype)
    for position in np.ndindex(indices.shape):
        source = list(position)
        source[axis] = int(indices[position]) % x.shape[axis]
        out[position] = x[tuple(source)]
    return out


def softmax_masked_lastaxis(x, keep, exp_table, out_multiplier, out_shift, rounding, multiplier_bits, out_zero_point,
                            clamp_min, clamp_max, out_dtype):
    rows, columns = x.shape
    out = np.empty(x.shape, out_dtype)
    saturated = 0
    for row in range(rows):
        kept = [col for col in range(columns) if keep[row, col]]
        top = max((int(x[row, col]) for col in kept), default=0)
        exps = {col: int(exp_table[top - int(x[row, col])]) for col in kept}
        total = sum(exps.values())
        for col in range(columns):
            probability = round_half_away_divide(exps[col] * 2**23, total) if col in exps else 0
            value = int(rescale_scalar(np.int32(probability), out_multiplier, out_shift, 0.0, rounding,
                                       multiplier_bits)) + int(out_zero_point)
            out[row, col] = min(max(value, clamp_min), clamp_max)
            saturated += int(out[row, col] != value)
    return out, saturated
