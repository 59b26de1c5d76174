"""Automatic mixed precision (:func:`intsim.search_mixed_precision`) on the shipped Fashion-MNIST models.

Four disjoint sets of images: calibration (the first 512 training images), the search (the next
``--search`` training images), validation (the first ``--validation`` test images, which the model
was not trained on; ``--validation-source train`` takes training images after the search's instead)
and the held-out test set (the test images after the validation ones, up to ``--test``), which neither
the search nor its validation sees.  The search walks on the search images, checks its point on the
validation images with ``--confidence`` and backs off where it fails; the chosen configuration, the
walk's point before that check and the uniform formats are then measured on the held-out images,
every accuracy on the integer datapath (``Model.run``).  Writes the Pareto front and the held-out
table to ``benchmarks/results/mixed_precision_<model><tag>.md``, and the whole search to ``.json``.

    python benchmarks/bench_mixed_precision.py [--models resnet_fashion,mobilenet_fashion] [--search 5000]
        [--validation 5000] [--validation-source test|train] [--test 10000] [--confidence 0.99]
        [--candidates w8a16,w8a8,w6a8,w4a8,w3a8] [--objective size] [--max-drop 0.005] [--tag _suffix]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

import intsim
from intsim.converter.lowering import prepare_float_graph
from intsim.datasets import load_dataset
from intsim.floatgraph.execute import run_float
from intsim.mixed_precision import format_counts
from intsim.models import model_path

RESULTS = Path(__file__).parent / "results"


def float_runner(path):
    """The float model: onnxruntime where installed (fast), else intsim's float reference."""
    try:
        import onnxruntime
    except ImportError:
        fg = prepare_float_graph(path)
        return lambda batch: run_float(fg, [batch])[fg.outputs[0]]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def accuracy(run, x, y, batch=500):
    top = np.concatenate([run(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return 100.0 * float(np.mean(top == y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet_fashion,mobilenet_fashion")
    parser.add_argument("--search", type=int, default=5000, help="training images the walk measures on")
    parser.add_argument("--validation", type=int, default=5000, help="images the walk's point is checked on")
    parser.add_argument("--validation-source", choices=("test", "train"), default="test",
                        help="test: the first test images (unseen in training); train: training images")
    parser.add_argument("--test", type=int, default=10000, help="test images used in all (held out: after "
                                                                "the validation ones)")
    parser.add_argument("--confidence", type=float, default=0.99)
    parser.add_argument("--candidates", default="w8a16,w8a8,w6a8,w4a8,w3a8")
    parser.add_argument("--objective", default="size", choices=("size", "bitops"))
    parser.add_argument("--max-drop", type=float, default=0.005)
    parser.add_argument("--tag", default="", help="suffix of the result files' names")
    args = parser.parse_args()
    x_train, y_train = load_dataset("fashion", "train")
    x_test, y_test = load_dataset("fashion", "test")
    calibration = x_train[:512]
    search = slice(512, 512 + args.search)
    search_x, search_y = x_train[search], y_train[search]
    if args.validation_source == "test":
        check_x, check_y = x_test[:args.validation], y_test[:args.validation]
        held_x, held_y = x_test[args.validation:args.test], y_test[args.validation:args.test]
        where = f"test images 0-{args.validation - 1}"
    else:
        check = slice(search.stop, search.stop + args.validation)
        check_x, check_y = x_train[check], y_train[check]
        held_x, held_y = x_test[:args.test], y_test[:args.test]
        where = f"training images {check.start}-{check.stop - 1}"
    held_from = args.test - len(held_x)
    candidates = args.candidates.split(",")
    command = (f"python benchmarks/bench_mixed_precision.py --models {{name}} --search {args.search} "
               f"--validation {args.validation} --validation-source {args.validation_source} --test {args.test} "
               f"--confidence {args.confidence} --candidates {args.candidates} --objective {args.objective} "
               f"--max-drop {args.max_drop}{' --tag ' + args.tag if args.tag else ''}")
    for name in args.models.split(","):
        path = model_path(f"{name}.onnx")
        float_held = accuracy(float_runner(path), held_x, held_y)
        wall, cpu = time.perf_counter(), time.process_time()
        result = intsim.search_mixed_precision(path, calibration, search_x, search_y, profile="paper",
                                               candidates=candidates, max_accuracy_drop=args.max_drop,
                                               objective=args.objective, validation=(check_x, check_y),
                                               confidence=args.confidence, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

        def held_out(layer_config):
            model = intsim.convert(path, calibration, "paper", layer_config=layer_config, progress=False)
            return accuracy(model.run, held_x, held_y)

        rows = []
        for fmt in candidates:
            w, a = (int(b) for b in fmt[1:].split("a"))
            model = intsim.convert(path, calibration, "paper", weight_bits=w, activation_bits=a, progress=False)
            rows.append((f"uniform {fmt}", float(w), accuracy(model.run, held_x, held_y)))
        chosen = result.chosen
        walked = result.walked
        points = sorted({id(p): p for p in [*result.pareto, walked, chosen]}.values(),
                        key=lambda p: (p.mean_weight_bits, p.bitops))
        lines = [f"# Mixed precision: {name}", "",
                 f"`{command.format(name=name)}` on {platform.processor() or platform.machine()} "
                 f"({time.strftime('%Y-%m-%d')}); profile `paper` (per-channel symmetric weights, asymmetric "
                 "activations), calibration: 512 training images.", "",
                 f"Walk on {len(search_x)} training images (float {100 * result.float_metric:.2f}%, target "
                 f"{100 * result.target:.2f}%); validation on {where} (float "
                 f"{100 * result.validation_float_metric:.2f}%; a point holds where the {100 * args.confidence:.0f}% "
                 f"upper bound of its drop is at most {100 * args.max_drop:.2f} pt); held out: test images "
                 f"{held_from}-{args.test - 1} ({len(held_x)}, float {float_held:.2f}%).  "
                 f"{len(result.explored)} configurations measured on the integer datapath in {wall:.0f} s "
                 f"({cpu:.0f} s of CPU); the budget {'is met' if result.met else 'is NOT met'}.", "",
                 "The Pareto front explored (search images), with the walk's point before the validation check:", "",
                 "| | mean weight bits | MBitOps / image | search accuracy | validation drop (bound) | "
                 "held-out accuracy | held-out vs float | layers per format |",
                 "|---|---|---|---|---|---|---|---|"]
        for p in points:
            mark = " + ".join(m for m, q in (("walk", walked), ("chosen", chosen)) if q.formats == p.formats)
            checked = "" if p.validation_drop is None else \
                f"{100 * p.validation_drop:+.2f} ({100 * p.validation_bound:+.2f}) pt"
            acc = held_out(p.layer_config)
            lines.append(f"| {mark} | {p.mean_weight_bits:.2f} | {p.bitops / 1e6:.1f} | {100 * p.metric:.2f}% | "
                         f"{checked} | {acc:.2f}% | {acc - float_held:+.2f} pt | "
                         + ", ".join(f"{k} x{v}" for k, v in format_counts(p).items()) + " |")
            if p is walked:
                rows.append(("AMP, the walk alone (no validation)", p.mean_weight_bits, acc))
            if p is chosen:
                rows.append(("AMP, validated (chosen)", p.mean_weight_bits, acc))
        lines += ["", f"Held-out test images ({len(held_x)}; float {float_held:.2f}%):", "",
                  "| configuration | mean weight bits | held-out accuracy | vs float |", "|---|---|---|---|"]
        lines += [f"| {label} | {bits:.2f} | {acc:.2f}% | {acc - float_held:+.2f} pt |" for label, bits, acc in rows]
        lines += ["", "Chosen formats:", "", "| layer | op | weights | walk | chosen |", "|---|---|---|---|---|"]
        for layer in result.layers:
            lines.append(f"| `{layer.name}` | {layer.op} | {layer.params} | "
                         f"w{walked.formats[layer.name][0]}a{walked.formats[layer.name][1]} | "
                         f"w{chosen.formats[layer.name][0]}a{chosen.formats[layer.name][1]} |")
        text = "\n".join(lines) + "\n"
        print(text, flush=True)
        (RESULTS / f"mixed_precision_{name}{args.tag}.md").write_text(text)
        document = {**result.to_dict(), "wall_seconds": wall, "cpu_seconds": cpu, "float_held_out": float_held,
                    "held_out": {label: acc for label, _, acc in rows}}
        (RESULTS / f"mixed_precision_{name}{args.tag}.json").write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
