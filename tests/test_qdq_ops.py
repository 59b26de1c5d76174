"""QDQ ops beyond the shipped models' (Resize), each against a live onnxruntime and exported back."""

from __future__ import annotations

import platform

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import intsim  # noqa: E402
from intsim import UnsupportedOpError  # noqa: E402


def _resize_model(in_hw, out_hw, coordinate_mode, nearest_mode, use_scales, mode="nearest"):
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(7, np.uint8), "z"),
             numpy_helper.from_array(np.array([], np.float32), "roi")]
    if use_scales:
        scales = np.array([1, 1, out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]], np.float32)
        inits.append(numpy_helper.from_array(scales, "scales"))
        resize_inputs = ["xf", "roi", "scales"]
    else:
        inits.append(numpy_helper.from_array(np.array([2, 3, *out_hw], np.int64), "sizes"))
        resize_inputs = ["xf", "roi", "", "sizes"]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
             helper.make_node("Resize", resize_inputs, ["yf"], name="up", mode=mode,
                              coordinate_transformation_mode=coordinate_mode, nearest_mode=nearest_mode),
             helper.make_node("QuantizeLinear", ["yf", "s", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, *in_hw])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, *out_hw])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("in_hw, out_hw, use_scales", [((4, 5), (8, 10), True), ((5, 7), (3, 11), False),
                                                       ((3, 3), (7, 2), False)])
@pytest.mark.parametrize("coordinate_mode, nearest_mode", [("half_pixel", "round_prefer_floor"),
                                                           ("asymmetric", "floor"),
                                                           ("align_corners", "round_prefer_ceil"),
                                                           ("tf_half_pixel_for_nn", "ceil")])
def test_qdq_nearest_resize_matches_onnxruntime(tmp_path, in_hw, out_hw, use_scales, coordinate_mode, nearest_mode):
    model = _resize_model(in_hw, out_hw, coordinate_mode, nearest_mode, use_scales)
    rng = np.random.default_rng(sum(in_hw) + sum(out_hw))
    x = ((rng.integers(0, 256, (2, 3, *in_hw)) - 7) * np.float32(0.05)).astype(np.float32)
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = intsim.load(model)
    assert ours.graph.metadata["qdq"]["up"] == "dropped"
    np.testing.assert_array_equal(ours.run(x), theirs, strict=True)
    written = ours.to_onnx_qdq(tmp_path / "back.onnx")
    assert written.inexact == {}
    back = ort.InferenceSession(str(tmp_path / "back.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(back.run(None, {"x": x})[0], theirs, strict=True)
    np.testing.assert_array_equal(intsim.load(tmp_path / "back.onnx").run(x), theirs, strict=True)  # and read back


def test_a_linear_resize_names_the_node():
    with pytest.raises(UnsupportedOpError, match="Resize 'up': only a nearest Resize"):
        intsim.load(_resize_model((4, 4), (8, 8), "half_pixel", "round_prefer_floor", True, mode="linear"))


def _matmul_model(elem, np_dtype, zp, shape_a, shape_b):
    inits = [numpy_helper.from_array(np.array(s, np.float32), f"s{i}") for i, s in enumerate((0.01, 0.02, 0.05))]
    inits += [numpy_helper.from_array(np.array(zp, np_dtype), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["a", "s0", "z"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "s0", "z"], ["af"]),
             helper.make_node("QuantizeLinear", ["b", "s1", "z"], ["bq"]),
             helper.make_node("DequantizeLinear", ["bq", "s1", "z"], ["bf"]),
             helper.make_node("MatMul", ["af", "bf"], ["yf"], name="mm"),
             helper.make_node("QuantizeLinear", ["yf", "s2", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s2", "z"], ["y"])]
    out_shape = list(shape_a[:-1]) + [shape_b[-1]]
    graph = helper.make_graph(nodes, "matmul", [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape_a),
                                                helper.make_tensor_value_info("b", TensorProto.FLOAT, shape_b)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("elem, np_dtype, zp, fused", [(TensorProto.UINT8, np.uint8, 3, True),
                                                       (TensorProto.INT16, np.int16, -7, False),
                                                       (TensorProto.UINT16, np.uint16, 40000, False)])
@pytest.mark.parametrize("shape_a, shape_b", [([4, 16], [16, 8]), ([2, 3, 5, 24], [2, 3, 24, 6])])
def test_qdq_matmul_of_two_activations(tmp_path, elem, np_dtype, zp, fused, shape_a, shape_b):
    # uint8: QLinearMatMul (exact).  16-bit: no QLinear kernel, a float island summed in MLAS's order.
    model = _matmul_model(elem, np_dtype, zp, shape_a, shape_b)
    rng = np.random.default_rng(len(shape_a) + abs(zp))
    a = rng.uniform(-1, 1, shape_a).astype(np.float32)
    b = rng.uniform(-1, 1, shape_b).astype(np.float32)
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"a": a, "b": b})[0]
    ours = intsim.load(model)
    assert ours.graph.metadata["qdq"]["mm"] == ("fused:QLinearMatMul" if fused else "float")
    ran = ours.run(a, b)
    if fused or platform.machine() in ("x86_64", "AMD64"):  # 16-bit: MLAS's float32 order, modelled on x86-64
        np.testing.assert_array_equal(ran, theirs, strict=True)
    else:
        assert np.count_nonzero(ran != theirs) <= 0.01 * ran.size
        assert np.abs(ran - theirs).max() <= 0.05  # one code of the output
    written = ours.to_onnx_qdq(tmp_path / "back.onnx")
    assert set(written.inexact) == (set() if fused else {"mm"})
    back = ort.InferenceSession(str(tmp_path / "back.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(back.run(None, {"a": a, "b": b})[0], theirs, strict=True)
    np.testing.assert_array_equal(intsim.load(tmp_path / "back.onnx").run(a, b), ran, strict=True)  # read back


def _chain_model(middle_type, middle_np, clip=None):
    """x -> Q(middle) -> DQ -> [Clip] -> Q(uint8) -> DQ -> y."""
    inits = [numpy_helper.from_array(np.array(0.013, np.float32), "s1"),
             numpy_helper.from_array(np.array(3, middle_np), "z1"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s2"),
             numpy_helper.from_array(np.array(128, np.uint8), "z2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s1", "z1"], ["a"]),
             helper.make_node("DequantizeLinear", ["a", "s1", "z1"], ["af"])]
    source = "af"
    if clip is not None:
        inits += [numpy_helper.from_array(np.array(v, np.float32), k) for k, v in zip(("lo", "hi"), clip)]
        nodes.append(helper.make_node("Clip", ["af", "lo", "hi"], ["cf"], name="clip"))
        source = "cf"
    nodes += [helper.make_node("QuantizeLinear", [source, "s2", "z2"], ["b"], name="requantize"),
              helper.make_node("DequantizeLinear", ["b", "s2", "z2"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("middle_type, middle_np, clip", [(TensorProto.INT16, np.int16, None),
                                                         (TensorProto.UINT8, np.uint8, (-1.0, 2.5)),
                                                         (TensorProto.INT16, np.int16, (0.3, 1.7))])
def test_requantize_pairs_and_clip_islands_match_onnxruntime(middle_type, middle_np, clip):
    # A lone DQ -> Q pair (16-bit in: no DoubleQDQPairsRemover) and a DQ -> Clip -> Q island whose bounds the Q
    # does not make redundant: onnxruntime runs them in float32, elementwise, so one table each, exact.
    model = _chain_model(middle_type, middle_np, clip)
    x = np.random.default_rng(2).uniform(-8, 8, (16, 64)).astype(np.float32)
    x[0, :3] = [0.0065, -0.0065, 0.0195]  # ties of the first Q
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = intsim.load(model)
    assert {n.op for n in ours.graph.nodes} == {"lut"}
    np.testing.assert_array_equal(ours.run(x), theirs, strict=True)


def test_an_8_bit_double_qdq_chain_names_the_pair():
    # Q(uint8) -> DQ -> Q(uint8, another scale) -> DQ: onnxruntime's DoubleQDQPairsRemover merges it (not modelled).
    with pytest.raises(UnsupportedOpError, match="'requantize'.*DoubleQDQPairsRemover"):
        intsim.load(_chain_model(TensorProto.UINT8, np.uint8))


def test_a_table_lookup_without_a_quantized_reader_names_the_codes():
    codes = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(np.arange(256, dtype=np.uint8)[::-1].copy(), "table"),
             numpy_helper.from_array(np.arange(256, dtype=np.uint8), "table2")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("Cast", ["xq"], ["i"], to=TensorProto.INT32),
             helper.make_node("Gather", ["table", "i"], ["t"], name="lookup"),
             helper.make_node("Cast", ["t"], ["j"], to=TensorProto.INT32),
             helper.make_node("Gather", ["table2", "j"], ["u"]),
             helper.make_node("DequantizeLinear", ["u", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "tables", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [codes],
                              inits)
    with pytest.raises(UnsupportedOpError, match="codes 't': no reader says how they are quantized"):
        intsim.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
