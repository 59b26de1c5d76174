"""The overflow-checked core of :mod:`intsim.kernels.mac`: the hardware order, one policy step per
addition, vectorised across output channels.

One output pixel's accumulators are walked together: the reduction index ``k`` outer, the output
channels inner (int64 lanes, ``min``/``max`` for saturation, a mask for the two's-complement wrap,
an or-ed flag per lane), so LLVM vectorises the step every accumulator takes (white paper §2.1,
accumulator width).  Each lane follows its own accumulator's order exactly::

    acc = policy(c0[o])
    for k ascending:   acc = policy(acc + x[k] * w[k, o])        # or int16-saturated pairs
    acc = policy(acc - w_zero_point[o] * sum(window))
    acc = policy(acc - post[o])

and an output counts as overflowed when any of those steps left the ``acc_bits`` range, as in
:func:`intsim.kernels.naive.mac._hardware_order` (a correction of 0 is no step there: here it
subtracts 0 from an accumulator already in range, which changes nothing and flags nothing).

Per pixel, a bound decides whether the checks can be skipped: every partial sum of lane ``o`` is at
most ``|c0[o]| + |post[o]| + L1(window) * (max_k |w[k, o]| + |w_zero_point[o]|)`` in magnitude
(``L1`` of the raw codes of the lane's input group, padding taps included).  When that fits
``acc_bits`` for every lane of a block and int16 pairs are off, no step can leave the range, each
policy step is the identity, and the block is summed without them: the same values, no flags.
"""

from __future__ import annotations

import numpy as np

from intsim.codes import OVERFLOW_SATURATE
from intsim.jit import jit, jit_inline

PAIR_MAX = 2**15 - 1  # vpmaddubsw saturates each pair sum to int16
PAIR_MIN = -(2**15)

# What one walk step does after an addition (a constant where the walk is inlined).
EXACT_STEP, SATURATE_STEP, WRAP_STEP = 0, 1, 2


@jit_inline
def _step(value, lo, hi, mask, mode):
    # ``policy(value)``: clamp to [lo, hi], or the two's-complement wrap ((value - lo) mod 2**bits) + lo
    # (``mask`` = 2**bits - 1, exact on int64 for |value| < 2**62), or the value itself.
    if mode == SATURATE_STEP:
        return min(max(value, lo), hi)
    if mode == WRAP_STEP:
        return ((value - lo) & mask) + lo
    return value


@jit_inline
def _walk(acc, left, xs, w_t, lo, hi, mask, mode, per_lane):
    # acc[o] = step(acc[o] + x(k, o) * w_t[k, o]) for k ascending, x(k, o) = xs[k, o] (per_lane) or
    # xs[k, 0] (one input for every lane); left[o] |= the step changed the value.
    for k in range(w_t.shape[0]):
        x_row, w_row = xs[k], w_t[k]
        for o in range(acc.shape[0]):
            value = acc[o] + (x_row[o] if per_lane else x_row[0]) * w_row[o]
            stepped = _step(value, lo, hi, mask, mode)
            left[o] |= np.int64(stepped != value)
            acc[o] = stepped
    return np.int64(0)


@jit_inline
def _walk_pairs(acc, left, xs, w_t, lo, hi, mask, mode, per_lane):
    # As _walk with the products taken two at a time, (k0, k1), (k2, k3), ..., each pair sum (a
    # trailing odd product on its own) saturated to int16 first; returns how many pair sums saturated.
    depth = w_t.shape[0]
    saturated = np.int64(0)
    for k in range(0, depth, 2):
        k_next = min(k + 1, depth - 1)
        second = np.int64(k + 1 < depth)
        x0, x1, w0, w1 = xs[k], xs[k_next], w_t[k], w_t[k_next]
        for o in range(acc.shape[0]):
            pair = ((x0[o] if per_lane else x0[0]) * w0[o]
                    + second * ((x1[o] if per_lane else x1[0]) * w1[o]))
            pair_int16 = min(max(pair, PAIR_MIN), PAIR_MAX)
            saturated += np.int64(pair_int16 != pair)
            value = acc[o] + pair_int16
            stepped = _step(value, lo, hi, mask, mode)
            left[o] |= np.int64(stepped != value)
            acc[o] = stepped
    return saturated


@jit_inline
def _walk_block(acc, left, xs, w_t, fits, lo, hi, mask, saturating, pairwise, per_lane):
    # One walk, its step a constant in each inlined copy; returns the saturated pair count.
    if pairwise and saturating:
        return _walk_pairs(acc, left, xs, w_t, lo, hi, mask, SATURATE_STEP, per_lane)
    if pairwise:
        return _walk_pairs(acc, left, xs, w_t, lo, hi, mask, WRAP_STEP, per_lane)
    if fits:
        return _walk(acc, left, xs, w_t, lo, hi, mask, EXACT_STEP, per_lane)
    if saturating:
        return _walk(acc, left, xs, w_t, lo, hi, mask, SATURATE_STEP, per_lane)
    return _walk(acc, left, xs, w_t, lo, hi, mask, WRAP_STEP, per_lane)


@jit_inline
def _policy(value, lo, hi, mask, saturating):
    if saturating:
        return _step(value, lo, hi, mask, SATURATE_STEP)
    return _step(value, lo, hi, mask, WRAP_STEP)


@jit_inline
def _pixels(x, x_zero_point, w_t, c0, w_zero_point, post, weight_bound, sh, sw, dh, dw, top, left_pad,
            kernel_h, kernel_w, groups, acc_bits, overflow, pairwise_int16, out, per_lane):
    n_batch, height, width, cin = x.shape
    blocks, depth, lanes = w_t.shape
    cout = out.shape[3]
    cin_g, cout_g = cin // groups, cout // groups
    taps = kernel_h * kernel_w
    hi = (np.int64(1) << (acc_bits - 1)) - 1
    lo = -hi - 1
    mask = (np.int64(1) << acc_bits) - 1
    saturating = overflow == OVERFLOW_SATURATE
    zx = np.int64(x_zero_point)
    start, start_left, fixed = np.empty(cout, np.int64), np.empty(cout, np.int64), np.empty(cout, np.int64)
    for o in range(cout):
        start[o] = _policy(c0[o], lo, hi, mask, saturating)
        start_left[o] = np.int64(start[o] != c0[o])
        fixed[o] = abs(c0[o]) + abs(post[o])
    patch = np.empty(taps * cin, np.int64)  # the window in (kh, kw, c) order, padding taps holding z_x
    patch_cols, patch_taps = patch.reshape(taps * cin, 1), patch.reshape(taps, cin)
    group_cols = np.empty((taps * cin_g, 1), np.int64)
    lane_x = patch_taps if cout_g == 1 else np.empty((taps, cout), np.int64)
    channel_sum, channel_l1 = np.empty(cin, np.int64), np.empty(cin, np.int64)
    group_sum, group_l1 = np.empty(groups, np.int64), np.empty(groups, np.int64)
    correction, need = np.empty(cout, np.int64), np.empty(cout, np.int64)
    acc, left = np.empty((blocks, lanes), np.int64), np.empty((blocks, lanes), np.int64)
    overflow_count = np.int64(0)
    pair_count = np.int64(0)
    for n in range(n_batch):
        for oh in range(out.shape[1]):
            for ow in range(out.shape[2]):
                channel_sum[:] = 0
                channel_l1[:] = 0
                for kh in range(kernel_h):
                    ih = oh * sh - top + kh * dh
                    for kw in range(kernel_w):
                        iw = ow * sw - left_pad + kw * dw
                        base = (kh * kernel_w + kw) * cin
                        if 0 <= ih < height and 0 <= iw < width:
                            for c in range(cin):
                                value = x[n, ih, iw, c]
                                patch[base + c] = value
                                channel_sum[c] += value
                                channel_l1[c] += abs(value)
                        else:
                            for c in range(cin):
                                patch[base + c] = zx
                                channel_sum[c] += zx
                                channel_l1[c] += abs(zx)
                group_sum[:] = 0
                group_l1[:] = 0
                for c in range(cin):
                    group_sum[c // cin_g] += channel_sum[c]
                    group_l1[c // cin_g] += channel_l1[c]
                for o in range(cout):
                    g = o // cout_g
                    correction[o] = w_zero_point[o] * group_sum[g]
                    need[o] = fixed[o] + group_l1[g] * weight_bound[o]
                if per_lane and cout_g > 1:  # lane o reads input channel o // cout_g
                    for t in range(taps):
                        for o in range(cout):
                            lane_x[t, o] = patch_taps[t, o // cout_g]
                for b in range(blocks):
                    first = b * lanes
                    fits = True
                    for j in range(lanes):
                        fits &= need[first + j] <= hi
                        acc[b, j] = start[first + j]
                        left[b, j] = start_left[first + j]
                    if per_lane:
                        xs = lane_x
                    elif groups == 1:
                        xs = patch_cols
                    else:
                        for t in range(taps):
                            for ci in range(cin_g):
                                group_cols[t * cin_g + ci, 0] = patch[t * cin + b * cin_g + ci]
                        xs = group_cols
                    pair_count += _walk_block(acc[b], left[b], xs, w_t[b], fits, lo, hi, mask, saturating,
                                              pairwise_int16, per_lane)
                    for j in range(lanes):
                        o = first + j
                        value = acc[b, j] - correction[o]
                        stepped = _policy(value, lo, hi, mask, saturating)
                        flag = left[b, j] | np.int64(stepped != value)
                        value = stepped - post[o]
                        stepped = _policy(value, lo, hi, mask, saturating)
                        flag |= np.int64(stepped != value)
                        overflow_count += flag
                        out[n, oh, ow, o] = np.int32(stepped)
    return overflow_count, pair_count


@jit
def mac_checked_core(x, x_zero_point, w_t, c0, w_zero_point, post, weight_bound, sh, sw, dh, dw, top, left,
                     kernel_h, kernel_w, groups, acc_bits, overflow, pairwise_int16, out):
    """The checked accumulators of a grouped NHWC convolution into ``out`` [N, OH, OW, Cout] (int32);
    returns ``(overflow_count, pair_saturation_count)``.

    ``x`` holds raw codes [N, H, W, Cin], every padded position reading ``x_zero_point``.  ``w_t``
    [blocks, K, lanes] (int64 raw weight codes, ``K`` in ``(kh, kw, ci)`` order) has either one block
    per group, lane ``j`` of block ``g`` being output channel ``g * lanes + j``, or, for
    ``Cin // groups == 1`` with ``groups > 1``, a single block of all ``Cout`` lanes with ``K`` the
    taps, lane ``o`` reading input channel ``o // (Cout // groups)``.  ``c0``, ``w_zero_point``,
    ``post`` (subtracted last) and ``weight_bound`` (``max_k |w[k, o]| + |w_zero_point[o]|``) are
    int64 [Cout].  See the module docstring for the order and the bound.
    """
    if w_t.shape[0] == 1 and groups > 1:
        return _pixels(x, x_zero_point, w_t, c0, w_zero_point, post, weight_bound, sh, sw, dh, dw, top, left,
                       kernel_h, kernel_w, groups, acc_bits, overflow, pairwise_int16, out, True)
    return _pixels(x, x_zero_point, w_t, c0, w_zero_point, post, weight_bound, sh, sw, dh, dw, top, left,
                   kernel_h, kernel_w, groups, acc_bits, overflow, pairwise_int16, out, False)


def checked_conv(x, x_zero_point, w, w_zero_point, c0, post, strides, dilations, pads, groups, acc_bits, overflow,
                 pairwise_int16, out):
    """:func:`mac_checked_core` for OHWI weights ``w`` [Cout, KH, KW, Cin // groups] into ``out``:
    lays the weights out as it reads them (one block of all channels where each group has one input
    channel, else a block per group) and returns ``(overflow_count, pair_saturation_count)`` as ints.
    The codes are widened to int64 first: one compiled core for every code dtype."""
    cout, kernel_h, kernel_w, cin_g = w.shape
    rows = w.reshape(cout, -1).astype(np.int64)
    if cin_g == 1 and groups > 1:
        w_t = np.ascontiguousarray(rows.T).reshape(1, -1, cout)
    else:
        w_t = np.ascontiguousarray(rows.reshape(groups, cout // groups, -1).transpose(0, 2, 1))
    w_zero_point = np.asarray(w_zero_point, np.int64)
    weight_bound = np.abs(rows).max(axis=1, initial=0) + np.abs(w_zero_point)
    overflow_count, pair_count = mac_checked_core(
        np.ascontiguousarray(x, dtype=np.int64), int(x_zero_point), w_t, np.asarray(c0, np.int64), w_zero_point,
        np.asarray(post, np.int64), weight_bound, strides[0], strides[1], dilations[0], dilations[1], pads[0],
        pads[1], kernel_h, kernel_w, groups, int(acc_bits), int(overflow), bool(pairwise_int16), out,
    )
    return int(overflow_count), int(pair_count)
