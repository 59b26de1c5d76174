"""Kernels that reproduce onnxruntime CPU kernels no other intsim op covers.

Each public function allocates its output and calls a private numba core;
inputs are trusted.  The naive twins live in :mod:`intsim.kernels.naive_onnxruntime_ops`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from intsim.fixedpoint import FLOAT32_RINT, saturating_round_float


@njit(cache=True)
def fma_float32(x, y, z):
    """float32 fused multiply-add ``x * y + z`` of float32 operands, rounded once (x86 ``vfmadd``).

    The product is exact in float64 (24 + 24 significant bits <= 53).  The
    float64 sum ``s = x*y + z`` is exact whenever every term is an integer
    multiple of ``u``, the smaller of the two operands' ulps, and
    ``|x*y| + |z| < 2**53 u``; then ``float32(s)`` is the fused result.  For
    QLinearAdd on 8-bit codes (``|x| <= 255 < 2**8``, an integer, so
    ``|x*y| < 2**8 * 2**24 ulp(y) = 2**32 ulp(y)``; ``|z| < 2**24 ulp(z)``) it
    is exact whenever ``ulp(y)`` and ``ulp(z)`` (the ratio's and the addend's
    binades) lie within ``2**20`` of each other:
    ``2**32 * 2**20 u + 2**24 * 2**20 u = 2**52 u + 2**44 u < 2**53 u``.
    Real scale ratios and offsets (``|log2|`` well under 20) stay inside this
    bound.  Outside it, the float64 sum may be rounded, and rounding twice
    (to float64, then float32) differs from rounding once only when the float64
    sum lands exactly on a float32 midpoint; the rounding error, recovered
    exactly by Knuth's TwoSum, then says which side the exact sum lies on, and
    that side is taken.  So the result is the fused one for all finite float32
    operands whose sum does not overflow.
    """
    product = np.float64(x) * np.float64(y)
    addend = np.float64(z)
    total = product + addend
    # TwoSum: total + error == product + addend exactly.
    addend_part = total - product
    error = (product - (total - addend_part)) + (addend - addend_part)
    nearest = np.float64(np.float32(total))
    if error != 0.0 and nearest != total:
        other = 2.0 * total - nearest
        # total is a float32 midpoint iff the mirror image of its nearest float32 is a float32 too.
        if np.float64(np.float32(other)) == other and (other - total) * error > 0.0:
            return np.float32(other)
    return np.float32(nearest)


@njit(cache=True)
def _add_float32_fma_core(a, b, a_ratio, b_ratio, offset, clamp_min, clamp_max, out):
    saturated = 0
    for i in range(a.size):
        inner = fma_float32(np.float32(b[i]), b_ratio, offset)
        value = saturating_round_float(fma_float32(np.float32(a[i]), a_ratio, inner), FLOAT32_RINT)
        clamped = min(max(value, clamp_min), clamp_max)
        if clamped != value:
            saturated += 1
        out[i] = clamped
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
