"""Multiply-accumulate kernels: raw accumulators as a hardware MAC array holds them.

Activations are NHWC (channels last), weights OHWI.  Every ``*_acc`` kernel
returns ``(acc, overflow_count, pair_saturation_count)``: the int32
accumulators, the number of output elements whose accumulation left the
``acc_bits`` range at least once, and the number of int16 pair sums that
saturated.  :func:`requantize` turns accumulators into output codes.

Hardware order of one accumulator (white paper §2.1 MAC array; the zero-point
expansion of §2.4, symmetric vs asymmetric quantization)::

    acc = policy(c0)                         # bias with the z_x * sum(W) term folded in
    for k in reduction order:
        acc = policy(acc + x[k] * w[k])      # raw stored codes, not minus zero points
    acc = policy(acc - correction)           # data-dependent zero-point terms, in order

``policy(v)`` is ``v`` inside the signed ``acc_bits`` range; outside it
saturates (``OVERFLOW_SATURATE``) or wraps in two's complement
(``OVERFLOW_WRAP`` and ``OVERFLOW_ERROR``; the runtime raises for the latter
when the overflow count is not 0).  With ``pairwise_int16`` the products are
taken two at a time, ``(k0, k1), (k2, k3), ...``, and each pair sum (a trailing
odd product on its own) is saturated to int16 before it reaches the
accumulator, as x86 ``vpmaddubsw`` does.  A correction of 0 leaves the
accumulator unchanged, so "skip a correction whose zero point is 0" and
"apply it" are the same thing.

Every kernel has two cores.  The wrapper bounds every partial sum of the
hardware order by ``|c0| + K * max|x| * max|w| + max|correction|`` (per output
channel, ``max|x|`` read from the actual activations, padding value included,
so int16 activations with small values stay on the fast path).  When that
bound fits ``acc_bits`` and ``pairwise_int16`` is off, no step can overflow,
the order of the additions cannot matter, and the unchecked core computes the
same exact sum in int64 in whatever order is fastest.  Otherwise the checked
core (:mod:`intsim.kernels.mac_checked`) walks the hardware order and applies
the policy after every step, all output channels of a pixel at once, skipping
the checks per pixel where a bound from that window's own values fits.

The slow, obviously-correct twins of these kernels are in
:mod:`intsim.kernels.naive.mac`; tests demand bit-equality.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import types
from numba.core import cgutils
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array, populate_array

from intsim.fixedpoint import (
    DOUBLE,
    FLOAT32_RINT,
    FLOAT64_HALF_AWAY,
    SINGLE,
    double_rounding_one_shift,
    multiply_by_quantized_multiplier_scalar,
    one_shift_constants,
    rescale_scalar,
    saturate,
    scale_float32,
)
from intsim.jit import jit, jit_inline
from intsim.kernels.mac_checked import checked_conv
from intsim.kernels.microkernel import GENERAL, HALF, LANE_ROWS, LANES, PLAIN, SELECT


# Largest |output zero point| and |clamp bound| for which requantization runs in 32-bit lanes.
LANES_LIMIT = 2**16


def requantized_in_registers(rounding, out_zero_point, clamp_min, clamp_max, count_clamps) -> bool:
    """Whether a fast kernel requantizes its register tiles in place (no int32 tile written):
    ``FLOAT32_RINT``, ``DOUBLE`` or ``SINGLE`` within the 32-bit lanes' bounds (``LANES_LIMIT``, as
    :func:`requantize_core`), for a caller that does not want the clamp count (the register
    epilogue counts none)."""
    return (not count_clamps and rounding in (FLOAT32_RINT, DOUBLE, SINGLE)
            and max(abs(out_zero_point), abs(clamp_min), abs(clamp_max)) <= LANES_LIMIT)


@jit
def lane_params(multiplier, shift, rounding, multiplier_bits, padded_channels):
    """The register epilogue's int64 rows for ``DOUBLE`` / ``SINGLE`` rounding
    (:func:`intsim.kernels.microkernel.requant_store_tile`): row ``k`` of ``(left, multiplier,
    nudge_above, nudge_below, total_shift, threshold)`` (:func:`intsim.fixedpoint.one_shift_constants`)
    and ``path`` at ``[k * padded_channels + lane]`` for the channels of ``multiplier`` / ``shift``
    (int32), zeros in the padding channels.  Each 16 channels lie even ones first: channel ``16 i + j``
    at lane ``16 i + j // 2`` for even ``j``, ``16 i + 8 + j // 2`` for odd ``j``.  ``path`` is the
    cheapest form of the rule that serves the channel: ``GENERAL`` where ``left > 0`` or
    ``total_shift < multiplier_bits`` (the product may saturate, the result may leave int32) or the
    multiplier is negative, ``SELECT`` where the two nudges differ, ``PLAIN`` elsewhere, except in a
    layer with ``SELECT`` channels, whose ``PLAIN`` ones take ``GENERAL``: a ``SELECT`` tile corrects
    every channel's nudge by the accumulator's sign (see microkernel._fixed_point_tile)."""
    params = np.zeros(LANE_ROWS * padded_channels, np.int64)
    any_select = False
    for c in range(multiplier.shape[0]):
        _, above, below, _, _ = one_shift_constants(shift[c], rounding, multiplier_bits)
        any_select = any_select or above != below
    for c in range(multiplier.shape[0]):
        left, above, below, total_shift, threshold = one_shift_constants(shift[c], rounding, multiplier_bits)
        j = c % LANES
        lane = c - j + (j // 2 if j % 2 == 0 else HALF + j // 2)
        path = GENERAL
        if left == 0 and total_shift >= multiplier_bits and multiplier[c] >= 0:
            path = SELECT if above != below else (GENERAL if any_select else PLAIN)
        for k, value in enumerate((left, np.int64(multiplier[c]), above, below, total_shift, threshold,
                                   np.int64(path))):
            params[k * padded_channels + lane] = value
    return params


def epilogue_params(multiplier, shift, scale, rounding, multiplier_bits, in_registers, channels, padded_channels):
    """A layer's requantization parameters in the forms the fused cores read, worked out once per layer
    (or call list) rather than on every call: ``(multiplier, shift, scale, scale32, fixed)``, the
    first ``channels`` multipliers and shifts as int64 and scales as float64 (``requantize_rows`` on an
    int32 tile), and for the register epilogue (``in_registers``) the float32 scales padded to
    ``padded_channels`` (``FLOAT32_RINT``) or :func:`lane_params` (``DOUBLE`` / ``SINGLE``), for the
    GEMM and depthwise tiles alike; the register parameters not used are empty."""
    multiplier = np.asarray(multiplier, np.int32)[:channels]
    shift = np.asarray(shift, np.int32)[:channels]
    scale = np.asarray(scale, np.float64)[:channels]
    scale32, fixed = np.zeros(0, np.float32), np.zeros(0, np.int64)
    if in_registers and rounding == FLOAT32_RINT:
        scale32 = np.zeros(padded_channels, np.float32)
        scale32[:channels] = scale
    elif in_registers:
        fixed = lane_params(multiplier, shift, rounding, multiplier_bits, padded_channels)
    return as_int64(multiplier), as_int64(shift), scale, scale32, fixed


def fits_accumulator(bound: int, acc_bits: int) -> bool:
    """Whether a value of magnitude at most ``bound`` lies in the signed ``acc_bits`` range."""
    return bound <= 2 ** (acc_bits - 1) - 1


def _max_abs(a: np.ndarray) -> int:
    return max(abs(int(a.min())), abs(int(a.max()))) if a.size else 0


def c0_per_output(x_zero_point: int, w_rows: np.ndarray, w_zero_point: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``bias - z_x * sum(w) + K * z_x * z_w`` per output row of ``w_rows`` [O, K], int64."""
    k = w_rows.shape[1]
    return (
        bias.astype(np.int64)
        - x_zero_point * w_rows.sum(axis=1, dtype=np.int64)
        + k * x_zero_point * w_zero_point.astype(np.int64)
    )


def weighted_bound(c0, k, max_x, w_rows, w_zero_point) -> int:
    """Upper bound on ``|partial sum|`` of every output whose weights are one row of ``w_rows`` [O, K].

    ``|c0| + K * max|x| * max|w[o]| + |z_w[o]| * K * max|x|``, maximised over
    ``o``, in int64.  With 16-bit codes and zero points every term is below
    ``K * 2**32`` (and ``|bias| < 2**31``), so the sum is exact for K below 2**28.
    """
    if c0.size == 0:
        return 0
    max_w = np.abs(w_rows.astype(np.int64)).max(axis=1, initial=0)
    return int((np.abs(c0) + k * max_x * max_w + np.abs(w_zero_point.astype(np.int64)) * k * max_x).max())


# --------------------------------------------------------------------------
# conv2d, NHWC activations, OHWI weights
# --------------------------------------------------------------------------


def _conv_output_size(size, before, after, kernel, stride, dilation):
    return (size + before + after - dilation * (kernel - 1) - 1) // stride + 1


@jit
def _conv2d_unchecked_core(x, x_zero_point, w_hwio, bias, sh, sw, dh, dw, top, left, groups, out):
    # bias + sum (x - z_x) (w - z_w) over the in-bounds taps: the exact
    # accumulator when nothing overflows (padding taps contribute 0).  One row
    # of Cout int64 sums per output pixel; the innermost loop runs over
    # contiguous output channels: all of Cout for depthwise with multiplier 1
    # (Cin_g = Cout_g = 1, where output channel o reads input channel o),
    # otherwise the Cout_g channels of one group.
    n_batch, height, width, _ = x.shape
    kernel_h, kernel_w, cin_g, cout = w_hwio.shape
    out_h, out_w = out.shape[1], out.shape[2]
    cout_g = cout // groups
    row = np.empty(cout, np.int64)
    for n in range(n_batch):
        for oh in range(out_h):
            for ow in range(out_w):
                for o in range(cout):
                    row[o] = bias[o]
                for kh in range(kernel_h):
                    ih = oh * sh - top + kh * dh
                    if ih < 0 or ih >= height:
                        continue
                    for kw in range(kernel_w):
                        iw = ow * sw - left + kw * dw
                        if iw < 0 or iw >= width:
                            continue
                        if cin_g == 1 and cout_g == 1:
                            for o in range(cout):
                                row[o] += (np.int64(x[n, ih, iw, o]) - x_zero_point) * w_hwio[kh, kw, 0, o]
                            continue
                        for g in range(groups):
                            o_start = g * cout_g
                            for ci in range(cin_g):
                                xv = np.int64(x[n, ih, iw, g * cin_g + ci]) - x_zero_point
                                for j in range(cout_g):
                                    row[o_start + j] += xv * w_hwio[kh, kw, ci, o_start + j]
                for o in range(cout):
                    out[n, oh, ow, o] = np.int32(row[o])


def conv2d_out(x, w, strides, dilations, pads):
    out_h = _conv_output_size(x.shape[1], pads[0], pads[2], w.shape[1], strides[0], dilations[0])
    out_w = _conv_output_size(x.shape[2], pads[1], pads[3], w.shape[2], strides[1], dilations[1])
    return np.empty((x.shape[0], out_h, out_w, w.shape[0]), np.int32)


def _conv2d_unchecked(x, x_zero_point, w, w_zero_point, bias, strides, dilations, pads, groups):
    """Exact accumulators of :func:`conv2d_nhwc_acc`, valid only when no step can overflow."""
    out = conv2d_out(x, w, strides, dilations, pads)
    w_hwio = np.ascontiguousarray((w.astype(np.int64) - w_zero_point.reshape(-1, 1, 1, 1)).transpose(1, 2, 3, 0))
    _conv2d_unchecked_core(
        np.ascontiguousarray(x), int(x_zero_point), w_hwio, bias.astype(np.int64),
        strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1], groups, out,
    )
    return out


def _conv2d_checked(x, x_zero_point, w, w_zero_point, c0, strides, dilations, pads, groups, acc_bits, overflow,
                    pairwise_int16):
    """:func:`conv2d_nhwc_acc` in hardware order with the policy after every step."""
    out = conv2d_out(x, w, strides, dilations, pads)
    counts = checked_conv(x, x_zero_point, w, w_zero_point, c0, np.zeros(w.shape[0], np.int64), strides, dilations,
                          pads, groups, acc_bits, overflow, pairwise_int16, out)
    return (out, *counts)


def conv2d_nhwc_acc(x, x_zero_point, w, w_zero_point, bias, strides, dilations, pads, groups, acc_bits, overflow,
                    pairwise_int16):
    """2-D convolution accumulators, NHWC activations, OHWI weights, grouped.

    Parameters
    ----------
    x : int8, uint8, int16 or uint16 array [N, H, W, Cin]
    x_zero_point : int
        Also the value of every padded input position.
    w : int8, uint8 or int16 array [Cout, KH, KW, Cin // groups]
    w_zero_point : int64 array [Cout]
        Per output channel; zeros for symmetric weights.
    bias : int32 array [Cout]
    strides, dilations : (int, int)
        (height, width).
    pads : (top, left, bottom, right)
    groups : int
        Output channel ``o`` reads input channels ``[g*Cin_g, (g+1)*Cin_g)``
        with ``g = o // (Cout // groups)``; depthwise is ``groups = Cin``.
    acc_bits : int
        Signed accumulator width, 8..32.
    overflow : int
        ``OVERFLOW_SATURATE``, ``OVERFLOW_WRAP`` or ``OVERFLOW_ERROR``.
    pairwise_int16 : bool
        Saturate each pair of products to int16 before accumulating.

    Returns
    -------
    acc : int32 array [N, OH, OW, Cout]
        ``OH = (H + top + bottom - dh*(KH-1) - 1) // sh + 1``, ``OW`` alike.
        Reduction order ``kh``, ``kw``, ``ci`` (``ci`` fastest) from
        ``c0 = bias - z_x*sum(w[o]) + K*z_x*z_w[o]``, then the correction
        ``z_w[o] * sum(window)`` (white paper §2.4).  Without overflow this is
        ``bias + sum (x - z_x)(w - z_w)``.
    overflow_count, pair_saturation_count : int
    """
    w_rows = w.reshape(w.shape[0], -1)
    k = w_rows.shape[1]
    c0 = c0_per_output(x_zero_point, w_rows, w_zero_point, bias)
    max_x = max(_max_abs(x), abs(int(x_zero_point)))
    if not pairwise_int16 and fits_accumulator(weighted_bound(c0, k, max_x, w_rows, w_zero_point), acc_bits):
        return _conv2d_unchecked(x, x_zero_point, w, w_zero_point, bias, strides, dilations, pads, groups), 0, 0
    return _conv2d_checked(
        x, x_zero_point, w, w_zero_point, c0, strides, dilations, pads, groups, acc_bits, overflow, pairwise_int16
    )


# --------------------------------------------------------------------------
# fully connected: x [N, K] times w [O, K] transposed
# --------------------------------------------------------------------------


@jit
def _fully_connected_unchecked_core(x, w, w_zero_point, c0, out):
    # c0 + x . w - z_w * sum(x): the zero-point expansion on raw codes, so the
    # weights are read in their stored width.
    n_batch, depth = x.shape
    n_out = w.shape[0]
    for n in range(n_batch):
        x_sum = np.int64(0)
        for k in range(depth):
            x_sum += x[n, k]
        for o in range(n_out):
            dot = np.int64(0)
            for k in range(depth):
                dot += np.int64(x[n, k]) * np.int64(w[o, k])
            out[n, o] = np.int32(c0[o] + dot - w_zero_point[o] * x_sum)


def fully_connected_acc(x, x_zero_point, w, w_zero_point, bias, acc_bits, overflow, pairwise_int16):
    """Fully-connected accumulators ``x @ w.T`` in hardware order.

    Parameters
    ----------
    x : int8, uint8, int16 or uint16 array [N, K]
    x_zero_point : int
    w : int8, uint8 or int16 array [O, K]
    w_zero_point : int64 array [O]
    bias : int32 array [O]
    acc_bits, overflow, pairwise_int16
        As in :func:`conv2d_nhwc_acc`.

    Returns
    -------
    acc : int32 array [N, O]
        From ``c0 = bias - z_x*sum(w[o]) + K*z_x*z_w[o]``, products over ``k``
        ascending, then the correction ``z_w[o] * sum(x[n])``.
    overflow_count, pair_saturation_count : int
    """
    n_batch, depth = x.shape
    out = np.empty((n_batch, w.shape[0]), np.int32)
    c0 = c0_per_output(x_zero_point, w, w_zero_point, bias)
    w_zero_point = w_zero_point.astype(np.int64)
    if not pairwise_int16 and fits_accumulator(weighted_bound(c0, depth, _max_abs(x), w, w_zero_point), acc_bits):
        _fully_connected_unchecked_core(np.ascontiguousarray(x), np.ascontiguousarray(w), w_zero_point, c0, out)
        return out, 0, 0
    # the hardware order of a 1x1 convolution over N pixels of K channels
    counts = checked_conv(x.reshape(n_batch, 1, 1, depth), x_zero_point, w.reshape(w.shape[0], 1, 1, depth),
                          w_zero_point, c0, np.zeros(w.shape[0], np.int64), (1, 1), (1, 1), (0, 0, 0, 0), 1, acc_bits,
                          overflow, pairwise_int16, out.reshape(n_batch, 1, 1, -1))
    return (out, *counts)


# --------------------------------------------------------------------------
# batched matmul of two activations: a [B, M, K] @ b [B, K, N]
# --------------------------------------------------------------------------


@jit
def _matmul_unchecked_core(a, a_zero_point, b, b_zero_point, c0, out):
    # c0 - z_b * sum_k a[m, k] - z_a * sum_k b[k, n] + sum_k a[m, k] b[k, n],
    # the innermost loop running along the contiguous rows of b and out.
    n_batch, rows, depth = a.shape
    cols = b.shape[2]
    b_sum = np.empty(cols, np.int64)
    row = np.empty(cols, np.int64)
    for bi in range(n_batch):
        for j in range(cols):
            b_sum[j] = 0
        for k in range(depth):
            for j in range(cols):
                b_sum[j] += b[bi, k, j]
        for m in range(rows):
            a_sum = np.int64(0)
            for k in range(depth):
                a_sum += a[bi, m, k]
            for j in range(cols):
                row[j] = c0 - b_zero_point * a_sum - a_zero_point * b_sum[j]
            for k in range(depth):
                av = np.int64(a[bi, m, k])
                for j in range(cols):
                    row[j] += av * b[bi, k, j]
            for j in range(cols):
                out[bi, m, j] = np.int32(row[j])


def matmul_acc(a, a_zero_point, b, b_zero_point, acc_bits, overflow, pairwise_int16):
    """Batched activation-by-activation matmul accumulators ``a @ b``.

    Parameters
    ----------
    a : int8, uint8, int16 or uint16 array [B, M, K]
    a_zero_point : int
    b : int8, uint8, int16 or uint16 array [B, K, N]
    b_zero_point : int
    acc_bits, overflow, pairwise_int16
        As in :func:`conv2d_nhwc_acc`.

    Returns
    -------
    acc : int32 array [B, M, N]
        From ``c0 = K*z_a*z_b``, products ``a[m, k] * b[k, n]`` over ``k``
        ascending, then the corrections ``z_b * sum_k a[m, k]`` and
        ``z_a * sum_k b[k, n]`` in that order.
    overflow_count, pair_saturation_count : int
    """
    n_batch, rows, depth = a.shape
    out = np.empty((n_batch, rows, b.shape[2]), np.int32)
    a_zero_point, b_zero_point = int(a_zero_point), int(b_zero_point)
    c0 = depth * a_zero_point * b_zero_point
    max_a, max_b = _max_abs(a), _max_abs(b)
    bound = abs(c0) + depth * (max_a * max_b + abs(b_zero_point) * max_a + abs(a_zero_point) * max_b)
    if not pairwise_int16 and fits_accumulator(bound, acc_bits):
        _matmul_unchecked_core(np.ascontiguousarray(a), a_zero_point, np.ascontiguousarray(b), b_zero_point, c0, out)
        return out, 0, 0
    # per batch, a 1x1 convolution over the M rows of a with the columns of b as weights: c0 first,
    # z_b * sum_k a[m, k] as its zero-point correction, z_a * sum_k b[k, n] subtracted last
    overflow_count = pair_count = 0
    cols = b.shape[2]
    for bi in range(n_batch):
        b_columns = np.ascontiguousarray(b[bi].T).reshape(cols, 1, 1, depth)
        post = a_zero_point * b[bi].sum(axis=0, dtype=np.int64)
        counts = checked_conv(a[bi].reshape(rows, 1, 1, depth), a_zero_point, b_columns, np.full(cols, b_zero_point),
                              np.full(cols, c0, np.int64), post, (1, 1), (1, 1), (0, 0, 0, 0), 1, acc_bits, overflow,
                              pairwise_int16, out[bi].reshape(rows, 1, 1, cols))
        overflow_count += counts[0]
        pair_count += counts[1]
    return out, overflow_count, pair_count


# --------------------------------------------------------------------------
# requantization
# --------------------------------------------------------------------------


@jit_inline
def _requantize_rows(acc, acc_zero_point, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                     clamp_min, clamp_max, out):
    # The TFLite order: rescale, add the output zero point, clamp, narrow.
    # Inlined with a constant ``rounding`` so that LLVM sees one straight-line
    # rounding rule and vectorises the channel loop.
    # The loops run over ``out``: ``acc`` may have more rows and columns (the
    # fused GEMM's padded accumulator chunk), of which the leading ones count.
    saturation_count = 0
    for i in range(out.shape[0]):
        for c in range(out.shape[1]):
            centred = saturate(np.int64(acc[i, c]) - acc_zero_point, 32)
            v = rescale_scalar(centred, np.int64(multiplier[c]), np.int64(shift[c]), scale[c], rounding,
                               multiplier_bits) + out_zero_point
            saturation_count += (v < clamp_min) | (v > clamp_max)
            out[i, c] = min(max(v, clamp_min), clamp_max)
    return saturation_count


def _per_channel(values, c):
    """``values[c]`` for a per-channel array, ``values`` itself for a scalar (one scale for every channel)."""
    return values[c] if np.ndim(values) else values


@overload(_per_channel)
def _per_channel_overload(values, c):
    # One specialisation per argument type: an array gives its element c, a scalar itself.
    if isinstance(values, types.Array):
        return lambda values, c: values[c]
    return lambda values, c: values


def as_int64(values):
    """``values`` as an int64 array: itself when it already is one, else a widened copy.

    The kernels take the graph's int32 multipliers and shifts; a caller that
    requantizes many times per call widens them once with this, and the
    requantization's own widening then copies nothing.
    """
    return np.asarray(values, np.int64)


@overload(as_int64)
def _as_int64_overload(values):
    if isinstance(values, types.Array) and values.dtype == types.int64:
        return lambda values: values
    return lambda values: values.astype(np.int64)


@intrinsic
def _one_row_view(typingctx, array):
    """A ``[1, size]`` view of a C-contiguous array, without the ~35 ns of numba's ``reshape``."""
    if not isinstance(array, types.Array) or array.layout != "C":
        return None
    view_type = array.copy(ndim=2)

    def codegen(context, builder, signature, args):
        source = make_array(signature.args[0])(context, builder, args[0])
        size = cgutils.unpack_tuple(builder, source.shape)[0]
        for extent in cgutils.unpack_tuple(builder, source.shape)[1:]:
            size = builder.mul(size, extent)
        view = make_array(view_type)(context, builder)
        one = context.get_constant(types.intp, 1)
        populate_array(view, data=source.data, shape=[one, size], strides=[builder.mul(size, source.itemsize),
                       source.itemsize], itemsize=source.itemsize, meminfo=source.meminfo, parent=source.parent)
        return impl_ret_borrowed(context, builder, view_type, view._getvalue())

    return view_type(array), codegen


# The lanes: one accumulator (saturated to int32, centred) to ``(clamped, clamped_or_not)``
# with the rescale in 32-bit lanes, ``lo`` and ``hi`` the clamp bounds minus the output
# zero point (exact in int32 and float32, see _requantize_lanes).  Small enough for LLVM to
# inline them into the loop that calls them, where constants of one scale hoist out.


@jit
def _lane_double(centred, multiplier, shift, scale, multiplier_bits, lo, hi):
    value = np.int32(double_rounding_one_shift(centred, multiplier, shift, multiplier_bits))
    return min(max(value, np.int32(lo)), np.int32(hi)), np.int32((value < lo) | (value > hi))


@jit
def _lane_single(centred, multiplier, shift, scale, multiplier_bits, lo, hi):
    value = np.int32(multiply_by_quantized_multiplier_scalar(centred, multiplier, shift, SINGLE, multiplier_bits))
    return min(max(value, np.int32(lo)), np.int32(hi)), np.int32((value < lo) | (value > hi))


@jit
def _lane_float32(centred, multiplier, shift, scale, multiplier_bits, lo, hi):
    # The float32 rint is integral (or +-inf): it compares exactly with lo and hi and lands on
    # the same side of them as its int32 saturation would.
    value = np.rint(scale_float32(centred, scale))
    lo_f32, hi_f32 = np.float32(lo), np.float32(hi)
    return np.int32(min(max(value, lo_f32), hi_f32)), np.int32((value < lo_f32) | (value > hi_f32))


@jit_inline
def _requantize_lanes(rounding, acc, multiplier, shift, scale, multiplier_bits, out_zero_point, clamp_min, clamp_max,
                      out):
    # DOUBLE, SINGLE or FLOAT32_RINT in 32-bit lanes over the rows of
    # ``out``, inlined with a constant ``rounding`` so that LLVM keeps the one
    # lane it needs; ``multiplier``, ``shift`` and ``scale`` are arrays (per
    # channel) or scalars (one scale for every channel).  The caller
    # guarantees a zero accumulator zero point and |out_zero_point|, |clamp
    # bounds| <= LANES_LIMIT, so lo = clamp_min - z and hi = clamp_max - z fit
    # int32 and float32 exactly, and clamp(saturate32(r) + z) =
    # clamp_lo_hi(r) + z for the rounded rescale r: saturating r to int32
    # cannot move it across [lo, hi].  Each row counts its clamps in int32
    # (the caller keeps rows below 2**31 values).
    lo, hi = clamp_min - out_zero_point, clamp_max - out_zero_point
    zero_point = np.int32(out_zero_point)
    saturation_count = 0
    for i in range(out.shape[0]):
        acc_row, out_row = acc[i], out[i]
        row_count = np.int32(0)
        for c in range(out_row.shape[0]):
            centred = np.int32(saturate(acc_row[c], 32))
            m, s, sc = _per_channel(multiplier, c), _per_channel(shift, c), _per_channel(scale, c)
            if rounding == DOUBLE:
                clamped, flag = _lane_double(centred, m, s, sc, multiplier_bits, lo, hi)
            elif rounding == SINGLE:
                clamped, flag = _lane_single(centred, m, s, sc, multiplier_bits, lo, hi)
            else:
                clamped, flag = _lane_float32(centred, m, s, sc, multiplier_bits, lo, hi)
            out_row[c] = clamped + zero_point
            row_count = np.int32(row_count + flag)
        saturation_count += row_count
    return saturation_count


@jit_inline
def _requantize_lanes_shaped(rounding, acc, multiplier, shift, scale, multiplier_bits, out_zero_point, clamp_min,
                             clamp_max, out):
    # One scale for every channel: the parameters become scalars, and where
    # ``acc`` has exactly the columns of ``out`` the rows run as one flat row
    # (no short inner loop over 16 or 24 channels).  Otherwise per channel,
    # each parameter in the type its rescale computes in, converted once per
    # call (not per element): FLOAT32_RINT's scales narrowed to float32, the
    # integer modes' int32 multipliers and shifts (as the graph holds them)
    # widened to int64, on whose loads their int64 rescales vectorise.
    channels = out.shape[1]
    differing = 0
    for c in range(channels):
        differing += (multiplier[c] != multiplier[0]) | (shift[c] != shift[0]) | (scale[c] != scale[0])
    if (channels == 0 or differing) and rounding == FLOAT32_RINT:
        return _requantize_lanes(rounding, acc, multiplier, shift, scale.astype(np.float32), multiplier_bits,
                                 out_zero_point, clamp_min, clamp_max, out)
    if channels == 0 or differing:
        return _requantize_lanes(rounding, acc, as_int64(multiplier), as_int64(shift), scale, multiplier_bits,
                                 out_zero_point, clamp_min, clamp_max, out)
    multiplier_0, shift_0 = np.int64(multiplier[0]), np.int64(shift[0])
    if acc.shape[1] == channels and out.size < 2**31:
        return _requantize_lanes(rounding, _one_row_view(acc), multiplier_0, shift_0, scale[0], multiplier_bits,
                                 out_zero_point, clamp_min, clamp_max, _one_row_view(out))
    return _requantize_lanes(rounding, acc, multiplier_0, shift_0, scale[0], multiplier_bits, out_zero_point,
                             clamp_min, clamp_max, out)


@jit_inline
def _requantize_rows_centred(acc, acc_zero_point, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                             clamp_min, clamp_max, out):
    # A constant zero ``acc_zero_point`` (the MAC ops' case) lets LLVM drop the centring and its saturation.
    if acc_zero_point == 0:
        return _requantize_rows(acc, 0, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                clamp_min, clamp_max, out)
    return _requantize_rows(acc, acc_zero_point, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                            clamp_min, clamp_max, out)


@jit_inline
def _requantize_mode(rounding, acc, acc_zero_point, multiplier, shift, scale, multiplier_bits, out_zero_point,
                     clamp_min, clamp_max, out):
    # acc [R, >= C] (its leading C columns count), out [R, C], both C-contiguous; see :func:`requantize`.
    # The 32-bit lanes where exact, else the int64 rows.  ``rounding`` is requantize_core's constant:
    # numba prunes the other modes' branches, so only this mode's loops are typed and compiled.
    if rounding != FLOAT64_HALF_AWAY and acc_zero_point == 0 and max(abs(out_zero_point), abs(clamp_min),
                                                                     abs(clamp_max)) <= LANES_LIMIT:
        return _requantize_lanes_shaped(rounding, acc, multiplier, shift, scale, multiplier_bits, out_zero_point,
                                        clamp_min, clamp_max, out)
    return _requantize_rows_centred(acc, acc_zero_point, multiplier, shift, scale, rounding, multiplier_bits,
                                    out_zero_point, clamp_min, clamp_max, out)


@functools.cache
def requantize_core(rounding):
    """The compiled requantization under one rounding-mode code: ``core(acc, acc_zero_point, multiplier, shift,
    scale, multiplier_bits, out_zero_point, clamp_min, clamp_max, out)`` writes ``out`` [R, C] from the
    leading C columns of ``acc`` [R, >= C] (both C-contiguous) and returns the clamp count.

    One function per mode, made at the first lookup and compiled at its first call: a model compiles
    the modes it uses only (white paper §2.2; :func:`requantize` is the public form)."""
    @jit
    def requantize_mode(acc, acc_zero_point, multiplier, shift, scale, multiplier_bits, out_zero_point, clamp_min,
                        clamp_max, out):
        return _requantize_mode(rounding, acc, acc_zero_point, multiplier, shift, scale, multiplier_bits,
                                out_zero_point, clamp_min, clamp_max, out)

    return requantize_mode


@jit
def requantize_rows(rounding, acc, acc_zero_point, multiplier, shift, scale, multiplier_bits, out_zero_point,
                    clamp_min, clamp_max, out):
    # requantize_core(rounding)'s work for compiled callers whose mode is a run-time value (the fused
    # kernels' epilogues): the four modes' loops in one function, compiled once per signature.
    if rounding == DOUBLE:
        return _requantize_mode(DOUBLE, acc, acc_zero_point, multiplier, shift, scale, multiplier_bits,
                                out_zero_point, clamp_min, clamp_max, out)
    if rounding == SINGLE:
        return _requantize_mode(SINGLE, acc, acc_zero_point, multiplier, shift, scale, multiplier_bits,
                                out_zero_point, clamp_min, clamp_max, out)
    if rounding == FLOAT32_RINT:
        return _requantize_mode(FLOAT32_RINT, acc, acc_zero_point, multiplier, shift, scale, multiplier_bits,
                                out_zero_point, clamp_min, clamp_max, out)
    return _requantize_mode(FLOAT64_HALF_AWAY, acc, acc_zero_point, multiplier, shift, scale, multiplier_bits,
                            out_zero_point, clamp_min, clamp_max, out)


def requantize(acc, acc_zero_point, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
               clamp_max, out_dtype):
    """Requantize accumulators per channel (last axis) to output codes (white paper §2.2).

    Parameters
    ----------
    acc : signed int array (or unsigned up to 32 bits) [..., C]
    acc_zero_point : int
        Subtracted first; the difference saturates to int32.
    multiplier, shift : int32 arrays [C]
        Fixed-point multiplier and shift (positive = left) of the integer
        rounding modes; see :mod:`intsim.fixedpoint`.
    scale : float64 array [C]
        Real scale, read only by the float rounding modes.
    rounding : int
        ``intsim.fixedpoint.DOUBLE``, ``SINGLE``, ``FLOAT32_RINT`` or ``FLOAT64_HALF_AWAY``.
    multiplier_bits : int
    out_zero_point : int
    clamp_min, clamp_max : int
        Activation clamp, inside the range of ``out_dtype``.
    out_dtype : numpy integer dtype

    Returns
    -------
    out : ``out_dtype`` array shaped like ``acc``
        ``clamp(rescale(saturate32(acc - acc_zero_point)) + out_zero_point)``.
    saturation_count : int
        Elements whose value before the clamp lay outside ``[clamp_min, clamp_max]``.
    """
    channels = acc.shape[-1]
    rows = math.prod(acc.shape[:-1])
    out = np.empty((rows, channels), out_dtype)
    # int32 as the kernels hold it, anything else widened (one compiled core per width, not per dtype)
    acc = np.ascontiguousarray(acc, dtype=np.int32 if acc.dtype == np.int32 else np.int64)
    saturation_count = requantize_core(int(rounding))(
        acc.reshape(rows, channels), int(acc_zero_point),
        np.asarray(multiplier, np.int32), np.asarray(shift, np.int32), np.asarray(scale, np.float64),
        int(multiplier_bits), int(out_zero_point), int(clamp_min), int(clamp_max), out,
    )
    return out.reshape(acc.shape), int(saturation_count)
