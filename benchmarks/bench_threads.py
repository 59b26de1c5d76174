"""intsim on one thread beside intsim on several, in one process: ``Model.run`` with ``set_threads(1)``
and ``set_threads(N)`` interleaved on the same converted model and input.

The cases are those of ``bench_user_path.py`` (single layers and the shipped
models, converted under ``--profile``) and EfficientNet-Lite0 where
``~/.cache/intsim/efficientnet_lite0.onnx`` exists.  Each round calls the
model once per thread count (``set_threads`` between calls: each count keeps
its own bound run); each time is the median over the rounds, after
``COMPILE_AFTER + 1`` warm-up calls of each (the steady state).  Two clocks:
wall time (``time.perf_counter``) and the process's CPU time
(``time.process_time``: every thread's, numba's workers included, so a
thread that spins or idles on a core shows).  The ratio is N threads / one
thread (below 1: the threads help).  The machine's load average is printed
with the table: on a shared machine the wall times of several threads are
the noisiest.

    NUMBA_NUM_THREADS=2 python benchmarks/bench_threads.py [--threads 2] [--profile paper] [--rounds 50]
        [--batches 1 8] [--cases TEXT] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from bench_user_path import LAYERS, MODELS, _layer_model, _shipped_model  # the script's own folder is on sys.path

EFFICIENTNET = Path.home() / ".cache" / "intsim" / "efficientnet_lite0.onnx"


def _times(run_at, counts, rounds) -> dict:
    """``{count: (median wall s, median process CPU s)}`` of ``run_at(count)``, interleaved over ``counts``."""
    from intsim.runtime.bound import COMPILE_AFTER

    for count in counts:
        for _ in range(COMPILE_AFTER + 1):
            run_at(count)
    wall = {count: [] for count in counts}
    cpu = {count: [] for count in counts}
    for _ in range(rounds):
        for count in counts:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run_at(count)
            cpu[count].append(time.process_time() - start_cpu)
            wall[count].append(time.perf_counter() - start_wall)
    return {count: (statistics.median(wall[count]), statistics.median(cpu[count])) for count in counts}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="the thread count timed beside one thread")
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cases", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import llvmlite.binding as llvm
    import onnx

    import intsim
    from intsim.kernels import isa
    from intsim.kernels.threads import set_threads

    rng = np.random.default_rng(0)
    cases = {name: _layer_model(kind, shape, rng) for name, (kind, shape) in LAYERS.items() if args.cases in name}
    cases.update({name: _shipped_model(name) for name in MODELS if args.cases in name})
    if EFFICIENTNET.exists() and args.cases in "efficientnet_lite0":
        model = onnx.load(str(EFFICIENTNET))
        cases["efficientnet_lite0"] = (model.SerializeToString(),
                                       [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]])
    counts = (1, args.threads)
    rows = []
    for name, (model_bytes, x_shape) in cases.items():
        calibration = rng.uniform(0, 1, size=[16] + x_shape).astype(np.float32)
        model = intsim.convert(onnx.load_from_string(model_bytes), calibration, args.profile, progress=False)
        for batch in args.batches:
            x = np.ascontiguousarray(calibration[np.arange(batch) % len(calibration)])

            def run_at(count):
                set_threads(count)
                model.run(x)

            times = _times(run_at, counts, args.rounds)
            set_threads(1)
            (wall1, cpu1), (wall_n, cpu_n) = times[1], times[args.threads]
            rows.append((name, batch, wall1 * 1e3, wall_n * 1e3, cpu1 * 1e3, cpu_n * 1e3))
            print(f"{name:24s} batch {batch}: wall {wall1 * 1e3:8.3f} -> {wall_n * 1e3:8.3f} ms ({wall_n / wall1:.2f})"
                  f"  CPU {cpu1 * 1e3:8.3f} -> {cpu_n * 1e3:8.3f} ms ({cpu_n / cpu1:.2f})", flush=True)
    n = args.threads
    lines = [f"Profile `{args.profile}`, CPU `{llvm.get_host_cpu_name()}`, ISA `{isa.current_isa().name}`, "
             f"one thread beside {n}, interleaved, median of {args.rounds} rounds; load average "
             f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} at the end.", "",
             f"| case | batch | wall 1 ms | wall {n} ms | wall {n}/1 | CPU 1 ms | CPU {n} ms | CPU {n}/1 |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {batch} | {w1:.3f} | {wn:.3f} | {wn / w1:.2f} | {c1:.3f} | {cn:.3f} | {cn / c1:.2f} |"
              for name, batch, w1, wn, c1, cn in rows]
    table = "\n".join(lines) + "\n"
    print()
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
