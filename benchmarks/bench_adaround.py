"""AdaRound's two costs, each beside its plain form, in one process (white paper §3.4).

* ``step``: the gradient of one Adam step on a minibatch of 256 rows, for
  layer shapes of EfficientNet-Lite0 (synthetic values, 3136 rows kept per
  layer): ``Reconstruction.gradient`` (rows gathered by index from a
  row-major float32 copy into buffers allocated once, float32 matmuls)
  against its twin ``LayerProblem.gradient`` (fancy indexing of the
  ``[G, N, K]`` rows, float64: round one's formulation).
* ``walk``: reaching every layer's input of a shipped model on 128
  calibration images: one node-by-node walk (``Stepper``, what ``adaround``
  and ``empirical_bias_correction`` do) against running the graph from its
  input up to each layer (round one's way, quadratic in depth).

Prints the medians of interleaved runs and their ratio (plain / fast: above
1 means the fast form is faster).

    python benchmarks/bench_adaround.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from intsim.converter.lowering import prepare_float_graph
from intsim.datasets import load_dataset
from intsim.models import model_path
from intsim.ptq.adaround import LayerProblem, Reconstruction
from intsim.ptq.statistics import Stepper, streamed
from intsim.ptq.layers import mac_nodes

# (name, groups, outputs per group, inputs per group): EfficientNet-Lite0 layers.
LAYERS = [
    ("blocks.14 depthwise 5x5", 1152, 1, 25),
    ("blocks.14 expand 1x1", 1, 1152, 192),
    ("blocks.14 project 1x1", 1, 192, 1152),
    ("conv_head 1x1", 1, 1280, 320),
    ("fc", 1, 1000, 1280),
]
ROWS, BATCH = 3136, 256


def _interleaved_medians(plain, fast, repeats):
    """Median seconds of ``plain`` and of ``fast``, called alternately (after one warm-up call each)."""
    times = {plain: [], fast: []}
    for fn in (plain, fast):
        fn()
    for _ in range(repeats):
        for fn in (plain, fast):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return statistics.median(times[plain]), statistics.median(times[fast])


def _row(label, plain, fast):
    print(f"{label:28s} plain {plain * 1e3:9.2f} ms   fast {fast * 1e3:9.2f} ms   ratio {plain / fast:6.2f}",
          flush=True)


def bench_step(repeats):
    rng = np.random.default_rng(0)
    print(f"== step: one Adam step's gradient, {BATCH} of {ROWS} rows")
    for label, groups, outputs, inputs in LAYERS:
        x = rng.normal(size=(groups, ROWS, inputs)).astype(np.float32)
        w = rng.normal(size=(groups, outputs, inputs)) / math.sqrt(inputs)
        b = rng.normal(size=(groups, outputs))
        target = np.clip(np.matmul(x, w.transpose(0, 2, 1)) + b[:, None], 0.0, 6.0)
        scale = np.abs(w).max(axis=2) / 7
        problem = LayerProblem(x, target, w, b, scale, np.zeros_like(scale), -7, 7, (0.0, 6.0))
        fast = Reconstruction(problem, BATCH)
        w32 = w.astype(np.float32)
        rows = [rng.integers(0, ROWS, size=BATCH) for _ in range(repeats + 1)]
        plain_rows, fast_rows = iter(rows), iter(rows)
        _row(label, *_interleaved_medians(lambda: problem.gradient(w, next(plain_rows)),
                                          lambda: fast.gradient(w32, next(fast_rows)), repeats))


def bench_walk(repeats):
    model = "mobilenet_digits"
    fg = prepare_float_graph(model_path(f"{model}.onnx"))
    data = load_dataset("digits", "train")[0][:128]
    layers = mac_nodes(fg)
    position = {n.name: i for i, n in enumerate(fg.nodes)}
    print(f"== walk: every layer input of {model} ({len(layers)} layers), {len(data)} images in batches of 32")

    def from_the_input():
        for node in layers:
            for _ in streamed(fg, data, 32, [node.inputs[0]]):
                pass

    def node_by_node():
        stepper = Stepper(fg, data, 32)
        for node in layers:
            stepper.run_to(position[node.name])

    _row(model, *_interleaved_medians(from_the_input, node_by_node, repeats))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    bench_step(args.repeats)
    bench_walk(max(3, args.repeats // 5))


if __name__ == "__main__":
    main()
