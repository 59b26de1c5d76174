"""Float islands: the ``DQ -> float op -> Q`` groups onnxruntime leaves unfused, computed as it computes them.

Codes in, codes out.  ``DequantizeLinear`` is ``float32(x - z) * s`` (one
float32 rounding), ``QuantizeLinear`` is ``clamp(rint(y / s), min - z, max - z) + z``
with a float32 division (``MlasQuantizeLinear``).  Each public function
allocates its output and calls a private numba core; inputs are trusted.  The
naive twins live in :mod:`intsim.kernels.naive.float_island`.
"""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import FLOAT32_RINT, saturating_round_float
from intsim.jit import jit
from intsim.kernels.mlas_sgemm import conv_sgemm_path, mlas_dot, sgemm_path


@jit
def _quantize_float32(value, y_scale, y_zero_point, clamp_min, clamp_max):
    """``(code, saturated)`` of one float32 value: MlasQuantizeLinear."""
    rounded = saturating_round_float(np.float32(value / y_scale), FLOAT32_RINT) + y_zero_point
    clamped = min(max(rounded, clamp_min), clamp_max)
    return clamped, clamped != rounded


@jit
def _add_float32_core(a, a_zero_point, a_scale, b, b_zero_point, b_scale, y_scale, y_zero_point, clamp_min,
                      clamp_max, out):
    saturated = 0
    for i in range(a.size):
        real_a = np.float32(np.float32(np.int64(a[i]) - a_zero_point) * a_scale)
        real_b = np.float32(np.float32(np.int64(b[i]) - b_zero_point) * b_scale)
        out[i], clipped = _quantize_float32(np.float32(real_a + real_b), y_scale, y_zero_point, clamp_min, clamp_max)
        saturated += clipped
    return saturated


def add_float32(a, a_zero_point, a_scale, b, b_zero_point, b_scale, y_scale, y_zero_point, clamp_min, clamp_max,
                out_dtype):
    """A float ``Add`` between DQs and a Q: dequantize both, add in float32, quantize.

    Every step is one correctly rounded float32 operation, so onnxruntime's
    result is reproduced exactly (no summation order to choose).

    Parameters
    ----------
    a, b : integer code arrays of the same shape
    a_zero_point, b_zero_point, y_zero_point : int
    a_scale, b_scale, y_scale : float32
    clamp_min, clamp_max : int
    out_dtype : numpy dtype

    Returns
    -------
    out : array of ``out_dtype``
    saturation_count : int
    """
    out = np.empty(a.shape, out_dtype)
    saturated = _add_float32_core(a.reshape(-1), int(a_zero_point), np.float32(a_scale), b.reshape(-1),
                                  int(b_zero_point), np.float32(b_scale), np.float32(y_scale), int(y_zero_point),
                                  int(clamp_min), int(clamp_max), out.reshape(-1))
    return out, int(saturated)


@jit
def _conv2d_float32_core(x, x_zero_point, x_scale, weight_rows, bias, kernel_h, kernel_w, sh, sw, dh, dw, top, left,
                         groups, path, stride_k, y_scale, y_zero_point, clamp_min, clamp_max, out):
    n_batch, height, width, _ = x.shape
    cout, depth = weight_rows.shape
    cin_g = depth // (kernel_h * kernel_w)
    cout_g = cout // groups
    out_h, out_w = out.shape[1], out.shape[2]
    column = np.empty(depth, np.float32)
    saturated = 0
    for n in range(n_batch):
        for oh in range(out_h):
            for ow in range(out_w):
                for g in range(groups):
                    k = 0
                    for c in range(cin_g):
                        for kh in range(kernel_h):
                            h = oh * sh - top + kh * dh
                            for kw in range(kernel_w):
                                w = ow * sw - left + kw * dw
                                column[k] = np.float32(0.0)
                                if 0 <= h < height and 0 <= w < width:
                                    column[k] = np.float32(
                                        np.float32(np.int64(x[n, h, w, g * cin_g + c]) - x_zero_point) * x_scale)
                                k += 1
                    for j in range(cout_g):
                        o = g * cout_g + j
                        total = mlas_dot(weight_rows[o], column, path, stride_k, j, cout_g, oh * out_w + ow,
                                         out_h * out_w, np.float32(0.0))
                        out[n, oh, ow, o], clipped = _quantize_float32(np.float32(total + bias[o]), y_scale,
                                                                       y_zero_point, clamp_min, clamp_max)
                        saturated += clipped
    return saturated


def conv2d_float32_nhwc(x, x_zero_point, x_scale, weight, bias, strides, dilations, pads, groups, y_scale,
                        y_zero_point, clamp_min, clamp_max, out_dtype, order="exact"):
    """A float ``Conv`` between DQs and a Q (NHWC codes in and out, dequantized float32 OHWI weights).

    The float32 DQ values (0.0 in the padding) and weights are multiplied and
    summed as one GEMM output (``K`` in channel, kernel row, kernel column
    order) in the summation order ``order`` names, the float32 bias added, and
    the sum quantized.  ``order="mlas"`` is onnxruntime's (``MlasConv``, see
    :mod:`intsim.kernels.mlas_sgemm`): bit-exact on x86-64 with AVX-512 for a
    batch of several images or a grouped convolution.  ``order="exact"`` sums
    the exact products in float64 and rounds once, so a code can differ from
    onnxruntime's where the two float32 sums straddle a rounding boundary.

    Parameters
    ----------
    x : integer code array [N, H, W, C]
    x_zero_point, y_zero_point : int
    x_scale, y_scale : float32
    weight : float32 array [O, KH, KW, C / groups]
    bias : float32 array [O]
    strides, dilations : (int, int)
    pads : (top, left, bottom, right)
    groups : int
    clamp_min, clamp_max : int
    out_dtype : numpy dtype
    order : ``"exact"`` or ``"mlas"`` (a profile's ``float_island_order``)

    Returns
    -------
    out : array [N, OH, OW, O] of ``out_dtype``
    saturation_count : int
    """
    (sh, sw), (dh, dw), (top, left, bottom, right) = strides, dilations, pads
    _, height, width, _ = x.shape
    cout, kernel_h, kernel_w, _ = weight.shape
    out_h = (height + top + bottom - dh * (kernel_h - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kernel_w - 1) - 1) // sw + 1
    path, stride_k = conv_sgemm_path(order, (height, width), weight.shape, strides, dilations, pads, groups,
                                     (out_h, out_w))
    weight_rows = np.ascontiguousarray(weight.transpose(0, 3, 1, 2).reshape(cout, -1))
    out = np.empty((x.shape[0], out_h, out_w, cout), out_dtype)
    saturated = _conv2d_float32_core(x, int(x_zero_point), np.float32(x_scale), weight_rows, bias, kernel_h, kernel_w,
                                     sh, sw, dh, dw, top, left, int(groups), path, stride_k, np.float32(y_scale),
                                     int(y_zero_point), int(clamp_min), int(clamp_max), out)
    return out, int(saturated)


@jit
def _gemm_float32_core(a, a_zero_point, a_scale, weight_columns, bias, path, stride_k, y_scale, y_zero_point,
                       clamp_min, clamp_max, out):
    rows, depth = a.shape
    columns = weight_columns.shape[0]
    row = np.empty(depth, np.float32)
    saturated = 0
    for m in range(rows):
        for k in range(depth):
            row[k] = np.float32(np.float32(np.int64(a[m, k]) - a_zero_point) * a_scale)
        for n in range(columns):
            value = mlas_dot(row, weight_columns[n], path, stride_k, m, rows, n, columns, bias[n])
            out[m, n], clipped = _quantize_float32(value, y_scale, y_zero_point, clamp_min, clamp_max)
            saturated += clipped
    return saturated


def gemm_float32(a, a_zero_point, a_scale, weight, bias, y_scale, y_zero_point, clamp_min, clamp_max, out_dtype,
                 order="exact", trans_b=True):
    """A float ``Gemm`` or ``MatMul`` between DQs and a Q: ``Q(DQ(a) @ weight + bias)``.

    The float32 DQ values and weights are multiplied and summed with the bias
    as ``C`` in the summation order ``order`` names.  ``order="mlas"`` is
    ``MlasGemm``'s (see :mod:`intsim.kernels.mlas_sgemm`; the bias enters as
    the GEMM's ``C``, as onnxruntime's ``Gemm`` passes it with ``beta = 1``):
    ``trans_b`` says whether onnxruntime reads ``B`` transposed (a ``Gemm``
    with ``transB = 1``) or not (``MatMul``), which picks its kernel for one
    row.  ``order="exact"``: the exact products summed in float64, rounded
    once, then the bias added in float32.

    Parameters
    ----------
    a : integer code array [M, K]
    a_zero_point, y_zero_point : int
    a_scale, y_scale : float32
    weight : float32 array [K, N] (dequantized)
    bias : float32 array [N] (zeros for a MatMul)
    clamp_min, clamp_max : int
    out_dtype : numpy dtype
    order : ``"exact"`` or ``"mlas"`` (a profile's ``float_island_order``)
    trans_b : bool

    Returns
    -------
    out : array [M, N] of ``out_dtype``
    saturation_count : int
    """
    rows, depth = a.shape
    columns = weight.shape[1]
    path, stride_k = sgemm_path(order, rows, columns, depth, trans_b, depth if trans_b else columns)
    out = np.empty((rows, columns), out_dtype)
    saturated = _gemm_float32_core(a, int(a_zero_point), np.float32(a_scale), np.ascontiguousarray(weight.T), bias,
                                   path, stride_k, np.float32(y_scale), int(y_zero_point), int(clamp_min),
                                   int(clamp_max), out)
    return out, int(saturated)


@jit
def _global_avg_pool_float32_core(x, x_zero_point, x_scale, y_scale, y_zero_point, clamp_min, clamp_max, out):
    n_batch, height, width, channels = x.shape
    size = height * width
    vector_end = size - size % 4
    saturated = 0
    for n in range(n_batch):
        for c in range(channels):
            lanes = np.zeros(4, np.float32)
            for i in range(vector_end):
                real = np.float32(np.float32(np.int64(x[n, i // width, i % width, c]) - x_zero_point) * x_scale)
                lanes[i % 4] = np.float32(lanes[i % 4] + real)
            total = np.float32(np.float32(lanes[0] + lanes[2]) + np.float32(lanes[1] + lanes[3]))
            for i in range(vector_end, size):
                real = np.float32(np.float32(np.int64(x[n, i // width, i % width, c]) - x_zero_point) * x_scale)
                total = np.float32(total + real)
            mean = np.float32(total / np.float32(size))
            out[n, 0, 0, c], clipped = _quantize_float32(mean, y_scale, y_zero_point, clamp_min, clamp_max)
            saturated += clipped
    return saturated


def global_avg_pool_float32_nhwc(x, x_zero_point, x_scale, y_scale, y_zero_point, clamp_min, clamp_max, out_dtype):
    """A float ``GlobalAveragePool`` between a DQ and a Q, in ``MlasPool``'s float32 order (exact).

    ``MlasPoolGlobalKernel`` (``onnxruntime/core/mlas/lib/pooling.cpp``) reads a
    channel's ``H W`` values in row-major order into four float32 lanes (value
    ``i`` into lane ``i mod 4``) while four remain, adds the lanes as
    ``(l0 + l2) + (l1 + l3)``, adds the remaining values one by one and divides
    by ``float32(H W)``.  Every step is one correctly rounded float32
    operation, so the result is onnxruntime's bit for bit.

    Parameters
    ----------
    x : integer code array [N, H, W, C]
    x_zero_point, y_zero_point : int
    x_scale, y_scale : float32
    clamp_min, clamp_max : int
    out_dtype : numpy dtype

    Returns
    -------
    out : array [N, 1, 1, C] of ``out_dtype``
    saturation_count : int
    """
    out = np.empty((x.shape[0], 1, 1, x.shape[3]), out_dtype)
    saturated = _global_avg_pool_float32_core(x, int(x_zero_point), np.float32(x_scale), np.float32(y_scale),
                                              int(y_zero_point), int(clamp_min), int(clamp_max), out)
    return out, int(saturated)


@jit
def _avg_pool_float32_island_core(x, x_zero_point, x_scale, kernel_h, kernel_w, sh, sw, top, left, count_include_pad,
                                  y_scale, y_zero_point, clamp_min, clamp_max, out):
    n_batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    saturated = 0
    for n in range(n_batch):
        for oh in range(out_h):
            h0, h1 = max(oh * sh - top, 0), min(oh * sh - top + kernel_h, height)
            for ow in range(out_w):
                w0, w1 = max(ow * sw - left, 0), min(ow * sw - left + kernel_w, width)
                count = kernel_h * kernel_w if count_include_pad else (h1 - h0) * (w1 - w0)
                for c in range(channels):
                    total = np.float32(0.0)
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            real = np.float32(np.float32(np.int64(x[n, h, w, c]) - x_zero_point) * x_scale)
                            total = np.float32(total + real)
                    mean = np.float32(total / np.float32(count))
                    out[n, oh, ow, c], clipped = _quantize_float32(mean, y_scale, y_zero_point, clamp_min, clamp_max)
                    saturated += clipped
    return saturated


def avg_pool_float32_island_nhwc(x, x_zero_point, x_scale, kernel, strides, pads, count_include_pad, y_scale,
                                 y_zero_point, clamp_min, clamp_max, out_dtype):
    """A float ``AveragePool`` between a DQ and a Q, as onnxruntime computes it (exact).

    Measured against onnxruntime 1.32 (plain ``AveragePool`` and the NCHWc one
    its layout pass makes of it): each window is summed in float32 from 0.0 in
    row-major order over the cells inside the image, divided by the float32
    count (the whole kernel with ``count_include_pad``, else the cells inside)
    and quantized as ``QuantizeLinear`` does (rint, then the zero point added
    as an integer).  Every step is one correctly rounded float32 operation.
    (``QLinearAveragePool``'s :func:`avg_pool_float32_nhwc` sums alike but
    adds the zero point in float32 before rounding.)

    Parameters
    ----------
    x : integer code array [N, H, W, C]
    x_zero_point, y_zero_point : int
    x_scale, y_scale : float32
    kernel, strides : (int, int)
    pads : (top, left, bottom, right), each smaller than the kernel
    count_include_pad : bool
    clamp_min, clamp_max : int
    out_dtype : numpy dtype

    Returns
    -------
    out : array [N, OH, OW, C] of ``out_dtype``
    saturation_count : int
    """
    out_h = (x.shape[1] + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    out_w = (x.shape[2] + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]), out_dtype)
    saturated = _avg_pool_float32_island_core(
        x, int(x_zero_point), np.float32(x_scale), int(kernel[0]), int(kernel[1]), int(strides[0]), int(strides[1]),
        int(pads[0]), int(pads[1]), bool(count_include_pad), np.float32(y_scale), int(y_zero_point), int(clamp_min),
        int(clamp_max), out)
    return out, int(saturated)
