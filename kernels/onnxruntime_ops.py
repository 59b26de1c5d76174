"""Kernels that reproduce onnxruntime CPU kernels no other intsim op covers.

Each public function allocates its output and calls a private numba core;
inputs are trusted.  The naive twins live in :mod:`intsim.kernels.naive_onnxruntime_ops`.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from intsim.fixedpoint import FLOAT32_RINT, round_float, saturating_round_float
from intsim.jit import jit


@intrinsic
def _llvm_fma_float32(typingctx, x, y, z):
    # ``llvm.fma.f32``: one ``vfmadd`` where the CPU has FMA, else libm's correctly rounded ``fmaf``.
    if not all(t == types.float32 for t in (x, y, z)):
        return None

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fma = builder.module.globals.get("llvm.fma.f32") or ir.Function(
            builder.module, ir.FunctionType(f32, [f32, f32, f32]), "llvm.fma.f32")
        return builder.call(fma, args)

    return types.float32(x, y, z), codegen


@jit
def fma_float32(x, y, z):
    """float32 fused multiply-add ``x * y + z`` of float32 operands, rounded once (x86 ``vfmadd``).

    LLVM's ``llvm.fma.f32`` is the exactly rounded fused multiply-add on every
    target, so a loop of them vectorises.  The naive twin's
    :func:`~intsim.kernels.naive_onnxruntime_ops.fma_float32` computes the same
    in exact rational arithmetic.
    """
    return _llvm_fma_float32(np.float32(x), np.float32(y), np.float32(z))


@jit
def _add_float32_fma_core(a, b, a_ratio, b_ratio, offset, clamp_min, clamp_max, out):
    # Branch-free, so that the loop vectorises.  round_float leaves an integral float32 and the clamp
    # bounds (8/16-bit codes) are exact in float32: clamping before the conversion to int32 is the
    # saturation, and it also covers every value beyond the int32 range.
    saturated = 0
    low, high = np.float32(clamp_min), np.float32(clamp_max)
    for i in range(a.size):
        inner = _llvm_fma_float32(np.float32(b[i]), b_ratio, offset)
        value = round_float(_llvm_fma_float32(np.float32(a[i]), a_ratio, inner), FLOAT32_RINT)
        clamped = min(max(value, low), high)
        saturated += clamped != value
        out[i] = np.int32(clamped)
    return saturated


def add_float32_fma(a, b, a_ratio, b_ratio, offset, clamp_min, clamp_max, out_dtype):
    """onnxruntime's QLinearAdd on raw codes: ``clamp(rint(fma(a, a_ratio, fma(b, b_ratio, offset))))``.

    ``core/mlas/lib/intrinsics/avx2/qladd_avx2.cpp``: ``a_ratio = s_a / s_c``,
    ``b_ratio = s_b / s_c`` and ``offset = z_c - fma(a_ratio, z_a, b_ratio * z_b)``
    are float32 (the importer forms them); each element is two fused
    multiply-adds in float32 on the raw codes (the output zero point is inside
    ``offset``, so it is added *before* rounding), rounded to nearest even and
    saturated (``packs``/``packus``: the clamp).  The codes are exact in float32
    (16-bit codes < 2**24); see :func:`fma_float32` for the fused arithmetic.
    Not modelled: ``cvtps2dq`` gives ``INT32_MIN`` for values beyond int32,
    here they saturate to the nearer end (a ratio of ~2**23 would be needed).

    Parameters
    ----------
    a, b : int8/uint8/int16/uint16 arrays of the same shape
    a_ratio, b_ratio, offset : float32
    clamp_min, clamp_max : int
    out_dtype : numpy dtype

    Returns
    -------
    out : array of ``out_dtype``, shape of ``a``
    saturation_count : int
        Elements whose rounded value lay outside ``[clamp_min, clamp_max]``.
    """
    out = np.empty(a.shape, out_dtype)
    saturated = _add_float32_fma_core(
        a.reshape(-1), b.reshape(-1), np.float32(a_ratio), np.float32(b_ratio), np.float32(offset),
        int(clamp_min), int(clamp_max), out.reshape(-1),
    )
    return out, int(saturated)


@jit
def _mul_float32_core(a, a_zero_point, b, b_zero_point, ratio, out_zero_point, clamp_min, clamp_max, out):
    # Branch-free, as _add_float32_fma_core: the clamp in float32 is the saturation.
    saturated = 0
    zero_point = np.float32(out_zero_point)
    low, high = np.float32(clamp_min), np.float32(clamp_max)
    for i in range(a.size):
        product = (np.int64(a[i]) - a_zero_point) * (np.int64(b[i]) - b_zero_point)  # |product| <= 255**2 < 2**24
        scaled = np.float32(np.float32(product) * ratio)
        value = round_float(np.float32(scaled + zero_point), FLOAT32_RINT)
        clamped = min(max(value, low), high)
        saturated += clamped != value
        out[i] = np.int32(clamped)
    return saturated


def mul_float32(a, a_zero_point, b, b_zero_point, ratio, out_zero_point, clamp_min, clamp_max, out_dtype):
    """onnxruntime's QLinearMul on x86-64: ``clamp(rint(float32((a - z_a)(b - z_b)) * ratio + z_c))``.

    ``core/mlas/lib/qlmul.cpp`` (SSE2 kernel): the centred codes are int16, their
    product an exact int32, converted to float32 (exact: ``|product| <= 255**2 <
    2**24``), multiplied by ``ratio = s_a * s_b / s_c`` (float32, formed by the
    importer) and the output zero point is added in float32 *before* rounding
    (``mulps``, ``addps``: two roundings, no fused multiply-add), then
    ``cvtps2dq`` rounds to nearest even and ``packs`` / ``packus`` saturate
    (the clamp).  With an odd ``z_c`` a tie ``k + 0.5`` rounds to the other
    neighbour than ``rint(product * ratio) + z_c`` would.  Not modelled:
    ``cvtps2dq`` gives ``INT32_MIN`` beyond int32; the op rejects ratios that
    could get there.

    Parameters
    ----------
    a, b : int8 or uint8 arrays of the same shape
    a_zero_point, b_zero_point, out_zero_point : int
    ratio : float32
    clamp_min, clamp_max : int
    out_dtype : numpy dtype

    Returns
    -------
    out : array of ``out_dtype``, shape of ``a``
    saturation_count : int
        Elements whose rounded value lay outside ``[clamp_min, clamp_max]``.
    """
    out = np.empty(a.shape, out_dtype)
    saturated = _mul_float32_core(
        a.reshape(-1), int(a_zero_point), b.reshape(-1), int(b_zero_point), np.float32(ratio), int(out_zero_point),
        int(clamp_min), int(clamp_max), out.reshape(-1),
    )
    return out, int(saturated)


@jit
def _avg_pool_float32_core(x, x_zero_point, x_scale, kernel_h, kernel_w, sh, sw, top, left, count_include_pad,
                           y_scale, y_zero_point, clamp_min, clamp_max, out):
    n_batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    zero_point = np.float32(y_zero_point)
    saturated = 0
    for n in range(n_batch):
        for oh in range(out_h):
            h0 = oh * sh - top
            h1 = min(h0 + kernel_h, height)
            h0 = max(h0, 0)
            for ow in range(out_w):
                w0 = ow * sw - left
                w1 = min(w0 + kernel_w, width)
                w0 = max(w0, 0)
                count = kernel_h * kernel_w if count_include_pad else (h1 - h0) * (w1 - w0)
                for c in range(channels):
                    total = np.float32(0.0)
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            centred = np.float32(np.int64(x[n, h, w, c]) - x_zero_point)
                            total = np.float32(total + np.float32(x_scale * centred))
                    mean = np.float32(total / np.float32(count))
                    value = saturating_round_float(np.float32(np.float32(mean / y_scale) + zero_point), FLOAT32_RINT)
                    clamped = min(max(value, clamp_min), clamp_max)
                    if clamped != value:
                        saturated += 1
                    out[n, oh, ow, c] = clamped
    return saturated


def avg_pool_float32_nhwc(x, x_zero_point, x_scale, kernel, strides, pads, count_include_pad, y_scale,
                          y_zero_point, clamp_min, clamp_max, out_dtype):
    """onnxruntime's QLinearAveragePool: dequantize, average in float32, quantize; NHWC.

    ``contrib_ops/cpu/quantization/qlinear_pool.cc``: every code becomes
    ``x_scale * (x - z_x)`` in float32; each window sums them in float32, rows
    then columns (the order matters: every addition rounds), divides by the
    element count converted to float32 (the whole kernel with
    ``count_include_pad``, else the window's cells inside the image), and
    ``quantize_value`` gives ``clamp(nearbyint(mean / y_scale + z_y))``: a
    float32 division, the zero point added in float32, ties to even.

    Parameters
    ----------
    x : int8 or uint8 array [N, H, W, C]
    x_zero_point, y_zero_point : int
    x_scale, y_scale : float32
    kernel, strides : (int, int)
    pads : (top, left, bottom, right)
        Padded cells are never summed; ``pads`` smaller than ``kernel``.
    count_include_pad : bool
    clamp_min, clamp_max : int
    out_dtype : numpy dtype

    Returns
    -------
    out : array of ``out_dtype`` [N, OH, OW, C]
        ``OH = (H + top + bottom - KH) // SH + 1``, ``OW`` alike.
    saturation_count : int
    """
    out_h = (x.shape[1] + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    out_w = (x.shape[2] + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]), out_dtype)
    saturated = _avg_pool_float32_core(
        np.ascontiguousarray(x), int(x_zero_point), np.float32(x_scale), int(kernel[0]), int(kernel[1]),
        int(strides[0]), int(strides[1]), int(pads[0]), int(pads[1]), bool(count_include_pad), np.float32(y_scale),
        int(y_zero_point), int(clamp_min), int(clamp_max), out,
    )
    return out, int(saturated)


@jit
def _softmax_qlinear_core(x, table, y_multiplier, out_zero_point, clamp_min, clamp_max, out):
    saturated = 0
    for r in range(x.shape[0]):
        top = np.int64(x[r, 0])
        for i in range(1, x.shape[1]):
            top = max(top, np.int64(x[r, i]))
        total = np.float32(0.0)
        for i in range(x.shape[1]):  # one float32 sum, in order
            total = np.float32(total + table[np.int64(x[r, i]) - top + 255])
        for i in range(x.shape[1]):
            share = np.float32(np.float32(table[np.int64(x[r, i]) - top + 255] * y_multiplier) / total)
            value = np.int64(round_float(share, FLOAT32_RINT)) + out_zero_point
            clamped = min(max(value, clamp_min), clamp_max)
            saturated += clamped != value
            out[r, i] = clamped
    return saturated


def softmax_qlinear(x, table, y_multiplier, out_zero_point, clamp_min, clamp_max, out_dtype):
    """onnxruntime's ``QLinearSoftmax`` (``com.microsoft``, what it fuses ``DQ -> Softmax -> Q`` into) over
    the last axis of ``x`` ``[rows, D]``, 8-bit codes.

    ``contrib_ops/cpu/quantization/qlinear_softmax.cc``: a float32 table ``table[d + 255]`` of
    ``exp`` of every code distance ``d = x - max(row)`` in ``[-255, 0]`` (built by the importer, see
    :func:`intsim.importers.onnxruntime_tables.qlinear_softmax_table`); ``total`` is the float32 sum of the
    row's entries in index order; each output is ``rint(float32(entry * y_multiplier) / total)``
    (ties to even) plus the output zero point, saturated to the code range.  ``y_multiplier`` is
    ``floor(1 / s_y)``: the output scale counts only through it (measured on onnxruntime 1.32:
    int8 saturates, uint8 too).  A row whose sum is 0 cannot occur (the maximum's entry is
    ``exp`` of a non-negative shift).

    Returns
    -------
    out : array of ``out_dtype``, shape of ``x``
    saturation_count : int
    """
    out = np.empty(x.shape, out_dtype)
    saturated = _softmax_qlinear_core(np.ascontiguousarray(x), np.ascontiguousarray(table, np.float32),
                                      np.float32(y_multiplier), np.int64(out_zero_point), np.int64(clamp_min),
                                      np.int64(clamp_max), out)
    return out, int(saturated)
