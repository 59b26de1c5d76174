"""Naive twins of :mod:`intsim.kernels.elementwise`: the definitions the fast kernels must match.

Same public signatures and return values; written for obviousness (plain
loops over ``np.ndindex``, Python integers) and never for speed.  Integer
requantization calls the scalar primitives of :mod:`intsim.fixedpoint`, the
one definition of each rounding rule.  The float rounding of ADD is done here
in exact rational arithmetic, independently of the fast kernel's primitive.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from intsim.fixedpoint import (
    DOUBLE,
    FLOAT32_RINT,
    INT32_MAX,
    INT32_MIN,
    SINGLE,
    rescale_scalar,
    round_half_away_divide,
    saturate,
)


def _clamp(value, clamp_min, clamp_max):
    """``(clamped value, 1 if it was outside [clamp_min, clamp_max] else 0)``."""
    clamped = min(max(value, clamp_min), clamp_max)
    return clamped, int(clamped != value)


def _round_exactly_to_int32(value, ties_to_even):
    exact = Fraction(float(value))
    if ties_to_even:
        rounded = round(exact)  # Fraction.__round__ rounds ties to even
    else:
        rounded = math.floor(abs(exact) + Fraction(1, 2))
        if exact < 0:
            rounded = -rounded
    return min(max(rounded, INT32_MIN), INT32_MAX)


def add(
    a, a_zero_point, a_multiplier, a_shift, a_scale,
    b, b_zero_point, b_multiplier, b_shift, b_scale,
    left_shift, out_multiplier, out_shift, out_scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype, subtract=False,
):
    out = np.empty(a.shape, out_dtype)
    saturated = 0
    for index in np.ndindex(a.shape):
        a_centered = int(a[index]) - int(a_zero_point)
        b_centered = int(b[index]) - int(b_zero_point)
        inside = True  # no int32 saturation on the way
        if rounding in (DOUBLE, SINGLE):
            a_wide, b_wide = a_centered * 2**left_shift, b_centered * 2**left_shift
            inside = INT32_MIN <= a_wide <= INT32_MAX and INT32_MIN <= b_wide <= INT32_MAX
            a_rescaled = int(rescale_scalar(saturate(a_wide, 32), a_multiplier, a_shift, 0.0, rounding, multiplier_bits))
            b_rescaled = int(rescale_scalar(saturate(b_wide, 32), b_multiplier, b_shift, 0.0, rounding, multiplier_bits))
            total = a_rescaled - b_rescaled if subtract else a_rescaled + b_rescaled
            inside = inside and INT32_MIN <= total <= INT32_MAX
            rescaled = int(rescale_scalar(saturate(total, 32), out_multiplier, out_shift, 0.0, rounding,
                                          multiplier_bits))
        elif rounding == FLOAT32_RINT:
            a_real = np.float32(a_centered) * np.float32(a_scale)
            b_real = np.float32(b_centered) * np.float32(b_scale)
            real = a_real - b_real if subtract else a_real + b_real
            assert real.dtype == np.float32
            rescaled = _round_exactly_to_int32(real, ties_to_even=True)
        else:
            a_real = float(a_centered) * float(a_scale)
            b_real = float(b_centered) * float(b_scale)
            real = a_real - b_real if subtract else a_real + b_real
            rescaled = _round_exactly_to_int32(real, ties_to_even=False)
        out[index], outside = _clamp(rescaled + int(out_zero_point), clamp_min, clamp_max)
        saturated += outside or not inside
    return out, saturated


def add_launcher(
    a_zero_point, a_multiplier, a_shift, a_scale,
    b_zero_point, b_multiplier, b_shift, b_scale,
    left_shift, out_multiplier, out_shift, out_scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype, subtract=False,
):
    def launch(a, b):
        return add(a, a_zero_point, a_multiplier, a_shift, a_scale, b, b_zero_point, b_multiplier, b_shift, b_scale,
                   left_shift, out_multiplier, out_shift, out_scale, rounding, multiplier_bits, out_zero_point,
                   clamp_min, clamp_max, out_dtype, subtract)

    return launch


def _rescale_product(product, multiplier, shift, scale, rounding, multiplier_bits):
    """A product of two centered codes requantized without clipping it to int32 first: exact Python
    integers, each rounding written out (half up, then half away from zero, under DOUBLE)."""
    if rounding not in (DOUBLE, SINGLE):
        return int(rescale_scalar(product, multiplier, shift, scale, rounding, multiplier_bits))
    if INT32_MIN <= product <= INT32_MAX or (rounding == DOUBLE and shift > 0):
        return int(rescale_scalar(saturate(product, 32), multiplier, shift, scale, rounding, multiplier_bits))
    if rounding == SINGLE:
        exact = Fraction(product * int(multiplier), 2 ** (multiplier_bits - int(shift)))
        return int(saturate(math.floor(exact + Fraction(1, 2)), 32))
    high = math.floor(Fraction(product * int(multiplier), 2**multiplier_bits) + Fraction(1, 2))
    quotient = Fraction(high, 2 ** -int(shift))
    rounded = math.floor(abs(quotient) + Fraction(1, 2))
    return int(saturate(-rounded if quotient < 0 else rounded, 32))


def mul(
    a, a_zero_point, b, b_zero_point, out_multiplier, out_shift, out_scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype,
):
    out = np.empty(a.shape, out_dtype)
    saturated = 0
    for index in np.ndindex(a.shape):
        product = (int(a[index]) - int(a_zero_point)) * (int(b[index]) - int(b_zero_point))
        rescaled = _rescale_product(product, out_multiplier, out_shift, out_scale, rounding, multiplier_bits)
        out[index], outside = _clamp(rescaled + int(out_zero_point), clamp_min, clamp_max)
        saturated += outside
    return out, saturated


def _pooled_size(size, kernel, stride, dilation, pad_before, pad_after):
    padded = size + pad_before + pad_after
    window = dilation * (kernel - 1) + 1
    return (padded - window) // stride + 1


def max_pool_nhwc(x, kernel, strides, dilations, pads):
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    top, left, bottom, right = pads
    batch, height, width, channels = x.shape
    out_height = _pooled_size(height, kh, sh, dh, top, bottom)
    out_width = _pooled_size(width, kw, sw, dw, left, right)
    out = np.empty((batch, out_height, out_width, channels), x.dtype)
    for n, oh, ow, c in np.ndindex(out.shape):
        best = int(np.iinfo(x.dtype).min)
        for i in range(kh):
            for j in range(kw):
                ih = oh * sh - top + i * dh
                iw = ow * sw - left + j * dw
                if 0 <= ih < height and 0 <= iw < width:
                    best = max(best, int(x[n, ih, iw, c]))
        out[n, oh, ow, c] = best
    return out


def avg_pool_nhwc(x, x_zero_point, kernel, strides, pads, count_include_pad):
    (kh, kw), (sh, sw) = kernel, strides
    top, left, bottom, right = pads
    batch, height, width, channels = x.shape
    out_height = _pooled_size(height, kh, sh, 1, top, bottom)
    out_width = _pooled_size(width, kw, sw, 1, left, right)
    out = np.empty((batch, out_height, out_width, channels), x.dtype)
    for n, oh, ow, c in np.ndindex(out.shape):
        total = 0
        valid = 0
        padded = 0
        for i in range(kh):
            for j in range(kw):
                ih = oh * sh - top + i
                iw = ow * sw - left + j
                if 0 <= ih < height and 0 <= iw < width:
                    total += int(x[n, ih, iw, c])
                    valid += 1
                else:
                    padded += 1
        if count_include_pad:
            total += padded * int(x_zero_point)
            count = kh * kw
        else:
            count = valid
        out[n, oh, ow, c] = round_half_away_divide(total, count)
    return out


def mean_reduce(
    x, x_zero_point, multiplier, shift, scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype,
):
    outer, reduced, inner = x.shape
    out = np.empty((outer, inner), out_dtype)
    saturated = 0
    for o, k in np.ndindex(outer, inner):
        total = sum(int(x[o, r, k]) - int(x_zero_point) for r in range(reduced))
        rescaled = int(rescale_scalar(saturate(total, 32), multiplier, shift, scale, rounding, multiplier_bits))
        out[o, k], outside = _clamp(rescaled + int(out_zero_point), clamp_min, clamp_max)
        saturated += outside or not INT32_MIN <= total <= INT32_MAX
    return out, saturated


def mean_launcher(
    x_zero_point, multiplier, shift, scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype,
):
    def launch(x):
        return mean_reduce(x, x_zero_point, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                           clamp_min, clamp_max, out_dtype)

    return launch


def pad_constant(x, pads_before, pads_after, value):
    shape = tuple(before + size + after for before, size, after in zip(pads_before, x.shape, pads_after))
    out = np.empty(shape, x.dtype)
    for index in np.ndindex(shape):
        source = tuple(i - before for i, before in zip(index, pads_before))
        if all(0 <= s < size for s, size in zip(source, x.shape)):
            out[index] = x[source]
        else:
            out[index] = value
    return out


def lookup_table(x, table, x_min):
    out = np.empty(x.shape, table.dtype)
    for index in np.ndindex(x.shape):
        out[index] = table[int(x[index]) - int(x_min)]
    return out


def softmax_lastaxis(
    x, exp_table, out_multiplier, out_shift, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype,
):
    rows, columns = x.shape
    out = np.empty(x.shape, out_dtype)
    saturated = 0
    for row in range(rows):
        codes = [int(v) for v in x[row]]
        exps = [int(exp_table[max(codes) - code]) for code in codes]
        total = sum(exps)
        for col in range(columns):
            probability = round_half_away_divide(exps[col] * 2**23, total)
            rescaled = int(rescale_scalar(probability, out_multiplier, out_shift, 0.0, rounding, multiplier_bits))
            out[row, col], outside = _clamp(rescaled + int(out_zero_point), clamp_min, clamp_max)
            saturated += outside
    return out, saturated
