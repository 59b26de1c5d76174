"""What issue 14's run-path checks cost: ``Model.run_int`` against the bound steps alone, interleaved.

``Model.run_int`` now checks every node's input shapes against the graph at
the first call with each set of input shapes (:mod:`intsim.shapeguard`), looks
the shapes up on later calls, and collects the overflow counts the kernels
already return for the :class:`~intsim.errors.OverflowWarning`.  This times,
in one process, the full ``run_int`` and the same bound steps called directly
in a plain loop (no input checks, no shape lookup, no overflow bookkeeping),
interleaved round by round, on the hand-built ``tiny_cnn`` (five small nodes:
where per-call overhead weighs most) at batch 1 and 64, and prints the
medians and their ratio.  The ratio bounds the checks' cost from above: the
direct loop also skips the input dtype and range checks ``run_int`` had before.

    python benchmarks/bench_run_guard.py [--rounds 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _bare(model):
    """The bound steps of ``model`` called over its codes with nothing else: the floor of a run."""
    plan = model._run_plan()
    steps = [(step, reads, writes) for step, _, reads, writes, _ in plan.steps]

    def run(x):
        values = [None] * plan.n_slots
        values[plan.input_slots[0]] = x
        for step, reads, writes in steps:
            outputs, _ = step([values[s] for s in reads])
            for s, value in zip(writes, outputs):
                values[s] = value
        return values[plan.output_slots[0]]

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args(argv)

    from intsim import Model
    from intsim.examples import random_codes, tiny_cnn

    model = Model(tiny_cnn("tflite"))
    bare = _bare(model)
    print("| batch | run_int (us) | bound steps alone (us) | ratio |")
    print("|---|---|---|---|")
    for batch in (1, 64):
        x = random_codes(model.inputs[0], batch, seed=batch)
        np.testing.assert_array_equal(model.run_int(x), bare(x), strict=True)
        timings = {"run_int": [], "bare": []}
        for _ in range(args.rounds):
            for name, fn in (("run_int", model.run_int), ("bare", bare)):
                start = time.perf_counter()
                fn(x)
                timings[name].append(time.perf_counter() - start)
        full, floor = (float(np.median(timings[k])) * 1e6 for k in ("run_int", "bare"))
        print(f"| {batch} | {full:.1f} | {floor:.1f} | {full / floor:.3f} |")


if __name__ == "__main__":
    main()
