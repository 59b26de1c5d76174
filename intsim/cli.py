"""The ``intsim`` command line.

Exit status: 0 success, 1 a runtime error (bad model or data, a failed check), 2 a usage error
(a wrong option, an output path that cannot be written, detected before any computation).
``--json`` prints one JSON document on stdout instead of the text report; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np

from intsim.cli_files import load_floats, load_inputs, load_npy, write_outputs
from intsim.cli_prepare import add_prepare_options, apply_prepare_options
from intsim.debugging import command as debug_command
from intsim import mixed_precision_command
from intsim.errors import InputWarning, IntsimError, ValidationError

EXIT_RUNTIME_ERROR = 1
EXIT_USAGE_ERROR = 2
# Options that name a file or folder the command writes; their parent folder must exist before it starts.
_OUTPUT_OPTIONS = ("output", "out", "html", "plot", "json_path")
_RUN_OUTPUT_SUFFIXES = (".npy", ".npz", ".csv")


class UsageError(ValidationError):
    """A command line that cannot work (exit status 2), found before computing."""


def _print_json(document) -> None:
    print(json.dumps(document, indent=1, default=str))


def _input_shapes(texts) -> dict | None:
    """``--input-shape name:1,3,48,192`` (repeatable) as ``{"name": (1, 3, 48, 192)}``; ``?`` leaves a dim free."""
    shapes = {}
    for text in texts or ():
        name, _, dims = text.rpartition(":")
        try:
            shapes[name] = tuple(None if d.strip() == "?" else int(d) for d in dims.split(","))
        except ValueError:
            raise UsageError(f"--input-shape takes NAME:D0,D1,... (e.g. x:1,3,48,192; ? for a free batch), "
                             f"found {text!r}") from None
        if not name:
            raise UsageError(f"--input-shape needs the input's name before the colon, found {text!r}")
    return shapes or None


def _data(args, client, dtype=None):
    """``--data``: read here, or with a cluster left on its path for the workers to map (a shared path)."""
    from intsim.distributed.data import NpyData

    if client is not None:
        return NpyData(args.data, dtype)
    data = load_npy(args.data, "data")
    return data if dtype is None else data.astype(dtype)


def _cluster(args):
    from intsim.distributed.cluster import cluster_client

    if args.workers is not None and args.dask:
        raise UsageError("give --workers or --dask, not both")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, found {args.workers}")
    return cluster_client(args.workers, args.dask)


def _cmd_profiles(args) -> int:
    from intsim.profiles import builtin_names, get_profile

    if args.name:
        profile = get_profile(args.name)
        if args.json:
            _print_json(profile.to_dict())
        else:
            print(profile.to_toml(), end="")
        return 0
    profiles = [get_profile(name) for name in builtin_names()]
    if args.json:
        _print_json([p.to_dict() for p in profiles])
    for profile in profiles if not args.json else ():
        print(f"[{profile.name}] {profile.description}")
    return 0


def _cmd_inspect(args) -> int:
    import intsim
    from intsim.graph.ir import shape_text

    model = intsim.load(args.model, profile=args.profile)
    graph = model.graph
    p = graph.profile
    if args.json:
        _print_json(_graph_document(graph))
        return 0
    how = {name: f"  [{'float island' if value == 'float' else value}]"
           for name, value in graph.metadata.get("qdq", {}).items()}
    print(f"graph {graph.name!r}, profile {p.name!r}: W{p.weight_bits}A{p.activation_bits}, rounding {p.rounding}, "
          f"{p.accumulator_bits}-bit accumulators ({p.overflow})")
    for kind, names in (("input", graph.inputs), ("output", graph.outputs)):
        for name in names:
            t = graph.tensors[name]
            print(f"  {kind} {name}: {t.dtype}{shape_text(t.shape)} scale {t.scale:.6g} zero point {t.zero_point}")
    for node in graph.nodes:
        outs = ", ".join(f"{t}: {graph.tensors[t].dtype}{shape_text(graph.tensors[t].shape)}" for t in node.outputs)
        print(f"{node.op:16s} {node.name:20s} ({', '.join(node.inputs)}) -> {outs}{how.get(node.name, '')}")
        for key, value in node.params.items():
            detail = f"{value.dtype}{list(value.shape)}"
            if value.size <= 8 or key in ("multiplier", "shift"):
                lo, hi = value.min(), value.max()
                detail += f" = {value.tolist()}" if value.size <= 8 else f" in [{lo}, {hi}]"
            print(f"    {key}: {detail}")
        for key, value in node.attrs.items():
            print(f"    @{key} = {value}")
    return 0


def _graph_document(graph) -> dict:
    def tensor(name):
        t = graph.tensors[name]
        return {"name": name, "dtype": t.dtype, "shape": list(t.shape), "scale": t.scale, "zero_point": t.zero_point}

    runs_as = graph.metadata.get("qdq", {})  # QDQ models: fused / dropped / float island, per ONNX node
    return {"name": graph.name, "profile": graph.profile.to_dict(),
            "inputs": [tensor(t) for t in graph.inputs], "outputs": [tensor(t) for t in graph.outputs],
            "nodes": [{"op": n.op, "name": n.name, "inputs": list(n.inputs), "outputs": [tensor(t) for t in n.outputs],
                       "attrs": dict(n.attrs),
                       "params": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in n.params.items()},
                       **({"runs_as": runs_as[n.name]} if n.name in runs_as else {})}
                      for n in graph.nodes]}


def _cmd_run(args) -> int:
    import intsim

    model = intsim.load(args.model, backend=args.backend, profile=args.profile)
    x = load_inputs(args.input, "input")
    outputs = model.run_int(x) if args.int else model.run(x)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    names = [info.name for info in model.outputs]
    if args.output:
        write_outputs(args.output, names, outputs)
    if args.json:
        _print_json({"outputs": [{"name": n, "dtype": str(o.dtype), "shape": list(o.shape), "values": o.tolist()}
                                 for n, o in zip(names, outputs)]})
        return 0
    for name, out in zip(names, outputs):
        print(f"{name}: {out.dtype}{list(out.shape)}")
    return 0


def _cmd_trace(args) -> int:
    import intsim

    model = intsim.load(args.model, backend=args.backend, profile=args.profile)
    trace = model.trace(load_npy(args.input, "input"), float_input=not args.int)
    print(trace.table())
    return 0


def _warm() -> int:
    """Compile (into numba's on-disk cache) every kernel the built-in profiles run on the shipped models."""
    import time

    from intsim.api import convert
    from intsim.datasets import load_dataset
    from intsim.models import model_path
    from intsim.profiles import builtin_names
    from intsim.runtime.compile_notice import NOTICE

    start = time.perf_counter()
    x = load_dataset("digits", "train")[0][:8]
    for name in builtin_names():
        for model_name in ("resnet_digits", "mobilenet_digits"):
            model = convert(model_path(f"{model_name}.onnx"), x, name, progress=False)
            model.trace(x[:2], float_input=True)
            model.run(x[:2])
    print(f"intsim selftest --warm: {NOTICE.compiled} kernel(s) compiled in {time.perf_counter() - start:.1f} s "
          "and cached; later processes load them")
    return 0


def _cmd_selftest(args) -> int:
    from intsim import examples

    if args.warm:
        return _warm()
    if not args.json:
        print("intsim selftest: a hand-built integer CNN (conv, depthwise, max pool, mean, fully connected, softmax)")
        print("run on every built-in profile: node by node (trace) and through the fused path run takes, with the")
        print("numba kernels and their naive twins.\n")
    results = []
    for result, trace in examples.selftest_runs(args.seed, args.batch):
        results.append(result)
        if not args.json:
            print(f"== profile {result['profile']}: {result['trace_elements']} integers compared, fast vs naive "
                  f"mismatches: {result['trace_mismatches']}; run (fused) fast vs naive and vs trace, "
                  f"{result['run_elements']} outputs: mismatches {result['run_mismatches']}")
            print(trace.table() + "\n")
        if result["trace_mismatches"] or result["run_mismatches"]:
            break
    if args.json:
        _print_json(results)
    return EXIT_RUNTIME_ERROR if any(r["trace_mismatches"] or r["run_mismatches"] for r in results) else 0


def _cmd_export_qdq(args) -> int:
    import intsim

    written = intsim.export_qdq(intsim.load(args.model, profile=args.profile), args.out)
    print(f"wrote the QDQ ONNX model {written.path}; onnxruntime fuses it into the kernels the graph models")
    for node, reason in written.inexact.items():
        print(f"  {node}: {reason}")
    return 0


def _cmd_export_tosa(args) -> int:
    import intsim

    path = intsim.export_tosa(intsim.load(args.model, profile=args.profile), args.out, batch=args.batch)
    print(f"wrote the TOSA flatbuffer {path}; any TOSA tool reads it, e.g. the reference model of PyPI's "
          "tosa-tools (see docs/peers.md)")
    return 0


def _is_onnx(path: str) -> bool:
    return path.lower().endswith(".onnx")


def _onnx_format(path: str) -> str:
    """``"float"``, ``"qdq"`` or ``"qoperator"`` (:func:`intsim.importers.onnx_qdq.onnx_format`)."""
    from intsim.importers.onnx_qdq import onnx_format

    return onnx_format(path)


def _bit_widths(text: str, option: str) -> list[int]:
    """``16..32``, ``16,20,24`` or a mix (``16..20,24,32``) as a list of widths."""
    widths = []
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("..")
            widths += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UsageError(f"{option} takes widths like 16..32 or 16,20,24, found {text!r}") from None
    return widths


def _cmd_golden(args) -> int:
    import intsim

    model = intsim.load(args.model, profile=args.profile)
    path = intsim.export_golden(model, load_npy(args.input, "input"), args.out_dir, formats=args.format.split(","),
                               float_input=not args.int)
    print(f"wrote golden vectors of {len(model.graph.nodes)} nodes ({args.format}) and {path}")
    return 0


def _cmd_diff(args) -> int:
    import intsim
    from intsim.hwval import diff

    report = diff(intsim.load(args.model, profile=args.profile), load_npy(args.input, "input"), args.device_dump,
                  float_input=not args.int, format=args.format)
    print(report.table())
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=1)
        print(f"wrote {args.json_path}")
    return 0 if report.first is None else EXIT_RUNTIME_ERROR


def _cmd_sweep(args) -> int:
    with _cluster(args) as client:
        return _sweep(args, client)


def _sweep(args, client) -> int:
    import json

    import intsim
    from intsim.hwval import bitwidth_sweep, sweep

    labels = load_npy(args.labels, "labels") if args.labels else None
    conversion = {"--calibration": args.calibration, "--weight-bits": args.weight_bits,
                  "--activation-bits": args.activation_bits, "--profile": args.profile,
                  "--input-shape": args.input_shape, "--layer-config": args.layer_config}
    widths = None
    if args.model.lower().endswith(".onnx") and _onnx_format(args.model) == "float":
        if not args.calibration:
            raise UsageError(f"sweep of the float model {args.model} needs --calibration X.npy, found none")
        calibration = load_npy(args.calibration, "calibration").astype(np.float32)
        profile = intsim.get_profile(args.profile or "paper")
        if args.weight_bits or args.activation_bits:
            widths = bitwidth_sweep(
                args.model, calibration, _data(args, client, np.float32), labels, profile=profile, client=client,
                weight_bits=_bit_widths(args.weight_bits or str(profile.weight_bits), "--weight-bits"),
                activation_bits=_bit_widths(args.activation_bits or str(profile.activation_bits), "--activation-bits"),
                input_shapes=args.input_shapes)
            print(widths.table() + "\n")
        model = intsim.convert(args.model, calibration=calibration, profile=profile, progress=False,
                               input_shapes=args.input_shapes, layer_config=_layer_config(args))
    else:
        given = [k for k, v in conversion.items() if v and not (k == "--profile" and _is_onnx(args.model))]
        if given:
            raise UsageError(f"{', '.join(given)} apply to a float .onnx model, found {args.model}")
        model = intsim.load(args.model, profile=args.profile)
    report = sweep(model, _data(args, client), labels, _bit_widths(args.acc_bits, "--acc-bits"),
                   float_input=not args.int, question_bits=args.question_bits, batch_size=args.batch_size,
                   client=client)
    report.bit_widths = widths
    print(report.table())
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=1)
        print(f"wrote {args.json_path}")
    _report_outputs_files(report, args)
    return 0


def _adaround(args):
    """``--adaround`` alone is True; any ``--adaround-*`` setting makes it an AdaRoundOptions."""
    from intsim.ptq.adaround import AdaRoundOptions

    given = {k: v for k, v in (("iterations", args.adaround_iterations), ("batch_size", args.adaround_batch_size),
                               ("reg_weight", args.adaround_reg_weight)) if v is not None}
    if not given:
        return args.adaround
    try:
        return AdaRoundOptions(**given).checked()
    except ValidationError as exc:
        raise UsageError(str(exc)) from None


def _layer_config(args) -> dict | None:
    """The ``--layer-config`` TOML file's per-layer overrides (:mod:`intsim.converter.layer_config`)."""
    from intsim.converter.layer_config import load_layer_config

    return load_layer_config(args.layer_config) if getattr(args, "layer_config", None) else None


def _overrides(args) -> dict:
    return {"layer_config": _layer_config(args), "weight_bits": args.weight_bits, "activation_bits": args.activation_bits,
            "per_channel": args.per_channel, "range_method": args.range_method,
            "logits_range_method": args.logits_range_method, "weight_range_method": args.weight_range_method,
            "batch_size": args.batch_size, "cle": args.cle, "bias_correction": args.bias_correction,
            "adaround": _adaround(args), "pipeline": args.pipeline}


def _cmd_debug(args) -> int:
    from intsim.debugging import debug

    report = debug(args.model, load_floats(args.calibration, "calibration"), load_floats(args.data, "data"),
                   load_npy(args.labels, "labels") if args.labels else None, args.profile, tolerance=args.tolerance,
                   inspect=args.inspect, datapath=args.datapath, input_shapes=args.input_shapes, **_overrides(args))
    print("\n".join([report.table(), *(f"wrote {path}" for path in report.save(args.html, args.json_path))]))
    return 0


def _cmd_qat(args) -> int:
    try:
        from intsim.qat import finetune
    except ImportError as exc:
        print(f"intsim: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR

    data = load_floats(args.data, "data")
    labels = load_npy(args.labels, "labels") if args.labels else None
    calibration = load_floats(args.calibration, "calibration") if args.calibration else None
    model = finetune(args.model, data, labels=labels, calibration=calibration, profile=args.profile,
                     weight_bits=args.weight_bits, activation_bits=args.activation_bits, per_channel=args.per_channel,
                     layer_config=_layer_config(args), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                     scale_lr=args.scale_lr, freeze_scales=args.freeze_scales, dampening=args.dampening,
                     freeze_oscillations=args.freeze_oscillations, learn_ranges=args.learn_ranges, batch_norm=args.batch_norm, distillation=args.distillation,
                     seed=args.seed)
    model.save(args.output)
    info = model.graph.metadata["qat"]
    print(f"wrote {args.output}: {len(model.graph.nodes)} integer nodes, profile {model.profile.name!r}, "
          f"{info['epochs']} epoch(s) on {info['samples']} samples in {info['seconds']:.1f} s, "
          f"final loss {info['final_loss']:.4f}, top-1 agreement {100 * info['agreement']:.1f}%")
    return 0


def _cmd_convert(args) -> int:
    import intsim

    data = load_inputs(args.calibration, "calibration")
    if isinstance(data, np.ndarray) and data.dtype.kind in "iu":
        warnings.warn(InputWarning(f"calibration {args.calibration} has integer dtype {data.dtype} (values "
                                   f"{data.min()}..{data.max()}); intsim reads them as real values, not codes: scale "
                                   "them as the model expects (e.g. /255)"))
        data = data.astype(np.float32)
    model = intsim.convert(args.model, calibration=data, profile=args.profile,
                           input_shapes=args.input_shapes, **_overrides(args))
    model.save(args.output)
    meta = model.graph.metadata
    overflow = sum(meta["bias_overflow"].values())
    print(f"wrote {args.output}: {len(model.graph.nodes)} integer nodes, profile {model.profile.name!r}, "
          f"calibrated on {meta['calibration']['samples']} samples in {meta['conversion_seconds']:.2f} s, "
          f"{overflow} bias value(s) clipped to {model.profile.bias_bits} bits")
    return 0


def _cmd_mixed_precision(args) -> int:
    import intsim

    calibration = load_npy(args.calibration, "calibration").astype(np.float32)
    data = load_npy(args.data, "data").astype(np.float32)
    labels = load_npy(args.labels, "labels") if args.labels else None
    validation = None
    if args.validation_labels and not args.validation_data:
        raise UsageError("--validation-labels needs --validation-data (the inputs they label)")
    if args.validation_data:
        validation = (load_npy(args.validation_data, "validation data").astype(np.float32),
                      *([load_npy(args.validation_labels, "validation labels")] if args.validation_labels else []))
    candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    result = intsim.search_mixed_precision(
        args.model, calibration, data, labels, profile=args.profile, candidates=candidates,
        max_accuracy_drop=args.max_accuracy_drop, objective=args.objective, validation=validation,
        validation_split=args.validation_split, confidence=args.confidence, batch_size=args.batch_size,
        range_method=args.range_method, weight_range_method=args.weight_range_method, input_shapes=args.input_shapes)
    print(result.table())
    Path(args.output).write_text(result.to_toml(), encoding="utf-8")
    print(f"wrote {args.output} (use it with intsim convert --layer-config {args.output})")
    if args.json_path:
        with open(args.json_path, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f, indent=1)
        print(f"wrote {args.json_path}")
    return 0 if result.met else EXIT_RUNTIME_ERROR


def _report_outputs(report, args) -> None:
    print(report.table())
    _report_outputs_files(report, args)


def _report_outputs_files(report, args) -> None:
    stream = sys.stderr if getattr(args, "json", None) is True else sys.stdout
    if args.html:
        report.to_html(args.html)
        print(f"wrote {args.html}", file=stream)
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}", file=stream)


def _cmd_compare(args) -> int:
    import intsim

    labels = load_npy(args.labels, "labels") if args.labels else None
    with _cluster(args) as client:
        report = intsim.compare(args.onnx, intsim.load(args.model), _data(args, client, np.float32), labels,
                                batch_size=args.batch_size, client=client)
    if args.json:
        _print_json(report.to_dict())
        _report_outputs_files(report, args)
        return 0
    _report_outputs(report, args)
    return 0


def _cmd_evaluate(args) -> int:
    import json

    import intsim

    labels = load_npy(args.labels, "labels") if args.labels else None
    with _cluster(args) as client:
        report = intsim.evaluate(intsim.load(args.model), _data(args, client, None if args.int else np.float32), labels,
                                 float_model=args.onnx, float_input=not args.int, batch_size=args.batch_size,
                                 client=client)
    print(report.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _cmd_demo(args) -> int:
    dataset = args.model.split("_")[-1]
    # Printed before the imports (the converter, numba) and the data (Fashion-MNIST takes seconds to unpack).
    print(f"converting {args.model}.onnx for profile {args.profile!r} with {args.calibration_samples} calibration "
          f"images of {dataset} ...", flush=True)
    from intsim.progress import Progress, progress_enabled

    with Progress(None, progress_enabled(), f"loading the converter and the {dataset} images"):
        from intsim.api import compare, convert
        from intsim.datasets import load_dataset
        from intsim.models import model_path

        x_train, _ = load_dataset(dataset, "train", args.data_dir)
        x_test, y_test = load_dataset(dataset, "test", args.data_dir)
    if args.samples:
        x_test, y_test = x_test[: args.samples], y_test[: args.samples]
    calibration = x_train[: args.calibration_samples]
    onnx_path = model_path(f"{args.model}.onnx")
    model = convert(onnx_path, calibration=calibration, profile=args.profile, **_overrides(args))
    print(f"{len(model.graph.nodes)} integer nodes, converted in {model.graph.metadata['conversion_seconds']:.2f} s; "
          f"running float, simulated and integer on {len(x_test)} test images (the first run on a fresh install "
          "also compiles the numba kernels, cached afterwards; `intsim selftest --warm` does it ahead)\n", flush=True)
    report = compare(onnx_path, model, x_test, y_test, batch_size=args.batch_size)
    _report_outputs(report, args)
    return 0


def _add_conversion_options(p, batch_size=32):
    p.add_argument("--profile", default="paper", help="built-in profile name or a .toml file (default paper)")
    p.add_argument("--weight-bits", type=int, help="override the profile's weight bits (2..16)")
    p.add_argument("--activation-bits", type=int, help="override the profile's activation bits (2..16)")
    p.add_argument("--per-channel", dest="per_channel", action="store_true", default=None,
                   help="per-channel weight scales")
    p.add_argument("--per-tensor", dest="per_channel", action="store_false", help="per-tensor weight scales")
    p.add_argument("--range-method", choices=("minmax", "percentile", "mse", "cross_entropy"),
                   help="activation range setting (white paper §3.1; default minmax)")
    p.add_argument("--logits-range-method", choices=("minmax", "percentile", "mse", "cross_entropy"),
                   help="range setting of the model outputs (default: --range-method)")
    p.add_argument("--weight-range-method", choices=("minmax", "mse"),
                   help="weight range setting (default minmax)")
    p.add_argument("--cle", action="store_true", default=None,
                   help="cross-layer equalization and bias absorption (white paper §3.2)")
    p.add_argument("--bias-correction", choices=("empirical", "analytic", "none"), help="bias correction (§3.3)")
    p.add_argument("--adaround", action="store_true", default=None, help="AdaRound weight rounding (§3.4)")
    p.add_argument("--adaround-iterations", type=int, help="AdaRound steps per layer (default 10000)")
    p.add_argument("--adaround-batch-size", type=int, help="AdaRound rows per step (default 256)")
    p.add_argument("--adaround-reg-weight", type=float, help="AdaRound regularisation weight lambda (default 0.01)")
    p.add_argument("--pipeline", choices=("standard",),
                   help="the standard PTQ pipeline (§3.5); the options above override its choices")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"batch size (default {batch_size})")
    _add_layer_config_option(p)


def _add_layer_config_option(p):
    p.add_argument("--layer-config", metavar="FILE.toml",
                   help="per-layer precision: one table per node name, glob or op type, e.g. [\"Gemm\"] "
                        "weight_bits = 4 (docs/mixed_precision.md)")


def _add_cluster_options(p):
    p.add_argument("--workers", type=int, help="run on a local Dask cluster of this many single-threaded processes")
    p.add_argument("--dask", metavar="tcp://HOST:PORT",
                   help="run on the Dask scheduler at this address (workers read --data from the same path)")


def _add_report_options(p):
    p.add_argument("--html", help="also write the report as an HTML page")
    p.add_argument("--plot", help="also plot per-layer SQNR to a PNG (needs matplotlib)")


def _add_profile_option(p):
    p.add_argument("--profile", help="for a quantized .onnx model: the profile to run it under (default "
                                     "onnxruntime; another profile retargets the same scales and zero points)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intsim", description="Bit-exact integer-only accelerator simulation.",
                                     epilog="exit status: 0 success, 1 runtime error, 2 usage error")
    parser.add_argument("--version", action="version", version=f"intsim {version('intsim')}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profiles", help="list the built-in hardware profiles, or show one as TOML")
    p.add_argument("name", nargs="?", help="a built-in name or a .toml file (printed as TOML that loads back)")
    _add_json_flag(p)
    p.set_defaults(func=_cmd_profiles)

    p = sub.add_parser("inspect", help="show the nodes, shapes, quantization parameters and profile of a model "
                                       "(QDQ models: which groups run fused and which as float islands)")
    p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model or a quantized .onnx model")
    _add_profile_option(p)
    _add_json_flag(p)
    p.set_defaults(func=_cmd_inspect)

    for name, func, text in (("run", _cmd_run, "run a model on an input array"),
                             ("trace", _cmd_trace, "run and print per-node statistics")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model or a quantized .onnx model")
        p.add_argument("--input", required=True, help="input .npy (float, or integer codes with --int); .npz: one "
                       "array per input name (several inputs, token ids, masks)")
        if name == "run":
            p.add_argument("--output", help="where to save the outputs: .npy or .csv (one output), .npz (all)")
            _add_json_flag(p)
        p.add_argument("--int", action="store_true", help="input is integer codes (and run's output is codes)")
        p.add_argument("--backend", choices=("fast", "naive"), default="fast", help="numba kernels or naive twins")
        _add_profile_option(p)
        p.set_defaults(func=func)

    p = sub.add_parser("export-tosa", help="export an integer model as a TOSA flatbuffer (.tosa)")
    p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model or a quantized .onnx model")
    p.add_argument("out", help="the .tosa file to write")
    p.add_argument("--batch", type=int, default=1, help="batch size fixed in the TOSA shapes (default 1)")
    _add_profile_option(p)
    p.set_defaults(func=_cmd_export_tosa)

    p = sub.add_parser("export-qdq", help="export an integer model as a QDQ ONNX model onnxruntime runs")
    p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model or a quantized .onnx model")
    p.add_argument("out", help="the .onnx file to write")
    _add_profile_option(p)
    p.set_defaults(func=_cmd_export_qdq)

    p = sub.add_parser("convert", help="convert a float ONNX model into an integer .intsim model")
    p.add_argument("model", help="float ONNX model")
    p.add_argument("--calibration", required=True, help="calibration inputs .npy (samples first, model layout); "
                   ".npz: one array per input name (several inputs, token ids, masks)")
    p.add_argument("-o", "--output", required=True, help="the .intsim file to write")
    _add_input_shape_option(p)
    _add_conversion_options(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("mixed-precision", help=mixed_precision_command.HELP)
    mixed_precision_command.add_options(p)
    _add_input_shape_option(p)
    p.set_defaults(func=_cmd_mixed_precision)

    p = sub.add_parser("qat", help="quantization-aware training (white paper §4) into an integer .intsim model; "
                                   "needs intsim[qat]")
    p.add_argument("model", help="float ONNX model")
    p.add_argument("--data", required=True, help="training inputs .npy (samples first, model layout; unlabeled is enough)")
    p.add_argument("--labels", help="integer class labels .npy (adds cross-entropy to the distillation loss)")
    p.add_argument("--calibration", help="inputs .npy for the PTQ start (default: the first 1024 of --data)")
    p.add_argument("-o", "--output", required=True, help="the .intsim file to write")
    p.add_argument("--profile", default="paper", help="built-in profile name or a .toml file (default paper)")
    p.add_argument("--weight-bits", type=int, help="override the profile's weight bits (2..16)")
    p.add_argument("--activation-bits", type=int, help="override the profile's activation bits (2..16)")
    p.add_argument("--per-channel", dest="per_channel", action="store_true", default=None,
                   help="per-channel weight scales")
    p.add_argument("--per-tensor", dest="per_channel", action="store_false", help="per-tensor weight scales")
    p.add_argument("--epochs", type=int, default=2, help="passes over --data (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, cosine-annealed (default 1e-3)")
    p.add_argument("--scale-lr", type=float, help="Adam learning rate of the learned scales (default: --lr)")
    p.add_argument("--freeze-scales", type=float, default=0.0, help="last fraction of the steps with fixed scales")
    p.add_argument("--dampening", type=float, default=0.0, help="oscillation dampening loss weight (default 0: off)")
    p.add_argument("--freeze-oscillations", type=float, metavar="T", help="freeze codes oscillating more often than T")
    p.add_argument("--fixed-ranges", dest="learn_ranges", action="store_false", help="keep the PTQ ranges (default: learn)")
    p.add_argument("--distillation", type=float,
                   help="weight of the distillation loss (default 1 without labels, 0 with labels)")
    p.add_argument("--batch-norm", choices=("static", "statistics"), default="static",
                   help="batch norms after a Conv/Gemm: folded before training, or kept with batch statistics "
                        "(white paper §4.2; default static)")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order (default 0)")
    _add_layer_config_option(p)
    p.set_defaults(func=_cmd_qat)

    p = sub.add_parser("compare", help="float vs simulated vs integer, layer by layer")
    p.add_argument("onnx", help="the float ONNX model")
    p.add_argument("model", help="the .intsim model converted from it")
    p.add_argument("--data", required=True, help="inputs .npy (samples first)")
    p.add_argument("--labels", help="integer class labels .npy, for accuracy")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    _add_report_options(p)
    _add_json_flag(p)
    _add_cluster_options(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("debug", help=debug_command.HELP)
    debug_command.add_options(p)
    _add_conversion_options(p, batch_size=64)
    _add_input_shape_option(p)
    p.set_defaults(func=_cmd_debug)

    p = sub.add_parser("evaluate", help="accuracy, top-1 agreement and per-layer clamp / overflow counts on a data set")
    p.add_argument("model", help="an .intsim file or a fully-int8 .tflite model")
    p.add_argument("--data", required=True, help="inputs .npy (samples first; float, or codes with --int)")
    p.add_argument("--labels", help="integer class labels .npy, for accuracy")
    p.add_argument("--onnx", help="the float ONNX model: agreement with it (default: with 32-bit accumulators)")
    p.add_argument("--int", action="store_true", help="data is integer codes")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--json", help="also write the report as JSON")
    _add_cluster_options(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="the main job: convert a shipped model, run it on its test set, report")
    p.add_argument("--model", default="resnet_digits",
                   help="shipped model: resnet_digits (default), mobilenet_digits, resnet_fashion, mobilenet_fashion")
    p.add_argument("--calibration-samples", type=int, default=512, help="calibration images (default 512)")
    p.add_argument("--samples", type=int, help="test images to use (default all)")
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST IDX files (default: $INTSIM_DATA, else "
                                      "/usr/share/datasets/fashion-mnist)")
    _add_conversion_options(p, batch_size=64)
    _add_report_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("golden", help="write golden vectors (every tensor, weight, accumulator) for RTL test benches")
    p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model or a quantized .onnx model")
    p.add_argument("--input", required=True, help="input .npy (float, or integer codes with --int)")
    p.add_argument("--out", dest="out_dir", required=True, help="directory for manifest.json and the files (created)")
    p.add_argument("--format", default="npy,hex,bin", help="comma-separated: npy, hex ($readmemh), bin (default all)")
    p.add_argument("--int", action="store_true", help="input is integer codes")
    _add_profile_option(p)
    p.set_defaults(func=_cmd_golden)

    p = sub.add_parser("diff", help="compare a device's per-layer dump with intsim and diagnose the first divergence")
    p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model or a quantized .onnx model")
    p.add_argument("--input", required=True, help="the input the device ran, .npy (float, or codes with --int)")
    p.add_argument("--device-dump", required=True, help="directory in the golden layout (manifest.json + files)")
    p.add_argument("--format", choices=("npy", "hex", "bin"), help="which files of the dump to read")
    p.add_argument("--int", action="store_true", help="input is integer codes")
    p.add_argument("--json", dest="json_path", help="also write the report as JSON")
    _add_profile_option(p)
    p.set_defaults(func=_cmd_diff)

    p = sub.add_parser("sweep", help="accumulator widths: bits each layer needs, overflows and agreement per width")
    p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model, a quantized .onnx "
                                    "model, or a float .onnx (with --calibration)")
    p.add_argument("--data", required=True, help="inputs .npy (samples first; float, or codes with --int)")
    p.add_argument("--labels", help="integer class labels .npy, for accuracy")
    p.add_argument("--acc-bits", default="16..32", help="widths to sweep, e.g. 16..32 or 16,20,24 (default 16..32)")
    p.add_argument("--question-bits", type=int, default=24,
                   help="answer 'can the MAC array use this many accumulator bits?' (default 24)")
    p.add_argument("--int", action="store_true", help="data is integer codes")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--json", dest="json_path", help="also write the report as JSON")
    p.add_argument("--html", help="also write one self-contained HTML page (tables and plot)")
    p.add_argument("--plot", help="also plot bits needed per layer and agreement per width to a PNG")
    p.add_argument("--calibration", help="float .onnx model: calibration inputs .npy for the conversion")
    p.add_argument("--profile", help="float .onnx model: the profile to convert for (default paper); quantized "
                                     ".onnx model: the profile to run it under (default onnxruntime)")
    p.add_argument("--weight-bits", help="float .onnx model: also sweep weight widths, e.g. 4..8")
    p.add_argument("--activation-bits", help="float .onnx model: also sweep activation widths, e.g. 6,8")
    _add_layer_config_option(p)
    _add_input_shape_option(p)
    _add_cluster_options(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("selftest", help="run a hand-built integer graph on every profile (fast vs naive kernels)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    p.add_argument("--warm", action="store_true",
                   help="instead: compile the kernels every built-in profile runs on the shipped models into numba's "
                        "cache (once, after installing), so that the first demo or run does not wait for them")
    _add_json_flag(p)
    p.set_defaults(func=_cmd_selftest)
    return parser


def _add_json_flag(p):
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of the text")


def _add_input_shape_option(p):
    p.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,...",
                   help="fix a float .onnx input's symbolic dims, e.g. x:1,3,48,192 (repeat for several inputs)")
    add_prepare_options(p)


def _check_before_computing(args) -> None:
    """Every output's folder exists, a run output has a known extension, ``--input-shape`` parses, a plot has
    matplotlib: all checked before the command computes anything."""
    for option in _OUTPUT_OPTIONS:
        path = getattr(args, option, None)
        if isinstance(path, str) and not Path(path).resolve().parent.is_dir():
            raise UsageError(f"--{option.replace('_path', '')} {path}: the folder {Path(path).resolve().parent} "
                             "does not exist")
    if args.func is _cmd_run and args.output and Path(args.output).suffix.lower() not in _RUN_OUTPUT_SUFFIXES:
        raise UsageError(f"--output {args.output}: expected a {', '.join(_RUN_OUTPUT_SUFFIXES)} file")
    args.input_shapes = _input_shapes(getattr(args, "input_shape", None))
    try:
        apply_prepare_options(args)
    except ValidationError as exc:  # a bad NAME=VALUE, or a name the model does not have
        raise UsageError(str(exc)) from None
    if getattr(args, "plot", None) and importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"--plot {args.plot} needs matplotlib: pip install 'intsim[plot]'")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"intsim: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_before_computing(args)
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except UsageError as exc:
        print(f"intsim: error: {exc}", file=sys.stderr)
        return EXIT_USAGE_ERROR
    except (IntsimError, OSError) as exc:
        print(f"intsim: error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    except MemoryError as exc:
        print(f"intsim: error: out of memory ({exc})", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    except Exception as exc:  # noqa: BLE001 - an intsim bug: one line, not a traceback, and say so
        print(f"intsim: error: internal error ({type(exc).__name__}: {exc}); please report it", file=sys.stderr)
        return EXIT_RUNTIME_ERROR


if __name__ == "__main__":
    sys.exit(main())
