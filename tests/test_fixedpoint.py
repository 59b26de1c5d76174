"""intsim.fixedpoint against exact rational arithmetic.

Every expected value here comes from ``fractions.Fraction`` and Python
integers, in the reference functions ``ref_*`` below.  They restate the rounding
contracts in words, not in the code's bit tricks, and never call the code under
test.  Inputs follow gemmlowp's test recipe: every ``±2**i + {-2..2}``, the int32
extremes, and a seeded random batch, plus hand-built exact ties.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from numba import njit

from intsim import fixedpoint as fp
from intsim.errors import ValidationError

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
HALF = Fraction(1, 2)
SEED = 20240611


# --------------------------------------------------------------------------
# Reference arithmetic: exact rationals, one line per contract.
# --------------------------------------------------------------------------


def pow2(e: int) -> Fraction:
    return Fraction(2) ** e


def round_half_up(q: Fraction) -> int:
    """Nearest integer, ties toward +infinity."""
    return math.floor(q + HALF)


def round_half_away(q: Fraction) -> int:
    """Nearest integer, ties away from zero."""
    return math.floor(q + HALF) if q >= 0 else -math.floor(-q + HALF)


def round_half_even(q: Fraction) -> int:
    """Nearest integer, ties to even (``Fraction.__round__`` is banker's rounding)."""
    return round(q)


def sat(v: int, bits: int) -> int:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return min(max(v, lo), hi)


def ref_wrap(v: int, bits: int) -> int:
    half = 1 << (bits - 1)
    return (v + half) % (1 << bits) - half


def ref_srdhm(a: int, b: int) -> int:
    """gemmlowp SaturatingRoundingDoublingHighMul: round_half_up(a*b / 2**31), one saturating case."""
    if a == b == INT32_MIN:
        return INT32_MAX
    return round_half_up(Fraction(a * b, 2**31))


def ref_rdbpot(x: int, exponent: int) -> int:
    """gemmlowp RoundingDivideByPOT: x / 2**exponent, ties away from zero."""
    return round_half_away(Fraction(x, 2**exponent))


def ref_double(x: int, multiplier: int, shift: int, bits: int) -> int:
    """Saturating left shift, round-half-up high multiply, round-half-away right shift."""
    left, right = max(shift, 0), max(-shift, 0)
    y = sat(x * 2**left, 32)
    if bits == 31:
        high = ref_srdhm(y, multiplier)
    else:
        high = sat(round_half_up(Fraction(y * multiplier, 2**bits)), 32)
    return ref_rdbpot(high, right)


def ref_single(x: int, multiplier: int, shift: int, bits: int) -> int:
    """One rounding, ties toward +infinity, of x*M / 2**(bits - shift); saturated."""
    return sat(round_half_up(Fraction(x * multiplier) / pow2(bits - shift)), 32)


REF_INTEGER_MODE = {"double": ref_double, "single": ref_single}


def round_to_binary_float(q: Fraction, mantissa_bits: int, min_exponent: int) -> Fraction:
    """``q`` rounded to the nearest binary float with ``mantissa_bits`` significant bits
    (ties to even), normal exponents >= ``min_exponent`` and gradual underflow below.
    Callers stay far from overflow."""
    if q == 0:
        return Fraction(0)
    a = abs(q)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while pow2(e) > a:
        e -= 1
    while pow2(e + 1) <= a:
        e += 1
    ulp = pow2(max(e, min_exponent) - (mantissa_bits - 1))
    r = round_half_even(a / ulp) * ulp
    return r if q > 0 else -r


def to_float32(q: Fraction) -> Fraction:
    return round_to_binary_float(q, 24, -126)


def to_float64(q: Fraction) -> Fraction:
    return round_to_binary_float(q, 53, -1022)


def ref_float32_rint(x: int, scale: float) -> int:
    """onnxruntime MLAS: rint(float32(x) * float32(scale)), ties to even, saturated."""
    product = to_float32(to_float32(Fraction(x)) * to_float32(Fraction(scale)))
    return sat(round_half_even(product), 32)


def ref_float64_half_away(x: int, scale: float) -> int:
    """LiteRT reference: round_half_away(double(x) * double(scale)), saturated."""
    product = to_float64(Fraction(x) * Fraction(scale))  # int32 -> double is exact
    return sat(round_half_away(product), 32)


REF_FLOAT_MODE = {"float32_rint": ref_float32_rint, "float64_half_away": ref_float64_half_away}


def ref_quantize_multiplier(real: float, bits: int):
    """TFLite QuantizeMultiplier restated exactly.  Returns ``(M, shift)``, or
    ``None`` where the shift would exceed ``bits - 1`` (intsim raises there)."""
    r = Fraction(real)
    if r == 0:
        return 0, 0
    s = r.numerator.bit_length() - r.denominator.bit_length()
    while r / pow2(s) >= 1:
        s += 1
    while r / pow2(s) < HALF:
        s -= 1
    m = round_half_away(r / pow2(s) * 2**bits)
    if m == 2**bits:
        m, s = 2 ** (bits - 1), s + 1
    if s < -31:
        return 0, 0
    if s > bits - 1:
        return None
    return m, s


def reference(fn, *arrays, **kwargs) -> np.ndarray:
    """Apply a scalar reference elementwise (broadcasting) on Python ints / floats."""
    ufunc = np.frompyfunc(lambda *args: fn(*args, **kwargs), len(arrays), 1)
    as_python = [np.asarray(a).astype(object) for a in arrays]
    out = np.asarray(ufunc(*as_python), dtype=object)
    return out.astype(np.int64)


def int32_result(expected: np.ndarray) -> np.ndarray:
    assert expected.min(initial=0) >= INT32_MIN and expected.max(initial=0) <= INT32_MAX
    return expected.astype(np.int32)


def assert_matches(got: np.ndarray, fn, *arrays, **kwargs) -> None:
    """``got`` is int32 and equals the reference ``fn`` applied elementwise to ``arrays``."""
    np.testing.assert_array_equal(got, int32_result(reference(fn, *arrays, **kwargs)), strict=True)


# --------------------------------------------------------------------------
# Inputs.
# --------------------------------------------------------------------------


def edge_values(lo: int = INT32_MIN, hi: int = INT32_MAX, max_power: int = 31) -> np.ndarray:
    """Every ±2**i + {-2..2} (i in 0..max_power) clipped to [lo, hi], plus lo, hi and 0."""
    values = {lo, hi, 0}
    for i in range(max_power + 1):
        for sign in (1, -1):
            for d in range(-2, 3):
                values.add(min(max(sign * 2**i + d, lo), hi))
    return np.array(sorted(values), dtype=np.int64)


def random_int32(rng: np.random.Generator, n: int) -> np.ndarray:
    """Half uniform over int32, half log-uniform in magnitude (small values matter too)."""
    uniform = rng.integers(INT32_MIN, INT32_MAX, size=n - n // 2, endpoint=True)
    magnitude = rng.integers(0, 32, size=n // 2)
    small = rng.integers(-(2**magnitude), 2**magnitude, endpoint=False)
    return np.concatenate([uniform, small]).astype(np.int64)


EDGE = edge_values()
RANDOM = random_int32(np.random.default_rng(SEED), 3000)
ALL_X = np.unique(np.concatenate([EDGE, RANDOM]))


def multipliers(bits: int, rng: np.random.Generator, n_random: int) -> np.ndarray:
    """Multipliers near the top and bottom of [2**(b-1), 2**b), plus random ones."""
    fixed = [2**bits - 1, 2**bits - 2, 2 ** (bits - 1), 2 ** (bits - 1) + 1]
    return np.unique(np.concatenate([fixed, rng.integers(2 ** (bits - 1), 2**bits, size=n_random)])).astype(np.int64)


def shifts(bits: int) -> np.ndarray:
    return np.arange(fp.MIN_SHIFT, bits, dtype=np.int64)  # the whole valid range [-31, bits - 1]


# --------------------------------------------------------------------------
# The reference itself: gemmlowp's nudge formula is round-half-up.
# --------------------------------------------------------------------------


def _c_truncating_div(n: int, d: int) -> int:
    q = abs(n) // d
    return q if n >= 0 else -q


def test_gemmlowp_nudge_formula_is_round_half_up():
    # gemmlowp: nudge = ab >= 0 ? 2**30 : 1 - 2**30; result = (ab + nudge) / 2**31 in C (truncating).
    a = np.concatenate([EDGE, RANDOM[:300]]).tolist()
    for x in a:
        for y in a:
            ab = x * y
            if x == y == INT32_MIN:
                continue
            nudge = 2**30 if ab >= 0 else 1 - 2**30
            assert _c_truncating_div(ab + nudge, 2**31) == round_half_up(Fraction(ab, 2**31)), (x, y)


def test_reference_float_rounding_matches_ieee():
    # The exact float32/float64 rounding used by the references agrees with the hardware's.
    rng = np.random.default_rng(SEED + 1)
    xs = random_int32(rng, 500)
    scales = 2.0 ** rng.uniform(-30, 4, size=500)
    for x, s in zip(xs.tolist(), scales.tolist()):
        f32 = np.float32(x) * np.float32(s)
        assert to_float32(to_float32(Fraction(x)) * to_float32(Fraction(s))) == Fraction(float(f32))
        assert to_float64(Fraction(x) * Fraction(s)) == Fraction(float(x) * s)


# --------------------------------------------------------------------------
# saturating_rounding_doubling_high_mul
# --------------------------------------------------------------------------


def test_srdhm_edge_grid():
    a, b = EDGE[:, None], EDGE[None, :]
    got = fp.saturating_rounding_doubling_high_mul(a, b)
    assert_matches(got, ref_srdhm, a, b)


def test_srdhm_random():
    rng = np.random.default_rng(SEED + 2)
    a, b = random_int32(rng, 4000), random_int32(rng, 4000)
    got = fp.saturating_rounding_doubling_high_mul(a, b)
    assert_matches(got, ref_srdhm, a, b)


def test_srdhm_goldens():
    # Hand-checked: 2**30 * 1 / 2**31 = 0.5 -> 1; -0.5 -> 0 (ties toward +inf);
    # -1.5 -> -1; MIN*MIN saturates; MIN * MAX = -(2**31 - 1) exactly.
    a = np.array([1, -1, -3, INT32_MIN, INT32_MIN, INT32_MAX], np.int32)
    b = np.array([2**30, 2**30, 2**30, INT32_MIN, INT32_MAX, INT32_MAX], np.int32)
    expected = np.array([1, 0, -1, INT32_MAX, -INT32_MAX, INT32_MAX - 1], np.int32)
    np.testing.assert_array_equal(fp.saturating_rounding_doubling_high_mul(a, b), expected, strict=True)


def test_srdhm_scalar_primitive_other_widths():
    # rounding_high_mul(a, b, bits) = round_half_up(a*b / 2**bits) for every width.
    rng = np.random.default_rng(SEED + 3)
    a_values = np.concatenate([EDGE[::7], random_int32(rng, 40)]).tolist()
    for bits in range(2, 32):
        b_values = multipliers(bits, rng, 4).tolist() + [0, 1, -(2 ** (bits - 1))]
        for a in a_values:
            for b in b_values:
                expected = ref_srdhm(a, b) if bits == 31 else round_half_up(Fraction(a * b, 2**bits))
                assert fp.rounding_high_mul(a, b, bits) == expected, (a, b, bits)


# --------------------------------------------------------------------------
# rounding_divide_by_pot
# --------------------------------------------------------------------------


def test_rounding_divide_by_pot_all_exponents():
    x, e = ALL_X[:, None], np.arange(32, dtype=np.int64)[None, :]
    got = fp.rounding_divide_by_pot(x, e)
    assert_matches(got, ref_rdbpot, x, e)


def test_rounding_divide_by_pot_exact_ties_go_away_from_zero():
    rng = np.random.default_rng(SEED + 4)
    for e in range(1, 32):
        k = rng.integers(0, 2 ** (31 - e), size=50)
        tie = (2 * k + 1) * 2 ** (e - 1)  # x / 2**e = k + 1/2 exactly
        x = np.concatenate([tie, -tie]).astype(np.int64)
        expected = np.concatenate([k + 1, -(k + 1)]).astype(np.int32)
        np.testing.assert_array_equal(fp.rounding_divide_by_pot(x, e), expected, strict=True)
        assert_matches(expected, ref_rdbpot, x, e)  # the reference agrees with the construction


# --------------------------------------------------------------------------
# multiply_by_quantized_multiplier / rescale, integer modes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("bits", [31, 15, 8, 2])
def test_requantize_grid(rounding, bits):
    # x down the rows; every (multiplier, shift) pair over the whole shift range along the
    # last axis, which also exercises per-channel broadcasting.
    rng = np.random.default_rng(SEED + bits)
    x = np.concatenate([EDGE, RANDOM[:200]])[:, None]
    m_grid, s_grid = np.meshgrid(multipliers(bits, rng, 2), shifts(bits), indexing="ij")
    m, s = m_grid.reshape(-1), s_grid.reshape(-1)
    got = fp.multiply_by_quantized_multiplier(x, m, s, rounding, multiplier_bits=bits)
    expected = reference(REF_INTEGER_MODE[rounding], x, m, s, bits=bits)
    np.testing.assert_array_equal(got, int32_result(expected), strict=True)


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantize_random_triples(rounding):
    rng = np.random.default_rng(SEED + 5)
    n = 4000
    x = random_int32(rng, n)
    m = rng.integers(2**30, 2**31, size=n)
    s = rng.integers(-31, 31, size=n)
    got = fp.multiply_by_quantized_multiplier(x, m, s, rounding)
    assert_matches(got, REF_INTEGER_MODE[rounding], x, m, s, bits=31)


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantize_small_and_zero_multipliers(rounding):
    # Rescale accepts any multiplier in [0, 2**31 - 1], not only normalised ones.
    x = ALL_X[::5][:, None]
    m = np.array([0, 1, 2, 3, 12345, 2**29 + 7], np.int64)
    s = np.array([0, 30, -31, 5, -3, 1], np.int64)
    got = fp.multiply_by_quantized_multiplier(x, m, s, rounding)
    assert_matches(got, REF_INTEGER_MODE[rounding], x, m, s, bits=31)


def _single_rounding_ties():
    """(x, M, shift) with x*M / 2**(31 - shift) exactly k + 1/2, both signs."""
    cases = []
    for shift in range(-30, 1):
        # M = 2**30: x*M / 2**(31-shift) = x / 2**(1-shift); x = odd * 2**-shift is a tie.
        for odd in {1, 3, 5, 2 ** (31 + shift) - 1}:
            if odd < 2 ** (31 + shift):
                x = odd * 2**-shift
                cases += [(x, 2**30, shift), (-x, 2**30, shift)]
    for shift in range(-29, 1):
        # M = 3 * 2**29: x*M / 2**(31-shift) = 3x / 2**(2-shift); x = odd * 2**(1-shift) is a tie.
        for odd in {1, 7, 2 ** (30 + shift) - 1}:
            if odd < 2 ** (30 + shift):
                x = odd * 2 ** (1 - shift)
                cases += [(x, 3 * 2**29, shift), (-x, 3 * 2**29, shift)]
    # M = 2**31 - 1, x = ±2**30: x*M / 2**31 = ±(2**30 - 1/2).
    cases += [(2**30, INT32_MAX, 0), (-(2**30), INT32_MAX, 0)]
    return np.array(sorted(cases), dtype=np.int64).T


@pytest.mark.parametrize("rounding", ["double", "single"])
def test_requantize_exact_ties(rounding):
    x, m, s = _single_rounding_ties()
    exact = [Fraction(int(a) * int(b)) / pow2(31 - int(c)) for a, b, c in zip(x, m, s)]
    assert all(q.denominator == 2 for q in exact)  # the construction really gives ties
    got = fp.multiply_by_quantized_multiplier(x, m, s, rounding)
    assert_matches(got, REF_INTEGER_MODE[rounding], x, m, s, bits=31)
    if rounding == "single":  # ties toward +infinity, whatever the sign
        np.testing.assert_array_equal(got, np.array([math.floor(q) + 1 for q in exact], np.int32), strict=True)


# --------------------------------------------------------------------------
# double_rounding_one_shift: the fast form of DOUBLE the requantization kernels use
# --------------------------------------------------------------------------


@njit(cache=True)
def _one_shift_and_contract(x, multiplier, shift, bits, fast, contract):
    # Every (x, multiplier, shift) triple of the grid, fast form and contract side by side.
    k = 0
    for i in range(x.size):
        for j in range(multiplier.size):
            for s in range(shift.size):
                fast[k] = fp.double_rounding_one_shift(x[i], multiplier[j], shift[s], bits)
                contract[k] = fp.multiply_by_quantized_multiplier_scalar(x[i], multiplier[j], shift[s], fp.DOUBLE,
                                                                         bits)
                k += 1


@pytest.mark.parametrize("bits", [31, 16, 15, 8, 2])
def test_double_rounding_one_shift_equals_the_contract_on_the_edge_grid(bits):
    # Every x of ±2**i + {-2..2}, INT32_MIN, INT32_MAX, 0 and a random batch, against every
    # multiplier edge (0, 1, 2, 2**(b-1) +- 1, 2**b - 1 and random ones) and every valid shift.
    rng = np.random.default_rng(SEED + 40 + bits)
    x = np.concatenate([EDGE, RANDOM[:300]])
    multiplier = np.unique(np.concatenate([[0, 1, 2, 3], multipliers(bits, rng, 6),
                                           [2 ** (bits - 1) - 1]])).astype(np.int64)
    shift = shifts(bits)
    fast = np.empty(x.size * multiplier.size * shift.size, np.int64)
    contract = np.empty_like(fast)
    _one_shift_and_contract(x, multiplier, shift, bits, fast, contract)
    np.testing.assert_array_equal(fast, contract, strict=True)


def test_double_rounding_one_shift_equals_exact_rationals():
    # The fast form against the exact reference itself (not only the contract), on the ties
    # of single rounding, the extreme multipliers and shifts, and random triples.
    rng = np.random.default_rng(SEED + 47)
    tie_x, tie_m, tie_s = _single_rounding_ties()
    edge_x = np.repeat(EDGE, 6)
    edge_m = np.tile([0, 1, 2**30, 2**30 + 1, INT32_MAX - 1, INT32_MAX], EDGE.size)
    edge_s = rng.choice([fp.MIN_SHIFT, -30, -1, 0, 1, 29, 30], size=edge_x.size)
    x = np.concatenate([tie_x, edge_x, random_int32(rng, 2000)])
    m = np.concatenate([tie_m, edge_m, rng.integers(0, 2**31, size=2000)])
    s = np.concatenate([tie_s, edge_s, rng.integers(fp.MIN_SHIFT, 31, size=2000)])
    got = np.array([fp.double_rounding_one_shift(a, b, c, 31) for a, b, c in zip(x, m, s)], np.int64)
    assert_matches(got.astype(np.int32), ref_double, x, m, s, bits=31)


@njit(cache=True)
def _int32_form_and_contract(x, multiplier, shift, scale, rounding, bits, fast, contract):
    # rescale_int32_scalar beside rescale_scalar on every (x, multiplier, shift) triple of the grid.
    k = 0
    for i in range(x.size):
        for j in range(multiplier.size):
            for s in range(shift.size):
                fast[k] = fp.rescale_int32_scalar(x[i], multiplier[j], shift[s], scale[j], rounding, bits)
                contract[k] = fp.rescale_scalar(x[i], multiplier[j], shift[s], scale[j], rounding, bits)
                k += 1


@pytest.mark.parametrize("rounding", range(len(fp.ROUNDING_MODES)))
@pytest.mark.parametrize("bits", [31, 15])
def test_rescale_int32_scalar_equals_rescale_scalar_on_the_edge_grid(rounding, bits):
    # The kernels' branch-free form against the contract, every mode, on the edge grid of x, multiplier
    # edges and random ones, every valid shift (the float modes read the scale, here multiplier / 2**bits).
    rng = np.random.default_rng(SEED + 50 + bits)
    x = np.concatenate([EDGE, RANDOM[:200]])
    multiplier = np.unique(np.concatenate([[0, 1, 2**bits - 1], multipliers(bits, rng, 6)])).astype(np.int64)
    scale = multiplier / 2.0**bits
    shift = shifts(bits)
    fast = np.empty(x.size * multiplier.size * shift.size, np.int64)
    contract = np.empty_like(fast)
    _int32_form_and_contract(x, multiplier, shift, scale, rounding, bits, fast, contract)
    np.testing.assert_array_equal(fast, contract, strict=True)


# Hand-checked goldens where double and single rounding differ.
#   x,  M,      shift, exact,   single, double
REQUANT_GOLDENS = [
    # 2**30/2**32 = 0.25 -> single 0; double: srdhm(1, 2**30) = round(0.5) = 1, then 1/2 -> 1.
    (1, 2**30, -1, 0, 1),
    # 3/16 = 0.1875 -> single 0; double: srdhm = round(1.5) = 2, then 2/4 = 0.5 -> 1.
    (3, 2**30, -2, 0, 1),
    # -0.5 exactly -> single 0 (half up); double: srdhm = -1 exactly, then -1/2 -> -1 (half away).
    (-2, 2**30, -1, 0, -1),
    # -3/16 -> single 0; double: srdhm = round_half_up(-1.5) = -1, then -1/4 -> 0.  Same here.
    (-3, 2**30, -2, 0, 0),
    # Left shift: 2**30 * 2**30 * 2**2 / 2**31 = 2**31 -> single saturates to INT32_MAX;
    # double saturates x << 2 to INT32_MAX first, then (2**31 - 1)/2 rounds up to 2**30.
    (2**30, 2**30, 2, INT32_MAX, 2**30),
    # MIN * (2**31 - 1) / 2**31 = -(2**31 - 1) exactly: both agree.
    (INT32_MIN, INT32_MAX, 0, -INT32_MAX, -INT32_MAX),
    # MIN * 2**30 * 2**30 / 2**31 = -2**60 -> single saturates to INT32_MIN; double saturates
    # MIN << 30 to MIN first, then MIN * 2**30 / 2**31 = -2**30 exactly.
    (INT32_MIN, 2**30, 30, INT32_MIN, -(2**30)),
]


@pytest.mark.parametrize("x, m, shift, single, double", REQUANT_GOLDENS)
def test_requantize_goldens(x, m, shift, single, double):
    assert ref_single(x, m, shift, 31) == single and ref_double(x, m, shift, 31) == double
    assert fp.multiply_by_quantized_multiplier(x, m, shift, "single") == np.int32(single)
    assert fp.multiply_by_quantized_multiplier(x, m, shift, "double") == np.int32(double)


def test_single_rounding_with_power_of_two_multiplier_is_a_rounding_right_shift():
    # M = 2**30 means r = 2**(shift - 1): x * r rounded half up is (x + 2**(k-1)) >> k, k = 1 - shift.
    x = ALL_X
    for shift in range(-30, 1):
        k = 1 - shift
        expected = ((x + 2 ** (k - 1)) >> k).astype(np.int32)
        got = fp.multiply_by_quantized_multiplier(x, 2**30, shift, "single")
        np.testing.assert_array_equal(got, expected, strict=True)


def test_per_channel_broadcast_along_last_axis():
    rng = np.random.default_rng(SEED + 6)
    channels = 7
    x = random_int32(rng, 3 * 5 * channels).reshape(3, 5, channels)
    m = rng.integers(2**30, 2**31, size=channels)
    s = rng.integers(-31, 31, size=channels)
    for rounding, ref in REF_INTEGER_MODE.items():
        got = fp.rescale(x, fp.Rescale(rounding, m, s))
        expected = np.stack([reference(ref, x[..., c], m[c], s[c], bits=31) for c in range(channels)], axis=-1)
        np.testing.assert_array_equal(got, int32_result(expected), strict=True)
        # A per-tensor pair applies to every element; shape and dtype follow x.
        per_tensor = fp.multiply_by_quantized_multiplier(x, m[0], s[0], rounding)
        assert_matches(per_tensor, ref, x, m[0], s[0], bits=31)


def test_empty_and_zero_dim_inputs():
    params = fp.Rescale("double", 2**30, -1)
    np.testing.assert_array_equal(
        fp.rescale(np.zeros((0, 3), np.int32), params), np.zeros((0, 3), np.int32), strict=True
    )
    # 0-d in, 0-d out.  Exact 5 * 2**30 / 2**32 = 1.25, but double rounding gives
    # srdhm(5, 2**30) = round(2.5) = 3, then 3 / 2 = 1.5 -> 2.
    np.testing.assert_array_equal(fp.rescale(np.int32(5), params), np.array(2, np.int32), strict=True)


# --------------------------------------------------------------------------
# rescale, float modes
# --------------------------------------------------------------------------

FLOAT_SCALES = [
    0.0, 0.5, 0.25, 1.0, 2.0**-10, 1 / 3, 0.1, 1e-5, 0.7, 2.5, 3.0, 1e10,  # 1e10 saturates
    2.0**-31, 0.49999997,  # just below 0.5 in float32 terms
]


@pytest.mark.parametrize("rounding", ["float32_rint", "float64_half_away"])
def test_float_modes_grid(rounding):
    rng = np.random.default_rng(SEED + 7)
    scales = np.array(FLOAT_SCALES + (2.0 ** rng.uniform(-30, 3, size=10)).tolist())
    x = np.concatenate([EDGE, RANDOM[:300]])[:, None]
    zeros = np.zeros(scales.shape, np.int64)
    got = fp.rescale(x, fp.Rescale(rounding, zeros, zeros, scales))
    assert_matches(got, REF_FLOAT_MODE[rounding], x, scales)


def test_float_mode_goldens():
    # Hand-checked: x * 0.5 with odd x is an exact tie; float32_rint goes to even,
    # float64_half_away away from zero.  2**24 + 1 is not a float32: it becomes 2**24 first.
    x = np.array([1, 3, 5, -1, -3, -5, 2**24 + 1], np.int32)
    zeros = np.zeros((), np.int64)
    f32 = fp.rescale(x, fp.Rescale("float32_rint", zeros, zeros, 0.5))
    f64 = fp.rescale(x, fp.Rescale("float64_half_away", zeros, zeros, 0.5))
    np.testing.assert_array_equal(f32, np.array([0, 2, 2, 0, -2, -2, 2**23], np.int32), strict=True)
    np.testing.assert_array_equal(f64, np.array([1, 2, 3, -1, -2, -3, 2**23 + 1], np.int32), strict=True)


def test_float64_half_away_just_below_half():
    # The largest double below 0.5 is 0.5 - 2**-54; 1 * that must round to 0, -1 * that to 0.
    # (floor(|p| + 0.5) gets this wrong: 0.5 - 2**-54 + 0.5 rounds to 1.0 in double.)
    scale = 0.5 - 2.0**-54
    assert ref_float64_half_away(1, scale) == 0 and ref_float64_half_away(-1, scale) == 0
    zeros = np.zeros((), np.int64)
    got = fp.rescale(np.array([1, -1, 3], np.int32), fp.Rescale("float64_half_away", zeros, zeros, scale))
    np.testing.assert_array_equal(got, np.array([0, 0, 1], np.int32), strict=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rounding, reference", [(fp.FLOAT32_RINT, round_half_even),
                                                 (fp.FLOAT64_HALF_AWAY, round_half_away)])
def test_round_float_is_exact_in_both_float_types(dtype, rounding, reference):
    # Ties k + 1/2, their float neighbours (the largest float below 1/2 above all), values at the
    # edge of the integral range (2**23, 2**52) and a seeded random batch.
    ties = [k + 0.5 for k in range(-6, 6)]
    neighbours = [np.nextafter(dtype(t), dtype(d)) for t in ties + [0.5, 2.0**22 + 0.5] for d in (-np.inf, np.inf)]
    edges = [2.0**23 - 0.5, 2.0**23 + 1, 2.0**52 + 1, -(2.0**52) - 1, 0.0, -0.0, 1e30]
    rng = np.random.default_rng(SEED + 11)
    values = [dtype(v) for v in ties + edges + list(rng.uniform(-1e4, 1e4, 200))] + neighbours
    for v in values:
        assert fp.round_float(v, rounding) == reference(Fraction(float(v))), v
    for v in (np.inf, -np.inf):
        assert fp.round_float(dtype(v), rounding) == v


def test_from_real_float_mode_keeps_the_scale():
    scale = np.array([0.1, 0.003, 1.7])
    params = fp.Rescale.from_real(scale, "float32_rint")
    assert params.scale.dtype == np.float64
    np.testing.assert_array_equal(params.scale, scale, strict=True)
    x = RANDOM[:50][:, None]
    assert_matches(fp.rescale(x, params), ref_float32_rint, x, scale)


def test_from_real_integer_mode_matches_quantize_multiplier_reference():
    real = np.array([0.1, 0.003, 1.7, 1 - 2.0**-40])
    params = fp.Rescale.from_real(real, "double")
    assert params.scale is None
    expected = [ref_quantize_multiplier(r, 31) for r in real.tolist()]
    np.testing.assert_array_equal(params.multiplier, np.array([m for m, _ in expected], np.int32), strict=True)
    np.testing.assert_array_equal(params.shift, np.array([s for _, s in expected], np.int32), strict=True)


def test_kernel_args_expand_per_tensor_and_keep_per_channel():
    m, s, c = fp.Rescale("single", 2**30, -3).kernel_args(4)
    np.testing.assert_array_equal(m, np.full(4, 2**30, np.int32), strict=True)
    np.testing.assert_array_equal(s, np.full(4, -3, np.int32), strict=True)
    np.testing.assert_array_equal(c, np.zeros(4, np.float64), strict=True)
    params = fp.Rescale("float32_rint", [1, 2, 3], [0, -1, 2], [0.5, 0.25, 2.0])
    m, s, c = params.kernel_args(3)
    np.testing.assert_array_equal(m, np.array([1, 2, 3], np.int32), strict=True)
    np.testing.assert_array_equal(s, np.array([0, -1, 2], np.int32), strict=True)
    np.testing.assert_array_equal(c, np.array([0.5, 0.25, 2.0]), strict=True)
    assert params.code == fp.FLOAT32_RINT
    assert fp.Rescale("double", 1, 0).code == fp.DOUBLE


def test_kernel_args_are_the_callers_per_channel_arrays_not_copies():
    # A node's int32 multiplier / shift and float64 scale reach the kernels as they are: a model holds them once.
    multiplier, shift = np.array([3, 2**30, 7], np.int32), np.array([-2, 0, 5], np.int32)
    scale = np.array([0.5, 0.25, 2.0])
    m, s, c = fp.Rescale("float32_rint", multiplier, shift, scale).kernel_args(3)
    assert m is multiplier and s is shift and c is scale
    m, s, c = fp.Rescale("double", multiplier, shift).kernel_args(3)
    assert m is multiplier and s is shift
    assert fp.Rescale("single", shift + 9, shift).kernel_args(3)[2] is c  # one zero scale array per length
    assert c.flags.writeable and not c.any()


# --------------------------------------------------------------------------
# quantize_multiplier
# --------------------------------------------------------------------------


def _check_quantize(reals: np.ndarray, bits: int):
    expected = [ref_quantize_multiplier(r, bits) for r in reals.reshape(-1).tolist()]
    assert None not in expected, "test inputs must stay within the allowed shift range"
    m, s = fp.quantize_multiplier(reals, bits)
    np.testing.assert_array_equal(m, np.array([e[0] for e in expected], np.int32).reshape(reals.shape), strict=True)
    np.testing.assert_array_equal(s, np.array([e[1] for e in expected], np.int32).reshape(reals.shape), strict=True)


def _tie_reals(bits: int, rng: np.random.Generator) -> list[float]:
    """q * 2**bits = k + 1/2 exactly: q = (2k+1) / 2**(bits+1), q in [1/2, 1)."""
    odds = [2**bits + 1, 2 ** (bits + 1) - 1, 2**bits + 2 ** (bits - 1) + 1]
    odds += (2 * rng.integers(2 ** (bits - 1), 2**bits, size=5) + 1).tolist()
    return [float(odd) * 2.0 ** (exp - bits - 1) for odd in odds for exp in (-31, -5, 0, 1, 7, bits - 2)]


@pytest.mark.parametrize("bits", [31, 15, 8])
def test_quantize_multiplier_special_values(bits):
    rng = np.random.default_rng(SEED + 8)
    reals = [
        0.0, 1.0, 0.5, 0.75, 1 / 3, 0.1, 2.0**-31, 2.0 ** (bits - 2),
        1 - 2.0**-40, 2.0**-5 * (1 - 2.0**-40),  # carry: q rounds to 2**b, shift + 1
        2.0**-32, 2.0**-32 * (1 - 2.0**-40),  # shift -31 (the latter after a carry)
        2.0**-33, 2.0**-32 * (1 - 2.0**-20), 1e-12, 5e-324,  # shift < -31: flushed to (0, 0)
        2.0 ** (bits - 1) * (1 - 2.0 ** -(bits - 1)),  # largest kept shift: M = 2**b - 2, shift b - 1
    ]
    reals += _tie_reals(bits, rng)
    reals = np.array([r for r in reals if ref_quantize_multiplier(r, bits) is not None])
    _check_quantize(reals, bits)
    _check_quantize(reals[: 2 * (len(reals) // 2)].reshape(2, -1), bits)  # per-channel, 2-D


def test_quantize_multiplier_hand_checked():
    # 1 - 2**-40: q*2**31 = 2**31 - 2**-9 rounds to 2**31 -> carry -> (2**30, 1).
    assert fp.quantize_multiplier(1 - 2.0**-40) == (2**30, 1)
    # (2**31 + 1) / 2**32: q*2**31 = 2**30 + 1/2 exactly -> half away -> 2**30 + 1.
    assert fp.quantize_multiplier((2**31 + 1) / 2**32) == (2**30 + 1, 0)
    # 2**-32 = 0.5 * 2**-31: the smallest kept shift.
    assert fp.quantize_multiplier(2.0**-32) == (2**30, -31)
    # 2**-33 needs shift -32: flushed.
    assert fp.quantize_multiplier(2.0**-33) == (0, 0)
    assert fp.quantize_multiplier(0.0) == (0, 0)
    # 15 bits: 0.1 = 0.8 * 2**-3; 0.8 * 2**15 = 26214.4 -> 26214.
    assert fp.quantize_multiplier(0.1, multiplier_bits=15) == (26214, -3)
    m, s = fp.quantize_multiplier(0.1)
    assert type(m) is np.int32 and type(s) is np.int32


@pytest.mark.parametrize("bits", [31, 15, 8])
def test_quantize_multiplier_random_and_error_bound(bits):
    rng = np.random.default_rng(SEED + 9)
    reals = 2.0 ** rng.uniform(-31, bits - 1.01, size=1500)
    _check_quantize(reals, bits)
    m, s = fp.quantize_multiplier(reals, bits)
    for r, mi, si in zip(reals.tolist(), m.tolist(), s.tolist()):
        assert 2 ** (bits - 1) <= mi < 2**bits
        assert abs(mi * pow2(si - bits) - Fraction(r)) <= pow2(si - bits - 1)


# --------------------------------------------------------------------------
# Scalar primitives: saturate, wrap, round_half_away_divide.
# --------------------------------------------------------------------------


def test_saturate_and_wrap():
    rng = np.random.default_rng(SEED + 10)
    values = edge_values(-(2**45), 2**45, 44).tolist() + rng.integers(-(2**45), 2**45, size=200).tolist()
    for bits in range(8, 33):
        boundary = [s * 2 ** (bits - 1) + d for s in (1, -1) for d in range(-2, 3)]
        for v in values + boundary:
            assert fp.saturate(v, bits) == sat(v, bits), (v, bits)
            assert fp.wrap(v, bits) == ref_wrap(v, bits), (v, bits)


def test_round_half_away_divide():
    rng = np.random.default_rng(SEED + 11)
    numerators = edge_values(-(2**40), 2**40, 40).tolist() + rng.integers(-(2**40), 2**40, size=300).tolist()
    denominators = [1, 2, 3, 4, 5, 7, 8, 9, 10, 49, 2**20, 2**20 + 1] + rng.integers(1, 2**24, size=10).tolist()
    for d in denominators:
        for n in numerators + [d // 2, -(d // 2), d + d // 2, -(d + d // 2)]:  # ties when d is even
            assert fp.round_half_away_divide(n, d) == round_half_away(Fraction(n, d)), (n, d)


# --------------------------------------------------------------------------
# Error paths: each raises ValidationError naming the problem.
# --------------------------------------------------------------------------

X = np.array([1, 2, 3], np.int32)

ERROR_CASES = {
    # quantize_multiplier
    "negative real": (lambda: fp.quantize_multiplier(-0.5), r"real multiplier must be finite and >= 0, found -0\.5"),
    "nan real": (lambda: fp.quantize_multiplier(np.nan), r"real multiplier must be finite and >= 0, found nan"),
    "inf real": (lambda: fp.quantize_multiplier(np.inf), r"real multiplier must be finite and >= 0, found inf"),
    "bad channel": (lambda: fp.quantize_multiplier([0.5, -1.0]), r"found -1\.0"),
    "real too large": (
        lambda: fp.quantize_multiplier(2.0**30),
        r"needs shift 31, above the largest allowed left shift 30",
    ),
    "real carries too large": (lambda: fp.quantize_multiplier(2.0**30 * (1 - 2.0**-40)), r"needs shift 31"),
    "real too large 15 bits": (lambda: fp.quantize_multiplier(2.0**14, 15), r"needs shift 15, above .* 14"),
    # multiplier_bits
    "bits 1": (lambda: fp.quantize_multiplier(0.5, 1), r"multiplier_bits must be an integer in \[2, 31\], found 1"),
    "bits 32": (lambda: fp.quantize_multiplier(0.5, 32), r"multiplier_bits must be an integer in \[2, 31\], found 32"),
    "bits float": (lambda: fp.quantize_multiplier(0.5, 15.0), r"multiplier_bits .* found 15\.0"),
    "bits in Rescale": (lambda: fp.Rescale("double", 1, 0, None, 0), r"Rescale: multiplier_bits .* found 0"),
    "bits in mbqm": (
        lambda: fp.multiply_by_quantized_multiplier(X, 1, 0, multiplier_bits=40),
        r"multiplier_bits must be an integer in \[2, 31\], found 40",
    ),
    # rounding names and scales
    "unknown rounding Rescale": (
        lambda: fp.Rescale("nearest", 1, 0),
        r"Rescale: rounding must be one of double, single, float32_rint, float64_half_away, found 'nearest'",
    ),
    "unknown rounding mbqm": (
        lambda: fp.multiply_by_quantized_multiplier(X, 1, 0, "nearest"),
        r"multiply_by_quantized_multiplier: rounding must be one of double, single, found 'nearest'",
    ),
    "float rounding mbqm": (
        lambda: fp.multiply_by_quantized_multiplier(X, 1, 0, "float32_rint"),
        r"rounding must be one of double, single, found 'float32_rint'",
    ),
    "float64 rounding mbqm": (
        lambda: fp.multiply_by_quantized_multiplier(X, 1, 0, "float64_half_away"),
        r"found 'float64_half_away'",
    ),
    "float mode without scale": (
        lambda: fp.Rescale("float32_rint", 0, 0),
        r"rounding 'float32_rint' needs the real scale",
    ),
    "integer mode with scale": (lambda: fp.Rescale("double", 2**30, 0, 0.5), r"rounding 'double' takes no float scale"),
    "negative scale": (lambda: fp.Rescale("float64_half_away", 0, 0, -0.5), r"scale must be finite, >= 0"),
    "nan scale": (lambda: fp.Rescale("float64_half_away", 0, 0, np.nan), r"scale must be finite"),
    "scale shape": (lambda: fp.Rescale("float32_rint", [0, 0], [0, 0], [0.5]), r"shaped like multiplier \(2,\)"),
    # multiplier and shift
    "multiplier above": (
        lambda: fp.multiply_by_quantized_multiplier(X, 2**31, 0),
        r"multiplier must lie in \[0, 2147483647\], found 2147483648",
    ),
    "multiplier negative": (lambda: fp.Rescale("single", -1, 0), r"multiplier must lie in \[0, 2147483647\], found -1"),
    "multiplier 15 bits": (
        lambda: fp.multiply_by_quantized_multiplier(X, 2**15, 0, multiplier_bits=15),
        r"multiplier must lie in \[0, 32767\], found 32768",
    ),
    "multiplier float": (lambda: fp.Rescale("double", 0.5, 0), r"multiplier must be integers, found dtype float64"),
    "shift above": (
        lambda: fp.multiply_by_quantized_multiplier(X, 2**30, 31),
        r"shift must lie in \[-31, 30\], found 31",
    ),
    "shift below": (
        lambda: fp.multiply_by_quantized_multiplier(X, 2**30, -32),
        r"shift must lie in \[-31, 30\], found -32",
    ),
    "shift 15 bits": (
        lambda: fp.multiply_by_quantized_multiplier(X, 2**14, 15, multiplier_bits=15),
        r"shift must lie in \[-31, 14\], found 15",
    ),
    "shift per channel": (
        lambda: fp.multiply_by_quantized_multiplier(X, [2**30, 2**30], [0, 99]),
        r"shift must lie in .*, found 99",
    ),
    "multiplier/shift shapes": (
        lambda: fp.Rescale("double", [2**30, 2**30], [0, 0, 0]),
        r"multiplier shape \(2,\) != shift shape \(3,\)",
    ),
    # x, a, b, exponent
    "x float": (
        lambda: fp.multiply_by_quantized_multiplier(X.astype(np.float32), 2**30, 0),
        r"multiply_by_quantized_multiplier: x must be integers, found dtype float32",
    ),
    "x bool": (
        lambda: fp.rescale(np.array([True]), fp.Rescale("double", 1, 0)),
        r"rescale: x must be integers, found dtype bool",
    ),
    "x above int32": (
        lambda: fp.multiply_by_quantized_multiplier(np.array([2**31]), 2**30, 0),
        r"x must lie in \[-2147483648, 2147483647\], found 2147483648",
    ),
    "x below int32 float mode": (
        lambda: fp.rescale(np.array([-(2**31) - 1]), fp.Rescale("float32_rint", 0, 0, 0.5)),
        r"rescale: x must lie in .*found -2147483649",
    ),
    "srdhm a range": (
        lambda: fp.saturating_rounding_doubling_high_mul(2**31, 1),
        r"saturating_rounding_doubling_high_mul: a must lie in",
    ),
    "srdhm b float": (
        lambda: fp.saturating_rounding_doubling_high_mul(1, 0.5),
        r"b must be integers, found dtype float64",
    ),
    "rdbpot exponent 32": (
        lambda: fp.rounding_divide_by_pot(X, 32),
        r"rounding_divide_by_pot: exponent must lie in \[0, 31\], found 32",
    ),
    "rdbpot exponent -1": (
        lambda: fp.rounding_divide_by_pot(X, [1, -1, 0]),
        r"exponent must lie in \[0, 31\], found -1",
    ),
    "rdbpot x float": (
        lambda: fp.rounding_divide_by_pot(1.5, 1),
        r"rounding_divide_by_pot: x must be integers, found dtype float64",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors(case):
    call, message = ERROR_CASES[case]
    with pytest.raises(ValidationError, match=message):
        call()


def test_unsigned_input_beyond_int64_is_rejected_not_wrapped():
    # uint64 2**64 - 1 is far outside int32; it must not be read as -1.
    huge = np.array([2**64 - 1], np.uint64)
    with pytest.raises(ValidationError, match=r"x must lie in \[-2147483648, 2147483647\]"):
        fp.rounding_divide_by_pot(huge, 0)
    with pytest.raises(ValidationError, match=r"x must lie in"):
        fp.multiply_by_quantized_multiplier(huge, 2**30, 0)


def test_per_channel_parameters_that_do_not_broadcast_are_a_validation_error():
    # 4 channel parameters against 3 channels in x: a typed error naming both shapes.
    with pytest.raises(ValidationError, match=r"\(2, 3\).*\(4,\)"):
        fp.multiply_by_quantized_multiplier(np.zeros((2, 3), np.int32), np.full(4, 2**30), np.zeros(4, np.int64))
