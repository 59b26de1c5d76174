"""onnxruntime's QLinearAdd: the ``add_float32_fma`` kernel against its naive twin and a live onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from intsim import ValidationError
from intsim.graph import Graph, Node, TensorInfo
from intsim.kernels.naive import onnxruntime_ops as naive
from intsim.kernels import onnxruntime_ops as fast
from intsim.graph.ops import get_op
from intsim.profiles import get_profile

# |value| <= 2**40 keeps every sum far from float32 overflow; tiny magnitudes exercise the float64 rounding.
FLOAT32 = st.floats(-(2.0**40), 2.0**40, width=32, allow_nan=False, allow_infinity=False)
RATIO = st.floats(2.0**-30, 2.0**10, width=32)
CODE_DTYPES = st.sampled_from([np.uint8, np.int8, np.uint16, np.int16])


@settings(deadline=None, max_examples=400)
@given(FLOAT32, FLOAT32, FLOAT32)
def test_fma_float32_matches_the_exact_fused_rounding(x, y, z):
    x, y, z = np.float32(x), np.float32(y), np.float32(z)
    assert np.float32(fast.fma_float32(x, y, z)) == naive.fma_float32(x, y, z)


@pytest.mark.parametrize("tiny", [2.0**-60, -(2.0**-60), 0.0, 2.0**-40])
def test_fma_float32_breaks_a_float32_midpoint_as_the_exact_sum_does(tiny):
    # (1 + 2**-12)**2 = 1 + 2**-11 + 2**-24 lies exactly halfway between two float32s; rounding the
    # float64 sum to float32 would lose the tiny addend and round the tie to even.
    x = np.float32(1 + 2.0**-12)
    expected = naive.fma_float32(x, x, np.float32(tiny))
    assert (expected > np.float32(1 + 2.0**-11)) == (tiny > 0)
    assert np.float32(fast.fma_float32(x, x, np.float32(tiny))) == expected


@settings(deadline=None, max_examples=400)
@given(FLOAT32, FLOAT32, FLOAT32)
def test_fma_float32_two_sum_emulation_matches_the_exact_fused_rounding(x, y, z):
    x, y, z = np.float32(x), np.float32(y), np.float32(z)
    assert naive.fma_float32_two_sum(x, y, z) == naive.fma_float32(x, y, z)


# Ratios and offsets at the edges: exact halves (rint ties), the white paper's range of scale ratios
# and far beyond it (2**-30 .. 2**20), negative ratios, addends far below and far above the products.
EDGE_PARAMETERS = [
    (0.5, 0.25, 0.5), (0.5, 0.5, 0.0), (1.5, -0.5, -0.5), (2.0**-30, 2.0**-30, 2.0**-40),
    (2.0**20, 2.0**-20, 3.0), (1 + 2.0**-12, 1 + 2.0**-12, 2.0**-60), (0.123456, 7.5, -1000.25),
    (-3.0, 2.0**10, 2.0**20), (1 / 3, 2 / 3, 127.5),
]


@pytest.mark.parametrize("a_ratio, b_ratio, offset", EDGE_PARAMETERS)
@pytest.mark.parametrize("code_type, out_type", [(np.uint8, np.uint8), (np.int8, np.int8), (np.int16, np.int8)])
def test_add_float32_fma_every_code_pair_matches_the_emulation(a_ratio, b_ratio, offset, code_type, out_type):
    info = np.iinfo(code_type)
    codes = np.linspace(info.min, info.max, 256).astype(code_type)  # every 8-bit code; 16-bit spread
    codes[:4] = (info.min, info.max, 0, 1)
    a, b = np.repeat(codes, 256), np.tile(codes, 256)
    ratios = np.float32(a_ratio), np.float32(b_ratio), np.float32(offset)
    lo, hi = int(np.iinfo(out_type).min) + 3, int(np.iinfo(out_type).max) - 3
    out, sat = fast.add_float32_fma(a, b, *ratios, lo, hi, out_type)
    fused = naive.fma_float32_two_sum(a.astype(np.float32), ratios[0],
                                      naive.fma_float32_two_sum(b.astype(np.float32), ratios[1], ratios[2]))
    rounded = np.rint(fused.astype(np.float64))
    np.testing.assert_array_equal(out, np.clip(rounded, lo, hi).astype(out_type), strict=True)
    assert sat == int(np.count_nonzero((rounded < lo) | (rounded > hi)))


@st.composite
def _add_cases(draw):
    dtype = draw(CODE_DTYPES)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=6))
    codes = hnp.arrays(dtype, shape, elements=hnp.from_dtype(np.dtype(dtype)))
    out_dtype = draw(st.sampled_from([np.uint8, np.int8]))
    info = np.iinfo(out_dtype)
    lo = draw(st.integers(int(info.min), int(info.max)))
    hi = draw(st.integers(lo, int(info.max)))
    offset = draw(st.floats(-(2.0**20), 2.0**20, width=32))
    return draw(codes), draw(codes), np.float32(draw(RATIO)), np.float32(draw(RATIO)), np.float32(offset), lo, hi, out_dtype


@settings(deadline=None, max_examples=150)
@given(_add_cases())
def test_add_float32_fma_matches_naive(case):
    out, sat = fast.add_float32_fma(*case)
    expected, expected_sat = naive.add_float32_fma(*case)
    np.testing.assert_array_equal(out, expected, strict=True)
    assert sat == expected_sat


def test_add_float32_fma_golden():
    # 3 * 0.5 + (4 * 0.25 + 0.5) = 3.0; 1 * 0.5 + (0 * 0.25 + 0.5) = 1.0; 255 * 0.5 + 255 * 0.25 + 0.5 = 191.75 -> 192.
    a = np.array([3, 1, 255], np.uint8)
    b = np.array([4, 0, 255], np.uint8)
    out, sat = fast.add_float32_fma(a, b, np.float32(0.5), np.float32(0.25), np.float32(0.5), 0, 100, np.uint8)
    np.testing.assert_array_equal(out, np.array([3, 1, 100], np.uint8), strict=True)
    assert sat == 1


def _graph(params):
    tensors = {name: TensorInfo(name, "uint8", (4,), 0.1, 0) for name in ("a", "b", "y")}
    node = Node("add_float32_fma", "qadd", ["a", "b"], ["y"], {}, params)
    return node, Graph("g", get_profile("onnxruntime"), tensors, [node], ["a", "b"], ["y"], {})


@pytest.mark.parametrize("key, value, message", [
    ("offset", np.array([np.inf], np.float32), "parameter offset must be finite"),
    ("a_ratio", np.array([0.5], np.float64), "parameter a_ratio must be float32, found float64"),
    ("b_ratio", np.array([1, 2], np.float32), r"parameter b_ratio must have shape \(1,\)"),
])
def test_add_float32_fma_rejects_bad_parameters(key, value, message):
    params = {k: np.array([0.5], np.float32) for k in ("a_ratio", "b_ratio", "offset")}
    params[key] = value
    with pytest.raises(ValidationError, match=message):
        _graph(params)


def test_add_float32_fma_broadcasts():
    node = Node("add_float32_fma", "qadd", ["a", "b"], ["y"], {}, {})
    shapes = [TensorInfo("a", "uint8", (2, 1, 3), 1.0, 0), TensorInfo("b", "uint8", (4, 1), 1.0, 0)]
    assert get_op("add_float32_fma").infer(node, shapes, None) == [(2, 4, 3)]


# --------------------------------------------------------------------------
# Conformance: every code pair against a live onnxruntime.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("code_type", ["uint8", "int8"])
def test_qlinear_add_matches_onnxruntime_for_every_code_pair(code_type):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from intsim import Model
    from intsim.importers.onnx_qop import load_onnx_qoperator

    elem = TensorProto.UINT8 if code_type == "uint8" else TensorProto.INT8
    lo = 0 if code_type == "uint8" else -128
    codes = np.arange(lo, lo + 256).astype(code_type)
    a_codes, b_codes = np.repeat(codes, 256), np.tile(codes, 256)
    rng = np.random.default_rng(11)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    mismatches = 0
    for trial in range(10):
        a_scale, b_scale, y_scale = (float(v) for v in 2.0 ** rng.uniform(-8, 0, 3))
        a_zp, b_zp, y_zp = (int(v) for v in rng.integers(lo, lo + 256, 3))
        inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [s]) for n, s in
                 (("as", a_scale), ("bs", b_scale), ("ys", y_scale))]
        inits += [helper.make_tensor(n, elem, [], [z]) for n, z in (("az", a_zp), ("bz", b_zp), ("yz", y_zp))]
        add = helper.make_node("QLinearAdd", ["aq", "as", "az", "bq", "bs", "bz", "ys", "yz"], ["yq"],
                               domain="com.microsoft")
        code_info = [helper.make_tensor_value_info(n, elem, [65536]) for n in ("aq", "bq", "yq")]
        reference = onnx.ModelProto()
        reference.CopyFrom(helper.make_model(helper.make_graph([add], "qadd", code_info[:2], code_info[2:], inits),
                                             opset_imports=opsets))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(reference.SerializeToString(), options, providers=["CPUExecutionProvider"])
        expected = session.run(None, {"aq": a_codes, "bq": b_codes})[0]

        nodes = [helper.make_node("QuantizeLinear", ["a", "as", "az"], ["aq"]),
                 helper.make_node("QuantizeLinear", ["b", "bs", "bz"], ["bq"]), add,
                 helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
        float_info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [65536]) for n in ("a", "b", "y")]
        model = helper.make_model(helper.make_graph(nodes, "qadd", float_info[:2], float_info[2:], inits),
                                  opset_imports=opsets)
        graph = load_onnx_qoperator(model)
        assert graph.metadata["inexact_nodes"] == {}
        # The naive twin is slow: one parameter set; the kernel tests compare the two everywhere else.
        for backend in ("fast", "naive") if trial == 0 else ("fast",):
            got = Model(graph, backend).run_int(a_codes, b_codes)
            mismatches += int(np.count_nonzero(got != expected))
    assert mismatches == 0, f"{mismatches} of {10 * 65536} code pairs differ"


# Operand arrangements whose broadcast output holds every code pair once.  Where input 0 is one value
# per span of the output (its innermost non-1 axis has size 1), onnxruntime hands MLAS the operands in
# the other order, and the fused multiply-adds round in the other order too.
ARRANGEMENTS = [((256, 1), (1, 256)), ((1, 256), (256, 1)), ((1, 256, 1, 1), (1, 1, 16, 16)),
                ((16, 16, 1), (1, 1, 256)), ((1, 256), (256, 256))]


def _operands(shape_a, shape_b, codes):
    """Code arrays of the two shapes whose broadcast pairs every code with every code."""
    if np.prod(shape_a) == 65536:
        return np.repeat(codes, 256).reshape(shape_a), codes.reshape(shape_b)
    if np.prod(shape_b) == 65536:
        return codes.reshape(shape_a), np.repeat(codes, 256).reshape(shape_b)
    return codes.reshape(shape_a), codes.reshape(shape_b)


@pytest.mark.parametrize("code_type", ["uint8", "int8"])
def test_qlinear_add_broadcast_matches_onnxruntime(code_type):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from intsim import Model
    from intsim.importers.onnx_qop import load_onnx_qoperator

    elem = TensorProto.UINT8 if code_type == "uint8" else TensorProto.INT8
    lo = 0 if code_type == "uint8" else -128
    codes = np.arange(lo, lo + 256).astype(code_type)
    rng = np.random.default_rng(21)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    mismatches = other_order = 0
    for shape_a, shape_b in ARRANGEMENTS:
        a_codes, b_codes = _operands(shape_a, shape_b, codes)
        pairs = np.broadcast_arrays(a_codes.astype(np.int64), b_codes.astype(np.int64))
        assert len(set(zip(pairs[0].ravel().tolist(), pairs[1].ravel().tolist()))) == 65536
        for _ in range(20):
            scales, zps = 2.0 ** rng.uniform(-8, 0, 3), rng.integers(lo, lo + 256, 3)
            inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [float(s)])
                     for n, s in zip(("as", "bs", "ys"), scales)]
            inits += [helper.make_tensor(n, elem, [], [int(z)]) for n, z in zip(("az", "bz", "yz"), zps)]
            add = helper.make_node("QLinearAdd", ["aq", "as", "az", "bq", "bs", "bz", "ys", "yz"], ["yq"],
                                   domain="com.microsoft")
            info = [helper.make_tensor_value_info("aq", elem, shape_a),
                    helper.make_tensor_value_info("bq", elem, shape_b),
                    helper.make_tensor_value_info("yq", elem, None)]
            reference = helper.make_model(helper.make_graph([add], "qadd", info[:2], info[2:], inits),
                                          opset_imports=opsets)
            session = ort.InferenceSession(reference.SerializeToString(), options, providers=["CPUExecutionProvider"])
            expected = session.run(None, {"aq": a_codes, "bq": b_codes})[0]
            nodes = [helper.make_node("QuantizeLinear", ["a", "as", "az"], ["aq"]),
                     helper.make_node("QuantizeLinear", ["b", "bs", "bz"], ["bq"]), add,
                     helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
            floats = [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape_a),
                      helper.make_tensor_value_info("b", TensorProto.FLOAT, shape_b),
                      helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
            model = helper.make_model(helper.make_graph(nodes, "qadd", floats[:2], floats[2:], inits),
                                      opset_imports=opsets)
            graph = load_onnx_qoperator(model)
            mismatches += int(np.count_nonzero(Model(graph).run_int(a_codes, b_codes) != expected))
            other_order += int(np.count_nonzero(_in_the_other_order(graph, a_codes, b_codes) != expected))
    assert mismatches == 0, f"{mismatches} of {len(ARRANGEMENTS) * 20 * 65536} code pairs differ"
    assert other_order > 0  # the operand order is observable: the other order misses some pairs


def _in_the_other_order(graph, a_codes, b_codes):
    """The add node's result with its operands (and their ratios and zero points) traded."""
    (node,) = [n for n in graph.nodes if n.op == "add_float32_fma"]
    first, second = (graph.tensors[t] for t in node.inputs)
    x0, x1 = ({"aq": a_codes, "bq": b_codes}[t] for t in node.inputs)
    r0, r1 = np.float32(node.params["a_ratio"][0]), np.float32(node.params["b_ratio"][0])
    out = graph.tensors[node.outputs[0]]
    offset = np.float32(np.float32(out.zero_point) - naive.fma_float32(r1, np.float32(second.zero_point),
                                                                       np.float32(r0 * np.float32(first.zero_point))))
    x1b, x0b = np.broadcast_arrays(x1, x0)
    info = np.iinfo(out.np_dtype)
    return fast.add_float32_fma(np.ascontiguousarray(x1b), np.ascontiguousarray(x0b), r1, r0, offset, int(info.min),
                                int(info.max), out.np_dtype)[0]
