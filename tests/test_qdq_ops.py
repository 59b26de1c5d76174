"""QDQ ops beyond the shipped models' (Resize), each against a live onnxruntime and exported back."""

from __future__ import annotations

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


def test_a_linear_resize_names_the_node():
    with pytest.raises(UnsupportedOpError, match="Resize 'up': only a nearest Resize"):
        intsim.load(_resize_model((4, 4), (8, 8), "half_pixel", "round_prefer_floor", True, mode="linear"))
