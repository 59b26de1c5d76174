"""Where a ``Model.run`` spends its time: each numba call of the bound run, timed alone, beside onnxruntime.

The cases of ``bench_user_path.py`` (same models, same calibration), converted
under ``--profile``.  From the second run with a set of input shapes a run is
a fixed list of numba calls (:mod:`intsim.runtime.bound`); each round times
every call once (the calling thread's CPU time, ``time.thread_time``), then
one whole ``Model.run`` and one onnxruntime run of its ``quantize_static``
model.  Printed: the median of each call grouped by kernel (``depthwise``,
``gemm``, the rest by function name), their sum, and the two whole runs.

    python benchmarks/bench_bound_steps.py [--cases TEXT] [--profile paper] [--batches 1 8] [--rounds 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _kind(function) -> str:
    name = getattr(function, "__qualname__", str(function))
    module = getattr(function, "__module__", "")
    return "depthwise" if module.endswith("depthwise") else "gemm" if "gemm" in name else name.split(".")[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--cases", default="depthwise", help="the cases whose name contains this text")
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    import llvmlite.binding as llvm
    import onnx

    import intsim
    from intsim.kernels.threads import thread_count
    from bench_user_path import LAYERS, MODELS, _layer_model, _ort_quantized, _session, _shipped_model

    rng = np.random.default_rng(0)
    cases = {name: _layer_model(kind, shape, rng) for name, (kind, shape) in LAYERS.items()}
    cases.update({name: _shipped_model(name) for name in MODELS})
    print(f"profile {args.profile}, CPU {llvm.get_host_cpu_name()}, one thread, median of {args.rounds} rounds "
          f"(thread clock), ms; load average {os.getloadavg()[0]:.1f}")
    for name, (model_bytes, x_shape) in cases.items():
        calibration = rng.uniform(0, 1, size=[16] + x_shape).astype(np.float32)  # as bench_user_path draws it
        if args.cases not in name:
            continue
        model = intsim.convert(onnx.load_from_string(model_bytes), calibration, args.profile, progress=False)
        session = _session(_ort_quantized(model_bytes, calibration))
        feed = session.get_inputs()[0].name
        for batch in args.batches:
            x = np.ascontiguousarray(calibration[:batch])
            model.run(x)
            model.run(x)  # the second run binds
            plan = model._run_plan()
            signature = tuple((a.shape, a.dtype) for a in model.quantize_inputs([x]))
            calls = plan.bound[(signature, thread_count())][0].calls
            times = [[] for _ in calls]
            whole, ort = [], []
            for _ in range(args.rounds):
                for i, (function, arguments) in enumerate(calls):
                    start = time.thread_time()
                    function(*arguments)
                    times[i].append(time.thread_time() - start)
                start = time.thread_time()
                model.run(x)
                whole.append(time.thread_time() - start)
                start = time.thread_time()
                session.run(None, {feed: x})
                ort.append(time.thread_time() - start)
            kinds = {}
            for (function, _), t in zip(calls, times):
                kinds[_kind(function)] = kinds.get(_kind(function), 0.0) + statistics.median(t) * 1e3
            parts = "  ".join(f"{k} {v:.4f}" for k, v in kinds.items())
            print(f"{name} batch {batch}: {parts}  calls {sum(kinds.values()):.4f}  run {statistics.median(whole) * 1e3:.4f}"
                  f"  ORT {statistics.median(ort) * 1e3:.4f}", flush=True)


if __name__ == "__main__":
    main()
