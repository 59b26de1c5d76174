"""Automatic mixed precision (:func:`intsim.search_mixed_precision`) on the shipped Fashion-MNIST models.

The search measures configurations on ``--search`` training images that are neither calibration
images (the first 512) nor test images; the chosen configuration and the uniform formats are then
measured on the test set, every accuracy on the integer datapath (``Model.run``).  Writes the
Pareto front and the test table to ``benchmarks/results/mixed_precision_<model>.md``.

    python benchmarks/bench_mixed_precision.py [--models resnet_fashion,mobilenet_fashion] [--search 2000]
        [--test 10000] [--candidates w8a16,w8a8,w6a8,w4a8,w3a8] [--objective size]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

import intsim
from intsim.converter.lowering import prepare_float_graph
from intsim.datasets import load_dataset
from intsim.floatgraph.execute import run_float
from intsim.models import model_path

RESULTS = Path(__file__).parent / "results"


def accuracy(run, x, y, batch=500):
    top = np.concatenate([run(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return 100.0 * float(np.mean(top == y))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet_fashion,mobilenet_fashion")
    parser.add_argument("--search", type=int, default=2000, help="training images the search measures on")
    parser.add_argument("--test", type=int, default=10000, help="test images for the final table")
    parser.add_argument("--candidates", default="w8a16,w8a8,w6a8,w4a8,w3a8")
    parser.add_argument("--objective", default="size", choices=("size", "bitops"))
    parser.add_argument("--max-drop", type=float, default=0.005)
    args = parser.parse_args()
    x_train, y_train = load_dataset("fashion", "train")
    x_test, y_test = load_dataset("fashion", "test")
    x_test, y_test = x_test[: args.test], y_test[: args.test]
    calibration = x_train[:512]
    search_x, search_y = x_train[512: 512 + args.search], y_train[512: 512 + args.search]
    candidates = args.candidates.split(",")
    for name in args.models.split(","):
        path = model_path(f"{name}.onnx")
        fg = prepare_float_graph(path)
        float_test = accuracy(lambda b: run_float(fg, [b])[fg.outputs[0]], x_test, y_test)
        start = time.perf_counter()
        result = intsim.search_mixed_precision(path, calibration, search_x, search_y, profile="paper",
                                               candidates=candidates, max_accuracy_drop=args.max_drop,
                                               objective=args.objective, progress=False)
        seconds = time.perf_counter() - start
        rows = []
        for fmt in candidates:
            w, a = (int(b) for b in fmt[1:].split("a"))
            model = intsim.convert(path, calibration, "paper", weight_bits=w, activation_bits=a, progress=False)
            rows.append((f"uniform {fmt}", float(w), accuracy(model.run, x_test, y_test)))
        rows.append(("AMP (chosen)", result.mean_weight_bits, accuracy(result.model.run, x_test, y_test)))
        lines = [f"# Mixed precision: {name}", "",
                 f"`python benchmarks/bench_mixed_precision.py --models {name} --search {args.search} "
                 f"--test {args.test} --candidates {args.candidates} --objective {args.objective}` on "
                 f"{platform.processor() or platform.machine()} ({time.strftime('%Y-%m-%d')}); profile `paper` "
                 f"(per-channel symmetric weights, asymmetric activations), calibration: 512 training images.", "",
                 f"Search on {len(search_x)} training images (float {100 * result.float_metric:.2f}%, target "
                 f"{100 * result.target:.2f}%): {len(result.explored)} configurations measured on the integer "
                 f"datapath in {seconds:.0f} s.  Pareto front explored (search images):", "",
                 "| | mean weight bits | MBitOps / image | search accuracy | layers per format |",
                 "|---|---|---|---|---|"]
        for p in result.pareto:
            counts = {}
            for w, a in p.formats.values():
                counts[f"w{w}a{a}"] = counts.get(f"w{w}a{a}", 0) + 1
            mark = "chosen" if p.formats == result.chosen.formats else ""
            lines.append(f"| {mark} | {p.mean_weight_bits:.2f} | {p.bitops / 1e6:.1f} | {100 * p.metric:.2f}% | "
                         + ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) + " |")
        lines += ["", f"Test set ({len(x_test)} images; float {float_test:.2f}%):", "",
                  "| configuration | mean weight bits | test accuracy | vs float |", "|---|---|---|---|"]
        lines += [f"| {label} | {bits:.2f} | {acc:.2f}% | {acc - float_test:+.2f} pt |" for label, bits, acc in rows]
        lines += ["", "Chosen formats:", "", "| layer | op | weights | format |", "|---|---|---|---|"]
        for layer in result.layers:
            lc = result.layer_config[layer.name]
            lines.append(f"| `{layer.name}` | {layer.op} | {layer.params} | "
                         f"w{lc['weight_bits']}a{lc['activation_bits']} |")
        text = "\n".join(lines) + "\n"
        print(text, flush=True)
        (RESULTS / f"mixed_precision_{name}.md").write_text(text)


if __name__ == "__main__":
    main()
