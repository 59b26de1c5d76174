"""Naive twins of :mod:`intsim.kernels.gemm`: the unfused definition, accumulators then requantization.

``*_prepare`` only gathers the arguments; ``*_requantized`` runs the naive
accumulator kernel of :mod:`intsim.kernels.naive_mac` and then its naive
:func:`~intsim.kernels.naive_mac.requantize`, which is what the fused fast
kernels must reproduce bit for bit.
"""

from __future__ import annotations


from intsim.kernels.naive.mac import conv2d_nhwc_acc, fully_connected_acc, matmul_acc, requantize


def conv2d_nhwc_prepare(x_dtype, x_zero_point, w, w_zero_point, bias, strides, dilations, pads, groups, acc_bits,
                        overflow, pairwise_int16):
    """Naive twin of :func:`intsim.kernels.gemm.conv2d_nhwc_prepare`: the arguments, unpacked."""
    return (x_zero_point, w, w_zero_point, bias, tuple(strides), tuple(dilations), tuple(pads), groups, acc_bits,
            overflow, pairwise_int16)


def fully_connected_prepare(x_dtype, x_zero_point, w, w_zero_point, bias, acc_bits, overflow, pairwise_int16):
    """Naive twin of :func:`intsim.kernels.gemm.fully_connected_prepare`: the arguments, unpacked."""
    return (x_zero_point, w, w_zero_point, bias, acc_bits, overflow, pairwise_int16)


def _requantized(acc, overflow_count, pair_count, requant_args, count_clamps):
    out, saturation_count = requantize(acc, 0, *requant_args)
    return out, overflow_count, pair_count, saturation_count if count_clamps else None


def conv2d_nhwc_requantized(x, prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                            clamp_min, clamp_max, out_dtype, count_clamps=True):
    """Naive twin of :func:`intsim.kernels.gemm.conv2d_nhwc_requantized`."""
    return _requantized(*conv2d_nhwc_acc(x, *prepared), (multiplier, shift, scale, rounding, multiplier_bits,
                                                          out_zero_point, clamp_min, clamp_max, out_dtype),
                        count_clamps)


def fully_connected_requantized(x, prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                clamp_min, clamp_max, out_dtype, count_clamps=True):
    """Naive twin of :func:`intsim.kernels.gemm.fully_connected_requantized`."""
    return _requantized(*fully_connected_acc(x, *prepared), (multiplier, shift, scale, rounding, multiplier_bits,
                                                              out_zero_point, clamp_min, clamp_max, out_dtype),
                        count_clamps)


def conv2d_nhwc_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
                         clamp_max, out_dtype, count_clamps=True):
    """Naive twin of :func:`intsim.kernels.gemm.conv2d_nhwc_launcher`: nothing worked out ahead."""
    requant_args = (multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max, out_dtype)
    return lambda x: conv2d_nhwc_requantized(x, prepared, *requant_args, count_clamps)


def fully_connected_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                             clamp_min, clamp_max, out_dtype, count_clamps=True):
    """Naive twin of :func:`intsim.kernels.gemm.fully_connected_launcher`: nothing worked out ahead."""
    requant_args = (multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max, out_dtype)
    return lambda x: fully_connected_requantized(x, prepared, *requant_args, count_clamps)


def matmul_requantized(a, a_zero_point, b, b_zero_point, acc_bits, overflow, pairwise_int16, multiplier, shift,
                       scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max, out_dtype):
    """Naive twin of :func:`intsim.kernels.gemm.matmul_requantized` (per-tensor requantization)."""
    acc, overflow_count, pair_count = matmul_acc(a, a_zero_point, b, b_zero_point, acc_bits, overflow,
                                                 pairwise_int16)
    out, saturation_count = requantize(acc.reshape(-1, 1), 0, multiplier, shift, scale, rounding, multiplier_bits,
                                       out_zero_point, clamp_min, clamp_max, out_dtype)
    return out.reshape(acc.shape), overflow_count, pair_count, saturation_count
