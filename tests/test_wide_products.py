"""Requantizing a product of two 16-bit codes that leaves int32 (issue 15: it used to be clipped to
int32 silently): :func:`intsim.fixedpoint.rescale_wide_scalar` against exact rational arithmetic."""

import math
from fractions import Fraction

import numpy as np
import pytest

from intsim.fixedpoint import DOUBLE, INT32_MAX, INT32_MIN, SINGLE, rescale_scalar, rescale_wide_scalar

LARGEST = 65535**2
EDGES = sorted({s * v for s in (1, -1) for v in [LARGEST, LARGEST - 1, 2**31, 2**31 + 1, 2**31 - 1, 2**32 - 2**17]
                + [2**i + d for i in range(28, 32) for d in (-2, -1, 0, 1, 2)]})


def _saturated(value):
    return min(max(value, INT32_MIN), INT32_MAX)


def _half_up(q: Fraction) -> int:
    return math.floor(q + Fraction(1, 2))


def _half_away(q: Fraction) -> int:
    rounded = math.floor(abs(q) + Fraction(1, 2))
    return -rounded if q < 0 else rounded


def _exact(x, multiplier, shift, rounding, bits=31):
    if rounding == SINGLE:
        return _saturated(_half_up(Fraction(x * multiplier, 2 ** (bits - shift))))
    if shift > 0:  # DOUBLE's left shift saturates in int32 first, as for any accumulator
        x = _saturated(x * 2**shift)
        return _saturated(_half_away(Fraction(_half_up(Fraction(x * multiplier, 2**bits)), 1)))
    return _saturated(_half_away(Fraction(_half_up(Fraction(x * multiplier, 2**bits)), 2**-shift)))


@pytest.mark.parametrize("rounding", [DOUBLE, SINGLE])
def test_wide_products_are_requantized_exactly(rounding):
    rng = np.random.default_rng(16)
    multipliers = [2**30, 2**31 - 1, 1518500250] + [int(m) for m in rng.integers(2**30, 2**31, 8)]
    shifts = [-31, -20, -15, -1, 0, 1, 3]
    xs = EDGES + [int(v) for v in rng.integers(-LARGEST, LARGEST + 1, 20)]
    for x in xs:
        for m in multipliers:
            for s in shifts:
                got = int(rescale_wide_scalar(x, m, s, 0.0, rounding, 31))
                assert got == _exact(x, m, s, rounding), (x, m, s)
                if INT32_MIN <= x <= INT32_MAX:
                    assert got == int(rescale_scalar(x, m, s, 0.0, rounding, 31))
