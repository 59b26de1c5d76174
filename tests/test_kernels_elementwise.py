"""Elementwise, pooling, reduction and table kernels: fast kernels against their naive twins,
hand-checked goldens, and the float rounding primitive against exact rational arithmetic."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from intsim import fixedpoint
from intsim.fixedpoint import DOUBLE, FLOAT32_RINT, FLOAT64_HALF_AWAY, INT32_MAX, INT32_MIN, SINGLE
from intsim.kernels import elementwise as fast
from intsim.kernels.naive import elementwise as naive

DTYPES = (np.int8, np.uint8, np.int16, np.uint16)
INTEGER_ROUNDINGS = (DOUBLE, SINGLE)
ALL_ROUNDINGS = (DOUBLE, SINGLE, FLOAT32_RINT, FLOAT64_HALF_AWAY)
IMPLEMENTATIONS = pytest.mark.parametrize("impl", [fast, naive], ids=["fast", "naive"])


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------

dtypes = st.sampled_from(DTYPES)
multiplier_bits = st.sampled_from([31, 15])
# Exact binary fractions make float-mode ties; 0.1 and 0.3 make near-ties that float32 and float64
# round apart; the range covers tiny to large ratios.
scales = st.sampled_from([0.5, 0.25, 1.0, 1.5, 2.0**-8, 0.1, 0.3]) | st.floats(2.0**-20, 2.0**8)


def zero_points(dtype):
    info = np.iinfo(dtype)
    return st.sampled_from([int(info.min), int(info.max)]) | st.integers(int(info.min), int(info.max))


@st.composite
def codes(draw, dtype, shape):
    """Seeded codes of ``dtype``: uniform over the range, or only the range ends and their neighbours."""
    info = np.iinfo(dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    edges = np.array([info.min, info.min + 1, 0, 1, info.max - 1, info.max]).astype(dtype)
    return rng.choice(edges, size=shape)


@st.composite
def clamps(draw, dtype):
    info = np.iinfo(dtype)
    if draw(st.booleans()):
        return int(info.min), int(info.max)
    lo, hi = sorted(draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=2, max_size=2)))
    return lo, hi


@st.composite
def fixed_point_multipliers(draw, bits):
    """``(multiplier, shift)``: near 2**bits, at 2**(bits-1), 0 (flushed) or anywhere; shifts of both signs."""
    multiplier = draw(
        st.sampled_from([2**bits - 1, 2 ** (bits - 1), 0]) | st.integers(2 ** (bits - 1), 2**bits - 1)
    )
    shift = draw(st.sampled_from([-31, -1, 0, 1, bits - 1]) | st.integers(-31, bits - 1))
    return multiplier, shift


def assert_same(fast_result, naive_result):
    """Bit-exact equality of ``(out, saturation_count)`` pairs or of plain arrays."""
    if isinstance(fast_result, tuple):
        (fast_out, fast_count), (naive_out, naive_count) = fast_result, naive_result
        assert type(fast_count) is int and type(naive_count) is int
        assert fast_count == naive_count
    else:
        fast_out, naive_out = fast_result, naive_result
    np.testing.assert_array_equal(fast_out, naive_out, strict=True)


def assert_calls_write(calls, out, expected):
    """``calls`` (a launcher's ``[(function, arguments)]``, not ``None``) write ``expected`` into ``out``."""
    assert calls is not None
    for function, arguments in calls:
        function(*arguments)
    np.testing.assert_array_equal(out, expected, strict=True)


# --------------------------------------------------------------------------
# Fast kernel == naive twin
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rounding", ALL_ROUNDINGS)
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_add_every_code_pair_matches_twin(rounding, dtype):
    codes = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype)
    a, b = np.repeat(codes, 256), np.tile(codes, 256)
    lo, hi = int(np.iinfo(dtype).min) + 5, int(np.iinfo(dtype).max) - 5
    args = (a, 3, 1518500250, -1, 0.7, b, -5, 1288490189, -2, 0.3, 20, 1400000000, -17, 0.0, rounding, 31, 1,
            lo, hi, dtype)
    for subtract in (False, True):
        assert_same(fast.add(*args, subtract=subtract), naive.add(*args, subtract=subtract))


@settings(deadline=None, max_examples=150)
@given(data=st.data(), same_8_bit=st.booleans())
def test_add_matches_twin(data, same_8_bit):
    # same_8_bit: both inputs int8 or both uint8, as in a network (else each dtype is drawn on its own).
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=5), label="shape")
    a_dtype, b_dtype, out_dtype = (data.draw(dtypes) for _ in range(3))
    if same_8_bit:
        a_dtype = b_dtype = data.draw(st.sampled_from([np.int8, np.uint8]), label="8-bit dtype")
    bits = data.draw(multiplier_bits, label="multiplier_bits")
    (a_mult, a_shift), (b_mult, b_shift), (out_mult, out_shift) = (
        data.draw(fixed_point_multipliers(bits)) for _ in range(3)
    )
    clamp_min, clamp_max = data.draw(clamps(out_dtype), label="clamp")
    args = (
        data.draw(codes(a_dtype, shape), label="a"), data.draw(zero_points(a_dtype), label="a_zp"),
        a_mult, a_shift, data.draw(scales, label="a_scale"),
        data.draw(codes(b_dtype, shape), label="b"), data.draw(zero_points(b_dtype), label="b_zp"),
        b_mult, b_shift, data.draw(scales, label="b_scale"),
        data.draw(st.sampled_from([0, 15, 20]) | st.integers(0, 24), label="left_shift"),
        out_mult, out_shift, 0.0, data.draw(st.sampled_from(ALL_ROUNDINGS), label="rounding"), bits,
        data.draw(zero_points(out_dtype), label="out_zp"), clamp_min, clamp_max, out_dtype,
    )
    subtract = data.draw(st.booleans(), label="subtract")
    expected = naive.add(*args, subtract=subtract)
    assert_same(fast.add(*args, subtract=subtract), expected)
    # The launcher's fixed calls (a model's bound run) write the same codes into a preallocated array.
    a, b, launcher_args = args[0], args[5], args[1:5] + args[6:]
    out = np.full(expected[0].shape, clamp_max, out_dtype)
    assert_calls_write(fast.add_launcher(*launcher_args, subtract=subtract).calls(a, b, out), out, expected[0])
    assert_same(naive.add_launcher(*launcher_args, subtract=subtract)(a, b), expected)


@settings(deadline=None, max_examples=60)
@given(data=st.data())
def test_add_at_the_int32_edges_matches_twin(data):
    # Integer modes on every 8-bit code of a, with parameters around the edges the fast kernel decides by
    # (its loop without saturation tests runs only where no code can saturate): left shifts of 22-24 with
    # zero points that put the largest centered code just inside or just outside int32 (-128 << 24 is
    # INT32_MIN itself), input rescales near 1 (their sums of two near-int32 terms saturate) or with a left
    # shift of their own, output rescales with small left shifts.
    dtype = data.draw(st.sampled_from([np.int8, np.uint8]), label="dtype")
    info = np.iinfo(dtype)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    a = rng.permutation(np.arange(info.min, info.max + 1)).astype(dtype)
    b = rng.integers(info.min, info.max, size=a.size, dtype=dtype, endpoint=True)
    edge_zero_points = st.sampled_from([int(info.min), int(info.min) + 1, -2, -1, 0, 1, 2, int(info.max)])
    edge_multipliers = st.sampled_from([(2**31 - 1, 0), (2**30, 0), (2**30, -1), (2**31 - 1, 1), (2**30, 2)])
    (a_mult, a_shift), (b_mult, b_shift) = data.draw(edge_multipliers), data.draw(edge_multipliers)
    out_mult, out_shift = data.draw(st.tuples(st.integers(2**30, 2**31 - 1), st.integers(-31, 2)), label="out")
    args = (a, data.draw(edge_zero_points.filter(lambda z: info.min <= z <= info.max), label="a_zp"),
            a_mult, a_shift, 0.0,
            b, data.draw(edge_zero_points.filter(lambda z: info.min <= z <= info.max), label="b_zp"),
            b_mult, b_shift, 0.0,
            data.draw(st.sampled_from([22, 23, 24]), label="left_shift"), out_mult, out_shift, 0.0,
            data.draw(st.sampled_from(INTEGER_ROUNDINGS), label="rounding"), 31,
            data.draw(zero_points(dtype), label="out_zp"), int(info.min), int(info.max), dtype)
    subtract = data.draw(st.booleans(), label="subtract")
    assert_same(fast.add(*args, subtract=subtract), naive.add(*args, subtract=subtract))


@settings(deadline=None, max_examples=40)
@given(data=st.data())
def test_add_converter_parameters_match_twin(data):
    # The parameters a converter gives (TFLite's scheme, intsim.converter.params.add_params) on random
    # scales, 8- and 16-bit activations: the case the fast kernel's saturation-free loop is for.
    from intsim.converter.params import add_params
    from intsim.profiles import get_profile

    bits = data.draw(st.sampled_from([8, 16]), label="activation_bits")
    dtype = data.draw(st.sampled_from([np.int8, np.uint8] if bits == 8 else [np.int16, np.uint16]), label="dtype")
    rounding = data.draw(st.sampled_from(["double", "single"]), label="rounding")
    profile = get_profile("tflite").replace(rounding=rounding)
    a_scale, b_scale, out_scale = (data.draw(st.floats(2.0**-12, 2.0**4), label="scale") for _ in range(3))
    params, left_shift = add_params(a_scale, b_scale, out_scale, profile, bits)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6), label="shape")
    info = np.iinfo(dtype)
    args = (data.draw(codes(dtype, shape), label="a"), data.draw(zero_points(dtype), label="a_zp"),
            int(params["a_multiplier"][0]), int(params["a_shift"][0]), 0.0,
            data.draw(codes(dtype, shape), label="b"), data.draw(zero_points(dtype), label="b_zp"),
            int(params["b_multiplier"][0]), int(params["b_shift"][0]), 0.0,
            left_shift, int(params["out_multiplier"][0]), int(params["out_shift"][0]), 0.0,
            fixedpoint.ROUNDING_MODES.index(rounding), 31, data.draw(zero_points(dtype), label="out_zp"),
            int(info.min), int(info.max), dtype)
    subtract = data.draw(st.booleans(), label="subtract")
    assert_same(fast.add(*args, subtract=subtract), naive.add(*args, subtract=subtract))


@settings(deadline=None, max_examples=150)
@given(data=st.data())
def test_mul_matches_twin(data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=5), label="shape")
    a_dtype, b_dtype, out_dtype = (data.draw(dtypes) for _ in range(3))
    bits = data.draw(multiplier_bits, label="multiplier_bits")
    out_mult, out_shift = data.draw(fixed_point_multipliers(bits), label="out_multiplier")
    clamp_min, clamp_max = data.draw(clamps(out_dtype), label="clamp")
    args = (
        data.draw(codes(a_dtype, shape), label="a"), data.draw(zero_points(a_dtype), label="a_zp"),
        data.draw(codes(b_dtype, shape), label="b"), data.draw(zero_points(b_dtype), label="b_zp"),
        out_mult, out_shift, data.draw(scales, label="out_scale"),
        data.draw(st.sampled_from(ALL_ROUNDINGS), label="rounding"), bits,
        data.draw(zero_points(out_dtype), label="out_zp"), clamp_min, clamp_max, out_dtype,
    )
    assert_same(fast.mul(*args), naive.mul(*args))


@settings(deadline=None, max_examples=40)
@given(data=st.data())
def test_mul_at_the_int32_edge_matches_twin(data):
    # int16 codes less a zero point of 13572 reach -46340, whose square 2147395600 is inside int32 (every
    # product of the call fits: the fast kernel rescales them as int32); one more, 13573, reaches -46341,
    # whose square leaves it (rescaled exactly in int64); likewise -13573 and -13574 from above (46340,
    # 46341).  The extreme zero points give products near 2**32, which output scales of 2**-14 to 2**-20
    # bring inside int16 (a product clipped to int32 first would land on half of it).  Every pair of edge
    # codes, integer modes.
    edges = np.array([-32768, -32767, -46, -1, 0, 1, 46, 32766, 32767], np.int16)
    a, b = np.repeat(edges, edges.size), np.tile(edges, edges.size)
    bits = data.draw(multiplier_bits, label="multiplier_bits")
    out_mult, out_shift = data.draw(fixed_point_multipliers(bits), label="out_multiplier")
    if data.draw(st.booleans(), label="small output scale"):
        out_shift = data.draw(st.integers(-20, -14), label="out_shift")
    zero_point = data.draw(st.sampled_from([13572, 13573, -13573, -13574, 32767, -32768]), label="zero_point")
    args = (a, zero_point, b, zero_point, out_mult, out_shift, 0.0,
            data.draw(st.sampled_from(INTEGER_ROUNDINGS), label="rounding"), bits,
            data.draw(zero_points(np.int16), label="out_zp"), -32768, 32767, np.int16)
    assert_same(fast.mul(*args), naive.mul(*args))


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_max_pool_matches_twin(data):
    dtype = data.draw(dtypes, label="dtype")
    kernel = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)), label="kernel")
    strides = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)), label="strides")
    dilations = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)), label="dilations")
    # Pads may exceed the kernel, so some windows cover padding only.
    pads = data.draw(st.tuples(*[st.integers(0, 3)] * 4), label="pads")
    top, left, bottom, right = pads
    min_height = max(1, dilations[0] * (kernel[0] - 1) + 1 - top - bottom)
    min_width = max(1, dilations[1] * (kernel[1] - 1) + 1 - left - right)
    shape = (
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(min_height, min_height + 5)),
        data.draw(st.integers(min_width, min_width + 5)),
        data.draw(st.integers(1, 3)),
    )
    x = data.draw(codes(dtype, shape), label="x")
    assert_same(
        fast.max_pool_nhwc(x, kernel, strides, dilations, pads),
        naive.max_pool_nhwc(x, kernel, strides, dilations, pads),
    )


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_avg_pool_matches_twin(data):
    dtype = data.draw(dtypes, label="dtype")
    kernel = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 4)), label="kernel")
    strides = data.draw(st.tuples(st.integers(1, 3), st.integers(1, 3)), label="strides")
    # Pads smaller than the kernel: every window holds a valid position.
    pads = data.draw(
        st.tuples(
            st.integers(0, kernel[0] - 1), st.integers(0, kernel[1] - 1),
            st.integers(0, kernel[0] - 1), st.integers(0, kernel[1] - 1),
        ),
        label="pads",
    )
    top, left, bottom, right = pads
    min_height = max(1, kernel[0] - top - bottom)
    min_width = max(1, kernel[1] - left - right)
    shape = (
        data.draw(st.integers(1, 2)),
        data.draw(st.integers(min_height, min_height + 5)),
        data.draw(st.integers(min_width, min_width + 5)),
        data.draw(st.integers(1, 3)),
    )
    x = data.draw(codes(dtype, shape), label="x")
    zero_point = data.draw(zero_points(dtype), label="x_zp")
    include = data.draw(st.booleans(), label="count_include_pad")
    assert_same(
        fast.avg_pool_nhwc(x, zero_point, kernel, strides, pads, include),
        naive.avg_pool_nhwc(x, zero_point, kernel, strides, pads, include),
    )


@settings(deadline=None, max_examples=80)
@given(data=st.data())
def test_mean_reduce_matches_twin(data):
    dtype, out_dtype = data.draw(dtypes, label="dtype"), data.draw(dtypes, label="out_dtype")
    reduced = data.draw(st.integers(1, 8) | st.integers(1000, 6000), label="R")
    shape = (data.draw(st.integers(1, 3)), reduced, data.draw(st.integers(1, 3)))
    bits = data.draw(multiplier_bits, label="multiplier_bits")
    mult, shift = data.draw(fixed_point_multipliers(bits), label="multiplier")
    clamp_min, clamp_max = data.draw(clamps(out_dtype), label="clamp")
    args = (
        data.draw(codes(dtype, shape), label="x"), data.draw(zero_points(dtype), label="x_zp"),
        mult, shift, data.draw(scales, label="scale"), data.draw(st.sampled_from(ALL_ROUNDINGS), label="rounding"),
        bits, data.draw(zero_points(out_dtype), label="out_zp"), clamp_min, clamp_max, out_dtype,
    )
    expected = naive.mean_reduce(*args)
    assert_same(fast.mean_reduce(*args), expected)
    out = np.full(expected[0].shape, clamp_max, out_dtype)
    assert_calls_write(fast.mean_launcher(*args[1:]).calls(args[0], out), out, expected[0])
    assert_same(naive.mean_launcher(*args[1:])(args[0]), expected)


@settings(deadline=None, max_examples=80)
@given(data=st.data())
def test_softmax_matches_twin(data):
    dtype, out_dtype = data.draw(dtypes, label="dtype"), data.draw(dtypes, label="out_dtype")
    columns = data.draw(st.integers(1, 8) | st.integers(1000, 5000), label="C")
    x = data.draw(codes(dtype, (data.draw(st.integers(1, 3)), columns)), label="x")
    # exp_table[d] = round(2**30 * exp(-alpha * d)), alpha standing for beta * s_x.
    alpha = data.draw(st.floats(2.0**-12, 4.0), label="alpha")
    entries = np.round(2.0**30 * np.exp(-alpha * np.arange(2 ** (8 * x.itemsize))))
    exp_table = entries.astype(data.draw(st.sampled_from([np.int32, np.int64]), label="table_dtype"))
    bits = data.draw(multiplier_bits, label="multiplier_bits")
    mult, shift = data.draw(fixed_point_multipliers(bits), label="out_multiplier")
    clamp_min, clamp_max = data.draw(clamps(out_dtype), label="clamp")
    args = (
        x, exp_table, mult, shift, data.draw(st.sampled_from(INTEGER_ROUNDINGS), label="rounding"), bits,
        data.draw(zero_points(out_dtype), label="out_zp"), clamp_min, clamp_max, out_dtype,
    )
    assert_same(fast.softmax_lastaxis(*args), naive.softmax_lastaxis(*args))


@settings(deadline=None, max_examples=100)
@given(data=st.data())
def test_pad_constant_matches_twin(data):
    dtype = data.draw(dtypes, label="dtype")
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=4), label="shape")
    x = data.draw(codes(dtype, shape), label="x")
    pads_before = data.draw(st.lists(st.integers(0, 3), min_size=len(shape), max_size=len(shape)))
    pads_after = data.draw(st.lists(st.integers(0, 3), min_size=len(shape), max_size=len(shape)))
    value = data.draw(zero_points(dtype), label="value")
    assert_same(
        fast.pad_constant(x, pads_before, pads_after, value), naive.pad_constant(x, pads_before, pads_after, value)
    )


@settings(deadline=None, max_examples=60)
@given(data=st.data())
def test_lookup_table_matches_twin(data):
    dtype = data.draw(dtypes, label="dtype")
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=5), label="shape")
    x = data.draw(codes(dtype, shape), label="x")
    table_dtype = data.draw(st.sampled_from(DTYPES + (np.int32,)), label="table_dtype")
    table = data.draw(codes(table_dtype, (2 ** (8 * x.itemsize),)), label="table")
    x_min = int(np.iinfo(dtype).min)
    assert_same(fast.lookup_table(x, table, x_min), naive.lookup_table(x, table, x_min))


# --------------------------------------------------------------------------
# The float rounding primitive against exact rational arithmetic
# --------------------------------------------------------------------------


def _exact_round_saturated(value, ties_to_even):
    if math.isinf(value):
        return INT32_MAX if value > 0 else INT32_MIN
    exact = Fraction(value)
    if ties_to_even:
        rounded = round(exact)
    else:
        rounded = math.floor(abs(exact) + Fraction(1, 2)) * (1 if exact >= 0 else -1)
    return min(max(rounded, INT32_MIN), INT32_MAX)


ROUNDING_EDGES = [
    0.0, 0.5, 1.5, 2.5, 0.49999999999999994, 1.4999999999999998, 2.0**31 - 0.5, 2.0**31 - 1.5, 2.0**31,
    2.0**52 + 1, 2.0**60, 1e300,
]


@pytest.mark.parametrize("magnitude", ROUNDING_EDGES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("rounding", [FLOAT32_RINT, FLOAT64_HALF_AWAY])
def test_saturating_round_float_edges(magnitude, sign, rounding):
    value = sign * magnitude
    expected = _exact_round_saturated(value, ties_to_even=rounding == FLOAT32_RINT)
    assert fixedpoint.saturating_round_float(value, rounding) == expected


@settings(deadline=None, max_examples=300)
@given(
    value=st.floats(allow_nan=False) | st.floats(-(2.0**33), 2.0**33) | st.floats(-4.0, 4.0),
    rounding=st.sampled_from([FLOAT32_RINT, FLOAT64_HALF_AWAY]),
)
def test_saturating_round_float_is_exact(value, rounding):
    expected = _exact_round_saturated(value, ties_to_even=rounding == FLOAT32_RINT)
    assert fixedpoint.saturating_round_float(value, rounding) == expected
    with np.errstate(over="ignore"):
        value32 = np.float32(value)
    expected32 = _exact_round_saturated(float(value32), ties_to_even=rounding == FLOAT32_RINT)
    assert fixedpoint.saturating_round_float(value32, rounding) == expected32


@settings(deadline=None, max_examples=200)
@given(values=st.lists(st.floats(-(2.0**33), 2.0**33) | st.floats(-4.0, 4.0), max_size=20),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_round_half_away_arrays_are_exact(values, dtype):
    edges = ROUNDING_EDGES[:-1] + [float(np.nextafter(np.float32(0.5), np.float32(0))), 2.0**24 - 0.5]
    x = np.array(values + edges + [-v for v in edges], dtype)
    rounded = fixedpoint.round_half_away(x)
    assert rounded.dtype == dtype
    for v, r in zip(x, rounded):
        exact = Fraction(float(v))
        assert Fraction(float(r)) == math.floor(abs(exact) + Fraction(1, 2)) * (1 if exact >= 0 else -1), v


# --------------------------------------------------------------------------
# Hand-checked goldens (each runs on the fast kernel and on its twin)
# --------------------------------------------------------------------------


@IMPLEMENTATIONS
@pytest.mark.parametrize(
    "rounding, expected",
    [
        # s_a = 0.5, s_b = 0.25, s_out = 1, zero points 0, so the real sum is a/2 + b/4:
        #   (3, 5) -> 2.75 -> 3;  (1, 0) -> 0.5;  (-1, 0) -> -0.5;  (127, -128) -> 63.5 - 32 = 31.5 -> 32.
        # DOUBLE rounds the 0.5 ties away from zero (1, -1); SINGLE rounds half up (1, 0).
        # Then out_zero_point -1 and clamp_max 30: 32 - 1 = 31 clamps to 30 (one saturation).
        (DOUBLE, [2, 0, -2, 30]),
        (SINGLE, [2, 0, -1, 30]),
    ],
)
def test_add_golden_tflite_scheme(impl, rounding, expected):
    # TFLite's parameters: left_shift 20, twice_max = 2 * max(0.5, 0.25) = 1;
    #   a: 0.5 / 1  = 0.5  = 2**30 * 2**(0 - 31)   -> (2**30, 0)
    #   b: 0.25 / 1 = 0.25 = 2**30 * 2**(-1 - 31)  -> (2**30, -1)
    #   out: 1 / (2**20 * 1) = 2**-20              -> (2**30, -19)
    # Worked for (3, 5) under DOUBLE: a1 = 3 * 2**20 / 2 = 3 * 2**19, b1 = 5 * 2**20 / 4 = 5 * 2**18,
    # sum 11 * 2**18, out = 11 * 2**18 / 2**20 = 2.75 -> 3, minus 1 -> 2.
    a = np.array([3, 1, -1, 127], np.int8)
    b = np.array([5, 0, 0, -128], np.int8)
    out, count = impl.add(
        a, 0, 2**30, 0, 0.0, b, 0, 2**30, -1, 0.0, 20, 2**30, -19, 0.0, rounding, 31, -1, -128, 30, np.int8
    )
    np.testing.assert_array_equal(out, np.array(expected, np.int8), strict=True)
    assert count == 1


@IMPLEMENTATIONS
@pytest.mark.parametrize("rounding", INTEGER_ROUNDINGS)
def test_add_golden_left_shift_saturates(impl, rounding):
    # int16 codes shifted left by 22: 1000 * 2**22 = 4194304000 saturates to INT32_MAX, -1000 to INT32_MIN.
    # a: (2**30, 0) = 0.5, b likewise; out: (2**30, -21) = 2**-22.  Both modes (no ties but the last):
    #   INT32_MAX * 0.5 = 1073741823.5 -> 1073741824 (half up); * 2**-22 = 256 (500 without saturation).
    #   INT32_MIN * 0.5 = -2**30; * 2**-22 = -256.
    #   3 * 2**22 * 0.5 = 3 * 2**21; * 2**-22 = 1.5 -> 2 (DOUBLE: away from zero; SINGLE: half up).
    # The two saturated elements are counted, though no clamp applies.
    a = np.array([1000, -1000, 3], np.int16)
    b = np.zeros(3, np.int16)
    out, count = impl.add(
        a, 0, 2**30, 0, 0.0, b, 0, 2**30, 0, 0.0, 22, 2**30, -21, 0.0, rounding, 31, 0, -32768, 32767, np.int16
    )
    np.testing.assert_array_equal(out, np.array([256, -256, 2], np.int16), strict=True)
    assert count == 2


@IMPLEMENTATIONS
@pytest.mark.parametrize("rounding", INTEGER_ROUNDINGS)
def test_add_golden_sum_saturates(impl, rounding):
    # int8 codes shifted left by 24 (-128 * 2**24 is INT32_MIN exactly: no saturation there), each input
    # rescaled by (2**31 - 1, 0) = 1 - 2**-31, the output by (2**30, -24) = 2**-25:
    #   127: 127 * 2**24 = 2130706432, term 2130706432 - 0.99 -> 2130706431; the sum 4261412862 saturates
    #        to INT32_MAX; * 2**-25 = 63.99999997 -> 64 (127 without saturation).
    #   -128: term -(2**31 - 1) exactly; the sum saturates to INT32_MIN; * 2**-25 = -64.
    #   1: term 2**24 - 0.0078 -> 2**24; the sum 2**25; * 2**-25 = 1.
    a = np.array([127, -128, 1], np.int8)
    out, count = impl.add(
        a, 0, 2**31 - 1, 0, 0.0, a.copy(), 0, 2**31 - 1, 0, 0.0, 24, 2**30, -24, 0.0, rounding, 31, 0, -128, 127,
        np.int8,
    )
    np.testing.assert_array_equal(out, np.array([64, -64, 1], np.int8), strict=True)
    assert count == 2


@IMPLEMENTATIONS
def test_sub_golden(impl):
    # Same scales as above; a/2 - b/4 with a zero point 1 on a and -2 on b:
    #   a = 4, b = 0: (4 - 1)/2 - (0 + 2)/4 = 1.5 - 0.5 = 1.0 -> 1
    #   a = 2, b = 0: 0.5 - 0.5 = 0 -> 0
    #   a = 1, b = 0: 0 - 0.5 = -0.5 -> -1 (DOUBLE: ties away from zero)
    a = np.array([4, 2, 1], np.int8)
    b = np.array([0, 0, 0], np.int8)
    out, count = impl.add(
        a, 1, 2**30, 0, 0.0, b, -2, 2**30, -1, 0.0, 20, 2**30, -19, 0.0, DOUBLE, 31, 0, -128, 127, np.int8,
        subtract=True,
    )
    np.testing.assert_array_equal(out, np.array([1, 0, -1], np.int8), strict=True)
    assert count == 0


@IMPLEMENTATIONS
@pytest.mark.parametrize(
    "rounding, expected",
    [
        # a_scale 0.5, b_scale 0.25, za = 1, zb = -2:
        #   (4, 0):  3 * 0.5 + 2 * 0.25 = 2.0 -> 2
        #   (1, -4): 0 + (-2) * 0.25 = -0.5 -> 0 (ties to even) / -1 (ties away)
        #   (2, -2): 1 * 0.5 + 0 = 0.5 -> 0 (even) / 1 (away)
        #   (4, 2):  1.5 + 1.0 = 2.5 -> 2 (even) / 3 (away)
        (FLOAT32_RINT, [2, 0, 0, 2]),
        (FLOAT64_HALF_AWAY, [2, -1, 1, 3]),
    ],
)
def test_add_golden_float_modes(impl, rounding, expected):
    a = np.array([4, 1, 2, 4], np.int8)
    b = np.array([0, -4, -2, 2], np.int8)
    out, count = impl.add(a, 1, 0, 0, 0.5, b, -2, 0, 0, 0.25, 0, 0, 0, 0.0, rounding, 31, 0, -128, 127, np.int8)
    np.testing.assert_array_equal(out, np.array(expected, np.int8), strict=True)
    assert count == 0


@IMPLEMENTATIONS
@pytest.mark.parametrize("rounding, expected", [(FLOAT32_RINT, [0, 0]), (FLOAT64_HALF_AWAY, [1, 1])])
def test_add_golden_float_width(impl, rounding, expected):
    # a_scale = b_scale = 0.1, zero points 0; pairs (3, 2) and (5, 0).
    # float32: 0.1f = 0.100000001490116; 3 * 0.1f rounds to 0.30000001192, 2 * 0.1f = 0.20000000298; their
    #   float32 sum rounds to exactly 0.5 -> rint 0 (a float64 sum of the same terms, 0.5000000149, gives 1).
    #   5 * 0.1f = 0.50000000745 rounds to float32 0.5 -> 0 (a float64 product would give 1).
    # float64: 3 * 0.1 + 2 * 0.1 = 0.30000000000000004 + 0.2 = 0.5 exactly -> 1 (away); 5 * 0.1 = 0.5 -> 1.
    a = np.array([3, 5], np.uint8)
    b = np.array([2, 0], np.uint8)
    out, count = impl.add(a, 0, 0, 0, 0.1, b, 0, 0, 0, 0.1, 0, 0, 0, 0.0, rounding, 31, 0, 0, 255, np.uint8)
    np.testing.assert_array_equal(out, np.array(expected, np.uint8), strict=True)
    assert count == 0


@IMPLEMENTATIONS
@pytest.mark.parametrize(
    "rounding, expected",
    [
        # za = 1, zb = -1: acc = (3-1)(5+1) = 12, (-4-1)(5+1) = -30, (6-1)(0+1) = 5; real multiplier 0.25.
        # DOUBLE: 12 -> 6 -> 3; -30 -> -15 -> -7.5 -> -8; 5 -> 2.5 rounds up to 3 -> 1.5 -> 2 (double rounding).
        (DOUBLE, [3, -8, 2]),
        # SINGLE: 12/4 = 3; -30/4 = -7.5 -> -7 (half up); 5/4 = 1.25 -> 1.
        (SINGLE, [3, -7, 1]),
        # Float: 3; -7.5 -> -8 (even and away agree); 1.25 -> 1.
        (FLOAT32_RINT, [3, -8, 1]),
        (FLOAT64_HALF_AWAY, [3, -8, 1]),
    ],
)
def test_mul_golden(impl, rounding, expected):
    # 0.25 = 2**30 * 2**(-1 - 31) -> (2**30, -1).
    a = np.array([3, -4, 6], np.int8)
    b = np.array([5, 5, 0], np.int8)
    out, count = impl.mul(a, 1, b, -1, 2**30, -1, 0.25, rounding, 31, 0, -128, 127, np.int8)
    np.testing.assert_array_equal(out, np.array(expected, np.int8), strict=True)
    assert count == 0


@IMPLEMENTATIONS
@pytest.mark.parametrize("rounding", ALL_ROUNDINGS)
def test_mul_golden_16_bit_product_is_not_clipped_to_int32(impl, rounding):
    # 65535 * 65535 = 4294836225 > 2**31 - 1 (issue 15: it used to saturate to int32 silently, giving
    # 32768).  Times 2**-16 (2**30, -15): 4294836225 / 2**16 = 65533.99998 -> 65534 under every mode
    # (DOUBLE: 4294836226 / 2 = 2147418113, / 2**15 = 65533.99997 -> 65534; float32(4294836225) is
    # 4294836224 = 65534 * 2**16).  2 * 2 * 2**-16 -> 0.  Nothing is clamped.
    a = np.array([65535, 2], np.uint16)
    out, count = impl.mul(a, 0, a, 0, 2**30, -15, 2.0**-16, rounding, 31, 0, 0, 65535, np.uint16)
    np.testing.assert_array_equal(out, np.array([65534, 0], np.uint16), strict=True)
    assert count == 0


@IMPLEMENTATIONS
@pytest.mark.parametrize("rounding", ALL_ROUNDINGS)
def test_mul_golden_16_bit_product_beyond_the_output_is_counted(impl, rounding):
    # int16 codes with zero point -32768 (uint16-like): (32767 + 32768)**2 = 4294836225, times 2**-15
    # is 131068 > 32767: clamped and counted; (-32768 + 32768) * ... = 0 is not.
    a = np.array([32767, -32768], np.int16)
    out, count = impl.mul(a, -32768, a, -32768, 2**30, -14, 2.0**-15, rounding, 31, 0, -32768, 32767, np.int16)
    np.testing.assert_array_equal(out, np.array([32767, 0], np.int16), strict=True)
    assert count == 1


@IMPLEMENTATIONS
def test_max_pool_golden_padding_is_never_selected(impl):
    # x = [[-5, -7], [-3, -9]], 2x2 kernel, stride 1, one pad row on top and one pad column on the left.
    # out[0,0] sees only x[0,0] = -5 (a zero-valued pad would win instead); out[0,1] = max(-5, -7) = -5;
    # out[1,0] = max(-5, -3) = -3; out[1,1] = max(all) = -3.
    x = np.array([[-5, -7], [-3, -9]], np.int8).reshape(1, 2, 2, 1)
    out = impl.max_pool_nhwc(x, (2, 2), (1, 1), (1, 1), (1, 1, 0, 0))
    np.testing.assert_array_equal(out, np.array([[-5, -5], [-3, -3]], np.int8).reshape(1, 2, 2, 1), strict=True)


@IMPLEMENTATIONS
def test_max_pool_golden_dilation_and_empty_window(impl):
    # Row [1, 9, 2, 8, 3], kernel width 2 with dilation 2: windows {0,2}, {1,3}, {2,4} -> 2, 9, 3.
    x = np.array([1, 9, 2, 8, 3], np.uint8).reshape(1, 1, 5, 1)
    out = impl.max_pool_nhwc(x, (1, 2), (1, 1), (1, 2), (0, 0, 0, 0))
    np.testing.assert_array_equal(out, np.array([2, 9, 3], np.uint8).reshape(1, 1, 3, 1), strict=True)
    # W = 1, kernel width 2 with dilation 3, pads left 1 and right 2: OW = (1 + 3 - 3 - 1) // 1 + 1 = 1,
    # the window reads columns -1 and 2, both padding: the dtype minimum.
    x = np.array([5], np.int8).reshape(1, 1, 1, 1)
    out = impl.max_pool_nhwc(x, (1, 2), (1, 1), (1, 3), (0, 1, 0, 2))
    np.testing.assert_array_equal(out, np.array([-128], np.int8).reshape(1, 1, 1, 1), strict=True)


@IMPLEMENTATIONS
def test_avg_pool_golden_ties_round_away_from_zero(impl):
    # [1, 2] -> 1.5 -> 2 and [-1, -2] -> -1.5 -> -2; [3, 4] -> 3.5 -> 4; [-3, -4] -> -4.
    x = np.array([[1, 2], [-1, -2], [3, 4], [-3, -4]], np.int8).reshape(1, 4, 2, 1)
    out = impl.avg_pool_nhwc(x, 0, (1, 2), (1, 1), (0, 0, 0, 0), False)
    np.testing.assert_array_equal(out, np.array([2, -2, 4, -4], np.int8).reshape(1, 4, 1, 1), strict=True)


@IMPLEMENTATIONS
@pytest.mark.parametrize(
    "include, expected",
    [
        # A 1x1 input [3] with zero point -5, 2x2 kernel, pads bottom 1 and right 1: one valid position,
        # three padded.  Included: (3 + 3 * -5) / 4 = -12 / 4 = -3.  Excluded: 3 / 1 = 3.
        (True, -3),
        (False, 3),
    ],
)
def test_avg_pool_golden_count_include_pad(impl, include, expected):
    x = np.array([3], np.int8).reshape(1, 1, 1, 1)
    out = impl.avg_pool_nhwc(x, -5, (2, 2), (1, 1), (0, 0, 1, 1), include)
    np.testing.assert_array_equal(out, np.array([expected], np.int8).reshape(1, 1, 1, 1), strict=True)


@IMPLEMENTATIONS
def test_avg_pool_golden_padded_tie(impl):
    # [4] then one pad column counted as zero point -1: (4 - 1) / 2 = 1.5 -> 2.
    x = np.array([4], np.int8).reshape(1, 1, 1, 1)
    out = impl.avg_pool_nhwc(x, -1, (1, 2), (1, 1), (0, 0, 0, 1), True)
    np.testing.assert_array_equal(out, np.array([2], np.int8).reshape(1, 1, 1, 1), strict=True)


@IMPLEMENTATIONS
def test_mean_golden(impl):
    # Column [1, 2, 3, 5] with zero point -1: sum(2, 3, 4, 6) = 15; 1/4 = (2**30, -1):
    # DOUBLE 15 -> 7.5 rounds up to 8 -> 8 / 2 = 4; plus out zero point 2 -> 6.
    # Second column [0, 0, 0, 1]: sum(1, 1, 1, 2) = 5 -> 2.5 -> 3 -> 1.5 -> 2; plus 2 -> 4.
    x = np.array([[1, 0], [2, 0], [3, 0], [5, 1]], np.int8).reshape(1, 4, 2)
    out, count = impl.mean_reduce(x, -1, 2**30, -1, 0.0, DOUBLE, 31, 2, -128, 127, np.int8)
    np.testing.assert_array_equal(out, np.array([[6, 4]], np.int8), strict=True)
    assert count == 0


@IMPLEMENTATIONS
def test_mean_golden_sum_saturates_to_int32(impl):
    # 40000 codes of 65535: the sum 2621400000 > 2**31 - 1 saturates; times 2**-16 (2**30, -15) under SINGLE:
    # (2**31 - 1) / 2**16 = 32767.99998 -> 32768 (unsaturated: 2621400000 / 2**16 = 39999.39 -> 39999).
    # The second column, 40000 codes of 1, sums to 40000 -> 0.61 -> 1, plus out zero point 3 -> 4.
    x = np.zeros((1, 40000, 2), np.uint16)
    x[..., 0] = 65535
    x[..., 1] = 1
    out, count = impl.mean_reduce(x, 0, 2**30, -15, 0.0, SINGLE, 31, 3, 0, 65535, np.uint16)
    np.testing.assert_array_equal(out, np.array([[32771, 4]], np.uint16), strict=True)
    assert count == 1  # the saturated sum is counted although its output lies inside the clamp


@IMPLEMENTATIONS
def test_pad_constant_golden(impl):
    # [[1, 2]] with one row before and two columns after, filled with 7.
    x = np.array([[1, 2]], np.int16)
    out = impl.pad_constant(x, (1, 0), (0, 2), 7)
    np.testing.assert_array_equal(out, np.array([[7, 7, 7, 7], [1, 2, 7, 7]], np.int16), strict=True)


@IMPLEMENTATIONS
def test_lookup_table_golden(impl):
    # table[i] = 3 * i - 100 over 256 int8 codes, x_min = -128:
    # -128 -> table[0] = -100; -1 -> table[127] = 281; 0 -> table[128] = 284; 127 -> table[255] = 665.
    table = (3 * np.arange(256) - 100).astype(np.int16)
    x = np.array([[-128, -1], [0, 127]], np.int8)
    out = impl.lookup_table(x, table, -128)
    np.testing.assert_array_equal(out, np.array([[-100, 281], [284, 665]], np.int16), strict=True)


def _halving_exp_table():
    # exp(-beta * s_x * d) = 2**-d: entries 2**30 >> d (exact), 0 from d = 31 on.
    return np.array([2**30 // 2**d for d in range(256)], np.int64)


@IMPLEMENTATIONS
@pytest.mark.parametrize("rounding", INTEGER_ROUNDINGS)
def test_softmax_golden(impl, rounding):
    # Row [5, 4]: d = [0, 1], e = [2**30, 2**29], total 3 * 2**29.
    #   p0 = round(2**53 / (3 * 2**29)) = round(2**24 / 3) = round(5592405.33) = 5592405
    #   p1 = round(2**52 / (3 * 2**29)) = round(2**23 / 3) = round(2796202.67) = 2796203
    # Output uint8 with s_out = 1/256: real multiplier 2**-23 * 256 = 2**-15 -> (2**30, -14).
    #   5592405 / 2**15 = 170.67 -> 171;  2796203 / 2**15 = 85.33 -> 85  (both modes).
    # Row [7, 7]: p = 2**22 each -> 2**22 / 2**15 = 128.
    # Row [9, 0]: d = [0, 9], e = [2**30, 2**21], total 2**30 + 2**21 = 2**21 * 513;
    #   p0 = round(2**53 / (2**21 * 513)) = round(2**32 / 513) = round(8372255.94) = 8372256 -> 255.5 -> 256,
    #   clamped to 255 (a saturation); p1 = round(2**44 / (2**21 * 513)) = round(16351.8) = 16352 -> 0.499 -> 0.
    x = np.array([[5, 4], [7, 7], [9, 0]], np.int8)
    out, count = impl.softmax_lastaxis(x, _halving_exp_table(), 2**30, -14, rounding, 31, 0, 0, 255, np.uint8)
    np.testing.assert_array_equal(out, np.array([[171, 85], [128, 128], [255, 0]], np.uint8), strict=True)
    assert count == 1


@IMPLEMENTATIONS
def test_softmax_golden_single_element_row(impl):
    # One element: p = 2**23 exactly -> 2**23 / 2**15 = 256; out zero point -128 -> 128, clamped to 127.
    x = np.array([[-3]], np.int8)
    out, count = impl.softmax_lastaxis(x, _halving_exp_table(), 2**30, -14, DOUBLE, 31, -128, -128, 127, np.int8)
    np.testing.assert_array_equal(out, np.array([[127]], np.int8), strict=True)
    assert count == 1
