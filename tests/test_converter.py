"""The converter: hand-checked lowering, shipped models end to end, profiles, overrides, errors."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import intsim
from intsim import Model, UnsupportedOpError, ValidationError
from intsim.datasets import load_dataset
from intsim.models import model_path
from intsim.profiles import builtin_names


def _onnx(nodes, inits, x_shape, y_shape, opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _conv_relu_model():
    # y = relu(0.5 * x + 0.1), a 1x1 convolution on one channel.
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    return _onnx(nodes, {"w": [[[[0.5]]]], "b": [0.1]}, ["N", 1, 2, 2], ["N", 1, 2, 2])


def test_hand_checked_lowering_of_conv_relu():
    calibration = np.array([0.0, 1.0, 0.25, 0.5, 0.75, 0.3, 0.6, 0.9], np.float32).reshape(2, 1, 2, 2)
    model = intsim.convert(_conv_relu_model(), calibration=calibration, profile="paper", progress=False)
    g = model.graph
    # Input range [0, 1] on int8 asymmetric: scale 1/255, zero point round(-128 - 0) = -128.
    assert g.tensors["x"].scale == pytest.approx(1 / 255) and g.tensors["x"].zero_point == -128
    # Output (after the fused ReLU) in [0.1, 0.6] widened to include 0: [0, 0.6], scale 0.6/255, zero point -128.
    assert g.tensors["y"].scale == pytest.approx(0.6 / 255) and g.tensors["y"].zero_point == -128
    conv = next(n for n in g.nodes if n.op == "conv2d")
    # Symmetric narrow int8 weight: 0.5 is the largest magnitude, so it is code 127 with scale 0.5/127.
    np.testing.assert_array_equal(conv.params["weight"], np.array([[[[127]]]], np.int8), strict=True)
    # Bias 0.1 with scale s_x * s_w = (1/255) * (0.5/127): 0.1 * 255 * 127 / 0.5 = 6477.
    np.testing.assert_array_equal(conv.params["bias"], np.array([6477], np.int32), strict=True)
    assert conv.attrs["clamp"] == [-128, 127]  # ReLU at the zero point: real 0 is code -128
    assert g.metadata["real_multiplier"][conv.name][0] == pytest.approx(0.5 / (127 * 0.6))
    # x = 1.0 is code 127: acc = 6477 + (127 + 128) * 127 = 38862; times 0.5/(127*0.6) = 255.0; -128 -> 127.
    x = np.ones((1, 1, 2, 2), np.float32)
    trace = model.trace(x, float_input=True)
    np.testing.assert_array_equal(trace.accumulators[conv.name], np.full((1, 2, 2, 1), 38862, np.int32), strict=True)
    np.testing.assert_array_equal(model.run_int(np.full((1, 1, 2, 2), 127, np.int8)),
                                  np.full((1, 1, 2, 2), 127, np.int8), strict=True)
    # x = 0 is code -128: acc = 6477, times the multiplier = 42.5 (up to the multiplier's 31 bits) -> 42 or 43.
    y0 = model.run_int(np.full((1, 1, 2, 2), -128, np.int8))
    assert set(np.unique(y0).tolist()) <= {42 - 128, 43 - 128}


def test_compare_on_a_non_classifier_reports_output_sqnr_not_top1():
    # A 4-D output has no classes: top-1 agreement is not measured (it used to print 0.00%), and the
    # output SQNR is that of the dequantized integer output against onnxruntime's float output.
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)
    calibration = rng.uniform(0, 1, (16, 1, 2, 2)).astype(np.float32)
    onnx_model = _conv_relu_model()
    model = intsim.convert(onnx_model, calibration=calibration, profile="paper", progress=False)
    report = intsim.compare(onnx_model, model, calibration, labels=np.zeros(16, np.int64), progress=False)
    assert report.top1_agreement_int is None and report.top1_agreement_sim is None and report.accuracy == {}
    assert "top-1 agreement: not measured" in report.table()
    float_out = ort.InferenceSession(onnx_model.SerializeToString()).run(None, {"x": calibration})[0]
    out = model.graph.tensors[model.graph.outputs[0]]
    codes = model.run_int(model.quantize_inputs([calibration])[0])
    deq = (codes.astype(np.float64) - out.zero_point) * out.scale  # the graph ends in NCHW
    expected = 10 * np.log10(np.sum(float_out.astype(np.float64) ** 2) / np.sum((float_out - deq) ** 2))
    assert report.output_sqnr_int == pytest.approx(expected, abs=1e-3)
    assert report.to_dict()["output_sqnr_int_db"] == report.output_sqnr_int


def test_tanh_output_range_stays_within_its_codomain():
    # onnxruntime's float Tanh returns 1.0000002 at x = 8.3065 and -1.0000002 at x = -8.999; the output's
    # range is still [-1, 1]: scale 2/255 and the zero point of round(-128 + 127.5) (a tie, to even: 0).
    nodes = [helper.make_node("Tanh", ["x"], ["y"])]
    model = _onnx(nodes, {}, ["N", 4], ["N", 4])
    calibration = np.array([[8.3065, -8.999, 0.5, -0.25]] * 4, np.float32)
    int_model = intsim.convert(model, calibration=calibration, profile="paper", progress=False)
    y = int_model.graph.tensors[int_model.graph.outputs[0]]
    assert y.scale == pytest.approx(2 / 255, rel=1e-12) and y.zero_point == int(np.rint(-128 + 127.5)) == 0


def test_dead_channel_bias_fits_by_raising_its_weight_scale():
    # Channel 1 has a near-zero weight and bias -3 (a dead channel after batch-norm folding).  At
    # s_x * s_w = (1/255) * (1e-9/127) its bias would be -9.7e13 codes; clipped to int32 it would read
    # as about -7e-5 instead of -3.  The converter raises that channel's weight scale so the bias is
    # 2^30 codes (half the int32 range), which makes the weight code 0 and keeps y = -3.
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"])]
    onnx_model = _onnx(nodes, {"w": [[[[0.5]]], [[[1e-9]]]], "b": [0.1, -3.0]}, ["N", 1, 2, 2], ["N", 2, 2, 2])
    calibration = np.array([0.0, 1.0, 0.25, 0.5, 0.75, 0.3, 0.6, 0.9], np.float32).reshape(2, 1, 2, 2)
    model = intsim.convert(onnx_model, calibration=calibration, profile="paper", progress=False)
    conv = next(n for n in model.graph.nodes if n.op == "conv2d")
    meta = model.graph.metadata
    assert meta["weight_scale_raised"][conv.name] == 1 and meta["bias_overflow"][conv.name] == 0
    np.testing.assert_array_equal(conv.params["weight"], np.array([[[[127]]], [[[0]]]], np.int8), strict=True)
    np.testing.assert_array_equal(conv.params["bias"], np.array([6477, -2 ** 30], np.int32), strict=True)
    y = model.run(calibration)
    y_scale = model.graph.tensors[model.graph.outputs[0]].scale
    assert np.all(np.abs(y[:, 1] + 3.0) <= y_scale)


@pytest.fixture(scope="module")
def digits():
    x_train, _ = load_dataset("digits", "train")
    x_test, y_test = load_dataset("digits", "test")
    return x_train[:512], x_test, y_test


@pytest.mark.parametrize("name", ["resnet_digits", "mobilenet_digits"])
def test_shipped_digits_models_w8a8_paper(digits, name):
    calibration, x_test, y_test = digits
    path = model_path(f"{name}.onnx")
    model = intsim.convert(path, calibration=calibration, profile="paper", progress=False)
    report = intsim.compare(path, model, x_test, y_test)
    assert abs(report.accuracy["integer"] - report.accuracy["float"]) <= 0.005
    assert report.top1_agreement_int >= 0.98
    # The paper profile rounds once, half up: against exact half-to-even requantization only exact ties can differ.
    assert all(r.local_mismatch_rate < 1e-3 for r in report.layers if r.local_elements)
    assert all(r.sqnr_int > 25 for r in report.layers)


def test_export_styles_give_the_same_integer_model(digits):
    calibration, x_test, _ = digits
    legacy = intsim.convert(model_path("resnet_digits.onnx"), calibration=calibration, progress=False)
    dynamo = intsim.convert(model_path("resnet_digits_dynamo.onnx"), calibration=calibration, progress=False)
    x = legacy.quantize_inputs([x_test[:64]])[0]
    np.testing.assert_array_equal(legacy.run_int(x), dynamo.run_int(x), strict=True)


@pytest.mark.parametrize("profile", builtin_names())
def test_every_profile_converts_and_fast_equals_naive(digits, profile):
    calibration, x_test, _ = digits
    model = intsim.convert(model_path("mobilenet_digits.onnx"), calibration=calibration[:128], profile=profile,
                           progress=False)
    assert model.profile.name == profile
    x = model.quantize_inputs([x_test[:16]])[0]
    np.testing.assert_array_equal(model.run_int(x), model.with_backend("naive").run_int(x), strict=True)
    weights = [n.params["weight"] for n in model.graph.nodes if "weight" in n.params]
    assert all(w.dtype == model.profile.weight_dtype for w in weights)
    if model.profile.power_of_two_scales:
        scales = [t.scale for t in model.graph.tensors.values()]
        assert all(np.log2(s) == np.round(np.log2(s)) for s in scales)


def test_bit_width_and_granularity_overrides(digits):
    calibration, _, _ = digits
    model = intsim.convert(model_path("resnet_digits.onnx"), calibration=calibration[:128], weight_bits=4,
                           activation_bits=4, per_channel=False, progress=False)
    p = model.profile
    assert (p.weight_bits, p.activation_bits, p.per_channel) == (4, 4, False)
    for node in model.graph.nodes:
        if "weight" in node.params:
            assert node.params["weight"].min() >= -7 and node.params["weight"].max() <= 7
            assert np.unique(model.graph.metadata["weight_scale"][node.name]).size == 1
    for t in model.graph.tensors.values():
        assert -8 <= t.zero_point <= 7


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "cross_entropy"])
def test_range_methods(digits, method):
    calibration, x_test, y_test = digits
    path = model_path("resnet_digits.onnx")
    model = intsim.convert(path, calibration=calibration[:256], range_method=method, weight_range_method="mse",
                           progress=False)
    assert model.graph.metadata["calibration"]["range_method"] == method
    report = intsim.compare(path, model, x_test[:200], y_test[:200])
    assert report.top1_agreement_int >= 0.97


def test_save_load_keeps_metadata_for_reports(digits, tmp_path):
    calibration, x_test, y_test = digits
    path = model_path("resnet_digits.onnx")
    model = intsim.convert(path, calibration=calibration[:128], progress=False)
    model.save(tmp_path / "m.intsim")
    loaded = intsim.load(tmp_path / "m.intsim")
    a = intsim.compare(path, model, x_test[:50], y_test[:50]).to_dict()
    b = intsim.compare(path, loaded, x_test[:50], y_test[:50]).to_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_report_html_and_plot(digits, tmp_path):
    calibration, x_test, y_test = digits
    path = model_path("resnet_digits.onnx")
    report = intsim.compare(path, intsim.convert(path, calibration=calibration[:64], progress=False),
                            x_test[:32], y_test[:32])
    report.to_html(tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    assert "<table>" in text and "logits" in text
    pytest.importorskip("matplotlib")
    report.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fashion_models_w8a8_paper():
    try:
        x_train, _ = load_dataset("fashion", "train")
        x_test, y_test = load_dataset("fashion", "test")
    except ValidationError:
        pytest.skip("dataset-fashion-mnist is not installed")
    for name in ("resnet_fashion", "mobilenet_fashion"):
        path = model_path(f"{name}.onnx")
        if not path.exists():
            pytest.fail(f"{path} is not shipped")
        model = intsim.convert(path, calibration=x_train[:256], progress=False)
        report = intsim.compare(path, model, x_test[:2000], y_test[:2000])
        assert abs(report.accuracy["integer"] - report.accuracy["float"]) <= 0.005, name
        assert report.top1_agreement_int >= 0.98, name


def test_lut_ops_softmax_and_layout_ops_convert():
    # conv -> hardswish -> sigmoid*x (SiLU) -> tanh -> leaky relu -> maxpool -> concat with avgpool
    # -> mean (keepdims) -> transpose -> reshape -> gemm -> softmax.
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(0, 0.3, (4, 2, 3, 3)), "b": rng.normal(0, 0.1, 4), "fw": rng.normal(0, 0.3, (3, 8)),
             "fb": rng.normal(0, 0.1, 3), "shape": [0, -1]}
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c"], ["h"]),
        helper.make_node("Sigmoid", ["h"], ["s"]),
        helper.make_node("Mul", ["h", "s"], ["silu"]),
        helper.make_node("Tanh", ["silu"], ["t"]),
        helper.make_node("LeakyRelu", ["t"], ["l"], alpha=0.1),
        helper.make_node("MaxPool", ["l"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["l"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["mp", "ap"], ["cat"], axis=1),
        helper.make_node("ReduceMean", ["cat"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node("Transpose", ["m"], ["tr"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["tr", "shape"], ["r"]),
        helper.make_node("Gemm", ["r", "fw", "fb"], ["g"], transB=1),
        helper.make_node("Softmax", ["g"], ["y"], axis=1),
    ]
    inits_typed = {k: v for k, v in inits.items() if k != "shape"}
    model = _onnx(nodes, inits_typed, ["N", 2, 6, 6], ["N", 3], opset=12)
    model.graph.initializer.append(numpy_helper.from_array(np.array([0, -1], np.int64), "shape"))
    calibration = rng.normal(0, 1, (64, 2, 6, 6)).astype(np.float32)
    int_model = intsim.convert(model, calibration=calibration, profile="tflite", progress=False)
    ops = [n.op for n in int_model.graph.nodes]
    assert ops.count("lut") == 4 and "softmax" in ops and "concat" in ops and "avg_pool" in ops
    report = intsim.compare(model, int_model, calibration[:32])
    assert report.top1_agreement_int >= 0.9
    probabilities = int_model.run(calibration[:8])
    assert np.all(np.abs(probabilities.sum(axis=1) - 1) < 0.05)


def test_conversion_errors():
    calibration = np.zeros((2, 1, 2, 2), np.float32)
    with pytest.raises(ValidationError, match="needs calibration data"):
        intsim.convert(_conv_relu_model())
    with pytest.raises(ValidationError, match="must be float"):
        intsim.convert(_conv_relu_model(), calibration=calibration.astype(np.int32))
    with pytest.raises(ValidationError, match="range_method must be one of"):
        intsim.convert(_conv_relu_model(), calibration=calibration, range_method="kl")
    with pytest.raises(ValidationError, match="weight_bits must be in"):
        intsim.convert(_conv_relu_model(), calibration=calibration, weight_bits=1)
    prelu = _onnx([helper.make_node("PRelu", ["x", "slope"], ["y"])], {"slope": [[[0.1]], [[0.2]]]},
                  ["N", 2, 2, 2], ["N", 2, 2, 2])
    with pytest.raises(UnsupportedOpError, match="PRelu with a per-channel slope"):
        intsim.convert(prelu, calibration=np.zeros((2, 2, 2, 2), np.float32))
    softmax = _onnx([helper.make_node("Softmax", ["x"], ["y"], axis=1)], {}, ["N", 3], ["N", 3])
    with pytest.raises(UnsupportedOpError, match="integer softmax needs an integer rounding mode"):
        intsim.convert(softmax, calibration=np.zeros((2, 3), np.float32), profile="onnxruntime")
    with pytest.raises(ValidationError, match="no converter metadata"):
        from intsim.examples import tiny_cnn

        intsim.compare(_conv_relu_model(), Model(tiny_cnn("tflite")), calibration)


def test_data_free_conversion_uses_batch_norm_ranges(batch_norm_net):
    path, x, _ = batch_norm_net
    model = intsim.convert(path, input_range=(0.0, 1.0), profile="paper")
    assert model.graph.metadata["calibration"] == {"samples": 0, "range_method": "batch_norm",
                                                   "logits_range_method": "minmax", "weight_range_method": "minmax"}
    # The first ReLU's range is [0, max(beta + 6 |gamma|)]: scale (that hi) / 255 on int8 asymmetric.
    proto = onnx.load(path)
    first_bn = next(n for n in proto.graph.node if n.op_type == "BatchNormalization")
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    gamma, beta = weights[first_bn.input[1]], weights[first_bn.input[2]]
    hi = float((beta + 6 * np.abs(gamma)).max())
    relu_tensor = next(t for t in model.graph.tensors.values() if t.shape == (None, 8, 8, 8))
    assert relu_tensor.scale == pytest.approx(hi / 255, rel=1e-6)
    report = intsim.compare(path, model, x[:128])
    assert report.top1_agreement_int >= 0.9
