"""Fixed-point numerics: the one place intsim rounds, shifts and saturates.

Every kernel and every converter pass goes through this module (STYLE.md rule 1).
The scalar primitives are numba ``@njit`` functions on 64-bit integers, so the
kernels in :mod:`intsim.kernels` call them inside their loops, and the public
array functions below are thin loops over the same scalars.  There is one
definition of each rounding rule.

Conventions
-----------
A real multiplier ``r > 0`` is represented by an integer ``multiplier`` with
``multiplier_bits`` fractional bits (31 by default, as in TFLite and TOSA) and
an integer ``shift`` where **positive means left shift**::

    r ~= multiplier * 2**(shift - multiplier_bits),   multiplier in [2**(b-1), 2**b)

Rounding modes (white paper §2.2 requantization; the names are intsim's):

``"double"``
    gemmlowp's ``SaturatingRoundingDoublingHighMul`` (round half toward
    +infinity of ``x * M / 2**b``) followed by ``RoundingDivideByPOT`` (round
    half away from zero).  This is TFLite's default build and TOSA RESCALE with
    ``double_round = true``.  Two roundings: a tie can round twice.
``"single"``
    one rounding of ``x * M / 2**(b - shift)``, half toward +infinity, computed
    exactly in 64 bits (``TFLITE_SINGLE_ROUNDING``, TOSA ``SINGLE_ROUND``).
    With a power-of-two scale (``M = 2**(b-1)``) this is exactly a rounding
    right shift, which is how shift-only hardware requantizes.
``"float32_rint"``
    ``rint(float32(acc) * float32(scale))``, ties to even: onnxruntime's MLAS
    requantization of QLinearConv / QLinearMatMul / QGemm.
``"float64_half_away"``
    ``round_half_away(double(acc) * double(scale))``: LiteRT's reference
    FULLY_CONNECTED.

The two float modes model runtimes that really requantize in floating point;
their parameter is the real ``scale``, not ``(multiplier, shift)``.
Results of every mode saturate to int32.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from intsim.errors import ValidationError
from intsim.jit import jit

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

ROUNDING_MODES = ("double", "single", "float32_rint", "float64_half_away")
INTEGER_ROUNDING_MODES = ("double", "single")
# Codes passed to numba kernels; the order of ROUNDING_MODES.
DOUBLE, SINGLE, FLOAT32_RINT, FLOAT64_HALF_AWAY = range(4)

MIN_SHIFT = -31  # a right shift of more than 31 leaves nothing of an int32


# --------------------------------------------------------------------------
# Scalar primitives (numba).  Arguments are Python/numba integers; results fit
# the width their names promise.
# --------------------------------------------------------------------------


@jit
def saturate(x, bits):
    """Clamp ``x`` to the signed ``bits``-bit range [-2**(bits-1), 2**(bits-1) - 1]."""
    hi = (np.int64(1) << (bits - 1)) - 1
    return min(max(np.int64(x), -hi - 1), hi)


@jit
def wrap(x, bits):
    """Two's-complement wrap of ``x`` into the signed ``bits``-bit range."""
    modulus = np.int64(1) << bits
    half = np.int64(1) << (bits - 1)
    return ((np.int64(x) + half) & (modulus - 1)) - half


@jit
def _trunc_div_pot(x, exponent):
    # C integer division by 2**exponent: truncates toward zero.  A negative x
    # is biased by 2**exponent - 1 so that the arithmetic (flooring) shift
    # rounds it up; x < 0 keeps the sum inside int64.
    bias = (x >> 63) & ((np.int64(1) << exponent) - 1)
    return (x + bias) >> exponent


@jit
def rounding_high_mul(a, b, multiplier_bits):
    """``a * b / 2**multiplier_bits`` rounded half toward +infinity.

    With ``multiplier_bits = 31`` and int32 operands this is gemmlowp's
    ``SaturatingRoundingDoublingHighMul``: the high 32 bits of ``2*a*b``,
    saturating in its single overflow case ``a == b == INT32_MIN``.
    """
    ab = np.int64(a) * np.int64(b)
    half = np.int64(1) << (multiplier_bits - 1)
    nudge = half if ab >= 0 else 1 - half
    high = _trunc_div_pot(ab + nudge, multiplier_bits)
    overflows = a == INT32_MIN and b == INT32_MIN and multiplier_bits == 31
    return np.int64(INT32_MAX) if overflows else high


@jit
def rounding_divide_by_pot_scalar(x, exponent):
    """``x / 2**exponent`` rounded half away from zero (gemmlowp ``RoundingDivideByPOT``)."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


@jit
def round_half_away_divide(numerator, denominator):
    """``numerator / denominator`` (denominator > 0) rounded half away from zero."""
    half = denominator // 2
    if numerator >= 0:
        return (numerator + half) // denominator
    return -((-numerator + half) // denominator)


@jit
def multiply_by_quantized_multiplier_scalar(x, multiplier, shift, rounding, multiplier_bits):
    """Requantize one accumulator with an integer rounding mode (``DOUBLE`` or ``SINGLE``).

    ``x`` is int32; the result saturates to int32.  Under ``DOUBLE`` a left
    shift is applied to ``x`` first and saturates (TFLite leaves that overflow
    undefined).
    """
    if rounding == DOUBLE:
        left = shift if shift > 0 else 0
        right = -shift if shift < 0 else 0
        scaled = saturate(np.int64(x) << left, 32)
        high = saturate(rounding_high_mul(scaled, multiplier, multiplier_bits), 32)
        return rounding_divide_by_pot_scalar(high, right)
    total_shift = multiplier_bits - shift
    rounded = np.int64(x) * np.int64(multiplier) + (np.int64(1) << (total_shift - 1))
    return saturate(rounded >> total_shift, 32)


@jit
def double_rounding_one_shift(x, multiplier, shift, multiplier_bits):
    """``DOUBLE`` requantization of int32 ``x`` with its two roundings folded into one add and one shift.

    Equal to ``multiply_by_quantized_multiplier_scalar(x, multiplier, shift, DOUBLE,
    multiplier_bits)`` whenever ``x`` is int32, ``multiplier`` lies in
    ``[0, 2**multiplier_bits)`` and ``shift`` in ``[MIN_SHIFT, multiplier_bits - 1]``
    (what :class:`Rescale` admits); not defined outside those ranges.  Every
    constant depends on ``(multiplier, shift)`` only, so a loop with one
    scale for every channel computes per element a multiply, a compare, an
    add and a shift, as single rounding does.

    Why it is equal, with ``b = multiplier_bits``, ``h = 2**(b-1)``, ``r`` the
    right shift, ``p = y * M`` (``y`` the saturated ``x << left``) and
    ``t = p + h``:

    * ``rounding_high_mul`` truncates ``(p + nudge) / 2**b`` toward zero with
      ``nudge = h`` for ``p >= 0`` and ``1 - h`` for ``p < 0``.  For ``p >= 0``
      that is ``floor(t / 2**b)``.  For ``p < 0`` the numerator is negative and
      ``-floor((-p - 1 + h) / 2**b) = floor((p + 2**b - h) / 2**b)``, again
      ``floor(t / 2**b)`` since ``2**b - h = h``.  Its saturating case
      ``y == M == INT32_MIN`` cannot occur (``M >= 0``), and
      ``|p| <= 2**31 * (2**b - 1)`` keeps ``high = floor(t / 2**b)`` inside int32,
      so the int32 saturation after it changes nothing.
    * ``rounding_divide_by_pot_scalar(high, r)`` rounds ``high / 2**r`` half away
      from zero: ``floor((high + n) / 2**r)`` with ``n = 2**(r-1)`` for
      ``high >= 0`` and ``n = 2**(r-1) - 1`` for ``high < 0`` (``n = 0`` when
      ``r = 0``): that is ``(2**r) >> 1`` and ``(2**r - 1) >> 1``.
    * ``high < 0`` exactly when ``t < 0`` (``high`` is the floor of ``t / 2**b``),
      that is when ``p < -h``; and for an integer ``n`` and real ``q``,
      ``floor((floor(q) + n) / 2**r) = floor((q + n) / 2**r)``, so with
      ``q = t / 2**b`` the result is ``floor((p + h + n * 2**b) / 2**(b + r))``:
      one add of a constant chosen by the sign of ``p + h``, one arithmetic shift
      by ``b + r <= 62``.  ``|p| < 2**62`` and the constant is below ``2**62``,
      so the sum stays inside int64.
    """
    left, nudge_above, nudge_below, total_shift, threshold = one_shift_constants(shift, DOUBLE, multiplier_bits)
    product = saturate(np.int64(x) << left, 32) * np.int64(multiplier)
    return round_one_shift(product, nudge_above, nudge_below, total_shift, threshold)


@jit
def round_one_shift(product, nudge_above, nudge_below, total_shift, threshold):
    """``(product + (nudge_below if product < threshold else nudge_above)) >> total_shift``: the one
    rounding of :func:`one_shift_constants` applied to its product ``p`` (an add of a constant chosen
    by a compare, and an arithmetic shift).  Not saturating."""
    return (product + (nudge_below if product < threshold else nudge_above)) >> total_shift


@jit
def rescale_int32_scalar(x, multiplier, shift, scale, rounding, multiplier_bits):
    """:func:`rescale_scalar` of an int32 ``x``, the integer modes in a form without branches.

    Equal to it whenever ``multiplier`` lies in ``[0, 2**multiplier_bits)`` and ``shift`` in
    ``[MIN_SHIFT, multiplier_bits - 1]`` (what :class:`Rescale` admits): ``DOUBLE`` is
    :func:`double_rounding_one_shift` (proved equal there; its result lies inside int32), ``SINGLE``
    the contract itself, already one multiply, add, shift and saturation; the float modes are
    :func:`multiply_by_scale_scalar`.  Every constant depends on ``(multiplier, shift)`` only, so a
    loop with one scale and the mode a constant keeps them out of its body and vectorises (the
    ``DOUBLE`` contract's sign tests and variable shifts do not).
    """
    if rounding == DOUBLE:
        return double_rounding_one_shift(x, multiplier, shift, multiplier_bits)
    if rounding == SINGLE:
        return multiply_by_quantized_multiplier_scalar(x, multiplier, shift, SINGLE, multiplier_bits)
    return multiply_by_scale_scalar(x, scale, rounding)


@jit
def one_shift_constants(shift, rounding, multiplier_bits):
    """``(left, nudge_above, nudge_below, total_shift, threshold)``, int64: the integer rescale of an
    int32 ``x`` by ``(multiplier, shift)`` as one multiply, one add and one shift,
    ``(p + (nudge_below if p < threshold else nudge_above)) >> total_shift`` with
    ``p = saturate32(x << left) * multiplier``.

    Under ``DOUBLE`` that is :func:`double_rounding_one_shift` (its docstring proves it equal to the
    two roundings; the result lies inside int32).  Under ``SINGLE`` it is the single rounding of
    :func:`multiply_by_quantized_multiplier_scalar` before its int32 saturation (``left`` 0, one
    nudge of half the divisor).  Every constant depends on ``shift`` (and the mode) only, so a
    vector unit holds them per channel (the micro-kernel's epilogue, white paper §2.2).
    """
    bits = np.int64(multiplier_bits)
    if rounding == DOUBLE:
        left = np.int64(max(shift, 0))
        right = np.int64(max(-shift, 0))
        half = np.int64(1) << (bits - 1)
        nudge_above = half + (((np.int64(1) << right) >> 1) << bits)
        nudge_below = half + ((((np.int64(1) << right) - 1) >> 1) << bits)
        return np.int64(0) + left, nudge_above, nudge_below, bits + right, -half
    total_shift = bits - np.int64(shift)
    nudge = np.int64(1) << (total_shift - 1)
    return np.int64(0), nudge, nudge, total_shift, np.int64(0)


@jit
def round_float(value, rounding):
    """``value`` rounded to an integer, in ``value``'s own float type.

    ``FLOAT32_RINT`` rounds ties to even (C ``rint``); ``FLOAT64_HALF_AWAY``
    rounds ties away from zero (C ``round``).  Exact for every float32 and
    float64 input (no ``floor(x + 0.5)``, which takes 0.49999999999999994 to 1).
    Not saturating: the result is still a float, infinities and NaN pass
    through.  Without a conversion to an integer inside, a loop of these
    vectorises where ``rounding`` is a constant.
    """
    if rounding == FLOAT32_RINT:
        return np.rint(value)
    magnitude = abs(value)
    floor = np.floor(magnitude)
    # magnitude - floor(magnitude) is exact: both lie in the same binade, or the floor is 0.
    up = floor + (np.float32(1.0) if magnitude - floor >= 0.5 else np.float32(0.0))  # float32 stays float32
    return -up if value < 0 else up


@jit
def saturating_round_float(value, rounding):
    """``value`` rounded to an integer as :func:`round_float` does, and saturated to int32.

    Not a requantization by itself: the caller has already formed the real
    value in the mode's float width.
    """
    rounded = np.float64(round_float(value, rounding))
    # Both bounds are exact in float64 and ``rounded`` is integral, so the
    # clamp then the conversion is the saturating conversion.
    return np.int64(min(max(rounded, np.float64(INT32_MIN)), np.float64(INT32_MAX)))


@jit
def scale_float32(x, scale):
    """``float32(x) * float32(scale)``: the product ``FLOAT32_RINT`` rounds (onnxruntime's MLAS).

    Not rounded, not saturating; :func:`multiply_by_scale_scalar` finishes it.
    """
    return np.float32(x) * np.float32(scale)


@jit
def multiply_by_scale_scalar(x, scale, rounding):
    """Requantize one accumulator in floating point (``FLOAT32_RINT`` or ``FLOAT64_HALF_AWAY``)."""
    if rounding == FLOAT32_RINT:
        return saturating_round_float(scale_float32(x, scale), rounding)
    return saturating_round_float(np.float64(x) * np.float64(scale), rounding)


@jit
def rescale_scalar(x, multiplier, shift, scale, rounding, multiplier_bits):
    """Requantize one accumulator under any rounding mode code."""
    if rounding <= SINGLE:
        return multiply_by_quantized_multiplier_scalar(x, multiplier, shift, rounding, multiplier_bits)
    return multiply_by_scale_scalar(x, scale, rounding)


@jit
def rescale_wide_scalar(x, multiplier, shift, scale, rounding, multiplier_bits):
    """Requantize an accumulator that may leave int32: ``|x| <= 65535**2``, a product of two 16-bit
    codes less their zero points.  Equal to :func:`rescale_scalar` whenever ``x`` fits int32.

    Beyond int32 the product is not clipped first: ``SINGLE`` rounds ``x * M / 2**(b - shift)`` once,
    exactly, in 64 bits; ``DOUBLE`` applies its two roundings to the exact 64-bit ``x * M`` when the
    shift is a right shift (with a left shift the result lies beyond every 16-bit clamp anyway, and
    ``DOUBLE``'s saturating left shift gives the int32 extreme of the same sign); the float modes
    convert ``x`` as they convert any accumulator.  The result saturates to int32, like every mode's.
    Why nothing overflows: ``|x * M| <= 65535**2 * (2**31 - 1) < 2**63 - 2**48``, and the rounding
    constants are added after halving (``floor((p + 2**(t-1)) / 2**t) = floor((floor(p / 2) +
    2**(t-2)) / 2**(t-1))`` for ``t >= 2``).
    """
    if rounding > SINGLE:
        return multiply_by_scale_scalar(x, scale, rounding)
    if (INT32_MIN <= x <= INT32_MAX) or (rounding == DOUBLE and shift > 0):
        return multiply_by_quantized_multiplier_scalar(saturate(x, 32), multiplier, shift, rounding,
                                                       multiplier_bits)
    product = np.int64(x) * np.int64(multiplier)
    if rounding == DOUBLE:
        high = (product + (np.int64(1) << (multiplier_bits - 1))) >> multiplier_bits
        return saturate(rounding_divide_by_pot_scalar(high, -shift), 32)
    total_shift = multiplier_bits - shift
    if total_shift < 2:
        return saturate((product + total_shift) >> total_shift, 32)
    return saturate(((product >> 1) + (np.int64(1) << (total_shift - 2))) >> (total_shift - 1), 32)


# --------------------------------------------------------------------------
# Array loops over the scalars.
# --------------------------------------------------------------------------


@jit
def _rescale_flat(x, multiplier, shift, scale, rounding, multiplier_bits, out):
    for i in range(x.size):
        out[i] = rescale_scalar(x[i], multiplier[i], shift[i], scale[i], rounding, multiplier_bits)


@jit
def _srdhm_flat(a, b, out):
    for i in range(a.size):
        out[i] = rounding_high_mul(a[i], b[i], 31)


@jit
def _rdbpot_flat(x, exponent, out):
    for i in range(x.size):
        out[i] = rounding_divide_by_pot_scalar(x[i], exponent[i])


def _int_array(name: str, value, lo: int, hi: int, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise ValidationError(f"{where}: {name} must be integers, found dtype {arr.dtype}")
    if arr.size and (arr.min() < lo or arr.max() > hi):  # before any cast, so uint64 cannot wrap
        bad = arr[(arr < lo) | (arr > hi)].flat[0]
        raise ValidationError(f"{where}: {name} must lie in [{lo}, {hi}], found {bad}")
    return arr.astype(np.int64)


def _check_multiplier_bits(multiplier_bits: int, where: str) -> int:
    if not isinstance(multiplier_bits, (int, np.integer)) or not 2 <= multiplier_bits <= 31:
        raise ValidationError(f"{where}: multiplier_bits must be an integer in [2, 31], found {multiplier_bits!r}")
    return int(multiplier_bits)


def _broadcast_flat(where, *arrays):
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        shapes = ", ".join(str(a.shape) for a in arrays)
        raise ValidationError(f"{where}: operand shapes {shapes} do not broadcast (per-channel parameters run "
                              f"along the last axis)") from None
    return shape, [np.ascontiguousarray(np.broadcast_to(a, shape)).reshape(-1) for a in arrays]


def round_half_away(values) -> np.ndarray:
    """C ``round`` on a float array (half away from zero), in the array's own float type.

    The array twin of :func:`saturating_round_float`'s ``FLOAT64_HALF_AWAY`` branch, and
    exact in the same way (``|v| - floor(|v|)`` is exact; no ``floor(v + 0.5)``).  Not
    saturating: the result is still float.
    """
    values = np.asarray(values)
    magnitude = np.abs(values)
    rounded = np.floor(magnitude)
    rounded = rounded + (magnitude - rounded >= 0.5).astype(values.dtype)
    return np.copysign(rounded, values)


def saturating_rounding_doubling_high_mul(a, b) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 arrays (broadcasting).

    Returns int32 ``round_half_up(a * b / 2**31)``; the only overflow,
    ``a == b == INT32_MIN``, saturates to ``INT32_MAX``.
    """
    where = "saturating_rounding_doubling_high_mul"
    a = _int_array("a", a, INT32_MIN, INT32_MAX, where)
    b = _int_array("b", b, INT32_MIN, INT32_MAX, where)
    shape, (af, bf) = _broadcast_flat(where, a, b)
    out = np.empty(af.size, np.int64)
    _srdhm_flat(af, bf, out)
    return out.astype(np.int32).reshape(shape)


def rounding_divide_by_pot(x, exponent) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero.

    ``x`` int32, ``exponent`` in [0, 31]; returns int32.  Not saturating (it cannot overflow).
    """
    where = "rounding_divide_by_pot"
    x = _int_array("x", x, INT32_MIN, INT32_MAX, where)
    exponent = _int_array("exponent", exponent, 0, 31, where)
    shape, (xf, ef) = _broadcast_flat(where, x, exponent)
    out = np.empty(xf.size, np.int64)
    _rdbpot_flat(xf, ef, out)
    return out.astype(np.int32).reshape(shape)


def quantize_multiplier(real_multiplier, multiplier_bits: int = 31):
    """Split a positive real multiplier into ``(multiplier, shift)``.

    Same result as TFLite's ``QuantizeMultiplier`` for ``multiplier_bits = 31``:
    ``frexp`` gives ``r = q * 2**shift`` with ``q`` in [0.5, 1); ``q * 2**b`` is
    rounded half away from zero; a carry to ``2**b`` halves it and increments
    the shift; a shift below -31 (``r < 2**-32`` roughly) flushes to ``(0, 0)``,
    as does ``r == 0``.  Positive shift means left shift.

    Parameters
    ----------
    real_multiplier : float or array of float
        Non-negative, finite.  Arrays give per-channel results of the same shape.
    multiplier_bits : int
        Fractional bits of the multiplier, 2..31 (31 for 32-bit hardware,
        15 for 16-bit multipliers).

    Returns
    -------
    multiplier, shift : int32 scalar or array
        ``multiplier`` in [2**(b-1), 2**b) or 0.
    """
    where = "quantize_multiplier"
    bits = _check_multiplier_bits(multiplier_bits, where)
    real = np.asarray(real_multiplier, dtype=np.float64)
    if not np.all(np.isfinite(real)) or np.any(real < 0):
        bad = real[~np.isfinite(real) | (real < 0)].flat[0]
        raise ValidationError(f"{where}: real multiplier must be finite and >= 0, found {bad}")
    mults = np.zeros(real.shape, np.int64)
    shifts = np.zeros(real.shape, np.int64)
    for idx, r in np.ndenumerate(real):
        if r == 0.0:
            continue
        q, shift = math.frexp(float(r))
        q_fixed = math.floor(q * 2.0**bits + 0.5)  # q > 0: half away from zero
        if q_fixed == 2**bits:
            q_fixed //= 2
            shift += 1
        if shift < MIN_SHIFT:
            continue
        if shift > bits - 1:
            raise ValidationError(
                f"{where}: real multiplier {r} needs shift {shift}, above the largest allowed left shift {bits - 1}"
            )
        mults[idx] = q_fixed
        shifts[idx] = shift
    if real.ndim == 0:
        return np.int32(mults[()]), np.int32(shifts[()])
    return mults.astype(np.int32), shifts.astype(np.int32)


def _rounding_code(rounding: str, allowed, where: str) -> int:
    if rounding not in allowed:
        raise ValidationError(f"{where}: rounding must be one of {', '.join(allowed)}, found {rounding!r}")
    return ROUNDING_MODES.index(rounding)


def multiply_by_quantized_multiplier(x, multiplier, shift, rounding: str = "double", *, multiplier_bits: int = 31):
    """Requantize int32 accumulators with a fixed-point multiplier and shift.

    ``rounding`` is ``"double"`` or ``"single"`` (see the module docstring).
    ``multiplier`` and ``shift`` broadcast against ``x``: a per-channel pair is
    an array along the last (channel) axis.  Returns int32, saturated.
    """
    where = "multiply_by_quantized_multiplier"
    _rounding_code(rounding, INTEGER_ROUNDING_MODES, where)
    return rescale(x, Rescale(rounding, multiplier, shift, None, multiplier_bits), where=where)


@dataclass(frozen=True, eq=False)
class Rescale:
    """Requantization parameters of one tensor or one channel-vector.

    ``multiplier`` / ``shift`` (int32) drive the integer modes; ``scale``
    (float64) drives the float modes and is ``None`` otherwise.
    """

    rounding: str
    multiplier: np.ndarray
    shift: np.ndarray
    scale: np.ndarray | None = None
    multiplier_bits: int = 31

    def __post_init__(self):
        where = "Rescale"
        _rounding_code(self.rounding, ROUNDING_MODES, where)
        bits = _check_multiplier_bits(self.multiplier_bits, where)
        m = _int_array("multiplier", self.multiplier, 0, 2**bits - 1, where)
        s = _int_array("shift", self.shift, MIN_SHIFT, bits - 1, where)
        if m.shape != s.shape:
            raise ValidationError(f"{where}: multiplier shape {m.shape} != shift shape {s.shape}")
        # The caller's own arrays where they already are int32 (a node's parameters): a model that
        # requantizes by them holds them once, in its graph.
        object.__setattr__(self, "multiplier", np.asarray(self.multiplier).astype(np.int32, copy=False))
        object.__setattr__(self, "shift", np.asarray(self.shift).astype(np.int32, copy=False))
        if self.rounding in INTEGER_ROUNDING_MODES:
            if self.scale is not None:
                raise ValidationError(f"{where}: rounding {self.rounding!r} takes no float scale")
        else:
            if self.scale is None:
                raise ValidationError(f"{where}: rounding {self.rounding!r} needs the real scale")
            scale = np.asarray(self.scale, dtype=np.float64)
            largest = np.finfo(np.float32).max if self.rounding == "float32_rint" else np.inf
            if scale.shape != m.shape or not np.all(np.isfinite(scale)) or np.any(scale < 0) or np.any(scale > largest):
                raise ValidationError(
                    f"{where}: scale must be finite, >= 0 and shaped like multiplier {m.shape}, found {scale!r}"
                )
            object.__setattr__(self, "scale", scale)

    @classmethod
    def from_real(cls, real_multiplier, rounding: str, multiplier_bits: int = 31) -> "Rescale":
        """Parameters that requantize by ``real_multiplier`` under ``rounding``."""
        m, s = quantize_multiplier(real_multiplier, multiplier_bits)
        scale = None if rounding in INTEGER_ROUNDING_MODES else np.asarray(real_multiplier, np.float64)
        return cls(rounding, m, s, scale, multiplier_bits)

    def params(self, prefix: str = "") -> dict:
        """The node parameters (``{prefix}multiplier``, ``shift`` and, in float modes,
        ``scale``) as 1-D arrays, the form :mod:`intsim.graph.ops` reads."""
        out = {
            f"{prefix}multiplier": self.multiplier.reshape(-1).copy(),
            f"{prefix}shift": self.shift.reshape(-1).copy(),
        }
        if self.scale is not None:
            out[f"{prefix}scale"] = self.scale.reshape(-1).copy()
        return out

    @property
    def code(self) -> int:
        return ROUNDING_MODES.index(self.rounding)

    def kernel_args(self, channels: int):
        """``(multiplier, shift, scale)`` for a kernel: int32, int32 and float64 arrays of length ``channels``.

        Parameters already of that length are returned themselves, not copied
        (a graph's node parameters stay the only copy a model holds); one value
        for every channel is broadcast into a new array.  The integer modes read
        no scale: theirs is a zero array shared by every caller with that many
        channels (kernels never write their arguments).
        """
        def expand(a):
            if a.shape == (channels,):
                return np.ascontiguousarray(a)
            return np.array(np.broadcast_to(a.reshape(-1) if a.ndim else a, (channels,)))
        scale = _zero_scales(channels) if self.scale is None else expand(self.scale)
        return expand(self.multiplier), expand(self.shift), scale


@functools.lru_cache(maxsize=None)
def _zero_scales(channels: int) -> np.ndarray:
    """The ``scale`` argument of the integer rounding modes, which read none: ``channels`` zeros."""
    return np.zeros(channels, np.float64)


def rescale(x, params: Rescale, *, where: str = "rescale") -> np.ndarray:
    """Requantize int32 ``x`` by ``params`` under its rounding mode; int32 result, saturated.

    Per-channel parameters broadcast along the last axis of ``x``.
    """
    x = _int_array("x", x, INT32_MIN, INT32_MAX, where)
    scale = params.scale if params.scale is not None else np.zeros(params.multiplier.shape)
    shape, (xf, mf, sf, cf) = _broadcast_flat(
        where,
        x, params.multiplier.astype(np.int64), params.shift.astype(np.int64), np.asarray(scale, np.float64)
    )
    out = np.empty(xf.size, np.int64)
    _rescale_flat(xf, mf, sf, cf, params.code, params.multiplier_bits, out)
    return out.astype(np.int32).reshape(shape)


# --------------------------------------------------------------------------
# gemmlowp fixed-point math (``fixedpoint/fixedpoint.h``) on raw int32 values.
# A ``FixedPoint<int32, k>`` raw value ``r`` means ``r / 2**(31 - k)``.  These
# are the pieces of LiteRT's reference int8 SOFTMAX; products are
# ``rounding_high_mul(a, b, 31)`` (``SaturatingRoundingDoublingHighMul``) and
# sums are plain int32 additions that the callers keep in range.
# --------------------------------------------------------------------------

# exp(-2**e) in Q0.31 for e = -2..4: the barrel shifter of exp_on_negative_values.
_EXP_BARREL_MULTIPLIERS = (1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242)


@jit
def saturating_rounding_multiply_by_pot(x, exponent):
    """gemmlowp ``SaturatingRoundingMultiplyByPOT``: ``x * 2**exponent`` on int32.

    A left shift (``exponent > 0``) saturates to int32; a right shift rounds
    half away from zero (``RoundingDivideByPOT``).
    """
    if exponent > 0:
        return saturate(np.int64(x) << exponent, 32)
    if exponent < 0:
        return rounding_divide_by_pot_scalar(np.int64(x), -exponent)
    return np.int64(x)


@jit
def rounding_half_sum(a, b):
    """gemmlowp ``RoundingHalfSum`` of int32: ``(a + b + sign(a + b)) / 2`` truncated toward zero."""
    total = np.int64(a) + np.int64(b)
    total += 1 if total >= 0 else -1
    return _trunc_div_pot(total, 1)


@jit
def count_leading_zeros_32(x):
    """Leading zero bits of ``x`` read as uint32 (32 for 0)."""
    value = np.int64(x) & 0xFFFFFFFF
    count = 32
    while value:
        value >>= 1
        count -= 1
    return count


@jit
def exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    """gemmlowp: ``exp(a)`` for Q0.31 ``a`` in [-1/4, 0), as Q0.31.

    Fourth-order Taylor expansion around -1/8 (constants ``exp(-1/8)`` and 1/3 in Q0.31).
    """
    constant_term = np.int64(1895147668)
    x = np.int64(a) + (np.int64(1) << 28)
    x2 = rounding_high_mul(x, x, 31)
    x3 = rounding_high_mul(x2, x, 31)
    x4 = rounding_high_mul(x2, x2, 31)
    x4_over_4 = saturating_rounding_multiply_by_pot(x4, -2)
    poly = rounding_high_mul(x4_over_4 + x3, 715827883, 31) + x2
    poly = saturating_rounding_multiply_by_pot(poly, -1)
    return constant_term + rounding_high_mul(constant_term, x + poly, 31)


@jit
def exp_on_negative_values(a, integer_bits):
    """gemmlowp ``exp_on_negative_values``: ``exp(a)`` for ``a <= 0`` in Q(integer_bits), as Q0.31.

    ``exp(0)`` gives ``INT32_MAX`` (1 is not representable in Q0.31).  Not
    defined for ``a > 0``.
    """
    fractional_bits = 31 - integer_bits
    one_quarter = np.int64(1) << (fractional_bits - 2)
    a = np.int64(a)
    a_mod_quarter_minus_one_quarter = (a & (one_quarter - 1)) - one_quarter
    result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        saturating_rounding_multiply_by_pot(a_mod_quarter_minus_one_quarter, integer_bits)
    )
    remainder = a_mod_quarter_minus_one_quarter - a
    for i in range(7):
        exponent = i - 2
        if integer_bits > exponent and remainder & (np.int64(1) << (fractional_bits + exponent)):
            result = rounding_high_mul(result, _EXP_BARREL_MULTIPLIERS[i], 31)
    if integer_bits > 5 and a < -(np.int64(1) << (36 - integer_bits)):
        result = np.int64(0)
    if a == 0:
        result = np.int64(INT32_MAX)
    return result


@jit
def one_over_one_plus_x_for_x_in_0_1(a):
    """gemmlowp: ``1 / (1 + a)`` for Q0.31 ``a`` in [0, 1), as Q0.31 (three Newton-Raphson steps)."""
    half_denominator = rounding_half_sum(a, INT32_MAX)
    x = np.int64(1515870810) + rounding_high_mul(half_denominator, -1010580540, 31)  # 48/17 - 32/17 d, Q2.29
    for _ in range(3):
        one_minus_half_denominator_times_x = (np.int64(1) << 29) - rounding_high_mul(half_denominator, x, 31)
        x = x + saturating_rounding_multiply_by_pot(rounding_high_mul(x, one_minus_half_denominator_times_x, 31), 2)
    return saturating_rounding_multiply_by_pot(x, 1)


@jit
def get_reciprocal(x, x_integer_digits):
    """LiteRT ``GetReciprocal``: ``(raw, num_bits_over_unit)`` with ``1/x ~ raw * 2**-(31 + num_bits_over_unit)``.

    ``x > 0`` is Q(x_integer_digits); ``raw`` is Q0.31 ``1 / (x * 2**-num_bits_over_unit)``.
    """
    headroom_plus_one = count_leading_zeros_32(x)
    num_bits_over_unit = x_integer_digits - headroom_plus_one
    shifted_minus_one = (np.int64(x) << headroom_plus_one) - (np.int64(1) << 31)
    return one_over_one_plus_x_for_x_in_0_1(shifted_minus_one), num_bits_over_unit


@jit
def doubling_high_mul_truncating(a, b, bits):
    """``a * b / 2**(bits - 1)`` truncated toward zero, saturating its one overflow ``a == b == -2**(bits-1)``.

    LiteRT's ``SaturatingDoublingHighMul`` (no rounding) for ``bits = 16``.
    """
    low = -(np.int64(1) << (bits - 1))
    if a == low and b == low:
        return -low - 1
    return _trunc_div_pot(np.int64(a) * np.int64(b), bits - 1)
