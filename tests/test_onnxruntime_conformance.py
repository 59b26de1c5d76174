"""Conformance: the ``onnxruntime`` profile against a live onnxruntime on QOperator models.

Float models (the shipped digits models and a small hand-built net covering
the other QOperator ops) are quantized by ``onnxruntime.quantization.quantize_static``
in QOperator format (u8s8 and s8s8, per-tensor and per-channel), run by
onnxruntime (CPU execution provider, one thread) and by intsim
(:func:`intsim.importers.onnx_qop.load_onnx_qoperator`, fast and naive
backends).  Every code tensor onnxruntime computes, intermediate ones
included (added as graph outputs), must equal intsim's bit for bit.

onnxruntime's u8s8 kernels saturate each pair of products to int16
(``vpmaddubsw``) on AVX2 machines without VNNI only; elsewhere they accumulate
exactly.  The profile under test follows this machine's ``/proc/cpuinfo``.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402

import intsim.models  # noqa: E402
from intsim import Model, UnsupportedOpError, ValidationError  # noqa: E402
from intsim.datasets import load_dataset  # noqa: E402
from intsim.importers.onnx_qop import load_onnx_qoperator, mlas_logistic  # noqa: E402

MODELS_DIR = Path(intsim.models.__file__).parent


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


FLAGS = _cpu_flags()
VNNI = bool(FLAGS & {"avx512_vnni", "avx_vnni"})
AVX2_WITHOUT_VNNI = platform.machine() in ("x86_64", "AMD64") and "avx2" in FLAGS and not VNNI
# u8s8 pair saturation (vpmaddubsw) happens on AVX2 without VNNI only.
PROFILE = "onnxruntime_avx2" if AVX2_WITHOUT_VNNI else "onnxruntime"

SCHEMES = {
    # name: (activation type, per_channel)
    "u8s8": (QuantType.QUInt8, False),
    "u8s8_per_channel": (QuantType.QUInt8, True),
    "s8s8": (QuantType.QInt8, False),
    "s8s8_per_channel": (QuantType.QInt8, True),
}


class _Reader(CalibrationDataReader):
    def __init__(self, name, data):
        self.batches = iter([{name: data[i : i + 1]} for i in range(len(data))])

    def get_next(self):
        return next(self.batches, None)


def _session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _quantize(float_path, out_path, scheme, calibration) -> onnx.ModelProto:
    activation_type, per_channel = SCHEMES[scheme]
    name = onnx.load(str(float_path)).graph.input[0].name
    quantize_static(str(float_path), str(out_path), _Reader(name, calibration), quant_format=QuantFormat.QOperator,
                    activation_type=activation_type, weight_type=QuantType.QInt8, per_channel=per_channel)
    return onnx.load(str(out_path))


def _probe_model(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs every tensor in ``names``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return probe


def _run_everything(model: onnx.ModelProto, names, feeds) -> dict:
    """onnxruntime's value of every tensor in ``names`` (added as graph outputs)."""
    session = _session(_probe_model(model, names))
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def _assert_conforms(model: onnx.ModelProto, data: np.ndarray, backend: str = "fast", profile: str = PROFILE,
                     reference: dict | None = None) -> int:
    """Compare every code tensor and the float output; return the number of elements compared.

    ``reference`` holds onnxruntime's value of every tensor (see
    :func:`_probe_model`); by default this machine's onnxruntime computes it.
    """
    graph = load_onnx_qoperator(model, profile)
    meta = graph.metadata
    (float_input, code_input), = meta["onnx_inputs"].items()
    if reference is None:
        reference = _run_everything(model, list(meta["onnx_tensors"]), {float_input: data})
    trace = Model(graph, backend).trace(reference[code_input])
    compared = 0
    for onnx_name, held in meta["onnx_tensors"].items():
        expected = reference[onnx_name]
        if held["perm"] is not None:
            expected = np.ascontiguousarray(expected.transpose(held["perm"]))
        np.testing.assert_array_equal(trace.tensors[held["tensor"]], expected, strict=True,
                                      err_msg=f"tensor {onnx_name!r} ({backend})")
        compared += expected.size
    for float_output, code in meta["onnx_outputs"].items():
        info = graph.tensors[code]
        dequantized = (np.float32(info.scale) * (trace.tensors[code].astype(np.float32) - np.float32(info.zero_point)))
        np.testing.assert_array_equal(dequantized, reference[float_output], strict=True)
    return compared


@pytest.fixture(scope="module")
def digits():
    train_x, _ = load_dataset("digits", "train")
    test_x, _ = load_dataset("digits", "test")
    rng = np.random.default_rng(0)
    random_x = np.concatenate([rng.uniform(0, 1, (64, 1, 8, 8)), rng.uniform(-1, 2, (64, 1, 8, 8))]).astype(np.float32)
    return train_x[:64], test_x, random_x


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, digits):
    cache = {}

    def get(model_name, scheme):
        if (model_name, scheme) not in cache:
            out = tmp_path_factory.mktemp("qop") / f"{model_name}_{scheme}.onnx"
            cache[model_name, scheme] = _quantize(MODELS_DIR / f"{model_name}.onnx", out, scheme, digits[0])
        return cache[model_name, scheme]

    return get


# --------------------------------------------------------------------------
# Shipped models, every scheme, real and random inputs.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("model_name", ["resnet_digits", "mobilenet_digits"])
def test_shipped_model_matches_onnxruntime(quantized, digits, model_name, scheme):
    model = quantized(model_name, scheme)
    _, test_x, random_x = digits
    compared = _assert_conforms(model, test_x) + _assert_conforms(model, random_x)
    compared += _assert_conforms(model, test_x[:4], backend="naive")
    assert compared > 100_000


def test_float_edges_match_onnxruntime_on_real_images(quantized, digits):
    model = quantized("resnet_digits", "u8s8_per_channel")
    graph = load_onnx_qoperator(model, PROFILE)
    (float_input,) = graph.metadata["onnx_inputs"]
    _, test_x, _ = digits
    expected = _session(model).run(None, {float_input: test_x})[0]
    np.testing.assert_array_equal(Model(graph).run(test_x), expected, strict=True)


# --------------------------------------------------------------------------
# A hand-built net for the other QOperator ops.
# --------------------------------------------------------------------------


def _normal_initializer(rng):
    """``init(name, shape, scale)``: a float initializer of normal values times ``scale``, drawn from ``rng``."""
    def init(name, shape, scale=0.3):
        return helper.make_tensor(name, TensorProto.FLOAT, shape, (rng.standard_normal(shape) * scale).ravel().tolist())
    return init


def _save_net(path: Path, name: str, nodes, inits, x_shape) -> None:
    """A checked opset-17 float model from input ``x`` (``x_shape``) to 10 logits ``y``, saved to ``path``."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _float_net(path: Path) -> None:
    rng = np.random.default_rng(7)
    init = _normal_initializer(rng)

    inits = [
        init("w1", [8, 3, 3, 3]), init("b1", [8], 0.1),
        init("w2", [8, 1, 3, 3]), init("b2", [8], 0.1),
        init("w3", [6, 8, 1, 1]), init("b3", [6], 0.1),
        init("w4", [12, 14, 2, 2], 0.1), init("b4", [12], 0.1),
        init("w5", [12 * 4 * 4, 16], 0.05),
        init("w6", [10, 16], 0.2), init("b6", [10], 0.1),
        helper.make_tensor("flat", TensorProto.INT64, [2], [0, -1]),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["r1"], alpha=0.1),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], group=8, pads=[1, 0, 1, 2]),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("Conv", ["p1", "w3", "b3"], ["c3"], strides=[1, 1]),
        helper.make_node("Concat", ["s2", "c3"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w4", "b4"], ["c4"], dilations=[2, 2], pads=[1, 1, 0, 0]),
        helper.make_node("Relu", ["c4"], ["r4"]),
        helper.make_node("Reshape", ["r4", "flat"], ["f4"]),
        helper.make_node("MatMul", ["f4", "w5"], ["m5"]),
        helper.make_node("Gemm", ["m5", "w6", "b6"], ["y"], transB=1),
    ]
    _save_net(path, "qop_net", nodes, inits, ["n", 3, 10, 10])


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_hand_built_net_matches_onnxruntime(tmp_path, scheme):
    float_path = tmp_path / "net.onnx"
    _float_net(float_path)
    rng = np.random.default_rng(1)
    calibration = rng.uniform(-1, 1, (32, 3, 10, 10)).astype(np.float32)
    model = _quantize(float_path, tmp_path / "net_q.onnx", scheme, calibration)
    ops = {n.op_type for n in model.graph.node}
    assert {"QLinearConv", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearConcat", "MaxPool", "QLinearMatMul",
            "QGemm", "Reshape"} <= ops
    data = rng.uniform(-1.5, 1.5, (48, 3, 10, 10)).astype(np.float32)
    assert _assert_conforms(model, data) > 10_000
    _assert_conforms(model, data[:3], backend="naive")


def _float_net_mul_pool(path: Path) -> None:
    rng = np.random.default_rng(8)
    init = _normal_initializer(rng)

    inits = [
        init("w1", [8, 3, 3, 3]), init("b1", [8], 0.1),
        init("w2", [8, 8, 1, 1]), init("b2", [8], 0.1),
        helper.make_tensor("gain", TensorProto.FLOAT, [1, 8, 1, 1], rng.uniform(0.5, 2.0, 8).tolist()),
        helper.make_tensor("offset", TensorProto.FLOAT, [1, 8, 1, 1], rng.uniform(-0.5, 0.5, 8).tolist()),
        init("w3", [10, 8], 0.3), init("b3", [10], 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("AveragePool", ["r1"], ["p1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("Sigmoid", ["c2"], ["s2"]),
        helper.make_node("Mul", ["p1", "s2"], ["m1"]),
        helper.make_node("Mul", ["m1", "gain"], ["m2"]),
        helper.make_node("Add", ["m2", "offset"], ["a2"]),
        helper.make_node("AveragePool", ["a2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["p2"], ["p3"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("GlobalAveragePool", ["p3"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1),
    ]
    _save_net(path, "qop_mul_pool", nodes, inits, ["n", 3, 8, 8])


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_mul_and_pool_net_matches_onnxruntime(tmp_path, scheme):
    float_path = tmp_path / "net.onnx"
    _float_net_mul_pool(float_path)
    rng = np.random.default_rng(2)
    calibration = rng.uniform(-1, 1, (32, 3, 8, 8)).astype(np.float32)
    model = _quantize(float_path, tmp_path / "net_q.onnx", scheme, calibration)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QLinearMul") == 2 and ops.count("QLinearAveragePool") == 3
    assert {"QLinearAdd", "QLinearGlobalAveragePool"} <= set(ops)
    data = np.concatenate([rng.uniform(-1.5, 1.5, (48, 3, 8, 8)), np.full((1, 3, 8, 8), 1e3), np.full((1, 3, 8, 8), -1e3)])
    assert _assert_conforms(model, data.astype(np.float32)) > 10_000
    _assert_conforms(model, data[:3].astype(np.float32), backend="naive")


# --------------------------------------------------------------------------
# Lookup tables built like onnxruntime's.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("x_type", [TensorProto.UINT8, TensorProto.INT8])
@pytest.mark.parametrize("op_type", ["QLinearSigmoid", "QLinearLeakyRelu"])
def test_lookup_tables_match_onnxruntime_for_every_code(op_type, x_type):
    rng = np.random.default_rng(3)
    for _ in range(10):
        x_scale, y_scale = (float(v) for v in rng.uniform(0.01, 0.2, 2))
        x_zp, y_zp = (int(v) for v in rng.integers(0, 256, 2) - (128 if x_type == TensorProto.INT8 else 0))
        inits = [helper.make_tensor("xs", TensorProto.FLOAT, [], [x_scale]), helper.make_tensor("xz", x_type, [], [x_zp]),
                 helper.make_tensor("ys", TensorProto.FLOAT, [], [y_scale]), helper.make_tensor("yz", x_type, [], [y_zp])]
        attrs = {"alpha": float(rng.uniform(0.01, 0.3))} if op_type == "QLinearLeakyRelu" else {}
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                 helper.make_node(op_type, ["xq", "xs", "xz", "ys", "yz"], ["yq"], domain="com.microsoft", **attrs),
                 helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
        graph = helper.make_graph(nodes, "lut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        lo = -128 if x_type == TensorProto.INT8 else 0
        codes = np.arange(lo, lo + 256)
        x = ((codes - x_zp) * np.float32(x_scale)).astype(np.float32)
        reference = _run_everything(model, ["xq", "yq"], {"x": x})
        np.testing.assert_array_equal(reference["xq"].astype(np.int64), codes)
        graph = load_onnx_qoperator(model, PROFILE)
        np.testing.assert_array_equal(Model(graph).run_int(reference["xq"]), reference["yq"], strict=True)


def test_mlas_logistic_stays_close_to_the_sigmoid():
    x = np.linspace(-20, 20, 801, dtype=np.float32)
    y = mlas_logistic(x)
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() <= 1
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x.astype(np.float64))), atol=1e-6)


# --------------------------------------------------------------------------
# Pair saturation (vpmaddubsw) and the ISA of this machine.
# --------------------------------------------------------------------------


def _saturating_models(op_type):
    """One u8s8 layer whose weights (+-127) and activations (255) saturate every int16 pair sum."""
    k = 8
    weight = np.tile(np.array([127, 127, -128, -128, 127, 127, 127, 127], np.int8), (2, 1))
    weight[1] = -weight[1]
    x_scale, w_scale, y_scale = 1.0, 1.0, 2 * k * 255 * 128 / 200
    common = [
        helper.make_tensor("xs", TensorProto.FLOAT, [], [x_scale]),
        helper.make_tensor("xz", TensorProto.UINT8, [], [0]),
        helper.make_tensor("ws", TensorProto.FLOAT, [], [w_scale]),
        helper.make_tensor("wz", TensorProto.INT8, [], [0]),
        helper.make_tensor("ys", TensorProto.FLOAT, [], [y_scale]),
        helper.make_tensor("yz", TensorProto.UINT8, [], [128]),
        helper.make_tensor("b", TensorProto.INT32, [2], [0, 0]),
    ]
    if op_type == "QLinearConv":
        w = helper.make_tensor("w", TensorProto.INT8, [2, k, 1, 1], weight.ravel().tolist())
        node = helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["yq"])
        x_shape, y_shape = ["n", k, 2, 2], ["n", 2, 2, 2]
    else:
        w = helper.make_tensor("w", TensorProto.INT8, [2, k], weight.ravel().tolist())
        node = helper.make_node("QGemm", ["xq", "xs", "xz", "w", "ws", "wz", "b", "ys", "yz"], ["yq"],
                                domain="com.microsoft", transB=1)
        x_shape, y_shape = ["n", k], ["n", 2]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), node,
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "pairs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], common + [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("op_type", ["QLinearConv", "QGemm"])
def test_pair_saturation_follows_the_isa(op_type):
    model = _saturating_models(op_type)
    shape = (1, 8, 2, 2) if op_type == "QLinearConv" else (1, 8)
    x = np.full(shape, 255.0, np.float32)
    expected = _run_everything(model, ["yq"], {"x": x})["yq"]
    codes = np.full(shape, 255, np.uint8)
    results = {}
    for profile in ("onnxruntime", "onnxruntime_avx2"):
        graph = load_onnx_qoperator(model, profile)
        trace = Model(graph).trace(codes)
        results[profile] = trace.tensors[graph.metadata["onnx_outputs"]["y"]]
        pairs = sum(s.get("pair_saturation_count", 0) for s in trace.stats.values())
        assert (pairs > 0) == (profile == "onnxruntime_avx2")
    assert not np.array_equal(results["onnxruntime"], results["onnxruntime_avx2"])  # the input really saturates
    np.testing.assert_array_equal(results[PROFILE], expected, strict=True)


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------


def _one_node(node, x_type=TensorProto.UINT8, extra_inits=()):
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", x_type, [], [3]),
             *extra_inits]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]), node,
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_unsupported_op_names_op_node_and_opset():
    node = helper.make_node("QLinearReduceMean", ["xq", "s", "z", "s", "z"], ["yq"], name="mean7",
                            domain="com.microsoft", axes=[1], keepdims=1)
    with pytest.raises(UnsupportedOpError, match=r"mean7.*com\.microsoft:QLinearReduceMean \(opset 1\)"):
        load_onnx_qoperator(_one_node(node))


def test_float_op_between_quantize_and_dequantize_is_unsupported():
    model = _one_node(helper.make_node("Identity", ["xq"], ["yq"], name="copy"))
    with pytest.raises(UnsupportedOpError, match=r"'copy'.*ai\.onnx:Identity \(opset 17\)"):
        load_onnx_qoperator(model)


def test_uint8_weights_are_rejected():
    w = helper.make_tensor("w", TensorProto.UINT8, [2, 4, 1, 1], [1] * 8)
    node = helper.make_node("QLinearConv", ["xq", "s", "z", "w", "s", "z", "s", "z"], ["yq"], name="conv")
    with pytest.raises(ValidationError, match="weights must be int8"):
        load_onnx_qoperator(_one_node(node, extra_inits=[w]))


def test_unequal_per_channel_weight_zero_points_are_rejected():
    inits = [helper.make_tensor("w", TensorProto.INT8, [2, 4, 1, 1], [1] * 8),
             helper.make_tensor("ws", TensorProto.FLOAT, [2], [0.1, 0.2]),
             helper.make_tensor("wz", TensorProto.INT8, [2], [0, 1])]
    node = helper.make_node("QLinearConv", ["xq", "s", "z", "w", "ws", "wz", "s", "z"], ["yq"], name="conv")
    with pytest.raises(ValidationError, match="per-channel weight zero point"):
        load_onnx_qoperator(_one_node(node, extra_inits=inits))
