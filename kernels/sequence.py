"""Kernels of sequence models on integer tensors: embedding lookup, index gathers (``gather_axis``,
``gather_elements``), integer layer normalization and the masked softmax.

Each public function allocates its output and calls a private numba core; inputs are trusted (the
graph's ops validate at the edge).  The naive twins in :mod:`intsim.kernels.naive.sequence` define what
every function here must compute, bit for bit.

Layer normalization, integer only (after I-BERT, Kim et al. 2021, §3.4), per row of ``D`` codes:

1. ``c_i = D (x_i - z_x) - sum_j (x_j - z_x)``: ``D`` times the deviation from the mean, exact;
2. ``V = sum_i (c_i >> k)^2`` (int64; ``k = variance_shift`` keeps it below 2**62, chosen by the converter);
3. ``std = isqrt((V + eps_term) // D) << k``, the integer square root found by Newton's iteration:
   ``std ~ D sigma`` in input codes (``eps_term = D^3 epsilon / (s_x^2 4^k)``);
4. ``factor = 2**40 // max(std, 1)``, one division per row; ``q_i = round(c_i factor / 2**24)``, the
   normalized value in Q16 (``|q_i| <= 2**16 sqrt(D)``; ``|c_i| factor <= 2**40 sqrt(D)`` fits int64);
5. ``acc_i = sign(gamma_i) q_i + bias_i`` (saturated to int32; ``bias_i = beta_i 2**16 / |gamma_i|``),
   requantized per channel by ``|gamma_i| 2**-16 / s_y``, plus the output zero point, clamped; an output
   the int32 saturation or the clamp changed counts once in ``saturation_count``.
"""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import rescale_scalar, round_half_away_divide, rounding_divide_by_pot_scalar
from intsim.jit import jit

# The reciprocal of the standard deviation is 2**RECIPROCAL_BITS // std; q is Q(NORMALIZED_BITS).
RECIPROCAL_BITS = 40
NORMALIZED_BITS = 16


@jit
def _bit_length(n):
    bits = 0
    while n > 0:
        n >>= 1
        bits += 1
    return bits


@jit
def _isqrt_newton(n):
    """``floor(sqrt(n))`` for ``n >= 0``: Newton's iteration from a power of two at or above the root,
    which decreases monotonically to the floor root and stops when it no longer decreases."""
    if n < 2:
        return n
    x = np.int64(1) << ((_bit_length(n) + 1) // 2)
    while True:
        y = (x + n // x) >> 1
        if y >= x:
            return x
        x = y


@jit
def _layer_norm_core(x, x_zero_point, variance_shift, eps_term, gamma_sign, bias, multiplier, shift, rounding,
                     multiplier_bits, out_zero_point, clamp_min, clamp_max, out):
    rows, width = x.shape
    centred = np.empty(width, np.int64)
    saturated = 0
    for row in range(rows):
        total = np.int64(0)
        for i in range(width):
            total += np.int64(x[row, i]) - x_zero_point
        variance = np.int64(0)
        for i in range(width):
            c = np.int64(width) * (np.int64(x[row, i]) - x_zero_point) - total
            centred[i] = c
            reduced = c >> variance_shift
            variance += reduced * reduced
        std = _isqrt_newton((variance + eps_term) // width) << variance_shift
        factor = (np.int64(1) << RECIPROCAL_BITS) // max(std, np.int64(1))
        for i in range(width):
            q = rounding_divide_by_pot_scalar(centred[i] * factor, RECIPROCAL_BITS - NORMALIZED_BITS)
            exact = np.int64(gamma_sign[i]) * q + np.int64(bias[i])
            acc = min(max(exact, np.int64(-2147483648)), np.int64(2147483647))
            value = rescale_scalar(np.int32(acc), multiplier[i], shift[i], 0.0, rounding, multiplier_bits)
            value += out_zero_point
            clamped = min(max(value, clamp_min), clamp_max)
            if clamped != value or acc != exact:
                saturated += 1
            out[row, i] = clamped
    return saturated


def layer_norm_lastaxis(x, x_zero_point, variance_shift, eps_term, gamma_sign, bias, multiplier, shift, rounding,
                        multiplier_bits, out_zero_point, clamp_min, clamp_max, out_dtype):
    """Integer layer normalization over the last axis of ``x`` [rows, D] (module docstring).

    ``gamma_sign`` (int8, -1 / 0 / 1), ``bias`` (int32), ``multiplier`` and ``shift`` (int32) have one entry
    per channel; ``rounding`` is an integer rounding-mode code.

    Returns
    -------
    out : array of ``out_dtype``, [rows, D]
    saturation_count : int
    """
    out = np.empty(x.shape, out_dtype)
    saturated = _layer_norm_core(
        np.ascontiguousarray(x), np.int64(x_zero_point), np.int64(variance_shift), np.int64(eps_term),
        np.asarray(gamma_sign, np.int8), np.asarray(bias, np.int32), np.asarray(multiplier, np.int32),
        np.asarray(shift, np.int32), int(rounding), int(multiplier_bits), int(out_zero_point), int(clamp_min),
        int(clamp_max), out)
    return out, int(saturated)


@jit
def _embedding_core(table, indices, out):
    rows = table.shape[0]
    for i in range(indices.size):
        index = indices[i]
        if index < 0:
            index += rows
        out[i, :] = table[index, :]


def embedding_lookup(table, indices):
    """``table[indices]``: rows of a [V, D] code table by int32 index (negative from the end; indices
    are checked by the op).  Returns ``indices.shape + (D,)`` of ``table.dtype``."""
    flat = np.ascontiguousarray(indices, np.int64).reshape(-1)
    out = np.empty((flat.size, table.shape[1]), table.dtype)
    _embedding_core(np.ascontiguousarray(table), flat, out)
    return out.reshape(indices.shape + (table.shape[1],))


@jit
def _gather_core(x, indices, out):
    outer, size, inner = x.shape
    for o in range(outer):
        for j in range(indices.size):
            index = indices[j]
            if index < 0:
                index += size
            out[o, j, :] = x[o, index, :]


def gather_axis(x, indices, axis):
    """``np.take(x, indices, axis)`` for constant int64 ``indices`` (negative from the end)."""
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    flat = np.ascontiguousarray(indices, np.int64).reshape(-1)
    out = np.empty((outer, flat.size, inner), x.dtype)
    _gather_core(np.ascontiguousarray(x).reshape(outer, x.shape[axis], inner), flat, out)
    return out.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


@jit
def _gather_elements_core(x, indices, out):
    outer, size, inner = x.shape
    for o in range(outer):
        for j in range(indices.shape[1]):
            for k in range(inner):
                index = indices[o, j, k]
                if index < 0:
                    index += size
                out[o, j, k] = x[o, index, k]


def gather_elements(x, indices, axis):
    """ONNX GatherElements: ``out[..., j, ...] = x[..., indices[..., j, ...], ...]`` along ``axis``, the other
    coordinates shared; ``indices`` (int64, negative from the end) has ``x``'s rank, each axis but ``axis`` at
    most ``x``'s, and gives the output's shape.  Codes move unchanged: the output is quantized like ``x``."""
    window = tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(indices.shape))
    part = np.ascontiguousarray(x[window])
    outer = int(np.prod(indices.shape[:axis], dtype=np.int64))
    inner = int(np.prod(indices.shape[axis + 1:], dtype=np.int64))
    out = np.empty(indices.shape, x.dtype)
    if out.size:
        _gather_elements_core(part.reshape(outer, x.shape[axis], inner),
                              np.ascontiguousarray(indices, np.int64).reshape(outer, indices.shape[axis], inner),
                              out.reshape(outer, indices.shape[axis], inner))
    return out


@jit
def _masked_softmax_core(x, keep, exp_table, out_multiplier, out_shift, rounding, multiplier_bits, out_zero_point,
                         clamp_min, clamp_max, out):
    rows, columns = x.shape
    one = np.int64(1) << 23
    saturated = 0
    for row in range(rows):
        row_max = np.int64(-(2**31))
        for col in range(columns):
            if keep[row, col]:
                row_max = max(row_max, np.int64(x[row, col]))
        total = np.int64(0)
        for col in range(columns):
            if keep[row, col]:
                total += exp_table[row_max - x[row, col]]
        for col in range(columns):
            probability = np.int64(0)
            if keep[row, col]:
                probability = round_half_away_divide(exp_table[row_max - x[row, col]] * one, total)
            value = rescale_scalar(np.int32(probability), out_multiplier, out_shift, 0.0, rounding,
                                   multiplier_bits) + out_zero_point
            clamped = min(max(value, clamp_min), clamp_max)
            if clamped != value:
                saturated += 1
            out[row, col] = clamped
    return saturated


def softmax_masked_lastaxis(x, keep, exp_table, out_multiplier, out_shift, rounding, multiplier_bits, out_zero_point,
                            clamp_min, clamp_max, out_dtype):
    """The integer softmax of :func:`intsim.kernels.softmax_lastaxis` over the positions of each row of
    ``x`` [rows, C] where ``keep`` (bool, same shape) is true; the others get probability 0 (the output
    zero point plus the rescaled 0), and so does every position of a row with none kept.

    Returns
    -------
    out : array of ``out_dtype``, [rows, C]
    saturation_count : int
    """
    out = np.empty(x.shape, out_dtype)
    saturated = _masked_softmax_core(
        np.ascontiguousarray(x), np.ascontiguousarray(keep, np.bool_), np.asarray(exp_table, np.int64),
        int(out_multiplier), int(out_shift), int(rounding), int(multiplier_bits), int(out_zero_point),
        int(clamp_min), int(clamp_max), out)
    return out, int(saturated)
