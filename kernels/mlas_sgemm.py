"""MLAS's float32 summation orders: one output of onnxruntime's float ``Conv`` / ``Gemm`` / ``MatMul`` on x86-64.

onnxruntime's CPU provider computes a float convolution as GEMMs (``MlasConv``
in ``core/mlas/lib/convolve.cpp``: the filter matrix ``[M = C_out / groups,
K = C_in / groups * KH * KW]`` times the im2col patches ``[K, N = OH * OW]``,
``K`` ordered channel, kernel row, kernel column, padding cells read as 0.0),
then adds the bias in float32.  Which float32 order a GEMM output gets depends
only on the GEMM's shape (``MlasSgemmOperation``, ``core/mlas/lib/sgemm.cpp``):

``FMA_BLOCKS`` (``M > 1`` and ``N > 1``)
    ``K`` is cut into blocks of ``stride_k`` (:func:`sgemm_stride_k`); each
    block is a chain of fused multiply-adds from 0.0 in ``k`` order (the
    AVX-512 / FMA3 ``MlasSgemmKernel``), and the block's sum is added to ``C``
    (``C = block + C``), ``C`` starting at the GEMM's input ``C``.
``M1`` (``M == 1``, ``B`` not transposed: ``MlasSgemmKernelM1Avx``)
    ``k`` in groups of 4 while four remain, then one of 2, then one of 1; a
    group is ``((p0 + p1) + p2) + p3`` of float32 products (multiply, then
    add: AVX, no FMA) and is added to ``C`` (``C = group + C``).
``M1_TRANSB`` (``M == 1``, ``B`` transposed: ``MlasSgemmKernelM1TransposeBAvx``)
    eight float32 lanes, ``k`` into lane ``k mod 8`` (multiply, then add); the
    kernel reduces 4 outputs at a time, then 2, then 1, each block with its
    own order of the lane sums (see :func:`mlas_dot`), then adds ``C``.
``N1_FLIPPED`` (``N == 1`` with a contiguous ``B`` column and ``C``)
    ``MlasSgemmOperation`` computes ``C^T = B^T A^T`` with the
    ``M1_TRANSB`` kernel: the same arithmetic, the outputs counted along ``M``.

Measured against onnxruntime 1.32 on AVX-512 (``tools/mlas_order_probe.py``):
every float32 output equal for all these paths.  ``EXACT`` is intsim's
order-free model: the float32 products summed in float64, rounded once, then
``+ C`` in float32.
"""

from __future__ import annotations

import numpy as np

from intsim.jit import jit
from intsim.kernels.onnxruntime_ops import fma_float32

EXACT, FMA_BLOCKS, M1, M1_TRANSB, N1_FLIPPED = range(5)

# MLAS_SGEMM_STRIDEN / MLAS_SGEMM_STRIDEK (core/mlas/lib/mlasi.h): the B panel's starting tile.
SGEMM_STRIDE_N = 128
SGEMM_STRIDE_K = 128


def sgemm_stride_k(n: int, k: int) -> int:
    """The ``K`` block of ``MlasSgemmOperation`` (and ``MlasConvOperation``) for ``A`` not transposed.

    The B panel holds ``SGEMM_STRIDE_N x SGEMM_STRIDE_K`` floats; a small ``K``
    trades ``K`` for ``N`` (halving ``stride_k`` while half of it still covers
    ``K``), a small ``N`` trades ``N`` for ``K`` (while ``stride_n > 16``).
    """
    stride_n, stride_k = SGEMM_STRIDE_N, SGEMM_STRIDE_K
    if n >= k:
        while stride_k // 2 >= k:
            stride_n, stride_k = stride_n * 2, stride_k // 2
    else:
        while stride_n > 16 and stride_n // 2 >= n:
            stride_n, stride_k = stride_n // 2, stride_k * 2
    return stride_k


def sgemm_path(order: str, m: int, n: int, k: int, trans_b: bool, ldb: int) -> tuple[int, int]:
    """``(path, stride_k)`` of a float32 GEMM ``C[m, n] = A[m, k] B[k, n] + C`` (``ldc == n``).

    ``order`` is a profile's ``float_island_order``: ``"exact"`` gives
    :data:`EXACT`; ``"mlas"`` the path ``MlasSgemmOperation`` takes for that
    shape, ``trans_b`` (``B`` stored ``[n, k]``) and ``B``'s leading dimension.
    """
    if order == "exact":
        return EXACT, k
    if m == 1:
        return (M1_TRANSB if trans_b else M1), k
    if n == 1 and ldb == 1:
        return N1_FLIPPED, k
    return FMA_BLOCKS, sgemm_stride_k(n, k)


def conv_sgemm_path(order: str, input_hw, weight_ohwi_shape, strides, dilations, pads, groups,
                    output_hw) -> tuple[int, int]:
    """``(path, stride_k)`` of the GEMMs ``MlasConv`` runs for one float ``Conv`` (``MlasConvPrepare``).

    ``M = C_out / groups``, ``N = OH OW``, ``K = C_in / groups KH KW``.  A
    pointwise convolution (1 x 1, strides 1, no padding) multiplies the input
    directly (``B`` not transposed, ``ldb = N``); a single-channel one whose
    kernel spans the input's width (strides and dilations 1, no padding)
    multiplies it transposed (``ldb = W``); otherwise im2col patches
    (``ldb = N``).  The ``K`` block is the one ``MlasConvOperation`` and
    ``MlasSgemmOperation`` both derive from the whole ``N``, as onnxruntime
    runs it for a batch of several images, grouped convolutions, or one
    thread (with one image, several threads and ``K > 128`` it may cut ``N``
    and so ``K`` differently; not modelled).
    """
    cout, kernel_h, kernel_w, cin_g = weight_ohwi_shape
    m, n, k = cout // groups, output_hw[0] * output_hw[1], cin_g * kernel_h * kernel_w
    direct = tuple(strides) == (1, 1) and not any(pads)
    trans_b = (direct and k != cin_g and tuple(dilations) == (1, 1) and cin_g == 1
               and kernel_w == input_hw[1])
    return sgemm_path(order, m, n, k, trans_b, input_hw[1] if trans_b else n)


@jit
def _lane_sum(lanes, row, rows):
    # MlasSgemmKernelM1TransposeBAvx reduces 4 rows together (unpack, three vertical adds, halves),
    # then 2 (unpack, add, halves, high pair), then 1 (two horizontal adds, halves).
    full = rows - rows % 4
    l0, l1, l2, l3, l4, l5, l6, l7 = lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5], lanes[6], lanes[7]
    if row < full:
        return np.float32(np.float32(np.float32(np.float32(l0 + l1) + l2) + l3)
                          + np.float32(np.float32(np.float32(l4 + l5) + l6) + l7))
    if row < full + (rows % 4 & 2):
        return np.float32(np.float32(np.float32(l0 + l2) + np.float32(l4 + l6))
                          + np.float32(np.float32(l1 + l3) + np.float32(l5 + l7)))
    return np.float32(np.float32(np.float32(l0 + l1) + np.float32(l2 + l3))
                      + np.float32(np.float32(l4 + l5) + np.float32(l6 + l7)))


@jit
def mlas_dot(a, b, path, stride_k, m, rows_m, n, cols_n, c):
    """``a . b + c`` (float32 vectors of one length ``K``, float32 ``c``) in the order of ``path``.

    ``(m, n)`` is the output's place in the ``rows_m x cols_n`` GEMM (the
    ``M1_TRANSB`` / ``N1_FLIPPED`` reductions depend on it); ``stride_k`` the
    ``FMA_BLOCKS`` block.  See the module docstring for each path.
    """
    depth = a.shape[0]
    total = np.float32(c)
    if path == EXACT:
        exact = 0.0
        for k in range(depth):
            exact += np.float64(a[k]) * np.float64(b[k])
        return np.float32(np.float32(exact) + total)
    if path == FMA_BLOCKS:
        for start in range(0, depth, stride_k):
            block = np.float32(0.0)
            for k in range(start, min(depth, start + stride_k)):
                block = fma_float32(a[k], b[k], block)
            total = np.float32(block + total)
        return total
    if path == M1:
        k = 0
        for size in (4, 2, 1):
            while depth - k >= size:
                group = np.float32(a[k] * b[k])
                for j in range(k + 1, k + size):
                    group = np.float32(group + np.float32(a[j] * b[j]))
                total = np.float32(group + total)
                k += size
                if size < 4:
                    break
        return total
    lanes = np.zeros(8, np.float32)
    for k in range(depth):
        lanes[k % 8] = np.float32(lanes[k % 8] + np.float32(a[k] * b[k]))
    if path == M1_TRANSB:
        return np.float32(_lane_sum(lanes, n, cols_n) + total)
    return np.float32(_lane_sum(lanes, m, rows_m) + total)


def conv_nchw_in_order(x, w, b, group: int, stride: int, pad: int, order: str) -> np.ndarray:
    """An NCHW float32 ``Conv`` (square stride and padding, no dilation), each output from :func:`mlas_dot`
    over its im2col patch in (channel, kernel row, kernel column) order, then ``+ b`` in float32.

    One output at a time, in Python: the reference that ``tests/test_mlas_order.py`` and
    ``tools/mlas_order_probe.py`` hold against onnxruntime's own float ``Conv``.
    """
    n_batch, _, height, width = x.shape
    cout, cin_g, kernel_h, kernel_w = w.shape
    cout_g = cout // group
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_h, out_w = (height + 2 * pad - kernel_h) // stride + 1, (width + 2 * pad - kernel_w) // stride + 1
    path, stride_k = conv_sgemm_path(order, (height, width), (cout, kernel_h, kernel_w, cin_g), (stride, stride),
                                     (1, 1), (pad,) * 4, group, (out_h, out_w))
    out = np.empty((n_batch, cout, out_h, out_w), np.float32)
    for n, o, oh, ow in np.ndindex(out.shape):
        g = o // cout_g
        patch = padded[n, g * cin_g:(g + 1) * cin_g, oh * stride:oh * stride + kernel_h,
                       ow * stride:ow * stride + kernel_w]
        out[n, o, oh, ow] = np.float32(mlas_dot(w[o].reshape(-1), np.ascontiguousarray(patch).reshape(-1), path,
                                                stride_k, o % cout_g, cout_g, oh * out_w + ow, out_h * out_w,
                                                np.float32(0.0)) + b[o])
    return out

