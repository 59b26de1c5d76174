"""Batch-1 fully-connected: the GEMV launch beside the GEMM launch it replaced and onnxruntime, in one process.

The layer of ``bench_kernels.py`` (FC 512->1000, ``onnxruntime`` profile,
uint8 activations, int8 symmetric weights, per-channel requantization) at
1..4 rows, run through ``Model.run_int`` with the GEMV launch (the default)
and with it switched off (``GEMV_MAX_ROWS = 0``: the GEMM launch over 1x1
"pixels"), interleaved with onnxruntime QLinearMatMul u8s8 (single thread).
Prints medians and their ratios.

    python benchmarks/bench_fc_gemv.py [--rounds 2000] [--rows 1 2 4]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    import bench_kernels

    from intsim.kernels import gemm

    gemv_rows = gemm.GEMV_MAX_ROWS

    def with_rows(limit, run):
        def timed():
            gemm.GEMV_MAX_ROWS = limit
            run()
        return timed

    rng = np.random.default_rng(0)
    for rows in args.rows:
        runners, _ = bench_kernels._layer_runners("fc", (rows, 512, 1000), 1, rng, 1)
        out_gemv = runners["intsim"]()
        gemm.GEMV_MAX_ROWS = 0
        np.testing.assert_array_equal(runners["intsim"](), out_gemv, strict=True)
        times = bench_kernels._median_times({
            "intsim_gemv": with_rows(gemv_rows, runners["intsim"]),
            "intsim_gemm": with_rows(0, runners["intsim"]),
            "ort_u8s8": runners["ort_u8s8"],
        }, args.rounds)
        gemm.GEMV_MAX_ROWS = gemv_rows
        print(f"FC 512->1000 rows {rows}: " + "  ".join(f"{k} {v * 1e6:6.2f} us" for k, v in times.items())
              + f"  gemv/ort {times['intsim_gemv'] / times['ort_u8s8']:.3f}"
              + f"  gemm/ort {times['intsim_gemm'] / times['ort_u8s8']:.3f}"
              + f"  gemv/gemm {times['intsim_gemv'] / times['intsim_gemm']:.3f}", flush=True)


if __name__ == "__main__":
    main()
