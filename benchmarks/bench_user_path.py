"""The user's path, timed beside onnxruntime: float ONNX -> ``intsim.convert`` -> ``Model.run`` on NCHW float input.

Each case is a float ONNX model (single layers built here: 3x3, 1x1, depthwise
and fully-connected; and the shipped models), converted by intsim under a
profile (default ``paper``) and quantized by onnxruntime's ``quantize_static``
(QOperator, uint8 activations, int8 weights, per-tensor) on the same
calibration images; both then run float in, float out.  The two runners are
interleaved (one call of each per round) in one process on one thread, and
each time is the median over the rounds, after ``COMPILE_AFTER + 1`` warm-up
calls of each (the steady state: intsim's bound run compiled, see
:mod:`intsim.runtime.bound`); the ratio is intsim time / onnxruntime time
(below 1: intsim is faster).

    python benchmarks/bench_user_path.py [--profile paper] [--rounds 50] [--batches 1 8]
        [--cases TEXT] [--markdown out.md] [--json out.json]

``--cases TEXT`` keeps the cases whose name contains TEXT.  The CPU and ISA are
printed with the table.  The whole-model table of ``bench_models.py`` adds
EfficientNet-Lite0, threads and conversion time; this one is the quick check
of the per-layer and per-model ratios while the runtime changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

# name: (kind, (h, w, cin, cout, k, stride, groups)) for convs, (depth, out) for fully-connected layers
LAYERS = {
    "conv3x3 64->64 @56": ("conv", (56, 56, 64, 64, 3, 1, 1)),
    "conv1x1 64->256 @56": ("conv", (56, 56, 64, 256, 1, 1, 1)),
    "depthwise3x3 x144 @56": ("conv", (56, 56, 144, 144, 3, 1, 144)),
    "FC 512->1000": ("fc", (512, 1000)),
}
MODELS = ("resnet_digits", "mobilenet_digits", "resnet_fashion", "mobilenet_fashion")


def _layer_model(kind, shape, rng) -> tuple[bytes, list]:
    """A float ONNX model of one layer (followed by a ReLU) and its input shape without the batch."""
    import onnx
    from onnx import TensorProto, helper

    if kind == "conv":
        h, w, cin, cout, k, stride, groups = shape
        weight = rng.normal(0, 0.1, size=(cout, cin // groups, k, k)).astype(np.float32)
        layer = helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[k // 2] * 4, strides=[stride] * 2,
                                 group=groups, kernel_shape=[k, k])
        x_shape = [cin, h, w]
        y_shape = ["n", cout, (h + 2 * (k // 2) - k) // stride + 1, (w + 2 * (k // 2) - k) // stride + 1]
    else:
        depth, cout = shape
        weight = rng.normal(0, 0.05, size=(cout, depth)).astype(np.float32)
        layer = helper.make_node("Gemm", ["x", "w", "b"], ["z"], transB=1)
        x_shape = [depth]
        y_shape = ["n", cout]
    inits = [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.reshape(-1).tolist()),
             helper.make_tensor("b", TensorProto.FLOAT, [cout], rng.normal(0, 0.1, cout).astype(np.float32).tolist())]
    graph = helper.make_graph([layer, helper.make_node("Relu", ["z"], ["y"])], "layer",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"] + x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString(), x_shape


def _shipped_model(name) -> tuple[bytes, list]:
    import onnx

    import intsim.models

    model = onnx.load(str(intsim.models.model_path(f"{name}.onnx")))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return model.SerializeToString(), [d.dim_value for d in dims[1:]]


def _ort_quantized(model_bytes, calibration) -> bytes:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load_from_string(model_bytes).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice on pre-processing
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        source.write_bytes(model_bytes)
        quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
        return out.read_bytes()


def _session(model_bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _median_ms(runners: dict, rounds: int, clock) -> dict:
    from intsim.runtime.bound import COMPILE_AFTER

    for run in runners.values():  # to the steady state: intsim's bound run compiled
        for _ in range(COMPILE_AFTER + 1):
            run()
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = clock()
            run()
            times[name].append(clock() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cases", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="thread: the calling thread's CPU time (time.thread_time; both sides run on it with one "
                             "thread), steadier than wall time on a loaded machine")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    import llvmlite.binding as llvm

    import onnx

    import intsim
    from intsim.kernels import isa

    rng = np.random.default_rng(0)
    cases = {name: _layer_model(kind, shape, rng) for name, (kind, shape) in LAYERS.items() if args.cases in name}
    cases.update({name: _shipped_model(name) for name in MODELS if args.cases in name})
    meta = {"cpu": llvm.get_host_cpu_name(), "isa": isa.current_isa().name, "profile": args.profile,
            "rounds": args.rounds, "clock": args.clock}
    rows = []
    for name, (model_bytes, x_shape) in cases.items():
        calibration = rng.uniform(0, 1, size=[16] + x_shape).astype(np.float32)
        model = intsim.convert(onnx.load_from_string(model_bytes), calibration, args.profile, progress=False)
        session = _session(_ort_quantized(model_bytes, calibration))
        input_name = session.get_inputs()[0].name
        for batch in args.batches:
            x = np.ascontiguousarray(calibration[:batch])
            ms = _median_ms({"intsim": lambda: model.run(x),
                             "ort": lambda: session.run(None, {input_name: x})}, args.rounds,
                            time.thread_time if args.clock == "thread" else time.perf_counter)
            rows.append({"case": name, "batch": batch, "intsim_ms": ms["intsim"], "ort_ms": ms["ort"],
                         "ratio": ms["intsim"] / ms["ort"]})
            print(f"{name:24s} batch {batch}: intsim {ms['intsim']:8.3f} ms  ORT {ms['ort']:8.3f} ms  "
                  f"ratio {ms['intsim'] / ms['ort']:.2f}", flush=True)
    lines = [f"Profile `{args.profile}`, CPU `{meta['cpu']}`, ISA `{meta['isa']}`, one thread, median of "
             f"{args.rounds} interleaved rounds ({args.clock} clock); float NCHW in, float out.", "",
             "| case | batch | intsim ms | ORT u8s8 ms | intsim/ORT |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['batch']} | {r['intsim_ms']:.3f} | {r['ort_ms']:.3f} | {r['ratio']:.2f} |"
              for r in rows]
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
