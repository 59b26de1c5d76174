"""Per-layer precision (``convert(..., layer_config=...)``): hand-checked formats node by node, boundary
rescales, naive-vs-fast exactness on a mixed graph, precedence of patterns, errors, TOML and the CLI."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import intsim
from intsim import Model, ValidationError
from intsim.cli import main
from intsim.converter.layer_config import LayerFormats, layer_config_toml, load_layer_config
from intsim.export.tosa import lower_to_tosa
from intsim.graph.fileformat import load_graph, save_graph


def _net():
    """conv1 (2->4, 3x3) + ReLU, conv2 (4->4, 1x1) + ReLU, max pool 2x2, flatten, fc (16->3)."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(size=(4, 2, 3, 3)), "b1": rng.normal(size=4) * 0.1,
             "w2": rng.normal(size=(4, 4, 1, 1)), "b2": rng.normal(size=4) * 0.1,
             "wf": rng.normal(size=(3, 16)), "bf": rng.normal(size=3) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def net():
    x = np.random.default_rng(1).normal(size=(64, 2, 4, 4)).astype(np.float32)
    return _net(), x


def _node(model, name):
    return next(n for n in model.graph.nodes if n.name == name)


def _producer(model, tensor):
    return next(n for n in model.graph.nodes if tensor in n.outputs)


def test_formats_are_honoured_node_by_node(net):
    onnx_model, x = net
    model = intsim.convert(onnx_model, x, profile="paper", progress=False,
                           layer_config={"Conv": {"weight_bits": 4}, "conv2": {"activation_bits": 16}})
    g = model.graph
    conv1, conv2, fc = _node(model, "conv1"), _node(model, "conv2"), _node(model, "fc")
    # 4-bit symmetric narrow weights: codes in [-7, 7], each channel's largest magnitude at 7 (per channel,
    # min/max); stored in int8.  The fc keeps the profile's 8 bits: [-127, 127], largest magnitude 127.
    for conv in (conv1, conv2):
        w = conv.params["weight"]
        assert w.dtype == np.int8 and w.min() >= -7 and w.max() <= 7
        np.testing.assert_array_equal(np.abs(w.astype(np.int64)).reshape(4, -1).max(axis=1), np.full(4, 7),
                                      strict=True)
    assert np.abs(fc.params["weight"].astype(np.int64)).max() == 127
    # conv2 computes in 16-bit activations: its input is rescaled int8 -> int16, its output is int16,
    # and the pool (a data-movement op) keeps int16 ...
    x2 = g.tensors[conv2.inputs[0]]
    assert x2.dtype == "int16" and _producer(model, x2.name).op == "rescale"
    assert g.tensors[_producer(model, x2.name).inputs[0]].dtype == "int8"
    assert g.tensors[conv2.outputs[0]].dtype == "int16"
    pool = _node(model, "pool")
    assert g.tensors[pool.inputs[0]].dtype == "int16" and g.tensors[pool.outputs[0]].dtype == "int16"
    # ... until the fc, which reads 8-bit activations: a rescale int16 -> int8 before it.
    fc_in = g.tensors[fc.inputs[0]]
    back = _producer(model, fc_in.name)
    assert fc_in.dtype == "int8" and back.op == "rescale" and g.tensors[back.inputs[0]].dtype == "int16"
    assert back.attrs["clamp"] == [-128, 127]
    # A rescale keeps the real range: 65535 steps of the int16 scale span what 255 steps of int8 do.
    wide, narrow = g.tensors[back.inputs[0]], fc_in
    assert wide.scale * 65535 == pytest.approx(narrow.scale * 255, rel=1e-9)
    assert g.metadata["layer_formats"] == {"conv1": "w4a8", "conv2": "w4a16", "fc": "w8a8"}
    codes = model.quantize_inputs([x])[0]
    np.testing.assert_array_equal(model.run_int(codes), model.with_backend("naive").run_int(codes), strict=True)


def test_mixed_graph_fast_equals_naive_on_random_codes(net):
    onnx_model, x = net
    model = intsim.convert(onnx_model, x, profile="paper", progress=False,
                           layer_config={"conv1": {"activation_bits": 16, "weight_bits": 6},
                                         "fc": {"weight_bits": 12, "activation_bits": 16}})
    assert _node(model, "fc").params["weight"].dtype == np.int16
    assert model.graph.tensors["x"].dtype == "int16"  # the input takes its widest reader's format
    codes = np.random.default_rng(2).integers(-2**15, 2**15, size=(16, 2, 4, 4)).astype(np.int16)
    np.testing.assert_array_equal(model.run_int(codes), model.with_backend("naive").run_int(codes), strict=True)
    fast, naive = model.trace(codes), model.with_backend("naive").trace(codes)
    for name, value in naive.tensors.items():
        np.testing.assert_array_equal(fast.tensors[name], value, strict=True)


def test_narrow_input_codes_follow_the_input_tensor_bits(net):
    onnx_model, x = net
    model = intsim.convert(onnx_model, x, profile="paper", progress=False,
                           layer_config={"conv1": {"activation_bits": 4}})
    info = model.graph.tensors["x"]
    assert (info.dtype, info.bits, info.code_range) == ("int8", 4, (-8, 7))
    with pytest.warns(intsim.errors.InputWarning, match=r"far outside the range"):
        codes = model.quantize_inputs([x * 100])[0]  # far outside the range: the codes clamp to 4 bits
    assert codes.min() == -8 and codes.max() == 7
    assert model.graph.tensors[_node(model, "conv1").outputs[0]].bits == 4
    # The same under a 3-bit profile without a layer_config: input codes stay in [-4, 3], not int8's range.
    three = intsim.convert(onnx_model, x, profile="paper", activation_bits=3, progress=False)
    assert three.graph.tensors["x"].code_range == (-4, 3)
    with pytest.warns(intsim.errors.InputWarning):
        codes = three.quantize_inputs([x * 100])[0]
    assert codes.min() == -4 and codes.max() == 3


def test_wide_input_of_a_narrow_profile_keeps_its_own_bits(net):
    # An 8-bit first layer in a 3-bit profile: the input is full-width int8, and its codes are those of a
    # uniform 8-bit conversion (the runtime used to read the profile's 3-bit range off the int8 dtype).
    onnx_model, x = net
    mixed = intsim.convert(onnx_model, x, profile="paper", activation_bits=3, progress=False,
                           layer_config={"conv1": {"activation_bits": 8}})
    uniform = intsim.convert(onnx_model, x, profile="paper", progress=False)
    info = mixed.graph.tensors["x"]
    assert (info.dtype, info.code_range) == ("int8", (-128, 127))
    assert (info.scale, info.zero_point) == (uniform.graph.tensors["x"].scale, uniform.graph.tensors["x"].zero_point)
    codes = mixed.quantize_inputs([x])[0]
    np.testing.assert_array_equal(codes, uniform.quantize_inputs([x])[0], strict=True)
    assert codes.min() < -4 or codes.max() > 3
    assert mixed.graph.tensors[_node(mixed, "conv2").outputs[0]].code_range == (-4, 3)


def test_saved_mixed_graph_keeps_bits(net, tmp_path):
    onnx_model, x = net
    model = intsim.convert(onnx_model, x, profile="paper", progress=False,
                           layer_config={"conv1": {"activation_bits": 4}, "conv2": {"activation_bits": 16}})
    save_graph(model.graph, tmp_path / "m.intsim")
    loaded = load_graph(tmp_path / "m.intsim")
    assert {t.name: (t.dtype, t.bits) for t in loaded.tensors.values()} == \
        {t.name: (t.dtype, t.bits) for t in model.graph.tensors.values()}
    codes = model.quantize_inputs([x])[0]
    np.testing.assert_array_equal(Model(loaded).run_int(codes), model.run_int(codes), strict=True)


def _formats(config):
    from intsim.profiles import get_profile

    nodes = [("conv1", "Conv"), ("conv2", "Conv"), ("block.conv3", "Conv"), ("fc", "Gemm")]
    return LayerFormats(get_profile("paper"), config, nodes).overrides


def test_precedence_exact_name_over_glob_over_op_type_later_wins():
    config = {"conv1": {"weight_bits": 6}, "Conv": {"weight_bits": 4, "per_channel": False},
              "conv*": {"weight_bits": 5}, "*1": {"weight_bits": 7}, "Gemm": {"activation_bits": 16}}
    over = _formats(config)
    assert over["conv1"] == {"weight_bits": 6, "per_channel": False}  # name beats both globs and the op type
    assert over["conv2"] == {"weight_bits": 5, "per_channel": False}  # glob beats op type, keys merge
    assert over["block.conv3"] == {"weight_bits": 4, "per_channel": False}  # "conv*" does not match it
    assert over["fc"] == {"activation_bits": 16}
    assert _formats({"conv*": {"weight_bits": 5}, "c*": {"weight_bits": 3}})["conv2"] == {"weight_bits": 3}


@pytest.mark.parametrize("config, message", [
    ({"conv9": {"weight_bits": 4}}, r"pattern 'conv9' matches no node.*node names: block.conv3, conv1, conv2, fc"),
    ({"Softmax": {"weight_bits": 4}}, r"'Softmax' matches no node.*op types: Conv, Gemm"),
    ({"zz*": {"weight_bits": 4}}, "'zz\\*' matches no node"),
    ({"conv1": {"wieght_bits": 4}}, r"unknown key 'wieght_bits'; allowed: weight_bits, activation_bits"),
    ({"conv1": {"weight_bits": 1}}, r"weight_bits must be an integer in \[2, 16\], found 1"),
    ({"conv1": {"weight_bits": True}}, r"weight_bits must be an integer"),
    ({"conv1": {"per_channel": "yes"}}, "per_channel must be true or false"),
    ({"conv1": {"range_method": "max"}}, "range_method must be one of minmax"),
    ({"conv1": 4}, "overrides must be a dict"),
    ([("conv1", {})], "layer_config must be a dict"),
])
def test_bad_layer_configs_are_typed_errors(config, message):
    with pytest.raises(ValidationError, match=message):
        _formats(config)


def test_supported_formats_of_the_profile(net, tmp_path):
    onnx_model, x = net
    profile = intsim.get_profile("paper").replace(name="npu", supported_formats=("w8a8", "w8a16", "w4a8"))
    model = intsim.convert(onnx_model, x, profile=profile, progress=False,
                           layer_config={"conv1": {"weight_bits": 4}, "conv2": {"activation_bits": 16}})
    assert model.graph.metadata["layer_formats"]["conv2"] == "w8a16"
    with pytest.raises(ValidationError, match=r"node 'conv2' \(Conv\): format w4a16 is not supported by profile "
                                              r"'npu' \(supported_formats: w8a8, w8a16, w4a8\)"):
        intsim.convert(onnx_model, x, profile=profile, progress=False,
                       layer_config={"Conv": {"weight_bits": 4}, "conv2": {"activation_bits": 16}})
    path = tmp_path / "npu.toml"
    path.write_text(profile.to_toml())
    assert intsim.Profile.from_toml(path) == profile
    path.write_text('name = "x"\nsupported_formats = ["w8x8"]\n')
    with pytest.raises(ValidationError, match="supported_formats entries must read"):
        intsim.Profile.from_toml(path)


def test_toml_round_trip_and_errors(tmp_path):
    config = {"conv1": {"weight_bits": 4, "per_channel": False}, "stage.*": {"activation_bits": 16},
              "Gemm": {"weight_range_method": "mse"}}
    path = tmp_path / "layers.toml"
    path.write_text(layer_config_toml(config))
    assert load_layer_config(path) == config
    assert list(load_layer_config(path)) == list(config)  # order kept: later entries win
    path.write_text('weight_bits = 4\n')
    with pytest.raises(ValidationError, match=r"every top-level entry must be a table"):
        load_layer_config(path)
    path.write_text('["conv1"]\nbits = 4\n')
    with pytest.raises(ValidationError, match=r"layers.toml: layer_config\['conv1'\]: unknown key 'bits'"):
        load_layer_config(path)
    with pytest.raises(ValidationError, match="does not exist"):
        load_layer_config(tmp_path / "missing.toml")


def test_cli_convert_with_layer_config(net, tmp_path, capsys):
    onnx_model, x = net
    import onnx

    onnx.save(onnx_model, tmp_path / "net.onnx")
    np.save(tmp_path / "cal.npy", x)
    (tmp_path / "layers.toml").write_text('["Conv"]\nweight_bits = 4\n\n["conv2"]\nactivation_bits = 16\n')
    out = tmp_path / "net.intsim"
    assert main(["convert", str(tmp_path / "net.onnx"), "--calibration", str(tmp_path / "cal.npy"), "-o", str(out),
                 "--layer-config", str(tmp_path / "layers.toml")]) == 0
    cli_model = intsim.load(out)
    api_model = intsim.convert(onnx_model, x, profile="paper", progress=False,
                               layer_config={"Conv": {"weight_bits": 4}, "conv2": {"activation_bits": 16}})
    codes = api_model.quantize_inputs([x])[0]
    np.testing.assert_array_equal(cli_model.run_int(codes), api_model.run_int(codes), strict=True)
    (tmp_path / "bad.toml").write_text('["nope"]\nweight_bits = 4\n')
    assert main(["convert", str(tmp_path / "net.onnx"), "--calibration", str(tmp_path / "cal.npy"), "-o", str(out),
                 "--layer-config", str(tmp_path / "bad.toml")]) == 1
    assert "pattern 'nope' matches no node" in capsys.readouterr().err


def test_tosa_export_of_int16_activations_with_int8_weights(net, tmp_path):
    from tests.test_tosa import _reference_model

    onnx_model, x = net
    model = intsim.convert(onnx_model, x, profile="tosa", progress=False,
                           layer_config={"conv2": {"activation_bits": 16, "activation_symmetric": True}})
    assert model.graph.tensors[_node(model, "conv2").outputs[0]].dtype == "int16"
    program = lower_to_tosa(model.graph, batch=4)
    convs = [o for o in program.operators if o.op == "CONV2D"]
    assert [o.attrs["acc_type"] for o in convs] == ["int32", "int48", "int32"]
    codes = model.quantize_inputs([x[:4]])[0]
    rng = np.random.default_rng(5)
    feeds = [{"x": codes}, {"x": rng.integers(-128, 128, size=codes.shape).astype(np.int8)},
             {"x": np.full(codes.shape, 127, np.int8)}]
    got = _reference_model(intsim.export_tosa(model, tmp_path / "m.tosa", batch=4), model.graph, feeds, tmp_path)
    for feed, out in zip(feeds, got):
        np.testing.assert_array_equal(out, model.run_int(feed["x"]), strict=True)


def test_tosa_refuses_int16_with_a_zero_point(net):
    onnx_model, x = net
    model = intsim.convert(onnx_model, x, profile="tosa", progress=False,
                           layer_config={"conv2": {"activation_bits": 16}})
    with pytest.raises(intsim.UnsupportedOpError, match=r"rescale .*: TOSA takes int16 activations with zero point "
                                                        r"0, found -?\d+ for .* \(quantize the layer with "
                                                        r"activation_symmetric"):
        lower_to_tosa(model.graph)


def test_golden_vectors_and_sweep_of_a_mixed_graph(net, tmp_path):
    import json

    from intsim.hwval import sweep
    from intsim.hwval.golden import load_golden

    onnx_model, x = net
    model = intsim.convert(onnx_model, x, profile="paper", progress=False,
                           layer_config={"conv1": {"activation_bits": 4}, "conv2": {"activation_bits": 16}})
    manifest = json.loads(intsim.export_golden(model, x[:2], tmp_path / "gold", float_input=True).read_text())
    conv1, conv2 = _node(model, "conv1"), _node(model, "conv2")
    assert (manifest["tensors"][conv1.outputs[0]]["dtype"], manifest["tensors"][conv1.outputs[0]]["bits"]) == ("int8", 4)
    assert (manifest["tensors"][conv2.outputs[0]]["dtype"], manifest["tensors"][conv2.outputs[0]]["bits"]) == ("int16", 16)
    formats = {n["name"]: n.get("format") for n in manifest["nodes"]}
    assert (formats["conv1"], formats["conv2"], formats["fc"]) == ("w8a4", "w8a16", "w8a8")
    golden = load_golden(tmp_path / "gold")
    trace = model.trace(x[:2], float_input=True)
    np.testing.assert_array_equal(golden.tensors[conv2.outputs[0]], trace.tensors[conv2.outputs[0]], strict=True)
    report = sweep(model, x[:16], acc_bits=[20, 32])
    full = next(w for w in report.widths if w.bits == 32)
    assert full.agreement == 1.0 and full.overflowing_layers == 0
    assert {layer.node for layer in report.layers} >= {"conv1", "conv2", "fc"}


def test_tensor_bits_and_supported_formats_are_checked():
    assert intsim.TensorInfo("t", "int8", (None, 2), 0.1, 0, 4).code_range == (-8, 7)
    assert intsim.TensorInfo("t", "uint8", (None, 2), 0.1, 0, 4).code_range == (0, 15)
    with pytest.raises(ValidationError, match=r"tensor 't': bits must be None or an integer in \[2, 8\] for int8, "
                                              r"found 9"):
        intsim.TensorInfo("t", "int8", (None, 2), 0.1, 0, 9)
    with pytest.raises(ValidationError, match=r"supported_formats must be a list of strings"):
        intsim.get_profile("paper").replace(supported_formats="w8a8")
    with pytest.raises(ValidationError, match=r"found 'w8a32'"):
        intsim.get_profile("paper").replace(supported_formats=("w8a32",))
