"""Per-layer and whole-model throughput of intsim beside onnxruntime, in one process, single thread.

Every layer runs as a one-node model: intsim (``onnxruntime`` profile: uint8
activations, int8 symmetric weights, NHWC) through ``Model.run_int``, and
onnxruntime (NCHW) as QLinearConv / QLinearMatMul with int8 weights (u8s8),
with uint8 weights (u8u8), and as float32 Conv / MatMul on the same shapes.
Then EfficientNet-Lite0's 1x1 convs at batch 1 with one weight scale for the
whole tensor (``EFFICIENTNET_1X1``).
The runners are interleaved (one call of each per round), and each time is
the median over the rounds; ratios are intsim time / peer time (below 1:
intsim is faster).  GOPS counts a multiply-accumulate as 2 operations.

Whole models: the shipped ONNX models and EfficientNet-Lite0
(``~/.cache/intsim/efficientnet_lite0.onnx``, when present), quantized by
onnxruntime's ``quantize_static`` (QOperator, u8s8, per-tensor) and the very
same quantized model loaded into intsim (``load_onnx_qoperator``), float in
and float out for both.

    python benchmarks/bench_kernels.py [--json out.json] [--markdown out.md] [--rounds 30]
        [--threads 1] [--isa NAME] [--skip-models] [--layers TEXT]
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

LAYERS = [
    # name, kind, shape, batched: conv (h, w, cin, cout, k, stride, groups); fc (rows, k, n), rows x batch
    # when batched (the GEMM is one 1024 x 1024 x 1024 product at every batch size)
    ("conv3x3 64->64 @56x56", "conv", (56, 56, 64, 64, 3, 1, 1), True),
    ("conv3x3 256->256 @14x14", "conv", (14, 14, 256, 256, 3, 1, 1), True),
    ("stem 3x3 s2 3->32 @224x224", "conv", (224, 224, 3, 32, 3, 2, 1), True),
    ("conv1x1 s2 64->128 @56x56", "conv", (56, 56, 64, 128, 1, 2, 1), True),
    ("conv1x1 64->256 @56x56", "conv", (56, 56, 64, 256, 1, 1, 1), True),
    ("depthwise3x3 x144 @56x56", "conv", (56, 56, 144, 144, 3, 1, 144), True),
    # EfficientNet-Lite0's depthwise layers (blocks 0, 1.0, 2.0, 4, 5.0 and 6.x)
    ("depthwise3x3 x32 @112x112", "conv", (112, 112, 32, 32, 3, 1, 32), True),
    ("depthwise3x3 s2 x96 @112x112", "conv", (112, 112, 96, 96, 3, 2, 96), True),
    ("depthwise5x5 s2 x144 @56x56", "conv", (56, 56, 144, 144, 5, 2, 144), True),
    ("depthwise5x5 x240 @28x28", "conv", (28, 28, 240, 240, 5, 1, 240), True),
    ("depthwise5x5 x672 @14x14", "conv", (14, 14, 672, 672, 5, 1, 672), True),
    ("depthwise5x5 x1152 @7x7", "conv", (7, 7, 1152, 1152, 5, 1, 1152), True),
    # narrow output channels (more of EfficientNet-Lite0's 1x1 projections, per-channel weights): the tall tiles
    ("conv1x1 96->24 @56x56", "conv", (56, 56, 96, 24, 1, 1, 1), True),
    ("conv1x1 144->40 @28x28", "conv", (28, 28, 144, 40, 1, 1, 1), True),
    ("conv1x1 240->40 @28x28", "conv", (28, 28, 240, 40, 1, 1, 1), True),
    ("conv1x1 240->80 @14x14", "conv", (14, 14, 240, 80, 1, 1, 1), True),
    ("FC 512->1000", "fc", (1, 512, 1000), True),
    ("GEMM 1024^3", "fc", (1024, 1024, 1024), False),
]
# EfficientNet-Lite0's 1x1 convs at batch 1 with one weight scale per tensor (what onnxruntime's
# quantize_static gives): small reductions or few output channels, where requantization weighs most.
EFFICIENTNET_1X1 = [
    ("effnet 1x1 16->96 @112x112", (112, 112, 16, 96, 1, 1, 1)),
    ("effnet 1x1 32->16 @112x112", (112, 112, 32, 16, 1, 1, 1)),
    ("effnet 1x1 24->144 @56x56", (56, 56, 24, 144, 1, 1, 1)),
    ("effnet 1x1 144->24 @56x56", (56, 56, 144, 24, 1, 1, 1)),
    ("effnet 1x1 40->240 @28x28", (28, 28, 40, 240, 1, 1, 1)),
    ("effnet 1x1 112->672 @14x14", (14, 14, 112, 672, 1, 1, 1)),
    ("effnet 1x1 1152->320 @7x7", (7, 7, 1152, 320, 1, 1, 1)),
]
X_SCALE, X_ZP, Y_SCALE, Y_ZP = 0.02, 128, 0.05, 120


def _median_times(runners: dict, rounds: int, warmup: int = 1, clock=time.perf_counter) -> dict:
    """Median seconds of ``clock`` of each runner over ``rounds`` interleaved rounds (after ``warmup`` calls
    each)."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = clock()
            run()
            times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _session(model_bytes, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if threads > 1:
        # onnxruntime's intra-op workers spin-wait after a run by default, and intsim's threads run in
        # the same process between its runs: each side then waits for cores the other's idle threads
        # hold. EfficientNet-Lite0 at batch 1 on two threads, interleaved: intsim 9.39 -> 5.55 ms and
        # onnxruntime 7.24 -> 4.10 ms with the spinning off (znver5, 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _onnx_model(node, inputs, outputs, inits):
    import onnx
    from onnx import helper

    graph = helper.make_graph([node], "layer", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _intsim_model(kind, x_shape, y_shape, weight, w_scale, bias, attrs):
    from intsim import Graph, Model, Node, TensorInfo, get_profile
    from intsim.fixedpoint import Rescale

    profile = get_profile("onnxruntime")
    real = (np.float32(X_SCALE) * w_scale / np.float32(Y_SCALE)).astype(np.float64)
    params = {"weight": weight, "weight_zero_point": np.zeros(weight.shape[0], np.int64), "bias": bias,
              **Rescale.from_real(real, profile.rounding).params()}
    graph = Graph(kind, profile.replace(per_channel=True),
                  [TensorInfo("x", "uint8", (None,) + x_shape[1:], X_SCALE, X_ZP),
                   TensorInfo("y", "uint8", (None,) + y_shape[1:], Y_SCALE, Y_ZP)],
                  [Node("conv2d" if kind == "conv" else "fully_connected", kind, ["x"], ["y"], attrs, params)],
                  ["x"], ["y"])
    return Model(graph)


def _layer_runners(kind, shape, batch, rng, threads, per_tensor=False):
    """``(runners, macs)``: intsim and the three onnxruntime variants of one layer (one weight scale
    per output channel, or one for the whole tensor)."""
    from onnx import TensorProto, helper

    if kind == "conv":
        h, w, cin, cout, k, stride, groups = shape
        pad = k // 2
        oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        w_shape_onnx = [cout, cin // groups, k, k]
        x_shape, y_shape = (batch, h, w, cin), (batch, oh, ow, cout)
        macs = batch * oh * ow * cout * k * k * (cin // groups)
        weight = rng.integers(-127, 128, size=(cout, k, k, cin // groups)).astype(np.int8)
        w_onnx = weight.transpose(0, 3, 1, 2)
        attrs = {"strides": [stride, stride], "pads": [pad] * 4, "groups": groups}
        onnx_attrs = dict(pads=[pad] * 4, strides=[stride, stride], group=groups, kernel_shape=[k, k])
        x_onnx_shape, y_onnx_shape = [batch, cin, h, w], [batch, cout, oh, ow]
    else:
        rows, depth, cout = shape
        rows *= batch
        x_shape, y_shape = (rows, depth), (rows, cout)
        macs = rows * depth * cout
        weight = rng.integers(-127, 128, size=(cout, depth)).astype(np.int8)
        w_onnx = weight.T
        attrs, onnx_attrs = {}, {}
        w_shape_onnx = [depth, cout]
        x_onnx_shape, y_onnx_shape = list(x_shape), list(y_shape)
    w_scale = rng.uniform(0.002, 0.01, size=1 if per_tensor else cout).astype(np.float32)
    w_scale = np.resize(w_scale, cout)
    bias = rng.integers(-5000, 5000, size=cout).astype(np.int32)
    model = _intsim_model(kind, x_shape, y_shape, weight, w_scale, bias, attrs)
    x = rng.integers(0, 256, size=x_shape).astype(np.uint8)
    x_onnx = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if kind == "conv" else x

    def quantized(weight_type, w_values, w_zero):
        scale_len = [cout] if kind == "conv" and not per_tensor else []
        scales = w_scale.tolist() if scale_len else [float(w_scale.mean())]
        inits = [
            helper.make_tensor("xs", TensorProto.FLOAT, [], [X_SCALE]),
            helper.make_tensor("xz", TensorProto.UINT8, [], [X_ZP]),
            helper.make_tensor("w", weight_type, w_shape_onnx, w_values.reshape(-1).tolist()),
            helper.make_tensor("ws", TensorProto.FLOAT, scale_len, scales),
            helper.make_tensor("wz", weight_type, scale_len, [w_zero] * len(scales)),
            helper.make_tensor("ys", TensorProto.FLOAT, [], [Y_SCALE]),
            helper.make_tensor("yz", TensorProto.UINT8, [], [Y_ZP]),
        ]
        names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
        if kind == "conv":
            inits.append(helper.make_tensor("b", TensorProto.INT32, [cout], bias.tolist()))
            node = helper.make_node("QLinearConv", names + ["b"], ["y"], **onnx_attrs)
        else:
            node = helper.make_node("QLinearMatMul", names, ["y"])
        return _onnx_model(node, [helper.make_tensor_value_info("x", TensorProto.UINT8, x_onnx_shape)],
                           [helper.make_tensor_value_info("y", TensorProto.UINT8, y_onnx_shape)], inits)

    w_float = (w_onnx.astype(np.float32) * (w_scale.reshape(-1, 1, 1, 1) if kind == "conv" else w_scale))
    float_inits = [helper.make_tensor("w", TensorProto.FLOAT, w_shape_onnx, w_float.reshape(-1).tolist())]
    if kind == "conv":
        float_node = helper.make_node("Conv", ["x", "w"], ["y"], **onnx_attrs)
    else:
        float_node = helper.make_node("MatMul", ["x", "w"], ["y"])
    float_bytes = _onnx_model(float_node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_onnx_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_onnx_shape)], float_inits)
    x_float = x_onnx.astype(np.float32)
    sessions = {
        "ort_u8s8": (_session(quantized(TensorProto.INT8, w_onnx, 0), threads), x_onnx),
        "ort_u8u8": (_session(quantized(TensorProto.UINT8, (w_onnx.astype(np.int16) + 128).astype(np.uint8), 128),
                              threads), x_onnx),
        "ort_f32": (_session(float_bytes, threads), x_float),
    }
    runners = {"intsim": lambda: model.run_int(x)}
    for name, (session, feed) in sessions.items():
        runners[name] = (lambda s, f: lambda: s.run(None, {"x": f}))(session, feed)
    return runners, macs


def _calibration(shape, rng, count=8):
    return rng.uniform(-1.0, 1.0, size=(count,) + tuple(shape[1:])).astype(np.float32)


def _model_runners(path, rng, threads, batch):
    """intsim and onnxruntime on one model quantized by onnxruntime (QOperator u8s8)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from intsim import Model
    from intsim.importers.onnx_qop import load_onnx_qoperator

    float_model = onnx.load(str(path))
    input_proto = float_model.graph.input[0]
    shape = [d.dim_value or 1 for d in input_proto.type.tensor_type.shape.dim]
    calibration = _calibration(shape, rng)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_proto.name: calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice on pre-processing
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
        quantized = onnx.load(str(out))
    model = Model(load_onnx_qoperator(quantized, "onnxruntime"))
    session = _session(quantized.SerializeToString(), threads)
    x = _calibration([batch] + shape[1:], rng, batch)[:batch]
    runners = {"intsim": lambda: model.run(x), "ort_u8s8": lambda: session.run(None, {input_proto.name: x})}
    return runners, _memory(model, x)


def _memory(model, x) -> dict:
    """Bytes a converted model holds (tracemalloc): the graph's parameters plus what a fresh
    :class:`~intsim.Model` keeps after its first run (packed weights, run plan), the peak while
    building and running it, and the issue's budget: 1.5 x (int8 weight bytes + the two largest
    activation tensors of a traced run)."""
    import gc
    import tracemalloc

    from intsim import Model

    graph = model.graph
    weight_bytes = sum(n.params["weight"].nbytes for n in graph.nodes if "weight" in n.params)
    params_bytes = sum(a.nbytes for n in graph.nodes for a in n.params.values())
    codes = model.quantize_inputs([x])
    model.run_int(*codes)  # every kernel compiled or loaded before the count starts
    largest = sorted((v.nbytes for v in model.trace(*codes).tensors.values()), reverse=True)[:2]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    fresh = Model(graph)
    fresh.run_int(*codes)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    budget = 1.5 * (weight_bytes + sum(largest))
    resident = params_bytes + held - base
    return {"weight_bytes": weight_bytes, "params_bytes": params_bytes, "model_bytes": held - base,
            "resident_bytes": resident, "peak_bytes": params_bytes + peak - base, "budget_bytes": budget,
            "resident/budget": resident / budget}


def _ratios(times):
    return {f"intsim/{peer}": times["intsim"] / t for peer, t in times.items() if peer != "intsim"}


def _markdown(layer_rows, model_rows, meta) -> str:
    lines = [f"Single thread ({meta['threads']}), ISA `{meta['isa']}`, CPU `{meta['cpu']}`, median of "
             f"{meta['rounds']} interleaved rounds; shared machine, expect noise.", "",
             "| layer | batch | intsim ms | intsim GOPS | ORT u8s8 GOPS | ORT u8u8 GOPS | ORT f32 GFLOPS "
             "| intsim/u8s8 | intsim/u8u8 | intsim/f32 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in layer_rows:
        g, r = row["gops"], row["ratios"]
        lines.append(f"| {row['layer']} | {row['batch']} | {row['ms']['intsim']:.3f} | {g['intsim']:.0f} | "
                     f"{g['ort_u8s8']:.0f} | {g['ort_u8u8']:.0f} | {g['ort_f32']:.0f} | "
                     f"{r['intsim/ort_u8s8']:.2f} | {r['intsim/ort_u8u8']:.2f} | {r['intsim/ort_f32']:.2f} |")
    if model_rows:
        lines += ["", "Memory (MiB): the graph's parameters plus what the converted model keeps after a run, against the "
                  "budget 1.5 x (int8 weights + two largest activations).", "",
                  "| model | batch | intsim ms | ORT u8s8 ms | intsim/ORT | weights | resident | peak | budget "
                  "| resident/budget |", "|---|---|---|---|---|---|---|---|---|---|"]
        mib = 2.0 ** 20
        for row in model_rows:
            m = row["memory"]
            lines.append(f"| {row['model']} | {row['batch']} | {row['ms']['intsim']:.3f} | "
                         f"{row['ms']['ort_u8s8']:.3f} | {row['ratios']['intsim/ort_u8s8']:.2f} | "
                         f"{m['weight_bytes'] / mib:.2f} | {m['resident_bytes'] / mib:.2f} | "
                         f"{m['peak_bytes'] / mib:.2f} | {m['budget_bytes'] / mib:.2f} | {m['resident/budget']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the markdown table here")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--isa", help="intsim micro-kernel ISA (default: the best this host has)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--layers", default="", help="run only the layers whose name contains this text")
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import llvmlite.binding as llvm

    from intsim.kernels import isa

    if args.isa:
        isa.set_isa(args.isa)
    rng = np.random.default_rng(0)
    meta = {"threads": args.threads, "rounds": args.rounds, "isa": isa.current_isa().name,
            "cpu": llvm.get_host_cpu_name()}
    layer_rows = []
    runs = [(name, kind, shape, batch, False) for name, kind, shape, batched in LAYERS
            for batch in (args.batches if batched else [1])]
    runs += [(name, "conv", shape, 1, True) for name, shape in EFFICIENTNET_1X1]
    for name, kind, shape, batch, per_tensor in (run for run in runs if args.layers in run[0]):
        runners, macs = _layer_runners(kind, shape, batch, rng, args.threads, per_tensor)
        times = _median_times(runners, args.rounds)
        row = {"layer": name, "batch": batch, "macs": macs, "ms": {k: v * 1e3 for k, v in times.items()},
               "gops": {k: 2 * macs / v / 1e9 for k, v in times.items()}, "ratios": _ratios(times)}
        layer_rows.append(row)
        print(f"{name:28s} batch {batch}: intsim {row['ms']['intsim']:8.3f} ms {row['gops']['intsim']:6.0f} GOPS"
              + "".join(f"  {k} {v:5.2f}" for k, v in row["ratios"].items()), flush=True)
    model_rows = []
    if not args.skip_models:
        import intsim.models

        paths = [Path(intsim.models.__file__).parent / f"{n}.onnx"
                 for n in ("resnet_digits", "mobilenet_digits", "resnet_fashion", "mobilenet_fashion")]
        lite0 = Path.home() / ".cache" / "intsim" / "efficientnet_lite0.onnx"
        paths += [lite0] if lite0.exists() else []
        for path in paths:
            for batch in args.batches:
                runners, memory = _model_runners(path, rng, args.threads, batch)
                times = _median_times(runners, args.rounds)
                row = {"model": path.stem, "batch": batch, "ms": {k: v * 1e3 for k, v in times.items()},
                       "ratios": _ratios(times), "memory": memory}
                model_rows.append(row)
                print(f"{path.stem:28s} batch {batch}: intsim {row['ms']['intsim']:8.3f} ms  ORT "
                      f"{row['ms']['ort_u8s8']:8.3f} ms  intsim/ORT {row['ratios']['intsim/ort_u8s8']:.2f}  "
                      f"resident/budget {memory['resident/budget']:.2f}", flush=True)
    table = _markdown(layer_rows, model_rows, meta)
    print()
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "layers": layer_rows, "models": model_rows}, indent=2))


if __name__ == "__main__":
    main()
