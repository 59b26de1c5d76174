"""QDQ ``Softmax``: onnxruntime fuses ``DQ -> Softmax -> Q`` of one 8-bit type into ``com.microsoft.QLinearSoftmax``;
intsim's ``softmax_qlinear`` against a live onnxruntime, its naive twin, and the export back."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import intsim  # noqa: E402
from intsim import UnsupportedOpError  # noqa: E402
from intsim import kernels  # noqa: E402
from intsim.importers.onnx_qop import qlinear_softmax_table  # noqa: E402
from intsim.kernels import naive  # noqa: E402


def _softmax_model(dtype, x_scale, x_zp, y_scale, y_zp, shape, axis, batch="N"):
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x_zp, dtype), "xz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y_zp, dtype), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xf"]),
             helper.make_node("Softmax", ["xf"], ["yf"], axis=axis),
             helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    dims = [batch] + list(shape[1:])
    graph = helper.make_graph(nodes, "softmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dtype, x_zp, y_zp", [(np.uint8, 128, 0), (np.uint8, 0, 255), (np.int8, 0, -128),
                                               (np.int8, -128, 127)])
@pytest.mark.parametrize("x_scale, y_scale, shape, axis", [(0.1, 1 / 256, [4, 10], -1), (0.05, 1 / 255, [2, 7, 5], 1),
                                                           (0.3, 0.004, [3, 300], -1), (0.02, 0.5, [2, 3, 4], 2)])
def test_qdq_softmax_matches_onnxruntime(tmp_path, dtype, x_zp, y_zp, x_scale, y_scale, shape, axis):
    model = _softmax_model(dtype, x_scale, x_zp, y_scale, y_zp, shape, axis)
    rng = np.random.default_rng(abs(x_zp) + len(shape))
    info = np.iinfo(dtype)
    x = ((rng.integers(info.min, info.max + 1, shape) - x_zp) * np.float32(x_scale)).astype(np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(["y"], {"x": x})[0]
    ours = intsim.load(model)
    assert set(ours.graph.metadata["qdq"].values()) == {"fused:QLinearSoftmax"}
    np.testing.assert_array_equal(ours.run(x), theirs, strict=True)
    written = ours.to_onnx_qdq(tmp_path / "back.onnx")
    assert written.inexact == {}
    back = ort.InferenceSession(str(tmp_path / "back.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(back.run(None, {"x": x})[0], theirs, strict=True)
    np.testing.assert_array_equal(intsim.load(tmp_path / "back.onnx").run(x), theirs, strict=True)  # read back


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_softmax_qlinear_kernel_equals_its_naive_twin(dtype):
    rng = np.random.default_rng(5)
    info = np.iinfo(dtype)
    for rows, length, x_scale, y_scale, zp in ((3, 2, 0.1, 1 / 256, info.min), (5, 17, 0.04, 1 / 255, 0),
                                               (2, 300, 1.5, 0.002, info.max)):
        x = rng.integers(info.min, info.max + 1, (rows, length)).astype(dtype)
        x[0] = info.max  # equal codes: every share equal
        args = (qlinear_softmax_table(np.float32(x_scale), length), np.float32(np.floor(1 / np.float32(y_scale))),
                zp, info.min, info.max, np.dtype(dtype))
        fast, fast_sat = kernels.softmax_qlinear(x, *args)
        slow, slow_sat = naive.softmax_qlinear(x, *args)
        np.testing.assert_array_equal(fast, slow, strict=True)
        assert fast_sat == slow_sat


def test_softmax_over_the_batch_axis_names_the_node():
    with pytest.raises(UnsupportedOpError, match="Softmax.*known size"):
        intsim.load(_softmax_model(np.uint8, 0.1, 0, 1 / 256, 0, [2, 5], 0))


def test_a_table_that_overflows_float32_is_refused():
    # One element per row: onnxruntime's table entry for the maximum is FLT_MAX / e^5, times floor(1 / s_y) = 256
    # it is infinity, which onnxruntime converts to an integer (undefined behaviour).
    with pytest.raises(intsim.ValidationError, match="softmax_qlinear.*overflows float32"):
        intsim.load(_softmax_model(np.uint8, 0.1, 0, 1 / 256, 0, [2, 1], -1))
