"""MLAS's float32 summation orders (``intsim.kernels.mlas_sgemm``) against onnxruntime's float kernels.

Float ``Conv`` / ``Gemm`` / ``MatMul`` nodes whose weights are graph inputs (as
in a QDQ float island, where the weight comes from a DequantizeLinear at run
time) run on random float32 data; every float32 output must equal the one
:func:`mlas_dot` computes in the order :func:`conv_sgemm_path` /
:func:`sgemm_path` pick, bit for bit.  The shapes cover every path; the
order-free ``EXACT`` model is checked to differ, so the comparison can fail.
Measured on x86-64 with AVX-512 and under ``qemu-x86_64 -cpu Haswell`` (AVX2,
FMA3): identical outputs (``tools/mlas_order_probe.py``).
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from intsim.kernels import mlas_sgemm  # noqa: E402
from intsim.kernels.mlas_sgemm import EXACT, conv_nchw_in_order, mlas_dot, sgemm_path  # noqa: E402
from intsim.kernels.naive import mlas_sgemm as naive_mlas  # noqa: E402

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="MLAS's float kernels are measured on x86-64")


def _run(node, feeds, inits=()):
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(v.shape)) for name, v in feeds.items()]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]


CONVS = [  # cin, cout, kernel, group, stride, pad, size
    (16, 8, 3, 1, 1, 1, 12),  # im2col, K = 144 in blocks of 128
    (32, 16, 3, 1, 2, 1, 8),  # strided, K = 288 in one block (N = 16 < K)
    (24, 16, 1, 1, 1, 0, 5),  # pointwise
    (8, 8, 3, 8, 1, 1, 6),  # depthwise: M = 1, k in groups 4, 4, 1
    (12, 12, 3, 12, 2, 1, 5),  # strided depthwise
    (6, 6, 2, 3, 1, 0, 3),  # M = 2 per group, K = 8
    (6, 10, 2, 2, 1, 0, 2),  # one output position: N = 1, the transposed product's 4-then-1 rows
    (1, 1, 4, 1, 1, 0, 4),  # one channel, kernel as wide as the input: B transposed, M = 1
    (3, 7, 3, 1, 1, 1, 1),  # more filters than outputs (ExpandThenGemm), N = 1
]


@pytest.mark.parametrize("cin, cout, kernel, group, stride, pad, size", CONVS)
def test_conv_outputs_equal_onnxruntimes_bit_for_bit(cin, cout, kernel, group, stride, pad, size):
    rng = np.random.default_rng(cin * 31 + cout)
    x = rng.standard_normal((3, cin, size, size)).astype(np.float32)
    w = rng.standard_normal((cout, cin // group, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, strides=[stride] * 2, pads=[pad] * 4)
    theirs = _run(node, {"x": x, "w": w}, [numpy_helper.from_array(b, "b")])
    np.testing.assert_array_equal(conv_nchw_in_order(x, w, b, group, stride, pad, "mlas"), theirs, strict=True)


@pytest.mark.parametrize("op, rows, depth, columns", [
    ("Gemm", 40, 64, 10), ("Gemm", 1, 37, 15), ("Gemm", 1, 64, 6), ("Gemm", 5, 300, 256), ("Gemm", 3, 300, 10),
    ("MatMul", 7, 45, 9), ("MatMul", 1, 45, 20), ("MatMul", 1, 3, 5), ("MatMul", 6, 33, 1), ("MatMul", 260, 200, 256),
])
def test_gemm_and_matmul_outputs_equal_onnxruntimes_bit_for_bit(op, rows, depth, columns):
    rng = np.random.default_rng(rows * 7 + depth)
    a = rng.standard_normal((rows, depth)).astype(np.float32)
    trans_b = op == "Gemm"
    b = rng.standard_normal((columns, depth) if trans_b else (depth, columns)).astype(np.float32)
    c = rng.standard_normal(columns).astype(np.float32) if trans_b else np.zeros(columns, np.float32)
    if trans_b:
        theirs = _run(helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1), {"a": a, "b": b},
                      [numpy_helper.from_array(c, "c")])
    else:
        theirs = _run(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a, "b": b})
    b_columns = b if trans_b else np.ascontiguousarray(b.T)
    path, stride_k = sgemm_path("mlas", rows, columns, depth, trans_b, depth if trans_b else columns)
    ours = np.array([[mlas_dot(a[m], b_columns[n], path, stride_k, m, rows, n, columns, c[n])
                      for n in range(columns)] for m in range(rows)], np.float32)
    np.testing.assert_array_equal(ours, theirs, strict=True)


def test_the_exact_order_differs_so_the_comparisons_can_fail():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1] * 4)
    theirs = _run(node, {"x": x, "w": w}, [numpy_helper.from_array(b, "b")])
    assert (conv_nchw_in_order(x, w, b, 1, 1, 1, "exact") != theirs).sum() > 100  # measured: about 1500 of 2304


@pytest.mark.parametrize("path", range(5))
def test_mlas_dot_equals_its_naive_twin(path):
    rng = np.random.default_rng(path)
    for depth in (1, 2, 3, 5, 8, 9, 17, 130, 300):
        a, b = (rng.standard_normal(depth).astype(np.float32) for _ in range(2))
        c = np.float32(rng.standard_normal())
        for m, rows in ((0, 1), (3, 7), (4, 7), (6, 7), (2, 4)):
            args = (a, b, path, 128 if path == mlas_sgemm.FMA_BLOCKS else depth, m, rows, m, rows, c)
            fast, naive = mlas_dot(*args), naive_mlas.mlas_dot(*args)
            assert np.float32(fast).tobytes() == np.float32(naive).tobytes(), (path, depth, m, rows)
    assert path != EXACT or mlas_dot(a, b, EXACT, 300, 0, 1, 0, 1, c) == np.float32(
        np.float32(np.dot(a.astype(np.float64), b.astype(np.float64))) + c)


def test_naive_fma_rounds_once_at_a_float32_midpoint():
    from intsim.kernels.naive.onnxruntime_ops import fma_float32 as exact_fma
    from intsim.kernels.onnxruntime_ops import fma_float32 as llvm_fma

    # (1 + 2^-23) 2^-12 x (1 - 2^-23) 2^-12 = 2^-24 - 2^-70; plus 1 + 2^-23 the float64 sum is the float32
    # midpoint 1 + 3 2^-24, which ties to even upwards; the exact sum lies below it.
    x, y, z = np.float32((1 + 2**-23) * 2**-12), np.float32((1 - 2**-23) * 2**-12), np.float32(1 + 2**-23)
    assert naive_mlas.fma_float32(x, y, z) == exact_fma(x, y, z) == llvm_fma(x, y, z) == z
    assert np.float32(float(x) * float(y) + float(z)) != z  # rounding twice is wrong here
    rng = np.random.default_rng(4)
    for _ in range(2000):
        x, y, z = (np.float32(v) for v in rng.standard_normal(3) * np.exp2(rng.integers(-30, 30, 3)))
        assert naive_mlas.fma_float32(x, y, z) == exact_fma(x, y, z)
