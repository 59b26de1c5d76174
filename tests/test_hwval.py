"""Hardware validation: golden vectors re-load exactly, injected device faults are diagnosed, sweeps count right."""

import dataclasses
import json
import struct

import numpy as np
import pytest

import intsim
from intsim import Graph, Model, examples
from intsim.errors import ModelFormatError, ValidationError
from intsim.hwval import diff, load_golden, sweep, write_golden
from intsim.runtime import Trace


@pytest.fixture(scope="module")
def resnet():
    """The shipped digits ResNet converted for the tflite profile (double rounding, 32-bit wrap)."""
    from intsim.datasets import load_digits
    from intsim.models import model_path

    x_train, _ = load_digits("train")
    x_test, y_test = load_digits("test")
    model = intsim.convert(model_path("resnet_digits.onnx"), calibration=x_train[:128], profile="tflite",
                           progress=False)
    return model, x_test[:48], y_test[:48]


# --------------------------------------------------------------------------
# Golden vectors.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["npy", "hex", "bin"])
@pytest.mark.parametrize("profile", ["tflite", "onnxruntime"])
def test_golden_reloads_to_the_traced_tensors(tmp_path, fmt, profile):
    graph = examples.tiny_cnn(profile)
    model = Model(graph)
    x = examples.random_codes(graph.tensors["x"], 3, seed=5)
    intsim.export_golden(model, x, tmp_path, formats=("npy", "hex", "bin"))
    golden = load_golden(tmp_path, fmt)
    trace = model.trace(x)
    assert sorted(golden.tensors) == sorted(trace.tensors)
    for name, value in trace.tensors.items():
        np.testing.assert_array_equal(golden.tensors[name], value, strict=True)
    assert sorted(golden.accumulators) == ["conv", "dw", "fc"]
    for name, value in trace.accumulators.items():
        np.testing.assert_array_equal(golden.accumulators[name], value, strict=True)
    for node in graph.nodes:
        assert sorted(golden.params[node.name]) == sorted(node.params)
        for key, value in node.params.items():  # float scales of the onnxruntime profile included
            np.testing.assert_array_equal(golden.params[node.name][key], value, strict=True)


def test_golden_hex_and_bin_words(tmp_path):
    graph = examples.branchy("tflite")
    model = Model(graph)
    x = examples.random_codes(graph.tensors["x"], 2, seed=1)
    manifest = json.loads(intsim.export_golden(model, x, tmp_path).read_text())
    node = next(n for n in manifest["nodes"] if n["name"] == "matmul")
    acc = model.trace(x).accumulators["matmul"].reshape(-1)
    hex_lines = (tmp_path / node["accumulator"]["files"]["hex"]).read_text().splitlines()
    assert hex_lines == [format(int(v) & 0xFFFFFFFF, "08x") for v in acc]  # two's complement, 8 digits
    raw = (tmp_path / node["accumulator"]["files"]["bin"]).read_bytes()
    assert list(struct.unpack(f"<{acc.size}i", raw)) == acc.tolist()
    x_entry = manifest["tensors"]["x"]
    x_lines = (tmp_path / x_entry["files"]["hex"]).read_text().splitlines()
    assert x_lines == [format(int(v) & 0xFF, "02x") for v in x.reshape(-1)]
    shift_entry = next(n for n in manifest["nodes"] if n["name"] == "rescale")["params"]["shift"]
    assert shift_entry["dtype"] == "int32" and manifest["shift_convention"].startswith("positive = left shift")
    conv = next(n for n in json.loads((tmp_path / "manifest.json").read_text())["nodes"] if n["op"] == "add")
    assert conv["clamp"] == [-128, 127] and conv["rounding"] == "double"
    assert manifest["byte_order"] == "little"


def test_golden_clamp_zero_points_and_layouts(tmp_path):
    graph = examples.tiny_cnn("tflite")
    intsim.export_golden(Model(graph), examples.random_codes(graph.tensors["x"], 1), tmp_path, formats="npy")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    conv = manifest["nodes"][0]
    assert conv["clamp"] == graph.nodes[0].attrs["clamp"]
    assert conv["input_zero_points"] == [graph.tensors["x"].zero_point]
    assert conv["params"]["weight"]["layout"] == "OHWI" and conv["params"]["weight"]["shape"] == [4, 3, 3, 3]
    assert manifest["nodes"][4]["params"]["weight"]["layout"] == "OI"
    assert manifest["tensors"]["t1"]["layout"] == "NHWC"
    assert manifest["formats"] == ["npy"] and not (tmp_path / "tensors" / "000_x.hex").exists()


@pytest.fixture()
def golden_dir(tmp_path):
    graph = examples.tiny_cnn("tflite")
    intsim.export_golden(Model(graph), examples.random_codes(graph.tensors["x"], 2), tmp_path)
    return tmp_path


def _edit_manifest(directory, edit):
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_load_golden_missing_manifest(tmp_path):
    with pytest.raises(ModelFormatError, match="manifest.json does not exist"):
        load_golden(tmp_path)


def test_load_golden_bad_json(golden_dir):
    (golden_dir / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        load_golden(golden_dir)


def test_load_golden_not_an_object(golden_dir):
    (golden_dir / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ModelFormatError, match="must hold a JSON object, found list"):
        load_golden(golden_dir)


def test_load_golden_missing_key(golden_dir):
    _edit_manifest(golden_dir, lambda m: m.pop("tensors"))
    with pytest.raises(ModelFormatError, match="missing key 'tensors'"):
        load_golden(golden_dir)


def test_load_golden_wrong_key_type(golden_dir):
    _edit_manifest(golden_dir, lambda m: m.update(nodes={"a": 1}))
    with pytest.raises(ModelFormatError, match="'nodes' must be a list, found dict"):
        load_golden(golden_dir)


def test_load_golden_formats_not_a_list(golden_dir):
    _edit_manifest(golden_dir, lambda m: m.update(formats="npy"))
    with pytest.raises(ModelFormatError, match="manifest.json: 'formats' must be a list, found str"):
        load_golden(golden_dir)


def test_load_golden_unknown_format(golden_dir):
    with pytest.raises(ModelFormatError, match=r"format must be one of the listed \['npy', 'hex', 'bin'\].*'mem'"):
        load_golden(golden_dir, "mem")


def test_load_golden_missing_file(golden_dir):
    (golden_dir / "tensors" / "001_t1.bin").unlink()
    with pytest.raises(ModelFormatError, match=r"tensor 't1': file tensors/001_t1.bin does not exist"):
        load_golden(golden_dir, "bin")


def test_load_golden_truncated_bin(golden_dir):
    path = golden_dir / "nodes" / "000_conv" / "accumulator.bin"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ModelFormatError, match=r"'conv' accumulator: accumulator.bin is truncated: int32\[2, 8, 8, 4\] "
                                               r"needs 2048 bytes, found 2045"):
        load_golden(golden_dir, "bin")


def test_load_golden_truncated_hex(golden_dir):
    path = golden_dir / "tensors" / "002_t2.hex"
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ModelFormatError, match=r"002_t2.hex is truncated: int8\[2, 4, 4, 8\] needs 256 lines, found 255"):
        load_golden(golden_dir, "hex")


def test_load_golden_corrupt_hex(golden_dir):
    path = golden_dir / "nodes" / "000_conv" / "bias.hex"
    lines = path.read_text().splitlines()
    lines[2] = "xyz00000"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ModelFormatError, match=r"parameter 'bias': bias.hex line 3: expected 8 hex digits, found 'xyz00000'"):
        load_golden(golden_dir, "hex")


def test_load_golden_hex_not_ascii(golden_dir):
    (golden_dir / "tensors" / "000_x.hex").write_bytes(b"\xff\xfe")
    with pytest.raises(ModelFormatError, match="not ASCII hex text"):
        load_golden(golden_dir, "hex")


def test_load_golden_npy_of_wrong_shape(golden_dir):
    np.save(golden_dir / "tensors" / "005_t5.npy", np.zeros((2, 4), np.int8))
    with pytest.raises(ModelFormatError, match=r"tensor 't5': manifest says int8\[2, 5\], 005_t5.npy holds int8\[2, 4\]"):
        load_golden(golden_dir, "npy")


def test_load_golden_unreadable_npy(golden_dir):
    (golden_dir / "tensors" / "005_t5.npy").write_bytes(b"garbage")
    with pytest.raises(ModelFormatError, match="005_t5.npy' is not a valid .npy array"):
        load_golden(golden_dir, "npy")


def test_load_golden_manifest_shape_and_dtype_checks(golden_dir):
    _edit_manifest(golden_dir, lambda m: m["tensors"]["t1"].update(dtype="complex64"))
    with pytest.raises(ModelFormatError, match="tensor 't1': dtype must be one of .* found 'complex64'"):
        load_golden(golden_dir)
    _edit_manifest(golden_dir, lambda m: m["tensors"]["t1"].update(dtype="int8", shape=[2, -1]))
    with pytest.raises(ModelFormatError, match=r"shape must be a list of sizes >= 0, found \[2, -1\]"):
        load_golden(golden_dir)


def test_load_golden_refuses_files_outside(golden_dir):
    _edit_manifest(golden_dir, lambda m: m["tensors"]["t1"]["files"].update(npy="../../etc/passwd"))
    with pytest.raises(ModelFormatError, match="lies outside the directory"):
        load_golden(golden_dir)


def test_load_golden_format_not_listed_for_entry(golden_dir):
    _edit_manifest(golden_dir, lambda m: m["tensors"]["t1"]["files"].pop("bin"))
    with pytest.raises(ModelFormatError, match=r"tensor 't1': no bin file listed \(listed: npy, hex\)"):
        load_golden(golden_dir, "bin")


def test_write_golden_rejects_unknown_format(tmp_path):
    graph = examples.tiny_cnn("tflite")
    with pytest.raises(ValidationError, match=r"golden formats must be a non-empty selection of npy, hex, bin, "
                                              r"found \['csv'\]"):
        intsim.export_golden(Model(graph), examples.random_codes(graph.tensors["x"], 1), tmp_path, formats=["csv"])


# --------------------------------------------------------------------------
# Diff: device dumps with injected faults.  The faulty "device" runs the graph node by
# node here (not through intsim.hwval), with one node changed.
# --------------------------------------------------------------------------


def _device_trace(graph: Graph, x, fault_node: str, *, profile=None, attrs=None, tensors=None) -> Trace:
    values = {graph.inputs[0]: x}
    trace = Trace(tensors=values)
    for node in graph.nodes:
        node_tensors = {t: graph.tensors[t] for t in node.inputs + node.outputs}
        node_profile, node_attrs = graph.profile, dict(node.attrs)
        if node.name == fault_node:
            node_profile = profile or node_profile
            node_attrs.update(attrs or {})
            node_tensors.update(tensors or {})
        one = Graph("device", node_profile, node_tensors,
                    [intsim.Node(node.op, node.name, node.inputs, node.outputs, node_attrs, node.params)],
                    list(dict.fromkeys(node.inputs)), node.outputs)
        result = Model(one).trace(*[values[t] for t in dict.fromkeys(node.inputs)])
        values.update({t: result.tensors[t] for t in node.outputs})
        trace.accumulators.update(result.accumulators)
    return trace


def _codes(model, x):
    return model.quantize_inputs([x])[0]


FAULT_LAYER = "/features/features.4/body/body.0/Conv"


def test_diff_clean_dump_has_no_divergence(resnet, tmp_path):
    model, x, _ = resnet
    intsim.export_golden(model, x, tmp_path, formats="bin", float_input=True)
    report = diff(model, x, tmp_path, float_input=True)
    assert report.first is None and not report.candidates
    assert len(report.comparisons) == 1 + len(model.graph.nodes) + 10  # input, every output, 10 MAC accumulators
    assert "no divergence" in report.table()


def test_diff_names_single_rounding_at_layer_k(resnet, tmp_path):
    model, x, _ = resnet
    codes = _codes(model, x)
    write_golden(model.graph, _device_trace(model.graph, codes, FAULT_LAYER, attrs={"rounding": "single"}), tmp_path)
    report = diff(model, codes, tmp_path)
    assert report.first.node == FAULT_LAYER and report.first.what.startswith("output")
    assert report.first.mismatches > 0 and report.first.off_by_one == report.first.mismatches
    assert report.first.pattern == "off-by-one (rounding)"
    assert report.cause.cause == "rounding mode" and report.cause.setting == "rounding=single" and report.cause.exact
    as_is = next(c for c in report.candidates if c.cause == "none")
    assert as_is.mismatches == report.first.mismatches
    assert "most likely cause: rounding mode: rounding=single" in report.summary()


def test_diff_names_16_bit_accumulator_wrap_at_layer_k(resnet, tmp_path):
    model, x, _ = resnet
    codes = _codes(model, x)
    narrow = model.profile.replace(accumulator_bits=16, overflow="wrap")
    write_golden(model.graph, _device_trace(model.graph, codes, FAULT_LAYER, profile=narrow), tmp_path, formats="hex")
    report = diff(model, codes, tmp_path)
    assert report.first.node == FAULT_LAYER and report.first.what == "accumulator"
    assert report.first.large == report.first.mismatches > 0
    assert report.cause.setting == "accumulator=16-bit wrap" and report.cause.exact
    assert report.cause.cause == "accumulator overflow"


def test_diff_names_a_dropped_input_zero_point_at_layer_k(resnet, tmp_path):
    model, x, _ = resnet
    codes = _codes(model, x)
    graph = model.graph
    node = next(n for n in graph.nodes if n.name == FAULT_LAYER)
    source = graph.tensors[node.inputs[0]]
    assert source.zero_point != 0
    dropped = {source.name: dataclasses.replace(source, zero_point=0)}
    write_golden(graph, _device_trace(graph, codes, FAULT_LAYER, tensors=dropped), tmp_path, formats="npy")
    report = diff(model, codes, tmp_path)
    assert report.first.node == FAULT_LAYER and report.first.mismatches > 0
    assert report.cause.cause == "zero-point handling"
    assert report.cause.setting == f"input zero point omitted ({source.name})" and report.cause.exact


def test_diff_names_bias_wrap(tmp_path):
    graph = examples.tiny_cnn("tflite")
    x = examples.random_codes(graph.tensors["x"], 4, seed=3)
    node = graph.nodes[1]
    wrapped = (node.params["bias"].astype(np.int64) + 2048) % 4096 - 2048  # 12-bit two's complement
    assert np.any(wrapped != node.params["bias"])
    faulty = Graph(graph.name, graph.profile, graph.tensors,
                   [dataclasses.replace(n, params={**n.params, "bias": wrapped.astype(np.int32)}) if n is node else n
                    for n in graph.nodes], graph.inputs, graph.outputs)
    write_golden(graph, Model(faulty).trace(x), tmp_path, formats="npy")
    report = diff(Model(graph), x, tmp_path)
    assert report.first.node == "dw" and report.first.what == "accumulator"
    assert report.cause.setting == "bias=12-bit wrap" and report.cause.exact


def test_diff_partial_dump_uses_intsim_inputs(resnet, tmp_path):
    model, x, _ = resnet
    codes = _codes(model, x)
    graph = model.graph
    write_golden(graph, _device_trace(graph, codes, FAULT_LAYER, attrs={"rounding": "single"}), tmp_path,
                 formats="npy")
    node = next(n for n in graph.nodes if n.name == FAULT_LAYER)
    keep = set(node.outputs)
    _edit_manifest(tmp_path, lambda m: (m.update(nodes=[]), m.update(tensors={k: v for k, v in m["tensors"].items()
                                                                              if k in keep})))
    report = diff(model, codes, tmp_path)
    assert [c.what for c in report.comparisons] == [f"output {node.outputs[0]!r}"]
    assert report.inputs_from == {node.inputs[0]: "intsim"}
    assert report.cause.setting == "rounding=single" and report.cause.exact


def test_diff_on_a_float_rounding_profile(tmp_path):
    graph = examples.tiny_cnn("onnxruntime")  # float32_rint: each rescale carries its real scale
    x = examples.random_codes(graph.tensors["x"], 4, seed=2)
    narrow = graph.profile.replace(accumulator_bits=16, overflow="saturate")
    write_golden(graph, _device_trace(graph, x, "conv", profile=narrow), tmp_path, formats="npy")
    report = diff(Model(graph), x, tmp_path)
    assert report.first.node == "conv" and report.cause.setting == "accumulator=16-bit saturate" and report.cause.exact
    tried = {c.setting for c in report.candidates}
    assert {"rounding=double", "rounding=single", "rounding=float64_half_away"} <= tried  # integer modes drop scale


def test_diff_says_when_no_setting_reproduces(tmp_path):
    graph = examples.tiny_cnn("tflite")
    x = examples.random_codes(graph.tensors["x"], 4, seed=2)
    trace = Model(graph).trace(x)
    trace.tensors["t2"] = trace.tensors["t2"].copy()
    trace.tensors["t2"].reshape(-1)[[3, 50, 77]] ^= np.int8(0x55)  # flipped bits: garbage, not a setting
    write_golden(graph, trace, tmp_path, formats="npy")
    report = diff(Model(graph), x, tmp_path)
    assert report.first.node == "dw" and report.first.mismatches == 3 and report.first.off_by_one == 0
    assert report.first.pattern == "large (wrap-around or garbage)"
    assert report.cause.setting == "as simulated" and report.cause.mismatches == 3
    assert "no setting tried reproduces the device or comes closer than the simulation" in report.summary()


def test_diff_counts_saturation_at_the_clamp_bounds(tmp_path):
    graph = examples.tiny_cnn("tflite")
    x = examples.random_codes(graph.tensors["x"], 4, seed=2)
    trace = Model(graph).trace(x)
    t1 = trace.tensors["t1"]
    trace.tensors["t1"] = np.where((t1 > 60) & (t1 < 127), np.int8(127), t1)  # saturates early at the ReLU's top
    write_golden(graph, trace, tmp_path, formats="npy")
    first = diff(Model(graph), x, tmp_path).first
    expected = int(np.sum((t1 > 60) & (t1 < 126)))  # 126 -> 127 is off by one
    assert first.node == "conv" and first.at_clamp == expected > 0
    assert first.pattern == "saturation at the clamp bounds"


def test_diff_rejects_unknown_names(tmp_path):
    graph = examples.tiny_cnn("tflite")
    x = examples.random_codes(graph.tensors["x"], 2)
    intsim.export_golden(Model(graph), x, tmp_path, formats="npy")
    _edit_manifest(tmp_path, lambda m: m["tensors"].update(conv_out=m["tensors"].pop("t1")))
    with pytest.raises(ValidationError, match=r"expected names of model 'tiny_cnn' .* found 1 unknown: conv_out"):
        diff(Model(graph), x, tmp_path)
    _edit_manifest(tmp_path, lambda m: (m["tensors"].update(t1=m["tensors"].pop("conv_out")),
                                        m["nodes"][2].update(accumulator=m["nodes"][0]["accumulator"])))
    with pytest.raises(ValidationError, match="found 1 unknown: accumulator of 'pool'"):
        diff(Model(graph), x, tmp_path)


def test_diff_reports_a_different_input(tmp_path):
    graph = examples.tiny_cnn("tflite")
    x = examples.random_codes(graph.tensors["x"], 2)
    other = examples.random_codes(graph.tensors["x"], 2, seed=9)
    intsim.export_golden(Model(graph), other, tmp_path, formats="npy")
    report = diff(Model(graph), x, tmp_path)
    assert report.first.node == "(graph input)" and not report.candidates


def test_diff_rejects_a_dump_of_another_shape(tmp_path):
    graph = examples.tiny_cnn("tflite")
    intsim.export_golden(Model(graph), examples.random_codes(graph.tensors["x"], 3), tmp_path, formats="npy")
    with pytest.raises(ValidationError, match=r"device dump: input '\(graph input\)' tensor 'x' has shape "
                                              r"\(3, 8, 8, 3\), intsim's has \(2, 8, 8, 3\)"):
        diff(Model(graph), examples.random_codes(graph.tensors["x"], 2), tmp_path)


# --------------------------------------------------------------------------
# Sweep.
# --------------------------------------------------------------------------


def _with_acc(graph, bits, policy):
    return Model(Graph(graph.name, graph.profile.replace(accumulator_bits=bits, overflow=policy), graph.tensors,
                       graph.nodes, graph.inputs, graph.outputs))


def test_sweep_counts_and_answers(resnet):
    model, x, y = resnet
    report = sweep(model, x, y, acc_bits=range(16, 33), question_bits=24, batch_size=20)
    graph = model.graph
    full = _with_acc(graph, 32, "wrap").trace(x, float_input=True)
    macs = [n for n in graph.nodes if n.op in ("conv2d", "fully_connected")]
    assert [layer.node for layer in report.layers] == [n.name for n in macs]
    for layer in report.layers:
        peak = int(np.abs(full.accumulators[layer.node].astype(np.int64)).max())
        assert layer.max_abs_accumulator == peak and layer.final_bits == peak.bit_length() + 1
        assert layer.needed_bits >= layer.final_bits
        out = full.tensors[next(n for n in macs if n.name == layer.node).outputs[0]]
        assert layer.clamped_fraction == full.stats[layer.node]["saturation_count"] / out.size
    first = report.layers[0]  # its input is the graph input, the same at every width
    for policy in ("saturate", "wrap"):
        for bits in (16, 18, 20):
            trace = _with_acc(graph, bits, policy).trace(x, float_input=True)
            assert first.overflows[policy][bits] == trace.stats[first.node]["overflow_count"]
    assert first.overflows["wrap"][first.needed_bits] == 0 and first.overflows["wrap"][first.needed_bits - 1] > 0
    # Every width from 16 is swept, and each layer needs more than 16: the swept answer is the exact one.
    assert all(layer.exact_bits == layer.needed_bits > 16 for layer in report.layers)
    sparse = sweep(model, x, acc_bits=(16, 24, 32), batch_size=20, progress=False)
    assert [layer.needed_bits for layer in sparse.layers] == [24] * len(macs)
    assert [layer.exact_bits for layer in sparse.layers] == [layer.exact_bits for layer in report.layers]
    top = full.tensors[graph.outputs[0]].argmax(axis=1)
    narrow = _with_acc(graph, 16, "wrap").run_int(model.quantize_inputs([x])[0]).argmax(axis=1)
    w16 = next(w for w in report.widths if (w.bits, w.policy) == (16, "wrap"))
    assert w16.agreement == np.mean(narrow == top) < 1.0
    assert w16.accuracy == np.mean(narrow == y)
    assert all(w.agreement == 1.0 for w in report.widths if w.bits == 32)
    assert report.answer().startswith("Can the MAC array use 24-bit accumulators for") and "Yes" in report.answer()
    assert report.safe_bits() == max(layer.needed_bits for layer in report.layers)
    no = dataclasses.replace(report, question_bits=16).answer()
    assert "No: " in no and "overflow 16 bits" in no
    json.dumps(report.to_dict())


def test_sweep_html_and_plot(tmp_path):
    graph = examples.tiny_cnn("tflite")
    x = examples.random_codes(graph.tensors["x"], 4)
    report = sweep(Model(graph), x, acc_bits=[16, 20, 24, 32], float_input=False)
    report.to_html(tmp_path / "hw.html")
    page = (tmp_path / "hw.html").read_text()
    assert "data:image/png;base64," in page and "clamped" in page and "headroom" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    report.plot(tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_rejects_bad_arguments():
    graph = examples.tiny_cnn("tflite")
    model = Model(graph)
    x = examples.random_codes(graph.tensors["x"], 2)
    with pytest.raises(ValidationError, match=r"accumulator widths must lie in \[8, 32\], found \[4, 16\]"):
        sweep(model, x, acc_bits=[16, 4], float_input=False)
    with pytest.raises(ValidationError, match=r"data must hold at least one sample, found shape \(0, 8, 8, 3\)"):
        sweep(model, x[:0], float_input=False)
    with pytest.raises(ValidationError, match=r"labels must have shape \(2,\), found \(3,\)"):
        sweep(model, x, np.zeros(3, np.int64), float_input=False)


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def test_cli_golden_diff_sweep(tmp_path, capsys):
    from intsim.cli import main

    graph = examples.tiny_cnn("tflite")
    Model(graph).save(tmp_path / "tiny.intsim")
    x = examples.random_codes(graph.tensors["x"], 4, seed=2)
    np.save(tmp_path / "x.npy", x)
    model = str(tmp_path / "tiny.intsim")
    assert main(["golden", model, "--input", str(tmp_path / "x.npy"), "--int", "--out", str(tmp_path / "g"),
                 "--format", "hex,bin"]) == 0
    assert "wrote golden vectors of 6 nodes (hex,bin)" in capsys.readouterr().out
    np.testing.assert_array_equal(load_golden(tmp_path / "g").tensors["y"], Model(graph).run_int(x), strict=True)
    assert main(["diff", model, "--input", str(tmp_path / "x.npy"), "--int", "--device-dump", str(tmp_path / "g"),
                 "--format", "bin", "--json", str(tmp_path / "d.json")]) == 0
    assert "no divergence" in capsys.readouterr().out
    faulty = _device_trace(graph, x, "conv", profile=graph.profile.replace(accumulator_bits=16, overflow="saturate"))
    write_golden(graph, faulty, tmp_path / "dev", formats="npy")
    assert main(["diff", model, "--input", str(tmp_path / "x.npy"), "--int", "--device-dump",
                 str(tmp_path / "dev"), "--json", str(tmp_path / "d.json")]) == 1
    out = capsys.readouterr().out
    assert "first divergence: conv2d 'conv' accumulator" in out
    assert "most likely cause: accumulator overflow: accumulator=16-bit saturate" in out
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["candidates"][0]["setting"] == "accumulator=16-bit saturate"
    assert report["candidates"][0]["mismatches"] == 0
    assert main(["sweep", model, "--data", str(tmp_path / "x.npy"), "--int", "--acc-bits", "16..18,24,32",
                 "--json", str(tmp_path / "s.json"), "--html", str(tmp_path / "s.html")]) == 0
    out = capsys.readouterr().out
    assert "Can the MAC array use 24-bit accumulators for 'tiny_cnn'? Yes" in out
    assert json.loads((tmp_path / "s.json").read_text())["acc_bits"] == [16, 17, 18, 24, 32]
    assert (tmp_path / "s.html").exists()


def test_cli_sweep_rejects_bad_widths(tmp_path, capsys):
    from intsim.cli import main

    graph = examples.tiny_cnn("tflite")
    Model(graph).save(tmp_path / "tiny.intsim")
    np.save(tmp_path / "x.npy", examples.random_codes(graph.tensors["x"], 1))
    assert main(["sweep", str(tmp_path / "tiny.intsim"), "--data", str(tmp_path / "x.npy"), "--int",
                 "--acc-bits", "sixteen"]) == 2
    assert "--acc-bits takes widths like 16..32 or 16,20,24, found 'sixteen'" in capsys.readouterr().err


def test_compare_reports_accumulator_headroom(resnet):
    from intsim.models import model_path

    model, x, _ = resnet
    report = intsim.compare(model_path("resnet_digits.onnx"), model, x, batch_size=20)
    trace = model.trace(x, float_input=True)
    rows = {r.node: r for r in report.layers}
    for node in (n for n in model.graph.nodes if n.op in ("conv2d", "fully_connected")):
        peak = int(np.abs(trace.accumulators[node.name].astype(np.int64)).max())
        assert rows[node.name].max_abs_accumulator == peak
        assert rows[node.name].headroom_bits == 31 - peak.bit_length()
        assert f"{31 - peak.bit_length()} bits" in report.table()
    assert "acc headroom" in report.table()


def test_readme_hardware_walkthrough(tmp_path, monkeypatch, capsys):
    """The hardware-validation guide's (docs/hwval.md) golden -> diff -> sweep commands run as written (the sweep on 64 of the images)."""
    import re
    import shlex
    from pathlib import Path

    from intsim.cli import main

    text = (Path(__file__).parent.parent / "docs" / "hwval.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "intsim golden" in b)
    script, commands = re.match(r"python - <<'EOF'\n(.*?)\nEOF\n(.*)", block, re.S).groups()
    monkeypatch.chdir(tmp_path)
    exec(compile(script, "docs/hwval.md", "exec"), {})
    for name in ("data.npy", "labels.npy"):  # keep the test fast
        np.save(name, np.load(name)[:64])
    lines = [line for line in commands.replace("\\\n", " ").splitlines() if line.startswith("intsim ")]
    assert [line.split()[1] for line in lines] == ["convert", "golden", "diff", "sweep"]
    for line in lines:
        assert main(shlex.split(line)[1:]) == 0, line
    out = capsys.readouterr().out
    assert "no divergence" in out and "Can the MAC array use 24-bit accumulators" in out
    assert (tmp_path / "hw.html").exists() and (tmp_path / "golden" / "manifest.json").exists()


def test_bitwidth_sweep_of_a_float_model(tmp_path, capsys):
    from intsim.cli import main
    from intsim.datasets import load_digits
    from intsim.floatgraph.execute import run_float
    from intsim.converter.lowering import prepare_float_graph
    from intsim.hwval import bitwidth_sweep
    from intsim.models import model_path

    x_train, _ = load_digits("train")
    x_test, y_test = load_digits("test")
    x, y, cal = x_test[:40], y_test[:40], x_train[:128]
    onnx_path = model_path("resnet_digits.onnx")
    report = bitwidth_sweep(onnx_path, cal, x, y, weight_bits=[4, 8], activation_bits=[8], profile="tflite")
    assert [(r.weight_bits, r.activation_bits) for r in report.rows] == [(4, 8), (8, 8)]
    float_top = run_float(prepare_float_graph(onnx_path), [x])["logits"].argmax(axis=1)
    w4 = intsim.convert(onnx_path, calibration=cal, profile="tflite", weight_bits=4, progress=False)
    trace = w4.trace(x, float_input=True)
    top = trace.tensors[w4.graph.outputs[0]].argmax(axis=1)
    assert report.rows[0].agreement == np.mean(top == float_top) and report.rows[0].accuracy == np.mean(top == y)
    peak = max(s["max_abs_accumulator"] for s in trace.stats.values() if "max_abs_accumulator" in s)
    assert report.rows[0].final_bits == peak.bit_length() + 1 < report.rows[1].final_bits
    assert report.accuracy_float == np.mean(float_top == y)
    np.save(tmp_path / "cal.npy", cal)
    np.save(tmp_path / "x.npy", x)
    assert main(["sweep", str(onnx_path), "--calibration", str(tmp_path / "cal.npy"), "--data", str(tmp_path / "x.npy"),
                 "--weight-bits", "4,8", "--acc-bits", "18..20,24", "--json", str(tmp_path / "s.json"),
                 "--html", str(tmp_path / "s.html")]) == 0
    out = capsys.readouterr().out
    assert "bit-width sweep of" in out and "Can the MAC array use 24-bit accumulators" in out
    assert [r["weight_bits"] for r in json.loads((tmp_path / "s.json").read_text())["bit_widths"]["rows"]] == [4, 8]
    page = (tmp_path / "s.html").read_text()
    assert "<h2>Weight and activation bits</h2>" in page and "data:image/png;base64," in page
    assert page.count("<tr><td>4</td><td>8</td>") == page.count("<tr><td>8</td><td>8</td>") == 1


def test_bitwidth_sweep_rejects_bad_arguments(tmp_path, capsys):
    from intsim.cli import main
    from intsim.hwval import bitwidth_sweep
    from intsim.models import model_path

    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValidationError, match=r"data must be a non-empty float array, found dtype int64 shape \(2,\)"):
        bitwidth_sweep(model_path("resnet_digits.onnx"), x, np.zeros(2, np.int64))
    with pytest.raises(ValidationError, match=r"labels must have shape \(2,\), found \(1,\)"):
        bitwidth_sweep(model_path("resnet_digits.onnx"), x, x, np.zeros(1, np.int64))
    np.save(tmp_path / "x.npy", x)
    assert main(["sweep", str(model_path("resnet_digits.onnx")), "--data", str(tmp_path / "x.npy")]) == 2
    assert "needs --calibration X.npy, found none" in capsys.readouterr().err
    graph = examples.tiny_cnn("tflite")
    Model(graph).save(tmp_path / "tiny.intsim")
    assert main(["sweep", str(tmp_path / "tiny.intsim"), "--data", str(tmp_path / "x.npy"), "--weight-bits", "4"]) == 2
    assert "--weight-bits apply to a float .onnx model" in capsys.readouterr().err


def test_sweep_plot_without_matplotlib(tmp_path, monkeypatch):
    import sys

    graph = examples.tiny_cnn("tflite")
    report = sweep(Model(graph), examples.random_codes(graph.tensors["x"], 2), acc_bits=[16, 32], float_input=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(ValidationError, match=r"plotting needs matplotlib: pip install 'intsim\[plot\]'"):
        report.plot(tmp_path / "p.png")
    report.to_html(tmp_path / "p.html")
    assert "install matplotlib for the plot" in (tmp_path / "p.html").read_text()
