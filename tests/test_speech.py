"""Speech models (issue 15): 1-D convolutions, a recurrent model's constant inputs and state batch axis
(:func:`intsim.importers.onnx_prepare.prepare_recurrent`), and the Squeeze sinking that keeps a 1-D conv
stack fused (:func:`intsim.floatgraph.speech_patterns.sink_squeezes`), on hand-built ONNX graphs against
onnxruntime.  The silero voice-activity detector itself is in tests/test_real_models.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import intsim
from intsim.converter.lowering import prepare_float_graph
from intsim.errors import UnsupportedOpError, ValidationError
from intsim.floatgraph.execute import run_float
from intsim.floatgraph.speech_patterns import sink_squeezes
from intsim.importers.onnx import import_onnx
from intsim.importers.onnx_prepare import prepare_recurrent

ort = pytest.importorskip("onnxruntime")


def _ort(model: onnx.ModelProto, feeds: dict) -> list:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _conv_stack(group=2, pads=(1, 2), strides=(2,), dilations=(1,)) -> onnx.ModelProto:
    """x [N, 4, 32] -> Conv1d(4->8) -> Relu -> Conv1d(8->3, k=1) -> Sigmoid: two 1-D convs in a row."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 4 // group, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (3, 8, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], group=group, pads=list(pads), strides=list(strides),
                              dilations=list(dilations), kernel_shape=[3]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Sigmoid", ["c2"], ["y"])]
    graph = helper.make_graph(nodes, "conv1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("group, pads, strides, dilations", [(1, (0, 0), (1,), (1,)), (2, (1, 2), (2,), (1,)),
                                                             (4, (2, 2), (1,), (2,))])
def test_conv1d_imports_as_conv2d_and_matches_onnxruntime(group, pads, strides, dilations):
    model = _conv_stack(group, pads, strides, dilations)
    x = np.random.default_rng(1).normal(size=(3, 4, 32)).astype(np.float32)
    graph = import_onnx(model)
    got = run_float(graph, [x])[graph.outputs[0]]
    np.testing.assert_allclose(got, _ort(model, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert [n.op for n in graph.nodes].count("Conv") == 2


def test_sink_squeezes_fuses_relu_into_the_conv_and_keeps_the_function():
    model = _conv_stack()
    raw = import_onnx(model)
    assert [n.op for n in raw.nodes] == ["Unsqueeze", "Conv", "Squeeze", "Relu", "Unsqueeze", "Conv", "Squeeze",
                                         "Sigmoid"]
    sunk = sink_squeezes(raw)
    # The ReLU sits right after its conv (one integer op), the Squeeze-Unsqueeze between the convs is gone.
    assert [n.op for n in sunk.nodes] == ["Unsqueeze", "Conv", "Relu", "Conv", "Sigmoid", "Squeeze"]
    x = np.random.default_rng(2).normal(size=(2, 4, 32)).astype(np.float32)
    np.testing.assert_array_equal(run_float(sunk, [x])["y"], run_float(raw, [x])["y"])
    assert [n.op for n in raw.nodes][2] == "Squeeze"  # the argument is left as it was
    int_model = intsim.convert(model, x, "paper", progress=False)
    assert [n.op for n in int_model.graph.nodes].count("conv2d") == 2
    np.testing.assert_allclose(int_model.run(x), _ort(model, {"x": x})[0], atol=0.05)


def test_conv1d_errors_name_the_node():
    model = _conv_stack()
    model.graph.node[0].attribute.append(helper.make_attribute("auto_pad", "SAME_UPPER"))
    with pytest.raises(UnsupportedOpError, match="auto_pad 'SAME_UPPER'"):
        import_onnx(model)
    model = _conv_stack()
    del model.graph.node[0].attribute[:]
    model.graph.node[0].attribute.append(helper.make_attribute("kernel_shape", [5]))
    with pytest.raises(ValidationError, match=r"kernel_shape \[5\] contradicts"):
        import_onnx(model)


def _recurrent() -> onnx.ModelProto:
    """A silero-shaped recurrent model: ``If (sr == 16000)`` picks a branch; each updates
    ``state`` [2, batch, 4] from x [batch, 4] and outputs y [batch, 1] and stateN [2, batch, 4]."""
    def branch(name, gain):
        k = numpy_helper.from_array(np.full((1, 1, 4), gain, np.float32), f"{name}_k")
        nodes = [helper.make_node("Unsqueeze", ["x", "axis0"], [f"{name}_x"]),
                 helper.make_node("Mul", [f"{name}_x", f"{name}_k"], [f"{name}_xk"]),
                 helper.make_node("Add", ["state", f"{name}_xk"], [f"{name}_sum"]),
                 helper.make_node("Tanh", [f"{name}_sum"], [f"{name}_state"]),
                 helper.make_node("ReduceMean", [f"{name}_state"], [f"{name}_m"], axes=[0, 2], keepdims=0),
                 helper.make_node("Unsqueeze", [f"{name}_m", "axis1"], [f"{name}_y"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None),
                                                   helper.make_tensor_value_info(f"{name}_state", TensorProto.FLOAT,
                                                                                 None)], [k])
    nodes = [helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["y", "stateN"], then_branch=branch("k16", 0.5),
                              else_branch=branch("k8", -2.0))]
    inits = [numpy_helper.from_array(np.array(16000, np.int64), "rate"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4]),
              helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "B", 4]),
              helper.make_tensor_value_info("sr", TensorProto.INT64, [])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1]),
               helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "B", 4])]
    model = helper.make_model(helper.make_graph(nodes, "recurrent", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("rate", [16000, 8000])
def test_prepare_recurrent_fixes_sr_and_puts_the_batch_first(rate):
    model = _recurrent()
    rng = np.random.default_rng(3)
    x, state = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(2, 5, 4)).astype(np.float32)
    y, state_n = _ort(model, {"x": x, "state": state, "sr": np.array(rate, np.int64)})
    prepared = prepare_recurrent(model, {"sr": rate}, {"state": 1, "stateN": 1})
    assert [t.name for t in prepared.graph.input] == ["x", "state"] and len(model.graph.input) == 3
    got_y, got_state = _ort(prepared, {"x": x, "state": state.transpose(1, 0, 2)})
    np.testing.assert_allclose(got_y, y, rtol=1e-6, atol=1e-7)  # the mean is summed in another order
    np.testing.assert_array_equal(got_state, state_n.transpose(1, 0, 2))
    graph = import_onnx(prepared)  # the If folds: one branch's nodes, no If
    assert graph.inputs == ["x", "state"] and graph.outputs == ["y", "stateN"]
    assert graph.shapes["state"] == (None, 2, 4) and "If" not in [n.op for n in graph.nodes]
    floats = run_float(graph, {"x": x, "state": state.transpose(1, 0, 2)})
    np.testing.assert_allclose(floats["y"], y, rtol=1e-6, atol=1e-6)


def test_a_recurrent_model_converts_and_runs_frame_by_frame():
    prepared = prepare_recurrent(_recurrent(), {"sr": 16000}, {"state": 1, "stateN": 1})
    rng = np.random.default_rng(4)
    frames = rng.normal(size=(40, 4)).astype(np.float32)
    states = np.tanh(rng.normal(size=(40, 2, 4))).astype(np.float32)
    int_model = intsim.convert(prepared, {"x": frames, "state": states}, "paper", progress=False)
    assert "If" not in [n.op for n in prepare_float_graph(prepared).nodes]
    state = np.zeros((1, 2, 4), np.float32)
    reference = state.transpose(1, 0, 2)
    for frame in frames[:8]:
        y, state = int_model.run({"x": frame[None], "state": state})
        want_y, reference = _ort(_recurrent(), {"x": frame[None], "state": reference, "sr": np.array(16000, np.int64)})
        np.testing.assert_allclose(y, want_y, atol=0.05)
        np.testing.assert_allclose(state, reference.transpose(1, 0, 2), atol=0.05)


def test_prepare_recurrent_errors():
    model = _recurrent()
    with pytest.raises(ValidationError, match=r"constants names 'rate'.*inputs are \['x', 'state', 'sr'\]"):
        prepare_recurrent(model, {"rate": 16000})
    with pytest.raises(ValidationError, match=r"constants\['sr'\] must be a rank-0 int64 value, found float64"):
        prepare_recurrent(model, {"sr": 16000.0})
    with pytest.raises(ValidationError, match=r"constants\['sr'\] must be a rank-0 int64 value.*shape \(1,\)"):
        prepare_recurrent(model, {"sr": [16000]})
    with pytest.raises(ValidationError, match="batch_axes names 'h'"):
        prepare_recurrent(model, batch_axes={"h": 1})
    with pytest.raises(ValidationError, match=r"batch_axes\['state'\] must be an axis of its rank-3 shape, found 3"):
        prepare_recurrent(model, batch_axes={"state": 3})
    with pytest.raises(ValidationError, match="only dim 0"):  # the batch of state is on axis 1
        import_onnx(prepare_recurrent(model, {"sr": 16000}))


def test_cli_convert_fixes_inputs_and_batch_axes(tmp_path, capsys):
    from intsim.cli import main

    onnx.save(_recurrent(), tmp_path / "vad.onnx")
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "cal.npz", x=rng.normal(size=(40, 4)).astype(np.float32),
             state=np.tanh(rng.normal(size=(40, 2, 4))).astype(np.float32))
    assert main(["convert", str(tmp_path / "vad.onnx"), "--calibration", str(tmp_path / "cal.npz"), "-o",
                 str(tmp_path / "vad.intsim"), "--fix-input", "sr=16000", "--batch-axis", "state=1",
                 "--batch-axis", "stateN=1"]) == 0
    cli_model = intsim.load(tmp_path / "vad.intsim")
    api_model = intsim.convert(prepare_recurrent(_recurrent(), {"sr": 16000}, {"state": 1, "stateN": 1}),
                               dict(np.load(tmp_path / "cal.npz")), "paper", progress=False)
    feeds = {"x": rng.normal(size=(3, 4)).astype(np.float32), "state": np.zeros((3, 2, 4), np.float32)}
    for got, want in zip(cli_model.run(feeds), api_model.run(feeds)):
        np.testing.assert_array_equal(got, want, strict=True)
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "vad.onnx"), "--calibration", str(tmp_path / "cal.npz"), "-o",
                 str(tmp_path / "bad.intsim"), "--fix-input", "rate=16000"]) == 2
    assert "constants names 'rate'" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "vad.onnx"), "--calibration", str(tmp_path / "cal.npz"), "-o",
                 str(tmp_path / "bad.intsim"), "--batch-axis", "state"]) == 2
    assert "--batch-axis takes NAME=VALUE" in capsys.readouterr().err


def test_a_dynamically_quantized_model_is_refused_by_name():
    """ddddocr's captcha reader (CNN + LSTM) ships as onnxruntime's quantize_dynamic wrote it; the refusal
    names the ops instead of failing on the first one's second output."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("ConvInteger", ["xq", "w", "xz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["accf", "xs"], ["y"])]
    graph = helper.make_graph(nodes, "dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((2, 1, 3, 3), np.int8), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    with pytest.raises(UnsupportedOpError, match=r"dynamically quantized .*ConvInteger, DynamicQuantizeLinear"):
        import_onnx(model)
