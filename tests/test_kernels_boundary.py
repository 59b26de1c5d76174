"""The edge kernels (quantize floats, dequantize codes, transpose) against their naive twins."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from intsim import kernels
from intsim.fixedpoint import FLOAT32_RINT, FLOAT64_HALF_AWAY
from intsim.kernels import boundary as fast
from intsim.kernels import naive as naive_kernels
from intsim.kernels.naive import boundary as naive

CODE_DTYPES = [np.int8, np.uint8, np.int16, np.uint16]


@st.composite
def _quantize_cases(draw):
    float_dtype = draw(st.sampled_from([np.float32, np.float64]))
    code_dtype = draw(st.sampled_from(CODE_DTYPES))
    info = np.iinfo(code_dtype)
    scale = draw(st.floats(2.0**-20, 2.0**4, width=32))
    # Values on and next to rounding ties (k + 1/2) * scale, beside arbitrary ones, NaN and infinities.
    halves = st.integers(-(2**17), 2**17).map(lambda k: (k + 0.5) * scale)
    values = st.one_of(halves, st.floats(width=32 if float_dtype == np.float32 else 64), st.floats(-1e3, 1e3))
    x = draw(hnp.arrays(float_dtype, hnp.array_shapes(min_dims=0, max_dims=3, max_side=7), elements=values))
    zero_point = draw(st.integers(int(info.min), int(info.max)))
    lo = draw(st.integers(int(info.min), int(info.max)))
    hi = draw(st.integers(lo, int(info.max)))
    rounding = draw(st.sampled_from([FLOAT32_RINT, FLOAT64_HALF_AWAY]))
    return x, scale, rounding, zero_point, lo, hi, code_dtype


@settings(deadline=None, max_examples=300)
@given(_quantize_cases())
def test_quantize_float_matches_naive(case):
    x = case[0]
    out, non_finite = fast.quantize_float(*case)
    expected, expected_non_finite = naive.quantize_float(*case)
    assert non_finite == expected_non_finite == np.count_nonzero(~np.isfinite(x))
    finite = np.isfinite(x)  # codes of NaN and infinities are undefined
    np.testing.assert_array_equal(out[finite], expected[finite], strict=True)
    assert out.shape == x.shape


@settings(deadline=None, max_examples=100)
@given(_quantize_cases())
def test_quantize_float32_over_float64_scale_is_the_widened_quotient(case):
    # Model.run divides float32 images in float64 as it reads them: the same codes as a float64 copy.
    x, scale, *rest = case
    x32 = x.astype(np.float32)
    out, non_finite = fast.quantize_float(x32, np.float64(scale), *rest)
    expected, expected_non_finite = naive.quantize_float(x32.astype(np.float64), scale, *rest)
    assert non_finite == expected_non_finite
    finite = np.isfinite(x32)
    np.testing.assert_array_equal(out[finite], expected[finite], strict=True)
    np.testing.assert_array_equal(naive.quantize_float(x32, np.float64(scale), *rest)[0][finite], expected[finite],
                                  strict=True)


@settings(deadline=None, max_examples=200)
@given(_quantize_cases(), st.floats(-1e3, 1e3), st.floats(0, 2e3), st.booleans())
def test_quantize_launcher_writes_the_codes_and_counts_far_values(case, far_low, far_width, wide_scale):
    # Model.run's pass: quantize_float's codes written into the run's array, and in the same pass the
    # values a float64 comparison puts below far_low or above far_high (NaN is neither).
    x, scale, rounding, zero_point, lo, hi, code_dtype = case
    if wide_scale and x.dtype == np.float32:
        scale = np.float64(scale)  # Model.run's float32 image over a float64 scale
    far_high = far_low + far_width
    widened = x.astype(np.float64)
    with np.errstate(invalid="ignore"):
        expected_far = int(np.count_nonzero((widened < far_low) | (widened > far_high)))
    expected, expected_non_finite = naive.quantize_float(x, scale, rounding, zero_point, lo, hi, code_dtype)
    finite = np.isfinite(x)
    for launcher in (fast.quantize_launcher, naive.quantize_launcher):
        out = np.zeros(x.shape, code_dtype)
        launch = launcher(x.dtype, scale, rounding, zero_point, lo, hi, far_low, far_high)
        non_finite, far = launch(x, out)
        assert (non_finite, far) == (expected_non_finite, expected_far)
        np.testing.assert_array_equal(out[finite], expected[finite], strict=True)


def _near_every_tie(scale, lo, hi, zero_point, ulps):
    # The float32 values within ``ulps`` units of every tie (k + 1/2) * scale that reaches a code in [lo, hi].
    ties = np.arange(lo - zero_point - 1.5, hi - zero_point + 2.0, 1.0) * float(scale)
    steps = np.arange(-ulps, ulps + 1, dtype=np.int64)
    bits = ties.astype(np.float32).view(np.int32).astype(np.int64)[:, None] + steps[None, :]
    return bits.astype(np.int32).view(np.float32).reshape(-1)


@settings(deadline=None, max_examples=60)
@given(st.floats(2.0**-30, 2.0**20), st.sampled_from([np.int8, np.uint8, np.int16]),
       st.sampled_from([FLOAT32_RINT, FLOAT64_HALF_AWAY]), st.data())
def test_quantize_launcher_over_a_float64_scale_is_exact_at_every_tie(scale, code_dtype, rounding, data):
    # Model.run's float32 images over a float64 scale: the launch may multiply by the reciprocal in
    # place of the division (kernels.boundary._exact_reciprocal); the codes of every float32 value within
    # 32 units of a rounding tie (the only places where the two quotients could round apart; the check
    # tries 8) must be the division's.
    info = np.iinfo(code_dtype)
    zero_point = data.draw(st.integers(int(info.min), int(info.max)))
    lo = data.draw(st.integers(int(info.min), int(info.max)))
    hi = data.draw(st.integers(lo, min(int(info.max), lo + 600)))
    x = _near_every_tie(scale, lo, hi, zero_point, 32)
    expected, _ = naive.quantize_float(x, np.float64(scale), rounding, zero_point, lo, hi, code_dtype)
    out = np.zeros(x.shape, code_dtype)
    launch = fast.quantize_launcher(x.dtype, np.float64(scale), rounding, zero_point, lo, hi, -np.inf, np.inf)
    assert launch(x, out) == (0, 0)
    np.testing.assert_array_equal(out, expected, strict=True)


@pytest.mark.parametrize("scale", [0.0137, 0.1, 1 / 255, 3.7e-5, 1.0])
def test_quantize_launcher_multiplies_where_the_check_passes_and_the_check_sees_a_wrong_factor(scale):
    # The reciprocal is taken for ordinary scales (so the tie test above runs the multiply), and the
    # check refuses a factor 2**-22 off (a float32 unit), which moves codes at the ties.
    launch = fast.quantize_launcher(np.dtype(np.float32), np.float64(scale), FLOAT32_RINT, 0, -128, 127, -1.0, 1.0)
    factor, divide = launch.args[:2]
    assert not divide and factor == 1.0 / scale
    x = _near_every_tie(scale, -128, 127, 0, 8)
    assert fast.multiplies_like_division(x, scale, factor, FLOAT32_RINT, 0, -128.0, 127.0)
    assert not fast.multiplies_like_division(x, scale, factor * (1 + 2.0**-22), FLOAT32_RINT, 0, -128.0,
                                            127.0)


def test_quantize_launcher_counts_at_the_edges_of_the_key_range():
    # The float32 pass finds non-finite and far values from the range of order keys: negative NaN, -0.0
    # against a bound of 0, values equal to the bounds, bounds that are not float32 values.
    negative_nan = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    x = np.array([negative_nan, np.nan, -0.0, 0.0, np.float32(0.1), np.inf, -np.inf, 1.0, -1.0], np.float32)
    for far_low, far_high in ((0.0, 0.0), (0.1, 0.1), (-1.0, 1.0), (-np.inf, np.inf), (-0.5, 2.0)):
        wide = x.astype(np.float64)
        with np.errstate(invalid="ignore"):
            expected_far = int(np.count_nonzero((wide < far_low) | (wide > far_high)))
        for scale in (np.float64(0.01), np.float32(0.01)):
            out = np.zeros(x.shape, np.int8)
            launch = fast.quantize_launcher(x.dtype, scale, FLOAT32_RINT, 0, -128, 127, far_low, far_high)
            assert launch(x, out) == (4, expected_far)
        clean = x[np.isfinite(x) & (x.astype(np.float64) >= far_low) & (x.astype(np.float64) <= far_high)]
        assert launch(clean, np.zeros(clean.shape, np.int8)) == (0, 0)


@pytest.mark.parametrize("rounding, expected", [
    (FLOAT32_RINT, [-2, -2, -1, 0, 0, 0, 1, 2, 2, 3, 127, -128]),
    (FLOAT64_HALF_AWAY, [-3, -2, -1, -1, 0, 1, 1, 2, 3, 3, 127, -128]),
])
def test_quantize_float_golden_ties(rounding, expected):
    # x / 0.5 = -2.5, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2.5, 2.75; then values far beyond int32 saturate.
    x = np.array([-1.25, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.25, 1.375, 3e38, -3e38], np.float32)
    out, non_finite = fast.quantize_float(x, 0.5, rounding, 0, -128, 127, np.int8)
    np.testing.assert_array_equal(out, np.array(expected, np.int8), strict=True)
    assert non_finite == 0


@settings(deadline=None, max_examples=200)
@given(st.sampled_from(CODE_DTYPES).flatmap(lambda dtype: hnp.arrays(
    dtype, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6), elements=hnp.from_dtype(np.dtype(dtype))).map(
    lambda codes: (codes, np.iinfo(dtype)))), st.floats(2.0**-30, 2.0**10, width=32), st.data())
def test_dequantize_codes_matches_naive(codes_info, scale, data):
    codes, info = codes_info
    zero_point = data.draw(st.integers(int(info.min), int(info.max)))
    out = fast.dequantize_codes(codes, scale, zero_point)
    np.testing.assert_array_equal(out, naive.dequantize_codes(codes, scale, zero_point), strict=True)


@settings(deadline=None, max_examples=100)
@given(st.sampled_from(CODE_DTYPES + [np.int32]), st.one_of(st.floats(2.0**-30, 2.0**10, width=32),
                                                            st.floats(2.0**-30, 2.0**10)), st.data())
def test_dequantize_launcher_matches_naive_over_repeated_calls(code_dtype, scale, data):
    # One launch (as Model.run keeps per output) over several arrays of its dtype: shapes change, some
    # not contiguous; float32 and float64 scales (float32, split and float64 lanes); int32 codes too.
    info = np.iinfo(code_dtype)
    zero_point = data.draw(st.integers(max(int(info.min), -(2**20)), min(int(info.max), 2**20)))
    fast_launch = fast.dequantize_launcher(code_dtype, scale, zero_point)
    naive_launch = naive.dequantize_launcher(code_dtype, scale, zero_point)
    for _ in range(3):
        codes = data.draw(hnp.arrays(code_dtype, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6)))
        if codes.ndim and data.draw(st.booleans()):
            codes = codes[..., ::-1]
        np.testing.assert_array_equal(fast_launch(codes), naive_launch(codes), strict=True)
    for launch in (fast_launch, naive_launch):
        with pytest.raises(TypeError, match="codes called with"):
            launch(np.zeros(3, np.float64))


@settings(deadline=None, max_examples=100)
@given(st.floats(2.0**-60, 2.0**60), st.sampled_from([np.int8, np.uint8]), st.data())
def test_dequantize_codes_of_every_byte_code_over_a_float64_scale_matches_naive(scale, code_dtype, data):
    # A scale that is no float32 (Model.run's outputs under paper and tflite) takes the split float32
    # lanes (kernels.boundary._split_scale) where they give the float64 product's value for every code.
    info = np.iinfo(code_dtype)
    zero_point = data.draw(st.integers(int(info.min), int(info.max)))
    codes = np.arange(int(info.min), int(info.max) + 1).astype(code_dtype)
    np.testing.assert_array_equal(fast.dequantize_codes(codes, scale, zero_point),
                                  naive.dequantize_codes(codes, scale, zero_point), strict=True)


@pytest.mark.parametrize("scale", [0.0213, 0.1, 1 / 255, 3.7e-5])
def test_dequantize_split_is_taken_for_bytes_and_its_check_refuses_a_split_that_differs(scale):
    # Byte codes over ordinary scales take the split lanes.  The byte split leaves too few bits in its
    # high part for int16 codes' 17-bit differences: some value differs, and the check says so.
    high, low = fast._split_scale(np.dtype(np.int8), scale, 3)
    codes = np.arange(-32768, 32768, dtype=np.int16)
    assert not fast.splits_exactly(codes, scale, 3, high, low)
    assert fast.splits_exactly(codes[(codes >= -128) & (codes <= 127)], scale, 3, high, low)
    np.testing.assert_array_equal(fast.dequantize_codes(codes, scale, 3), naive.dequantize_codes(codes, scale, 3),
                                  strict=True)


@pytest.mark.parametrize("scale", [np.float32(0.0213), np.float32(2.0**-140), np.float32(3.0e38 / 65535),
                                   np.float32(6.1e34), 0.1, 2.0**-1074])
@pytest.mark.parametrize("zero_point", [0, -32768, 32767])
def test_dequantize_codes_of_every_int16_code_matches_naive(scale, zero_point):
    # Every int16 code: float32 scales take float32 lanes (products subnormal, near the largest float32
    # and overflowing to infinity among them), scales that are not float32 (0.1, 2**-1074) float64 lanes.
    codes = np.arange(-32768, 32768, dtype=np.int16)
    with np.errstate(over="ignore"):  # the naive twin's float64 -> float32 cast of the overflowing products
        expected = naive.dequantize_codes(codes, scale, zero_point)
    np.testing.assert_array_equal(fast.dequantize_codes(codes, scale, zero_point), expected, strict=True)


@settings(deadline=None, max_examples=200)
@given(hnp.arrays(st.sampled_from([np.uint8, np.int8, np.int16, np.int32]),
                  hnp.array_shapes(min_dims=0, max_dims=5, max_side=5)), st.data())
def test_transpose_matches_naive(x, data):
    perm = data.draw(st.permutations(range(x.ndim)))
    if data.draw(st.booleans()) and x.ndim:
        x = x[..., ::-1]  # a strided input
    out = fast.transpose(x, perm)
    expected = naive.transpose(x, perm)
    np.testing.assert_array_equal(out, expected, strict=True)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(naive.transpose_launcher(perm)(x), expected, strict=True)
    # The launcher's fixed calls (a model's bound run) write a preallocated array, up to rank 4.
    x = np.array(x, order="C")  # (ascontiguousarray would make a 0-d array 1-d)
    written = np.zeros_like(expected)
    calls = fast.transpose_launcher(perm).calls(x, written)
    assert (calls is None) == (x.ndim > fast.TRANSPOSE_MAX_RANK)
    for function, arguments in calls or ():
        function(*arguments)
    if calls is not None:
        np.testing.assert_array_equal(written, expected, strict=True)


@settings(deadline=None, max_examples=60)
@given(st.sampled_from([np.int8, np.uint8]), st.integers(1, 2), st.integers(1, 40), st.integers(1, 6),
       st.integers(1, 9), st.sampled_from([(0, 2, 3, 1), (0, 3, 1, 2), (2, 3, 0, 1), (1, 0, 2, 3)]), st.data())
def test_transpose_of_byte_blocks_matches_naive(dtype, n, c, h, w, perm, data):
    # Sides past one 16 x 16 block and between blocks: the register blocks and the rows and columns
    # copied one by one after them (the hypothesis test above stays below one block).
    x = data.draw(hnp.arrays(dtype, (n, c, h, w)))
    expected = naive.transpose(x, perm)
    np.testing.assert_array_equal(fast.transpose(x, perm), expected, strict=True)
    written = np.zeros_like(expected)
    for function, arguments in fast.transpose_launcher(perm).calls(x, written):
        function(*arguments)
    np.testing.assert_array_equal(written, expected, strict=True)


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (0, 3, 1, 2)])
def test_transpose_of_few_channels_matches_naive(channels, perm):
    # An image's two to four channels take the unrolled interleave (NCHW -> NHWC) or de-interleave
    # (NHWC -> NCHW) loops; one and five channels the other paths beside them.  Two images, sides
    # past a 16-code block and not a multiple of it.
    x = np.random.default_rng(channels).integers(-128, 128, size=(2, channels, 19, 37), dtype=np.int8)
    if perm == (0, 3, 1, 2):
        x = np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))  # NHWC in
    expected = naive.transpose(x, perm)
    np.testing.assert_array_equal(fast.transpose(x, perm), expected, strict=True)


@pytest.mark.parametrize("shape, perm, batched", [
    ((1, 64, 56, 56), (0, 2, 3, 1), (1, 64, 3136)),  # NCHW -> NHWC
    ((2, 56, 56, 256), (0, 3, 1, 2), (2, 3136, 256)),  # NHWC -> NCHW
    ((3, 4, 5), (2, 0, 1), (1, 12, 5)),
    ((1, 7, 1, 5), (0, 3, 2, 1), (1, 7, 5)),  # unit axes dropped
    ((4, 5, 6), (1, 0, 2), None),  # rows of 6 move whole: not one transpose
    ((1, 1, 5, 7), (0, 2, 3, 1), None),  # only a unit axis moves
])
def test_batched_2d_finds_the_matrices(shape, perm, batched):
    assert fast.batched_2d(shape, perm) == batched


def test_transpose_nchw_to_nhwc_golden():
    x = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)  # x[0, c, h, w] = 12 c + 4 h + w
    out = fast.transpose(x, (0, 2, 3, 1))
    assert out.shape == (1, 3, 4, 2)
    assert out[0, 2, 1, 1] == 12 + 8 + 1 and out[0, 1, 3, 0] == 4 + 3


def test_every_fast_kernel_has_a_naive_twin_of_the_same_signature():
    assert kernels.__all__ == naive_kernels.__all__
    for name in kernels.__all__:
        fast_params = inspect.signature(getattr(kernels, name)).parameters
        naive_params = inspect.signature(getattr(naive_kernels, name)).parameters
        assert list(fast_params) == list(naive_params), name
