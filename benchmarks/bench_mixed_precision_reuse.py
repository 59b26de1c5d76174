"""What one configuration of the mixed precision search costs, before and after the calibration
statistics are reused: ``intsim.convert(layer_config=...)`` (the calibration images run through the float
model every time) beside ``lower(plan_quantization(..., statistics=...))`` (ranges chosen from the stored
statistics), interleaved in one process, median wall and CPU seconds, plus one run of the search images.

    python benchmarks/bench_mixed_precision_reuse.py [--models resnet_fashion,mobilenet_fashion] [--reps 7]
        [--calibration 512] [--search 5000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import intsim
from intsim.converter.lowering import lower, plan_quantization
from intsim.datasets import load_dataset
from intsim.importers.onnx import import_onnx
from intsim.mixed_precision import weighted_layers
from intsim.floatgraph.patterns import simplify
from intsim.models import model_path

RESULTS = Path(__file__).parent / "results"


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet_fashion,mobilenet_fashion")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--search", type=int, default=5000)
    args = parser.parse_args()
    x_train, _ = load_dataset("fashion", "train")
    calibration = x_train[:args.calibration]
    search = x_train[args.calibration:args.calibration + args.search]
    lines = ["# Mixed precision: one configuration, calibration run again or reused", "",
             f"`python benchmarks/bench_mixed_precision_reuse.py --models {args.models} --reps {args.reps} "
             f"--calibration {args.calibration} --search {args.search}` on "
             f"{platform.processor() or platform.machine()} ({time.strftime('%Y-%m-%d')}), profile `paper`, every "
             "layer in w4a8 but the first (w8a16); medians of interleaved repetitions, seconds.", "",
             "| model | convert (calibrates) wall / CPU | plan from stored statistics wall / CPU | "
             f"run of {args.search} search images wall / CPU |", "|---|---|---|---|"]
    for name in args.models.split(","):
        raw = import_onnx(model_path(f"{name}.onnx"))
        layers = weighted_layers(simplify(raw))
        config = {la.name: {"weight_bits": 4, "activation_bits": 8} for la in layers}
        config[layers[0].name] = {"weight_bits": 8, "activation_bits": 16}
        stored = plan_quantization(raw, calibration, "paper", progress=False).statistics
        fresh, reused, runs = [], [], []
        for _ in range(args.reps):
            model_a, *t_a = timed(lambda: intsim.convert(raw, calibration, "paper", layer_config=config,
                                                         progress=False))
            model_b, *t_b = timed(lambda: lower(plan_quantization(raw, calibration, "paper", layer_config=config,
                                                                  progress=False, statistics=stored)))
            codes = model_a.quantize_inputs([search[:64]])[0]
            np.testing.assert_array_equal(model_a.run_int(codes), model_b.run_int(codes), strict=True)
            _, *t_run = timed(lambda: [model_b.run(search[i:i + 256]) for i in range(0, len(search), 256)])
            fresh.append(t_a)
            reused.append(t_b)
            runs.append(t_run)

        def median(rows):
            return " / ".join(f"{statistics.median(col):.3f}" for col in zip(*rows))

        lines.append(f"| {name} | {median(fresh)} | {median(reused)} | {median(runs)} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "mixed_precision_reuse.md").write_text(text)


if __name__ == "__main__":
    main()
