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
from intsim.kernels.naive import onnxruntime_ops as naive
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
    _onnx()
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
    _onnx()
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


POOLS = [
    # kernel, strides, pads (ONNX top, left, bottom, right), count_include_pad
    ([2, 2], [2, 2], [0, 0, 0, 0], 0),
    ([3, 3], [1, 1], [1, 1, 1, 1], 0),
    ([3, 3], [1, 1], [1, 1, 1, 1], 1),
    ([3, 2], [2, 1], [2, 0, 1, 1], 0),
    ([3, 2], [2, 1], [2, 0, 1, 1], 1),
    ([5, 7], [1, 1], [0, 0, 0, 0], 0),  # the whole image: onnxruntime falls back to the global pool
    ([5, 7], [3, 3], [1, 2, 1, 2], 1),
]


@pytest.mark.parametrize("code_type", CODE_TYPES)
@pytest.mark.parametrize("kernel, strides, pads, include", POOLS)
def test_qlinear_average_pool_matches_onnxruntime(code_type, kernel, strides, pads, include):
    _onnx()
    from onnx import TensorProto, helper

    from intsim.importers.onnx_qop import load_onnx_qoperator

    elem = TensorProto.UINT8 if code_type == "uint8" else TensorProto.INT8
    info = np.iinfo(code_type)
    shape = (4, 6, 5, 7)
    rng = np.random.default_rng(sum(kernel) + 10 * sum(pads) + include)
    batches = [rng.integers(int(info.min), int(info.max) + 1, shape).astype(code_type),
               np.full(shape, info.max, code_type), np.full(shape, info.min, code_type)]
    compared = 0
    for trial in range(4):
        x_scale, y_scale = (float(v) for v in 2.0 ** rng.uniform(-8, 0, 2))
        if trial == 0:
            y_scale = x_scale  # mean codes land on ties k + 0.5
        zps = [int(v) for v in rng.integers(int(info.min), int(info.max) + 1, 2)]
        inits = _quant_inits(elem, {"x": (x_scale, zps[0]), "y": (y_scale, zps[1])})
        pool = helper.make_node("QLinearAveragePool", ["xq", "xs", "xz", "ys", "yz"], ["yq"], domain="com.microsoft",
                                kernel_shape=kernel, strides=strides, pads=pads, count_include_pad=include)
        codes = [helper.make_tensor_value_info("xq", elem, list(shape)), helper.make_tensor_value_info("yq", elem, None)]
        session = _session(_model([pool], codes[:1], codes[1:], inits))
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), pool,
                 helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
        floats = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape)),
                  helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
        graph = load_onnx_qoperator(_model(nodes, floats[:1], floats[1:], inits))
        fallback = kernel == list(shape[2:]) and not any(pads)
        assert [n.op for n in graph.nodes if n.op not in ("transpose",)] == ["mean" if fallback else "avg_pool_float32"]
        for x in batches:
            expected = session.run(None, {"xq": x})[0]
            for backend in ("fast", "naive") if trial == 0 else ("fast",):
                np.testing.assert_array_equal(Model(graph, backend).run_int(x), expected, strict=True,
                                              err_msg=f"trial {trial} ({backend})")
                compared += expected.size
    assert compared > 0


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------


def _mul_graph(ratio, dtype="uint8", zero_point=0):
    tensors = {name: TensorInfo(name, dtype, (4,), 0.1, zero_point) for name in ("a", "b", "y")}
    node = Node("mul_float32", "qmul", ["a", "b"], ["y"], {}, {"ratio": ratio})
    return Graph("g", get_profile("onnxruntime"), tensors, [node], ["a", "b"], ["y"], {})


@pytest.mark.parametrize("ratio, dtype, message", [
    (np.array([0.5], np.float64), "uint8", "parameter ratio must be float32, found float64"),
    (np.array([np.nan], np.float32), "uint8", "parameter ratio must be finite"),
    (np.array([0.5, 0.5], np.float32), "uint8", r"parameter ratio must have shape \(1,\)"),
    (np.array([0.5], np.float32), "int16", "input 'a' must be one of int8, uint8, found int16"),
    # 255 * 255 * 33100 > 2**31: cvtps2dq would return INT32_MIN.
    (np.array([33100.0], np.float32), "uint8", r"mul_float32 'qmul': ratio 33100.0 can take .* >= 2\*\*31"),
])
def test_mul_float32_rejects_bad_parameters(ratio, dtype, message):
    with pytest.raises(ValidationError, match=message):
        _mul_graph(ratio, dtype)


def test_mul_float32_accepts_the_largest_safe_ratio():
    _mul_graph(np.array([33000.0], np.float32))  # 255 * 255 * 33000 + 0 < 2**31


def _pool_graph(params=None, **attrs):
    tensors = {"x": TensorInfo("x", "uint8", (1, 4, 4, 2), 0.1, 3), "y": TensorInfo("y", "uint8", (1, 3, 3, 2), 0.2, 5)}
    params = {"x_scale": np.array([0.1], np.float32), "y_scale": np.array([0.2], np.float32), **(params or {})}
    node = Node("avg_pool_float32", "pool", ["x"], ["y"], {"kernel": [2, 2], **attrs}, params)
    return Graph("g", get_profile("onnxruntime"), tensors, [node], ["x"], ["y"], {})


@pytest.mark.parametrize("params, attrs, message", [
    ({"y_scale": np.array([0.0], np.float32)}, {}, "parameter y_scale must be finite and > 0, found 0.0"),
    ({"x_scale": np.array([0.1], np.float64)}, {}, "parameter x_scale must be float32"),
    ({}, {"pads": [2, 0, 0, 0]}, r"pads \[2, 0, 0, 0\] must be smaller than the kernel \[2, 2\]"),
    ({}, {"count_include_pad": 1}, "attribute count_include_pad must be a boolean, found 1"),
    ({}, {"strides": [0, 1]}, "attribute strides must be >= 1"),
])
def test_avg_pool_float32_rejects_bad_parameters(params, attrs, message):
    with pytest.raises(ValidationError, match=message):
        _pool_graph(params, **attrs)


def _one_op_model(node, extra_inits=(), x_shape=(1, 4, 4, 4)):
    from onnx import TensorProto, helper

    inits = _quant_inits(TensorProto.UINT8, {"": (0.1, 3)}) + list(extra_inits)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), node,
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def test_qlinear_mul_constant_must_hold_codes_of_its_zero_point_type():
    _onnx()
    from onnx import TensorProto, helper

    from intsim.importers.onnx_qop import load_onnx_qoperator

    gain = helper.make_tensor("gain", TensorProto.INT8, [1, 4, 1, 1], [1, 2, 3, 4])
    node = helper.make_node("QLinearMul", ["xq", "s", "z", "gain", "s", "z", "s", "z"], ["yq"], name="scale",
                            domain="com.microsoft")
    with pytest.raises(ValidationError, match="QLinearMul 'scale': constant 'gain' must hold uint8 codes"):
        load_onnx_qoperator(_one_op_model(node, [gain]))


@pytest.mark.parametrize("attrs, message", [
    ({"dilations": [2, 2]}, r"dilations \[2, 2\] are not supported"),
    ({"channels_last": 1}, "channels_last=1 is not supported"),
])
def test_qlinear_average_pool_unsupported_attributes(attrs, message):
    _onnx()
    from onnx import helper

    from intsim.importers.onnx_qop import load_onnx_qoperator

    node = helper.make_node("QLinearAveragePool", ["xq", "s", "z", "s", "z"], ["yq"], name="pool",
                            domain="com.microsoft", kernel_shape=[2, 2], **attrs)
    with pytest.raises(UnsupportedOpError, match=f"QLinearAveragePool 'pool': {message}"):
        load_onnx_qoperator(_one_op_model(node))
