"""intsim.converter.calibration: quantization parameters, (fake) quantization, streaming statistics, range setting.

Goldens are worked out by hand in the comments beside them.  Properties run over
hypothesis-generated ranges and every bit width 2..16.  Range-setting methods are
judged by the error they exist to reduce, measured here with ``fake_quantize`` on
the data itself, and every ``ValidationError`` the module raises has a test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intsim import progress
from intsim.converter import quantizer
from intsim.converter.quantizer import (
    DEGENERATE_SCALE,
    code_range,
    fake_quantize,
    quantization_params,
    quantize,
    quantize_weights,
)
from intsim.converter.calibration import RANGE_METHODS, TensorStats, bn_range, calibrate, choose_range
from intsim.errors import ValidationError

SEED = 20240611


def stream(stats: TensorStats, values: np.ndarray, pieces: int) -> TensorStats:
    for part in np.array_split(values, pieces):
        stats.update(part)
    return stats


def measured_mse(x, lo, hi, bits, signed, symmetric, **fmt) -> float:
    scale, zero_point = quantization_params(lo, hi, bits, signed, symmetric, **fmt)
    qmin, qmax = code_range(bits, signed, fmt.get("narrow_range", False))
    return float(np.mean((fake_quantize(x, scale, zero_point, qmin, qmax) - x) ** 2))


def softmax_cross_entropy(logits, quantized) -> float:
    """Mean over rows of -sum p log q, p = softmax(logits), q = softmax(quantized); written out longhand."""
    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))
    return float(-np.mean(np.sum(np.exp(log_softmax(logits)) * log_softmax(quantized), axis=1)))


def laplace(n=60_000, seed=SEED) -> np.ndarray:
    """Heavy-tailed data, like many pre-activations (white paper §3.1): the 8-bit MSE optimum clips near 10 of ~11."""
    return np.random.default_rng(seed).laplace(0.0, 1.0, n)


# --------------------------------------------------------------------------
# quantization_params
# --------------------------------------------------------------------------


@pytest.mark.parametrize("lo, hi, bits, signed, symmetric, fmt, scale, zero_point", [
    # uint8 asymmetric [-1, 3]: scale = 4 / 255; real zero point 0 - (-1) / (4/255) = 63.75, rounded to 64.
    (-1.0, 3.0, 8, False, False, {}, 4 / 255, 64),
    # int8 symmetric [-2, 1]: max |x| = 2 maps to code 127, so scale = 2 / 127; zero point 0.
    (-2.0, 1.0, 8, True, True, {}, 2 / 127, 0),
    # uint8 symmetric: the same scale, zero point 2**7 = 128 (codes 1..255 hold -2..2).
    (-2.0, 1.0, 8, False, True, {}, 2 / 127, 128),
    # int8 asymmetric ReLU6 [0, 6]: scale 6 / 255; real zero point -128 - 0 / scale = -128.
    (0.0, 6.0, 8, True, False, {}, 6 / 255, -128),
    # [2, 4] is first widened to [0, 4]: uint8 scale 4 / 255, zero point 0.
    (2.0, 4.0, 8, False, False, {}, 4 / 255, 0),
    # [-4, -2] widens to [-4, 0]: uint8 scale 4 / 255, zero point 0 + 4 / (4/255) = 255.
    (-4.0, -2.0, 8, False, False, {}, 4 / 255, 255),
    # narrow int8 asymmetric [-1, 1]: codes -127..127, scale 2 / 254; real zero point -127 + 127 = 0.
    (-1.0, 1.0, 8, True, False, {"narrow_range": True}, 2 / 254, 0),
    # int4 asymmetric [-1, 2]: scale 3 / 15 = 0.2; real zero point -8 + 1 / 0.2 = -3.
    (-1.0, 2.0, 4, True, False, {}, 0.2, -3),
    # pow2, int8 symmetric [-2, 1]: 2/127 = 0.01575 lies in (1/64, 1/32], rounded up to 1/32.
    (-2.0, 1.0, 8, True, True, {"power_of_two": True}, 1 / 32, 0),
    # pow2, uint8 asymmetric [-1, 3]: 4/255 -> 1/32; real zero point 32 keeps 3 at code 32 + 96 = 128.
    (-1.0, 3.0, 8, False, False, {"power_of_two": True}, 1 / 32, 32),
    # pow2 keeps a scale that already is a power of two: [0, 255] at uint8 is scale 1.
    (0.0, 255.0, 8, False, False, {"power_of_two": True}, 1.0, 0),
    # Degenerate [0, 0]: scale 2**-23; asymmetric zero point qmin - 0 / scale = qmin.
    (0.0, 0.0, 8, True, False, {}, 2.0**-23, -128),
    (0.0, 0.0, 8, False, False, {}, 2.0**-23, 0),
    (0.0, 0.0, 8, True, True, {"power_of_two": True}, 2.0**-23, 0),
    # 16-bit unsigned symmetric [-1, 1]: scale 1 / 32767, zero point 32768.
    (-1.0, 1.0, 16, False, True, {}, 1 / 32767, 32768),
    # 2-bit signed symmetric: codes -1..1 (qmax 1), so scale = max |x|.
    (-0.5, 0.25, 2, True, True, {}, 0.5, 0),
])
def test_quantization_params_goldens(lo, hi, bits, signed, symmetric, fmt, scale, zero_point):
    got = quantization_params(lo, hi, bits, signed, symmetric, **fmt)
    assert got == (pytest.approx(scale, rel=1e-15), zero_point)
    assert type(got[0]) is float and type(got[1]) is int


def test_code_ranges():
    assert code_range(8, True) == (-128, 127)
    assert code_range(8, True, narrow_range=True) == (-127, 127)
    assert code_range(8, False, narrow_range=True) == (0, 255)  # nothing to drop
    assert code_range(2, True) == (-2, 1)
    assert code_range(16, False) == (0, 65535)
    assert DEGENERATE_SCALE == 2.0**-23


magnitudes = st.one_of(st.floats(-1e12, 1e12), st.floats(-1e-12, 1e-12), st.sampled_from([0.0, -0.0, 1.0, -1.0]))


@settings(deadline=None, max_examples=400)
@given(a=magnitudes, b=magnitudes, bits=st.integers(2, 16), signed=st.booleans(), symmetric=st.booleans(),
       narrow=st.booleans(), pow2=st.booleans())
def test_quantization_params_invariants(a, b, bits, signed, symmetric, narrow, pow2):
    lo, hi = min(a, b), max(a, b)
    scale, zero_point = quantization_params(lo, hi, bits, signed, symmetric, narrow_range=narrow, power_of_two=pow2)
    qmin, qmax = code_range(bits, signed, narrow)
    assert 0 < scale < math.inf
    assert qmin <= zero_point <= qmax
    # 0 quantizes to the zero point and comes back exactly.
    assert quantize(0.0, scale, zero_point, qmin, qmax, np.int64) == zero_point
    assert fake_quantize(np.zeros(1), scale, zero_point, qmin, qmax)[0] == 0.0
    # The (widened) ends are not clipped beyond rounding: each comes back within half a step.
    ends = np.array([min(lo, 0.0), max(hi, 0.0)])
    back = fake_quantize(ends, scale, zero_point, qmin, qmax)
    assert np.all(np.abs(back - ends) <= scale * (0.5 + 1e-9))
    if pow2:
        assert math.frexp(scale)[0] == 0.5  # an exact power of two
        plain, _ = quantization_params(lo, hi, bits, signed, symmetric, narrow_range=narrow)
        assert scale >= plain
        codes_of_ends = ends / scale + zero_point  # real codes, before rounding
        if symmetric:
            assert np.all((codes_of_ends >= qmin - 1e-9) & (codes_of_ends <= qmax + 1e-9))
        elif math.ceil(qmin - ends[0] / scale) <= math.floor(qmax - ends[1] / scale):
            # The rounded-up scale left a spare step: the zero point uses it, and nothing is rounded past the ends.
            assert codes_of_ends[0] >= qmin - 1e-9 and codes_of_ends[1] <= qmax + 1e-9
    if symmetric:
        assert zero_point == (0 if signed else 2 ** (bits - 1))


@pytest.mark.parametrize("args, kwargs, message", [
    ((math.nan, 1.0, 8, True, False), {}, "lo=nan, hi=1.0"),
    ((-1.0, math.inf, 8, True, False), {}, "lo=-1.0, hi=inf"),
    ((2.0, 1.0, 8, True, False), {}, "lo <= hi, found lo=2.0, hi=1.0"),
    (("0", 1.0, 8, True, False), {}, "lo must be a real number, found '0'"),
    ((0.0, None, 8, True, False), {}, "hi must be a real number, found None"),
    ((0.0, 1.0, 1, True, False), {}, "bits must be an integer in [2, 16], found 1"),
    ((0.0, 1.0, 17, True, False), {}, "found 17"),
    ((0.0, 1.0, 8.0, True, False), {}, "found 8.0"),
    ((0.0, 1.0, True, True, False), {}, "found True"),
    ((0.0, 1.0, 8, "yes", False), {}, "signed must be a bool, found 'yes'"),
    ((0.0, 1.0, 8, True, 0), {}, "symmetric must be a bool, found 0"),
    ((0.0, 1.0, 8, True, False), {"narrow_range": None}, "narrow_range must be a bool"),
    ((0.0, 1.0, 8, True, False), {"power_of_two": 1}, "power_of_two must be a bool"),
    ((-1e308, 1e308, 8, True, False), {}, "too wide"),
])
def test_quantization_params_errors(args, kwargs, message):
    with pytest.raises(ValidationError, match="quantization_params") as info:
        quantization_params(*args, **kwargs)
    assert message in str(info.value)


def test_code_range_error():
    with pytest.raises(ValidationError, match=r"code_range: bits must be an integer in \[2, 16\], found 0"):
        code_range(0, True)


# --------------------------------------------------------------------------
# fake_quantize and quantize
# --------------------------------------------------------------------------


def test_fake_quantize_golden():
    # scale 1/4, zero point 3, codes [-8, 7] (int4):
    #   -2.0 -> -8 + 3 = -5;  0.125 -> rint(0.5) = 0 (tie to even) + 3;  0.375 -> rint(1.5) = 2 + 3 = 5;
    #   0.625 -> rint(2.5) = 2 + 3 = 5;  1.0 -> 4 + 3 = 7;  1.2 -> rint(4.8) + 3 = 8, clipped to 7;
    #   -3.0 -> -12 + 3, clipped to -8.
    x = np.array([-2.0, 0.125, 0.375, 0.625, 1.0, 1.2, -3.0])
    codes = quantize(x, 0.25, 3, -8, 7, np.int8)
    np.testing.assert_array_equal(codes, np.array([-5, 3, 5, 5, 7, 7, -8], np.int8), strict=True)
    expected = (codes.astype(np.float64) - 3) * 0.25  # [-2, 0, 0.5, 0.5, 1, 1, -2.75]
    np.testing.assert_array_equal(fake_quantize(x, 0.25, 3, -8, 7), expected, strict=True)
    np.testing.assert_array_equal(expected, [-2.0, 0.0, 0.5, 0.5, 1.0, 1.0, -2.75])


def test_fake_quantize_per_channel_and_dtypes():
    x = np.array([[0.3, 0.3, 0.3], [-1.0, -1.0, -1.0]], np.float32)
    scale = np.array([0.1, 0.25, 1.0])
    zero_point = np.array([0, 1, -1])
    # Along axis 1 (columns): 0.3 -> rint(3)=3 -> 0.3;  rint(1.2)+1=2 -> 0.25;  rint(0.3)-1=-1 -> 0.
    #                          -1 -> -10 -> -1.0;      -4+1=-3 -> -1.0;       -1-1=-2 -> -1.0.
    out = fake_quantize(x, scale, zero_point, -128, 127, axis=1)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.3, 0.25, 0.0], [-1.0, -1.0, -1.0]], rtol=1e-7)
    np.testing.assert_array_equal(fake_quantize(x.T, scale, zero_point, -128, 127, axis=0), out.T, strict=True)
    np.testing.assert_array_equal(fake_quantize(x, scale, zero_point, -128, 127, axis=-1), out, strict=True)
    assert fake_quantize(np.array([1, 2]), 0.5, 0, -8, 7).dtype == np.float64  # integers in, float64 out
    codes = quantize(x, scale, zero_point, -128, 127, np.int8, axis=1)
    np.testing.assert_array_equal(codes, np.array([[3, 2, -1], [-10, -3, -2]], np.int8), strict=True)
    codes = quantize(x, 0.5, 2, 0, 255, np.uint8)  # 0.3 -> rint(0.6) + 2 = 3;  -1 -> -2 + 2 = 0
    np.testing.assert_array_equal(codes, np.array([[3, 3, 3], [0, 0, 0]], np.uint8), strict=True)
    # A one-entry array is per tensor, whatever the axis.
    np.testing.assert_array_equal(fake_quantize(x, np.array([0.1]), np.array([0]), -128, 127, axis=5),
                                  fake_quantize(x, 0.1, 0, -128, 127))


@pytest.mark.parametrize("call, message", [
    (lambda: fake_quantize([np.nan], 1.0, 0, -8, 7),
     "fake_quantize: x must be finite, found 1 non-finite value(s), e.g. nan"),
    (lambda: fake_quantize(["a"], 1.0, 0, -8, 7), "x must be real numbers, found dtype <U1"),
    (lambda: fake_quantize([1.0], 0.0, 0, -8, 7), "scale must be finite and > 0, found 0.0"),
    (lambda: fake_quantize([1.0], [1.0, np.inf], 0, -8, 7), "scale must be finite and > 0"),
    (lambda: fake_quantize([1.0], 1.0, 0.5, -8, 7), "zero_point must be integers, found dtype float64"),
    (lambda: fake_quantize([1.0], 1.0, 9, -8, 7), "zero_point must lie in [qmin, qmax] = [-8, 7], found 9"),
    (lambda: fake_quantize([1.0], 1.0, 0, 7, -8), "need qmin < qmax, found qmin=7, qmax=-8"),
    (lambda: fake_quantize([1.0], 1.0, 0, -8.0, 7), "qmin must be an integer, found -8.0"),
    (lambda: fake_quantize(np.ones((2, 3)), np.ones((2, 3)), 0, -8, 7), "found shapes (2, 3) and ()"),
    (lambda: fake_quantize(np.ones((2, 3)), np.ones(3), 0, -8, 7, axis=0),
     "scale has 3 entries but x has 2 channels along axis 0"),
    (lambda: fake_quantize(np.ones((2, 3)), 1.0, np.zeros(2, int), -8, 7, axis=1),
     "zero_point has 2 entries but x has 3"),
    (lambda: fake_quantize(np.ones((2, 3)), np.ones(3), 0, -8, 7, axis=2),
     "axis 2 is out of range for x of shape (2, 3)"),
    (lambda: quantize([1.0], 1.0, 0, -8, 7, np.float32), "quantize: dtype must be an integer dtype, found float32"),
    (lambda: quantize([1.0], 1.0, 0, -1, 255, np.uint8), "dtype uint8 holds [0, 255], not [qmin, qmax] = [-1, 255]"),
    (lambda: quantize([np.inf], 1.0, 0, -8, 7, np.int8), "quantize: x must be finite"),
])
def test_fake_quantize_errors(call, message):
    with pytest.raises(ValidationError) as info:
        call()
    assert message in str(info.value)


# --------------------------------------------------------------------------
# quantize_weights
# --------------------------------------------------------------------------


FORMATS = [  # bits, signed, symmetric, narrow_range, power_of_two
    (8, True, True, True, False),
    (8, True, False, False, False),
    (8, False, False, False, False),
    (8, False, True, False, False),
    (4, True, True, False, True),
    (4, True, False, True, False),
    (2, True, False, False, True),
    (16, True, True, True, False),
    (12, False, False, False, True),
]


@pytest.mark.parametrize("bits, signed, symmetric, narrow, pow2", FORMATS)
def test_quantize_weights_per_channel_and_per_tensor(bits, signed, symmetric, narrow, pow2):
    rng = np.random.default_rng(SEED)
    # OHWI weight whose output channels differ by 1000x in magnitude; one channel all zero, one all positive.
    w = rng.normal(0.0, 1.0, (5, 3, 3, 2)) * np.array([1e-3, 1.0, 0.1, 0.0, 1.0])[:, None, None, None]
    w[4] = np.abs(w[4]) + 0.5
    qmin, qmax = code_range(bits, signed, narrow)
    dtype = np.dtype(("int" if signed else "uint") + ("8" if bits <= 8 else "16"))
    errors = {}
    for per_channel in (True, False):
        codes, scale, zero_point = quantize_weights(w, bits, signed, symmetric, narrow, per_channel,
                                                    power_of_two=pow2)
        assert codes.dtype == dtype and codes.shape == w.shape
        assert scale.shape == zero_point.shape == ((5,) if per_channel else (1,))
        assert scale.dtype == np.float64 and zero_point.dtype == np.int64
        assert codes.min() >= qmin and codes.max() <= qmax
        s, z = scale.reshape(-1, 1, 1, 1), zero_point.reshape(-1, 1, 1, 1)
        dequantized = (codes.astype(np.float64) - z) * s
        # min/max ranges clip nothing: every weight comes back within half a step.
        assert np.all(np.abs(w - dequantized) <= s * (0.5 + 1e-9))
        if per_channel:
            for c in range(5):
                assert (scale[c], zero_point[c]) == quantization_params(
                    w[c].min(), w[c].max(), bits, signed, symmetric, narrow_range=narrow, power_of_two=pow2)
        else:
            assert (scale[0], zero_point[0]) == quantization_params(
                w.min(), w.max(), bits, signed, symmetric, narrow_range=narrow, power_of_two=pow2)
        errors[per_channel] = np.abs(w - dequantized).reshape(5, -1).max(axis=1)
    assert errors[True][0] < errors[False][0]  # the small channel gains from its own scale
    assert errors[True][3] == 0.0  # an all-zero channel is exact


def test_quantize_weights_axis():
    rng = np.random.default_rng(SEED)
    w = rng.normal(size=(4, 6))
    codes, scale, zero_point = quantize_weights(w, 8, True, True, True, True, axis=0)
    codes_t, scale_t, zero_point_t = quantize_weights(w.T, 8, True, True, True, True, axis=-1)
    np.testing.assert_array_equal(codes_t, codes.T, strict=True)
    np.testing.assert_array_equal(scale_t, scale, strict=True)
    np.testing.assert_array_equal(zero_point_t, zero_point, strict=True)
    assert quantize_weights(w, 8, True, True, True, False, axis=7)[1].shape == (1,)  # axis unused per tensor


@pytest.mark.parametrize("bits, signed, symmetric, narrow, pow2", FORMATS)
def test_mse_weights_never_worse_than_minmax(bits, signed, symmetric, narrow, pow2):
    rng = np.random.default_rng(SEED + bits)
    w = rng.laplace(0.0, 1.0, (6, 200)) * rng.uniform(0.1, 2.0, (6, 1))
    w[:, 0] *= 8  # heavy tails: one outlier per channel
    qmin, qmax = code_range(bits, signed, narrow)
    mse = {}
    for method in ("minmax", "mse"):
        codes, scale, zero_point = quantize_weights(w, bits, signed, symmetric, narrow, True, power_of_two=pow2,
                                                    method=method)
        assert codes.min() >= qmin and codes.max() <= qmax
        dequantized = (codes - zero_point[:, None]) * scale[:, None]
        mse[method] = np.mean((w - dequantized) ** 2, axis=1)
    assert np.all(mse["mse"] <= mse["minmax"])
    # At 8 bits an outlier costs more clipped than kept; at 4 bits and below the rounding noise dominates.
    if bits <= 4:
        assert np.mean(mse["mse"]) < 0.9 * np.mean(mse["minmax"])


@pytest.mark.parametrize("call, message", [
    (lambda: quantize_weights(np.ones(3), 8, True, True, True, True, method="kl"),
     "quantize_weights: method must be one of minmax, mse, found 'kl'"),
    (lambda: quantize_weights(np.ones((0, 3)), 8, True, True, True, True), "weights are empty (shape (0, 3))"),
    (lambda: quantize_weights([1.0, np.nan], 8, True, True, True, False), "weights must be finite"),
    (lambda: quantize_weights(np.ones((2, 3)), 8, True, True, True, True, axis=2),
     "axis 2 is out of range for weights of shape (2, 3)"),
    (lambda: quantize_weights(np.ones(()), 8, True, True, True, True), "axis 0 is out of range"),
    (lambda: quantize_weights(np.ones(3), 1, True, True, True, True), "bits must be an integer in [2, 16]"),
    (lambda: quantize_weights(np.ones(3), 8, True, True, "no", True), "narrow_range must be a bool"),
    (lambda: quantize_weights(np.array([-1e308, 1e308]), 8, True, False, False, False), "too wide for float64"),
])
def test_quantize_weights_errors(call, message):
    with pytest.raises(ValidationError) as info:
        call()
    assert message in str(info.value)


# --------------------------------------------------------------------------
# TensorStats
# --------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [1, 7, 500])
def test_stats_streaming_equals_one_shot(pieces):
    rng = np.random.default_rng(SEED)
    x = np.concatenate([rng.laplace(size=20_000), rng.normal(5.0, 0.1, 3000), [-60.0, 45.0]])
    x = x[rng.permutation(x.size)]
    stats = stream(TensorStats("x"), x, pieces)
    assert (stats.min, stats.max, stats.count) == (x.min(), x.max(), x.size)
    edges = stats.bin_edges
    assert edges[0] <= x.min() and x.max() <= edges[-1]
    # Old bins merge without splitting, so the histogram is the one-shot histogram on the final grid, except
    # for the first batch's min and max, which lie on edges and may sit in the bin on either side.
    moved = np.cumsum(stats.histogram - np.histogram(x, bins=edges)[0])
    assert moved[-1] == 0 and np.abs(moved).max() <= 1
    # ... and its quantiles (uniform within bins) are within one bin of the exact ones.
    cdf = np.concatenate([[0], np.cumsum(stats.histogram)]) / x.size
    for q in (0.001, 0.1, 0.5, 0.9, 0.999):
        assert abs(np.interp(q, cdf, edges) - np.quantile(x, q)) <= edges[1] - edges[0]


@pytest.mark.parametrize("pattern", ["growing", "shifting", "one_sided", "tiny_then_huge", "constant_first"])
def test_stats_memory_is_bounded_and_bins_stay_useful(pattern):
    rng = np.random.default_rng(SEED)
    stats = TensorStats("x", bins=256, keep_rows=40)
    nbytes = None
    seen = []
    for i in range(600):
        batch = rng.laplace(size=(8, 5))
        batch = {
            "growing": batch * 1.03**i,
            "shifting": batch + 0.2 * i,
            "one_sided": np.maximum(batch, 0) * 1.02**i,
            "tiny_then_huge": batch * (1e-9 if i < 300 else 1e6),
            "constant_first": np.full((8, 5), 3.0) if i < 100 else batch,
        }[pattern]
        stats.update(batch)
        seen.append(batch)
        nbytes = stats.nbytes if nbytes is None else nbytes
        assert stats.histogram.shape == (256,) and stats.nbytes == nbytes
        assert stats.rows.shape == (min(8 * (i + 1), 40), 5)
    x = np.concatenate(seen).ravel()
    assert (stats.min, stats.max, stats.count, stats.rows_seen) == (x.min(), x.max(), x.size, 4800)
    assert stats.histogram.sum() == x.size
    edges = stats.bin_edges
    assert edges[0] <= x.min() and x.max() <= edges[-1]
    # The spare room is centred at each growth, so the data spans at least about a third of the grid.
    assert (x.max() - x.min()) / (edges[-1] - edges[0]) > 0.3 or pattern == "constant_first"


def test_stats_row_sample_is_bounded_and_uniform():
    rows = np.arange(3000, dtype=np.float64)[:, None] * np.ones((1, 4))  # row t holds t
    few = stream(TensorStats("logits", keep_rows=100), rows[:60], 4)
    np.testing.assert_array_equal(few.rows, rows[:60])  # fewer than N: every row, in order
    stats = stream(TensorStats("logits", keep_rows=100), rows, 30)
    kept = stats.rows[:, 0]
    assert stats.rows.shape == (100, 4) and len(set(kept)) == 100 and set(kept) <= set(rows[:, 0])
    # A reservoir, not the first N: about half the kept rows come from the second half of the stream.
    assert 30 <= np.sum(kept >= 1500) <= 70
    # N-D tensors keep rows along the last axis.
    cube = stream(TensorStats("seq", keep_rows=5), np.ones((4, 3, 7)), 2)
    assert cube.rows.shape == (5, 7)
    assert TensorStats("plain").rows is None


def test_stats_update_edge_cases():
    stats = TensorStats("x")
    stats.update(np.empty((0, 3)))
    assert (stats.count, stats.min, stats.max) == (0, None, None)
    stats.update(np.zeros(10))
    assert (stats.count, stats.min, stats.max, int(stats.histogram.sum())) == (10, 0.0, 0.0, 10)
    stats.update(np.array([1, 2, 3], np.int32))  # integers are accepted as values
    assert (stats.min, stats.max, stats.count) == (0.0, 3.0, 13)


@pytest.mark.parametrize("make, values, message", [
    (lambda: TensorStats("act"), [1.0, np.nan],
     "TensorStats 'act': values must be finite, found 1 non-finite value(s), e.g. nan"),
    (lambda: TensorStats("act"), [np.inf], "values must be finite"),
    (lambda: TensorStats("act"), ["x"], "values must be real numbers, found dtype <U1"),
    (lambda: TensorStats("act"), np.array([1 + 2j]), "found dtype complex128"),
    (lambda: TensorStats("logits", keep_rows=3), np.ones(4),
     "keep_rows needs rows of at least 2-D values ([batch, classes]), found shape (4,)"),
])
def test_stats_update_errors(make, values, message):
    stats = make()
    stats.update(np.ones((2, 5)))
    with pytest.raises(ValidationError) as info:
        stats.update(values)
    assert message in str(info.value)
    assert stats.count == 10  # a refused batch leaves the statistics as they were


@pytest.mark.parametrize("batches", [[[-1e308, 1e308]], [[0.0], [1e300]]])
def test_stats_range_too_wide_for_the_grid(batches):
    stats = TensorStats("act")
    with pytest.raises(ValidationError, match="TensorStats 'act': values from .* span too many bin widths"):
        for batch in batches:
            stats.update(batch)
    assert stats.count == len(batches) - 1


def test_stats_class_count_must_not_change():
    stats = TensorStats("logits", keep_rows=3)
    stats.update(np.ones((2, 5)))
    with pytest.raises(ValidationError, match="TensorStats 'logits': rows of 4 values after rows of 5"):
        stats.update(np.ones((2, 4)))


@pytest.mark.parametrize("kwargs, message", [
    ({"bins": 1}, "bins must be an integer >= 2, found 1"),
    ({"bins": 8.0}, "found 8.0"),
    ({"keep_rows": 0}, "keep_rows must be None or an integer >= 1, found 0"),
    ({"keep_rows": True}, "found True"),
])
def test_stats_constructor_errors(kwargs, message):
    with pytest.raises(ValidationError, match="TensorStats 'act'") as info:
        TensorStats("act", **kwargs)
    assert message in str(info.value)


# --------------------------------------------------------------------------
# choose_range
# --------------------------------------------------------------------------


def test_squared_error_integral_matches_direct_integration():
    # The MSE method's closed form against a midpoint sum of (clip(round(v)) - v)**2 over [a, b].
    qmin, qmax = -8, 7
    for a, b in [(-20.0, 20.0), (-3.3, 2.9), (6.7, 9.0), (-12.5, -8.6), (0.1, 0.2), (-8.5, 7.5)]:
        v = a + (b - a) * (np.arange(200_000) + 0.5) / 200_000
        direct = np.mean((np.clip(np.round(v), qmin, qmax) - v) ** 2)
        closed = (quantizer._squared_error_antiderivative(b, qmin, qmax)
                  - quantizer._squared_error_antiderivative(a, qmin, qmax)) / (b - a)
        assert closed == pytest.approx(direct, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("bits, signed, symmetric, fmt", [
    (8, True, False, {}),
    (8, True, True, {}),
    (4, True, False, {}),
    (4, False, True, {}),
    (6, True, True, {"power_of_two": True, "narrow_range": True}),
    (3, False, False, {}),
])
def test_mse_range_clips_heavy_tails_and_lowers_the_error(bits, signed, symmetric, fmt):
    x = laplace()
    stats = stream(TensorStats("x"), x, 40)
    ranges = {m: choose_range(stats, m, bits, signed, symmetric, **fmt) for m in ("minmax", "mse")}
    assert ranges["mse"][1] - ranges["mse"][0] < 0.95 * (ranges["minmax"][1] - ranges["minmax"][0])
    errors = {m: measured_mse(x, *r, bits, signed, symmetric, **fmt) for m, r in ranges.items()}
    assert errors["mse"] < (0.95 if bits == 8 else 0.5) * errors["minmax"]
    if symmetric:
        assert ranges["mse"][0] == -ranges["mse"][1]


def test_mse_range_keeps_the_full_range_of_uniform_data():
    # Uniform data has no tails worth clipping at 8 bits: the search keeps (nearly) min/max.
    x = np.random.default_rng(SEED).uniform(-1.0, 3.0, 50_000)
    lo, hi = choose_range(stream(TensorStats("u"), x, 5), "mse", 8, False, False)
    assert lo <= -0.97 and hi >= 2.9


def test_percentile_range():
    x = laplace()
    stats = stream(TensorStats("x"), x, 40)
    width = stats.bin_edges[1] - stats.bin_edges[0]
    lo, hi = choose_range(stats, "percentile", 8, True, False, percentile=99.9)
    assert x.min() < lo and hi < x.max()
    assert abs(lo - np.percentile(x, 0.1)) <= width and abs(hi - np.percentile(x, 99.9)) <= width
    lo, hi = choose_range(stats, "percentile", 8, True, True, percentile=99.0)
    assert lo == -hi and abs(hi - np.percentile(np.abs(x), 99.0)) <= width
    assert choose_range(stats, "percentile", 8, True, False, percentile=100) == (x.min(), x.max())
    lo, hi = choose_range(stats, "percentile", 8, True, True, percentile=100)
    assert hi == np.abs(x).max()
    assert choose_range(stats, "percentile", 8, True, False)[1] < x.max()  # default 99.99


def logits_like(n=2000, classes=10, seed=SEED) -> np.ndarray:
    """Classifier logits: noise plus a confident true class, some rows very confident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.5, (n, classes))
    logits[np.arange(n), rng.integers(0, classes, n)] += rng.normal(6.0, 2.0, n)
    return logits


@pytest.mark.parametrize("bits, signed, symmetric", [(8, True, False), (4, True, False), (4, True, True),
                                                     (3, False, False), (8, False, True)])
def test_cross_entropy_range_is_no_worse_than_minmax(bits, signed, symmetric):
    logits = logits_like()
    stats = stream(TensorStats("logits", keep_rows=len(logits)), logits, 8)
    qmin, qmax = code_range(bits, signed)
    ce = {}
    for method in ("minmax", "cross_entropy"):
        scale, zero_point = quantization_params(*choose_range(stats, method, bits, signed, symmetric), bits, signed,
                                                symmetric)
        ce[method] = softmax_cross_entropy(logits, fake_quantize(logits, scale, zero_point, qmin, qmax))
    assert ce["cross_entropy"] <= ce["minmax"] + 1e-12
    if bits <= 4:
        assert ce["cross_entropy"] < ce["minmax"] - 1e-3


def test_symmetric_and_degenerate_ranges():
    x = laplace(5000) + 2.0
    stats = stream(TensorStats("x", keep_rows=100), x.reshape(-1, 10), 5)
    for method in RANGE_METHODS:
        lo, hi = choose_range(stats, method, 8, True, True)
        assert lo == -hi and hi > 0
    assert choose_range(stats, "minmax", 8, True, True) == (-x.max(), x.max())
    zeros = stream(TensorStats("z", keep_rows=4), np.zeros((20, 3)), 2)
    for method in RANGE_METHODS:
        for symmetric in (False, True):
            assert tuple(map(abs, choose_range(zeros, method, 8, True, symmetric))) == (0.0, 0.0)
    assert RANGE_METHODS == ("minmax", "percentile", "mse", "cross_entropy")


@pytest.mark.parametrize("stats, method, kwargs, message", [
    (None, "minmax", {}, "choose_range: stats must be a TensorStats, found NoneType"),
    ("full", "kl", {}, "choose_range 'x': method must be one of minmax, percentile, mse, cross_entropy, found 'kl'"),
    ("empty", "minmax", {}, "choose_range 'x': no values were observed"),
    ("full", "cross_entropy", {}, "cross_entropy needs rows of logits; collect them with TensorStats(keep_rows=N) "
                                  "or calibrate(keep_rows={'x': N})"),
    ("full", "percentile", {"percentile": 50}, "percentile must be a number in (50, 100], found 50"),
    ("full", "percentile", {"percentile": 100.5}, "found 100.5"),
    ("full", "percentile", {"percentile": "99"}, "found '99'"),
    ("full", "mse", {"bits": 17}, "bits must be an integer in [2, 16], found 17"),
    ("full", "mse", {"power_of_two": "no"}, "power_of_two must be a bool"),
])
def test_choose_range_errors(stats, method, kwargs, message):
    given_stats = {"full": stream(TensorStats("x"), np.arange(10.0), 2), "empty": TensorStats("x"), None: None}[stats]
    args = {"bits": 8, "signed": True, "symmetric": False} | kwargs
    with pytest.raises(ValidationError) as info:
        choose_range(given_stats, method, args.pop("bits"), args.pop("signed"), args.pop("symmetric"), **args)
    assert message in str(info.value)


# --------------------------------------------------------------------------
# bn_range
# --------------------------------------------------------------------------


def test_bn_range_golden():
    gamma = np.array([1.0, -0.5, 2.0])
    beta = np.array([0.0, 1.0, -1.0])
    # beta - 6|gamma| = [-6, -2, -13], beta + 6|gamma| = [6, 4, 11].
    assert bn_range(gamma, beta) == (-13.0, 11.0)
    assert bn_range(gamma, beta, relu=True) == (0.0, 11.0)
    assert bn_range(gamma, beta, relu=True, relu6=True) == (0.0, 6.0)
    assert bn_range(gamma, beta, relu6=True) == (0.0, 6.0)  # ReLU6 is a ReLU
    # n = 3: beta - 3|gamma| = [-3, -0.5, -7], beta + 3|gamma| = [3, 2.5, 5].
    assert bn_range(gamma, beta, n=3) == (-7.0, 5.0)
    # A channel that is negative everywhere gives nothing after a ReLU.
    assert bn_range([0.1], [-5.0], relu=True) == (0.0, 0.0)


@pytest.mark.parametrize("args, kwargs, message", [
    (([1.0, 2.0], [0.0]), {},
     "gamma and beta must be 1-D arrays of the same non-zero length, found shapes (2,) and (1,)"),
    (([], []), {}, "found shapes (0,) and (0,)"),
    (([[1.0]], [[0.0]]), {}, "found shapes (1, 1) and (1, 1)"),
    (([np.nan], [0.0]), {}, "gamma must be finite"),
    (([1.0], [np.inf]), {}, "beta must be finite"),
    (([1.0], [0.0]), {"n": 0}, "n must be a finite number > 0, found 0"),
    (([1.0], [0.0]), {"n": math.inf}, "found inf"),
])
def test_bn_range_errors(args, kwargs, message):
    with pytest.raises(ValidationError, match="bn_range") as info:
        bn_range(*args, **kwargs)
    assert message in str(info.value)


# --------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------


class CountingModel:
    """A float 'model' with two outputs; records the batch sizes it sees."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, batch):
        self.batch_sizes.append(len(batch))
        return {"h": np.tanh(batch) * 3, "logits": batch[:, :4] * 2 - 1, "unused": batch}


def test_calibrate_streams_batches_and_matches_one_shot(tmp_path, monkeypatch):
    monkeypatch.delenv("INTSIM_PROGRESS", raising=False)
    data = np.random.default_rng(SEED).normal(size=(1000, 6))
    path = tmp_path / "data.f64"
    data.tofile(path)
    memmap = np.memmap(path, np.float64, "r", shape=data.shape)
    model = CountingModel()
    stats = calibrate(model, memmap, ["h", "logits"], batch_size=64, keep_rows={"logits": 100})
    assert model.batch_sizes == [64] * 15 + [40]
    one_shot = model(data)
    for name in ("h", "logits"):
        assert (stats[name].min, stats[name].max, stats[name].count) == (
            one_shot[name].min(), one_shot[name].max(), one_shot[name].size)
    assert stats["logits"].rows.shape == (100, 4) and stats["h"].rows is None
    assert set(stats) == {"h", "logits"}
    assert choose_range(stats["logits"], "cross_entropy", 8, True, False)[1] > 0
    assert calibrate(CountingModel(), data, ["h"], batch_size=5000)["h"].count == 6000


def test_progress_bar(capsys, monkeypatch):
    data = np.zeros((1000, 2))
    monkeypatch.setenv("INTSIM_PROGRESS", "1")
    calibrate(CountingModel(), data, ["h"], batch_size=320)
    err = capsys.readouterr().err
    assert err.startswith("\rcalibrating [") and err.endswith("] 1000/1000\n")
    assert "\rcalibrating [#########.....................] 320/1000" in err
    calibrate(CountingModel(), data, ["h"], batch_size=320, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("INTSIM_PROGRESS", "0")
    calibrate(CountingModel(), data, ["h"], batch_size=320)
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("INTSIM_PROGRESS")
    calibrate(CountingModel(), data, ["h"], batch_size=320)  # captured stderr is not a terminal
    assert capsys.readouterr().err == ""


def test_progress_bar_redraws_at_most_ten_times_a_second(capsys, monkeypatch):
    clock = iter(np.arange(0.0, 100.0, 0.01))  # each batch takes 10 ms
    monkeypatch.setattr(progress, "monotonic", lambda: float(next(clock)))
    monkeypatch.setenv("INTSIM_PROGRESS", "1")
    calibrate(CountingModel(), np.zeros((1000, 2)), ["h"], batch_size=5)  # 200 batches in 2 s of clock
    draws = capsys.readouterr().err.split("\r")[1:]
    assert 20 <= len(draws) <= 22 and draws[-1].endswith("1000/1000\n")


@pytest.mark.parametrize("run_batch, data, tensors, kwargs, message", [
    (CountingModel(), np.zeros((0, 3)), ["h"], {}, "calibrate: data has no samples (shape (0, 3))"),
    (CountingModel(), np.float64(1.0), ["h"], {}, "data must be a numpy array (or np.memmap), found float64"),
    (CountingModel(), [[1.0]], ["h"], {}, "found list"),
    (CountingModel(), np.zeros((4, 3)), "h", {}, "tensors must be a list of tensor names, found 'h'"),
    (CountingModel(), np.zeros((4, 3)), [1], {}, "tensors must be a list of tensor names, found [1]"),
    (CountingModel(), np.zeros((4, 3)), [], {}, "tensors must be distinct names, at least one, found []"),
    (CountingModel(), np.zeros((4, 3)), ["h", "h"], {}, "found ['h', 'h']"),
    (CountingModel(), np.zeros((4, 3)), ["h"], {"batch_size": 0}, "batch_size must be an integer >= 1, found 0"),
    (CountingModel(), np.zeros((4, 3)), ["h"], {"keep_rows": {"logits": 3}},
     "keep_rows must map watched tensor names to row counts, found {'logits': 3} for tensors ['h']"),
    (CountingModel(), np.zeros((4, 3)), ["h"], {"keep_rows": {"h": 0}}, "TensorStats 'h': keep_rows must be"),
    (lambda b: [b], np.zeros((4, 3)), ["h"], {}, "run_batch must return a dict of tensor name to array, "
                                                 "found list for samples 0:4"),
    (CountingModel(), np.zeros((10, 3)), ["h", "probs"], {"batch_size": 4},
     "run_batch returned no tensor 'probs' for samples 0:4; it returned ['h', 'logits', 'unused']"),
    (lambda b: {"h": b}, np.where(np.arange(10)[:, None] == 5, np.nan, np.zeros((10, 3))), ["h"],
     {"batch_size": 2}, "calibrate, samples 4:6: TensorStats 'h': values must be finite"),
])
def test_calibrate_errors(run_batch, data, tensors, kwargs, message, monkeypatch):
    monkeypatch.delenv("INTSIM_PROGRESS", raising=False)
    with pytest.raises(ValidationError) as info:
        calibrate(run_batch, data, tensors, **kwargs)
    assert message in str(info.value)
