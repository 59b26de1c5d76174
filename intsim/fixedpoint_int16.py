"""gemmlowp's fixed-point logistic and tanh on int16 raw values: the gate activations of LiteRT's
fully-integer LSTM (``ApplySigmoid`` / ``ApplyTanh`` in ``portable_tensor_utils.cc`` call
``gemmlowp::logistic`` / ``gemmlowp::tanh`` on ``FixedPoint<int16_t, k>``).

A ``FixedPoint<int16, k>`` raw value ``r`` means ``r / 2**(15 - k)``; results are Q0.15 (``k = 0``).
Every function is a numba scalar on 64-bit integers that hold int16 values, and reproduces the int16
instantiation of gemmlowp's templates operation for operation:

- products are ``SaturatingRoundingDoublingHighMul`` on int16 (:func:`rounding_doubling_high_mul_16`);
- ``+`` / ``-`` / negation wrap to int16 (C's conversion of the int result back to ``int16_t``), except
  the one ``AddSaturatingIf16Bit`` of the exp polynomial, which saturates;
- ``Rescale`` and ``SaturatingRoundingMultiplyByPOT`` saturate a left shift and round a right shift
  half away from zero (:func:`saturating_rounding_multiply_by_pot_16`);
- gemmlowp's constants are written as int32 raw values and rounding-shifted right by 16 for int16
  (``RescaleConstantInitializer``), which :func:`_constant_16` repeats.

The int32 instantiation, used by the int8 softmax, lives in :mod:`intsim.fixedpoint`.
"""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import (rounding_divide_by_pot_scalar, rounding_high_mul, saturate,
                               saturating_rounding_multiply_by_pot, wrap)
from intsim.jit import jit

INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1
# The most integer bits gemmlowp's int16 exp accepts (``ConstantPOT<-2>`` needs 15 - k - 2 >= 0); tanh
# reads its input with one more.
MAX_INTEGER_BITS = 12


def _constant_16(raw_int32: int) -> int:
    """gemmlowp ``RescaleConstantInitializer`` for int16: the int32 raw constant, rounding-shifted right by 16.
    Run as Python (``py_func``): a compiled call here would load numba's typing and lowering registries
    (0.2-0.3 s of CPU) on every ``import intsim``."""
    return int(rounding_divide_by_pot_scalar.py_func(np.int64(raw_int32), 16))


_EXP_MINUS_EIGHTH = _constant_16(1895147668)
_ONE_THIRD = _constant_16(715827883)
_FORTY_EIGHT_SEVENTEENTHS = _constant_16(1515870810)  # Q2.13
_MINUS_THIRTY_TWO_SEVENTEENTHS = _constant_16(-1010580540)  # Q2.13
_ONE_HALF = _constant_16(1 << 30)
# exp(-2**e) in Q0.15 for e = -2..4: the barrel shifter of exp_on_negative_values.
_EXP_BARREL = tuple(_constant_16(c) for c in (1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242))
_EXP_BARREL_0, _EXP_BARREL_1, _EXP_BARREL_2, _EXP_BARREL_3, _EXP_BARREL_4, _EXP_BARREL_5, _EXP_BARREL_6 = _EXP_BARREL


@jit
def rounding_doubling_high_mul_16(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int16: ``a * b / 2**15`` rounded half toward
    +infinity (truncating division after the nudge), saturating its one overflow ``a == b == -2**15``."""
    if a == INT16_MIN and b == INT16_MIN:
        return np.int64(INT16_MAX)
    return rounding_high_mul(a, b, 15)


@jit
def saturating_rounding_multiply_by_pot_16(x, exponent):
    """``x * 2**exponent`` on int16: a left shift saturates to int16 (gemmlowp's thresholds
    ``±(2**(15 - exponent) - 1)`` amount to that), a right shift rounds half away from zero."""
    if exponent > 0:
        return saturate(np.int64(x) << exponent, 16)
    return saturating_rounding_multiply_by_pot(x, exponent)


@jit
def _rounding_half_sum_16(a, b):
    total = np.int64(a) + np.int64(b)
    total += 1 if total >= 0 else -1
    return wrap(-((-total) >> 1) if total < 0 else total >> 1, 16)


@jit
def _exp_on_interval_between_negative_one_quarter_and_0_excl_16(a):
    """``exp(a)`` for Q0.15 ``a`` in [-1/4, 0): Taylor expansion around -1/8."""
    x = wrap(a + 4096, 16)  # a + 1/8
    x2 = rounding_doubling_high_mul_16(x, x)
    x3 = rounding_doubling_high_mul_16(x2, x)
    x4 = rounding_doubling_high_mul_16(x2, x2)
    x4_over_4 = saturating_rounding_multiply_by_pot_16(x4, -2)
    poly = wrap(rounding_doubling_high_mul_16(wrap(x4_over_4 + x3, 16), _ONE_THIRD) + x2, 16)
    poly = saturating_rounding_multiply_by_pot_16(poly, -1)
    return saturate(_EXP_MINUS_EIGHTH + rounding_doubling_high_mul_16(_EXP_MINUS_EIGHTH, wrap(x + poly, 16)), 16)


@jit
def _barrel_step(result, remainder, integer_bits, exponent, multiplier):
    fractional_bits = 15 - integer_bits
    if integer_bits > exponent and remainder & (np.int64(1) << (fractional_bits + exponent)):
        return rounding_doubling_high_mul_16(result, multiplier)
    return result


@jit
def exp_on_negative_values_16(a, integer_bits):
    """gemmlowp ``exp_on_negative_values`` on ``FixedPoint<int16, integer_bits>``: ``exp(a)`` for
    ``a <= 0`` as Q0.15 (``exp(0)`` gives ``2**15 - 1``).  Not defined for ``a > 0``."""
    fractional_bits = 15 - integer_bits
    one_quarter = np.int64(1) << (fractional_bits - 2)
    a = np.int64(a)
    a_mod_quarter_minus_one_quarter = wrap((a & (one_quarter - 1)) - one_quarter, 16)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl_16(
        saturating_rounding_multiply_by_pot_16(a_mod_quarter_minus_one_quarter, integer_bits))
    remainder = wrap(a_mod_quarter_minus_one_quarter - a, 16)
    result = _barrel_step(result, remainder, integer_bits, -2, _EXP_BARREL_0)
    result = _barrel_step(result, remainder, integer_bits, -1, _EXP_BARREL_1)
    result = _barrel_step(result, remainder, integer_bits, 0, _EXP_BARREL_2)
    result = _barrel_step(result, remainder, integer_bits, 1, _EXP_BARREL_3)
    result = _barrel_step(result, remainder, integer_bits, 2, _EXP_BARREL_4)
    result = _barrel_step(result, remainder, integer_bits, 3, _EXP_BARREL_5)
    result = _barrel_step(result, remainder, integer_bits, 4, _EXP_BARREL_6)
    if integer_bits > 5:
        clamp = rounding_divide_by_pot_scalar(-(np.int64(1) << (36 - integer_bits)), 16)  # -32
        if a < clamp:
            result = np.int64(0)
    if a == 0:
        result = np.int64(INT16_MAX)
    return result


@jit
def _newton_reciprocal_q2_13(half_denominator):
    """Three Newton-Raphson steps towards ``1 / half_denominator`` in Q2.13 from 48/17 - 32/17 d."""
    x = wrap(_FORTY_EIGHT_SEVENTEENTHS + rounding_doubling_high_mul_16(half_denominator,
                                                                       _MINUS_THIRTY_TWO_SEVENTEENTHS), 16)
    for _ in range(3):
        one_minus_half_denominator_times_x = wrap(8192 - rounding_doubling_high_mul_16(half_denominator, x), 16)
        x = wrap(x + saturating_rounding_multiply_by_pot_16(
            rounding_doubling_high_mul_16(x, one_minus_half_denominator_times_x), 2), 16)
    return x


@jit
def logistic_16(a, integer_bits):
    """gemmlowp ``logistic`` of ``FixedPoint<int16, integer_bits>`` raw ``a``, as Q0.15 raw.

    ``1 / (1 + exp(-|a|))`` by ``one_over_one_plus_x_for_x_in_0_1``, mirrored for ``a < 0`` as
    ``(2**15 - 1) - result``; ``a = 0`` gives ``2**14``.  The negation of ``a = -2**15`` wraps back to
    itself, and so does its second negation: the result is right for every int16.
    """
    if a == 0:
        return np.int64(_ONE_HALF)
    positive = a > 0
    absolute = np.int64(a) if positive else wrap(-np.int64(a), 16)
    exp = exp_on_negative_values_16(wrap(-absolute, 16), integer_bits)
    x = _newton_reciprocal_q2_13(_rounding_half_sum_16(exp, INT16_MAX))
    result_if_positive = saturating_rounding_multiply_by_pot_16(x, 1)
    return result_if_positive if positive else wrap(INT16_MAX - result_if_positive, 16)


@jit
def tanh_16(a, integer_bits):
    """gemmlowp ``tanh`` of ``FixedPoint<int16, integer_bits>`` raw ``a``, as Q0.15 raw.

    ``(1 - exp(-2|a|)) / (1 + exp(-2|a|))`` by ``one_minus_x_over_one_plus_x_for_x_in_0_1``, the exp
    read with ``integer_bits + 1`` (``ExactMulByPot<1>``), negated for ``a < 0``; ``a = 0`` gives 0.
    """
    if a == 0:
        return np.int64(0)
    negative = a < 0
    n = np.int64(a) if negative else -np.int64(a)
    exp = exp_on_negative_values_16(n, integer_bits + 1)
    x = _newton_reciprocal_q2_13(_rounding_half_sum_16(exp, INT16_MAX))
    t = saturating_rounding_multiply_by_pot_16(wrap(x - 8192, 16), 2)
    return wrap(-t, 16) if negative else t
