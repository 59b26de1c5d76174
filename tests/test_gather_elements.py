"""GatherElements (issue 15): the kernel against its naive twin and numpy's ``take_along_axis``, a converted
graph against onnxruntime (float, tolerance) and against its own codes (exact), and the error paths."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import intsim
from intsim import kernels
from intsim.errors import IntsimError, ValidationError
from intsim.kernels import naive


@pytest.mark.parametrize("shape, axis, index_shape", [((4, 5, 6), 1, (4, 3, 6)), ((4, 5, 6), 0, (2, 5, 3)),
                                                      ((4, 5, 6), 2, (4, 5, 9)), ((7,), 0, (12,)),
                                                      ((2, 3, 4, 5), 3, (1, 2, 4, 2)), ((3, 4), 1, (3, 0))])
def test_gather_elements_equals_naive_and_take_along_axis(shape, axis, index_shape):
    rng = np.random.default_rng(sum(shape) + axis)
    x = rng.integers(-32768, 32768, size=shape).astype(np.int16)
    indices = rng.integers(-shape[axis], shape[axis], size=index_shape).astype(np.int64)
    fast = kernels.gather_elements(x, indices, axis)
    np.testing.assert_array_equal(fast, naive.gather_elements(x, indices, axis), strict=True)
    window = tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(index_shape))
    np.testing.assert_array_equal(fast, np.take_along_axis(x[window], indices, axis), strict=True)


def _model(indices, data_shape=(None, 5, 6), axis=1, computed=False):
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("GatherElements", ["h", "idx"], ["y"], axis=axis)]
    inits = [numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(data_shape))]
    if computed:
        inputs.append(helper.make_tensor_value_info("idx", TensorProto.INT64, list(indices.shape)))
    else:
        inits.append(numpy_helper.from_array(indices, "idx"))
    graph = helper.make_graph(nodes, "ge", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_converted_gather_elements_matches_onnxruntime_and_moves_codes_exactly():
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)
    indices = rng.integers(-5, 5, size=(1, 3, 6)).astype(np.int64)
    model_onnx = _model(indices)
    model = intsim.convert(model_onnx, calibration=rng.normal(size=(16, 5, 6)).astype(np.float32), profile="paper",
                           progress=False)
    assert "gather_elements" in [n.op for n in model.graph.nodes]
    x = rng.normal(size=(1, 5, 6)).astype(np.float32)
    session = ort.InferenceSession(model_onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    h = model.graph.tensors[model.graph.nodes[-1].inputs[0]]
    np.testing.assert_allclose(model.run(x), expected, atol=2 * h.scale)  # h's rounding and clamp
    trace = model.trace(x, float_input=True)
    gathered = np.take_along_axis(trace.tensors[h.name], indices, 1)
    np.testing.assert_array_equal(trace.tensors[model.graph.outputs[0]], gathered, strict=True)
    naive_out = model.with_backend("naive").run_int(trace.tensors[model.graph.inputs[0]])
    np.testing.assert_array_equal(naive_out, gathered, strict=True)


def test_gather_elements_errors_name_the_node():
    calibration = np.zeros((2, 5, 6), np.float32)
    with pytest.raises(ValidationError, match=r"GatherElements.*indices must lie in \[-n, n\) of axis 1"):
        intsim.convert(_model(np.full((1, 3, 6), 5, np.int64)), calibration=calibration, progress=False)
    with pytest.raises(IntsimError, match="GatherElements"):
        intsim.convert(_model(np.zeros((1, 3, 6), np.int64), computed=True), calibration=calibration, progress=False)
    with pytest.raises(ValidationError, match="indices must be integers of the data's rank 3"):
        intsim.convert(_model(np.zeros((3, 6), np.int64)), calibration=calibration, progress=False)


def test_gather_of_an_activation_by_integer_input_indices():
    """``Gather(h, positions)`` with ``positions`` an int64 graph input (one token position per sample): the
    ``gather_indexed`` op moves h's codes exactly and matches onnxruntime to h's rounding; an index out of
    range is a ValidationError naming the node."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(5)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Gather", ["h", "pos"], ["y"], axis=1)]
    graph = helper.make_graph(nodes, "pick", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5, 6]),
                                              helper.make_tensor_value_info("pos", TensorProto.INT64, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(rng.normal(size=(6, 6)).astype(np.float32), "w")])
    model_onnx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calibration = [{"x": rng.normal(size=(64, 5, 6)).astype(np.float32), "pos": rng.integers(-5, 5, 64)}]
    model = intsim.convert(model_onnx, calibration=calibration, profile="paper", progress=False)
    node = model.graph.nodes[-1]
    assert node.op == "gather_indexed"
    feeds = {"x": rng.normal(size=(3, 5, 6)).astype(np.float32) / 2, "pos": np.array([3, -1, 0])}  # inside the range
    session = ort.InferenceSession(model_onnx.SerializeToString(), providers=["CPUExecutionProvider"])
    h = model.graph.tensors[node.inputs[0]]
    np.testing.assert_allclose(model.run(feeds), session.run(None, feeds)[0], atol=2 * h.scale)
    trace = model.trace(feeds, float_input=True)
    expected = np.take(trace.tensors[h.name], [3, -1, 0], axis=1)
    np.testing.assert_array_equal(trace.tensors[model.graph.outputs[0]], expected, strict=True)
    with pytest.raises(ValidationError, match="gather_indexed 'Gather_1': indices must lie in \\[-5, 5\\)"):
        model.run({"x": feeds["x"], "pos": np.array([0, 5, 1])})
