"""MAC kernels: fast vs naive twin (property), direct int64 references, hand goldens."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intsim import fixedpoint
from intsim.kernels import mac
from intsim.kernels.naive import mac as naive_mac
from intsim.codes import OVERFLOW_ERROR, OVERFLOW_SATURATE, OVERFLOW_WRAP

X_DTYPES = (np.int8, np.uint8, np.int16, np.uint16)
W_DTYPES = (np.int8, np.uint8, np.int16)
EIGHT_BIT = (np.int8, np.uint8)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
SETTINGS = settings(max_examples=60, deadline=None)


def assert_same(fast, slow):
    """Equal arrays (dtype and shape included) and equal Python-int counts."""
    np.testing.assert_array_equal(fast[0], slow[0], strict=True)
    assert fast[1:] == slow[1:]
    assert all(type(count) is int for count in fast[1:])


# --------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------


def dtype_range(dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def zero_point(draw, dtype):
    lo, hi = dtype_range(dtype)
    return draw(st.one_of(st.sampled_from([lo, hi, 0]), st.integers(lo, hi)))


def codes(rng, dtype, shape, mode):
    """Random codes of ``dtype``: the full range, only the two ends, or values near 0."""
    lo, hi = dtype_range(dtype)
    if mode == "ends":
        return rng.choice(np.array([lo, hi], dtype=dtype), size=shape)
    if mode == "small":
        lo, hi = max(lo, -3), min(hi, 3)
    return rng.integers(lo, hi, size=shape, dtype=dtype, endpoint=True)


def weight_zero_points(draw, rng, dtype, count):
    mode = draw(st.sampled_from(["symmetric", "ends", "full"]))
    if mode == "symmetric":
        return np.zeros(count, np.int64)
    return codes(rng, dtype, count, mode).astype(np.int64)


def biases(draw, rng, count, small):
    if small or draw(st.booleans()):
        return rng.integers(-1000, 1000, size=count, dtype=np.int32, endpoint=True)
    return rng.integers(INT32_MIN, INT32_MAX, size=count, dtype=np.int32, endpoint=True)


@st.composite
def policies(draw, acc_bits=st.one_of(st.just(32), st.integers(8, 32))):
    return dict(
        acc_bits=draw(acc_bits),
        overflow=draw(st.sampled_from([OVERFLOW_SATURATE, OVERFLOW_WRAP, OVERFLOW_ERROR])),
        pairwise_int16=draw(st.booleans()),
    )


NO_OVERFLOW = dict(acc_bits=32, overflow=OVERFLOW_ERROR, pairwise_int16=False)


@st.composite
def conv_cases(draw, x_dtypes=X_DTYPES, w_dtypes=W_DTYPES, small_bias=False, kinds=("dense", "grouped", "depthwise"),
               dense_cin_g=st.integers(1, 4), max_batch=3, max_hw=5, unit_geometry=False):
    x_dtype, w_dtype = draw(st.sampled_from(x_dtypes)), draw(st.sampled_from(w_dtypes))
    kind = draw(st.sampled_from(kinds))
    if kind == "dense":
        groups, cin_g, cout_g = 1, draw(dense_cin_g), draw(st.integers(1, 4))
    elif kind == "grouped":
        groups, cin_g, cout_g = draw(st.integers(2, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    else:  # channel multiplier 1..3
        groups, cin_g, cout_g = draw(st.integers(1, 4)), 1, draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if unit_geometry:
        dilations, strides, pads = (1, 1), (1, 1), (0, 0, 0, 0)
    else:
        dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    # smallest input that leaves one output position (at most 5)
    min_h = max(1, dilations[0] * (kernel[0] - 1) + 1 - pads[0] - pads[2])
    min_w = max(1, dilations[1] * (kernel[1] - 1) + 1 - pads[1] - pads[3])
    shape_x = (
        draw(st.integers(1, max_batch)),
        draw(st.integers(min_h, max(min_h, max_hw))),
        draw(st.integers(min_w, max(min_w, max_hw))),
        groups * cin_g,
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cout = groups * cout_g
    return dict(
        x=codes(rng, x_dtype, shape_x, draw(st.sampled_from(["full", "ends", "small"]))),
        x_zero_point=zero_point(draw, x_dtype),
        w=codes(rng, w_dtype, (cout, *kernel, cin_g), draw(st.sampled_from(["full", "ends", "small"]))),
        w_zero_point=weight_zero_points(draw, rng, w_dtype, cout),
        bias=biases(draw, rng, cout, small_bias),
        strides=strides,
        dilations=dilations,
        pads=pads,
        groups=groups,
    )


@st.composite
def fc_cases(draw, x_dtypes=X_DTYPES, w_dtypes=W_DTYPES, small_bias=False, depth=st.integers(1, 40), max_batch=3,
             max_out=5):
    x_dtype, w_dtype = draw(st.sampled_from(x_dtypes)), draw(st.sampled_from(w_dtypes))
    n_batch, k, n_out = draw(st.integers(1, max_batch)), draw(depth), draw(st.integers(1, max_out))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return dict(
        x=codes(rng, x_dtype, (n_batch, k), draw(st.sampled_from(["full", "ends", "small"]))),
        x_zero_point=zero_point(draw, x_dtype),
        w=codes(rng, w_dtype, (n_out, k), draw(st.sampled_from(["full", "ends", "small"]))),
        w_zero_point=weight_zero_points(draw, rng, w_dtype, n_out),
        bias=biases(draw, rng, n_out, small_bias),
    )


@st.composite
def matmul_cases(draw, dtypes=X_DTYPES, depth=st.integers(1, 40), max_batch=3, max_rows=4):
    a_dtype, b_dtype = draw(st.sampled_from(dtypes)), draw(st.sampled_from(dtypes))
    n_batch, rows, k = draw(st.integers(1, max_batch)), draw(st.integers(1, max_rows)), draw(depth)
    cols = draw(st.integers(1, max_rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return dict(
        a=codes(rng, a_dtype, (n_batch, rows, k), draw(st.sampled_from(["full", "ends", "small"]))),
        a_zero_point=zero_point(draw, a_dtype),
        b=codes(rng, b_dtype, (n_batch, k, cols), draw(st.sampled_from(["full", "ends", "small"]))),
        b_zero_point=zero_point(draw, b_dtype),
    )


LARGE_DEPTH = st.integers(2000, 6000)
NARROW = st.integers(8, 24)


# --------------------------------------------------------------------------
# direct int64 references: bias + sum (x - z_x)(w - z_w), no hardware order
# --------------------------------------------------------------------------


def direct_conv2d(x, x_zero_point, w, w_zero_point, bias, strides, dilations, pads, groups):
    top, left, bottom, right = pads
    centred = np.pad(x.astype(np.int64) - x_zero_point, ((0, 0), (top, bottom), (left, right), (0, 0)))
    weights = w.astype(np.int64) - w_zero_point.reshape(-1, 1, 1, 1)
    cout, kernel_h, kernel_w, cin_g = w.shape
    out_h = (centred.shape[1] - dilations[0] * (kernel_h - 1) - 1) // strides[0] + 1
    out_w = (centred.shape[2] - dilations[1] * (kernel_w - 1) - 1) // strides[1] + 1
    out = np.broadcast_to(bias.astype(np.int64), (x.shape[0], out_h, out_w, cout)).copy()
    cout_g = cout // groups
    for kh in range(kernel_h):
        for kw in range(kernel_w):
            rows = slice(kh * dilations[0], kh * dilations[0] + strides[0] * (out_h - 1) + 1, strides[0])
            cols = slice(kw * dilations[1], kw * dilations[1] + strides[1] * (out_w - 1) + 1, strides[1])
            taps = centred[:, rows, cols]
            for g in range(groups):
                outs, ins = slice(g * cout_g, (g + 1) * cout_g), slice(g * cin_g, (g + 1) * cin_g)
                out[..., outs] += taps[..., ins] @ weights[outs, kh, kw, :].T
    return out


def direct_fully_connected(x, x_zero_point, w, w_zero_point, bias):
    return bias + (x.astype(np.int64) - x_zero_point) @ (w.astype(np.int64) - w_zero_point[:, None]).T


def direct_matmul(a, a_zero_point, b, b_zero_point):
    return (a.astype(np.int64) - a_zero_point) @ (b.astype(np.int64) - b_zero_point)


# --------------------------------------------------------------------------
# fast == naive twin
# --------------------------------------------------------------------------


@SETTINGS
@given(case=conv_cases(), policy=policies())
def test_conv2d_matches_naive(case, policy):
    assert_same(mac.conv2d_nhwc_acc(**case, **policy), naive_mac.conv2d_nhwc_acc(**case, **policy))


@SETTINGS
@given(case=fc_cases(), policy=policies())
def test_fully_connected_matches_naive(case, policy):
    assert_same(mac.fully_connected_acc(**case, **policy), naive_mac.fully_connected_acc(**case, **policy))


@SETTINGS
@given(case=matmul_cases(), policy=policies())
def test_matmul_matches_naive(case, policy):
    assert_same(mac.matmul_acc(**case, **policy), naive_mac.matmul_acc(**case, **policy))


@settings(max_examples=15, deadline=None)
@given(case=fc_cases(depth=LARGE_DEPTH, max_batch=2, max_out=3), policy=policies(acc_bits=NARROW))
def test_fully_connected_large_reduction_matches_naive(case, policy):
    assert_same(mac.fully_connected_acc(**case, **policy), naive_mac.fully_connected_acc(**case, **policy))


@settings(max_examples=15, deadline=None)
@given(case=matmul_cases(depth=LARGE_DEPTH, max_batch=1, max_rows=2), policy=policies(acc_bits=NARROW))
def test_matmul_large_reduction_matches_naive(case, policy):
    assert_same(mac.matmul_acc(**case, **policy), naive_mac.matmul_acc(**case, **policy))


@settings(max_examples=10, deadline=None)
@given(
    case=conv_cases(kinds=("dense",), dense_cin_g=st.integers(700, 1500), max_batch=1, max_hw=3, unit_geometry=True),
    policy=policies(acc_bits=NARROW),
)
def test_conv2d_large_reduction_matches_naive(case, policy):
    # K = KH * KW * Cin_g from 700 to 13500; one small image keeps the naive twin quick.
    assert_same(mac.conv2d_nhwc_acc(**case, **policy), naive_mac.conv2d_nhwc_acc(**case, **policy))


# --------------------------------------------------------------------------
# without overflow: equal to the direct sum, and checked core == unchecked core
# --------------------------------------------------------------------------


def both_paths(kernel, case):
    """``kernel`` on ``case`` through the unchecked and the checked core; asserts they agree."""
    with mock.patch.object(mac, "fits_accumulator", return_value=True):
        unchecked = kernel(**case, **NO_OVERFLOW)
    with mock.patch.object(mac, "fits_accumulator", return_value=False):
        checked = kernel(**case, **NO_OVERFLOW)
    assert_same(checked, unchecked)
    assert unchecked[1:] == (0, 0)
    return unchecked[0]


# In all three: 8-bit codes, K <= 40 and |bias| <= 1000, so every partial sum
# (|c0| <= 1000 + 2 * 40 * 255 * 255 plus at most 40 products and corrections
# of 255 * 255 each) stays below 2**24: no step can overflow 32 bits.


@SETTINGS
@given(case=conv_cases(x_dtypes=EIGHT_BIT, w_dtypes=EIGHT_BIT, small_bias=True))
def test_conv2d_without_overflow_is_the_direct_sum(case):
    acc = both_paths(mac.conv2d_nhwc_acc, case)
    np.testing.assert_array_equal(acc, direct_conv2d(**case).astype(np.int32), strict=True)


@SETTINGS
@given(case=fc_cases(x_dtypes=EIGHT_BIT, w_dtypes=EIGHT_BIT, small_bias=True))
def test_fully_connected_without_overflow_is_the_direct_sum(case):
    acc = both_paths(mac.fully_connected_acc, case)
    np.testing.assert_array_equal(acc, direct_fully_connected(**case).astype(np.int32), strict=True)


@SETTINGS
@given(case=matmul_cases(dtypes=EIGHT_BIT))
def test_matmul_without_overflow_is_the_direct_sum(case):
    acc = both_paths(mac.matmul_acc, case)
    np.testing.assert_array_equal(acc, direct_matmul(**case).astype(np.int32), strict=True)


CONV_PATHS = ("_conv2d_unchecked", "_conv2d_checked")
FC_PATHS = ("_fully_connected_unchecked_core", "checked_conv")
MATMUL_PATHS = ("_matmul_unchecked_core", "checked_conv")


def run_conv(depth, acc_bits, pairwise):
    x = np.full((1, 1, 1, depth), 127, np.int8)
    w = np.full((1, 1, 1, depth), 127, np.int8)
    mac.conv2d_nhwc_acc(
        x, 0, w, np.zeros(1, np.int64), np.zeros(1, np.int32), (1, 1), (1, 1), (0, 0, 0, 0), 1,
        acc_bits, OVERFLOW_WRAP, pairwise,
    )


def run_fc(depth, acc_bits, pairwise):
    x, w = np.full((1, depth), 127, np.int8), np.full((1, depth), 127, np.int8)
    mac.fully_connected_acc(x, 0, w, np.zeros(1, np.int64), np.zeros(1, np.int32), acc_bits, OVERFLOW_WRAP, pairwise)


def run_matmul(depth, acc_bits, pairwise):
    a, b = np.full((1, 1, depth), 127, np.int8), np.full((1, depth, 1), 127, np.int8)
    mac.matmul_acc(a, 0, b, 0, acc_bits, OVERFLOW_WRAP, pairwise)


@pytest.mark.parametrize("run, paths", [(run_conv, CONV_PATHS), (run_fc, FC_PATHS), (run_matmul, MATMUL_PATHS)])
@pytest.mark.parametrize(
    "acc_bits, pairwise, taken",
    [
        (32, False, 0),  # 64 * 127 * 127 = 1032256 < 2**31: unchecked
        (20, False, 1),  # 1032256 > 2**19 - 1 = 524287: checked
        (32, True, 1),  # pairwise always walks the hardware order
    ],
)
def test_path_choice(run, paths, acc_bits, pairwise, taken):
    not_taken = paths[1 - taken]
    with mock.patch.object(mac, not_taken, side_effect=AssertionError(f"{not_taken} called")):
        run(64, acc_bits, pairwise)


# --------------------------------------------------------------------------
# hand-checked goldens
# --------------------------------------------------------------------------


def conv_1x3x3x1(x_zero_point, w_zero_point, strides, pads, **policy):
    # x = 1..9 row-major, w = [[1, 2], [3, 4]], bias 10
    x = np.arange(1, 10, dtype=np.uint8).reshape(1, 3, 3, 1)
    w = np.array([1, 2, 3, 4], np.int8).reshape(1, 2, 2, 1)
    return mac.conv2d_nhwc_acc(
        x, x_zero_point, w, np.array([w_zero_point], np.int64), np.array([10], np.int32), strides, (1, 1), pads, 1,
        **{**NO_OVERFLOW, **policy},
    )


@pytest.mark.parametrize("pairwise_int16", [False, True])
def test_conv2d_golden_2x2_kernel(pairwise_int16):
    # windows [[1,2],[4,5]], [[2,3],[5,6]], [[4,5],[7,8]], [[5,6],[8,9]] . [[1,2],[3,4]]:
    # 1+4+12+20 = 37, 2+6+15+24 = 47, 4+10+21+32 = 67, 5+12+24+36 = 77; plus bias 10.
    acc, overflow_count, pair_count = conv_1x3x3x1(0, 0, (1, 1), (0, 0, 0, 0), pairwise_int16=pairwise_int16)
    np.testing.assert_array_equal(acc[0, :, :, 0], np.array([[47, 57], [77, 87]], np.int32), strict=True)
    assert (overflow_count, pair_count) == (0, 0)


@pytest.mark.parametrize("pairwise_int16", [False, True])
def test_conv2d_golden_zero_points(pairwise_int16):
    # z_x = z_w = 1: x - 1 = [[0,1,2],[3,4,5],[6,7,8]], w - 1 = [[0,1],[2,3]].
    # 0+1+6+12 = 19, 0+2+8+15 = 25, 0+4+12+21 = 37, 0+5+14+24 = 43; plus 10.
    acc, _, _ = conv_1x3x3x1(1, 1, (1, 1), (0, 0, 0, 0), pairwise_int16=pairwise_int16)
    np.testing.assert_array_equal(acc[0, :, :, 0], np.array([[29, 35], [47, 53]], np.int32), strict=True)


@pytest.mark.parametrize("pairwise_int16", [False, True])
def test_conv2d_golden_padding_holds_zero_point(pairwise_int16):
    # pads top = left = 1, stride 2, z_x = z_w = 1; padded taps are z_x, so (x - z_x) = 0 there.
    # OH = (3 + 1 - 1 - 1) // 2 + 1 = 2.  Window origins (-1,-1), (-1,1), (1,-1), (1,1):
    #   (0,0): only x[0,0]-1 = 0 under w-1 = 3             -> 0
    #   (0,1): x[0,1]-1 = 1 * 2 + x[0,2]-1 = 2 * 3           -> 8
    #   (1,0): x[1,0]-1 = 3 * 1 + x[2,0]-1 = 6 * 3           -> 21
    #   (1,1): 4*0 + 5*1 + 7*2 + 8*3                         -> 43
    acc, _, _ = conv_1x3x3x1(1, 1, (2, 2), (1, 1, 0, 0), pairwise_int16=pairwise_int16)
    np.testing.assert_array_equal(acc[0, :, :, 0], np.array([[10, 18], [31, 53]], np.int32), strict=True)


def test_conv2d_golden_depthwise_multiplier_2():
    # x: one row of two pixels, channel 0 = [1, 2], channel 1 = [3, 4]; groups = 2, Cout = 4.
    # o0, o1 read channel 0 with taps [1, 1], [1, -1]: 1+2 = 3, 1-2 = -1.
    # o2, o3 read channel 1 with taps [2, 0], [0, 2]: 3*2 = 6, 4*2 = 8.
    x = np.array([[1, 3], [2, 4]], np.int8).reshape(1, 1, 2, 2)
    w = np.array([[1, 1], [1, -1], [2, 0], [0, 2]], np.int8).reshape(4, 1, 2, 1)
    zeros = np.zeros(4, np.int64)
    for kernel in (mac, naive_mac):
        acc, _, _ = kernel.conv2d_nhwc_acc(
            x, 0, w, zeros, zeros.astype(np.int32), (1, 1), (1, 1), (0, 0, 0, 0), 2, **NO_OVERFLOW
        )
        np.testing.assert_array_equal(acc, np.array([3, -1, 6, 8], np.int32).reshape(1, 1, 1, 4), strict=True)


def fc(x, w, bias=0, x_dtype=np.int8, w_dtype=np.int8, **policy):
    x, w = np.array([x], x_dtype), np.array([w], w_dtype)
    return mac.fully_connected_acc(
        x, 0, w, np.zeros(1, np.int64), np.array([bias], np.int32), **{**NO_OVERFLOW, **policy}
    )


@pytest.mark.parametrize(
    "overflow, expected",
    [
        # 0 -> 100 -> 200 clamps to 127 -> 127 - 100 = 27
        (OVERFLOW_SATURATE, 27),
        # 0 -> 100 -> 200 - 256 = -56 -> -156 + 256 = 100: wrapping is exact modulo 2**8
        (OVERFLOW_WRAP, 100),
        (OVERFLOW_ERROR, 100),
    ],
)
def test_fully_connected_golden_saturate_vs_wrap_at_8_bits(overflow, expected):
    acc, overflow_count, _ = fc([100, 100, -100], [1, 1, 1], acc_bits=8, overflow=overflow)
    assert (acc.tolist(), overflow_count) == ([[expected]], 1)


def test_fully_connected_golden_9_bits_hold_200():
    # 200 < 2**8 - 1 = 255, so nothing overflows
    acc, overflow_count, _ = fc([100, 100, -100], [1, 1, 1], acc_bits=8 + 1, overflow=OVERFLOW_SATURATE)
    assert (acc.tolist(), overflow_count) == ([[100]], 0)


@pytest.mark.parametrize("overflow, expected", [(OVERFLOW_SATURATE, 127), (OVERFLOW_WRAP, 200 - 256)])
def test_fully_connected_golden_bias_alone_overflows(overflow, expected):
    # c0 = bias = 200 leaves [-128, 127] before any product (x * w = 0)
    acc, overflow_count, _ = fc([0], [0], bias=200, acc_bits=8, overflow=overflow)
    assert (acc.tolist(), overflow_count) == ([[expected]], 1)


@pytest.mark.parametrize(
    "overflow, expected",
    [
        # 4096 * 255 * 127 = 132648960 > 2**23 - 1: the accumulator sticks at 8388607
        (OVERFLOW_SATURATE, 2**23 - 1),
        # 132648960 = 7 * 2**24 + 15208448, and 15208448 >= 2**23 wraps to 15208448 - 2**24
        (OVERFLOW_WRAP, 15208448 - 2**24),
    ],
)
def test_fully_connected_golden_large_reduction_at_24_bits(overflow, expected):
    acc, overflow_count, _ = fc([255] * 4096, [127] * 4096, x_dtype=np.uint8, acc_bits=24, overflow=overflow)
    assert (acc.tolist(), overflow_count) == ([[expected]], 1)


@pytest.mark.parametrize(
    "x, w, x_dtype, w_dtype, expected, pairs",
    [
        # 255*127 = 32385 twice: 64770 saturates to 32767
        ([255, 255], [127, 127], np.uint8, np.int8, 32767, 1),
        # then a trailing odd product 32385 on its own fits int16: 32767 + 32385
        ([255, 255, 255], [127, 127, 127], np.uint8, np.int8, 65152, 1),
        # two saturated pairs in one output count twice
        ([255] * 4, [127] * 4, np.uint8, np.int8, 2 * 32767, 2),
        # 255 * -128 = -32640 twice: -65280 saturates to -32768
        ([255, 255], [-128, -128], np.uint8, np.int8, -32768, 1),
        # a trailing product alone, 300 * 200 = 60000, saturates too
        ([300], [200], np.int16, np.int16, 32767, 1),
        # 100 + 200 + 300 = 600 pairs as (100 + 200) + 300: nothing saturates
        ([1, 1, 1], [100, 200, 300], np.int8, np.int16, 600, 0),
    ],
)
def test_fully_connected_golden_pairwise_int16(x, w, x_dtype, w_dtype, expected, pairs):
    acc, overflow_count, pair_count = fc(x, w, x_dtype=x_dtype, w_dtype=w_dtype, pairwise_int16=True)
    assert (acc.tolist(), overflow_count, pair_count) == ([[expected]], 0, pairs)
    unpaired, _, _ = fc(x, w, x_dtype=x_dtype, w_dtype=w_dtype, pairwise_int16=False)
    assert unpaired.tolist() == [[sum(a * b for a, b in zip(x, w))]]


def test_matmul_golden_zero_points():
    # a = [1, 2], b = [3, 4]^T, z_a = 1, z_b = 2:
    # c0 = 2*1*2 = 4; + 1*3 + 2*4 = 15; - z_b*(1+2) = 9; - z_a*(3+4) = 2 = (1-1)(3-2) + (2-1)(4-2)
    a = np.array([[[1, 2]]], np.int8)
    b = np.array([[[3], [4]]], np.int8)
    assert mac.matmul_acc(a, 1, b, 2, **NO_OVERFLOW)[0].tolist() == [[[2]]]


def test_matmul_golden_correction_order_under_saturation():
    # a = b = [[1]], z_a = 100, z_b = -100, 8-bit saturating accumulator:
    # c0 = 1*100*(-100) = -10000 -> -128 (overflow); + 1*1 -> -127;
    # - z_b*sum(a) = +100 -> -27; - z_a*sum(b) = -100 -> -127.
    # (The other order would give -127 - 100 -> -128, + 100 -> -28.)
    one = np.ones((1, 1, 1), np.int8)
    acc, overflow_count, _ = mac.matmul_acc(one, 100, one, -100, 8, OVERFLOW_SATURATE, False)
    assert (acc.tolist(), overflow_count) == ([[[-127]]], 1)


# --------------------------------------------------------------------------
# requantize
# --------------------------------------------------------------------------


def requantize_one(acc, rounding, multiplier=2**30, shift=-1, scale=0.25, out_zero_point=0, clamp=(-128, 127),
                   out_dtype=np.int8, acc_dtype=np.int32, acc_zero_point=0):
    acc = np.array(acc, acc_dtype).reshape(-1, 1)
    return mac.requantize(
        acc, acc_zero_point, np.array([multiplier], np.int64), np.array([shift], np.int64),
        np.array([scale], np.float64), rounding, 31, out_zero_point, clamp[0], clamp[1], out_dtype,
    )


@pytest.mark.parametrize(
    "rounding, expected",
    [
        # multiplier 2**30, shift -1: real 0.25.  acc 1, 2, -2, -6 -> 0.25, 0.5, -0.5, -1.5.
        # double: high mul x * 2**30 / 2**31 rounds half up (0.5 -> 1, 1, -1, -3), then /2 rounds
        #         half away from zero (1/2 -> 1, 1/2 -> 1, -1/2 -> -1, -3/2 -> -2): the 0.25 rounds twice.
        (fixedpoint.DOUBLE, [1, 1, -1, -2]),
        # single: one rounding of x / 4, half toward +infinity: 0, 1, 0, -1
        (fixedpoint.SINGLE, [0, 1, 0, -1]),
        # float32 rint of x * 0.25, ties to even: 0, 0, -0, -2
        (fixedpoint.FLOAT32_RINT, [0, 0, 0, -2]),
        # float64 x * 0.25 rounded half away from zero: 0, 1, -1, -2
        (fixedpoint.FLOAT64_HALF_AWAY, [0, 1, -1, -2]),
    ],
)
def test_requantize_golden_ties(rounding, expected):
    out, saturation_count = requantize_one([1, 2, -2, -6], rounding)
    np.testing.assert_array_equal(out, np.array(expected, np.int8).reshape(-1, 1), strict=True)
    assert saturation_count == 0


def test_requantize_golden_zero_point_and_clamp():
    # real 0.5 (multiplier 2**30, shift 0), out_zero_point 10, clamp [-128, 127]:
    # 100 -> 50 + 10 = 60;  -500 -> -250 + 10 = -240 clamps to -128;  0 -> 10;  300 -> 160 clamps to 127
    out, saturation_count = requantize_one([100, -500, 0, 300], fixedpoint.SINGLE, shift=0, out_zero_point=10)
    np.testing.assert_array_equal(out, np.array([60, -128, 10, 127], np.int8).reshape(-1, 1), strict=True)
    assert saturation_count == 2


def test_requantize_golden_acc_zero_point_saturates_to_int32():
    # (2**31 - 1) - (-10) saturates to 2**31 - 1 before rescaling by 0.5 (single rounding):
    # (2**31 - 1) / 2 = 2**30 - 0.5 rounds half up to 2**30.  Without the saturation: 2**30 + 5.
    out, _ = requantize_one([2**31 - 1], fixedpoint.SINGLE, shift=0, acc_dtype=np.int64, acc_zero_point=-10,
                            clamp=(INT32_MIN, INT32_MAX), out_dtype=np.int32)
    assert out.tolist() == [[2**30]]


def edge_accumulators(rng, size, dtype):
    """int32 edges: 0, the extremes and +-2**i + {-2..2}, clipped to ``dtype``; mixed with random values."""
    lo, hi = dtype_range(dtype)
    edges = [0, INT32_MIN, INT32_MAX] + [s * 2**i + d for i in range(32) for s in (1, -1) for d in range(-2, 3)]
    edges = np.array([e for e in edges if lo <= e <= hi], np.int64)
    uniform = rng.integers(max(lo, -(2**40)), min(hi, 2**40), size=size, endpoint=True)
    return np.where(rng.random(size) < 0.5, rng.choice(edges, size=size), uniform).astype(dtype)


@st.composite
def requantize_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels = draw(st.integers(1, 5))
    shape = (*[draw(st.integers(1, 4)) for _ in range(draw(st.integers(0, 2)))], channels)
    multiplier_bits = draw(st.one_of(st.just(31), st.integers(2, 31)))
    top = 2**multiplier_bits - 1
    # One scale for every channel (per-tensor) takes the kernel's flat loop; per channel the other.
    distinct = 1 if draw(st.booleans()) else channels
    multiplier = np.array(
        [draw(st.sampled_from([top, 2 ** (multiplier_bits - 1)]) | st.integers(2 ** (multiplier_bits - 1), top))
         for _ in range(distinct)], np.int64)
    shift = np.array([draw(st.integers(fixedpoint.MIN_SHIFT, multiplier_bits - 1)) for _ in range(distinct)], np.int64)
    scale = np.array([draw(st.sampled_from([0.5, 0.25, 1.0]) | st.floats(2.0**-40, 2.0**8)) for _ in range(distinct)])
    multiplier, shift, scale = (np.resize(a, channels) for a in (multiplier, shift, scale))
    out_dtype = draw(st.sampled_from([np.int8, np.uint8, np.int16, np.uint16, np.int32]))
    out_lo, out_hi = dtype_range(out_dtype)
    clamp_min = draw(st.sampled_from([out_lo]) | st.integers(out_lo, out_hi))
    clamp_max = draw(st.sampled_from([out_hi]) | st.integers(clamp_min, out_hi))
    acc_dtype = draw(st.sampled_from([np.int32, np.int32, np.int16, np.int64]))
    return dict(
        acc=edge_accumulators(rng, shape, acc_dtype),
        acc_zero_point=draw(st.sampled_from([0]) | st.integers(-(2**20), 2**20)),
        multiplier=multiplier,
        shift=shift,
        scale=scale,
        rounding=draw(st.sampled_from(range(len(fixedpoint.ROUNDING_MODES)))),
        multiplier_bits=multiplier_bits,
        out_zero_point=zero_point(draw, out_dtype),
        clamp_min=clamp_min,
        clamp_max=clamp_max,
        out_dtype=out_dtype,
    )


@settings(max_examples=150, deadline=None)
@given(case=requantize_cases())
def test_requantize_matches_naive(case):
    assert_same(mac.requantize(**case), naive_mac.requantize(**case))


@settings(max_examples=60, deadline=None)
@given(case=requantize_cases(), padding=st.integers(0, 17))
def test_requantize_core_reads_the_leading_columns_of_a_wider_accumulator(case, padding):
    # The fused GEMM hands the core its accumulator chunk padded to whole 16-channel blocks.
    acc = np.ascontiguousarray(case["acc"].reshape(-1, case["acc"].shape[-1]), dtype=np.int32)
    case["acc_zero_point"] = 0  # the fused kernels' case
    rng = np.random.default_rng(padding)
    wide = np.concatenate([acc, rng.integers(INT32_MIN, INT32_MAX, size=(acc.shape[0], padding), endpoint=True,
                                             dtype=np.int64).astype(np.int32)], axis=1)
    out = np.empty(acc.shape, case["out_dtype"])
    count = mac.requantize_core(case["rounding"])(wide, 0, case["multiplier"], case["shift"], case["scale"],
                                                  case["multiplier_bits"], case["out_zero_point"], case["clamp_min"],
                                                  case["clamp_max"], out)
    assert_same((out, int(count)), naive_mac.requantize(**{**case, "acc": acc}))


def test_requantize_empty():
    empty = np.zeros((0, 3), np.int32)
    ones = np.ones(3, np.int64)
    for kernel in (mac, naive_mac):
        out, count = kernel.requantize(empty, 0, ones, ones, ones.astype(np.float64), fixedpoint.SINGLE, 31, 0,
                                       -128, 127, np.int8)
        assert out.shape == (0, 3) and out.dtype == np.int8 and count == 0
