"""intsim's integer layers beside onnxruntime's QLinearConv / QLinearMatMul, in one process.

Each case is one layer run as a one-node model by both: intsim with the
``onnxruntime`` profile on NHWC codes, onnxruntime on NCHW codes (each in its
native layout; the layout change is not timed).  Prints the median time of
each, the ratio (onnxruntime time / intsim time: above 1 means intsim is
faster) and how many output codes differ (bit-exactness against onnxruntime is
the conformance suite's business; this column is information).

    python benchmarks/bench_conv.py [--repeats 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _median_seconds(fn, repeats):
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _conv_case(rng, n, h, w, cin, cout, k, stride, groups):
    import onnx
    from onnx import TensorProto, helper

    from intsim import Graph, Model, Node, TensorInfo, get_profile
    from intsim.fixedpoint import Rescale

    profile = get_profile("onnxruntime")
    pad = k // 2
    x_scale, y_scale, x_zp, y_zp = 0.02, 0.05, 128, 120
    w_scale = rng.uniform(0.002, 0.01, size=cout).astype(np.float32)
    weight = rng.integers(-128, 128, size=(cout, k, k, cin // groups)).astype(np.int8)
    bias = rng.integers(-5000, 5000, size=cout).astype(np.int32)
    oh = (h + 2 * pad - k) // stride + 1
    ow = (w + 2 * pad - k) // stride + 1

    real = (np.float32(x_scale) * w_scale / np.float32(y_scale)).astype(np.float64)
    params = {"weight": weight, "weight_zero_point": np.zeros(cout, np.int64), "bias": bias,
              **Rescale.from_real(real, profile.rounding).params()}
    graph = Graph("conv", profile.replace(per_channel=True),
                  [TensorInfo("x", "uint8", (None, h, w, cin), x_scale, x_zp),
                   TensorInfo("y", "uint8", (None, oh, ow, cout), y_scale, y_zp)],
                  [Node("conv2d", "conv", ["x"], ["y"],
                        {"strides": [stride, stride], "pads": [pad] * 4, "groups": groups}, params)],
                  ["x"], ["y"])
    model = Model(graph)

    inits = [
        helper.make_tensor("xs", TensorProto.FLOAT, [], [x_scale]),
        helper.make_tensor("xz", TensorProto.UINT8, [], [x_zp]),
        helper.make_tensor("w", TensorProto.INT8, [cout, cin // groups, k, k],
                           weight.transpose(0, 3, 1, 2).reshape(-1).tolist()),
        helper.make_tensor("ws", TensorProto.FLOAT, [cout], w_scale.tolist()),
        helper.make_tensor("wz", TensorProto.INT8, [cout], [0] * cout),
        helper.make_tensor("ys", TensorProto.FLOAT, [], [y_scale]),
        helper.make_tensor("yz", TensorProto.UINT8, [], [y_zp]),
        helper.make_tensor("b", TensorProto.INT32, [cout], bias.tolist()),
    ]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
                            pads=[pad] * 4, strides=[stride, stride], group=groups, kernel_shape=[k, k])
    onnx_graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, [n, cin, h, w])],
                                   [helper.make_tensor_value_info("y", TensorProto.UINT8, [n, cout, oh, ow])], inits)
    onnx_model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(onnx_model)
    x = rng.integers(0, 256, size=(n, h, w, cin)).astype(np.uint8)
    return model, onnx_model.SerializeToString(), x, x.transpose(0, 3, 1, 2).copy()


CASES = [
    # name, n, h, w, cin, cout, k, stride, groups
    ("conv3x3 56x56 64->64", 1, 56, 56, 64, 64, 3, 1, 1),
    ("conv1x1 28x28 128->256", 1, 28, 28, 128, 256, 1, 1, 1),
    ("depthwise3x3 56x56x128", 1, 56, 56, 128, 128, 3, 1, 128),
    ("depthwise3x3 s2 112x112x32", 1, 112, 112, 32, 32, 3, 2, 32),
    ("conv3x3 s2 224x224 3->32", 1, 224, 224, 3, 32, 3, 2, 1),
    ("conv3x3 14x14 256->256 batch 8", 8, 14, 14, 256, 256, 3, 1, 1),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    print(f"{'case':34s} {'intsim ms':>10s} {'ort ms':>10s} {'ort/intsim':>11s} {'differing codes':>16s}")
    for name, *shape in CASES:
        model, onnx_bytes, x_nhwc, x_nchw = _conv_case(rng, *shape)
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        ours = model.run_int(x_nhwc)
        theirs = session.run(None, {"x": x_nchw})[0].transpose(0, 2, 3, 1)
        t_ours = _median_seconds(lambda: model.run_int(x_nhwc), args.repeats)
        t_theirs = _median_seconds(lambda: session.run(None, {"x": x_nchw}), args.repeats)
        differing = int(np.sum(ours != theirs))
        print(f"{name:34s} {t_ours * 1e3:10.3f} {t_theirs * 1e3:10.3f} {t_theirs / t_ours:11.2f} "
              f"{differing:9d}/{ours.size}")


if __name__ == "__main__":
    main()
