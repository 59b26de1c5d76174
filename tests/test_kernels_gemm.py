"""Fused fast MAC kernels (kernels.gemm) vs their naive twins, on every ISA this host can run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from intsim import fixedpoint
from intsim.errors import ValidationError
from intsim.fixedpoint import ROUNDING_MODES, Rescale
from intsim.kernels import depthwise, gemm, gemm_chunk, isa, mac, threads
from intsim.kernels.naive import gemm as naive_gemm
from intsim.codes import OVERFLOW_SATURATE, OVERFLOW_WRAP

# The ISA fixture holds for every generated input: it is set once per test.
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
EIGHT_BIT = (np.int8, np.uint8)


def _isa_params():
    """Every ISA the host runs; CI's default selection keeps the portable one and the host's best.

    The ISAs between them (``avx2``, ``avx512bw`` on an AVX-512 VNNI host) recompile every fused kernel
    and cost minutes on a cold numba cache, so they are marked slow: ``python -m pytest
    tests/test_kernels_gemm.py -m "slow or not slow"`` runs them all.
    """
    names = isa.supported_isas()
    kept = {names[0], names[-1]}
    return [pytest.param(name, marks=() if name in kept else pytest.mark.slow) for name in names]


@pytest.fixture(params=_isa_params())
def isa_name(request):
    previous = isa.set_isa(request.param)
    yield request.param
    isa.set_isa(previous)


def assert_same(fast, slow):
    np.testing.assert_array_equal(fast[0], slow[0], strict=True)
    assert fast[1:] == slow[1:]


def dtype_range(dtype):
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


@st.composite
def requant_args(draw, channels, rounding=None):
    """Per-channel requantization arguments under ``rounding`` (any mode if ``None``), any output dtype and clamp."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rounding = draw(st.sampled_from(ROUNDING_MODES)) if rounding is None else rounding
    multiplier_bits = draw(st.sampled_from([31, 15]))
    real = rng.uniform(2.0**-14, draw(st.sampled_from([2.0**-8, 0.9, 3.0])), size=channels)
    rq = Rescale.from_real(real, rounding, multiplier_bits)
    multiplier, shift, scale = rq.kernel_args(channels)
    out_dtype = draw(st.sampled_from(EIGHT_BIT))
    lo, hi = dtype_range(out_dtype)
    clamp_min = draw(st.sampled_from([lo, lo + 3]))
    clamp_max = draw(st.sampled_from([hi, hi - 5]))
    out_zero_point = draw(st.sampled_from([lo, 0, hi]))
    return (multiplier, shift, scale, rq.code, multiplier_bits, out_zero_point, clamp_min, clamp_max,
            np.dtype(out_dtype))


@st.composite
def mac_operands(draw, channels_out, depth_shape):
    """``(rng, x_dtype, x_zero_point, w, w_zero_point, bias)``: zero points at the range ends included."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x_dtype = draw(st.sampled_from(EIGHT_BIT))
    lo, hi = dtype_range(x_dtype)
    x_zero_point = draw(st.one_of(st.sampled_from([lo, hi, 0]), st.integers(lo, hi)))
    w = rng.integers(-128, 127, size=(channels_out,) + depth_shape, dtype=np.int8, endpoint=True)
    # symmetric weights take the uint8 x int8 quads where the ISA has them;
    # large zero points push w - z_w outside int8 and onto the int16 pairs.
    w_zero_point = draw(st.sampled_from([
        np.zeros(channels_out, np.int64),
        rng.integers(-128, 127, size=channels_out, endpoint=True).astype(np.int64),
        np.full(channels_out, -128, np.int64),
    ]))
    bias = rng.integers(-(2**20), 2**20, size=channels_out, dtype=np.int32)
    return rng, x_dtype, x_zero_point, w, w_zero_point, bias


def x_codes(rng, dtype, shape):
    lo, hi = dtype_range(dtype)
    return rng.integers(lo, hi, size=shape, dtype=dtype, endpoint=True)


ACC = (32, OVERFLOW_WRAP, False)


@st.composite
def conv_cases(draw):
    depthwise = draw(st.booleans())
    cin = draw(st.integers(1, 9))
    cout = cin if depthwise else draw(st.integers(1, 37))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    rng, x_dtype, x_zp, w, w_zp, bias = draw(mac_operands(cout, kernel + (1 if depthwise else cin,)))
    n, h, width = draw(st.integers(1, 2)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    strides = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    if h + pads[0] + pads[2] < dilations[0] * (kernel[0] - 1) + 1:
        pads = (pads[0], pads[1], pads[2] + dilations[0] * (kernel[0] - 1), pads[3])
    if width + pads[1] + pads[3] < dilations[1] * (kernel[1] - 1) + 1:
        pads = (pads[0], pads[1], pads[2], pads[3] + dilations[1] * (kernel[1] - 1))
    x = x_codes(rng, x_dtype, (n, h, width, cin))
    args = (x_zp, w, w_zp, bias, strides, dilations, pads, cin if depthwise else 1) + ACC
    return x, args, draw(requant_args(cout))


def run_pair(module, kind, x, args, requant):
    """``(prepared, result)`` of ``module``'s ``kind`` layer; the result counts clamps, and the same
    layer run without the count (FLOAT32_RINT then requantized in registers) must give the same codes."""
    prepared = getattr(module, f"{kind}_prepare")(x.dtype, *args)
    counted = getattr(module, f"{kind}_requantized")(x, prepared, *requant)
    uncounted = getattr(module, f"{kind}_requantized")(x, prepared, *requant, count_clamps=False)
    np.testing.assert_array_equal(uncounted[0], counted[0], strict=True)
    assert uncounted[1:] == counted[1:3] + (None,)
    return prepared, counted


@SETTINGS
@given(case=conv_cases())
def test_conv2d_fused_matches_naive(isa_name, case):
    x, args, requant = case
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    assert prepared.packed is not None or prepared.depthwise is not None
    assert_same(fast, run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


@st.composite
def fc_cases(draw):
    depth, out = draw(st.integers(1, 75)), draw(st.integers(1, 70))
    rng, x_dtype, x_zp, w, w_zp, bias = draw(mac_operands(out, (depth,)))
    x = x_codes(rng, x_dtype, (draw(st.integers(1, 13)), depth))
    return x, (x_zp, w, w_zp, bias) + ACC, draw(requant_args(out))


@SETTINGS
@given(case=fc_cases())
def test_fully_connected_fused_matches_naive(isa_name, case):
    x, args, requant = case
    prepared, fast = run_pair(gemm, "fully_connected", x, args, requant)
    assert prepared.in_place is not None and prepared.packed is None
    assert_same(fast, run_pair(naive_gemm, "fully_connected", x, args, requant)[1])


# Reductions around the vectors of the in-place kernel (64 codes for the quads, 32 for the pairs)
# and their 4- and 16-value groups: K < 16, K not a multiple of 16, 32 or 64, whole vectors.
IN_PLACE_DEPTHS = [1, 3, 4, 15, 16, 17, 31, 32, 33, 63, 64, 65, 95, 127, 128, 129, 200]


@st.composite
def in_place_cases(draw, rounding):
    """Fully-connected layers over int8 weights: 1..9 rows (every 4 x 4, 2 x 8, 1 x 8 tile mix),
    output counts not a multiple of 16, zero points at the range ends."""
    depth = draw(st.one_of(st.sampled_from(IN_PLACE_DEPTHS), st.integers(1, 260)))
    out = draw(st.one_of(st.sampled_from([1, 7, 15, 16, 17, 33, 63, 65]), st.integers(1, 80)))
    rng, x_dtype, _, w, w_zp, bias = draw(mac_operands(out, (depth,)))
    x_zp = draw(st.sampled_from(dtype_range(x_dtype) + (0,)))
    x = x_codes(rng, x_dtype, (draw(st.integers(1, 9)), depth))
    return x, (x_zp, w, w_zp, bias) + ACC, draw(requant_args(out, rounding))


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@SETTINGS
@given(data=st.data())
def test_fully_connected_in_place_matches_naive(isa_name, rounding, monkeypatch, data):
    # Every row count in place (a launcher packs for batches past GEMV_MAX_ROWS; not here).
    monkeypatch.setattr(gemm, "GEMV_MAX_ROWS", 16)
    x, args, requant = data.draw(in_place_cases(rounding))
    prepared = gemm.fully_connected_prepare(x.dtype, *args)
    launcher = gemm.fully_connected_launcher(prepared, *requant)
    fast = launcher(x)
    (_, launch), = launcher.records.values()
    assert prepared.packed is None and isinstance(launch, gemm.InPlaceLaunch)
    assert prepared.in_place.variant == (isa.ISAS[isa_name].quads if isa.ISAS[isa_name].quads is not None
                                         else isa.ISAS[isa_name].pairs)
    assert_same(fast, run_pair(naive_gemm, "fully_connected", x, args, requant)[1])


@pytest.mark.parametrize("x_dtype", EIGHT_BIT)
@pytest.mark.parametrize("w_zero_point", [0, -128, 127])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_fully_connected_in_place_matches_unfused_on_large_layers(isa_name, x_dtype, w_zero_point, rows):
    # EfficientNet-Lite0's classifier (1280 -> 1000) and a reduction with a tail: too large for the
    # naive twin; the unfused kernels are themselves tested against it (test_kernels_mac.py).
    for depth, out in ((1280, 1000), (1000, 70)):
        rng = np.random.default_rng(depth + rows)
        x = x_codes(rng, x_dtype, (rows, depth))
        w, w_zp, bias = _layer(rng, x_dtype, out, depth, (), w_zero_point)
        args = (dtype_range(x_dtype)[1] - 3, w, w_zp, bias) + ACC
        rq = Rescale.from_real(rng.uniform(1e-6, 1e-4, size=out), "float32_rint")
        requant = (*rq.kernel_args(out), rq.code, 31, 3, -128, 127, np.dtype(np.int8))
        prepared, fast = run_pair(gemm, "fully_connected", x, args, requant)
        assert prepared.in_place is not None
        acc, overflow_count, pair_count = mac.fully_connected_acc(x, *args)
        out_codes, saturations = mac.requantize(acc, 0, *requant)
        assert_same(fast, (out_codes, overflow_count, pair_count, saturations))


def _arrays(value, seen=None):
    """Every numpy array reachable from ``value`` through dataclass fields, object attributes,
    tuples, lists and dicts."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return []
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (tuple, list)):
        children = list(value)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        children = list(vars(value).values())
    else:
        children = []
    return [a for child in children for a in _arrays(child, seen)]


def test_fully_connected_in_place_keeps_no_weight_copy(isa_name):
    # The prepared layer and its launcher (after runs at batch 1 and 4) hold the graph's weight
    # array itself and nothing else of its size: only per-channel arrays besides it.  A batch of
    # more rows packs a copy for the faster packed GEMM, once.
    rng = np.random.default_rng(12)
    w, w_zp, bias = _layer(rng, np.uint8, 1000, 1280, (), 0)
    args = (128, w, w_zp, bias) + ACC
    requant = (*Rescale.from_real(np.full(1000, 1e-5), "float32_rint").kernel_args(1000), fixedpoint.FLOAT32_RINT,
               31, 0, 0, 255, np.dtype(np.uint8))
    prepared = gemm.fully_connected_prepare(np.uint8, *args)
    launcher = gemm.fully_connected_launcher(prepared, *requant)
    for rows in (1, 4):
        launcher(x_codes(rng, np.uint8, (rows, 1280)))
    held = _arrays(prepared) + _arrays(launcher)
    assert any(a is w for a in held)
    large = [a for a in held if a.nbytes >= w.nbytes // 8]
    assert large and all(np.shares_memory(a, w) for a in large), [(a.dtype, a.shape) for a in large]
    assert prepared.packed is None
    x = x_codes(rng, np.uint8, (8, 1280))
    assert_same(launcher(x), run_pair(naive_gemm, "fully_connected", x, args, requant)[1])
    assert launcher.batch_packed is not None and not np.shares_memory(launcher.batch_packed.words, w)


@pytest.mark.parametrize("weights", ["uint8", "fortran"])
def test_fully_connected_weights_not_usable_in_place_are_packed(isa_name, weights):
    # uint8 weights (their centred values need packing to int8 or int16) and int8 weights not in C
    # order take the packed GEMV / GEMM launches; the codes are the naive twin's either way.
    rng = np.random.default_rng(6)
    w, w_zp, bias = _layer(rng, np.uint8, 21, 37, (), -128)
    if weights == "uint8":
        w, w_zp = (w.astype(np.int16) + 128).astype(np.uint8), w_zp + 128
    else:
        w = np.asfortranarray(w)
    args = (200, w, w_zp, bias) + ACC
    rq = Rescale.from_real(np.full(21, 1e-3), "double")
    requant = (*rq.kernel_args(21), rq.code, 31, 0, 0, 255, np.dtype(np.uint8))
    prepared = gemm.fully_connected_prepare(np.uint8, *args)
    assert prepared.in_place is None and prepared.packed is not None
    launcher = gemm.fully_connected_launcher(prepared, *requant)
    for rows, launch_type in ((2, gemm.GemvLaunch), (gemm.GEMV_MAX_ROWS + 3, gemm._GemmLaunch)):
        x = x_codes(rng, np.uint8, (rows, 37))
        assert_same(launcher(x), run_pair(naive_gemm, "fully_connected", x, args, requant)[1])
        assert isinstance(launcher.records[x.shape][1], launch_type)


@st.composite
def gemv_cases(draw, rounding):
    """Fully-connected layers of 1..4 rows over uint8 weights (the packed GEMV), odd depth and odd
    output count, input zero point at a range end."""
    depth, out = 2 * draw(st.integers(0, 40)) + 1, 2 * draw(st.integers(0, 40)) + 1
    rng, x_dtype, _, w, w_zp, bias = draw(mac_operands(out, (depth,)))
    x_zp = draw(st.sampled_from(dtype_range(x_dtype)))
    x = x_codes(rng, x_dtype, (draw(st.integers(1, gemm.GEMV_MAX_ROWS)), depth))
    # the same centred values as uint8 codes and zero points
    w, w_zp = (w.astype(np.int16) + 128).astype(np.uint8), w_zp + 128
    return x, (x_zp, w, w_zp, bias) + ACC, draw(requant_args(out, rounding))


@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@SETTINGS
@given(data=st.data())
def test_fully_connected_gemv_matches_naive(isa_name, rounding, data):
    x, args, requant = data.draw(gemv_cases(rounding))
    prepared = gemm.fully_connected_prepare(x.dtype, *args)
    launcher = gemm.fully_connected_launcher(prepared, *requant)
    fast = launcher(x)
    (_, launch), = launcher.records.values()
    assert prepared.packed is not None and isinstance(launch, gemm.GemvLaunch)
    assert_same(fast, run_pair(naive_gemm, "fully_connected", x, args, requant)[1])


def test_fully_connected_beyond_gemv_rows_takes_the_gemm():
    rng = np.random.default_rng(5)
    w = rng.integers(0, 255, size=(9, 7), dtype=np.uint8, endpoint=True)
    args = (3, w, np.full(9, 128, np.int64), rng.integers(-99, 99, size=9, dtype=np.int32)) + ACC
    rq = Rescale.from_real(np.full(9, 0.01), ROUNDING_MODES[0])
    requant = (*rq.kernel_args(9), rq.code, 31, 0, 0, 255, np.dtype(np.uint8))
    x = x_codes(rng, np.uint8, (gemm.GEMV_MAX_ROWS + 1, 7))
    launcher = gemm.fully_connected_launcher(gemm.fully_connected_prepare(x.dtype, *args), *requant)
    fast = launcher(x)
    (_, launch), = launcher.records.values()
    assert isinstance(launch, gemm._GemmLaunch)
    assert_same(fast, run_pair(naive_gemm, "fully_connected", x, args, requant)[1])


@SETTINGS
@given(data=st.data())
def test_matmul_fused_matches_naive(isa_name, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    dtype = data.draw(st.sampled_from(EIGHT_BIT))
    lo, hi = dtype_range(dtype)
    shape = [data.draw(st.integers(1, n)) for n in (2, 9, 40, 35)]
    a = x_codes(rng, dtype, shape[:3])
    b = x_codes(rng, dtype, (shape[0], shape[2], shape[3]))
    zps = [data.draw(st.sampled_from([lo, 0, hi])) for _ in range(2)]
    requant = data.draw(requant_args(1))
    args = (a, zps[0], b, zps[1]) + ACC + requant
    assert_same(gemm.matmul_requantized(*args), naive_gemm.matmul_requantized(*args))


def _layer(rng, x_dtype, cout, cin, kernel, w_zero_point):
    w = rng.integers(-128, 127, size=(cout,) + kernel + (cin,), dtype=np.int8, endpoint=True)
    return w, np.full(cout, w_zero_point, np.int64), rng.integers(-5000, 5000, size=cout, dtype=np.int32)


@pytest.mark.parametrize("x_dtype", EIGHT_BIT)
@pytest.mark.parametrize("w_zero_point", [0, -128])
@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("shape", [
    # (n, h, w, cin, cout, k, stride, pad): full 6 x 64 tiles plus row and block tails,
    # channels not a multiple of the group, the 1x1 path (in place or im2col), strided windows.
    (1, 9, 11, 13, 83, 3, 1, 1),
    (2, 7, 5, 32, 64, 1, 1, 0),
    (1, 12, 9, 6, 70, 3, 2, 1),
    # narrow layers: taller tiles over 1, 2 or 3 blocks, alone or after full-width tiles
    (1, 11, 13, 32, 16, 1, 1, 0),
    (1, 10, 7, 24, 40, 1, 1, 0),
    (1, 9, 9, 5, 110, 3, 1, 1),
])
def test_conv2d_fused_matches_unfused_on_full_tiles(isa_name, x_dtype, w_zero_point, rounding, shape):
    # Shapes too large for the naive twin; the unfused kernels are themselves
    # tested against it (test_kernels_mac.py).
    n, h, width, cin, cout, k, stride, pad = shape
    rng = np.random.default_rng(sum(shape))
    x = x_codes(rng, x_dtype, (n, h, width, cin))
    w, w_zp, bias = _layer(rng, x_dtype, cout, cin, (k, k), w_zero_point)
    lo, hi = dtype_range(x_dtype)
    args = (hi, w, w_zp, bias, (stride, stride), (1, 1), (pad,) * 4, 1) + ACC
    rq = Rescale.from_real(rng.uniform(1e-4, 1e-2, size=cout), rounding)
    requant = (*rq.kernel_args(cout), rq.code, 31, 3, -128, 127, np.dtype(np.int8))
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    assert prepared.packed is not None
    acc, overflow_count, pair_count = mac.conv2d_nhwc_acc(x, *args)
    out, saturations = mac.requantize(acc, 0, *requant)
    assert_same(fast, (out, overflow_count, pair_count, saturations))


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("depthwise", [False, True])
def test_register_epilogue_on_extreme_accumulators(isa_name, rounding, depthwise):
    # Zero weights leave every accumulator at its bias: near int32's ends (as near as the fused
    # path's static bound allows: 2**23 to spare) and 2**k + {-2..2}, under multipliers from 2**-14
    # to 3 (left shifts that saturate 2**30 and beyond) and both ends of multiplier_bits, and from
    # 0.5 to 1 (no shift either way: every tile takes the epilogue's PLAIN form under DOUBLE too,
    # while the wider ranges mix the forms in a tile), from 2**-14 to 2**-8 (DOUBLE's SELECT form:
    # its sign correction, at accumulators -1 and -2 whose products lie just above the rule's
    # threshold; powers of two put -1's product on it) and from 0.1 to 1 (right shifts of 0 and 1 in
    # one layer).  The register epilogue (count_clamps=False) must equal mac.requantize of the same
    # accumulators.
    edges = [INT32_MIN + 2**23, INT32_MAX - 2**23, 0, -1, -2, 1]
    edges += [sign * 2**k + d for k in (8, 15, 16, 24, 30) for d in (-2, -1, 0, 1, 2) for sign in (1, -1)]
    bias = np.array(edges, np.int32)
    channels = bias.size
    rng = np.random.default_rng(channels)
    x = rng.integers(0, 255, size=(1, 3, 5, channels), dtype=np.uint8, endpoint=True)
    kernel = (3, 3) if depthwise else (1, 1)
    w = np.zeros((channels,) + kernel + (1 if depthwise else channels,), np.int8)
    args = (128, w, np.zeros(channels, np.int64), bias, (1, 1), (1, 1), (1, 1, 1, 1), channels if depthwise else 1)
    args += ACC
    powers_of_two = 2.0 ** -rng.integers(1, 14, size=channels)  # multiplier 2**(b-1): -1 gives the threshold
    for multiplier_bits, scales in ((31, rng.uniform(2.0**-14, 3.0, size=channels)),
                                    (31, rng.uniform(2.0**-14, 2.0**-8, size=channels)),
                                    (15, rng.uniform(2.0**-14, 0.9, size=channels)),
                                    (31, rng.uniform(0.5, 0.999, size=channels)),
                                    (31, rng.uniform(0.1, 0.999, size=channels)),
                                    (15, rng.uniform(2.0**-14, 2.0**-8, size=channels)),
                                    (31, powers_of_two), (15, powers_of_two)):
        rq = Rescale.from_real(scales, rounding, multiplier_bits)
        requant = (*rq.kernel_args(channels), rq.code, multiplier_bits, -3, -128, 120, np.dtype(np.int8))
        prepared = gemm.conv2d_nhwc_prepare(x.dtype, *args)
        assert (prepared.depthwise if depthwise else prepared.packed) is not None
        out = gemm.conv2d_nhwc_requantized(x, prepared, *requant, count_clamps=False)[0]
        acc, _, _ = mac.conv2d_nhwc_acc(x, *args)
        np.testing.assert_array_equal(out, mac.requantize(acc, 0, *requant)[0], strict=True)


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("with_unshifted", [False, True])
def test_register_epilogue_rounds_negative_ties_of_double_rounding_away_from_zero(isa_name, depthwise,
                                                                                 with_unshifted):
    # DOUBLE rounds a product by 2**31 (half up), then by 2**r half away from zero: at accumulators
    # -2**r and -2**r - 1 under a multiplier of 2**30 (scale 2**-(r+1)) the first result is exactly
    # -2**(r-1), whose second rounding goes to -1 where a single rounding of the product would give 0;
    # the register epilogue's SELECT form adds its sign correction there.  Channels with no right shift
    # (scale 1/2) in the same layer send their tiles to the GENERAL form (mac.lane_params).
    shifts = range(0 if with_unshifted else 1, 15)
    bias = np.array([b for r in shifts for b in (-(2**r), -(2**r) - 1, 2**r, -3 * 2**r, 1 - 2**r)], np.int32)
    scales = np.array([2.0 ** -(r + 1) for r in shifts for _ in range(5)])
    channels = bias.size
    x = np.full((1, 2, 3, channels), 77, np.uint8)
    kernel = (3, 3) if depthwise else (1, 1)
    w = np.zeros((channels,) + kernel + (1 if depthwise else channels,), np.int8)
    args = (128, w, np.zeros(channels, np.int64), bias, (1, 1), (1, 1), (1, 1, 1, 1), channels if depthwise else 1)
    args += ACC
    rq = Rescale.from_real(scales, "double", 31)
    requant = (*rq.kernel_args(channels), rq.code, 31, 0, -128, 127, np.dtype(np.int8))
    prepared = gemm.conv2d_nhwc_prepare(x.dtype, *args)
    assert (prepared.depthwise if depthwise else prepared.packed) is not None
    out = gemm.conv2d_nhwc_requantized(x, prepared, *requant, count_clamps=False)[0]
    # per r: -1/2, -1/2, 1/2, -3/2 and (1 - 2**(r-1)) / 2**r rounded; with r = 0, floor((x + 1) / 2)
    expected = np.array([v for r in shifts for v in ((-1, -1, 1, -2, 0) if r else (0, -1, 1, -1, 0))], np.int8)
    np.testing.assert_array_equal(out[0, 0, 0], expected, strict=True)
    acc, _, _ = mac.conv2d_nhwc_acc(x, *args)
    np.testing.assert_array_equal(out, mac.requantize(acc, 0, *requant)[0], strict=True)


@pytest.mark.parametrize("x_dtype", EIGHT_BIT)
@pytest.mark.parametrize("w_zero_point", [0, -128])
@pytest.mark.parametrize("shape", [
    # (h, w, channels, kernel, stride, dilation, pad): the compiled-in 3x3 and 5x5 windows with
    # interior and border pixels, channels past one vector plus a tail, and a generic 3x2 window.
    (9, 11, 37, (3, 3), 1, 1, 1),
    (13, 10, 70, (5, 5), 2, 1, 2),
    (12, 12, 19, (3, 3), 1, 2, 0),
    (8, 9, 40, (3, 2), 2, 1, 1),
])
def test_depthwise_fused_matches_unfused(x_dtype, w_zero_point, shape):
    h, width, channels, kernel, stride, dilation, pad = shape
    rng = np.random.default_rng(channels)
    x = x_codes(rng, x_dtype, (2, h, width, channels))
    w, w_zp, bias = _layer(rng, x_dtype, channels, 1, kernel, w_zero_point)
    args = (dtype_range(x_dtype)[0] + 7, w, w_zp, bias, (stride, stride), (dilation, dilation), (pad,) * 4,
            channels) + ACC
    rq = Rescale.from_real(rng.uniform(1e-4, 1e-2, size=channels), "single")
    requant = (*rq.kernel_args(channels), rq.code, 31, 3, -128, 127, np.dtype(np.int8))
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    assert prepared.depthwise is not None
    acc, overflow_count, pair_count = mac.conv2d_nhwc_acc(x, *args)
    out, saturations = mac.requantize(acc, 0, *requant)
    assert_same(fast, (out, overflow_count, pair_count, saturations))


@st.composite
def depthwise_cases(draw):
    """Depthwise layers over the kernel's paths: the compiled-in 3x3 / 5x5 windows at stride 1 and 2 (whole
    tiles of output columns, a tail tile moved left, half tiles, single columns) and any other window, stride
    or dilation tap by tap; channel counts around the 16-lane vector, zero points at the range ends."""
    channels = draw(st.integers(2, 40))  # one channel is a dense conv
    kernel = draw(st.one_of(st.sampled_from([(3, 3), (5, 5)]), st.tuples(st.integers(1, 5), st.integers(1, 5))))
    strides = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    dilations = draw(st.sampled_from([(1, 1), (1, 1), (2, 1), (1, 2), (2, 2)]))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    rng, x_dtype, x_zp, w, w_zp, bias = draw(mac_operands(channels, kernel + (1,)))
    reach_h, reach_w = (dilations[0] * (kernel[0] - 1) + 1, dilations[1] * (kernel[1] - 1) + 1)
    h = draw(st.integers(max(1, reach_h - pads[0] - pads[2]), 12))
    width = draw(st.integers(max(1, reach_w - pads[1] - pads[3]), 26))
    x = x_codes(rng, x_dtype, (draw(st.integers(1, 2)), h, width, channels))
    args = (x_zp, w, w_zp, bias, strides, dilations, pads, channels) + ACC
    return x, args, draw(requant_args(channels))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=depthwise_cases())
def test_depthwise_matches_naive(isa_name, case):
    x, args, requant = case
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    assert prepared.depthwise is not None
    assert_same(fast, run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@pytest.mark.parametrize(("kernel", "stride"), [((3, 3), 1), ((3, 3), 2), ((5, 5), 1), ((5, 5), 2)])
def test_depthwise_rows_of_sevens_match_naive(isa_name, kernel, stride, data):
    # Output rows of 7, 14 or 21 columns run as tiles of 7 (MobileNet's 7x7 and 14x14 layers); 56 as tiles of 8.
    out_w = data.draw(st.sampled_from([7, 14, 21, 56]))
    channels = data.draw(st.sampled_from([16, 21, 48]))
    pad = kernel[1] // 2
    width = (out_w - 1) * stride + kernel[1] - 2 * pad
    rng, x_dtype, x_zp, w, w_zp, bias = data.draw(mac_operands(channels, kernel + (1,)))
    x = x_codes(rng, x_dtype, (data.draw(st.integers(1, 2)), data.draw(st.integers(kernel[0], 6)), width, channels))
    args = (x_zp, w, w_zp, bias, (stride, stride), (1, 1), (pad,) * 4, channels) + ACC
    requant = data.draw(requant_args(channels))
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    assert prepared.depthwise is not None and fast[0].shape[2] == out_w
    assert_same(fast, run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


@st.composite
def stored_weight_cases(draw):
    """Depthwise layers whose ``w - z_w`` reach both ends of int8 (stored as int8) or pass one end (int16):
    channels not a multiple of 16, every window and stride the kernel compiles in plus one run tap by tap,
    activation zero points at the range ends."""
    channels = draw(st.integers(2, 47).filter(lambda c: c % 16))
    kernel, strides = draw(st.sampled_from([((3, 3), (1, 1)), ((3, 3), (2, 2)), ((5, 5), (1, 1)), ((5, 5), (2, 2)),
                                            ((3, 2), (1, 2))]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x_dtype = draw(st.sampled_from(EIGHT_BIT))
    x_zero_point = draw(st.sampled_from(dtype_range(x_dtype)))
    w_zero_point = draw(st.sampled_from([0, 0, 1, -1, -128, 127]))
    w = rng.integers(-128, 127, size=(channels,) + kernel + (1,), dtype=np.int8, endpoint=True)
    w[0, 0, 0, 0], w[-1, -1, -1, 0] = -128, 127  # w - z_w at both ends of its range
    bias = rng.integers(-(2**20), 2**20, size=channels, dtype=np.int32)
    h, width = draw(st.integers(kernel[0], 9)), draw(st.integers(kernel[1], 21))
    x = x_codes(rng, x_dtype, (draw(st.integers(1, 2)), h, width, channels))
    pads = (kernel[0] // 2, kernel[1] // 2) * 2
    args = (x_zero_point, w, np.full(channels, w_zero_point, np.int64), bias, strides, (1, 1), pads, channels) + ACC
    return x, args, draw(requant_args(channels))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=stored_weight_cases())
def test_depthwise_weights_are_stored_narrow_and_widened_exactly(isa_name, case):
    # One byte per tap and channel when every w - z_w fits int8 (z_w = 0 here), two bytes otherwise; the
    # tile sign-extends them on load, so the codes equal the naive twin's either way.
    x, args, requant = case
    w, w_zero_point = args[1], args[2]
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    stored = prepared.depthwise.weights
    fits_int8 = w_zero_point[0] == 0
    assert stored.dtype == (np.int8 if fits_int8 else np.int16)
    taps, padded_channels = w.shape[1] * w.shape[2], -(-w.shape[0] // 16) * 16
    assert stored.shape == (taps * padded_channels,)
    assert_same(fast, run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


@pytest.mark.parametrize(("x_dtype", "x_zero_point", "w_zero_point", "code_dtype"), [
    (np.uint8, 0, 0, np.uint8), (np.int8, -128, 0, np.uint8), (np.uint8, 255, -128, np.int16),
    (np.int8, 127, 127, np.int16),
])
def test_depthwise_codes_follow_the_encoding(isa_name, x_dtype, x_zero_point, w_zero_point, code_dtype):
    # uint8 codes where the ISA has quads and w - z_w fits int8, else int16 codes x - z_x; the
    # multiply-add is always the ISA's pairs variant.
    rng = np.random.default_rng(4)
    w, w_zp, bias = _layer(rng, x_dtype, 20, 1, (3, 3), w_zero_point)
    prepared = gemm.conv2d_nhwc_prepare(x_dtype, x_zero_point, w, w_zp, bias, (1, 1), (1, 1), (1,) * 4, 20, *ACC)
    chosen = isa.ISAS[isa_name]
    assert prepared.depthwise.variant == chosen.pairs
    assert prepared.depthwise.code_dtype == (code_dtype if chosen.quads is not None else np.int16)
    x = x_codes(rng, x_dtype, (1, 10, 19, 20))
    args = (x_zero_point, w, w_zp, bias, (1, 1), (1, 1), (1,) * 4, 20) + ACC
    requant = (*Rescale.from_real(np.full(20, 2e-3), "single").kernel_args(20), fixedpoint.SINGLE, 31, 0,
               *dtype_range(x_dtype), np.dtype(x_dtype))
    assert_same(run_pair(gemm, "conv2d_nhwc", x, args, requant)[1],
                run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


def test_variant_follows_isa_and_encoding(isa_name):
    rng = np.random.default_rng(0)
    chosen = isa.ISAS[isa_name]
    for w_zero_point, expected in ((0, chosen.quads if chosen.quads is not None else chosen.pairs),
                                   (-128, chosen.pairs)):
        w, w_zp, bias = _layer(rng, np.uint8, 16, 8, (1, 1), w_zero_point)
        prepared = gemm.conv2d_nhwc_prepare(np.uint8, 3, w, w_zp, bias, (1, 1), (1, 1), (0,) * 4, 1, *ACC)
        assert prepared.packed.variant == expected


@pytest.mark.parametrize("acc", [(32, OVERFLOW_SATURATE, True), (16, OVERFLOW_SATURATE, False)])
def test_unprovable_layers_keep_the_checked_path(acc):
    # Pairwise int16 saturation, or a bound that does not fit the accumulator:
    # no packing, and the result is still the naive twin's, overflow counts included.
    rng = np.random.default_rng(1)
    x = x_codes(rng, np.uint8, (1, 4, 4, 16))
    w, w_zp, bias = _layer(rng, np.uint8, 8, 16, (3, 3), 0)
    args = (128, w, w_zp, bias, (1, 1), (1, 1), (1,) * 4, 1) + acc
    requant = (*Rescale.from_real(np.full(8, 1e-3), "double").kernel_args(8), fixedpoint.DOUBLE, 31, 0, 0, 255,
               np.dtype(np.uint8))
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    assert prepared.packed is None and prepared.depthwise is None
    slow = run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1]
    assert_same(fast, slow)
    assert fast[1] + fast[2] > 0


def test_int16_activations_keep_the_unfused_path():
    rng = np.random.default_rng(2)
    x = x_codes(rng, np.int16, (3, 10))
    w, w_zp, bias = rng.integers(-3, 3, size=(4, 10)).astype(np.int8), np.zeros(4, np.int64), np.zeros(4, np.int32)
    args = (0, w, w_zp, bias) + ACC
    requant = (*Rescale.from_real(np.full(4, 1e-4), "single").kernel_args(4), fixedpoint.SINGLE, 31, 0, -128, 127,
               np.dtype(np.int8))
    prepared, fast = run_pair(gemm, "fully_connected", x, args, requant)
    assert prepared.packed is None and prepared.in_place is None
    assert_same(fast, run_pair(naive_gemm, "fully_connected", x, args, requant)[1])


def test_set_isa_rejects_unknown_names():
    with pytest.raises(ValidationError, match=r"set_isa: ISA must be one of portable, .* found 'sse9'"):
        isa.set_isa("sse9")


def test_set_isa_rejects_isas_the_host_lacks(monkeypatch):
    monkeypatch.setattr(isa, "HOST_FEATURES", frozenset({"avx2"}))
    with pytest.raises(ValidationError, match=r"ISA 'avx512vnni' needs CPU features avx512bw, avx512f, avx512vnni"):
        isa.set_isa("avx512vnni")
    assert isa.supported_isas() == ["portable", "avx2"]


def test_portable_isa_is_always_supported():
    assert isa.supported_isas()[0] == "portable"
    assert isa.current_isa().name in isa.supported_isas()


@pytest.mark.parametrize("threads", [0, True, 10**6, "2"])
def test_set_threads_rejects_bad_counts(threads):
    with pytest.raises(ValidationError, match=r"set_threads: threads must be an integer in \[1, \d+\]"):
        gemm.set_threads(threads)


@pytest.mark.parametrize("value", ["0", "two", "100000"])
def test_threads_environment_variable_is_checked(monkeypatch, value):
    monkeypatch.setenv("INTSIM_THREADS", value)
    with pytest.raises(ValidationError, match=rf"INTSIM_THREADS must be an integer in \[1, \d+\].*found '{value}'"):
        threads.threads_from_environment()


def test_two_threads_give_the_same_codes():
    # A fresh process: the test session pins NUMBA_NUM_THREADS to 1.
    script = """
import numba
import numpy as np
from intsim.fixedpoint import Rescale
from intsim.kernels import gemm, gemm_chunk, threads as thread_settings
from intsim.kernels.naive import gemm as naive_gemm
thread_settings.MIN_MACS_PER_THREAD = 0  # every layer here splits, small as it is
rng = np.random.default_rng(5)
x = rng.integers(0, 256, size=(2, 9, 8, 12), dtype=np.uint8)
w = rng.integers(-128, 128, size=(20, 3, 3, 12), dtype=np.int8)
args = (100, w, np.zeros(20, np.int64), rng.integers(-999, 999, size=20, dtype=np.int32), (1, 1), (1, 1),
        (1, 1, 1, 1), 1, 32, 1, False)
rq = Rescale.from_real(rng.uniform(1e-3, 1e-2, size=20), "double")
requant = (*rq.kernel_args(20), rq.code, 31, 3, 0, 255, np.dtype(np.uint8))
gemm_chunk.CHUNK_ROWS = 7
slow = naive_gemm.conv2d_nhwc_requantized(x, naive_gemm.conv2d_nhwc_prepare(x.dtype, *args), *requant)
# One launcher, its launch worked out at the first call: set_threads still applies to the next.
launcher = gemm.conv2d_nhwc_launcher(gemm.conv2d_nhwc_prepare(x.dtype, *args), *requant)
for threads in (1, 2, 1):
    gemm.set_threads(threads)
    fast = launcher(x)
    assert numba.get_num_threads() == 2 or threads == 1
    np.testing.assert_array_equal(fast[0], slow[0], strict=True)
    assert fast[1:] == slow[1:]
gemm.set_threads(2)
# a depthwise layer: its output rows in two runs, each with its own ring of input rows
w = rng.integers(-128, 128, size=(12, 5, 5, 1), dtype=np.int8)
args = (100, w, np.zeros(12, np.int64), rng.integers(-999, 999, size=12, dtype=np.int32), (1, 1), (1, 1),
        (2, 2, 2, 2), 12, 32, 1, False)
requant = (*Rescale.from_real(rng.uniform(1e-3, 1e-2, size=12), "double").kernel_args(12), rq.code, 31, 3, 0, 255,
           np.dtype(np.uint8))
fast = gemm.conv2d_nhwc_requantized(x, gemm.conv2d_nhwc_prepare(x.dtype, *args), *requant)
slow = naive_gemm.conv2d_nhwc_requantized(x, naive_gemm.conv2d_nhwc_prepare(x.dtype, *args), *requant)
np.testing.assert_array_equal(fast[0], slow[0], strict=True)
assert fast[1:] == slow[1:]
# a fully-connected layer over its int8 weights in place: 150 outputs in three chunks of 64
w = rng.integers(-128, 128, size=(150, 70), dtype=np.int8)
args = (100, w, np.zeros(150, np.int64), rng.integers(-999, 999, size=150, dtype=np.int32), 32, 1, False)
requant = (*Rescale.from_real(rng.uniform(1e-3, 1e-2, size=150), "double").kernel_args(150), rq.code, 31, 3, 0,
           255, np.dtype(np.uint8))
x = rng.integers(0, 256, size=(5, 70), dtype=np.uint8)
prepared = gemm.fully_connected_prepare(x.dtype, *args)
assert prepared.in_place is not None
fast = gemm.fully_connected_requantized(x, prepared, *requant)
slow = naive_gemm.fully_connected_requantized(x, naive_gemm.fully_connected_prepare(x.dtype, *args), *requant)
np.testing.assert_array_equal(fast[0], slow[0], strict=True)
assert fast[1:] == slow[1:]
print("same")
"""
    env = dict(os.environ, NUMBA_NUM_THREADS="2", INTSIM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "same"


@pytest.mark.parametrize("kind, kernel", [("conv2d_nhwc", (3, 3)), ("conv2d_nhwc", (1, 1)),
                                          ("conv2d_nhwc", "depthwise"), ("fully_connected", None)])
def test_one_launcher_serves_every_batch_size(isa_name, kind, kernel):
    # A launcher works its launch out once per input shape and keeps it: batch sizes in any
    # order (the fully-connected GEMV and GEMM among them) give the naive codes every time.
    rng = np.random.default_rng(11)
    cin, cout = (6, 6) if kernel == "depthwise" else (6, 20)
    if kind == "fully_connected":
        w, w_zp, bias = _layer(rng, np.uint8, cout, cin, (), 0)
        args, shapes = (7, w, w_zp, bias) + ACC, [(1, cin), (9, cin), (3, cin), (9, cin)]
    else:
        w, w_zp, bias = _layer(rng, np.uint8, cout, 1 if kernel == "depthwise" else cin,
                               (3, 3) if kernel == "depthwise" else kernel, 0)
        groups = cin if kernel == "depthwise" else 1
        args, shapes = (7, w, w_zp, bias, (1, 1), (1, 1), (1, 1, 0, 0), groups) + ACC, [
            (1, 5, 4, cin), (3, 5, 4, cin), (1, 5, 4, cin), (2, 7, 3, cin)]
    requant = (*Rescale.from_real(np.full(cout, 3e-3), "double").kernel_args(cout), fixedpoint.DOUBLE, 31, 0, 0, 255,
               np.dtype(np.uint8))
    launcher = getattr(gemm, f"{kind}_launcher")(getattr(gemm, f"{kind}_prepare")(np.uint8, *args), *requant)
    for shape in shapes:
        x = x_codes(rng, np.uint8, shape)
        assert_same(launcher(x), run_pair(naive_gemm, kind, x, args, requant)[1])
    assert sorted(launcher.records) == sorted(set(shapes))


@pytest.mark.parametrize("pads", [(0, 0, 1, 2), (1, 0, 0, 0), (0, 0, 0, 0)])
def test_pointwise_conv_with_padding_matches_naive(isa_name, pads):
    # A 1x1 stride-1 conv reads the input rows in place only when nothing is padded.
    rng = np.random.default_rng(3)
    x = x_codes(rng, np.uint8, (1, 3, 4, 8))
    w, w_zp, bias = _layer(rng, np.uint8, 5, 8, (1, 1), 0)
    args = (7, w, w_zp, bias, (1, 1), (1, 1), pads, 1) + ACC
    requant = (*Rescale.from_real(np.full(5, 3e-3), "double").kernel_args(5), fixedpoint.DOUBLE, 31, 0, 0, 255,
               np.dtype(np.uint8))
    assert_same(run_pair(gemm, "conv2d_nhwc", x, args, requant)[1],
                run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


def _launch_of(prepared, x, requant, count_clamps=True):
    """``(padded_shape, taps, settings as a dict)`` of the GEMM launch of a prepared conv over ``x``."""
    launcher = gemm.conv2d_nhwc_launcher(prepared, *requant, count_clamps=count_clamps)
    launcher(x)
    (_, _, launch), = launcher.records.values()
    settings = dict(zip(gemm_chunk.GEMM_SETTINGS, launch.settings.tolist()))
    return launch.padded_shape, launch.taps, settings


@st.composite
def implicit_conv_cases(draw):
    """Dense KxK convs (or strided 1x1) of the implicit GEMM, with chunks that end inside row tiles."""
    cin, cout = draw(st.sampled_from([1, 2, 3, 4, 5, 8, 12])), draw(st.integers(1, 20))
    kernel = draw(st.sampled_from([(3, 3), (1, 3), (2, 1), (5, 5), (1, 1)]))
    rng, x_dtype, x_zp, w, w_zp, bias = draw(mac_operands(cout, kernel + (cin,)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    if kernel == (1, 1):
        strides = (strides[0], strides[1] + 1)
    dilations = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    n = draw(st.integers(1, 3))
    h = draw(st.integers(max(1, dilations[0] * (kernel[0] - 1) + 1 - pads[0] - pads[2]), 9))
    width = draw(st.integers(max(1, dilations[1] * (kernel[1] - 1) + 1 - pads[1] - pads[3]), 9))
    x = x_codes(rng, x_dtype, (n, h, width, cin))
    args = (x_zp, w, w_zp, bias, strides, dilations, pads, 1) + ACC
    return x, args, draw(requant_args(cout)), draw(st.sampled_from([5, 7, 96]))


@SETTINGS
@given(case=implicit_conv_cases())
def test_implicit_conv_matches_naive(isa_name, monkeypatch, case):
    x, args, requant, chunk_rows = case
    monkeypatch.setattr(gemm_chunk, "CHUNK_ROWS", chunk_rows)
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    kernel_taps = args[1].shape[1] * args[1].shape[2]
    assert prepared.packed.taps == kernel_taps
    assert_same(fast, run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


@pytest.mark.parametrize("x_dtype", EIGHT_BIT)
@pytest.mark.parametrize("w_zero_point", [0, -128])
@pytest.mark.parametrize("rounding", ROUNDING_MODES)
@pytest.mark.parametrize("shape", [
    # (n, h, w, cin, cout, kernel, stride, dilation, pads): an RGB stem (3 -> 4 channels per
    # pixel, stride 2, pads only after), 64 channels over full 6 x 64 tiles and a block
    # tail with dilated columns (one tap per window pixel), a 5x5 with dilated rows (one
    # tap per window row), a strided 1x1 read in place, a grayscale stem (1 -> 4 channels per pixel).
    (1, 23, 21, 3, 32, (3, 3), (2, 2), (1, 1), (0, 0, 1, 1)),
    (2, 11, 9, 1, 16, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
    (2, 9, 13, 64, 80, (3, 3), (1, 1), (1, 2), (1, 2, 1, 2)),
    (1, 14, 12, 8, 24, (5, 5), (1, 2), (2, 1), (2, 1, 3, 2)),
    (3, 9, 10, 16, 40, (1, 1), (2, 2), (1, 1), (0, 0, 0, 0)),
])
def test_implicit_conv_matches_unfused_on_full_tiles(isa_name, x_dtype, w_zero_point, rounding, shape):
    n, h, width, cin, cout, kernel, strides, dilations, pads = shape
    rng = np.random.default_rng(h * width + cin)
    x = x_codes(rng, x_dtype, (n, h, width, cin))
    w, w_zp, bias = _layer(rng, x_dtype, cout, cin, kernel, w_zero_point)
    args = (dtype_range(x_dtype)[1] - 9, w, w_zp, bias, strides, dilations, pads, 1) + ACC
    rq = Rescale.from_real(rng.uniform(1e-4, 1e-2, size=cout), rounding)
    requant = (*rq.kernel_args(cout), rq.code, 31, 3, -128, 127, np.dtype(np.int8))
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    # The implicit GEMM reads the input where it lies only when that is the quads' form (uint8
    # codes, or int8 codes the micro-kernel flips to x + 128; whole groups per pixel, no padding),
    # else one copy per call.
    in_place = w_zero_point == 0 and isa.ISAS[isa_name].quads is not None
    padded_shape = _launch_of(prepared, x, requant)[0]
    assert (padded_shape is None) == (in_place and pads == (0,) * 4)
    acc, overflow_count, pair_count = mac.conv2d_nhwc_acc(x, *args)
    out, saturations = mac.requantize(acc, 0, *requant)
    assert_same(fast, (out, overflow_count, pair_count, saturations))


@pytest.mark.parametrize("x_dtype", EIGHT_BIT)
def test_implicit_conv_copies_the_input_only_where_it_must(isa_name, x_dtype):
    # 8-bit codes with whole groups per pixel and no padding are read where they lie under the quads
    # (int8 codes flipped to x + 128 in the micro-kernel); padding or the int16 pairs need one copy per call.
    rng = np.random.default_rng(8)
    x = x_codes(rng, x_dtype, (1, 6, 7, 8))
    requant = (*Rescale.from_real(np.full(4, 3e-3), "double").kernel_args(4), fixedpoint.DOUBLE, 31, 0, 0, 255,
               np.dtype(np.uint8))
    quads = isa.ISAS[isa_name].quads is not None
    for w_zero_point, pads, expected in ((0, (0,) * 4, not quads), (0, (1,) * 4, True), (-128, (0,) * 4, True)):
        w, w_zp, bias = _layer(rng, x_dtype, 4, 8, (3, 3), w_zero_point)
        args = (7, w, w_zp, bias, (1, 1), (1, 1), pads, 1) + ACC
        prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
        assert (_launch_of(prepared, x, requant)[0] is not None) == expected
        assert_same(fast, run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


@pytest.mark.parametrize("rounding", ["double", "single"])
@pytest.mark.parametrize("x_zero_point", [-37, 127])
@pytest.mark.parametrize(("cin", "kernel", "pads", "copied"), [
    # (input channels, kernel, pads, whether the GEMM reads a copy under the quads)
    (16, (1, 1), (0, 0, 0, 0), False),
    (6, (1, 1), (0, 0, 0, 0), True),
    (8, (3, 3), (1, 1, 1, 1), True),
    (12, (3, 3), (0, 2, 1, 0), True),
])
def test_int8_codes_flipped_in_the_micro_kernel_match_naive(isa_name, rounding, x_zero_point, cin, kernel, pads,
                                                            copied):
    # int8 activations reach the uint8 quads raw: read in place, or copied raw with the zero point as
    # the border, and flipped to x + 128 in the tile.  Per-channel weight zero points and scales; codes
    # at both ends of int8 included.
    rng = np.random.default_rng(cin + kernel[0])
    cout = 70
    x = x_codes(rng, np.int8, (2, 5, 7, cin))
    x.reshape(-1)[:4] = [-128, 127, -128, 127]
    w = rng.integers(-100, 100, size=(cout,) + kernel + (cin,), dtype=np.int8, endpoint=True)
    w_zp = rng.integers(-27, 27, size=cout, endpoint=True).astype(np.int64)
    bias = rng.integers(-5000, 5000, size=cout, dtype=np.int32)
    args = (x_zero_point, w, w_zp, bias, (1, 1), (1, 1), pads, 1) + ACC
    rq = Rescale.from_real(rng.uniform(1e-4, 1e-2, size=cout), rounding)
    requant = (*rq.kernel_args(cout), rq.code, 31, 5, -128, 127, np.dtype(np.int8))
    prepared, fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    quads = isa.ISAS[isa_name].quads is not None
    assert prepared.packed.variant == (isa.ISAS[isa_name].quads if quads else isa.ISAS[isa_name].pairs)
    assert (_launch_of(prepared, x, requant)[0] is not None) == (copied or not quads)
    assert_same(fast, run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


@pytest.mark.parametrize("x_shape", [(0, 5, 5, 4), (1, 1, 5, 4), (2, 5, 1, 4)])
def test_implicit_conv_of_an_empty_output(x_shape):
    # No batch, or an input smaller than the strided window: no output rows, nothing to copy.
    rng = np.random.default_rng(9)
    w, w_zp, bias = _layer(rng, np.uint8, 4, 4, (3, 3), 0)
    args = (3, w, w_zp, bias, (5, 5), (1, 1), (1, 0, 0, 0), 1) + ACC
    requant = (*Rescale.from_real(np.full(4, 3e-3), "double").kernel_args(4), fixedpoint.DOUBLE, 31, 0, 0, 255,
               np.dtype(np.uint8))
    x = x_codes(rng, np.uint8, x_shape)
    fast = run_pair(gemm, "conv2d_nhwc", x, args, requant)[1]
    assert fast[0].size == 0
    assert_same(fast, run_pair(naive_gemm, "conv2d_nhwc", x, args, requant)[1])


def _taps_tile(variant, blocks):
    """A fresh (uncached) function running one tile of ``variant`` over ``blocks`` blocks (0: the full
    width) and the rows isa.tile_rows gives them, summed over taps."""
    from numba import njit

    from intsim.kernels.microkernel import mac_tile_taps

    @njit
    def tile(a, a_rows, taps, w, groups, c0, c):
        mac_tile_taps(variant, 0, blocks, a, a_rows, 1, taps, w, 0, groups, c0, 0, c, 0, c.shape[1])

    return tile


@pytest.mark.parametrize("taps", [[5, 0, 17], [3], []])
def test_mac_tile_taps_sums_every_tap_of_every_row(isa_name, taps):
    # Rows at unequal distances (a tile that crosses the end of an output row), taps in any
    # order; no taps at all leaves c0.  Every tile shape: the full width and the taller,
    # narrower tiles of the blocks a layer leaves over.  The expected sums are plain int64 arithmetic.
    chosen = isa.ISAS[isa_name]
    rng = np.random.default_rng(len(taps))
    for variant in {chosen.pairs, chosen.quads} - {None}:
        for width in range(isa.TILE_BLOCKS[variant] + 1):
            _check_taps_tile(rng, variant, width, taps)


def _check_taps_tile(rng, variant, width, taps):
    group, groups = isa.GROUP[variant], 3
    blocks = width or isa.TILE_BLOCKS[variant]
    rows = isa.tile_rows(variant, blocks)
    narrow = np.int16 if group == 2 else np.int8
    a_codes = (rng.integers(-255, 256, size=(40, group)) if group == 2
               else rng.integers(0, 256, size=(40, group))).astype(np.int16 if group == 2 else np.uint8)
    w_codes = rng.integers(-128, 128, size=(blocks, len(taps) * groups, 16, group)).astype(narrow)
    a_rows = np.concatenate([[99], rng.integers(0, 21, size=rows)]).astype(np.int64)
    c0 = rng.integers(-1000, 1000, size=16 * blocks).astype(np.int32)
    expected = np.tile(c0.astype(np.int64), (rows, 1))
    for r in range(rows):
        for t, tap in enumerate(taps):
            a_run = a_codes[a_rows[1 + r] + tap:a_rows[1 + r] + tap + groups].astype(np.int64)
            w_run = w_codes[:, t * groups:(t + 1) * groups].astype(np.int64)
            expected[r] += np.einsum("gq,bgjq->bj", a_run, w_run).reshape(-1)
    tile = _taps_tile(variant, width)
    sources = [a_codes.reshape(-1).view(np.int32)]
    if group == 4:  # the int8 codes x = code - 128 as uint32 words, which the tile flips back to the codes
        sources.append((a_codes.astype(np.int16) - 128).astype(np.int8).reshape(-1).view(np.uint32))
    for source in sources:
        c = np.zeros((rows, 16 * blocks), np.int32)
        tile(source, a_rows, np.array(taps, np.int64), w_codes.reshape(-1).view(np.int32), groups, c0, c)
        np.testing.assert_array_equal(c, expected.astype(np.int32), strict=True)


def _row_dots_tile(variant, rows, outs):
    """A fresh (uncached) function adding one ``rows`` x ``outs`` tile of row dot products into ``acc``."""
    from numba import njit

    from intsim.kernels.rowdot import row_dots

    @njit
    def tile(codes, w, o0, depth, lead, acc):
        row_dots(variant, rows, outs, codes, 0, codes.shape[1], w, o0, w.shape[0], depth, lead, acc, o0,
                 acc.shape[1])

    return tile


@pytest.mark.parametrize("rows, outs", [(4, 4), (2, 8), (1, 8), (1, 16), (8, 1)])
def test_row_dots_add_every_row_times_every_weight_row(isa_name, rows, outs):
    # Depths around the vector (64 codes for quads, 32 for pairs) and a tile that runs past the
    # last weight row (it reads that row again); the sums are added to what acc held.  The
    # expected sums are plain int64 arithmetic.
    chosen = isa.ISAS[isa_name]
    rng = np.random.default_rng(rows * 100 + outs)
    for variant in {chosen.pairs, chosen.quads} - {None}:
        step = 16 * isa.GROUP[variant]
        tile = _row_dots_tile(variant, rows, outs)
        for depth, lead in ((1, 0), (5, 0), (31, 0), (32, 0), (33, 0), (63, 0), (64, 0), (65, 0), (130, 0),
                            (1, 3), (5, step - 5), (5, step - 3), (64, 16), (64, step - 1), (130, 7)):
            n_out = 13
            # the weights inside a larger array: the runs that start ``lead`` bytes before a row
            # (and end past it) are masked to the row, whatever lies around it
            around = rng.integers(-128, 128, size=n_out * depth + 2 * step, dtype=np.int8)
            w = around[step:step + n_out * depth].reshape(n_out, depth)
            stride = -(-(lead + depth) // step) * step
            codes = (rng.integers(0, 256, size=(rows, stride)).astype(np.uint8) if isa.GROUP[variant] == 4
                     else rng.integers(-510, 511, size=(rows, stride)).astype(np.int16))
            for o0 in (0, 8):
                acc = rng.integers(-99, 99, size=(rows, 32)).astype(np.int32)
                expected = acc.astype(np.int64)
                for o in range(outs):
                    row = w[min(o0 + o, n_out - 1)].astype(np.int64)
                    expected[:, o0 + o] += codes[:, lead:lead + depth].astype(np.int64) @ row
                tile(codes, w, o0, depth, lead, acc)
                np.testing.assert_array_equal(acc, expected.astype(np.int32), strict=True)


def _one_tile(variant):
    """A fresh (uncached) function running one 1-row x 16-channel tile of ``variant`` over two groups."""
    from numba import njit

    from intsim.kernels.microkernel import mac_tile

    @njit
    def tile(a, w, c0, c):
        mac_tile(variant, 1, 1, a, 0, 2, w, 0, 2, c0, 0, c, 0, 16)

    return tile


@pytest.mark.parametrize("host_has_it", [True, False])
def test_variants_the_host_lacks_compile_to_portable_ir(monkeypatch, host_has_it):
    from intsim.kernels import microkernel

    if host_has_it and not isa.VARIANT_FEATURES[isa.VNNI_QUADS] <= isa.HOST_FEATURES:
        pytest.skip("this host has no AVX-512 VNNI")
    if not host_has_it:
        monkeypatch.setattr(microkernel, "HOST_FEATURES", frozenset())
    rng = np.random.default_rng(4)
    a_codes = rng.integers(0, 256, size=8, dtype=np.uint8)
    w_codes = rng.integers(-128, 128, size=(2, 16, 4), dtype=np.int8)
    c = np.zeros(16, np.int32)
    tile = _one_tile(isa.VNNI_QUADS)
    tile(a_codes.view(np.int32), w_codes.reshape(-1).view(np.int32), np.arange(16, dtype=np.int32), c)
    expected = np.arange(16) + np.einsum("gq,gjq->j", a_codes.reshape(2, 4).astype(np.int64),
                                         w_codes.astype(np.int64))
    np.testing.assert_array_equal(c, expected.astype(np.int32), strict=True)
    assert ("vpdpbusd" in tile.inspect_llvm(tile.signatures[0])) == host_has_it
    # The same codes as raw int8 words, flipped in the tile: by vpxord only where the host has AVX-512.
    flipped = np.zeros(16, np.int32)
    tile((a_codes.astype(np.int16) - 128).astype(np.int8).view(np.uint32), w_codes.reshape(-1).view(np.int32),
         np.arange(16, dtype=np.int32), flipped)
    np.testing.assert_array_equal(flipped, c, strict=True)
    assert ("vpxord" in tile.inspect_llvm(tile.signatures[1])) == host_has_it


@pytest.mark.parametrize("out_dtype, out_zero_point", [(np.uint16, 65535), (np.int16, -32768), (np.int16, 32767),
                                                       (np.uint8, 255)])
@pytest.mark.parametrize("scale", [1.0, 2.0**7, 0.999999])
def test_float32_lane_requantization_at_its_edges(out_dtype, out_zero_point, scale):
    # FLOAT32_RINT requantizes in float32 lanes when the zero point and clamp fit 2**16: sums
    # r + z past 2**24 round in float32, results past int32 saturate in the definition; both
    # must land on the same clamp as the naive twin's exact integers.
    edges = [s * 2**i + d for i in (23, 24, 25, 30, 31) for s in (1, -1) for d in range(-3, 4)]
    acc = np.array([[e] for e in edges if INT32_MIN <= e <= INT32_MAX] + [[v] for v in range(-70000, 70001, 997)],
                   np.int64).astype(np.int32)
    lo, hi = dtype_range(out_dtype)
    args = dict(acc=acc, acc_zero_point=0, multiplier=np.array([2**30]), shift=np.array([1]),
                scale=np.array([scale]), rounding=fixedpoint.FLOAT32_RINT, multiplier_bits=31,
                out_zero_point=out_zero_point, clamp_min=lo, clamp_max=hi, out_dtype=out_dtype)
    from intsim.kernels.naive import mac as naive_mac

    assert_same(mac.requantize(**args), naive_mac.requantize(**args))
    assert max(abs(out_zero_point), abs(lo), abs(hi)) <= mac.LANES_LIMIT


def _rint_tile(variant, taps_form):
    """A fresh (uncached) function running the requantized tile of ``variant`` over zero groups (it holds c0)."""
    from numba import njit

    from intsim.kernels.microkernel import mac_tile_rint, mac_tile_taps_rint

    @njit
    def tile(c0, scale32, lo, hi, zero_point, valid_rows, valid_channels, out):
        # out [rows + 1, channels]: the tile is written from its second row on.
        a, w, stride = np.zeros(1, np.int32), np.zeros(1, np.int32), out.shape[1]
        if taps_form:
            return mac_tile_taps_rint(variant, 0, 0, a, np.zeros(16, np.int64), 0, np.zeros(1, np.int64), w, 0, 0,
                                      c0, 0, scale32, lo, hi, zero_point, valid_rows, valid_channels,
                                      out.reshape(out.size), stride, stride)
        return mac_tile_rint(variant, 0, 0, a, 0, 0, w, 0, 0, c0, 0, scale32, lo, hi, zero_point, valid_rows,
                             valid_channels, out.reshape(out.size), stride, stride)

    return tile


@pytest.mark.parametrize("taps_form", [True, False])
@pytest.mark.parametrize("out_dtype, out_zero_point, clamp", [
    (np.uint8, 0, (0, 255)), (np.uint8, 255, (0, 255)), (np.int8, -128, (-128, 127)), (np.int8, 127, (-128, 127)),
    (np.uint8, 17, (17, 40)), (np.int8, -128, (-128, -70)), (np.int16, -32768, (-32768, 32767)),
])
def test_requantizing_tile_matches_the_naive_requantization(isa_name, taps_form, out_dtype, out_zero_point, clamp):
    # With no groups the tile's accumulators are its start values: edge sums around 2**24
    # and 2**31 and a random batch, per-channel float32 scales, zero points at the range
    # ends, ReLU6-like clamps.  Only the valid rows and channels are written (the rest keep
    # their sentinel).
    chosen = isa.ISAS[isa_name]
    rng = np.random.default_rng(abs(out_zero_point) + clamp[1] - clamp[0])
    edges = [s * 2**i + d for i in (0, 7, 23, 24, 25, 30, 31) for s in (1, -1) for d in range(-2, 3)]
    edges = [e for e in edges if INT32_MIN <= e <= INT32_MAX]
    from intsim.kernels.naive import mac as naive_mac

    for variant in {chosen.pairs, chosen.quads} - {None}:
        rows, channels = isa.TILE_ROWS[variant], 16 * isa.TILE_BLOCKS[variant]
        scale = rng.choice([1.0, 2.0**-7, 0.999999, 3e-3, 1e-5], size=channels)
        real_rows = [rng.choice(edges + list(rng.integers(-70000, 70001, size=8)), size=channels)
                     for _ in range(rows)]
        tile = _rint_tile(variant, taps_form)
        for valid_rows, valid_channels in [(rows, channels), (rows - 1, channels - 5), (1, 1), (0, channels)]:
            for row in real_rows:  # every tile row holds the same start values c0: one row per call
                c0 = np.asarray(row, np.int64).astype(np.int32)
                out = np.full((rows + 1, channels), 99, out_dtype)
                tile(c0, scale.astype(np.float32), clamp[0] - out_zero_point, clamp[1] - out_zero_point,
                     out_zero_point, valid_rows, valid_channels, out)
                expected, _ = naive_mac.requantize(
                    np.tile(c0.astype(np.int64)[:valid_channels], (valid_rows, 1)), 0, np.ones(valid_channels, np.int64),
                    np.zeros(valid_channels, np.int64), scale[:valid_channels], fixedpoint.FLOAT32_RINT, 31,
                    out_zero_point, *clamp, out_dtype)
                sentinel = np.full((rows + 1, channels), 99, out_dtype)
                sentinel[1 + np.arange(valid_rows)[:, None], np.arange(valid_channels)] = expected
                np.testing.assert_array_equal(out, sentinel, strict=True)


def test_chunks_are_padded_per_tile_shape_not_to_a_common_multiple():
    # VNNI quads: full tiles of 6 rows x 4 blocks, leftover blocks in one taller tile (3 blocks: 8 rows).
    # 8 rows over 63 blocks: full tiles end at row 12, the tall tile at row 8, so 12 (a common multiple
    # of 6 and 8 would make it 24, three times the rows of a batch-8 fully-connected layer).
    assert gemm_chunk.padded_rows(isa.VNNI_QUADS, 63, 8) == 12
    assert gemm_chunk.padded_rows(isa.VNNI_QUADS, 3, 8) == 8
    assert gemm_chunk.padded_rows(isa.VNNI_QUADS, 3, 9) == 16
    assert gemm_chunk.padded_rows(isa.VNNI_QUADS, 4, 8) == 12
    assert gemm_chunk.padded_rows(isa.VNNI_QUADS, 63, 96) == 96


@pytest.mark.parametrize("clamp, in_registers", [((0, 255), True), ((-70000, 255), False)])
def test_float32_rint_is_requantized_in_registers_only_without_the_clamp_count(clamp, in_registers):
    # The register epilogue counts no clamps, so a launcher that counts them takes the int32
    # tile; one that does not takes the registers, within the 32-bit lanes' bounds (2**16).
    rng = np.random.default_rng(11)
    x = rng.integers(0, 256, size=(1, 5, 7, 8), dtype=np.uint8)
    w = rng.integers(-128, 128, size=(24, 1, 1, 8), dtype=np.int8)
    args = (3, w, np.zeros(24, np.int64), rng.integers(-999, 999, size=24, dtype=np.int32), (1, 1), (1, 1),
            (0, 0, 0, 0), 1) + ACC
    requant = (np.ones(24, np.int64), np.zeros(24, np.int64), rng.uniform(1e-3, 1e-2, size=24),
               fixedpoint.FLOAT32_RINT, 31, 7, *clamp, np.dtype(np.int32))
    prepared = gemm.conv2d_nhwc_prepare(x.dtype, *args)
    assert _launch_of(prepared, x, requant)[2]["in_registers"] == 0
    assert _launch_of(prepared, x, requant, count_clamps=False)[2]["in_registers"] == in_registers
    run_pair(gemm, "conv2d_nhwc", x, args, requant)


@pytest.mark.parametrize("kernel, in_registers", [((3, 3), True), ((5, 5), True), ((3, 2), False)])
def test_depthwise_float32_rint_in_registers_for_its_compiled_windows(kernel, in_registers):
    # The depthwise tiles requantize in registers for the compiled-in windows (3x3, 5x5) when no
    # clamp count is asked for; tap-by-tap windows keep the int32 row of accumulators.
    rng = np.random.default_rng(13)
    x = rng.integers(0, 256, size=(1, 6, 9, 20), dtype=np.uint8)
    w, w_zp, bias = _layer(rng, np.uint8, 20, 1, kernel, 0)
    args = (5, w, w_zp, bias, (1, 1), (1, 1), (1, 1, 1, 1), 20) + ACC
    requant = (np.ones(20, np.int64), np.zeros(20, np.int64), rng.uniform(1e-3, 1e-2, size=20),
               fixedpoint.FLOAT32_RINT, 31, 9, 0, 255, np.dtype(np.uint8))
    prepared, _ = run_pair(gemm, "conv2d_nhwc", x, args, requant)
    flags = {key[-1]: dict(zip(depthwise.SETTINGS, settings.tolist()))["in_registers"]
             for key, settings in prepared.depthwise.launches.items()}
    assert flags == {True: 0, False: in_registers}
