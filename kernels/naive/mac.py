"""Naive twins of :mod:`intsim.kernels.mac`: the living definition of its kernels.

Same public signatures and return values, written to be read: Python
integers, one explicit loop per output element, the hardware order spelled
out by :func:`_hardware_order`.  No numba here except the scalar primitives of
:mod:`intsim.fixedpoint`, which are the numeric contract itself.
"""

from __future__ import annotations

import numpy as np

from intsim import fixedpoint
from intsim.codes import OVERFLOW_SATURATE


def _policy(value: int, acc_bits: int, overflow: int) -> tuple[int, bool]:
    """``(new accumulator, overflowed)`` after one step that produced ``value``."""
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    if lo <= value <= hi:
        return value, False
    if overflow == OVERFLOW_SATURATE:
        return int(fixedpoint.saturate(value, acc_bits)), True
    return int(fixedpoint.wrap(value, acc_bits)), True


def _hardware_order(c0, products, corrections, acc_bits, overflow, pairwise_int16):
    """One accumulator: ``c0``, then ``products`` in order, then minus each of ``corrections``.

    Returns ``(acc, overflowed, saturated_pairs)``.
    """
    acc, overflowed = _policy(c0, acc_bits, overflow)
    saturated_pairs = 0
    if pairwise_int16:
        steps = []
        for start in range(0, len(products), 2):
            pair = sum(products[start:start + 2])
            pair_int16 = int(fixedpoint.saturate(pair, 16))
            saturated_pairs += pair_int16 != pair
            steps.append(pair_int16)
    else:
        steps = products
    for step in steps:
        acc, left = _policy(acc + step, acc_bits, overflow)
        overflowed = overflowed or left
    for correction in corrections:
        acc, left = _policy(acc - correction, acc_bits, overflow)
        overflowed = overflowed or left
    return acc, overflowed, saturated_pairs


def _run(outputs, shape, acc_bits, overflow, pairwise_int16):
    """Evaluate ``(c0, products, corrections)`` triples in C order into an int32 array of ``shape``."""
    values = []
    overflow_count = 0
    pair_count = 0
    for c0, products, corrections in outputs:
        acc, overflowed, pairs = _hardware_order(c0, products, corrections, acc_bits, overflow, pairwise_int16)
        values.append(acc)
        overflow_count += overflowed
        pair_count += pairs
    return np.array(values, dtype=np.int64).astype(np.int32).reshape(shape), overflow_count, pair_count


def conv2d_nhwc_acc(x, x_zero_point, w, w_zero_point, bias, strides, dilations, pads, groups, acc_bits, overflow,
                    pairwise_int16):
    """Naive twin of :func:`intsim.kernels.mac.conv2d_nhwc_acc`."""
    n_batch, height, width, cin = x.shape
    cout, kernel_h, kernel_w, cin_g = w.shape
    sh, sw = strides
    dh, dw = dilations
    top, left, bottom, right = pads
    out_h = (height + top + bottom - dh * (kernel_h - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kernel_w - 1) - 1) // sw + 1
    cout_g = cout // groups
    xs, ws = x.tolist(), w.tolist()
    zx = int(x_zero_point)

    def outputs():
        for n in range(n_batch):
            for oh in range(out_h):
                for ow in range(out_w):
                    for o in range(cout):
                        g = o // cout_g
                        window, weights = [], []
                        for kh in range(kernel_h):
                            for kw in range(kernel_w):
                                ih = oh * sh - top + kh * dh
                                iw = ow * sw - left + kw * dw
                                for ci in range(cin_g):
                                    if 0 <= ih < height and 0 <= iw < width:
                                        window.append(xs[n][ih][iw][g * cin_g + ci])
                                    else:
                                        window.append(zx)
                                    weights.append(ws[o][kh][kw][ci])
                        zw = int(w_zero_point[o])
                        k = len(weights)
                        c0 = int(bias[o]) - zx * sum(weights) + k * zx * zw
                        products = [xv * wv for xv, wv in zip(window, weights)]
                        corrections = [zw * sum(window)] if zw != 0 else []
                        yield c0, products, corrections

    return _run(outputs(), (n_batch, out_h, out_w, cout), acc_bits, overflow, pairwise_int16)


def fully_connected_acc(x, x_zero_point, w, w_zero_point, bias, acc_bits, overflow, pairwise_int16):
    """Naive twin of :func:`intsim.kernels.mac.fully_connected_acc`."""
    xs, ws = x.tolist(), w.tolist()
    zx = int(x_zero_point)

    def outputs():
        for row in xs:
            for o, weights in enumerate(ws):
                zw = int(w_zero_point[o])
                c0 = int(bias[o]) - zx * sum(weights) + len(weights) * zx * zw
                products = [xv * wv for xv, wv in zip(row, weights)]
                corrections = [zw * sum(row)] if zw != 0 else []
                yield c0, products, corrections

    return _run(outputs(), (x.shape[0], w.shape[0]), acc_bits, overflow, pairwise_int16)


def matmul_acc(a, a_zero_point, b, b_zero_point, acc_bits, overflow, pairwise_int16):
    """Naive twin of :func:`intsim.kernels.mac.matmul_acc`."""
    n_batch, rows, depth = a.shape
    cols = b.shape[2]
    za, zb = int(a_zero_point), int(b_zero_point)
    a_list, b_list = a.tolist(), b.tolist()

    def outputs():
        for bi in range(n_batch):
            for m in range(rows):
                for j in range(cols):
                    a_row = a_list[bi][m]
                    b_col = [b_list[bi][k][j] for k in range(depth)]
                    products = [av * bv for av, bv in zip(a_row, b_col)]
                    corrections = []
                    if zb != 0:
                        corrections.append(zb * sum(a_row))
                    if za != 0:
                        corrections.append(za * sum(b_col))
                    yield depth * za * zb, products, corrections

    return _run(outputs(), (n_batch, rows, cols), acc_bits, overflow, pairwise_int16)


def requantize(acc, acc_zero_point, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
               clamp_max, out_dtype):
    """Naive twin of :func:`intsim.kernels.mac.requantize`."""
    out = np.empty(acc.shape, out_dtype)
    saturation_count = 0
    for index in np.ndindex(acc.shape):
        c = index[-1]
        centred = int(fixedpoint.saturate(int(acc[index]) - int(acc_zero_point), 32))
        rescaled = fixedpoint.rescale_scalar(
            centred, int(multiplier[c]), int(shift[c]), float(scale[c]), int(rounding), int(multiplier_bits)
        )
        v = int(rescaled) + int(out_zero_point)
        if v < clamp_min or v > clamp_max:
            saturation_count += 1
        out[index] = min(max(v, clamp_min), clamp_max)
    return out, saturation_count
