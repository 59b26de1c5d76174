"""The accumulator sweep's cost: ``intsim.sweep`` over 16..32-bit accumulators beside a 32-bit-only
sweep, for this tree and, with ``--before TREE``, for another source tree (e.g. ``git archive`` of
the commit before the change) run the same way.

Each (tree, widths) case runs in its own subprocess (one numba thread), which converts the shipped
float model on 256 Fashion-MNIST training images (the digits set for ``*_digits``), sweeps once
untimed (numba compiles and caches), then times ``--rounds`` sweeps of ``--images`` test images;
the cases are interleaved round by round and each time is the median.  The ratio column is the
16..32 sweep's time over the 32-bit sweep's time of the same tree.

    python benchmarks/bench_sweep.py [--model resnet_fashion] [--images 64] [--rounds 3]
        [--before /tmp/intsim-before] [--markdown benchmarks/results/sweep.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

WIDTHS = {"16..32": "16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32", "32": "32"}

# Runs in the subprocess: imports intsim from TREE (or the installed one), prints one JSON line per timed sweep.
CHILD = r"""
import importlib.util, json, sys, time
from pathlib import Path
tree, model_name, images, rounds, widths = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if tree:
    root = Path(tree)
    packages = {"intsim": root / "intsim", "intsim.kernels": root / "kernels", "intsim.models": root / "models"}

    class TreeFinder:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            if fullname in packages:
                return importlib.util.spec_from_file_location(
                    fullname, packages[fullname] / "__init__.py", submodule_search_locations=[str(packages[fullname])])
            return None

    sys.meta_path.insert(0, TreeFinder)
import intsim
from intsim.datasets import load_dataset
from intsim.hwval import sweep
dataset = "digits" if model_name.endswith("digits") else "fashion"
calibration = load_dataset(dataset, "train")[0][:256]
x, y = load_dataset(dataset, "test")
x, y = x[:images], y[:images]
model = intsim.convert(str(Path(intsim.__file__).parent.parent / "models" / (model_name + ".onnx")),
                       calibration=calibration, profile="paper", progress=False)
bits = [int(b) for b in widths.split(",")]
sweep(model, x[:8], y[:8], bits, progress=False)
for _ in range(rounds):
    start = time.perf_counter()
    report = sweep(model, x, y, bits, progress=False)
    print(json.dumps({"seconds": time.perf_counter() - start, "file": intsim.__file__,
                      "overflowing": [w.overflowing_outputs for w in report.widths]}), flush=True)
"""


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def run_case(tree, model, images, widths):
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "INTSIM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, tree, model, str(images), "1", WIDTHS[widths]], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet_fashion")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="another source tree (with intsim/, kernels/, models/) to time beside")
    parser.add_argument("--markdown")
    args = parser.parse_args()
    trees = [("after", "")] + ([("before", args.before)] if args.before else [])
    times = {(label, widths): [] for label, _ in trees for widths in WIDTHS}
    counts = {}
    for _ in range(args.rounds):
        for label, tree in trees:
            for widths in WIDTHS:
                result = run_case(tree, args.model, args.images, widths)
                times[label, widths].append(result["seconds"])
                counts.setdefault(widths, {})[label] = result["overflowing"]
                print(label, widths, f"{result['seconds']:.1f} s", result["file"], flush=True)
    for widths, per_tree in counts.items():  # the same reports' overflow counts before and after
        assert len({json.dumps(v) for v in per_tree.values()}) == 1, (widths, per_tree)
    lines = [f"# Accumulator sweep: {args.model}, {args.images} test images, profile paper",
             "", f"CPU: {cpu_name()} (shared, loaded machine), one numba thread; median of {args.rounds} rounds, "
             "each sweep in its own process after an untimed warm-up sweep.", "",
             "| tree | 16..32 bits (s) | 32 bits (s) | 16..32 / 32 |", "|---|---:|---:|---:|"]
    for label, _ in trees:
        wide, narrow = (statistics.median(times[label, w]) for w in ("16..32", "32"))
        lines.append(f"| {label} | {wide:.1f} | {narrow:.1f} | {wide / narrow:.1f}x |")
    lines += ["", "Overflowing outputs per width and policy agree between the trees (asserted)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
