"""The float graph through onnxruntime (:mod:`intsim.floatgraph.ort_session`) against the numpy reference
executor (:mod:`intsim.floatgraph.execute`): float agreement within float32 accumulation-order tolerance,
fake quantization equal bit for bit, conversions equal where the float arithmetic is exact, and the
fallback to numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("onnxruntime")

import intsim  # noqa: E402
from intsim.converter.calibration import calibrate  # noqa: E402
from intsim.converter.lowering import prepare_float_graph  # noqa: E402
from intsim.datasets import load_dataset  # noqa: E402
from intsim.errors import ValidationError  # noqa: E402
from intsim.floatgraph import FloatGraph, FloatNode  # noqa: E402
from intsim.floatgraph.execute import run_float  # noqa: E402
from intsim.floatgraph.ort_session import FloatSession, fake_quantize  # noqa: E402
from intsim.importers.onnx import import_onnx  # noqa: E402
from intsim.models import model_path  # noqa: E402
from intsim.ptq.statistics import Stepper  # noqa: E402
from tests.test_onnx_import import OP_CASES, _feeds, _model  # noqa: E402

# onnxruntime sums in float32 in its own order, the reference in float64 rounded once: the difference of a
# tensor is a few float32 ulps of its largest term.  Measured: 4e-7 of the tensor's largest magnitude on the
# shipped models, 1e-5 on EfficientNet-Lite0 (2 M-term reductions, 60 layers deep).
RELATIVE_TOLERANCE = 1e-5


def _close(got, expected, name=""):
    scale = max(float(np.max(np.abs(expected))), 1e-30) if expected.size else 1.0
    np.testing.assert_allclose(got, expected, rtol=0, atol=RELATIVE_TOLERANCE * scale, err_msg=name)


def _every_tensor(graph: FloatGraph) -> list[str]:
    return [t for n in graph.nodes for t in n.outputs]


@pytest.mark.parametrize("case", OP_CASES, ids=list(OP_CASES))
def test_each_op_agrees_with_the_reference(case):
    nodes, inputs, opset, _, _ = OP_CASES[case]
    model = _model(nodes, inputs, opset)
    graph = import_onnx(model)
    feeds = _feeds(model, 3)
    session = FloatSession(graph, _every_tensor(graph))
    assert session.executor == "onnxruntime"
    expected = run_float(graph, feeds)
    for name, value in session.run(feeds).items():
        assert value.dtype == np.float32 and value.shape == expected[name].shape, name
        _close(value, expected[name], name)


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits_dynamo"])
def test_shipped_models_agree_on_every_tensor(name):
    graph = prepare_float_graph(model_path(f"{name}.onnx"))
    x = load_dataset("digits", "test")[0][:16]
    expected = run_float(graph, [x])
    got = FloatSession(graph, _every_tensor(graph)).run([x])
    for t, value in got.items():
        _close(value, expected[t], t)


def _hooked_graph() -> FloatGraph:
    nodes = [FloatNode("Relu", "relu", ["x"], ["r"]), FloatNode("Add", "add", ["r", "x"], ["y"])]
    return FloatGraph("fq", nodes, ["x"], ["y"], {}, {"x": (None, 8), "r": (None, 8), "y": (None, 8)})


@pytest.mark.parametrize("executor", ["onnxruntime", "numpy"])
def test_fake_quantization_is_bit_exact_with_the_reference(executor):
    graph = _hooked_graph()
    scale = 0.1
    # Ties x.5 of the scale (both directions), the clamp bounds, and random values.
    ties = (np.arange(-8, 8) + 0.5) * scale
    x = np.concatenate([ties, [-100.0, 100.0, 0.0, 3 * scale]], axis=0)
    x = np.concatenate([x, np.random.default_rng(0).normal(0, 2, 44)]).astype(np.float32).reshape(-1, 8)
    points = {"x": (scale, 3, -128, 127), "r": (0.05, -128, -128, 40), "y": (0.2, 0, -100, 100)}
    session = FloatSession(graph, ["x", "r", "y"], fake_quant=points, executor=executor)
    assert session.executor == executor
    got = session.run([x])

    def hook(name, value):
        return fake_quantize(value, *points[name]) if name in points else value

    expected = run_float(graph, [x], hook=hook)
    for t in ("x", "r", "y"):
        np.testing.assert_array_equal(got[t], expected[t], strict=True, err_msg=t)
    assert not np.array_equal(got["x"], x)  # the fake quantizer did something


def test_fake_quantize_rounds_half_to_even_and_clamps():
    x = np.array([0.25, 0.75, -0.25, 10.0, -10.0], np.float32)
    np.testing.assert_array_equal(fake_quantize(x, 0.5, 1, -2, 3), np.array([0.0, 1.0, 0.0, 1.0, -1.5], np.float32),
                                  strict=True)


def test_numpy_executor_is_the_reference_exactly(monkeypatch):
    graph = prepare_float_graph(model_path("resnet_digits.onnx"))
    x = load_dataset("digits", "test")[0][:4]
    monkeypatch.setenv("INTSIM_FLOAT_EXECUTOR", "numpy")
    session = FloatSession(graph, _every_tensor(graph))
    assert session.executor == "numpy"
    expected = run_float(graph, [x])
    for t, value in session.run([x]).items():
        np.testing.assert_array_equal(value, expected[t], strict=True)


def test_a_graph_onnxruntime_cannot_run_falls_back_to_numpy():
    node = FloatNode("Resize", "up", ["x"], ["y"], {"sizes": [0, 1, 4, 6], "nearest_mode": "floor",
                                                      "coordinate_transformation_mode": "tf_half_pixel_for_nn"})
    graph = FloatGraph("g", [node], ["x"], ["y"], {}, {"x": (None, 1, 2, 3), "y": (None, 1, 4, 6)})
    x = np.arange(12, dtype=np.float32).reshape(2, 1, 2, 3)
    with pytest.warns(RuntimeWarning, match="tf_half_pixel_for_nn.*numpy reference executor"):
        session = FloatSession(graph)
    assert session.executor == "numpy"
    np.testing.assert_array_equal(session.run([x])["y"], run_float(graph, [x])["y"], strict=True)


def test_nothing_to_compute_returns_the_feeds():
    graph = _hooked_graph()
    x = np.ones((2, 8), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FloatSession(graph, []).run([x]) == {}
        np.testing.assert_array_equal(FloatSession(graph, ["x"]).run([x])["x"], x, strict=True)


def test_rejects():
    graph = _hooked_graph()
    with pytest.raises(ValidationError, match=r"requested outputs \['nope'\] are not computed"):
        FloatSession(graph, ["nope"])
    with pytest.raises(ValidationError, match="float executor must be 'onnxruntime' or 'numpy', found 'gpu'"):
        FloatSession(graph, executor="gpu")
    with pytest.raises(ValidationError, match=r"input 'x': expected shape \(None, 8\)"):
        FloatSession(graph).run([np.zeros((2, 7), np.float32)])
    with pytest.raises(ValidationError, match="expected a float array"):
        FloatSession(graph).run([np.zeros((2, 8), np.int32)])


def test_stepper_segments_agree_with_the_reference():
    graph = prepare_float_graph(model_path("resnet_digits.onnx"))
    x = load_dataset("digits", "train")[0][:24]
    expected = run_float(graph, [x[:16]]), run_float(graph, [x[16:]])
    stepper = Stepper(graph, x, 16)
    for stop in (3, 3, 7, len(graph.nodes)):
        for values, reference in zip(stepper.run_to(stop), expected):
            for t, value in values.items():
                _close(value, reference[t], t)
    assert set(stepper.values[0]) == set(graph.outputs)


def test_calibration_ranges_agree_within_tolerance(monkeypatch):
    """Ranges from onnxruntime's float32 and the reference's float64 sums differ by accumulation order only."""
    graph = prepare_float_graph(model_path("resnet_digits.onnx"))
    x = load_dataset("digits", "train")[0][:64]
    tensors = [graph.inputs[0]] + _every_tensor(graph)
    session = FloatSession(graph, tensors[1:])
    fast = calibrate(lambda b: {tensors[0]: b, **session.run([b])}, x, tensors, batch_size=32, progress=False)
    reference = calibrate(lambda b: run_float(graph, [b]), x, tensors, batch_size=32, progress=False)
    for t in tensors:
        magnitude = max(abs(reference[t].min), abs(reference[t].max))
        assert abs(fast[t].min - reference[t].min) <= RELATIVE_TOLERANCE * magnitude, t
        assert abs(fast[t].max - reference[t].max) <= RELATIVE_TOLERANCE * magnitude, t


def _exact_model():
    """Integer weights, biases and inputs: every float32 sum is exact, whatever its order."""
    rng = np.random.default_rng(3)
    inits = {"w1": rng.integers(-2, 3, (6, 3, 3, 3)).astype(np.float32), "b1": rng.integers(-4, 5, 6).astype(np.float32),
             "w2": rng.integers(-2, 3, (4, 6, 3, 3)).astype(np.float32), "g": rng.integers(-2, 3, (5, 64)).astype(np.float32),
             "c": rng.integers(-4, 5, 5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["k"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["k"], ["f"]),
             helper.make_node("Gemm", ["f", "g", "c"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "exact", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("profile", ["paper", "tflite"])
def test_convert_is_identical_when_the_float_arithmetic_is_exact(monkeypatch, profile):
    model = _exact_model()
    x = np.random.default_rng(4).integers(-3, 4, (40, 3, 8, 8)).astype(np.float32)
    graphs = {}
    for executor in ("numpy", "onnxruntime"):
        monkeypatch.setenv("INTSIM_FLOAT_EXECUTOR", executor)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no fallback: onnxruntime really ran
            graphs[executor] = intsim.convert(model, x, profile, batch_size=16, progress=False).graph
    a, b = graphs["numpy"], graphs["onnxruntime"]
    assert a.tensors == b.tensors
    assert [(n.name, n.op, n.inputs, n.outputs, n.attrs) for n in a.nodes] == \
        [(n.name, n.op, n.inputs, n.outputs, n.attrs) for n in b.nodes]
    for p, q in zip(a.nodes, b.nodes):
        assert p.params.keys() == q.params.keys()
        for key in p.params:
            np.testing.assert_array_equal(p.params[key], q.params[key], strict=True, err_msg=f"{p.name} {key}")
