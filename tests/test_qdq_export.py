"""``Model.to_onnx_qdq`` / ``intsim.export_qdq``: integer graphs written as QDQ ONNX, run by a live onnxruntime.

Every code tensor the file holds (the output of a ``QuantizeLinear`` or a ``Gather``) is added as a
graph output, which leaves onnxruntime's fusions as they are (a Q's readers do not decide its
producer's group).  onnxruntime's input codes are fed to intsim, and every tensor is compared with
``assert_array_equal(strict=True)`` where the export says onnxruntime's arithmetic is the node's.
The default run takes about 40 s; ``-m "slow or not slow"`` adds mobilenet_digits.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: E402

import intsim  # noqa: E402
from intsim import Graph, Model, Node, TensorInfo, UnsupportedOpError  # noqa: E402
from intsim.cli import main  # noqa: E402
from intsim.datasets import load_dataset  # noqa: E402
from intsim.export.qdq import mac_scales  # noqa: E402
from intsim.fixedpoint import Rescale  # noqa: E402
from intsim.importers.onnx_qop import ort_lookup_table  # noqa: E402
from intsim.models import model_path  # noqa: E402
from tests.test_onnxruntime_conformance import _float_net, _float_net_mul_pool, _Reader  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    x, _ = load_dataset("digits")
    return x


def _onnxruntime_codes(path, written, model: Model, x: np.ndarray) -> dict:
    """onnxruntime's codes of every intsim tensor the file holds, in intsim's layout and dtype."""
    proto = onnx.load(str(path))
    names = {t: written.tensors[t][0] for t in model.graph.tensors if t in written.tensors}
    present = {o.name for o in proto.graph.output}
    initializers = {i.name for i in proto.graph.initializer}
    probes = [n for n in dict.fromkeys(names.values()) if n not in present and n not in initializers]
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in probes)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    got = dict(zip(probes, session.run(probes, {session.get_inputs()[0].name: x})))
    codes = {}
    for t, name in names.items():
        if name not in got:
            continue
        _, perm, offset = written.tensors[t]
        array = got[name].astype(np.int64) - offset
        if perm is not None:
            array = array.transpose(np.argsort(perm))
        codes[t] = array.astype(model.graph.tensors[t].np_dtype)
    return codes


def _compare(model: Model, x: np.ndarray, path) -> tuple[dict, dict, object]:
    """``(onnxruntime codes, intsim trace tensors, export)``, intsim fed onnxruntime's input codes."""
    written = model.to_onnx_qdq(path)
    codes = _onnxruntime_codes(path, written, model, x)
    trace = model.trace(*[codes[t] for t in model.graph.inputs])
    return codes, trace.tensors, written


def _assert_loads_back(path, x):
    """The exported file read back by ``intsim.load`` runs as onnxruntime runs it, output for output."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: x})
    ours = intsim.load(path).run(x)
    for mine, expected in zip(ours if isinstance(ours, (list, tuple)) else [ours], theirs):
        np.testing.assert_array_equal(mine, expected, strict=True)


def _assert_exact(model, x, path):
    codes, ours, written = _compare(model, x, path)
    assert written.inexact == {}
    assert set(model.graph.outputs) <= set(codes)
    for t, theirs in codes.items():
        np.testing.assert_array_equal(ours[t], theirs, strict=True, err_msg=t)
    _assert_loads_back(path, x)
    return codes


@pytest.mark.parametrize("model_name", ["resnet_digits", pytest.param("mobilenet_digits", marks=pytest.mark.slow)])
def test_converted_models_export_bit_exact(digits, tmp_path, model_name):
    # convert under the onnxruntime profile: conv2d / fully_connected / mean requantize in float32 as
    # QLinearConv / QGemm / QLinearGlobalAveragePool do, and intsim's float32 add is written as a float island.
    model = intsim.convert(str(model_path(f"{model_name}.onnx")), digits[:32], profile="onnxruntime", progress=False)
    codes = _assert_exact(model, digits[:100], tmp_path / "m.onnx")
    assert len(codes) == len(model.graph.tensors)


def _quantize(float_path, out_path, calibration, activation_type=QuantType.QUInt8, per_channel=False):
    name = onnx.load(str(float_path)).graph.input[0].name
    quantize_static(str(float_path), str(out_path), _Reader(name, calibration), quant_format=QuantFormat.QDQ,
                    activation_type=activation_type, weight_type=QuantType.QInt8, per_channel=per_channel)
    return out_path


@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_models_round_trip_bit_exact(digits, tmp_path, per_channel):
    path = _quantize(model_path("resnet_digits.onnx"), tmp_path / "q.onnx", digits[:16], per_channel=per_channel)
    _assert_exact(intsim.load(path), digits[:100], tmp_path / "back.onnx")


@pytest.mark.parametrize("net, shape", [(_float_net, (3, 10, 10)), (_float_net_mul_pool, (3, 8, 8))])
def test_hand_built_nets_round_trip_bit_exact(tmp_path, net, shape):
    # Concat, MaxPool, AveragePool, Mul, LeakyRelu, Sigmoid, Reshape, MatMul ... as onnxruntime fuses them.
    net(tmp_path / "f.onnx")
    rng = np.random.default_rng(3)
    path = _quantize(tmp_path / "f.onnx", tmp_path / "q.onnx", rng.uniform(-1, 1, (16, *shape)).astype(np.float32),
                     per_channel=True)
    model = intsim.load(path)
    _assert_exact(model, rng.uniform(-1.5, 1.5, (24, *shape)).astype(np.float32), tmp_path / "back.onnx")


def _graph(nodes, tensors, inputs, outputs, profile="onnxruntime"):
    return Model(Graph("g", profile, {t.name: t for t in tensors}, nodes, inputs, outputs))


def _conv_node(name, x, y, rng, cout, cin, clamp, zp=0):
    real = rng.uniform(0.001, 0.05, cout)
    params = {"weight": rng.integers(-128, 128, (cout, 3, 3, cin)).astype(np.int8),
              "weight_zero_point": np.full(cout, zp, np.int64),
              "bias": rng.integers(-5000, 5000, cout).astype(np.int32),
              **Rescale.from_real(np.float32(real).astype(np.float64), "float32_rint").params()}
    return Node("conv2d", name, [x], [y], {"pads": [1, 1, 1, 1], "clamp": clamp}, params)


@pytest.mark.parametrize("x_zp, y_zp", [(0, 255), (255, 0), (128, 128)])
def test_hand_built_graph_with_extreme_zero_points_and_clamps(tmp_path, x_zp, y_zp):
    # NHWC input (no transpose at the edge), zero points at the ends of the code range, a clamp narrower than
    # the code range (written as DQ -> Clip -> Q), a matmul of two activations, a table, a global mean.
    rng = np.random.default_rng(x_zp + 7 * y_zp)
    tensors = [TensorInfo("x", "uint8", (None, 6, 6, 4), 0.02, x_zp), TensorInfo("c", "uint8", (None, 6, 6, 8), 0.05, y_zp),
               TensorInfo("t", "uint8", (None, 6, 6, 8), 0.04, 10), TensorInfo("m", "uint8", (None, 1, 1, 8), 0.03, 3),
               TensorInfo("f", "uint8", (None, 8), 0.03, 3), TensorInfo("p", "uint8", (None, 8, 8), 0.5, 100)]
    table = ort_lookup_table(np.tanh, np.float32(0.05), y_zp, "uint8", np.float32(0.04), 10, "uint8")
    mean = Rescale.from_real(np.array([np.float32(0.05 / (0.03 * 36))], np.float64), "float32_rint").params()
    matmul = Rescale.from_real(np.array([np.float32(0.03 * 0.03 / 0.5)], np.float64), "float32_rint").params()
    nodes = [_conv_node("conv", "x", "c", rng, 8, 4, [min(y_zp, 250), 255]),
             Node("lut", "tanh", ["c"], ["t"], {}, {"table": table}),
             Node("mean", "pool", ["t"], ["m"], {"axes": [1, 2], "keepdims": True}, mean),
             Node("flatten", "flat", ["m"], ["f"], {"axis": 1}),
             Node("unsqueeze", "col", ["f"], ["fc"], {"axes": [2]}),
             Node("unsqueeze", "row", ["f"], ["fr"], {"axes": [1]}),
             Node("matmul", "outer", ["fc", "fr"], ["p"], {}, matmul)]
    tensors += [TensorInfo("fc", "uint8", (None, 8, 1), 0.03, 3), TensorInfo("fr", "uint8", (None, 1, 8), 0.03, 3)]
    model = _graph(nodes, tensors, ["x"], ["p", "c"])
    x = rng.uniform(-3, 3, (5, 6, 6, 4)).astype(np.float32)
    codes = _assert_exact(model, x, tmp_path / "g.onnx")
    assert codes["c"].min() >= min(y_zp, 250)  # the clamp is live


def test_mac_scales_reach_every_target_exactly():
    rng = np.random.default_rng(11)
    targets = np.float32(10.0 ** rng.uniform(-6, 0, 2000))
    for sx, sy in ((0.0173, 0.211), (1.7e-3, 3.3e-2), (0.5, 0.75)):
        x_scale, w_scales, y_scale = mac_scales(targets, sx, sy)
        formed = (np.float32(x_scale) * w_scales).astype(np.float32) / np.float32(y_scale)
        np.testing.assert_array_equal(formed.astype(np.float32), targets, strict=True)


def test_int8_tflite_profile_graph_differs_only_where_the_export_says(digits, tmp_path):
    # The tflite profile requantizes with gemmlowp's double rounding and adds with TFLite's scheme:
    # onnxruntime runs the same real scales with float32 rint, so every MAC node and every add is named.
    model = intsim.convert(str(model_path("resnet_digits.onnx")), digits[:32], profile="tflite", progress=False)
    codes, ours, written = _compare(model, digits[:200], tmp_path / "t.onnx")
    macs = {n.name for n in model.graph.nodes if n.op in ("conv2d", "fully_connected", "mean", "add")}
    assert set(written.inexact) == macs
    assert all(written.tensors[t][2] == 128 for t in model.graph.inputs)  # int8 written as uint8 (x86 fusions)
    out = model.graph.outputs[0]
    # Measured: 302 of 2000 logits codes differ (each node's rounding, compounded); top-1 still agrees.
    agree = (codes[out].argmax(1) == ours[out].argmax(1)).mean()
    assert agree >= 0.99
    _assert_loads_back(tmp_path / "t.onnx", digits[:200])  # read back under onnxruntime: onnxruntime's codes


def _onnxruntime_outputs(path, x):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def test_float_islands_run_as_in_the_original_file(digits, tmp_path):
    # s8s8: onnxruntime leaves int8 convs read twice as float islands.  The export writes them back as float
    # Convs (float32 weights behind a per-axis input DQ), so onnxruntime runs exactly what it ran for the
    # original QDQ file; intsim's islands sum in MLAS's order, as on import.
    path = _quantize(model_path("mobilenet_digits.onnx"), tmp_path / "q.onnx", digits[:16], QuantType.QInt8)
    model = intsim.load(path)
    codes, ours, written = _compare(model, digits[:100], tmp_path / "back.onnx")
    islands = {n.name for n in model.graph.nodes if n.op == "conv2d_float32"}
    assert set(written.inexact) == islands and islands
    for original, exported in zip(_onnxruntime_outputs(path, digits[:100]),
                                  _onnxruntime_outputs(tmp_path / "back.onnx", digits[:100])):
        np.testing.assert_array_equal(original, exported, strict=True)
    differing = sum(int((ours[t] != c).sum()) for t, c in codes.items())
    # x86-64: the islands sum in MLAS's order, exact (1213 of 2484200 codes differed in the float64 order).
    assert differing == 0 if platform.machine() in ("x86_64", "AMD64") else differing <= 1e-3 * sum(
        c.size for c in codes.values())


def test_unsupported_ops_and_weight_zero_points_name_the_node(tmp_path):
    rng = np.random.default_rng(0)
    tensors = [TensorInfo("x", "uint8", (None, 4, 4, 2), 0.1, 0), TensorInfo("y", "uint8", (None, 4, 4, 2), 0.1, 0)]
    pad = Node("pad", "the_pad", ["x"], ["y"], {"pads_before": [0, 0, 0, 0], "pads_after": [0, 0, 0, 0]}, {})
    with pytest.raises(UnsupportedOpError, match="the_pad"):
        Model(Graph("g", "onnxruntime", {t.name: t for t in tensors}, [pad], ["x"], ["y"])).to_onnx_qdq(tmp_path / "a.onnx")
    conv = _conv_node("odd_zero_points", "x", "y", rng, 2, 2, [0, 255])
    conv.params["weight_zero_point"] = np.array([0, 1], np.int64)
    with pytest.raises(UnsupportedOpError, match="odd_zero_points.*one weight zero point"):
        _graph([conv], tensors, ["x"], ["y"]).to_onnx_qdq(tmp_path / "b.onnx")


def test_cli_export_qdq(digits, tmp_path, capsys):
    model = intsim.convert(str(model_path("resnet_digits.onnx")), digits[:16], profile="tflite", progress=False)
    model.save(tmp_path / "m.intsim")
    assert main(["export-qdq", str(tmp_path / "m.intsim"), str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "wrote the QDQ ONNX model" in out and "'double' rounding" in out
    assert onnx.load(str(tmp_path / "m.onnx")).graph.node
    assert main(["export-qdq", str(tmp_path / "missing.intsim"), str(tmp_path / "n.onnx")]) == 1


def test_16_bit_conv_island_differs_from_exact_only_at_near_ties(digits, tmp_path):
    # A16W8: fed onnxruntime's own int16 input codes, a float Conv island's output differs from the float64-exact
    # convolution of the same float32 values only within 0.01 of a rounding tie: MLAS's float32 summation, not
    # a semantic difference (rounding, saturation, bias or zero points) (docs/qdq.md, "Why 16-bit differs").
    path = tmp_path / "a16.onnx"
    quantize_static(str(model_path("resnet_digits.onnx")), str(path), _Reader("x", digits[:16]),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt16, weight_type=QuantType.QInt8)
    graph = intsim.load(path).graph
    node = [n for n in graph.nodes if n.op == "conv2d_float32"][1]
    onnx_name = {v["tensor"]: k for k, v in graph.metadata["onnx_tensors"].items()}
    names = [onnx_name[node.inputs[0]], onnx_name[node.outputs[0]]]
    proto = onnx.load(str(path))
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x_codes, y_codes = session.run(names, {"x": digits[:50]})
    x_info, y_info = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    x = ((x_codes.astype(np.float32) - np.float32(x_info.zero_point)) * node.params["x_scale"][0]).astype(np.float64)
    w = node.params["weight"].astype(np.float64)  # OHWI
    top, left, bottom, right = node.attrs["pads"]
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    _, _, h, wd = x.shape
    exact = np.zeros(y_codes.shape) + node.params["bias"].astype(np.float64)[None, :, None, None]
    for i in range(w.shape[1]):
        for j in range(w.shape[2]):
            exact += np.einsum("nchw,oc->nohw", padded[:, :, i:i + h, j:j + wd], w[:, i, j, :])
    q = exact / np.float64(node.params["y_scale"][0])
    expected = np.clip(np.rint(q) + y_info.zero_point, -32768, 32767)
    differ = expected != y_codes
    assert node.attrs["strides"] == [1, 1] and differ.sum() <= 1e-3 * differ.size
    np.testing.assert_array_less(np.abs(q[differ] - np.floor(q[differ]) - 0.5), 0.01)
