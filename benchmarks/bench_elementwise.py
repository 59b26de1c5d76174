"""Elementwise and edge steps of a quantized network beside onnxruntime, in one process, single thread.

The steps EfficientNet-Lite0's QOperator model runs besides its convolutions:

* QLinearAdd (uint8, EfficientNet's residual shapes): onnxruntime's com.microsoft
  node beside the same node imported into intsim (``add_float32_fma``) run
  through ``Model.run_int``;
* the input's NCHW -> NHWC transpose (uint8 1x3x224x224): onnxruntime Transpose
  beside :func:`intsim.kernels.transpose` and ``numpy.transpose`` + copy;
* QuantizeLinear of the float input (1x3x224x224 -> uint8, float32 division,
  ties to even) beside :func:`intsim.runtime.quantize`;
* DequantizeLinear of the logits (1x1000 uint8 -> float32) beside
  :func:`intsim.runtime.dequantize`;
* with ``--kernels``: intsim's ADD and MUL kernels alone (a model's bound call,
  ``add_launcher(...).calls`` / :func:`intsim.kernels.mul`) under each rounding
  mode on int8 codes of the residual shapes of the shipped ResNet and of
  EfficientNet at batches 1 and 8 (integer modes with TFLite's parameters,
  ``intsim.converter.params.add_params``), beside onnxruntime's QLinearAdd /
  QLinearMul of the same codes and scales.  The modes round differently from
  onnxruntime, so these rows are checked against intsim's naive twin (on the
  first 4096 elements) instead.

Each intsim result is first checked equal to onnxruntime's (or, for the kernel
rows, to the naive twin's).  Runners are interleaved (one call of each per
round); times are medians; ratios are intsim / onnxruntime (below 1: intsim is
faster).

    python benchmarks/bench_elementwise.py [--rounds 500] [--kernels] [--clock wall|thread]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

ADD_SHAPES = [(1, 24, 56, 56), (1, 40, 28, 28), (1, 80, 14, 14), (1, 192, 7, 7)]
KERNEL_SHAPES = [(1, 16, 28, 28), (8, 16, 28, 28), (8, 64, 7, 7), (1, 24, 56, 56)]
KERNEL_SCALES, KERNEL_ZPS = (0.031, 0.027, 0.043), (-7, 11, -3)
IMAGE = (1, 3, 224, 224)
X_SCALE, X_ZP = 0.0187, 114


def _model(nodes, inputs, outputs, inits):
    from onnx import helper

    graph = helper.make_graph(nodes, "step", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _add_runners(shape, rng, session):
    """intsim (``Model.run_int`` of the imported QLinearAdd) and onnxruntime on one residual add."""
    from onnx import TensorProto, helper

    from intsim import Model
    from intsim.importers.onnx_qop import load_onnx_qoperator

    scales, zps = (0.031, 0.027, 0.043), (121, 117, 125)
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [s]) for n, s in zip(("as", "bs", "ys"), scales)]
    inits += [helper.make_tensor(n, TensorProto.UINT8, [], [z]) for n, z in zip(("az", "bz", "yz"), zps)]
    add = helper.make_node("QLinearAdd", ["aq", "as", "az", "bq", "bs", "bz", "ys", "yz"], ["yq"],
                           domain="com.microsoft")
    codes = [helper.make_tensor_value_info(n, TensorProto.UINT8, shape) for n in ("aq", "bq", "yq")]
    floats = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("a", "b", "y")]
    reference = session(_model([add], codes[:2], codes[2:], inits).SerializeToString())
    wrapped = _model([helper.make_node("QuantizeLinear", ["a", "as", "az"], ["aq"]),
                      helper.make_node("QuantizeLinear", ["b", "bs", "bz"], ["bq"]), add,
                      helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])], floats[:2], floats[2:], inits)
    model = Model(load_onnx_qoperator(wrapped))
    a, b = (rng.integers(0, 256, shape).astype(np.uint8) for _ in range(2))
    return {"intsim": lambda: model.run_int(a, b), "ort": lambda: reference.run(None, {"aq": a, "bq": b})[0]}


def _kernel_runners(op, shape, rng, session):
    """``{row: runners}``: intsim's ``op`` kernel ("add" or "mul") on int8 codes of ``shape`` under each
    rounding mode, each beside onnxruntime's QLinearAdd / QLinearMul of the same codes and scales, and the
    check of each mode against the naive twin."""
    from onnx import TensorProto, helper

    from intsim.converter.params import add_params
    from intsim.fixedpoint import ROUNDING_MODES, quantize_multiplier
    from intsim.kernels import elementwise
    from intsim.kernels.naive import elementwise as naive
    from intsim.profiles import get_profile

    (sa, sb, so), (za, zb, zo) = KERNEL_SCALES, KERNEL_ZPS
    inits = [helper.make_tensor(n, TensorProto.FLOAT, [], [s]) for n, s in zip(("as", "bs", "ys"), KERNEL_SCALES)]
    inits += [helper.make_tensor(n, TensorProto.INT8, [], [z]) for n, z in zip(("az", "bz", "yz"), KERNEL_ZPS)]
    node = helper.make_node("QLinearAdd" if op == "add" else "QLinearMul",
                            ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"], domain="com.microsoft")
    codes = [helper.make_tensor_value_info(n, TensorProto.INT8, shape) for n in ("a", "b", "y")]
    reference = session(_model([node], codes[:2], codes[2:], inits).SerializeToString())
    a, b = (rng.integers(-128, 128, shape).astype(np.int8) for _ in range(2))
    rows = {}
    for rounding in ROUNDING_MODES[:3]:
        code = ROUNDING_MODES.index(rounding)
        if op == "add":
            params, left_shift = add_params(sa, sb, so, get_profile("tflite").replace(rounding=rounding))
            args = [za, *(params.get(f"a_{k}", [0])[0] for k in ("multiplier", "shift")), sa / so,
                    zb, *(params.get(f"b_{k}", [0])[0] for k in ("multiplier", "shift")), sb / so,
                    left_shift, *(params.get(f"out_{k}", [0])[0] for k in ("multiplier", "shift")), 0.0, code, 31,
                    zo, -128, 127, np.int8]
            out = np.empty(shape, np.int8)
            (function, arguments), = elementwise.add_launcher(*args).calls(a, b, out)
            run = functools.partial(function, *arguments)
            expected = naive.add(a.reshape(-1)[:4096], *args[:4], b.reshape(-1)[:4096], *args[4:])[0]
            run()
            got = out.reshape(-1)[:4096]
        else:
            multiplier, shift = quantize_multiplier(sa * sb / so)
            args = [int(multiplier), int(shift), sa * sb / so, code, 31, zo, -128, 127, np.int8]
            run = functools.partial(elementwise.mul, a, za, b, zb, *args)
            expected = naive.mul(a.reshape(-1)[:4096], za, b.reshape(-1)[:4096], zb, *args)[0]
            got = run()[0].reshape(-1)[:4096]
        np.testing.assert_array_equal(got, expected, strict=True, err_msg=f"{op} {rounding}")
        rows[f"{op} kernel int8 {'x'.join(map(str, shape))} {rounding}"] = {
            "intsim": run, "ort": lambda: reference.run(None, {"a": a, "b": b})[0]}
    return rows


def _edge_runners(rng, session):
    """``{step: runners}`` for the transpose, quantize and dequantize steps."""
    from onnx import TensorProto, helper

    from intsim import TensorInfo
    from intsim.kernels import transpose
    from intsim.runtime import dequantize, quantize

    codes = rng.integers(0, 256, IMAGE).astype(np.uint8)
    perm = [0, 2, 3, 1]
    transposer = session(_model([helper.make_node("Transpose", ["x"], ["y"], perm=perm)],
                                [helper.make_tensor_value_info("x", TensorProto.UINT8, IMAGE)],
                                [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], []).SerializeToString())

    image = rng.uniform(-2.0, 2.0, IMAGE).astype(np.float32)
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [X_SCALE]),
             helper.make_tensor("z", TensorProto.UINT8, [], [X_ZP])]
    quantizer = session(_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])],
                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, IMAGE)],
                               [helper.make_tensor_value_info("y", TensorProto.UINT8, IMAGE)], inits)
                        .SerializeToString())
    image_info = TensorInfo("x", "uint8", IMAGE, float(np.float32(X_SCALE)), X_ZP)

    logits = rng.integers(0, 256, (1, 1000)).astype(np.uint8)
    dequantizer = session(_model([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])],
                                 [helper.make_tensor_value_info("x", TensorProto.UINT8, (1, 1000))],
                                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 1000))], inits)
                          .SerializeToString())
    logits_info = TensorInfo("x", "uint8", (1, 1000), float(np.float32(X_SCALE)), X_ZP)
    return {
        "transpose NCHW->NHWC uint8 1x3x224x224": {
            "intsim": lambda: transpose(codes, perm),
            "numpy": lambda: np.ascontiguousarray(np.transpose(codes, perm)),
            "ort": lambda: transposer.run(None, {"x": codes})[0]},
        "quantize float32 1x3x224x224": {
            "intsim": lambda: quantize(image, image_info, mode="float32_rint"),
            "ort": lambda: quantizer.run(None, {"x": image})[0]},
        "dequantize uint8 1x1000": {
            "intsim": lambda: dequantize(logits, logits_info),
            "ort": lambda: dequantizer.run(None, {"x": logits})[0]},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--kernels", action="store_true", help="only the ADD / MUL kernels under each rounding mode")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="thread: the calling thread's CPU time (time.thread_time), steadier on a loaded machine")
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    import bench_kernels
    import llvmlite.binding as llvm

    rng = np.random.default_rng(0)

    def session(model_bytes):
        return bench_kernels._session(model_bytes, 1)

    if args.kernels:
        cases = {}
        for op in ("add", "mul"):
            for shape in KERNEL_SHAPES:
                cases.update(_kernel_runners(op, shape, rng, session))
    else:
        cases = {f"QLinearAdd uint8 {'x'.join(map(str, shape))}": _add_runners(shape, rng, session)
                 for shape in ADD_SHAPES}
        cases.update(_edge_runners(rng, session))
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    print(f"CPU {llvm.get_host_cpu_name()}, one thread, {args.clock} clock, median of {args.rounds} interleaved "
          f"rounds; load average {os.getloadavg()[0]:.1f}")
    for name, runners in cases.items():
        if not args.kernels:
            expected = runners["ort"]()
            for label, run in runners.items():
                np.testing.assert_array_equal(run(), expected, strict=True, err_msg=f"{name}: {label}")
        times = bench_kernels._median_times(runners, args.rounds, clock=clock)
        print(f"{name:42s} " + "  ".join(f"{k} {v * 1e3:7.4f} ms" for k, v in times.items())
              + "  " + "  ".join(f"{k}/ort {v / times['ort']:.2f}" for k, v in times.items() if k != "ort"),
              flush=True)


if __name__ == "__main__":
    main()
