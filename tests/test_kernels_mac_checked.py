"""The vectorised overflow-checked cores (kernels/mac_checked.py) against the naive twins, on values
built to overflow in the middle of a reduction and come back: saturate, wrap and error, int16 pairs
on and off, 16/20/24-bit accumulators (and any width from 8 to 32), dense, grouped and depthwise
convolutions, fully-connected layers and matmuls.  Values and both counts must be equal.

The default selection runs a few seeded examples of each; ``python -m pytest -m slow
tests/test_kernels_mac_checked.py`` runs the larger fuzz (``-m "slow or not slow"``: everything).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intsim.codes import OVERFLOW_ERROR, OVERFLOW_SATURATE, OVERFLOW_WRAP
from intsim.kernels import mac
from intsim.kernels.naive import mac as naive_mac

QUICK = settings(max_examples=12, deadline=None, derandomize=True)
FUZZ = settings(max_examples=300, deadline=None)
WIDTHS = st.one_of(st.sampled_from([16, 20, 24]), st.integers(8, 32))


def assert_same(fast, slow):
    np.testing.assert_array_equal(fast[0], slow[0], strict=True)
    assert fast[1:] == slow[1:]
    assert all(type(count) is int for count in fast[1:])


@st.composite
def policies(draw):
    return dict(acc_bits=draw(WIDTHS), overflow=draw(st.sampled_from([OVERFLOW_SATURATE, OVERFLOW_WRAP,
                                                                        OVERFLOW_ERROR])),
                pairwise_int16=draw(st.booleans()))


def there_and_back(draw, rng, dtype, shape, depth_axis):
    """Codes of ``dtype`` whose sign (or, unsigned, whose size) flips part-way along ``depth_axis`` at
    a drawn point: products pile up one way, then the other, so a narrow accumulator overflows in the
    middle of the reduction and the exact sum comes back towards 0."""
    info = np.iinfo(dtype)
    depth = shape[depth_axis]
    turn = draw(st.integers(0, depth))
    magnitude = draw(st.sampled_from([1.0, 0.9, 0.5]))
    high = int(info.max * magnitude)
    low = int(info.min * magnitude) if info.min < 0 else 0
    noise = draw(st.sampled_from([0, 1, 3]))
    index = np.arange(depth).reshape([-1 if a == depth_axis else 1 for a in range(len(shape))])
    values = np.where(index < turn, high, low) + rng.integers(-noise, noise, size=shape, endpoint=True)
    return np.clip(values, info.min, info.max).astype(dtype)


def bias_draw(draw, rng, count):
    scale = draw(st.sampled_from([0, 1000, 2**20, 2**31 - 1]))
    return rng.integers(-scale, scale, size=count, endpoint=True).astype(np.int32)


def zero_point_draw(draw, dtype, allow):
    info = np.iinfo(dtype)
    return draw(st.sampled_from([0, int(info.min), int(info.max), 3])) if allow else 0


@st.composite
def fc_cases(draw, max_depth=48):
    x_dtype = draw(st.sampled_from([np.int8, np.uint8, np.int16]))
    w_dtype = draw(st.sampled_from([np.int8, np.int16]))
    n_batch, depth, n_out = draw(st.integers(1, 3)), draw(st.integers(1, max_depth)), draw(st.integers(1, 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = there_and_back(draw, rng, w_dtype, (n_out, depth), 1)
    return dict(x=there_and_back(draw, rng, x_dtype, (n_batch, depth), 1),
                x_zero_point=zero_point_draw(draw, x_dtype, draw(st.booleans())), w=w,
                w_zero_point=np.array([zero_point_draw(draw, w_dtype, draw(st.booleans())) for _ in range(n_out)],
                                      np.int64),
                bias=bias_draw(draw, rng, n_out))


@st.composite
def conv_cases(draw):
    x_dtype = draw(st.sampled_from([np.int8, np.uint8, np.int16]))
    w_dtype = draw(st.sampled_from([np.int8, np.int16]))
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        groups, cin_g, cout_g = 1, draw(st.integers(1, 6)), draw(st.integers(1, 9))
    elif kind == "grouped":
        groups, cin_g, cout_g = draw(st.integers(2, 3)), draw(st.integers(2, 3)), draw(st.integers(1, 3))
    else:  # channel multiplier 1..3
        groups, cin_g, cout_g = draw(st.integers(2, 10)), 1, draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = tuple(draw(st.integers(0, 1)) for _ in range(4))
    strides = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    height = max(1, kernel[0] - pads[0] - pads[2]) + draw(st.integers(0, 3))
    width = max(1, kernel[1] - pads[1] - pads[3]) + draw(st.integers(0, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cout = groups * cout_g
    # the sign turns along the flattened (kh, kw, ci) reduction of the weights
    w = there_and_back(draw, rng, w_dtype, (cout, kernel[0] * kernel[1] * cin_g), 1).reshape(cout, *kernel, cin_g)
    x = rng.integers(*((0, 1) if draw(st.booleans()) else (-1, 0)), size=(draw(st.integers(1, 2)), height, width,
                                                                         groups * cin_g), endpoint=True)
    info = np.iinfo(x_dtype)
    x = np.clip(np.where(x > 0, info.max, np.where(x < 0, info.min, info.max // 2)), info.min, info.max)
    return dict(x=x.astype(x_dtype), x_zero_point=zero_point_draw(draw, x_dtype, draw(st.booleans())), w=w,
                w_zero_point=np.array([zero_point_draw(draw, w_dtype, draw(st.booleans())) for _ in range(cout)],
                                      np.int64),
                bias=bias_draw(draw, rng, cout), strides=strides, dilations=(1, 1), pads=pads, groups=groups)


@st.composite
def matmul_cases(draw):
    dtype = draw(st.sampled_from([np.int8, np.uint8, np.int16]))
    n_batch, rows, depth, cols = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 40)),
                                  draw(st.integers(1, 6)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return dict(a=there_and_back(draw, rng, dtype, (n_batch, rows, depth), 2),
                a_zero_point=zero_point_draw(draw, dtype, draw(st.booleans())),
                b=there_and_back(draw, rng, dtype, (n_batch, depth, cols), 1),
                b_zero_point=zero_point_draw(draw, dtype, draw(st.booleans())))


@QUICK
@given(case=fc_cases(), policy=policies())
def test_fully_connected_there_and_back_matches_naive(case, policy):
    assert_same(mac.fully_connected_acc(**case, **policy), naive_mac.fully_connected_acc(**case, **policy))


@QUICK
@given(case=conv_cases(), policy=policies())
def test_conv2d_there_and_back_matches_naive(case, policy):
    assert_same(mac.conv2d_nhwc_acc(**case, **policy), naive_mac.conv2d_nhwc_acc(**case, **policy))


@QUICK
@given(case=matmul_cases(), policy=policies())
def test_matmul_there_and_back_matches_naive(case, policy):
    assert_same(mac.matmul_acc(**case, **policy), naive_mac.matmul_acc(**case, **policy))


@pytest.mark.slow
@FUZZ
@given(case=fc_cases(max_depth=200), policy=policies())
def test_fully_connected_there_and_back_fuzz(case, policy):
    assert_same(mac.fully_connected_acc(**case, **policy), naive_mac.fully_connected_acc(**case, **policy))


@pytest.mark.slow
@FUZZ
@given(case=conv_cases(), policy=policies())
def test_conv2d_there_and_back_fuzz(case, policy):
    assert_same(mac.conv2d_nhwc_acc(**case, **policy), naive_mac.conv2d_nhwc_acc(**case, **policy))


@pytest.mark.slow
@FUZZ
@given(case=matmul_cases(), policy=policies())
def test_matmul_there_and_back_fuzz(case, policy):
    assert_same(mac.matmul_acc(**case, **policy), naive_mac.matmul_acc(**case, **policy))


@pytest.mark.parametrize("overflow", [OVERFLOW_SATURATE, OVERFLOW_WRAP])
def test_overflow_in_the_middle_golden(overflow):
    # 16-bit accumulator, c0 = 0: four products of 127 * 127 = 16129 reach 32258, the fifth 48387 > 32767;
    # then five of -16129 come back.  Saturate: 32767 - 5 * 16129 = -47878 -> -32768 (a second overflow,
    # same output).  Wrap: the exact sum 0.
    x = np.full((1, 10), 127, np.int8)
    w = np.array([[127] * 5 + [-127] * 5], np.int8)
    acc, overflows, pairs = mac.fully_connected_acc(x, 0, w, np.zeros(1, np.int64), np.zeros(1, np.int32), 16,
                                                    overflow, False)
    expected = -32768 if overflow == OVERFLOW_SATURATE else 0
    np.testing.assert_array_equal(acc, np.array([[expected]], np.int32), strict=True)
    assert (overflows, pairs) == (1, 0)


@pytest.mark.parametrize("bias, overflowed", [(32767 - 128 * 127, 0), (32767 - 128 * 127 + 1, 1)])
@pytest.mark.parametrize("overflow", [OVERFLOW_SATURATE, OVERFLOW_WRAP])
def test_pixel_bound_edge(bias, overflowed, overflow):
    # A 1x1 conv, 16-bit accumulators, weights all 127, two outputs (biases +-bias) on two pixels.
    # The layer's bound |c0| + K * max|x| * 127 = bias + 2 * 127 * 127 does not fit, so the checked
    # core runs.  The first pixel [127, 1] has window L1 128, so its bound bias + 128 * 127 is 32767
    # exactly for the first bias (summed without checks: it fits; the first output is 32767) and one
    # over for the second (walked: its last partial sum is 32768 and overflows).  The second pixel
    # holds zeros and fits either way.
    x = np.array([[[[127, 1]], [[0, 0]]]], np.int8)
    w = np.full((2, 1, 1, 2), 127, np.int8)
    case = dict(x=x, x_zero_point=0, w=w, w_zero_point=np.zeros(2, np.int64),
                bias=np.array([bias, -bias], np.int32), strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), groups=1)
    policy = dict(acc_bits=16, overflow=overflow, pairwise_int16=False)
    fast = mac.conv2d_nhwc_acc(**case, **policy)
    assert_same(fast, naive_mac.conv2d_nhwc_acc(**case, **policy))
    assert fast[1] == overflowed
    top = 32767 if not overflowed or overflow == OVERFLOW_SATURATE else -32768
    np.testing.assert_array_equal(fast[0][0, :, 0, 0], np.array([top, bias], np.int32), strict=True)
