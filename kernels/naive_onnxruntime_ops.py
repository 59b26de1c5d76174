"""Naive twins of :mod:`intsim.kernels.onnxruntime_ops`: same names and signatures, plain loops.

The fused multiply-add is done here in exact rational arithmetic, rounded once
to float32, independently of the fast kernel's float64 emulation.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from intsim.fixedpoint import FLOAT32_RINT, saturating_round_float


def round_to_float32(exact: Fraction) -> np.float32:
    """``exact`` rounded once to float32, ties to even."""
    guess = np.float32(float(exact))  # at most one float32 step away
    best = None
    for candidate in (np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))):
        error = abs(Fraction(float(candidate)) - exact)
        if best is None or error < best[0] or (error == best[0] and (candidate.view(np.int32) & 1) == 0):
            best = (error, candidate)
    return np.float32(best[1])


def fma_float32(x, y, z) -> np.float32:
    """float32 fused multiply-add: ``x * y + z`` rounded once (``vfmadd`` on x86)."""
    return round_to_float32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))


def add_float32_fma(a, b, a_ratio, b_ratio, offset, clamp_min, clamp_max, out_dtype):
    out = np.empty(a.shape, out_dtype)
    saturated = 0
    for index in np.ndindex(a.shape):
        inner = fma_float32(int(b[index]), np.float32(b_ratio), np.float32(offset))
        value = int(saturating_round_float(fma_float32(int(a[index]), np.float32(a_ratio), inner), FLOAT32_RINT))
        clamped = min(max(value, clamp_min), clamp_max)
        saturated += int(clamped != value)
        out[index] = clamped
    return out, saturated
