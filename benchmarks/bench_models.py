"""Whole models on the user's path, beside onnxruntime: float ONNX -> ``intsim.convert`` -> ``Model.run``.

For every shipped model (``models/*.onnx``), EfficientNet-Lite0
(``~/.cache/intsim/efficientnet_lite0.onnx``, written by
``tools/models/export_efficientnet.py``, when present) and every ``--onnx PATH``:

* **conversion**: ``intsim.convert`` (min/max ranges, per profile) beside
  onnxruntime's ``quantize_static`` (QOperator, uint8 activations, int8
  weights, per tensor, min/max) on the same calibration images, both from
  the float ONNX file to a model ready to run;
* **run**: the converted intsim model's ``run`` on NCHW float input beside
  onnxruntime running its own ``quantize_static`` model, at each batch size
  single-threaded (``INTSIM_THREADS=1``, one intra-op thread), and with
  two threads on both sides (``--threads 1 2``).

Calibration images: the shipped models' own training images (digits,
Fashion-MNIST), EfficientNet-Lite0 random crops of the scikit-image photos
(``tools/models/photos.py``; seeded uniform noise without scikit-image).
Runs are interleaved (one call of each runner per round) and each time is the
median over the rounds, after ``COMPILE_AFTER + 1`` warm-up calls of each (the
steady state: intsim's bound run compiled, see :mod:`intsim.runtime.bound`); conversions are interleaved the same way over
``--conversion-rounds`` rounds after a warm-up round (one round and no warm-up for models over 2 MB).  Ratios are
intsim time / onnxruntime time (below 1: intsim is faster).

    python benchmarks/bench_models.py [--onnx PATH ...] [--name models] [--rounds 20]
        [--calibration 512] [--profiles paper tflite onnxruntime] [--batches 1 8] [--threads 1 2]
        [--conversion-rounds 3] [--skip-conversion] [--only TEXT]

writes ``benchmarks/results/<name>.md`` and ``<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_kernels import _median_times, _session  # the script's own folder is on sys.path

RESULTS = Path(__file__).resolve().parent / "results"
EFFICIENTNET = Path.home() / ".cache" / "intsim" / "efficientnet_lite0.onnx"
LARGE_MODEL_BYTES = 2 << 20


def _calibration(path: Path, count: int) -> np.ndarray:
    """``count`` calibration images for the model at ``path`` (see the module docstring)."""
    from intsim.datasets import load_dataset

    dataset = {"digits": "digits", "fashion": "fashion"}.get(path.stem.split("_")[1] if "_" in path.stem else "")
    if path.parent.name == "models" and dataset is not None:
        return load_dataset(dataset, "train")[0][:count]
    if path == EFFICIENTNET:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "models"))
        try:
            from photos import augmented_crops

            return augmented_crops(count, seed=0)
        except ImportError:
            pass
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    shape = [count] + [d.dim_value or 1 for d in dims[1:]]
    return np.random.default_rng(0).uniform(-1.0, 1.0, size=shape).astype(np.float32)


def _quantize_static(path: Path, calibration: np.ndarray, batch_size: int) -> bytes:
    """onnxruntime's QOperator model (u8 activations, s8 weights, per tensor, min/max) as bytes."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: calibration[i:i + batch_size]} for i in range(0, len(calibration), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice on pre-processing
    # Ranges are folded every `keep` batches to bound memory; onnxruntime 1.32 fails ("No data is collected")
    # when the last fold leaves nothing, so `keep` must not divide the number of batches.
    count = -(-len(calibration) // batch_size)
    keep = next(k for k in range(4, max(count, 3) + 2) if count % k)  # above the count, any k leaves a remainder
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "q.onnx"
        quantize_static(str(path), str(out), Reader(), quant_format=QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False,
                        extra_options={"CalibMaxIntermediateOutputs": keep})
        return out.read_bytes()


def _conversions(path: Path, calibration, profiles, rounds: int, batch_size: int) -> tuple[dict, dict, bytes]:
    """Median conversion seconds per converter, the converted intsim models and onnxruntime's model bytes."""
    import intsim

    converted, quantized = {}, {}

    def intsim_runner(profile):
        def run():
            converted[profile] = intsim.convert(str(path), calibration, profile, range_method="minmax",
                                                batch_size=batch_size, progress=False)
        return run

    def ort_run():
        quantized["bytes"] = _quantize_static(path, calibration, batch_size)

    runners = {f"intsim {p}": intsim_runner(p) for p in profiles}
    runners["ORT quantize_static"] = ort_run
    if rounds > 1:  # interleaved rounds after a warm-up round (imports, first calls)
        return _median_times(runners, rounds), converted, quantized["bytes"]
    times = {}
    for name, run in runners.items():
        start = time.perf_counter()
        run()
        times[name] = time.perf_counter() - start
    return times, converted, quantized["bytes"]


def _run_rows(name, converted, ort_bytes, calibration, batches, threads_list, rounds, clock) -> list[dict]:
    from intsim.kernels.gemm import set_threads
    from intsim.runtime.bound import COMPILE_AFTER

    rows = []
    for threads in threads_list:
        set_threads(threads)
        session = _session(ort_bytes, threads)
        input_name = session.get_inputs()[0].name
        for batch in batches:
            x = np.ascontiguousarray(calibration[np.arange(batch) % len(calibration)])
            runners = {f"intsim {p}": (lambda m=m: m.run(x)) for p, m in converted.items()}
            runners["ORT u8s8"] = lambda: session.run(None, {input_name: x})
            # Timed in the steady state: intsim's bound run compiled (after COMPILE_AFTER runs).
            times = _median_times(runners, rounds, warmup=COMPILE_AFTER + 1,
                                  clock=time.thread_time if clock == "thread" else time.perf_counter)
            row = {"model": name, "batch": batch, "threads": threads, "ms": {k: v * 1e3 for k, v in times.items()},
                   "ratios": {k: v / times["ORT u8s8"] for k, v in times.items() if k != "ORT u8s8"}}
            rows.append(row)
            print(f"{name:26s} batch {batch} threads {threads}: "
                  + "  ".join(f"{k} {v:.3f} ms" for k, v in row["ms"].items()), flush=True)
    set_threads(1)
    return rows


def _markdown(meta, conversion_rows, run_rows, profiles) -> str:
    lines = [f"# Whole models: intsim beside onnxruntime ({meta['label']})", "",
             f"CPU `{meta['cpu']}` ({meta['cpu_model']}), ISA `{meta['isa']}`, onnxruntime {meta['onnxruntime']}, "
             f"{meta['calibration']} calibration images (min/max), median of {meta['rounds']} interleaved rounds "
             f"({meta.get('clock', 'wall')} clock); "
             f"{meta['when']}. Shared machine: expect noise. Ratios are intsim / onnxruntime (below 1: intsim faster).",
             ""]
    if conversion_rows:
        lines += ["## Conversion (float ONNX -> runnable model), seconds", "",
                  "| model | " + " | ".join(f"intsim {p}" for p in profiles) + " | ORT quantize_static | "
                  + " | ".join(f"{p}/ORT" for p in profiles) + " |",
                  "|---|" + "---|" * (2 * len(profiles) + 1)]
        for row in conversion_rows:
            s = row["seconds"]
            ort = s["ORT quantize_static"]
            lines.append(f"| {row['model']} | " + " | ".join(f"{s[f'intsim {p}']:.2f}" for p in profiles)
                         + f" | {ort:.2f} | " + " | ".join(f"{s[f'intsim {p}'] / ort:.2f}" for p in profiles) + " |")
        lines.append("")
    lines += ["## Run (NCHW float in, float out), ms", "",
              "| model | batch | threads | " + " | ".join(f"intsim {p}" for p in profiles) + " | ORT u8s8 | "
              + " | ".join(f"{p}/ORT" for p in profiles) + " |",
              "|---|---|---|" + "---|" * (2 * len(profiles) + 1)]
    for row in run_rows:
        ms, r = row["ms"], row["ratios"]
        lines.append(f"| {row['model']} | {row['batch']} | {row['threads']} | "
                     + " | ".join(f"{ms[f'intsim {p}']:.3f}" for p in profiles) + f" | {ms['ORT u8s8']:.3f} | "
                     + " | ".join(f"{r[f'intsim {p}']:.2f}" for p in profiles) + " |")
    return "\n".join(lines) + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, nargs="*", default=[], help="more float ONNX models")
    parser.add_argument("--name", default="models", help="results file stem under benchmarks/results/")
    parser.add_argument("--label", default="", help="a note for the table's title (e.g. before / after)")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch size, both converters")
    parser.add_argument("--profiles", nargs="+", default=["paper", "tflite", "onnxruntime"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="thread: the calling thread's CPU time (time.thread_time), steadier on a loaded machine; "
                             "only with --threads 1 (other threads' time is not counted)")
    parser.add_argument("--conversion-rounds", type=int, default=3)
    parser.add_argument("--skip-conversion", action="store_true", help="time only the runs")
    parser.add_argument("--only", default="", help="only the models whose file name contains this text")
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(max(args.threads)))
    import llvmlite.binding as llvm
    import onnxruntime

    import intsim.models
    from intsim.kernels import isa

    paths = sorted(Path(intsim.models.__file__).parent.glob("*.onnx"))
    paths += [EFFICIENTNET] if EFFICIENTNET.exists() else []
    paths += [p.resolve() for p in args.onnx]
    paths = list(dict.fromkeys(paths))  # a path given twice (EfficientNet's default one) runs once
    paths = [p for p in paths if args.only in p.name]
    meta = {"label": args.label or args.name, "cpu": llvm.get_host_cpu_name(), "cpu_model": _cpu_model(),
            "isa": isa.current_isa().name, "onnxruntime": onnxruntime.__version__, "rounds": args.rounds,
            "calibration": args.calibration, "clock": args.clock, "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    conversion_rows, run_rows = [], []
    for path in paths:
        calibration = _calibration(path, args.calibration)
        large = path.stat().st_size > LARGE_MODEL_BYTES
        rounds = 0 if args.skip_conversion else (1 if large else args.conversion_rounds)
        seconds, converted, ort_bytes = _conversions(path, calibration, args.profiles, max(rounds, 1),
                                                     args.batch_size)
        if rounds:
            conversion_rows.append({"model": path.stem, "rounds": rounds, "seconds": seconds})
            print(f"{path.stem:26s} conversion: " + "  ".join(f"{k} {v:.2f} s" for k, v in seconds.items()),
                  flush=True)
        run_rows += _run_rows(path.stem, converted, ort_bytes, calibration, args.batches, args.threads, args.rounds,
                              args.clock)
        # Written after every model, so that a long run stopped early keeps what it measured.
        table = _markdown(meta, conversion_rows, run_rows, args.profiles)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.name}.md").write_text(table)
        (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "conversion": conversion_rows,
                                                                "runs": run_rows}, indent=2))
    print()
    print(table)
    print(f"wrote {RESULTS / args.name}.md and .json")


if __name__ == "__main__":
    main()
