"""Ablations of the white paper's PTQ algorithms (§3.1-3.5) on the shipped models, on the integer datapath.

Every accuracy is top-1 of the converted integer model (``Model.run``: the
bit-exact integer graph, float only at the input quantizer and the output
dequantizer) on the test set, next to the float model's on the same images.
Calibration: the first 512 training images.  Each section prints its table and
writes it as markdown to ``benchmarks/results/ptq_<section>.md``.

    python benchmarks/bench_ptq.py [--section all|standard|cle|adaround|bias|range|efficientnet|efficientnet_adaround]
                                   [--fashion-test 2000]
                                   [--adaround-iterations 10000] [--adaround-learning-rate 1e-3]

Sections:

* ``range``: range setting (§3.1) at W8/W6/W4 with A8, per-tensor weights.
* ``cle``: cross-layer equalization and bias absorption (§3.2) on the
  MobileNetV2-style models, W8A8 per-tensor against per-channel.
* ``bias``: bias correction (§3.3), per-tensor min/max weights.
* ``adaround``: AdaRound against rounding to nearest at W4A8 (§3.4), per-channel.
* ``standard``: the standard pipeline (§3.5) at W8A8 and W4A8 against plain
  min/max conversion, per-channel (the ``paper`` profile).
* ``efficientnet``: EfficientNet-Lite0, agreement with float (no labels).
* ``efficientnet_adaround``: EfficientNet-Lite0, AdaRound vs nearest at W8A8 and W4A8, and the
  standard pipeline at W4A8 (``--adaround-iterations 2000``: about 15 minutes on one core).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import intsim
from intsim.converter.lowering import prepare_float_graph
from intsim.datasets import load_dataset
from intsim.floatgraph.execute import run_float
from intsim.models import model_path
from intsim.ptq.adaround import AdaRoundOptions
from intsim.ptq.statistics import channel_maxima
from intsim.ptq.cle import cross_layer_equalization, equalization_pairs

MODELS = ("resnet_digits", "mobilenet_digits", "resnet_fashion", "mobilenet_fashion")
MOBILENETS = ("mobilenet_digits", "mobilenet_fashion")
RESULTS = Path(__file__).resolve().parent / "results"
CALIBRATION = 512
BATCH = 1000


class Bench:
    def __init__(self, fashion_test: int, adaround: AdaRoundOptions):
        self.fashion_test = fashion_test
        self.adaround = adaround
        self._data = {}
        self._float = {}

    def data(self, model):
        dataset = model.split("_")[-1]
        if dataset not in self._data:
            x_train, _ = load_dataset(dataset, "train")
            x_test, y_test = load_dataset(dataset, "test")
            if dataset == "fashion" and self.fashion_test:
                x_test, y_test = x_test[: self.fashion_test], y_test[: self.fashion_test]
            self._data[dataset] = (x_train[:CALIBRATION], x_test, y_test)
        return self._data[dataset]

    def test_note(self, models):
        sizes = sorted({f"{m.split('_')[-1]}: {len(self.data(m)[2])} test images" for m in models})
        return f"calibration {CALIBRATION} training images; {', '.join(sizes)}"

    def float_accuracy(self, model, graph=None):
        key = model if graph is None else (model, id(graph))
        if key not in self._float:
            fg = graph if graph is not None else prepare_float_graph(model_path(f"{model}.onnx"))
            _, x, y = self.data(model)
            logits = np.concatenate([run_float(fg, [x[i : i + BATCH]])[fg.outputs[0]] for i in range(0, len(x), BATCH)])
            self._float[key] = 100.0 * float(np.mean(logits.argmax(axis=1) == y))
        return self._float[key]

    def integer_accuracy(self, model, source=None, **kwargs):
        calibration, x, y = self.data(model)
        start = time.perf_counter()
        converted = intsim.convert(source if source is not None else model_path(f"{model}.onnx"),
                                   calibration=calibration, progress=False, **kwargs)
        seconds = time.perf_counter() - start
        logits = np.concatenate([converted.run(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])
        accuracy = 100.0 * float(np.mean(logits.argmax(axis=1) == y))
        print(f"  {model} {kwargs}: {accuracy:.2f}% (converted in {seconds:.1f} s)", flush=True)
        return accuracy


def _table(title, note, header, rows):
    lines = [f"### {title}", "", note, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _emit(section, text):
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ptq_{section}.md").write_text(text)
    print("\n" + text, flush=True)


def _pct(value):
    return f"{value:.2f}"


def section_range(bench):
    methods = [("minmax", "minmax", None), ("mse", "minmax", None), ("mse", "percentile", None),
               ("mse", "mse", None), ("mse", "mse", "cross_entropy")]
    rows = []
    for model in MODELS:
        rows.append([model, "float", ""] + [_pct(bench.float_accuracy(model))] * 3)
        for weight_method, act_method, logits in methods:
            accs = [bench.integer_accuracy(model, weight_bits=bits, per_channel=False, weight_range_method=weight_method,
                                           range_method=act_method, logits_range_method=logits)
                    for bits in (8, 6, 4)]
            rows.append([model, weight_method, act_method + (" + CE logits" if logits else "")] + [_pct(a) for a in accs])
    header = ["model", "weights", "activations", "W8A8", "W6A8", "W4A8"]
    _emit("range", _table("Range setting (white paper §3.1), per-tensor weights, integer top-1 %",
                          bench.test_note(MODELS), header, rows))


def section_cle(bench):
    rows = []
    for model in MOBILENETS:
        fg = prepare_float_graph(model_path(f"{model}.onnx"))
        calibration = bench.data(model)[0]
        pairs = equalization_pairs(fg)
        clipped = [n.outputs[0] for n in fg.nodes if n.name in {p.first for p in pairs}]
        equalized, _, _ = cross_layer_equalization(fg, clip_maxima=channel_maxima(fg, clipped, calibration, 64))
        rows += [
            [model, "float", _pct(bench.float_accuracy(model))],
            [model, "float, equalized",
             _pct(bench.float_accuracy(model, equalized))],
            [model, "W8A8 per-channel", _pct(bench.integer_accuracy(model, per_channel=True))],
            [model, "W8A8 per-tensor", _pct(bench.integer_accuracy(model, per_channel=False))],
            [model, f"W8A8 per-tensor + CLE ({len(pairs)} pairs)",
             _pct(bench.integer_accuracy(model, source=equalized, per_channel=False))],
            [model, "W8A8 per-tensor + CLE + bias absorption",
             _pct(bench.integer_accuracy(model, per_channel=False, cle=True))],
        ]
        for bits in (6, 4):
            rows += [[model, f"W{bits}A8 per-channel", _pct(bench.integer_accuracy(model, weight_bits=bits))],
                     [model, f"W{bits}A8 per-tensor",
                      _pct(bench.integer_accuracy(model, per_channel=False, weight_bits=bits))],
                     [model, f"W{bits}A8 per-tensor + CLE + bias absorption",
                      _pct(bench.integer_accuracy(model, per_channel=False, weight_bits=bits, cle=True))]]
    _emit("cle", _table("Cross-layer equalization and bias absorption (white paper §3.2), integer top-1 %",
                        bench.test_note(MOBILENETS) + "; min/max ranges",
                        ["model", "configuration", "top-1 %"], rows))


def section_bias(bench):
    rows = []
    for model in MODELS:
        row = [model, _pct(bench.float_accuracy(model))]
        for bits in (8, 6, 4):
            for method in (None, "empirical", "analytic"):
                row.append(_pct(bench.integer_accuracy(model, weight_bits=bits, per_channel=False,
                                                       bias_correction=method)))
        rows.append(row)
    header = ["model", "float"] + [f"W{b}A8 {m}" for b in (8, 6, 4) for m in ("none", "empirical", "analytic")]
    _emit("bias", _table("Bias correction (white paper §3.3), per-tensor min/max weights, integer top-1 %",
                         bench.test_note(MODELS) + ". Empirical: per layer, the weight-quantized model's mean "
                         "pre-activation (earlier layers quantized and corrected) against the float model's. "
                         "Analytic: the shipped models' batch norms were folded by the "
                         "exporter, so the pre-activation mean/std measured on the calibration data stand in for "
                         "beta/gamma.", header, rows))


def section_adaround(bench):
    rows = []
    for model in MODELS:
        rows.append([model, _pct(bench.float_accuracy(model)),
                     _pct(bench.integer_accuracy(model, weight_bits=4, weight_range_method="mse")),
                     _pct(bench.integer_accuracy(model, weight_bits=4, weight_range_method="mse",
                                                 adaround=bench.adaround))])
    o = bench.adaround
    _emit("adaround", _table("AdaRound vs rounding to nearest (white paper §3.4), W4A8 per-channel, MSE weight "
                             "ranges, integer top-1 %",
                             bench.test_note(MODELS) + f"; AdaRound {o.iterations} iterations, batch {o.batch_size} "
                             f"rows, lambda {o.reg_weight}, lr {o.learning_rate}",
                             ["model", "float", "nearest", "AdaRound"], rows))


def section_standard(bench):
    rows = []
    for model in MODELS:
        row = [model, _pct(bench.float_accuracy(model))]
        for bits in (8, 4):
            row.append(_pct(bench.integer_accuracy(model, weight_bits=bits)))
            row.append(_pct(bench.integer_accuracy(model, weight_bits=bits, pipeline="standard",
                                                   adaround=bench.adaround)))
        rows.append(row)
    o = bench.adaround
    _emit("standard", _table("Standard PTQ pipeline (white paper §3.5), per-channel weights, integer top-1 %",
                             bench.test_note(MODELS) + "; baseline: min/max weights and activations; standard: CLE + "
                             f"bias absorption, MSE weights, AdaRound ({o.iterations} iterations, lr "
                             f"{o.learning_rate}), MSE activations, cross-entropy logits",
                             ["model", "float", "W8A8 min/max", "W8A8 standard", "W4A8 min/max", "W4A8 standard"],
                             rows))


def _efficientnet_setup(bench):
    """The EfficientNet-Lite0 sections' inputs: ``(onnx path, calibration crops, evaluation images (the photos
    and other random crops), the float model's top-1 on them, batch size)``."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
    from photos import augmented_crops, load_photos

    onnx = Path.home() / ".cache" / "intsim" / "efficientnet_lite0.onnx"
    calibration = augmented_crops(bench.efficientnet_calibration, seed=0)
    x = np.concatenate([load_photos()[0], augmented_crops(bench.efficientnet_eval, seed=1)])
    fg = prepare_float_graph(onnx)
    batch = 16
    top1 = np.concatenate([run_float(fg, [x[i : i + batch]])[fg.outputs[0]] for i in range(0, len(x), batch)])
    return onnx, calibration, x, top1.argmax(axis=1), batch


def section_efficientnet(bench):
    """EfficientNet-Lite0 (ReLU6, depthwise): no labels here, so top-1 agreement with the float model on
    scikit-image's photos and random crops of them (``models/eval_efficientnet.py``); calibration on
    other random crops."""
    onnx, calibration, x, top1, batch = _efficientnet_setup(bench)
    rows = []
    configurations = [("W8A8 per-channel", {}), ("W8A8 per-tensor", {"per_channel": False}),
                      ("W8A8 per-tensor + CLE + bias absorption", {"per_channel": False, "cle": True}),
                      ("W8A8 per-tensor + CLE + bias absorption + empirical bias correction",
                       {"per_channel": False, "cle": True, "bias_correction": "empirical"}),
                      ("W8A8 per-channel, standard pipeline without AdaRound",
                       {"pipeline": "standard", "adaround": False}),
                      ("W6A8 per-channel", {"weight_bits": 6}),
                      ("W6A8 per-channel, standard pipeline without AdaRound",
                       {"weight_bits": 6, "pipeline": "standard", "adaround": False})]
    for label, kwargs in configurations:
        start = time.perf_counter()
        model = intsim.convert(onnx, calibration=calibration, batch_size=batch, progress=False, **kwargs)
        logits = np.concatenate([model.run(x[i : i + batch]) for i in range(0, len(x), batch)])
        agreement = 100.0 * float(np.mean(logits.argmax(axis=1) == top1))
        print(f"  efficientnet {label}: {agreement:.2f}% ({time.perf_counter() - start:.0f} s)", flush=True)
        rows.append(["efficientnet_lite0", label, _pct(agreement)])
    _emit("efficientnet", _table(
        "EfficientNet-Lite0: top-1 agreement of the integer model with float, %",
        f"calibration {len(calibration)} random crops; evaluated on {len(x)} images (the photos and random crops); "
        "AdaRound: ptq_efficientnet_adaround.md", ["model", "configuration", "agreement %"], rows))


def section_efficientnet_adaround(bench):
    """EfficientNet-Lite0: AdaRound against rounding to nearest at W8A8 and W4A8 per-channel (MSE weight
    ranges), and the standard pipeline at W4A8; agreement with float as in :func:`section_efficientnet`."""
    onnx, calibration, x, top1, batch = _efficientnet_setup(bench)
    o = bench.adaround
    rows = []
    for bits in (8, 4):
        configurations = [("nearest", {"weight_range_method": "mse"}),
                          ("AdaRound", {"weight_range_method": "mse", "adaround": o})]
        if bits == 4:
            configurations.append(("standard pipeline (CLE, MSE, AdaRound)", {"pipeline": "standard", "adaround": o}))
        for label, kwargs in configurations:
            start = time.perf_counter()
            model = intsim.convert(onnx, calibration=calibration, batch_size=batch, progress=False, weight_bits=bits,
                                   **kwargs)
            seconds = time.perf_counter() - start
            logits = np.concatenate([model.run(x[i : i + batch]) for i in range(0, len(x), batch)])
            agreement = 100.0 * float(np.mean(logits.argmax(axis=1) == top1))
            print(f"  efficientnet W{bits}A8 {label}: {agreement:.2f}% (converted in {seconds:.0f} s)", flush=True)
            rows.append(["efficientnet_lite0", f"W{bits}A8 per-channel", label, _pct(agreement), f"{seconds:.0f}"])
    _emit("efficientnet_adaround", _table(
        "EfficientNet-Lite0: AdaRound vs rounding to nearest (white paper §3.4), top-1 agreement of the integer "
        "model with float, %",
        f"calibration {len(calibration)} random crops; evaluated on {len(x)} images (the photos and random crops); "
        f"MSE weight ranges, min/max activations (standard pipeline: MSE activations, cross-entropy logits); "
        f"AdaRound {o.iterations} iterations per layer (the paper's 10,000 cut for CPU time), batch "
        f"{o.batch_size} rows, lambda {o.reg_weight}, lr {o.learning_rate}; convert time on one CPU core",
        ["model", "weights", "rounding", "agreement %", "convert s"], rows))


SECTIONS = {"standard": section_standard, "cle": section_cle, "adaround": section_adaround, "bias": section_bias,
            "range": section_range, "efficientnet": section_efficientnet,
            "efficientnet_adaround": section_efficientnet_adaround}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=("all", *SECTIONS), default="all",
                        help="efficientnet needs ~/.cache/intsim/efficientnet_lite0.onnx and scikit-image")
    parser.add_argument("--fashion-test", type=int, default=2000,
                        help="Fashion-MNIST test images to evaluate (default 2000; 0: all 10,000)")
    parser.add_argument("--adaround-iterations", type=int, default=AdaRoundOptions.iterations)
    parser.add_argument("--adaround-learning-rate", type=float, default=AdaRoundOptions.learning_rate)
    parser.add_argument("--efficientnet-calibration", type=int, default=64, help="calibration crops (default 64)")
    parser.add_argument("--efficientnet-eval", type=int, default=64, help="evaluated random crops (default 64)")
    args = parser.parse_args(argv)
    bench = Bench(args.fashion_test, AdaRoundOptions(iterations=args.adaround_iterations,
                                                     learning_rate=args.adaround_learning_rate))
    bench.efficientnet_calibration, bench.efficientnet_eval = args.efficientnet_calibration, args.efficientnet_eval
    for name, fn in SECTIONS.items():
        if args.section in ("all", name):
            print(f"== {name}", flush=True)
            fn(bench)


if __name__ == "__main__":
    main()
