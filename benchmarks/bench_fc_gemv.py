"""Fully-connected layers: the kernel over the int8 weights in place beside the packed launches and onnxruntime.

The layer of ``bench_kernels.py`` (FC 512->1000, ``onnxruntime`` profile,
uint8 activations, int8 symmetric weights, per-channel requantization) and
EfficientNet-Lite0's classifier (1280->1000) at a few batch sizes, run
through ``Model.run_int`` twice: as converted (the weights read where they
lie, :mod:`intsim.kernels.rowdot`) and with the weights packed at bind
time as before (the GEMV launch up to ``GEMV_MAX_ROWS`` rows, else the GEMM
launch), interleaved with onnxruntime QLinearMatMul u8s8 (single thread),
after checking both intsim paths give the same codes.  Prints medians and
their ratios.

    python benchmarks/bench_fc_gemv.py [--rounds 2000] [--rows 1 2 4 8]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def _packed_model(graph):
    """A :class:`~intsim.Model` of ``graph`` whose fully-connected weights are packed (bound with the
    in-place kernel unavailable)."""
    from intsim import Model
    from intsim.kernels import gemm

    model = Model(graph)
    in_place = gemm.in_place_weights
    gemm.in_place_weights = lambda *args: None
    try:
        model._run_plan()
    finally:
        gemm.in_place_weights = in_place
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--depths", type=int, nargs="+", default=[512, 1280])
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    import bench_kernels

    built = []
    build = bench_kernels._intsim_model
    bench_kernels._intsim_model = lambda *a: built.append(build(*a)) or built[-1]
    rng = np.random.default_rng(0)
    for depth in args.depths:
        for rows in args.rows:
            runners, _ = bench_kernels._layer_runners("fc", (rows, depth, 1000), 1, rng, 1)
            model = built[-1]
            packed = _packed_model(model.graph)
            x = rng.integers(0, 256, size=(rows, depth)).astype(np.uint8)
            np.testing.assert_array_equal(packed.run_int(x), model.run_int(x), strict=True)
            times = bench_kernels._median_times({
                "in_place": runners["intsim"],
                "packed": lambda: packed.run_int(x),
                "ort_u8s8": runners["ort_u8s8"],
            }, args.rounds)
            print(f"FC {depth}->1000 rows {rows}: " + "  ".join(f"{k} {v * 1e6:6.2f} us" for k, v in times.items())
                  + f"  in_place/ort {times['in_place'] / times['ort_u8s8']:.3f}"
                  + f"  packed/ort {times['packed'] / times['ort_u8s8']:.3f}"
                  + f"  in_place/packed {times['in_place'] / times['packed']:.3f}", flush=True)
    bench_kernels._intsim_model = build


if __name__ == "__main__":
    main()
