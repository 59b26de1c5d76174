"""Integer node parameters the converter and importers build from real scales (float work, done once):
lookup tables, the softmax exp table, and an ``add`` node's rescales.

The kernels that use them (``lookup_table``, ``softmax_lastaxis``, ``add``) are integer only.
"""

from __future__ import annotations

import numpy as np

from intsim.codes import dtype_range
from intsim.converter.quantizer import quantization_params, quantize
from intsim.errors import ValidationError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES, Rescale
from intsim.graph.ir import TensorInfo

EXP_TABLE_BITS = 30  # exp table entries are Q30: exp(0) = 2**30


def _input_codes(x: TensorInfo) -> np.ndarray:
    if x.dtype not in ("int8", "uint8", "int16", "uint16"):
        raise ValidationError(f"tensor {x.name!r}: tables index 8- or 16-bit codes, found {x.dtype}")
    lo, hi = dtype_range(x.dtype)
    return np.arange(lo, hi + 1, dtype=np.int64)


def build_lut(fn, x: TensorInfo, y: TensorInfo) -> np.ndarray:
    """Table of ``y`` codes for every ``x`` code: ``clamp(rint(fn(real(x)) / s_y) + z_y)``.

    ``fn`` maps a float64 array to a float64 array (sigmoid, tanh, hard-swish,
    GELU, SiLU, exp, ...).  Entry ``i`` belongs to code ``dtype_min(x) + i``.
    """
    codes = _input_codes(x)
    real = x.scale * (codes - x.zero_point).astype(np.float64)
    values = np.asarray(fn(real), dtype=np.float64)
    if values.shape != real.shape or not np.all(np.isfinite(values)):
        raise ValidationError(f"lookup table for {x.name!r}: fn must return finite values shaped like its input")
    lo, hi = dtype_range(y.dtype)
    return np.clip(np.rint(values / y.scale) + y.zero_point, lo, hi).astype(y.np_dtype)


def build_exp_table(x: TensorInfo, beta: float = 1.0) -> np.ndarray:
    """Softmax exp table: entry ``d`` is ``round(2**30 * exp(-beta * s_x * d))`` for ``d = max - x``."""
    if not np.isfinite(beta) or beta <= 0:
        raise ValidationError(f"softmax beta must be finite and > 0, found {beta}")
    d = np.arange(_input_codes(x).size, dtype=np.float64)
    return np.rint(np.exp(-beta * x.scale * d) * 2.0**EXP_TABLE_BITS).astype(np.int32)


def constant_operand_codes(value, profile) -> tuple[np.ndarray, float, int]:
    """A constant operand of an elementwise op (Add, Sub, Mul, a Div's reciprocal) on the activation grid:
    one scale for the tensor, its range widened to hold 0.  Returns ``(codes, scale, zero_point)``, the
    codes in ``value``'s layout."""
    value = np.asarray(value, np.float64)
    p = profile
    scale, zp = quantization_params(float(min(value.min(), 0.0)), float(max(value.max(), 0.0)), p.activation_bits,
                                    p.activation_signed, p.activation_symmetric, power_of_two=p.power_of_two_scales)
    lo, hi = p.activation_range()
    return quantize(value, scale, zp, lo, hi, p.activation_dtype), scale, zp


def add_params(a_scale: float, b_scale: float, out_scale: float, profile, activation_bits: int = 8) -> tuple[dict, int]:
    """Parameters of an ``add`` node: ``(params, left_shift)``.

    Integer modes use TFLite's scheme: inputs shifted left by ``left_shift``
    (20 for 8-bit codes, leaving headroom for a 9-bit difference in int32) and
    rescaled by ``s_a / (2 max(s_a, s_b))`` and ``s_b / (2 max(s_a, s_b))``;
    the sum by ``2 max(s_a, s_b) / (2**left_shift s_out)``.  Float modes rescale
    each input straight to the output scale.
    """
    rounding, bits = profile.rounding, profile.multiplier_bits
    if rounding not in INTEGER_ROUNDING_MODES:
        reals, left_shift = (a_scale / out_scale, b_scale / out_scale, 1.0), 0
    else:
        left_shift = 20 if activation_bits <= 8 else max(0, 29 - activation_bits)
        twice_max = 2.0 * max(a_scale, b_scale)
        reals = (a_scale / twice_max, b_scale / twice_max, twice_max / (2.0**left_shift * out_scale))
    params = {}
    for prefix, real in zip(("a_", "b_", "out_"), reals):
        params.update(Rescale.from_real(np.array([real]), rounding, bits).params(prefix))
    return params, left_shift
