"""Probe onnxruntime's float32 summation order for float Conv / Gemm / MatMul (the QDQ float islands).

Runs float nodes whose weights are graph inputs (as in a QDQ island, where the
weight is a DequantizeLinear output at run time, so no NCHWc rewrite and no
prepacking) in onnxruntime with default session options on random float32
data, and counts the float32 outputs that differ from each summation order of
:mod:`intsim.kernels.mlas_sgemm` (``mlas``: MLAS's, ``exact``: float64 sum
rounded once).  The shapes are those of the shipped models' islands plus one
per MLAS path.  Usage::

    python tools/mlas_order_probe.py            # this CPU
    qemu-x86_64 -cpu Haswell .venv/bin/python tools/mlas_order_probe.py --dump out.npz   # onnxruntime only
    python tools/mlas_order_probe.py --against out.npz                                   # compare here

Measured with onnxruntime 1.32 (x86-64, AVX-512 VNNI, and under
``qemu-x86_64 -cpu Haswell``: AVX2 + FMA3): ``mlas`` 0 differing outputs on
every shape; ``exact`` differs on about 40-85 % of the conv outputs (in their
last float32 bits).  Candidates that did not match: one fma chain for a
depthwise conv (37-48 % differ: MLAS's ``M = 1`` kernel multiplies and adds
separately, in groups of four), multiply-then-add for the other convs
(38-76 %), one ``K`` block where MLAS cuts ``K`` at 128 (8-9 % of a
64-channel 3 x 3 conv on 28 x 28), and, for a MatMul whose ``N`` MLAS splits
across threads, any single ``K`` block (see docs/qdq.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from intsim.kernels.mlas_sgemm import conv_nchw_in_order, mlas_dot, sgemm_path  # noqa: E402

CONVS = [  # cin, cout, kernel, group, stride, pad, size: the shipped models' islands, then every path
    (1, 16, 3, 1, 1, 1, 8), (16, 16, 3, 1, 1, 1, 8), (16, 32, 3, 1, 2, 1, 8), (32, 32, 3, 1, 1, 1, 4),
    (16, 32, 1, 1, 2, 0, 8), (32, 64, 3, 1, 2, 1, 4), (64, 64, 3, 1, 1, 1, 2), (16, 64, 1, 1, 1, 0, 8),
    (64, 64, 3, 64, 1, 1, 8), (96, 96, 3, 96, 2, 1, 4), (64, 24, 1, 1, 1, 0, 8), (128, 128, 3, 128, 1, 1, 28),
    (64, 64, 3, 1, 1, 1, 28), (6, 10, 2, 2, 1, 0, 2), (1, 1, 4, 1, 1, 0, 4),
]
GEMMS = [("Gemm", 100, 64, 10), ("Gemm", 1, 128, 10), ("Gemm", 5, 300, 256), ("MatMul", 1, 45, 20),
         ("MatMul", 6, 33, 1), ("MatMul", 260, 200, 256)]


def _run(node, feeds, inits=()):
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(v.shape)) for name, v in feeds.items()]
    graph = helper.make_graph([node], "probe", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              list(inits))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, feeds)[0]


def _cases():
    rng = np.random.default_rng(0)
    for cin, cout, kernel, group, stride, pad, size in CONVS:
        x = rng.standard_normal((2, cin, size, size)).astype(np.float32)
        w = rng.standard_normal((cout, cin // group, kernel, kernel)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        yield f"Conv {cin}->{cout} k{kernel} g{group} s{stride} p{pad} {size}x{size}", ("Conv", x, w, b, group, stride,
                                                                                       pad)
    for op, rows, depth, columns in GEMMS:
        a = rng.standard_normal((rows, depth)).astype(np.float32)
        b = rng.standard_normal((columns, depth) if op == "Gemm" else (depth, columns)).astype(np.float32)
        c = rng.standard_normal(columns).astype(np.float32) if op == "Gemm" else np.zeros(columns, np.float32)
        yield f"{op} {rows}x{depth}x{columns}", (op, a, b, c)


def _onnxruntime(case):
    if case[0] == "Conv":
        _, x, w, b, group, stride, pad = case
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=group, strides=[stride] * 2, pads=[pad] * 4)
        return _run(node, {"x": x, "w": w}, [numpy_helper.from_array(b, "b")])
    op, a, b, c = case
    if op == "Gemm":
        return _run(helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1), {"a": a, "b": b},
                    [numpy_helper.from_array(c, "c")])
    return _run(helper.make_node("MatMul", ["a", "b"], ["y"]), {"a": a, "b": b})


def _ours(case, order):
    if case[0] == "Conv":
        _, x, w, b, group, stride, pad = case
        return conv_nchw_in_order(x, w, b, group, stride, pad, order)
    op, a, b, c = case
    rows, depth = a.shape
    trans_b = op == "Gemm"
    columns_b = b if trans_b else np.ascontiguousarray(b.T)
    path, stride_k = sgemm_path(order, rows, columns_b.shape[0], depth, trans_b, depth if trans_b else b.shape[1])
    return np.array([[mlas_dot(a[m], columns_b[n], path, stride_k, m, rows, n, len(columns_b), c[n])
                      for n in range(len(columns_b))] for m in range(rows)], np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dump", help="only run onnxruntime and save its outputs to this .npz")
    parser.add_argument("--against", help="compare with onnxruntime outputs saved by --dump")
    args = parser.parse_args(argv)
    cases = list(_cases())
    if args.dump:
        np.savez(args.dump, *[_onnxruntime(case) for _, case in cases])
        return 0
    saved = np.load(args.against) if args.against else None
    for i, (name, case) in enumerate(cases):
        theirs = saved[f"arr_{i}"] if saved is not None else _onnxruntime(case)
        counts = {order: int((_ours(case, order) != theirs).sum()) for order in ("mlas", "exact")}
        print(f"{name:40s} outputs {theirs.size:7d}  differing: mlas {counts['mlas']:6d}  exact {counts['exact']:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
