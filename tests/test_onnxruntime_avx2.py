"""The ``onnxruntime_avx2`` profile against onnxruntime running on an emulated AVX2 CPU without VNNI.

MLAS picks its integer kernels from CPUID.  This machine has AVX-512 VNNI, so
onnxruntime accumulates u8 x s8 products exactly here; on an AVX2 CPU without
VNNI its u8s8 kernels multiply with ``vpmaddubsw``, which adds each pair of
products into a saturating int16.  QEMU's user-mode emulator with
``-cpu Haswell`` reports AVX2 and FMA3 but neither AVX-512 nor VNNI, so the very
same onnxruntime wheel, run under it, takes those AVX2 paths
(``core/mlas/lib/platform.cpp``).  One emulated process per fixture
(``tools/ort_run.py``) runs all its models; the tests compare its code tensors
with intsim's, and demand that the cases built to saturate pairs really do (the
exact profile disagrees with the emulated onnxruntime there), which proves that
the emulated onnxruntime took the AVX2 kernels.  Skips only where
``qemu-x86_64`` is absent (Debian package ``qemu-user``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from intsim import Model  # noqa: E402
from intsim.datasets import load_dataset  # noqa: E402
from intsim.graph import Node  # noqa: E402
from intsim.importers.onnx_qop import load_onnx_qoperator  # noqa: E402
from tests.test_onnxruntime_conformance import (  # noqa: E402
    MODELS_DIR,
    _assert_conforms,
    _float_net,
    _float_net_mul_pool,
    _probe_model,
    _quantize,
)

ROOT = Path(__file__).resolve().parents[1]
QEMU = shutil.which("qemu-x86_64")
ONNX_TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}
X_SCALE = 2.0**-4  # a power of two: QuantizeLinear gives back the very codes fed


def _model(node, x_dtype, x_zp, x_shape, y_dtype, y_scale, y_zp, inits):
    """QuantizeLinear -> ``node`` (reads ``xq``, writes ``yq``) -> DequantizeLinear."""
    inits = inits + [
        helper.make_tensor("xs", TensorProto.FLOAT, [], [X_SCALE]),
        helper.make_tensor("xz", ONNX_TYPES[x_dtype], [], [x_zp]),
        helper.make_tensor("ys", TensorProto.FLOAT, [], [y_scale]),
        helper.make_tensor("yz", ONNX_TYPES[y_dtype], [], [y_zp]),
    ]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), node,
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "avx2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              outputs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _weights(rng, shape, fill=None):
    """int8 weights, mostly large, so that many pairs of u8 x s8 products leave int16; or all ``fill``."""
    if fill is not None:
        return np.full(shape, fill, np.int8)
    w = rng.integers(-128, 128, shape)
    big = rng.random(shape) < 0.7
    w[big] = np.sign(w[big] + 0.5) * rng.integers(100, 128, int(big.sum()))
    return w.astype(np.int8)


def _conv(rng, x_dtype, cin, cout, kernel, group=1, pads=(1, 1, 1, 1), strides=(1, 1), size=5, weight_fill=None):
    w = _weights(rng, (cout, cin // group, kernel, kernel), weight_fill)
    k = cin // group * kernel * kernel
    w_scale = rng.uniform(0.5, 1.0, cout).astype(np.float32)
    inits = [helper.make_tensor("w", TensorProto.INT8, w.shape, w.ravel().tolist()),
             helper.make_tensor("ws", TensorProto.FLOAT, [cout], w_scale.tolist()),
             helper.make_tensor("wz", TensorProto.INT8, [cout], [0] * cout),
             helper.make_tensor("b", TensorProto.INT32, [cout], rng.integers(-5000, 5000, cout).tolist())]
    node = helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["yq"],
                            group=group, pads=list(pads), strides=list(strides))
    x_zp = int(rng.integers(0, 40)) if x_dtype == "uint8" else int(rng.integers(-20, 20))
    y_scale = X_SCALE * k * 255 * 128 / 400
    model = _model(node, x_dtype, x_zp, ["n", cin, size, size], x_dtype, y_scale, 128 if x_dtype == "uint8" else 0,
                   inits)
    return model, x_dtype, (3, cin, size, size), x_zp


def _gemm(rng, x_dtype, m_rows, depth, cols, op="QGemm", weight_fill=None):
    w = _weights(rng, (cols, depth), weight_fill)
    w_scale = rng.uniform(0.5, 1.0, cols).astype(np.float32)
    y_scale = X_SCALE * depth * 255 * 128 / 400
    x_zp = int(rng.integers(0, 40)) if x_dtype == "uint8" else int(rng.integers(-20, 20))
    y_zp = 128 if x_dtype == "uint8" else 0
    inits = [helper.make_tensor("ws", TensorProto.FLOAT, [cols], w_scale.tolist()),
             helper.make_tensor("wz", TensorProto.INT8, [cols], [0] * cols)]
    if op == "QGemm":
        inits += [helper.make_tensor("w", TensorProto.INT8, w.shape, w.ravel().tolist()),
                  helper.make_tensor("b", TensorProto.INT32, [cols], rng.integers(-5000, 5000, cols).tolist())]
        node = helper.make_node("QGemm", ["xq", "xs", "xz", "w", "ws", "wz", "b", "ys", "yz"], ["yq"],
                                domain="com.microsoft", transB=1)
    else:
        inits += [helper.make_tensor("w", TensorProto.INT8, w.T.shape, w.T.ravel().tolist())]
        node = helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"])
    return _model(node, x_dtype, x_zp, [m_rows, depth], x_dtype, y_scale, y_zp, inits), x_dtype, (m_rows, depth), x_zp


def _matmul_dynamic(rng, m_rows=6, depth=9):
    """QLinearMatMul of two activations: uint8 ``xq`` [M, K] times the int8 codes of the same input, transposed."""
    x_zp = int(rng.integers(0, 40))
    inits = [helper.make_tensor("bz", TensorProto.INT8, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "bz"], ["bq"]),
             helper.make_node("Transpose", ["bq"], ["bt"], perm=[1, 0]),
             helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "bt", "xs", "bz", "ys", "yz"], ["yq"])]
    model = _model(nodes[-1], "uint8", x_zp, [m_rows, depth], "uint8", X_SCALE * depth * 255 * 128 / 400, 128, inits)
    graph = model.graph
    graph.node.insert(1, nodes[0])
    graph.node.insert(2, nodes[1])
    return model, "uint8", (m_rows, depth), x_zp


def _corner(x_dtype, op, cout=2, depth=4):
    """Every product at the largest magnitude its types allow, scale 1: the accumulator shows in the codes.

    u8s8: 255 * 127 = 32385 per product, a pair 64770 saturates to 32767.
    s8s8: (-128) * (-128) = 16384, a pair 32768 would saturate to 32767, one less.
    The bias centres the exact accumulator on 10, so an output code equals
    ``y_zp + acc``: ``y_zp + 10`` exactly, less where pairs saturated.
    """
    x_fill, w_fill = (255, 127) if x_dtype == "uint8" else (-128, -128)
    exact = depth * x_fill * w_fill
    inits = [helper.make_tensor("ws", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("wz", TensorProto.INT8, [], [0]),
             helper.make_tensor("b", TensorProto.INT32, [cout], [10 - exact] * cout)]
    if op == "QLinearConv":
        inits.append(helper.make_tensor("w", TensorProto.INT8, [cout, depth, 1, 1], [w_fill] * cout * depth))
        node = helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["yq"])
        shape = (2, depth, 2, 2)
    else:
        inits.append(helper.make_tensor("w", TensorProto.INT8, [cout, depth], [w_fill] * cout * depth))
        node = helper.make_node("QGemm", ["xq", "xs", "xz", "w", "ws", "wz", "b", "ys", "yz"], ["yq"],
                                domain="com.microsoft", transB=1)
        shape = (3, depth)
    y_zp = 100 if x_dtype == "uint8" else 0
    return _model(node, x_dtype, 0, ["n", *shape[1:]], x_dtype, X_SCALE, y_zp, inits), x_dtype, shape, 0


CASES = {
    # name: builder(rng) -> (model, code dtype, input shape, input zero point)
    "conv_cin3_gemm_path": lambda rng: _conv(rng, "uint8", 3, 4, 3),
    "conv_cin5_k2_gemm_path": lambda rng: _conv(rng, "uint8", 5, 6, 2, pads=(0, 1, 1, 0)),
    "conv_cin8_cout16_convsym": lambda rng: _conv(rng, "uint8", 8, 16, 3),
    "conv_cin4_cout16_convsym_1x1": lambda rng: _conv(rng, "uint8", 4, 16, 1, pads=(0, 0, 0, 0)),
    "conv_grouped_2": lambda rng: _conv(rng, "uint8", 6, 4, 3, group=2),
    "conv_depthwise_16": lambda rng: _conv(rng, "uint8", 16, 16, 3, group=16),
    "conv_depthwise_8": lambda rng: _conv(rng, "uint8", 8, 8, 3, group=8),
    "conv_cin1_cout1": lambda rng: _conv(rng, "uint8", 1, 1, 3),
    "conv_multiplier_2": lambda rng: _conv(rng, "uint8", 4, 8, 3, group=4),
    "conv_s8s8": lambda rng: _conv(rng, "int8", 5, 4, 3),
    "conv_s8s8_convsym": lambda rng: _conv(rng, "int8", 8, 16, 3),
    "qgemm_m1_k7": lambda rng: _gemm(rng, "uint8", 1, 7, 5),
    "qgemm_m6_k9": lambda rng: _gemm(rng, "uint8", 6, 9, 5),
    "matmul_m1_k7": lambda rng: _gemm(rng, "uint8", 1, 7, 5, op="QLinearMatMul"),
    "matmul_m6_k33": lambda rng: _gemm(rng, "uint8", 6, 33, 20, op="QLinearMatMul"),
    "qgemm_s8s8": lambda rng: _gemm(rng, "int8", 6, 9, 5),
    "matmul_two_activations": _matmul_dynamic,
    "corner_u8s8_conv": lambda rng: _corner("uint8", "QLinearConv"),
    "corner_u8s8_conv_convsym": lambda rng: _corner("uint8", "QLinearConv", cout=16),
    "corner_u8s8_qgemm": lambda rng: _corner("uint8", "QGemm"),
    "corner_s8s8_conv": lambda rng: _corner("int8", "QLinearConv"),
    "corner_s8s8_conv_16": lambda rng: _corner("int8", "QLinearConv", cout=16),
    "corner_s8s8_qgemm": lambda rng: _corner("int8", "QGemm"),
}


# Exact in onnxruntime on AVX2 (no vpmaddubsw): depthwise kernels, and every s8s8 kernel.
EXACT = {"conv_depthwise_16", "conv_depthwise_8", "conv_cin1_cout1", "conv_s8s8", "conv_s8s8_convsym", "qgemm_s8s8",
         "corner_s8s8_conv", "corner_s8s8_conv_16", "corner_s8s8_qgemm"}


def _code_batches(rng, x_dtype, shape):
    """Random codes, all-max codes and all-min codes of ``shape``."""
    info = np.iinfo(x_dtype)
    return [rng.integers(int(info.min), int(info.max) + 1, shape).astype(x_dtype),
            np.full(shape, info.max, x_dtype), np.full(shape, info.min, x_dtype)]


def _run_emulated(folder: Path) -> None:
    """Run ``tools/ort_run.py`` on ``folder`` in onnxruntime under ``qemu-x86_64 -cpu Haswell``."""
    if QEMU is None:
        pytest.skip("qemu-x86_64 is not installed (Debian: apt-get install qemu-user)")
    result = subprocess.run([QEMU, "-cpu", "Haswell", sys.executable, str(ROOT / "tools" / "ort_run.py"), str(folder)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    """``{case: (model, [input code tuples], [onnxruntime's yq per tuple])}`` from one emulated onnxruntime process.

    The code tuples are onnxruntime's values of the intsim graph's inputs.
    """
    folder = tmp_path_factory.mktemp("avx2")
    rng = np.random.default_rng(5)
    cases = {}
    for name, build in CASES.items():
        model, x_dtype, shape, x_zp = build(rng)
        batches = _code_batches(rng, x_dtype, shape)
        code_inputs = load_onnx_qoperator(model).inputs
        onnx.save(_probe_model(model, [*code_inputs, "yq"]), str(folder / f"{name}.onnx"))
        feeds = {f"{i}:x": ((codes.astype(np.int64) - x_zp) * X_SCALE).astype(np.float32)
                 for i, codes in enumerate(batches)}
        np.savez(folder / f"{name}.in.npz", **feeds)
        cases[name] = (model, batches, code_inputs)
    _run_emulated(folder)
    emulated = {}
    for name, (model, batches, code_inputs) in cases.items():
        with np.load(folder / f"{name}.out.npz") as out:
            for i, codes in enumerate(batches):
                np.testing.assert_array_equal(out[f"{i}:xq"], codes, strict=True)  # the float feed quantizes back
            inputs = [tuple(out[f"{i}:{n}"] for n in code_inputs) for i in range(len(batches))]
            emulated[name] = (model, inputs, [out[f"{i}:yq"] for i in range(len(batches))])
    return emulated


def _pair_saturations(graph, codes):
    trace = Model(graph).trace(*codes)
    return sum(stats.get("pair_saturation_count", 0) for stats in trace.stats.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_avx2_profile_matches_emulated_onnxruntime(emulated, name):
    model, batches, expected = emulated[name]
    avx2, exact = load_onnx_qoperator(model, "onnxruntime_avx2"), load_onnx_qoperator(model, "onnxruntime")
    differs = 0
    for codes, yq in zip(batches, expected):
        for backend in ("fast", "naive"):
            np.testing.assert_array_equal(Model(avx2, backend).run_int(*codes), yq, strict=True,
                                          err_msg=f"{name} ({backend})")
        differs += int(np.count_nonzero(Model(exact).run_int(*codes) != yq))
    saturated = sum(_pair_saturations(avx2, codes) for codes in batches)
    if name in EXACT:
        assert differs == 0 and saturated == 0
    else:
        # The inputs saturate pairs and the emulated onnxruntime agrees: it really ran the AVX2 u8s8 kernels.
        assert differs > 0 and saturated > 0


@pytest.mark.parametrize("name", ["conv_depthwise_16", "conv_depthwise_8", "conv_cin1_cout1"])
def test_depthwise_inputs_would_saturate_pairs(emulated, name):
    # Forcing pairs onto the depthwise node changes its results: the exact match above is not for lack of
    # saturating pairs in the data.
    model, batches, expected = emulated[name]
    graph = load_onnx_qoperator(model, "onnxruntime_avx2")
    (conv,) = [n for n in graph.nodes if n.op == "conv2d"]
    assert conv.attrs["pairwise_int16"] is False
    graph.nodes[graph.nodes.index(conv)] = Node(conv.op, conv.name, conv.inputs, conv.outputs,
                                                {**conv.attrs, "pairwise_int16": True}, conv.params)
    assert any(np.any(Model(graph).run_int(*codes) != yq) for codes, yq in zip(batches, expected))


@pytest.mark.parametrize("name, batch, code", [
    # u8s8, all 255 in: four products of 32385, two pairs of 64770 saturate to 32767 each, so the
    # accumulator is 10 - 2 * (64770 - 32767) and the output clamps to 0 (exact: 100 + 10).
    ("corner_u8s8_conv", 1, 0), ("corner_u8s8_conv_convsym", 1, 0), ("corner_u8s8_qgemm", 1, 0),
    # s8s8, all -128 in: pairs of 32768 would saturate to 32767; onnxruntime gives the exact 0 + 10.
    ("corner_s8s8_conv", 2, 10), ("corner_s8s8_conv_16", 2, 10), ("corner_s8s8_qgemm", 2, 10),
])
def test_emulated_onnxruntime_corner_goldens(emulated, name, batch, code):
    _, _, expected = emulated[name]
    assert np.all(expected[batch].astype(np.int64) == code)


# --------------------------------------------------------------------------
# Models quantized u8s8 by quantize_static (the shipped digits models, the conformance suite's
# hand-built nets): every code tensor.
# --------------------------------------------------------------------------

DIGITS = ("resnet_digits", "mobilenet_digits")
EMULATED_MODELS = [(model, scheme) for model in (*DIGITS, "qop_net", "mul_pool_net")
                   for scheme in ("u8s8", "u8s8_per_channel")]


def _float_models(folder: Path) -> dict:
    """``{name: (float model path, calibration batch, [input batches])}``."""
    train_x, _ = load_dataset("digits", "train")
    test_x, _ = load_dataset("digits", "test")
    rng = np.random.default_rng(4)
    digits_inputs = [test_x[:48], rng.uniform(-1, 2, (16, 1, 8, 8)).astype(np.float32)]
    models = {name: (MODELS_DIR / f"{name}.onnx", train_x[:64], digits_inputs) for name in DIGITS}
    for name, write, size in (("qop_net", _float_net, 10), ("mul_pool_net", _float_net_mul_pool, 8)):
        write(folder / f"{name}.float")
        calibration = rng.uniform(-1, 1, (32, 3, size, size)).astype(np.float32)
        models[name] = (folder / f"{name}.float", calibration, [rng.uniform(-1.5, 1.5, (32, 3, size, size))
                                                                .astype(np.float32)])
    return models


@pytest.fixture(scope="module")
def emulated_models(tmp_path_factory):
    """``{(model, scheme): (quantized model, inputs, [onnxruntime's tensors per input batch])}``, emulated."""
    folder = tmp_path_factory.mktemp("avx2_models")
    float_models = _float_models(folder)
    quantized = {}
    for model_name, scheme in EMULATED_MODELS:
        path, calibration, batches = float_models[model_name]
        name = f"{model_name}_{scheme}"
        model = _quantize(path, folder / f"{name}.quantized", scheme, calibration)
        graph = load_onnx_qoperator(model, "onnxruntime_avx2")
        (float_input,) = graph.metadata["onnx_inputs"]
        onnx.save(_probe_model(model, list(graph.metadata["onnx_tensors"])), str(folder / f"{name}.onnx"))
        np.savez(folder / f"{name}.in.npz", **{f"{i}:{float_input}": x for i, x in enumerate(batches)})
        quantized[model_name, scheme] = (model, batches)
    _run_emulated(folder)
    emulated = {}
    for (model_name, scheme), (model, batches) in quantized.items():
        with np.load(folder / f"{model_name}_{scheme}.out.npz") as out:
            runs = [{key.split(":", 1)[1]: out[key] for key in out.files if key.startswith(f"{i}:")}
                    for i in range(len(batches))]
        emulated[model_name, scheme] = (model, batches, runs)
    return emulated


@pytest.mark.parametrize("model_name, scheme", EMULATED_MODELS)
def test_quantized_models_match_emulated_onnxruntime(emulated_models, model_name, scheme):
    model, batches, runs = emulated_models[model_name, scheme]
    compared = sum(_assert_conforms(model, x, profile="onnxruntime_avx2", reference=reference)
                   for x, reference in zip(batches, runs))
    _assert_conforms(model, batches[0][:2], backend="naive", profile="onnxruntime_avx2",
                     reference={name: value[:2] for name, value in runs[0].items()})
    assert compared > 20_000


@pytest.mark.parametrize("model_name, scheme", [(m, s) for m, s in EMULATED_MODELS if m in DIGITS])
def test_digits_images_saturate_pairs(emulated_models, model_name, scheme):
    # Real images saturate pairs: the exact profile disagrees with the emulated onnxruntime.
    model, batches, runs = emulated_models[model_name, scheme]
    exact = load_onnx_qoperator(model, "onnxruntime")
    (float_output,) = exact.metadata["onnx_outputs"]
    assert not np.array_equal(Model(exact).run(batches[0]), runs[0][float_output])
