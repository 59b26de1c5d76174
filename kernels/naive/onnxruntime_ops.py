"""Naive twins of :mod:`intsim.kernels.onnxruntime_ops`: same names and signatures, plain loops.

The fused multiply-add is done here in exact rational arithmetic, rounded once
to float32 (:func:`fma_float32`); :func:`fma_float32_two_sum` is a second,
vectorised reference built from float64 operations.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from intsim.fixedpoint import FLOAT32_RINT, saturating_round_float


def round_to_float32(exact: Fraction) -> np.float32:
    """``exact`` rounded once to float32, ties to even."""
    guess = np.float32(float(exact))  # at most one float32 step away
    best = None
    for candidate in (np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))):
        error = abs(Fraction(float(candidate)) - exact)
        if best is None or error < best[0] or (error == best[0] and (candidate.view(np.int32) & 1) == 0):
            best = (error, candidate)
    return np.float32(best[1])


def fma_float32(x, y, z) -> np.float32:
    """float32 fused multiply-add: ``x * y + z`` rounded once (``vfmadd`` on x86)."""
    return round_to_float32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))


def fma_float32_two_sum(x, y, z) -> np.ndarray:
    """float32 fused multiply-add of float32 arrays, emulated in float64 (a second reference).

    The product is exact in float64 (24 + 24 significant bits <= 53).  The
    float64 sum ``s = x*y + z`` may round; rounding twice (to float64, then
    float32) differs from rounding once only when ``s`` lands exactly on a
    float32 midpoint.  The rounding error of ``s``, recovered exactly by Knuth's
    TwoSum, then says on which side of the midpoint the exact sum lies, and
    that side is taken.  Exact for all finite operands whose sum does not
    overflow; vectorised, so tests can check many elements at once.
    """
    product = np.asarray(x, np.float64) * np.asarray(y, np.float64)
    addend = np.asarray(z, np.float64)
    total = product + addend
    addend_part = total - product
    error = (product - (total - addend_part)) + (addend - addend_part)  # total + error == product + addend
    nearest = total.astype(np.float32).astype(np.float64)
    other = 2.0 * total - nearest
    # total is a float32 midpoint iff the mirror image of its nearest float32 is a float32 too.
    with np.errstate(over="ignore"):
        midpoint = other.astype(np.float32).astype(np.float64) == other
    take_other = (error != 0.0) & (nearest != total) & midpoint & ((other - total) * error > 0.0)
    return np.where(take_other, other, nearest).astype(np.float32)


def add_float32_fma(a, b, a_ratio, b_ratio, offset, clamp_min, clamp_max, out_dtype):
    out = np.empty(a.shape, out_dtype)
    saturated = 0
    for index in np.ndindex(a.shape):
        inner = fma_float32(int(b[index]), np.float32(b_ratio), np.float32(offset))
        value = int(saturating_round_float(fma_float32(int(a[index]), np.float32(a_ratio), inner), FLOAT32_RINT))
        clamped = min(max(value, clamp_min), clamp_max)
        saturated += int(clamped != value)
        out[index] = clamped
    return out, saturated


def _round_and_clamp(value: np.float32, clamp_min: int, clamp_max: int) -> tuple[int, bool]:
    rounded = int(saturating_round_float(np.float32(value), FLOAT32_RINT))
    clamped = min(max(rounded, clamp_min), clamp_max)
    return clamped, clamped != rounded


def mul_float32(a, a_zero_point, b, b_zero_point, ratio, out_zero_point, clamp_min, clamp_max, out_dtype):
    out = np.empty(a.shape, out_dtype)
    saturated = 0
    for index in np.ndindex(a.shape):
        product = (int(a[index]) - int(a_zero_point)) * (int(b[index]) - int(b_zero_point))
        scaled = np.float32(product) * np.float32(ratio)
        out[index], clipped = _round_and_clamp(scaled + np.float32(out_zero_point), clamp_min, clamp_max)
        saturated += clipped
    return out, saturated


def avg_pool_float32_nhwc(x, x_zero_point, x_scale, kernel, strides, pads, count_include_pad, y_scale,
                          y_zero_point, clamp_min, clamp_max, out_dtype):
    n_batch, height, width, channels = x.shape
    (kernel_h, kernel_w), (sh, sw), (top, left, bottom, right) = kernel, strides, pads
    out_h = (height + top + bottom - kernel_h) // sh + 1
    out_w = (width + left + right - kernel_w) // sw + 1
    out = np.empty((n_batch, out_h, out_w, channels), out_dtype)
    saturated = 0
    for n, oh, ow, c in np.ndindex(out.shape):
        rows = range(max(oh * sh - top, 0), min(oh * sh - top + kernel_h, height))
        cols = range(max(ow * sw - left, 0), min(ow * sw - left + kernel_w, width))
        total = np.float32(0.0)
        for h in rows:
            for w in cols:
                total = total + np.float32(x_scale) * np.float32(int(x[n, h, w, c]) - int(x_zero_point))
        count = kernel_h * kernel_w if count_include_pad else len(rows) * len(cols)
        mean = total / np.float32(count)
        out[n, oh, ow, c], clipped = _round_and_clamp(mean / np.float32(y_scale) + np.float32(y_zero_point),
                                                      clamp_min, clamp_max)
        saturated += clipped
    return out, saturated


def softmax_qlinear(x, table, y_multiplier, out_zero_point, clamp_min, clamp_max, out_dtype):
    out = np.empty(x.shape, out_dtype)
    saturated = 0
    for r in range(x.shape[0]):
        row = [int(v) for v in x[r]]
        entries = [np.float32(table[v - max(row) + 255]) for v in row]
        total = np.float32(0.0)
        for entry in entries:
            total = np.float32(total + entry)
        for i, entry in enumerate(entries):
            share = np.float32(np.float32(entry * np.float32(y_multiplier)) / total)
            value = int(np.rint(share)) + int(out_zero_point)
            out[r, i] = min(max(value, clamp_min), clamp_max)
            saturated += out[r, i] != value
    return out, saturated
