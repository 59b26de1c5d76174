"""QDQ ONNX models against a live onnxruntime (default session options, CPU provider).

Models come from ``onnxruntime.quantization.quantize_static`` (QDQ format) of the
shipped models and of the hand-built nets of the QOperator conformance test,
and from QDQ graphs written node by node.  Where onnxruntime fuses every group
into its QLinear kernels (uint8 activations), every code tensor it computes,
intermediate ones included (added as graph outputs), must equal intsim's bit
for bit.  Where it leaves float convolutions and GEMMs (int8 activations read
twice on x86, 16-bit activations, 4-bit weights), the ``onnxruntime`` profile
sums them in MLAS's float32 order (``intsim.kernels.mlas_sgemm``), so on x86-64
those are bit-exact too; elsewhere they are counted and bounded.  Every test runs in a few seconds;
``pytest tests/test_qdq.py -m slow``
adds the fashion models.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: E402

import intsim  # noqa: E402
from intsim import Model, ModelFormatError, UnsupportedOpError  # noqa: E402
from intsim.datasets import load_dataset  # noqa: E402
from intsim.importers.onnx_qdq import load_onnx_qdq, onnx_format, qdq_to_qoperator  # noqa: E402
from intsim.models import model_path  # noqa: E402
from tests.test_onnxruntime_conformance import (  # noqa: E402
    PROFILE,
    _float_net,
    _float_net_mul_pool,
    _Reader,
)

VARIANTS = {
    # name: (activation type, per_channel, reduce_range)
    "u8s8": (QuantType.QUInt8, False, False),
    "u8s8_per_channel": (QuantType.QUInt8, True, False),
    "u8s8_reduce_range": (QuantType.QUInt8, True, True),
    "s8s8": (QuantType.QInt8, False, False),
    "s8s8_per_channel": (QuantType.QInt8, True, False),
}
X86 = platform.machine() in ("x86_64", "AMD64")
# The float islands' MLAS order is measured on x86-64 (AVX-512 here; see docs/qdq.md): exact there.
ISLANDS_EXACT = X86


def _session(model: onnx.ModelProto, optimized_path: Path | None = None):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _quantize_qdq(float_path, out_path, variant, calibration) -> onnx.ModelProto:
    activation_type, per_channel, reduce_range = VARIANTS[variant]
    name = onnx.load(str(float_path)).graph.input[0].name
    quantize_static(str(float_path), str(out_path), _Reader(name, calibration), quant_format=QuantFormat.QDQ,
                    activation_type=activation_type, weight_type=QuantType.QInt8, per_channel=per_channel,
                    reduce_range=reduce_range)
    return onnx.load(str(out_path))


def _with_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return probe


def _compare(model: onnx.ModelProto, data: np.ndarray, backend: str = "fast", exact: bool = True) -> dict:
    """Run ``model`` in onnxruntime and intsim; return mismatch counts.

    Code tensors are probed (added as graph outputs) only where that leaves
    onnxruntime's fusions as they are: every code tensor of a uint8 model, and
    the int8 code tensors of an int8 model (those whose Q feeds several DQs,
    which onnxruntime leaves int8; a uint8 one came from an int8 pair that a
    graph output would keep int8).  ``exact``: every count must be 0.
    """
    graph = load_onnx_qdq(model, PROFILE)
    meta = graph.metadata
    (float_input,) = meta["onnx_inputs"]
    source_types = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    probed = [name for name, held in meta["onnx_tensors"].items()
              if name in source_types and graph.tensors[held["tensor"]].dtype == _q_dtype(model, source_types[name])]
    session = _session(_with_outputs(model, probed))
    reference = dict(zip([o.name for o in session.get_outputs()], session.run(None, {float_input: data})))
    trace = Model(graph, backend).trace(data, float_input=True)
    counts = {"codes": 0, "code_mismatches": 0, "outputs": 0, "output_mismatches": 0}
    for name in probed:
        held = meta["onnx_tensors"][name]
        expected = reference[name]
        if held["perm"] is not None:
            expected = np.ascontiguousarray(expected.transpose(held["perm"]))
        got = trace.tensors[held["tensor"]]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        counts["codes"] += expected.size
        counts["code_mismatches"] += int((got != expected).sum())
        if exact:
            np.testing.assert_array_equal(got, expected, strict=True, err_msg=f"tensor {name!r} ({backend})")
    for float_output, code in meta["onnx_outputs"].items():
        info = graph.tensors[code]
        got = np.float32(info.scale) * (trace.tensors[code].astype(np.float32) - np.float32(info.zero_point))
        counts["outputs"] += got.size
        counts["output_mismatches"] += int((got != reference[float_output]).sum())
        if exact:
            np.testing.assert_array_equal(got, reference[float_output], strict=True)
    return counts


def _q_dtype(model, q_node) -> str:
    inits = {t.name: t for t in model.graph.initializer}
    if len(q_node.input) > 2 and q_node.input[2] in inits:
        return numpy_helper.to_array(inits[q_node.input[2]]).dtype.name
    return "uint8"


@pytest.fixture(scope="module")
def digits():
    train_x, _ = load_dataset("digits", "train")
    test_x, _ = load_dataset("digits", "test")
    rng = np.random.default_rng(0)
    random_x = rng.uniform(-1, 2, (64, 1, 8, 8)).astype(np.float32)
    return train_x[:32], test_x, random_x


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, digits):
    cache = {}

    def get(model_name, variant, calibration=None):
        if (model_name, variant) not in cache:
            out = tmp_path_factory.mktemp("qdq") / f"{model_name}_{variant}.onnx"
            data = digits[0] if calibration is None else calibration
            cache[model_name, variant] = _quantize_qdq(model_path(f"{model_name}.onnx"), out, variant, data)
        return cache[model_name, variant]

    return get


# --------------------------------------------------------------------------
# Shipped models.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.startswith("u8")])
@pytest.mark.parametrize("model_name", ["resnet_digits", "mobilenet_digits"])
def test_uint8_models_match_onnxruntime_in_every_code(quantized, digits, model_name, variant):
    model = quantized(model_name, variant)
    _, test_x, random_x = digits
    graph = load_onnx_qdq(model, PROFILE)
    assert not [n for n, how in graph.metadata["qdq"].items() if how == "float"]
    counts = _compare(model, test_x)
    assert counts["codes"] > 100_000 and counts["outputs"] == test_x.shape[0] * 10
    _compare(model, random_x)
    _compare(model, test_x[:4], backend="naive")


@pytest.mark.parametrize("variant", ["s8s8", "s8s8_per_channel"])
@pytest.mark.parametrize("model_name", ["resnet_digits", "mobilenet_digits"])
def test_int8_models_with_float_islands_match_onnxruntime(quantized, digits, model_name, variant):
    model = quantized(model_name, variant)
    _, test_x, _ = digits
    graph = load_onnx_qdq(model, PROFILE)
    islands = [n for n, how in graph.metadata["qdq"].items() if how == "float"]
    if X86:
        assert islands  # int8 activations read twice stay int8, and x86 fuses no int8 Conv
    counts = _compare(model, test_x, exact=ISLANDS_EXACT)
    assert counts["codes"] > 10_000
    assert counts["output_mismatches"] <= 0.005 * counts["outputs"]
    assert counts["code_mismatches"] <= 0.005 * counts["codes"]
    naive = _compare(model, test_x[:2], backend="naive", exact=ISLANDS_EXACT)
    fast = _compare(model, test_x[:2], exact=ISLANDS_EXACT)
    assert naive == fast


@pytest.mark.skipif(not X86, reason="the fusion rules modelled are onnxruntime's on x86-64")
@pytest.mark.parametrize("variant", ["u8s8_per_channel", "s8s8", "s8s8_per_channel"])
@pytest.mark.parametrize("model_name", ["resnet_digits", "mobilenet_digits"])
def test_fusion_decisions_match_onnxruntimes_optimized_graph(quantized, tmp_path, model_name, variant):
    model = quantized(model_name, variant)
    optimized = tmp_path / "optimized.onnx"
    _session(model, optimized)
    kept_float = {n.name for n in onnx.load(str(optimized)).graph.node
                  if n.domain in ("", "ai.onnx") and n.op_type in ("Conv", "Add", "Mul", "Gemm", "MatMul")}
    qlinear = sorted(n.op_type for n in onnx.load(str(optimized)).graph.node
                     if n.op_type.startswith("QLinear") or n.op_type == "QGemm")
    rewritten, report = qdq_to_qoperator(model)
    assert {name for name, how in report.items() if how == "float"} == kept_float
    assert sorted(n.op_type for n in rewritten.graph.node
                  if n.op_type.startswith("QLinear") or n.op_type == "QGemm") == qlinear


def test_real_images_through_intsim_load(quantized, digits, tmp_path):
    model = quantized("resnet_digits", "u8s8_per_channel")
    path = tmp_path / "resnet_qdq.onnx"
    onnx.save(model, str(path))
    _, test_x, _ = digits
    expected = _session(model).run(None, {"x": test_x})[0]
    np.testing.assert_array_equal(intsim.load(path).run(test_x), expected, strict=True)
    np.testing.assert_array_equal(intsim.load(model, profile=PROFILE).run(test_x), expected, strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["u8s8", "u8s8_per_channel", "s8s8_per_channel"])
@pytest.mark.parametrize("model_name", ["resnet_fashion", "mobilenet_fashion"])
def test_fashion_models_match_onnxruntime(quantized, model_name, variant):
    train_x, _ = load_dataset("fashion", "train")
    test_x, _ = load_dataset("fashion", "test")
    model = quantized(model_name, variant, train_x[:32])
    counts = _compare(model, test_x[:500], exact=variant.startswith("u8") or ISLANDS_EXACT)
    assert counts["output_mismatches"] <= 0.005 * counts["outputs"]


# --------------------------------------------------------------------------
# Hand-built nets: every fused op.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("net, x_shape, variant", [
    (_float_net, (3, 10, 10), "u8s8"), (_float_net, (3, 10, 10), "u8s8_per_channel"),
    (_float_net, (3, 10, 10), "s8s8_per_channel"),
    (_float_net_mul_pool, (3, 8, 8), "u8s8"), (_float_net_mul_pool, (3, 8, 8), "u8s8_per_channel"),
])
def test_hand_built_nets_match_onnxruntime(tmp_path, net, x_shape, variant):
    float_path = tmp_path / "net.onnx"
    net(float_path)
    rng = np.random.default_rng(1)
    calibration = rng.uniform(-1, 1, (32, *x_shape)).astype(np.float32)
    model = _quantize_qdq(float_path, tmp_path / "net_qdq.onnx", variant, calibration)
    assert onnx_format(model) == "qdq"
    data = rng.uniform(-1.5, 1.5, (48, *x_shape)).astype(np.float32)
    exact = variant.startswith("u8") or ISLANDS_EXACT
    counts = _compare(model, data, exact=exact)
    assert counts["output_mismatches"] <= 0.005 * counts["outputs"]
    _compare(model, data[:2], backend="naive", exact=exact)
    if variant.startswith("u8"):
        fused = {how for how in load_onnx_qdq(model, PROFILE).metadata["qdq"].values()}
        assert "float" not in fused and "unsupported" not in fused


def test_an_unfused_average_pool_runs_as_a_float_island(tmp_path):
    # int8: the AveragePool reads an int8 pair onnxruntime turned uint8 and writes one it left int8 (two
    # readers), so the types differ and onnxruntime pools in float32 (MlasPool), which intsim models exactly.
    float_path = tmp_path / "net.onnx"
    _float_net_mul_pool(float_path)
    rng = np.random.default_rng(1)
    calibration = rng.uniform(-1, 1, (32, 3, 8, 8)).astype(np.float32)
    model = _quantize_qdq(float_path, tmp_path / "net_qdq.onnx", "s8s8_per_channel", calibration)
    graph = load_onnx_qdq(model, PROFILE)
    assert graph.metadata["qdq"]["AveragePool_13"] == "float"
    assert "avg_pool_float32_island" in {n.op for n in graph.nodes}
    counts = _compare(model, rng.uniform(-1.5, 1.5, (48, 3, 8, 8)).astype(np.float32), exact=False)
    # Every probed code equal (the islands included); measured 9 / 480 float outputs differ, with the islands in
    # MLAS's order or in the exact one alike, so downstream of them: not a float-island difference (open).
    assert counts["code_mismatches"] == (0 if ISLANDS_EXACT else counts["code_mismatches"])
    assert counts["output_mismatches"] <= 0.03 * counts["outputs"]


@pytest.mark.parametrize("codes", [np.int16, np.uint16])
@pytest.mark.parametrize("kernel, strides, pads, include_pad", [
    ([3, 3], [1, 1], [1, 1, 1, 1], 0), ([3, 3], [2, 2], [1, 1, 1, 1], 1), ([2, 3], [1, 2], [0, 1, 1, 0], 0),
    ([3, 3], [3, 3], [1, 1, 1, 1], 0), ([7, 7], [1, 1], [0, 0, 0, 0], 0), ([2, 2], [1, 1], [0, 0, 0, 0], 0)])
def test_average_pool_island_is_exact(codes, kernel, strides, pads, include_pad):
    zp = 3 if codes == np.int16 else 30000
    model = _qdq_single_op_model("AveragePool", ["n", 16, 7, 7], ["n", 16, "h", "w"], codes, x_scale=0.0003, x_zp=zp,
                                 y_scale=0.00007, y_zp=zp - 10, kernel_shape=kernel, strides=strides, pads=pads,
                                 count_include_pad=include_pad)
    graph = load_onnx_qdq(model, PROFILE)
    assert graph.metadata["qdq"] == {"island": "float"}
    rng = np.random.default_rng(24)
    data = rng.uniform(-9, 9, (32, 16, 7, 7)).astype(np.float32)
    data[:8] = rng.uniform(-0.02, 0.02, (8, 16, 7, 7))
    counts = _compare(model, data)
    assert counts["code_mismatches"] == 0
    _compare(model, data[:2], backend="naive")


def _qdq_conv_model(x_zp, y_zp, dtype=TensorProto.UINT8, x_scale=1.0, y_scale=2.0, w_scale=1.0):
    """input -> Q -> DQ -> Conv(DQ(w), DQ(b)) -> Q -> DQ -> output, written node by node."""
    rng = np.random.default_rng(5)
    w = rng.integers(-128, 128, (4, 2, 3, 3)).astype(np.int8)
    w[0, 0, 0, 0] = -128
    bias = rng.integers(-300, 300, 4).astype(np.int32)
    code = np.uint8 if dtype == TensorProto.UINT8 else np.int8
    inits = [
        numpy_helper.from_array(np.array(x_scale, np.float32), "xs"), numpy_helper.from_array(np.array(x_zp, code), "xz"),
        numpy_helper.from_array(np.array(y_scale, np.float32), "ys"), numpy_helper.from_array(np.array(y_zp, code), "yz"),
        numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(w_scale, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
        numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.array(x_scale * w_scale, np.float32), "bs"),
        numpy_helper.from_array(np.array(0, np.int32), "bz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
        helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"]),
        helper.make_node("Conv", ["xd", "wd", "bd"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
        helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 5, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("x_zp, y_zp", [(0, 255), (255, 0), (128, 128)])
def test_hand_written_conv_with_extreme_zero_points_and_ties(x_zp, y_zp):
    # x_scale = w_scale = 1, y_scale = 2: every odd accumulator is an exact tie, rounded to even.
    model = _qdq_conv_model(x_zp, y_zp)
    rng = np.random.default_rng(6)
    data = np.concatenate([rng.integers(-300, 300, (16, 2, 5, 5)), rng.integers(-3, 3, (16, 2, 5, 5)) + 0.5])
    counts = _compare(model, data.astype(np.float32))
    assert counts["codes"] == 32 * (2 + 4) * 5 * 5 and counts["output_mismatches"] == 0
    graph = load_onnx_qdq(model, PROFILE)
    assert graph.metadata["qdq"] == {"conv": "fused:QLinearConv"}
    acc = Model(graph).trace(_session(_with_outputs(model, ["xq"])).run(["xq"], {"x": data[:16].astype(np.float32)})[0])
    assert (acc.accumulators["conv"] % 2 != 0).any()


# --------------------------------------------------------------------------
# Retargeting: the same scales and zero points under a chip's arithmetic.
# --------------------------------------------------------------------------


def _gemmlowp_requantize(acc: int, real: float) -> int:
    """TFLite's MultiplyByQuantizedMultiplier in plain Python integers (a test-side reference)."""
    mantissa, exponent = np.frexp(real)
    q = int(round(mantissa * (1 << 31)))
    if q == 1 << 31:
        q, exponent = q // 2, exponent + 1
    left, right = max(exponent, 0), max(-exponent, 0)
    a = acc * (1 << left)
    a = max(min(a, 2**31 - 1), -(2**31))
    product = a * q
    nudge = (1 << 30) if product >= 0 else 1 - (1 << 30)
    high = (product + nudge) // (1 << 31) if product + nudge >= 0 else -((-(product + nudge)) // (1 << 31))
    high = max(min(high, 2**31 - 1), -(2**31))
    mask = (1 << right) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> right) + (1 if remainder > threshold else 0)


@pytest.mark.parametrize("x_scale, w_scale, y_scale, code_range", [(0.02, 0.011, 0.37, 128), (0.5, 0.5, 1.0, 2)])
def test_tflite_profile_requantizes_with_gemmlowp_double_rounding(x_scale, w_scale, y_scale, code_range):
    model = _qdq_conv_model(-3, 5, TensorProto.INT8, x_scale=x_scale, y_scale=y_scale, w_scale=w_scale)
    model_tfl = load_onnx_qdq(model, "tflite")
    assert model_tfl.profile.name == "tflite" and "conv2d" in {n.op for n in model_tfl.nodes}
    rng = np.random.default_rng(9)
    x_codes = rng.integers(-code_range, code_range, (3, 2, 5, 5)).astype(np.int8)
    trace = Model(model_tfl).trace(x_codes)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w, bias = inits["w"].astype(np.int64), inits["b"].astype(np.int64)
    real = float(np.float32(x_scale)) * float(np.float32(w_scale)) / float(np.float32(y_scale))
    padded = np.pad(x_codes.astype(np.int64) + 3, ((0, 0), (0, 0), (1, 1), (1, 1)))
    expected = np.empty((3, 4, 5, 5), np.int8)
    nearest = np.empty((3, 4, 5, 5), np.int8)
    for n, o, h, v in np.ndindex(expected.shape):
        acc = int((padded[n, :, h:h + 3, v:v + 3] * w[o]).sum() + bias[o])
        expected[n, o, h, v] = min(max(_gemmlowp_requantize(acc, real) + 5, -128), 127)
        nearest[n, o, h, v] = min(max(int(np.rint(acc * real)) + 5, -128), 127)
    (out_name,) = model_tfl.outputs
    np.testing.assert_array_equal(trace.tensors[out_name], expected, strict=True)
    if code_range == 2:  # real multiplier 1/4: ties, which gemmlowp rounds away from zero, rint to even
        assert (nearest != expected).any()


@pytest.mark.parametrize("model_name, variant", [("resnet_digits", "u8s8_per_channel"),
                                                 ("mobilenet_digits", "s8s8_per_channel")])
def test_tflite_retarget_agrees_with_onnxruntime_on_top1(quantized, digits, model_name, variant):
    model = quantized(model_name, variant)
    _, test_x, _ = digits
    expected = _session(model).run(None, {"x": test_x})[0]
    retargeted = intsim.load(model, profile="tflite")
    assert retargeted.profile.name == "tflite"
    assert not {n.op for n in retargeted.graph.nodes} & {"add_float32_fma", "conv2d_float32", "add_float32"}
    got = retargeted.run(test_x)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99
    assert (got != expected).any()  # double rounding and integer Add show


def test_int16_activations_on_an_8_bit_profile_name_the_node(tmp_path, digits):
    model = _quantize_qdq_int16(tmp_path, digits[0])
    with pytest.raises(UnsupportedOpError, match="int16 codes, profile 'tflite' has 8-bit activations"):
        load_onnx_qdq(model, "tflite")


def _quantize_qdq_int16(tmp_path, calibration, model_name="resnet_digits", activation_type=QuantType.QInt16,
                        weight_type=QuantType.QInt8, per_channel=False):
    out = tmp_path / f"{model_name}_{activation_type.name}_{weight_type.name}.onnx"
    quantize_static(str(model_path(f"{model_name}.onnx")), str(out), _Reader("x", calibration),
                    quant_format=QuantFormat.QDQ, activation_type=activation_type, weight_type=weight_type,
                    per_channel=per_channel)
    return onnx.load(str(out))


# --------------------------------------------------------------------------
# 16-bit activations and 4-bit weights: onnxruntime fuses none of their groups on x86, every op is a float
# island (Conv, Add, GlobalAveragePool, Gemm).
# --------------------------------------------------------------------------


@pytest.mark.parametrize("model_name, activation_type, per_channel", [
    ("resnet_digits", QuantType.QInt16, False), ("mobilenet_digits", QuantType.QInt16, True),
    ("resnet_digits", QuantType.QUInt16, False)])
def test_16_bit_activation_models_run_on_the_onnxruntime_profile(tmp_path, digits, model_name, activation_type,
                                                                  per_channel):
    model = _quantize_qdq_int16(tmp_path, digits[0], model_name, activation_type, per_channel=per_channel)
    _, test_x, _ = digits
    graph = load_onnx_qdq(model, PROFILE)
    ops = {n.op for n in graph.nodes}
    assert {"gemm_float32", "global_avg_pool_float32", "conv2d_float32"} <= ops
    assert not [n for n, how in graph.metadata["qdq"].items() if how.startswith("fused")]
    counts = _compare(model, test_x[:100], exact=ISLANDS_EXACT)
    # Off x86-64 the Conv and Gemm islands' float32 sums may differ from MLAS's in the last bit now and then,
    # which a 16-bit grid resolves 256 times more often than an 8-bit one (docs/qdq.md): bounded there.
    assert counts["code_mismatches"] <= 0.06 * counts["codes"]
    expected = _session(model).run(None, {"x": test_x[:100]})[0]
    got = Model(graph).run(test_x[:100])
    (code,) = graph.metadata["onnx_outputs"].values()
    assert np.abs(got.astype(np.float64) - expected).max() <= 8 * np.float32(graph.tensors[code].scale)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.99


@pytest.mark.parametrize("weight_type, per_channel", [(QuantType.QInt4, False), (QuantType.QInt4, True),
                                                      (QuantType.QUInt4, False)])
def test_4_bit_weight_models_match_onnxruntime(tmp_path, digits, weight_type, per_channel):
    model = _quantize_qdq_int16(tmp_path, digits[0], "resnet_digits", QuantType.QUInt8, weight_type, per_channel)
    _, test_x, _ = digits
    graph = load_onnx_qdq(model, PROFILE)
    assert graph.metadata["qdq"]["/classifier/Gemm"] == "float"  # a 4-bit B fuses into no QGemm
    counts = _compare(model, test_x, exact=ISLANDS_EXACT)
    assert counts["code_mismatches"] <= 0.0005 * counts["codes"]
    assert counts["output_mismatches"] <= 0.005 * counts["outputs"]


def _qdq_single_op_model(op, x_shape, y_shape, codes, extra_inits=(), extra_nodes=(), inputs=("xd",), opset=21,
                         x_scale=0.01, x_zp=3, y_scale=0.004, y_zp=-7, **attrs):
    """input -> Q -> DQ -> op -> Q -> DQ -> output with one code type, written node by node (opset 21)."""
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x_zp, codes), "xz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y_zp, codes), "yz"), *extra_inits]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]), *extra_nodes,
             helper.make_node(op, list(inputs), ["o"], name="island", **attrs),
             helper.make_node("QuantizeLinear", ["o", "ys", "yz"], ["oq"]),
             helper.make_node("DequantizeLinear", ["oq", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "qdq_island", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("codes", [np.int16, np.uint16])
@pytest.mark.parametrize("height, width", [(7, 7), (4, 4), (3, 1), (5, 6)])
@pytest.mark.parametrize("channels", [8, 16])
def test_global_average_pool_island_is_exact(codes, height, width, channels):
    # MlasPoolGlobalKernel sums four float32 lanes, then the tail: H W = 49, 16, 3, 30 cover tails 1, 0, 3, 2.
    zp = 3 if codes == np.int16 else 30000
    model = _qdq_single_op_model("GlobalAveragePool", ["n", channels, height, width], ["n", channels, 1, 1], codes,
                                 x_scale=0.0003, x_zp=zp, y_scale=0.00007, y_zp=zp - 10)
    graph = load_onnx_qdq(model, PROFILE)
    assert graph.metadata["qdq"] == {"island": "float"}
    rng = np.random.default_rng(21)
    data = rng.uniform(-9, 9, (64, channels, height, width)).astype(np.float32)
    data[:8] = rng.uniform(-0.02, 0.02, (8, channels, height, width))  # small sums: codes near rounding boundaries
    counts = _compare(model, data)
    assert counts["code_mismatches"] == 0 and counts["codes"] == data.size + 64 * channels


def _qdq_gemm_model(op, trans_b, per_channel, rng, depth=48, columns=12):
    w = rng.integers(-128, 128, (columns, depth) if trans_b else (depth, columns)).astype(np.int8)
    w_scale = rng.uniform(0.001, 0.01, columns if per_channel else ()).astype(np.float32)
    axis = 0 if trans_b else 1
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w_scale, "ws"),
             numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "wz")]
    dq_w = helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=axis)
    extra_nodes, inputs, attrs = [dq_w], ["xd", "wd"], {}
    if op == "Gemm":
        bias = rng.integers(-5000, 5000, columns).astype(np.int32)
        inits += [numpy_helper.from_array(bias, "b"), numpy_helper.from_array(np.float32(0.01) * w_scale, "bs"),
                  numpy_helper.from_array(np.zeros(w_scale.shape, np.int32), "bz")]
        extra_nodes.append(helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"], axis=0))
        inputs.append("bd")
        attrs = {"transB": trans_b}
    return _qdq_single_op_model(op, ["n", depth], ["n", columns], np.int16, inits, extra_nodes, inputs,
                                x_scale=0.01, y_scale=0.002, y_zp=5, **attrs)


@pytest.mark.parametrize("per_channel, rows, depth, columns", [
    (True, 500, 48, 12),  # MlasSgemmKernel: one chain of fused multiply-adds per output
    (False, 1, 48, 15),  # M = 1, B transposed: eight lanes, outputs reduced 4, 4, 4, then 2, then 1 at a time
    (False, 5, 200, 256),  # K cut into blocks of 128, the bias added after the first
])
def test_gemm_island_matches_onnxruntime(per_channel, rows, depth, columns):
    rng = np.random.default_rng(22)
    model = _qdq_gemm_model("Gemm", 1, per_channel, rng, depth, columns)
    graph = load_onnx_qdq(model, PROFILE)
    assert graph.metadata["qdq"] == {"island": "float"} and "gemm_float32" in {n.op for n in graph.nodes}
    data = rng.uniform(-1.2, 1.2, (rows, depth)).astype(np.float32)
    counts = _compare(model, data, exact=ISLANDS_EXACT)
    # Off x86-64, float32 sums in another order: measured 0 to 2 in 6000 codes before MLAS's was modelled.
    assert counts["code_mismatches"] <= 0.002 * counts["codes"]
    naive = _compare(model, data[:3], backend="naive", exact=ISLANDS_EXACT)
    assert naive == _compare(model, data[:3], exact=ISLANDS_EXACT)


def _qdq_conv_island_model(cin, cout, kernel, groups, strides, pads, size, rng, y_scale):
    """A 16-bit Conv island: int16 x (scale 1e-4: codes that use the 16 bits), int8 weights, int32 bias."""
    w = rng.integers(-128, 128, (cout, cin // groups, kernel, kernel)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.004, np.float32), "ws"),
             numpy_helper.from_array(np.array(0, np.int8), "wz"),
             numpy_helper.from_array(rng.integers(-5000, 5000, cout).astype(np.int32), "b"),
             numpy_helper.from_array(np.array(1e-4 * 0.004, np.float32), "bs"),
             numpy_helper.from_array(np.array(0, np.int32), "bz")]
    nodes = [helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"]),
             helper.make_node("DequantizeLinear", ["b", "bs", "bz"], ["bd"])]
    out = (size + 2 * pads - kernel) // strides + 1
    return _qdq_single_op_model("Conv", ["n", cin, size, size], ["n", cout, out, out], np.int16, inits, nodes,
                                ["xd", "wd", "bd"], x_scale=1e-4, y_scale=y_scale, group=groups,
                                strides=[strides, strides], pads=[pads] * 4, kernel_shape=[kernel, kernel])


@pytest.mark.parametrize("cin, cout, kernel, groups, strides, pads, size", [
    (16, 8, 3, 1, 1, 1, 12),  # im2col, K = 144 in blocks of 128 (measured in the exact order: 18 codes differ)
    (8, 8, 3, 8, 2, 1, 7),  # depthwise: M = 1, the AVX kernel, k in groups of 4, 4, 1
])
def test_conv_island_matches_onnxruntime(cin, cout, kernel, groups, strides, pads, size):
    # Every MLAS path against onnxruntime's float Conv: tests/test_mlas_order.py.
    rng = np.random.default_rng(cin * 100 + cout)
    model = _qdq_conv_island_model(cin, cout, kernel, groups, strides, pads, size, rng, 1e-4)
    graph = load_onnx_qdq(model, PROFILE)
    assert graph.metadata["qdq"] == {"island": "float"} and "conv2d_float32" in {n.op for n in graph.nodes}
    data = rng.uniform(-3, 3, (6, cin, size, size)).astype(np.float32)
    counts = _compare(model, data, exact=ISLANDS_EXACT)
    assert counts["code_mismatches"] <= 0.002 * counts["codes"]
    assert _compare(model, data[:2], backend="naive", exact=ISLANDS_EXACT) == _compare(model, data[:2],
                                                                                        exact=ISLANDS_EXACT)


def test_a_float_gemm_with_alpha_names_the_node():
    model = _qdq_gemm_model("Gemm", 1, False, np.random.default_rng(25))
    next(n for n in model.graph.node if n.op_type == "Gemm").attribute.append(helper.make_attribute("alpha", 0.5))
    with pytest.raises(UnsupportedOpError, match="Gemm 'island'.*alpha 0.5"):
        load_onnx_qdq(model, PROFILE)


@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
def test_a_gemm_onnxruntime_runs_as_matmul_nbits_names_the_node(op):
    # onnxruntime 1.32 turns DQ(B) -> MatMul, and -> Gemm with transB 0, into MatMulNBits (not modelled).
    model = _qdq_gemm_model(op, 0, False, np.random.default_rng(23))
    with pytest.raises(UnsupportedOpError, match="island" if op == "MatMul" else "Gemm 'island'.*MatMulNBits"):
        load_onnx_qdq(model, PROFILE)


# --------------------------------------------------------------------------
# Formats and errors.
# --------------------------------------------------------------------------


def test_format_detection_and_float_models_point_to_convert(tmp_path):
    assert onnx_format(model_path("resnet_digits.onnx")) == "float"
    with pytest.raises(ModelFormatError, match="intsim.convert"):
        intsim.load(model_path("resnet_digits.onnx"))
    assert onnx_format(_qdq_conv_model(0, 0)) == "qdq"
    with pytest.raises(ModelFormatError, match="expected a QDQ model"):
        load_onnx_qdq(model_path("resnet_digits.onnx"))


def test_qoperator_models_still_load_through_intsim_load(tmp_path, digits):
    out = tmp_path / "qop.onnx"
    quantize_static(str(model_path("resnet_digits.onnx")), str(out), _Reader("x", digits[0]),
                    quant_format=QuantFormat.QOperator, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    assert onnx_format(out) == "qoperator"
    _, test_x, _ = digits
    expected = _session(onnx.load(str(out))).run(None, {"x": test_x})[0]
    np.testing.assert_array_equal(intsim.load(out).run(test_x), expected, strict=True)


def test_blocked_quantization_is_unsupported():
    model = _qdq_conv_model(0, 0)
    dq = next(n for n in model.graph.node if n.input[0] == "w")
    dq.attribute.extend([helper.make_attribute("block_size", 2), helper.make_attribute("axis", 1)])
    with pytest.raises(UnsupportedOpError, match="DequantizeLinear .*block_size=2"):
        load_onnx_qdq(model)


def test_an_unfused_op_with_no_island_lowering_names_the_node():
    model = _qdq_conv_model(0, 0)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.op_type, conv.name = "Sub", "the_sub"
    del conv.input[2]
    del conv.attribute[:]
    with pytest.raises(UnsupportedOpError, match="the_sub"):
        load_onnx_qdq(model)


# --------------------------------------------------------------------------
# Float-island kernels: fast against naive twin.
# --------------------------------------------------------------------------


def test_float_island_kernels_equal_their_naive_twins():
    from intsim import kernels
    from intsim.kernels import naive

    rng = np.random.default_rng(11)
    for _ in range(6):
        groups = int(rng.choice([1, 2]))
        cin_g, cout = int(rng.integers(1, 4)), 2 * int(rng.integers(1, 3))
        x = rng.integers(-128, 128, (2, int(rng.integers(3, 7)), int(rng.integers(3, 7)), cin_g * groups)).astype(np.int8)
        weight = rng.normal(0, 0.3, (cout, 3, 2, cin_g)).astype(np.float32)
        bias = rng.normal(0, 0.1, cout).astype(np.float32)
        args = (x, int(rng.integers(-5, 5)), np.float32(rng.uniform(0.01, 0.1)), weight, bias,
                (1, int(rng.integers(1, 3))), (int(rng.integers(1, 3)), 1), (1, 0, 1, 1), groups,
                np.float32(rng.uniform(0.005, 0.05)), int(rng.integers(-10, 10)), -128, 127, np.int8)
        for order in ("exact", "mlas"):
            fast, naive_out = kernels.conv2d_float32_nhwc(*args, order), naive.conv2d_float32_nhwc(*args, order)
            np.testing.assert_array_equal(fast[0], naive_out[0], strict=True)
            assert fast[1] == naive_out[1]
        a, b = (rng.integers(0, 256, (3, 5)).astype(np.uint8) for _ in range(2))
        add_args = (a, 3, np.float32(0.05), b, 250, np.float32(0.02), np.float32(0.04), 7, 0, 255, np.uint8)
        fast, naive_out = kernels.add_float32(*add_args), naive.add_float32(*add_args)
        np.testing.assert_array_equal(fast[0], naive_out[0], strict=True)
        assert fast[1] == naive_out[1]


def test_gemm_and_global_pool_islands_equal_their_naive_twins():
    from intsim import kernels
    from intsim.kernels import naive

    rng = np.random.default_rng(12)
    for codes, lo, hi in ((np.int16, -32768, 32767), (np.uint8, 0, 255)):
        for _ in range(4):
            a = rng.integers(lo, hi + 1, (int(rng.integers(1, 6)), int(rng.integers(1, 40)))).astype(codes)
            weight = rng.normal(0, 0.05, (a.shape[1], int(rng.integers(1, 9)))).astype(np.float32)
            bias = rng.normal(0, 0.5, weight.shape[1]).astype(np.float32)
            args = (a, int(rng.integers(lo, hi + 1)), np.float32(rng.uniform(1e-4, 1e-2)), weight, bias,
                    np.float32(rng.uniform(1e-4, 1e-2)), int(rng.integers(lo, hi + 1)), lo, hi, codes)
            for order, trans_b in (("exact", True), ("mlas", True), ("mlas", False)):
                fast = kernels.gemm_float32(*args, order, trans_b)
                slow = naive.gemm_float32(*args, order, trans_b)
                np.testing.assert_array_equal(fast[0], slow[0], strict=True)
                assert fast[1] == slow[1]
            x = rng.integers(lo, hi + 1, (2, int(rng.integers(1, 8)), int(rng.integers(1, 8)), 3)).astype(codes)
            args = (x, int(rng.integers(lo, hi + 1)), np.float32(rng.uniform(1e-4, 1e-2)),
                    np.float32(rng.uniform(1e-5, 1e-3)), int(rng.integers(lo, hi + 1)), lo, hi, codes)
            fast, slow = kernels.global_avg_pool_float32_nhwc(*args), naive.global_avg_pool_float32_nhwc(*args)
            np.testing.assert_array_equal(fast[0], slow[0], strict=True)
            assert fast[1] == slow[1]


@pytest.mark.parametrize("backend", ["fast", "naive"])
def test_global_average_pool_golden_follows_mlas_lanes(backend):
    from intsim import kernels
    from intsim.kernels import naive

    pool = (kernels if backend == "fast" else naive).global_avg_pool_float32_nhwc
    # Lanes: 2^24, 1, -2^24, 1; (2^24 - 2^24) + (1 + 1) = 2; mean 0.5; / 0.25 -> 2.  Summed in row order the
    # float32 sum would be ((2^24 + 1) - 2^24) + 1 = 1 (2^24 + 1 rounds to 2^24), giving 1.
    x = np.array([1 << 24, 1, -(1 << 24), 1], np.int32).reshape(1, 2, 2, 1)
    out, saturated = pool(x, 0, np.float32(1.0), np.float32(0.25), 0, -32768, 32767, np.int16)
    assert out.tolist() == [[[[2]]]] and saturated == 0
    # A tail after the lanes: 5 values, the fifth added last: (2 + 2) + (2 + 2) + 3 = 11, / 5 = 2.2 -> /0.5 = 4.4 -> 4.
    out, _ = pool(np.array([2, 2, 2, 2, 3], np.int16).reshape(1, 1, 5, 1), 0, np.float32(1.0), np.float32(0.5), 0,
                  -32768, 32767, np.int16)
    assert out.tolist() == [[[[4]]]]


def test_add_float32_golden():
    from intsim import kernels

    # DQ: 0.5 * (3 - 1) = 1.0 and 0.25 * (6 - 0) = 1.5; sum 2.5; / 1.0 -> tie -> 2 (even); + 10.
    out, saturated = kernels.add_float32(np.array([3], np.uint8), 1, np.float32(0.5), np.array([6], np.uint8), 0,
                                         np.float32(0.25), np.float32(1.0), 10, 0, 255, np.uint8)
    assert out.tolist() == [12] and saturated == 0
    out, saturated = kernels.add_float32(np.array([255], np.uint8), 0, np.float32(1.0), np.array([255], np.uint8), 0,
                                         np.float32(1.0), np.float32(1.0), 0, 0, 255, np.uint8)
    assert out.tolist() == [255] and saturated == 1


# --------------------------------------------------------------------------
# The command line.
# --------------------------------------------------------------------------


def test_inspect_marks_fused_and_float_island_nodes(quantized, tmp_path, capsys):
    from intsim.cli import main

    path = tmp_path / "resnet_s8s8.onnx"
    onnx.save(quantized("resnet_digits", "s8s8"), str(path))
    assert main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    conv = [line for line in lines if line.startswith("conv2d ")]
    assert conv and all(line.endswith("[fused:QLinearConv]") for line in conv)
    if X86:
        assert any(line.startswith("conv2d_float32") and line.endswith("[float island]") for line in lines)
    assert any(line.startswith("flatten") and line.endswith("[dropped]") for line in lines)
    assert main(["inspect", str(path), "--profile", "tflite"]) == 0
    assert "profile 'tflite'" in capsys.readouterr().out
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    assert main(["run", str(path), "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")]) == 0
    assert np.load(tmp_path / "y.npy").shape == (2, 10)


def test_golden_diff_sweep_and_export_tosa_retarget_a_qdq_model(quantized, digits, tmp_path, capsys):
    from intsim.cli import main

    path = tmp_path / "resnet_s8s8.onnx"
    onnx.save(quantized("resnet_digits", "s8s8"), str(path))
    x = tmp_path / "x.npy"
    np.save(x, digits[1][:3])
    dump = tmp_path / "golden_tflite"
    assert main(["golden", str(path), "--input", str(x), "--out", str(dump), "--format", "npy",
                 "--profile", "tflite"]) == 0
    manifest = (dump / "manifest.json").read_text()
    assert "accumulator" in manifest  # the tflite graph's integer convolutions (onnxruntime's are float islands)
    assert main(["diff", str(path), "--input", str(x), "--device-dump", str(dump), "--profile", "tflite"]) == 0
    # Under the default onnxruntime profile the same file is another graph: the dump's names do not fit.
    assert main(["diff", str(path), "--input", str(x), "--device-dump", str(dump)]) == 1  # a dump that does not fit the model is bad data: a runtime error
    assert "expected names of model" in capsys.readouterr().err
    assert main(["sweep", str(path), "--data", str(x), "--acc-bits", "16,32", "--profile", "tflite"]) == 0
    assert main(["sweep", str(path), "--data", str(x), "--calibration", str(x)]) == 2
    assert "--calibration apply to a float .onnx model" in capsys.readouterr().err
    assert main(["export-tosa", str(path), str(tmp_path / "m.tosa"), "--profile", "tosa"]) == 0
    assert (tmp_path / "m.tosa").stat().st_size > 1000
    with pytest.raises(SystemExit):
        main(["export-tosa", str(path), str(tmp_path / "m.tosa"), "--profile"])
