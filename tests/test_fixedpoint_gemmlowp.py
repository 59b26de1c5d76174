"""gemmlowp fixed-point primitives of intsim.fixedpoint against exact rational arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from intsim.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    count_leading_zeros_32,
    doubling_high_mul_truncating,
    exp_on_negative_values,
    get_reciprocal,
    one_over_one_plus_x_for_x_in_0_1,
    rounding_half_sum,
    saturating_rounding_multiply_by_pot,
)


def _edges(lo, hi):
    values = {lo, hi, 0, -1, 1}
    for i in range(32):
        for sign in (1, -1):
            for d in range(-2, 3):
                values.add(sign * 2**i + d)
    values.update(int(v) for v in np.random.default_rng(0).integers(lo, hi, size=200, endpoint=True))
    return sorted(v for v in values if lo <= v <= hi)


def _half_away(q: Fraction) -> int:
    r = math.floor(abs(q) + Fraction(1, 2))
    return r if q >= 0 else -r


@pytest.mark.parametrize("exponent", [-31, -12, -5, -1, 0, 1, 2, 5, 30])
def test_saturating_rounding_multiply_by_pot(exponent):
    for x in _edges(INT32_MIN, INT32_MAX):
        exact = _half_away(Fraction(x) * Fraction(2) ** exponent)
        assert saturating_rounding_multiply_by_pot(x, exponent) == min(max(exact, INT32_MIN), INT32_MAX)


def test_rounding_half_sum():
    for a in _edges(INT32_MIN, INT32_MAX)[::7]:
        for b in (INT32_MIN, -3, 0, 5, INT32_MAX, a):
            total = a + b
            expected = int(Fraction(total + (1 if total >= 0 else -1), 2))  # int() truncates toward zero
            assert rounding_half_sum(a, b) == expected


def test_count_leading_zeros_32():
    assert count_leading_zeros_32(0) == 32
    for i in range(32):
        assert count_leading_zeros_32(2**i) == 31 - i
        assert count_leading_zeros_32(2 ** (i + 1) - 1) == 31 - i


def test_doubling_high_mul_truncating():
    assert doubling_high_mul_truncating(-(2**15), -(2**15), 16) == 2**15 - 1
    for a in _edges(-(2**15), 2**15 - 1):
        for b in (-(2**15), -12345, -1, 0, 1, 2**14, 2**15 - 1):
            if a == b == -(2**15):
                continue
            assert doubling_high_mul_truncating(a, b, 16) == int(Fraction(a * b, 2**15))


@pytest.mark.parametrize("integer_bits", [1, 3, 5, 6])
def test_exp_on_negative_values_is_close_to_exp(integer_bits):
    assert exp_on_negative_values(0, integer_bits) == INT32_MAX
    scale = 2.0 ** (31 - integer_bits)
    for a in _edges(INT32_MIN, 0):
        got = exp_on_negative_values(a, integer_bits) / 2.0**31
        assert abs(got - math.exp(a / scale)) < 5e-7, a  # 4th-order Taylor error at the -1/4 end, ~2.2e-7


def test_one_over_one_plus_x_is_close():
    for a in _edges(0, INT32_MAX):
        got = one_over_one_plus_x_for_x_in_0_1(a) / 2.0**31
        assert abs(got - 1.0 / (1.0 + a / 2.0**31)) < 1e-8, a


def test_get_reciprocal():
    for x in _edges(1, INT32_MAX):
        raw, bits_over_unit = get_reciprocal(x, 12)
        real = x / 2.0**19
        assert abs(raw / 2.0**31 * 2.0**-bits_over_unit - 1.0 / real) <= 1e-8 / real * 2**abs(bits_over_unit) + 1e-12, x
