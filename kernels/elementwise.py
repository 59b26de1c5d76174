"""Elementwise, pooling, reduction and table kernels on integer tensors.

Activations are NHWC (channels last).  Each public function allocates its
output and calls a private numba core; inputs are trusted (the runtime
validates at the edge).  Requantization goes through :mod:`intsim.fixedpoint`
in TFLite's fixed order: ``acc = requantize(acc); acc += out_zero_point;
clamp; narrow``.  A clamp reports ``saturation_count``, the number of elements
whose value before the clamp lay outside ``[clamp_min, clamp_max]`` or which an
int32 saturation on the way changed (an add's shifted input or sum, a mean's
accumulator): each element counted once.

The naive twins in :mod:`intsim.kernels.naive_elementwise` define what every
function here must compute, bit for bit.
"""

from __future__ import annotations

import functools

import numpy as np

from intsim.fixedpoint import (
    FLOAT32_RINT,
    INT32_MAX,
    INT32_MIN,
    SINGLE,
    one_shift_constants,
    rescale_int32_scalar,
    rescale_scalar,
    rescale_wide_scalar,
    round_half_away_divide,
    round_one_shift,
    saturate,
    saturating_round_float,
)
from intsim.jit import jit, jit_inline

# A probability in softmax is a Q23 fixed-point number: 2**23 means 1.
SOFTMAX_PROBABILITY_BITS = 23


@jit
def _clamp(value, clamp_min, clamp_max):
    return min(max(value, clamp_min), clamp_max)


# --------------------------------------------------------------------------
# ADD / SUB
# --------------------------------------------------------------------------


@jit
def _add_integer_term(centered, left_shift, multiplier, shift, rounding, multiplier_bits):
    # One input's share of the sum under an integer mode: the centered code shifted left by left_shift,
    # saturated to int32 and rescaled, and whether that saturation changed it (a converter's left_shift
    # never does: 20 on 8-bit codes, 29 - bits on wider ones; a hand-built graph may).  |centered| <= 65535
    # and left_shift <= 30 keep the shifted value inside int64.
    shifted = centered << left_shift
    wide = saturate(shifted, 32)
    return rescale_int32_scalar(wide, multiplier, shift, 0.0, rounding, multiplier_bits), wide != shifted


@jit
def _fits_int32(x):
    return INT32_MIN <= x <= INT32_MAX


@jit
def _unsaturated_term(centered_min, centered_max, left_shift, multiplier, shift, rounding, multiplier_bits):
    # _add_integer_term of every centered value in [centered_min, centered_max] as one multiply and
    # round_one_shift, where no saturation on its way can change it: (exact, factor, lo, hi), lo and hi
    # the terms of the two ends (terms rise with the code, multiplier >= 0).  Exact when the ends (and so
    # every value between) stay inside int32 once shifted left by left_shift and then by the rescale's
    # own left shift (DOUBLE at a scale of 1 or more): the product centered * factor is then that int32
    # times multiplier, as rescale_int32_scalar forms it; and when the ends' terms lie inside int32
    # (SINGLE at a scale of 1 or more may leave it and saturate).
    left = one_shift_constants(shift, rounding, multiplier_bits)[0]
    exact = True
    for centered in (centered_min, centered_max):
        exact &= _fits_int32(centered << left_shift) and _fits_int32(saturate(centered << left_shift, 32) << left)
    if not exact:
        return False, np.int64(0), np.int64(0), np.int64(0)
    factor = np.int64(multiplier) << (left_shift + left)
    rounding_constants = one_shift_constants(shift, rounding, multiplier_bits)
    lo = round_one_shift(centered_min * factor, *rounding_constants[1:])
    hi = round_one_shift(centered_max * factor, *rounding_constants[1:])
    return _fits_int32(lo) and _fits_int32(hi), factor, lo, hi


@jit_inline
def _add_checked_loop(operands, rounding):
    # Every int32 saturation on the way tested and counted, per element.
    (a, a_zero_point, a_multiplier, a_shift, _, b, b_zero_point, b_multiplier, b_shift, _,
     left_shift, out_multiplier, out_shift, multiplier_bits, out_zero_point, clamp_min, clamp_max, subtract,
     out) = operands
    saturated = 0
    for i in range(a.size):
        a_term, a_saturated = _add_integer_term(np.int64(a[i]) - a_zero_point, left_shift, a_multiplier, a_shift,
                                                rounding, multiplier_bits)
        b_term, b_saturated = _add_integer_term(np.int64(b[i]) - b_zero_point, left_shift, b_multiplier, b_shift,
                                                rounding, multiplier_bits)
        # Both terms are int32: their sum or difference is exact in int64.
        exact = a_term - b_term if subtract else a_term + b_term
        total = saturate(exact, 32)
        value = out_zero_point + rescale_int32_scalar(total, out_multiplier, out_shift, 0.0, rounding,
                                                      multiplier_bits)
        clamped = _clamp(value, clamp_min, clamp_max)
        saturated += (clamped != value) | a_saturated | b_saturated | (total != exact)
        out[i] = clamped
    return saturated


@jit_inline
def _add_unchecked_loop(operands, factors, rounding):
    # As _add_checked_loop where _add_integer_loop has shown that nothing saturates before the clamp:
    # per element two multiplies and roundings to the terms, their sum, a multiply and rounding to the
    # output, the clamp.
    (a, a_zero_point, _, a_shift, _, b, b_zero_point, _, b_shift, _,
     _, _, out_shift, multiplier_bits, out_zero_point, clamp_min, clamp_max, subtract, out) = operands
    a_factor, b_factor, out_factor = factors
    _, a_above, a_below, a_total_shift, a_threshold = one_shift_constants(a_shift, rounding, multiplier_bits)
    _, b_above, b_below, b_total_shift, b_threshold = one_shift_constants(b_shift, rounding, multiplier_bits)
    _, out_above, out_below, out_total_shift, out_threshold = one_shift_constants(out_shift, rounding,
                                                                                  multiplier_bits)
    saturated = 0
    for i in range(a.size):
        a_term = round_one_shift((np.int64(a[i]) - a_zero_point) * a_factor, a_above, a_below, a_total_shift,
                                 a_threshold)
        b_term = round_one_shift((np.int64(b[i]) - b_zero_point) * b_factor, b_above, b_below, b_total_shift,
                                 b_threshold)
        total = a_term - b_term if subtract else a_term + b_term
        rescaled = round_one_shift(total * out_factor, out_above, out_below, out_total_shift, out_threshold)
        if rounding == SINGLE:
            rescaled = saturate(rescaled, 32)  # a scale of 1 or more may leave int32 (DOUBLE's never does)
        value = out_zero_point + rescaled
        clamped = _clamp(value, clamp_min, clamp_max)
        saturated += clamped != value
        out[i] = clamped
    return saturated


@jit_inline
def _add_integer_loop(operands, rounding):
    # DOUBLE / SINGLE.  The terms rise with the codes, so the two ends of each input dtype's range bound
    # every term and sum: where no saturation is possible (a converter's parameters on 8- and 16-bit
    # codes) the loop without the saturation tests runs, else the one that tests each element.  Both are
    # integer multiplies, adds, selects and shifts (round_one_shift), so both vectorise.
    (a, a_zero_point, a_multiplier, a_shift, _, b, b_zero_point, b_multiplier, b_shift, _,
     left_shift, out_multiplier, out_shift, multiplier_bits, _, _, _, subtract, _) = operands
    a_exact, a_factor, a_lo, a_hi = _unsaturated_term(
        np.int64(np.iinfo(a.dtype).min) - a_zero_point, np.int64(np.iinfo(a.dtype).max) - a_zero_point,
        left_shift, a_multiplier, a_shift, rounding, multiplier_bits)
    b_exact, b_factor, b_lo, b_hi = _unsaturated_term(
        np.int64(np.iinfo(b.dtype).min) - b_zero_point, np.int64(np.iinfo(b.dtype).max) - b_zero_point,
        left_shift, b_multiplier, b_shift, rounding, multiplier_bits)
    total_lo, total_hi = (a_lo - b_hi, a_hi - b_lo) if subtract else (a_lo + b_lo, a_hi + b_hi)
    # The output rescale's own left shift (DOUBLE at a scale of 1 or more) saturates no sum of these ends.
    out_left = one_shift_constants(out_shift, rounding, multiplier_bits)[0]
    if a_exact and b_exact and _fits_int32(total_lo << out_left) and _fits_int32(total_hi << out_left):
        return _add_unchecked_loop(operands, (a_factor, b_factor, np.int64(out_multiplier) << out_left), rounding)
    return _add_checked_loop(operands, rounding)


@jit
def _add_float_term(code, zero_point, scale, rounding):
    # One input's share of the sum under a float mode: the centered code times the input's scale ratio,
    # in float32 (FLOAT32_RINT) or float64; exact in float64 either way.
    centered = np.int64(code) - zero_point
    if rounding == FLOAT32_RINT:
        # |centered| <= 65535 < 2**24: the conversion to float32 is exact.
        return np.float64(np.float32(centered) * np.float32(scale))
    return np.float64(centered) * scale


@jit_inline
def _add_float_loop(operands, rounding):
    # FLOAT32_RINT / FLOAT64_HALF_AWAY: the sum rounded once; its int32 saturation lies beyond every
    # clamp, so the clamp counts it.
    (a, a_zero_point, _, _, a_scale, b, b_zero_point, _, _, b_scale, _, _, _, _, out_zero_point, clamp_min,
     clamp_max, subtract, out) = operands
    saturated = 0
    for i in range(a.size):
        a_term = _add_float_term(a[i], a_zero_point, a_scale, rounding)
        b_term = _add_float_term(b[i], b_zero_point, b_scale, rounding)
        if rounding == FLOAT32_RINT:
            a32, b32 = np.float32(a_term), np.float32(b_term)
            total = saturating_round_float(a32 - b32 if subtract else a32 + b32, rounding)
        else:
            total = saturating_round_float(a_term - b_term if subtract else a_term + b_term, rounding)
        value = out_zero_point + total
        clamped = _clamp(value, clamp_min, clamp_max)
        saturated += clamped != value
        out[i] = clamped
    return saturated


@jit_inline
def _add_loop(operands, rounding):
    if rounding <= SINGLE:
        return _add_integer_loop(operands, rounding)
    return _add_float_loop(operands, rounding)


@functools.cache
def _add_core(rounding):
    # One compiled loop per rounding mode, the mode a constant in it: its branches fold away and the
    # loop vectorises (10x on 56x56x24 int8 under DOUBLE against one loop that tests the mode per
    # element).  Made at the first lookup, so a model compiles the modes it uses only.
    @jit
    def add_core(operands):
        return _add_loop(operands, rounding)

    return add_core


def add(
    a, a_zero_point, a_multiplier, a_shift, a_scale,
    b, b_zero_point, b_multiplier, b_shift, b_scale,
    left_shift, out_multiplier, out_shift, out_scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype, subtract=False,
):
    """Quantized ``a + b`` (or ``a - b``) of two same-shape tensors, TFLite's ADD scheme.

    Integer rounding codes (``DOUBLE``, ``SINGLE``): each centered input is
    shifted left by ``left_shift`` (saturating to int32) and rescaled by its
    ``(multiplier, shift)`` to a common scale; the int32-saturated sum is
    rescaled by ``(out_multiplier, out_shift)``.  Float codes: ``a_scale`` and
    ``b_scale`` are ``s_a / s_out`` and ``s_b / s_out``; the sum
    ``(a - za) * a_scale +- (b - zb) * b_scale`` is formed in float32
    (``FLOAT32_RINT``, every operand and intermediate) or float64
    (``FLOAT64_HALF_AWAY``) and rounded once.  Then ``+ out_zero_point`` and
    the clamp.

    Parameters
    ----------
    a, b : int8/uint8/int16/uint16 arrays of the same shape
    a_zero_point, b_zero_point, out_zero_point : int
    a_multiplier, a_shift, b_multiplier, b_shift, out_multiplier, out_shift : int
        Fixed-point multipliers; positive shift means left.  Unused by float codes.
    a_scale, b_scale : float
        Unused by integer codes.
    left_shift : int
        Headroom shift of the centered inputs (20 for 8-bit, as TFLite); unused by float codes.
    out_scale : float
        Unused: the float codes fold the output scale into ``a_scale`` and ``b_scale``.
    rounding : int
        A rounding code of :mod:`intsim.fixedpoint`.
    multiplier_bits : int
    clamp_min, clamp_max : int
    out_dtype : numpy dtype
    subtract : bool
        Compute ``a - b``.

    Returns
    -------
    out : array of ``out_dtype``, shape of ``a``
    saturation_count : int
    """
    out = np.empty(a.shape, out_dtype)
    args = (a_zero_point, a_multiplier, a_shift, a_scale, b_zero_point, b_multiplier, b_shift, b_scale, left_shift,
            out_multiplier, out_shift, out_scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max,
            out_dtype)
    saturated = _add_core(int(rounding))(_add_operands(a, b, args, subtract, out))
    return out, int(saturated)


def _add_operands(a, b, args, subtract, out):
    # _add_core's operands: the flat arrays and the scalars of ``args`` (add's parameters but a and b) pinned.
    (a_zero_point, a_multiplier, a_shift, a_scale, b_zero_point, b_multiplier, b_shift, b_scale, left_shift,
     out_multiplier, out_shift, _, _, multiplier_bits, out_zero_point, clamp_min, clamp_max, _) = args
    return (
        a.reshape(-1), int(a_zero_point), int(a_multiplier), int(a_shift), float(a_scale),
        b.reshape(-1), int(b_zero_point), int(b_multiplier), int(b_shift), float(b_scale),
        int(left_shift), int(out_multiplier), int(out_shift), int(multiplier_bits),
        int(out_zero_point), int(clamp_min), int(clamp_max), bool(subtract), out.reshape(-1),
    )


class _AddLaunch:
    """:func:`add` with everything but the operands fixed; ``calls`` as in :func:`add_launcher`."""

    def __init__(self, args, subtract):
        self.args, self.subtract, self.rounding = args, subtract, int(args[12])

    def __call__(self, a, b):
        args = self.args
        return add(a, *args[:4], b, *args[4:], subtract=self.subtract)

    def calls(self, a, b, out):
        if a.shape != b.shape or a.shape != out.shape or not all(v.flags.c_contiguous for v in (a, b, out)):
            return None
        return [(_add_core(self.rounding), (_add_operands(a, b, self.args, self.subtract, out),))]


def add_launcher(
    a_zero_point, a_multiplier, a_shift, a_scale,
    b_zero_point, b_multiplier, b_shift, b_scale,
    left_shift, out_multiplier, out_shift, out_scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype, subtract=False,
):
    """``launch(a, b) -> (out, saturation_count)``, equal to :func:`add` with these arguments, for a
    caller that adds many times (a model's bound step): its parameters but the operands.

    ``launch.calls(a, b, out)`` gives ``[(numba function, arguments)]`` that write ``out`` from
    ``a`` and ``b`` as :func:`add` would (same shape, C-contiguous, fixed arrays a caller repeats
    them over), or ``None`` where they do not fit.
    """
    args = (a_zero_point, a_multiplier, a_shift, a_scale, b_zero_point, b_multiplier, b_shift, b_scale, left_shift,
            out_multiplier, out_shift, out_scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max,
            out_dtype)
    return _AddLaunch(args, subtract)


# --------------------------------------------------------------------------
# MUL
# --------------------------------------------------------------------------


@jit_inline
def _mul_products(operands, rounding, rescale):
    # The loop of _mul_loop with its product rescaled by ``rescale`` (rescale_wide_scalar's signature).
    (a, a_zero_point, b, b_zero_point, out_multiplier, out_shift, out_scale, multiplier_bits,
     out_zero_point, clamp_min, clamp_max, out) = operands
    saturated = 0
    for i in range(a.size):
        product = (np.int64(a[i]) - a_zero_point) * (np.int64(b[i]) - b_zero_point)
        value = rescale(product, out_multiplier, out_shift, out_scale, rounding, multiplier_bits) + out_zero_point
        clamped = _clamp(value, clamp_min, clamp_max)
        saturated += clamped != value
        out[i] = clamped
    return saturated


@jit_inline
def _mul_loop(operands, rounding):
    # Centered 16-bit codes lie in [-65535, 65535]; their product (< 2**32) can leave int32, so it is
    # kept in int64 and rescaled exactly by rescale_wide_scalar (a result beyond the clamp is counted).
    # Its test of the int32 range per element keeps DOUBLE from vectorising (20x SINGLE's time on
    # 8x28x28x32 int8); where the products of the dtype ranges' ends (which bound every product) lie
    # inside int32, as on 8-bit codes, rescale_int32_scalar rescales them instead.
    a, a_zero_point, b, b_zero_point = operands[:4]
    narrow = True
    for a_end in (np.iinfo(a.dtype).min, np.iinfo(a.dtype).max):
        for b_end in (np.iinfo(b.dtype).min, np.iinfo(b.dtype).max):
            narrow &= _fits_int32((np.int64(a_end) - a_zero_point) * (np.int64(b_end) - b_zero_point))
    if narrow:
        return _mul_products(operands, rounding, rescale_int32_scalar)
    return _mul_products(operands, rounding, rescale_wide_scalar)


@functools.cache
def _mul_core(rounding):
    # As _add_core: one vectorised loop per rounding mode.
    @jit
    def mul_core(operands):
        return _mul_loop(operands, rounding)

    return mul_core


def mul(
    a, a_zero_point, b, b_zero_point, out_multiplier, out_shift, out_scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype,
):
    """Quantized ``a * b`` of two same-shape tensors.

    ``acc = (a - za) * (b - zb)`` in int64, rescaled by ``(out_multiplier, out_shift)``
    or ``out_scale`` under ``rounding`` (:func:`intsim.fixedpoint.rescale_wide_scalar`:
    16-bit products with zero points leave int32 and are not clipped first), plus
    ``out_zero_point``, clamped; every clamped element is counted.

    Returns
    -------
    out : array of ``out_dtype``, shape of ``a``
    saturation_count : int
        Elements clamped to ``[clamp_min, clamp_max]``.
    """
    out = np.empty(a.shape, out_dtype)
    operands = (
        a.reshape(-1), int(a_zero_point), b.reshape(-1), int(b_zero_point),
        int(out_multiplier), int(out_shift), float(out_scale), int(multiplier_bits),
        int(out_zero_point), int(clamp_min), int(clamp_max), out.reshape(-1),
    )
    saturated = _mul_core(int(rounding))(operands)
    return out, int(saturated)


# --------------------------------------------------------------------------
# Pooling (NHWC)
# --------------------------------------------------------------------------


def _pooled_size(size, kernel, stride, dilation, pad_before, pad_after):
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


@jit
def _max_pool_core(x, kh, kw, sh, sw, dh, dw, pad_top, pad_left, lowest, out):
    batch, height, width, channels = x.shape
    out_height, out_width = out.shape[1], out.shape[2]
    for n in range(batch):
        for oh in range(out_height):
            for ow in range(out_width):
                for c in range(channels):
                    out[n, oh, ow, c] = lowest
                for i in range(kh):
                    ih = oh * sh - pad_top + i * dh
                    if ih < 0 or ih >= height:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pad_left + j * dw
                        if iw < 0 or iw >= width:
                            continue
                        for c in range(channels):
                            if x[n, ih, iw, c] > out[n, oh, ow, c]:
                                out[n, oh, ow, c] = x[n, ih, iw, c]


def max_pool_nhwc(x, kernel, strides, dilations, pads):
    """Max pooling of an NHWC tensor; padded positions are never selected.

    Parameters
    ----------
    x : int8/uint8/int16/uint16 array [N, H, W, C]
    kernel, strides, dilations : (int, int)
        ``(kh, kw)``, ``(sh, sw)``, ``(dh, dw)``.
    pads : (int, int, int, int)
        ``(top, left, bottom, right)``.

    Returns
    -------
    out : array of ``x.dtype``, [N, OH, OW, C]
        ``OH = (H + top + bottom - dh*(kh-1) - 1) // sh + 1``, likewise ``OW``.
        A window that covers no input position yields the dtype's minimum
        (as onnxruntime, which starts from ``lowest()``).
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    top, left, bottom, right = pads
    batch, height, width, channels = x.shape
    out_height = _pooled_size(height, kh, sh, dh, top, bottom)
    out_width = _pooled_size(width, kw, sw, dw, left, right)
    out = np.empty((batch, out_height, out_width, channels), x.dtype)
    _max_pool_core(
        np.ascontiguousarray(x), int(kh), int(kw), int(sh), int(sw), int(dh), int(dw), int(top), int(left),
        int(np.iinfo(x.dtype).min), out,
    )
    return out


@jit
def _avg_pool_core(x, x_zero_point, kh, kw, sh, sw, pad_top, pad_left, count_include_pad, out):
    batch, height, width, channels = x.shape
    out_height, out_width = out.shape[1], out.shape[2]
    # int64 totals: a window of kh*kw 16-bit codes stays far below 2**63.
    total = np.empty(channels, np.int64)
    for n in range(batch):
        for oh in range(out_height):
            for ow in range(out_width):
                total[:] = 0
                valid = 0
                for i in range(kh):
                    ih = oh * sh - pad_top + i
                    for j in range(kw):
                        iw = ow * sw - pad_left + j
                        if 0 <= ih < height and 0 <= iw < width:
                            valid += 1
                            for c in range(channels):
                                total[c] += x[n, ih, iw, c]
                        elif count_include_pad:
                            for c in range(channels):
                                total[c] += x_zero_point
                count = kh * kw if count_include_pad else valid
                for c in range(channels):
                    out[n, oh, ow, c] = round_half_away_divide(total[c], count)


def avg_pool_nhwc(x, x_zero_point, kernel, strides, pads, count_include_pad):
    """Average pooling of an NHWC tensor whose output keeps the input's scale and zero point.

    Raw codes are averaged: ``total`` is the sum of the window's valid codes
    plus ``x_zero_point`` for each padded position when ``count_include_pad``;
    ``count`` is ``kh * kw`` when ``count_include_pad`` else the number of
    valid positions; ``out = total / count`` rounded half away from zero
    (TFLite's AVERAGE_POOL_2D).  No dilation.  Without ``count_include_pad``
    every window must hold a valid position (pads smaller than the kernel).

    Parameters
    ----------
    x : int8/uint8/int16/uint16 array [N, H, W, C]
    x_zero_point : int
    kernel, strides : (int, int)
    pads : (int, int, int, int)
        ``(top, left, bottom, right)``.
    count_include_pad : bool

    Returns
    -------
    out : array of ``x.dtype``, [N, OH, OW, C], ``OH = (H + top + bottom - kh) // sh + 1``.
    """
    (kh, kw), (sh, sw) = kernel, strides
    top, left, bottom, right = pads
    batch, height, width, channels = x.shape
    out_height = _pooled_size(height, kh, sh, 1, top, bottom)
    out_width = _pooled_size(width, kw, sw, 1, left, right)
    out = np.empty((batch, out_height, out_width, channels), x.dtype)
    _avg_pool_core(
        np.ascontiguousarray(x), int(x_zero_point), int(kh), int(kw), int(sh), int(sw), int(top), int(left),
        bool(count_include_pad), out,
    )
    return out


# --------------------------------------------------------------------------
# MEAN
# --------------------------------------------------------------------------


@jit_inline
def _mean_loop(operands, rounding):
    x, x_zero_point, multiplier, shift, scale, multiplier_bits, out_zero_point, clamp_min, clamp_max, out = operands
    outer, reduced, inner = x.shape
    total = np.empty(inner, np.int64)
    saturated = 0
    for o in range(outer):
        total[:] = 0
        for r in range(reduced):
            for k in range(inner):
                total[k] += np.int64(x[o, r, k]) - x_zero_point
        for k in range(inner):
            # Summed in int64, then saturated once to the int32 accumulator (counted: more than 2**15
            # 16-bit codes can leave it).
            acc = saturate(total[k], 32)
            value = rescale_int32_scalar(acc, multiplier, shift, scale, rounding, multiplier_bits) + out_zero_point
            clamped = _clamp(value, clamp_min, clamp_max)
            saturated += (clamped != value) | (acc != total[k])
            out[o, k] = clamped
    return saturated


@functools.cache
def _mean_core(rounding):
    # As _add_core: one loop per rounding mode, so that the rescale of each output vectorises
    # (rescale_int32_scalar).
    @jit
    def mean_core(operands):
        return _mean_loop(operands, rounding)

    return mean_core


def mean_reduce(
    x, x_zero_point, multiplier, shift, scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype,
):
    """Quantized mean over axis 1 of ``x`` [outer, R, inner] (TFLite's MEAN).

    ``acc = saturate_int32(sum_r (x - x_zero_point))`` is rescaled by
    ``(multiplier, shift)`` or ``scale`` under ``rounding``; the converter
    folds ``1/R`` and the input/output scale ratio into them.  Then
    ``+ out_zero_point`` and the clamp.

    Returns
    -------
    out : array of ``out_dtype``, [outer, inner]
    saturation_count : int
    """
    outer, _, inner = x.shape
    out = np.empty((outer, inner), out_dtype)
    args = (x_zero_point, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max,
            out_dtype)
    saturated = _mean_core(int(rounding))(_mean_operands(np.ascontiguousarray(x), args, out))
    return out, int(saturated)


def _mean_operands(x, args, out):
    # _mean_core's operands: the arrays and the scalars of ``args`` (mean_reduce's parameters but x) pinned.
    x_zero_point, multiplier, shift, scale, _, multiplier_bits, out_zero_point, clamp_min, clamp_max, _ = args
    return (x, int(x_zero_point), int(multiplier), int(shift), float(scale), int(multiplier_bits), int(out_zero_point),
            int(clamp_min), int(clamp_max), out)


class _MeanLaunch:
    """:func:`mean_reduce` with everything but ``x`` fixed; ``calls`` as in :func:`mean_launcher`."""

    def __init__(self, args):
        self.args, self.rounding = args, int(args[4])

    def __call__(self, x):
        return mean_reduce(x, *self.args)

    def calls(self, x, out):
        if x.ndim != 3 or out.shape != (x.shape[0], x.shape[2]) or not (x.flags.c_contiguous and out.flags.c_contiguous):
            return None
        return [(_mean_core(self.rounding), (_mean_operands(x, self.args, out),))]


def mean_launcher(
    x_zero_point, multiplier, shift, scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype,
):
    """``launch(x) -> (out, saturation_count)``, equal to :func:`mean_reduce` of ``x`` with these
    arguments, for a caller that reduces many times (a model's bound step).

    ``launch.calls(x, out)`` gives ``[(numba function, arguments)]`` that write ``out`` [outer, inner]
    from ``x`` [outer, R, inner] as :func:`mean_reduce` would (C-contiguous, fixed arrays a caller
    repeats them over), or ``None`` where they do not fit.
    """
    return _MeanLaunch((x_zero_point, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
                        clamp_max, out_dtype))


# --------------------------------------------------------------------------
# PAD, lookup table
# --------------------------------------------------------------------------


def pad_constant(x, pads_before, pads_after, value):
    """``x`` padded on every axis with the constant code ``value`` (the zero point).

    ``pads_before[i]`` and ``pads_after[i]`` (non-negative) are the numbers of
    ``value`` entries added before and after axis ``i``.  Returns an array of
    ``x.dtype``.
    """
    shape = tuple(before + size + after for before, size, after in zip(pads_before, x.shape, pads_after))
    out = np.full(shape, value, x.dtype)
    out[tuple(slice(before, before + size) for before, size in zip(pads_before, x.shape))] = x
    return out


def lookup_table(x, table, x_min):
    """``table[x - x_min]`` elementwise: a per-code table (``2**bits`` entries).

    Returns an array shaped like ``x`` of ``table.dtype``.
    """
    return table[x.astype(np.intp) - x_min]


# --------------------------------------------------------------------------
# SOFTMAX
# --------------------------------------------------------------------------


@jit
def _softmax_core(
    x, exp_table, out_multiplier, out_shift, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out,
):
    rows, columns = x.shape
    one = np.int64(1) << SOFTMAX_PROBABILITY_BITS
    saturated = 0
    for row in range(rows):
        row_max = np.int64(x[row, 0])
        for col in range(1, columns):
            row_max = max(row_max, np.int64(x[row, col]))
        # Entries are at most 2**30, so int64 holds the total of 2**33 of them.
        total = np.int64(0)
        for col in range(columns):
            total += exp_table[row_max - x[row, col]]
        for col in range(columns):
            # exp <= 2**30 and the shift is 23: the numerator fits in 2**53.
            probability = round_half_away_divide(exp_table[row_max - x[row, col]] * one, total)
            rescaled = rescale_scalar(probability, out_multiplier, out_shift, 0.0, rounding, multiplier_bits)
            value = rescaled + out_zero_point
            clamped = _clamp(value, clamp_min, clamp_max)
            if clamped != value:
                saturated += 1
            out[row, col] = clamped
    return saturated


def softmax_lastaxis(
    x, exp_table, out_multiplier, out_shift, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max, out_dtype,
):
    """Integer softmax over the last axis of ``x`` [rows, C].

    ``e = exp_table[max_row(x) - x]`` (entries ``round(2**30 * exp(-beta * s_x * d))``,
    built by the converter); ``p = e * 2**23 / sum_row(e)`` rounded half away
    from zero, a Q23 probability; ``p`` is rescaled by ``(out_multiplier,
    out_shift)`` (the converter encodes ``2**-23 / s_out``) under an integer
    rounding code, plus ``out_zero_point``, clamped.

    Returns
    -------
    out : array of ``out_dtype``, [rows, C]
    saturation_count : int
    """
    out = np.empty(x.shape, out_dtype)
    saturated = _softmax_core(
        np.ascontiguousarray(x), np.asarray(exp_table, np.int64), int(out_multiplier), int(out_shift),
        int(rounding), int(multiplier_bits), int(out_zero_point), int(clamp_min), int(clamp_max), out,
    )
    return out, int(saturated)
