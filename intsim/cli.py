"""The ``intsim`` command line."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from intsim.errors import IntsimError, ValidationError


def _load_npy(path: str, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValidationError(f"{what} file {path} does not exist") from None
    except (ValueError, OSError, EOFError) as exc:
        raise ValidationError(f"{what} file {path} is not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise ValidationError(f"{what} file {path} must hold one array (.npy), found {type(array).__name__}")
    return array


def _cmd_profiles(args) -> int:
    from intsim.profiles import builtin_names, get_profile

    names = [args.name] if args.name else builtin_names()
    for name in names:
        profile = get_profile(name)
        print(f"[{profile.name}] {profile.description}")
        if args.name:
            for key, value in profile.to_dict().items():
                if key not in ("name", "description"):
                    print(f"  {key} = {value}")
    return 0


def _cmd_inspect(args) -> int:
    import intsim

    model = intsim.load(args.model, profile=args.profile)
    graph = model.graph
    p = graph.profile
    how = {name: f"  [{'float island' if value == 'float' else value}]"
           for name, value in graph.metadata.get("qdq", {}).items()}
    print(f"graph {graph.name!r}, profile {p.name!r}: W{p.weight_bits}A{p.activation_bits}, rounding {p.rounding}, "
          f"{p.accumulator_bits}-bit accumulators ({p.overflow})")
    for kind, names in (("input", graph.inputs), ("output", graph.outputs)):
        for name in names:
            t = graph.tensors[name]
            print(f"  {kind} {name}: {t.dtype}{list(t.shape)} scale {t.scale:.6g} zero point {t.zero_point}")
    for node in graph.nodes:
        outs = ", ".join(f"{t}: {graph.tensors[t].dtype}{list(graph.tensors[t].shape)}" for t in node.outputs)
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


def _cmd_run(args) -> int:
    import intsim

    model = intsim.load(args.model, backend=args.backend, profile=args.profile)
    x = _load_npy(args.input, "input")
    outputs = model.run_int(x) if args.int else model.run(x)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    if args.output:
        if len(outputs) != 1:
            raise ValidationError(f"--output takes one array but the model has {len(outputs)} outputs")
        np.save(args.output, outputs[0], allow_pickle=False)
    for info, out in zip(model.outputs, outputs):
        print(f"{info.name}: {out.dtype}{list(out.shape)}")
    return 0


def _cmd_trace(args) -> int:
    import intsim

    model = intsim.load(args.model, backend=args.backend, profile=args.profile)
    trace = model.trace(_load_npy(args.input, "input"), float_input=not args.int)
    print(trace.table())
    return 0


def _cmd_selftest(args) -> int:
    from intsim import Model, examples
    from intsim.profiles import builtin_names

    print("intsim selftest: a hand-built integer CNN (conv, depthwise, max pool, mean, fully connected, softmax)")
    print("run on every built-in profile with the numba kernels and their naive twins.\n")
    for name in builtin_names():
        graph = examples.tiny_cnn(name, seed=args.seed)
        x = examples.random_codes(graph.tensors["x"], args.batch, args.seed)
        fast, naive = Model(graph, "fast").trace(x), Model(graph, "naive").trace(x)
        mismatches = sum(int(np.sum(fast.tensors[t] != naive.tensors[t])) for t in fast.tensors)
        elements = sum(int(fast.tensors[t].size) for t in fast.tensors)
        print(f"== profile {name}: {elements} integers compared, fast vs naive mismatches: {mismatches}")
        print(fast.table() + "\n")
        if mismatches:
            return 1
    return 0


def _cmd_export_tosa(args) -> int:
    import intsim

    path = intsim.export_tosa(intsim.load(args.model, profile=args.profile), args.out, batch=args.batch)
    print(f"wrote the TOSA flatbuffer {path}; run it with tools/tosa_run.py in the tosa-tools venv")
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
        raise ValidationError(f"{option} takes widths like 16..32 or 16,20,24, found {text!r}") from None
    return widths


def _cmd_golden(args) -> int:
    import intsim

    model = intsim.load(args.model, profile=args.profile)
    path = intsim.export_golden(model, _load_npy(args.input, "input"), args.out, formats=args.format.split(","),
                               float_input=not args.int)
    print(f"wrote golden vectors of {len(model.graph.nodes)} nodes ({args.format}) and {path}")
    return 0


def _cmd_diff(args) -> int:
    import json

    import intsim
    from intsim.hwval import diff

    report = diff(intsim.load(args.model, profile=args.profile), _load_npy(args.input, "input"), args.device_dump,
                  float_input=not args.int, format=args.format)
    print(report.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_dict(), f, indent=1)
        print(f"wrote {args.json}")
    return 0 if report.first is None else 1


def _cmd_sweep(args) -> int:
    import json

    import intsim
    from intsim.hwval import bitwidth_sweep, sweep

    data = _load_npy(args.data, "data")
    labels = _load_npy(args.labels, "labels") if args.labels else None
    conversion = {"--calibration": args.calibration, "--weight-bits": args.weight_bits,
                  "--activation-bits": args.activation_bits, "--profile": args.profile}
    extra = {}
    if args.model.lower().endswith(".onnx") and _onnx_format(args.model) == "float":
        if not args.calibration:
            raise ValidationError(f"sweep of the float model {args.model} needs --calibration X.npy, found none")
        calibration = _load_npy(args.calibration, "calibration").astype(np.float32)
        profile = intsim.get_profile(args.profile or "paper")
        if args.weight_bits or args.activation_bits:
            widths = bitwidth_sweep(
                args.model, calibration, data.astype(np.float32), labels, profile=profile,
                weight_bits=_bit_widths(args.weight_bits or str(profile.weight_bits), "--weight-bits"),
                activation_bits=_bit_widths(args.activation_bits or str(profile.activation_bits), "--activation-bits"))
            print(widths.table() + "\n")
            extra["bit_widths"] = widths.to_dict()
        model = intsim.convert(args.model, calibration=calibration, profile=profile, progress=False)
    else:
        given = [k for k, v in conversion.items() if v and not (k == "--profile" and _is_onnx(args.model))]
        if given:
            raise ValidationError(f"{', '.join(given)} apply to a float .onnx model, found {args.model}")
        model = intsim.load(args.model, profile=args.profile)
    report = sweep(model, data, labels, _bit_widths(args.acc_bits, "--acc-bits"), float_input=not args.int,
                   question_bits=args.question_bits, batch_size=args.batch_size)
    print(report.table())
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report.to_dict() | extra, f, indent=1)
        print(f"wrote {args.json}")
    _report_outputs_files(report, args)
    return 0


def _adaround(args):
    """``--adaround`` alone is True; any ``--adaround-*`` setting makes it an AdaRoundOptions."""
    from intsim.ptq.adaround import AdaRoundOptions

    given = {k: v for k, v in (("iterations", args.adaround_iterations), ("batch_size", args.adaround_batch_size),
                               ("reg_weight", args.adaround_reg_weight)) if v is not None}
    return AdaRoundOptions(**given) if given else args.adaround


def _overrides(args) -> dict:
    return {"weight_bits": args.weight_bits, "activation_bits": args.activation_bits,
            "per_channel": args.per_channel, "range_method": args.range_method,
            "logits_range_method": args.logits_range_method, "weight_range_method": args.weight_range_method,
            "batch_size": args.batch_size, "cle": args.cle, "bias_correction": args.bias_correction,
            "adaround": _adaround(args), "pipeline": args.pipeline}


def _cmd_convert(args) -> int:
    import intsim

    data = _load_npy(args.calibration, "calibration")
    if data.dtype.kind in "iu":
        data = data.astype(np.float32)
    model = intsim.convert(args.model, calibration=data, profile=args.profile, **_overrides(args))
    model.save(args.output)
    meta = model.graph.metadata
    overflow = sum(meta["bias_overflow"].values())
    print(f"wrote {args.output}: {len(model.graph.nodes)} integer nodes, profile {model.profile.name!r}, "
          f"calibrated on {meta['calibration']['samples']} samples in {meta['conversion_seconds']:.2f} s, "
          f"{overflow} bias value(s) clipped to {model.profile.bias_bits} bits")
    return 0


def _report_outputs(report, args) -> None:
    print(report.table())
    _report_outputs_files(report, args)


def _report_outputs_files(report, args) -> None:
    if args.html:
        report.to_html(args.html)
        print(f"wrote {args.html}")
    if args.plot:
        report.plot(args.plot)
        print(f"wrote {args.plot}")


def _cmd_compare(args) -> int:
    import intsim

    data = _load_npy(args.data, "data")
    labels = _load_npy(args.labels, "labels") if args.labels else None
    report = intsim.compare(args.onnx, intsim.load(args.model), data.astype(np.float32), labels,
                            batch_size=args.batch_size)
    _report_outputs(report, args)
    return 0


def _cmd_demo(args) -> int:
    import intsim
    from intsim.datasets import load_dataset
    from intsim.models import model_path

    dataset = args.model.split("_")[-1]
    x_train, _ = load_dataset(dataset, "train")
    x_test, y_test = load_dataset(dataset, "test")
    if args.samples:
        x_test, y_test = x_test[: args.samples], y_test[: args.samples]
    calibration = x_train[: args.calibration_samples]
    onnx_path = model_path(f"{args.model}.onnx")
    print(f"converting {onnx_path.name} for profile {args.profile!r} with {len(calibration)} calibration images "
          f"of {dataset} ...")
    model = intsim.convert(onnx_path, calibration=calibration, profile=args.profile, **_overrides(args))
    print(f"{len(model.graph.nodes)} integer nodes, converted in {model.graph.metadata['conversion_seconds']:.2f} s; "
          f"running float, simulated and integer on {len(x_test)} test images\n")
    report = intsim.compare(onnx_path, model, x_test, y_test, batch_size=args.batch_size)
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


def _add_report_options(p):
    p.add_argument("--html", help="also write the report as an HTML page")
    p.add_argument("--plot", help="also plot per-layer SQNR to a PNG (needs matplotlib)")


def _add_profile_option(p):
    p.add_argument("--profile", help="for a quantized .onnx model: the profile to run it under (default "
                                     "onnxruntime; another profile retargets the same scales and zero points)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="intsim", description="Bit-exact integer-only accelerator simulation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profiles", help="list the built-in hardware profiles, or show one")
    p.add_argument("name", nargs="?", help="a built-in name or a .toml file")
    p.set_defaults(func=_cmd_profiles)

    p = sub.add_parser("inspect", help="show the nodes, shapes, quantization parameters and profile of a model "
                                       "(QDQ models: which groups run fused and which as float islands)")
    p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model or a quantized .onnx model")
    _add_profile_option(p)
    p.set_defaults(func=_cmd_inspect)

    for name, func, text in (("run", _cmd_run, "run a model on an input array"),
                             ("trace", _cmd_trace, "run and print per-node statistics")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model or a quantized .onnx model")
        p.add_argument("--input", required=True, help="input .npy (float, or integer codes with --int)")
        if name == "run":
            p.add_argument("--output", help="where to save the output .npy")
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

    p = sub.add_parser("convert", help="convert a float ONNX model into an integer .intsim model")
    p.add_argument("model", help="float ONNX model")
    p.add_argument("--calibration", required=True, help="calibration inputs .npy (samples first, model layout)")
    p.add_argument("-o", "--output", required=True, help="the .intsim file to write")
    _add_conversion_options(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("compare", help="float vs simulated vs integer, layer by layer")
    p.add_argument("onnx", help="the float ONNX model")
    p.add_argument("model", help="the .intsim model converted from it")
    p.add_argument("--data", required=True, help="inputs .npy (samples first)")
    p.add_argument("--labels", help="integer class labels .npy, for accuracy")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    _add_report_options(p)
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("demo", help="the main job: convert a shipped model, run it on its test set, report")
    p.add_argument("--model", default="resnet_digits",
                   help="shipped model: resnet_digits (default), mobilenet_digits, resnet_fashion, mobilenet_fashion")
    p.add_argument("--calibration-samples", type=int, default=512, help="calibration images (default 512)")
    p.add_argument("--samples", type=int, help="test images to use (default all)")
    _add_conversion_options(p, batch_size=64)
    _add_report_options(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("golden", help="write golden vectors (every tensor, weight, accumulator) for RTL test benches")
    p.add_argument("model", help="an .intsim file, a fully-int8 .tflite model or a quantized .onnx model")
    p.add_argument("--input", required=True, help="input .npy (float, or integer codes with --int)")
    p.add_argument("--out", required=True, help="directory for manifest.json and the files")
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
    p.add_argument("--json", help="also write the report as JSON")
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
    p.add_argument("--json", help="also write the report as JSON")
    p.add_argument("--html", help="also write one self-contained HTML page (tables and plot)")
    p.add_argument("--plot", help="also plot bits needed per layer and agreement per width to a PNG")
    p.add_argument("--calibration", help="float .onnx model: calibration inputs .npy for the conversion")
    p.add_argument("--profile", help="float .onnx model: the profile to convert for (default paper); quantized "
                                     ".onnx model: the profile to run it under (default onnxruntime)")
    p.add_argument("--weight-bits", help="float .onnx model: also sweep weight widths, e.g. 4..8")
    p.add_argument("--activation-bits", help="float .onnx model: also sweep activation widths, e.g. 6,8")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("selftest", help="run a hand-built integer graph on every profile (fast vs naive kernels)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default 0)")
    p.set_defaults(func=_cmd_selftest)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except IntsimError as exc:
        print(f"intsim: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
