"""Naive twins of :mod:`intsim.kernels.boundary`: same names and signatures, numpy expressions."""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import FLOAT32_RINT, round_half_away


def quantize_float(x, scale, rounding, zero_point, clamp_min, clamp_max, out_dtype):
    real = type(scale) if isinstance(scale, (np.float32, np.float64)) else x.dtype.type
    with np.errstate(all="ignore"):
        quotient = x.astype(np.result_type(x.dtype, real)) / real(scale)
        rounded = np.rint(quotient) if rounding == FLOAT32_RINT else round_half_away(quotient)
        finite = np.isfinite(x)
        # Exact: the rounded quotient is integral, and beyond 2**53 it lies outside every clamp anyway.
        codes = np.clip(np.where(finite, rounded, 0).astype(np.float64) + zero_point, clamp_min, clamp_max)
    return codes.astype(out_dtype), int(np.count_nonzero(~finite))


def quantize_launcher(x_dtype, scale, rounding, zero_point, clamp_min, clamp_max, far_low, far_high):
    def launch(x, out):
        codes, non_finite = quantize_float(x, scale, rounding, zero_point, clamp_min, clamp_max, out.dtype)
        out[...] = codes
        wide = x.astype(np.float64)  # a Python float against float32 values would be narrowed (NEP 50)
        with np.errstate(invalid="ignore"):
            return non_finite, int(np.count_nonzero((wide < far_low) | (wide > far_high)))

    return launch


def dequantize_codes(codes, scale, zero_point):
    return (float(scale) * (codes.astype(np.float64) - float(zero_point))).astype(np.float32)


def dequantize_launcher(code_dtype, scale, zero_point):
    def launch(codes):
        if codes.dtype != np.dtype(code_dtype):
            raise TypeError(f"dequantize launch for {np.dtype(code_dtype)} codes called with {codes.dtype}")
        return dequantize_codes(codes, scale, zero_point)

    return launch


def transpose(x, perm):
    return np.transpose(x, perm).copy(order="C")


def transpose_launcher(perm):
    def launch(x):
        return transpose(x, perm)

    return launch
