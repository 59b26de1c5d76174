"""onnxruntime's QLinearMul and QLinearAveragePool: kernels against their naive twins and a live onnxruntime.

Both ops compute in float32 (``core/mlas/lib/qlmul.cpp``,
``contrib_ops/cpu/quantization/qlinear_pool.cc``); intsim reproduces every
rounding step, so the comparisons demand bit-equality.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from intsim import Model, UnsupportedOpError, ValidationError
from intsim.graph import Graph, Node, TensorInfo
from intsim.kernels import naive_onnxruntime_ops as naive
from intsim.kernels import onnxruntime_ops as fast
from intsim.profiles import get_profile

CODE_TYPES = ["uint8", "int8"]


# --------------------------------------------------------------------------
# Kernels against their naive twins.
# --------------------------------------------------------------------------


@st.composite
def _mul_cases(draw):
    dtype = draw(st.sampled_from(CODE_TYPES))
    info = np.iinfo(dtype)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=6))
    codes = hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype)))
    zero_point = st.integers(int(info.min), int(info.max))
    ratio = np.float32(draw(st.floats(2.0**-20, 2.0**4, width=32)))
    lo = draw(st.integers(int(info.min), int(info.max)))
    hi = draw(st.integers(lo, int(info.max)))
    return (draw(codes), draw(zero_point), draw(codes), draw(zero_point), ratio, draw(zero_point), lo, hi,
            np.dtype(dtype))


@settings(deadline=None, max_examples=150)
@given(_mul_cases())
def test_mul_float32_matches_naive(case):
    out, sat = fast.mul_float32(*case)
    expected, expected_sat = naive.mul_float32(*case)
    np.testing.assert_array_equal(out, expected, strict=True)
    assert sat == expected_sat


def test_mul_float32_adds_the_zero_point_before_rounding():
    # (3 - 0) * (1 - 0) * 0.5 = 1.5; + 1 = 2.5 rounds to even 2 (rint(1.5) + 1 would give 3).
    # (5 - 1) * (2 - 0) * 0.5 = 4; + 1 = 5.  (255 - 1) * 2 * 0.5 + 1 = 255 saturates to the clamp 200.
    a, b = np.array([3, 5, 255], np.uint8), np.array([1, 2, 2], np.uint8)
    out, sat = fast.mul_float32(a, 0, b, 0, np.float32(0.5), 1, 0, 200, np.dtype(np.uint8))
    np.testing.assert_array_equal(out, np.array([2, 6, 200], np.uint8), strict=True)
    assert sat == 1


@st.composite
def _pool_cases(draw):
    dtype = draw(st.sampled_from(CODE_TYPES))
    info = np.iinfo(dtype)
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    pads = tuple(draw(st.integers(0, k - 1)) for k in kernel + kernel)
    pads = (pads[0], pads[1], pads[2], pads[3])
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    height = draw(st.integers(max(1, kernel[0] - pads[0] - pads[2]), 6))
    width = draw(st.integers(max(1, kernel[1] - pads[1] - pads[3]), 6))
    x = draw(hnp.arrays(dtype, (draw(st.integers(1, 2)), height, width, draw(st.integers(1, 3))),
                        elements=hnp.from_dtype(np.dtype(dtype))))
    zero_point = st.integers(int(info.min), int(info.max))
    scale = st.floats(2.0**-12, 2.0**2, width=32)
    return (x, draw(zero_point), np.float32(draw(scale)), kernel, strides, pads, draw(st.booleans()),
            np.float32(draw(scale)), draw(zero_point), int(info.min), int(info.max), np.dtype(dtype))


@settings(deadline=None, max_examples=150)
@given(_pool_cases())
def test_avg_pool_float32_matches_naive(case):
    out, sat = fast.avg_pool_float32_nhwc(*case)
    expected, expected_sat = naive.avg_pool_float32_nhwc(*case)
    np.testing.assert_array_equal(out, expected, strict=True)
    assert sat == expected_sat


def test_avg_pool_float32_golden():
    # 2x2 image [[1, 2], [3, 6]], zero point 0, scales 1; 2x2 window, pads (1, 1, 0, 0):
    # corner (0, 0) holds only 1: 1 / 1 = 1 excluding padding, 1 / 4 = 0.25 -> 0 including it;
    # (1, 1) averages all four: 12 / 4 = 3.  Output zero point 10.
    x = np.array([1, 2, 3, 6], np.uint8).reshape(1, 2, 2, 1)
    args = (np.float32(1.0), 10, 0, 255, np.dtype(np.uint8))
    excluded, _ = fast.avg_pool_float32_nhwc(x, 0, np.float32(1.0), (2, 2), (1, 1), (1, 1, 0, 0), False, *args)
    included, _ = fast.avg_pool_float32_nhwc(x, 0, np.float32(1.0), (2, 2), (1, 1), (1, 1, 0, 0), True, *args)
    # excluded: (0,0) 1/1, (0,1) (1+2)/2 = 1.5 -> 2, (1,0) (1+3)/2 = 2, (1,1) 3; plus 10
    np.testing.assert_array_equal(excluded[0, :, :, 0], np.array([[11, 12], [12, 13]], np.uint8), strict=True)
    # included: 0.25 -> 0, 0.75 -> 1, 1.0, 3.0; plus 10
    np.testing.assert_array_equal(included[0, :, :, 0], np.array([[10, 11], [11, 13]], np.uint8), strict=True)


# --------------------------------------------------------------------------
# Conformance against a live onnxruntime.
# --------------------------------------------------------------------------

ORT_OPSETS = None


def _onnx():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    return ort, onnx


def _session(model):
    ort, _ = _onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _model(nodes, inputs, outputs, inits):
    _, onnx = _onnx()
    from onnx import helper

    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits), opset_imports=opsets)


def _quant_inits(elem, names_values):
    from onnx import TensorProto, helper

    inits = []
    for name, (scale, zero_point) in names_values.items():
        inits += [helper.make_tensor(f"{name}s", TensorProto.FLOAT, [], [scale]),
                  helper.make_tensor(f"{name}z", elem, [], [zero_point])]
    return inits


def _scales(rng, trial):
    """Random scales; every third trial ``s_a * s_b / s_y = 2**-m``, which makes exact ties ``k + 0.5``."""
    if trial % 3 == 0:
        return [2.0**-4, 2.0 ** -(1 + trial // 3 % 3), 2.0**-4]
    return [float(v) for v in 2.0 ** rng.uniform(-8, 0, 3)]


@pytest.mark.parametrize("code_type", CODE_TYPES)
def test_qlinear_mul_matches_onnxruntime_for_every_code_pair(code_type):
    _, onnx = _onnx()
    from onnx import TensorProto, helper

    from intsim.importers.onnx_qop import load_onnx_qoperator

    elem = TensorProto.UINT8 if code_type == "uint8" else TensorProto.INT8
    lo = int(np.iinfo(code_type).min)
    codes = np.arange(lo, lo + 256).astype(code_type)
    a_codes, b_codes = np.repeat(codes, 256), np.tile(codes, 256)
    rng = np.random.default_rng(12)
    mismatches = compared = 0
    for trial in range(12):
        (a_scale, b_scale, y_scale), zps = _scales(rng, trial), [int(v) for v in rng.integers(lo, lo + 256, 3)]
        if trial % 3 == 0:
            zps[2] |= 1  # an odd output zero point: adding it before or after rounding a tie differs
        inits = _quant_inits(elem, {"a": (a_scale, zps[0]), "b": (b_scale, zps[1]), "y": (y_scale, zps[2])})
        mul = helper.make_node("QLinearMul", ["aq", "as", "az", "bq", "bs", "bz", "ys", "yz"], ["yq"],
                               domain="com.microsoft")
        codes_info = [helper.make_tensor_value_info(n, elem, [65536]) for n in ("aq", "bq", "yq")]
        expected = _session(_model([mul], codes_info[:2], codes_info[2:], inits)).run(
            None, {"aq": a_codes, "bq": b_codes})[0]
        floats = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [65536]) for n in ("a", "b", "y")]
        nodes = [helper.make_node("QuantizeLinear", ["a", "as", "az"], ["aq"]),
                 helper.make_node("QuantizeLinear", ["b", "bs", "bz"], ["bq"]), mul,
                 helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
        graph = load_onnx_qoperator(_model(nodes, floats[:2], floats[2:], inits))
        for backend in ("fast", "naive") if trial == 0 else ("fast",):
            got = Model(graph, backend).run_int(a_codes, b_codes)
            mismatches += int(np.count_nonzero(got != expected))
            compared += expected.size
    assert compared == 13 * 65536 and mismatches == 0, f"{mismatches} of {compared} code pairs differ"
