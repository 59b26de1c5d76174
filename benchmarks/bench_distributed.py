"""Serial against a local Dask cluster of N single-threaded workers, in one script (intsim.distributed).

Three jobs on Fashion-MNIST (the shipped ``resnet_fashion`` model, converted for the ``tflite``
profile on 512 training images):

* ``evaluate``: :func:`intsim.evaluate` over the test images (default all 10,000);
* ``bitwidth``: :func:`intsim.hwval.bitwidth_sweep` over weight widths 4..8 (five conversions, each
  run on ``--sweep-samples`` images): the configurations are the units of work;
* ``accumulators``: :func:`intsim.hwval.sweep` over accumulator widths 16..24 on ``--sweep-samples``
  images: batches are the units of work.

Every job runs serially, then on the cluster (data from a ``.npy`` file the workers map), and the two
results must be identical.  Wall times exclude starting the cluster (reported apart) but include
shipping the model and the workers' first numba calls.  ``--nanny-default`` also runs the cluster
jobs with Dask's default worker environment (``MALLOC_TRIM_THRESHOLD_=65536``) to measure its cost.
The machine's load (``os.getloadavg``) is printed: on a shared machine a speedup is only as good as
the cores that were free.

    python benchmarks/bench_distributed.py [--workers 2] [--samples 10000] [--sweep-samples 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import intsim
from intsim.datasets import load_dataset
from intsim.distributed import NpyData, cluster_client, evaluate
from intsim.hwval import bitwidth_sweep, sweep
from intsim.models import model_path


def _jobs(onnx_path, model, calibration, x_path, y, sweep_samples):
    data = NpyData(x_path, np.float32)
    few = NpyData(x_path.with_name("few.npy"), np.float32)
    return {
        "evaluate": lambda client: evaluate(model, data, y, batch_size=250, client=client).to_dict(),
        "bitwidth": lambda client: bitwidth_sweep(onnx_path, calibration, few, y[:sweep_samples],
                                                  weight_bits=range(4, 9), profile="tflite", batch_size=125,
                                                  client=client).to_dict(),
        "accumulators": lambda client: sweep(model, few, y[:sweep_samples], range(16, 25), batch_size=125,
                                             client=client).to_dict(),
    }


def _timed(job, client):
    start = time.perf_counter()
    result = job(client)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--sweep-samples", type=int, default=1000)
    parser.add_argument("--jobs", default="evaluate,bitwidth,accumulators")
    parser.add_argument("--nanny-default", action="store_true",
                        help="also run the cluster jobs with Dask's default worker environment (malloc trim)")
    args = parser.parse_args()
    x_train, _ = load_dataset("fashion", "train")
    x_test, y_test = load_dataset("fashion", "test")
    x, y = x_test[: args.samples], y_test[: args.samples]
    calibration = x_train[:512]
    onnx_path = model_path("resnet_fashion.onnx")
    model = intsim.convert(onnx_path, calibration=calibration, profile="tflite", progress=False)
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs; {len(x)} images, "
          f"sweeps on {args.sweep_samples}")
    with tempfile.TemporaryDirectory() as folder:
        x_path = Path(folder) / "x.npy"
        np.save(x_path, x)
        np.save(x_path.with_name("few.npy"), x[: args.sweep_samples])
        jobs = {k: v for k, v in _jobs(onnx_path, model, calibration, x_path, y, args.sweep_samples).items()
                if k in args.jobs.split(",")}
        serial = {}
        for name, job in jobs.items():
            seconds, result = _timed(job, None)
            serial[name] = (seconds, result)
            print(f"{name:13s} serial      {seconds:8.2f} s   load {os.getloadavg()[0]:.2f}", flush=True)
        environments = [("intsim env", None)] + ([("nanny default", _nanny_default())] if args.nanny_default else [])
        for label, environment in environments:
            start = time.perf_counter()
            with cluster_client(workers=args.workers, environment=environment) as client:
                print(f"cluster of {args.workers} workers ({label}) started in {time.perf_counter() - start:.2f} s")
                for name, job in jobs.items():
                    seconds, result = _timed(job, client)
                    same = json.dumps(result) == json.dumps(serial[name][1])
                    print(f"{name:13s} {args.workers} workers   {seconds:8.2f} s   speedup "
                          f"{serial[name][0] / seconds:5.2f}x   identical: {same}   load {os.getloadavg()[0]:.2f}",
                          flush=True)
                    if not same:
                        raise SystemExit(f"{name}: the cluster's result differs from the serial one")
    print(f"load average after: {os.getloadavg()}")
    n = len(x)
    print(f"per-image cost of evaluate (serial, this machine): {1e3 * serial['evaluate'][0] / n:.3f} ms"
          if "evaluate" in serial else "")


def _nanny_default() -> dict:
    import dask
    import distributed  # noqa: F401  (registers the distributed config)

    return {**dask.config.get("distributed.nanny.pre-spawn-environ"), "NUMBA_NUM_THREADS": "1"}


if __name__ == "__main__":
    main()
