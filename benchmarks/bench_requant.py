"""The requantization epilogue alone: ns per element of ``mac.requantize_rows`` per rounding mode and channel count.

The core is driven the way the fused GEMM drives it: from compiled code, one
call per chunk of ``CHUNK_ROWS`` output rows, each reading a ``[CHUNK_ROWS, C]``
int32 accumulator chunk (one chunk reused, so it sits in cache as the GEMM's
just-written chunk does) into its rows of a ``[rows, C]`` uint8 output (zero
point 120, clamp [0, 255]).  Each mode runs with
one scale for every channel (per-tensor, as onnxruntime's ``quantize_static``
and many TFLite models give) and with a scale per channel; the runs are
interleaved and each time is the median over the rounds.  Numbers only, no
peer: the end-to-end comparison with onnxruntime is ``bench_kernels.py``.

    python benchmarks/bench_requant.py [--rounds 50] [--elements 1204224] [--channels 16 24 96 1152]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

os.environ.setdefault("NUMBA_NUM_THREADS", "1")

from numba import njit  # noqa: E402

from intsim.fixedpoint import ROUNDING_MODES, Rescale  # noqa: E402
from intsim.kernels.gemm_chunk import CHUNK_ROWS  # noqa: E402
from intsim.kernels.mac import requantize_rows  # noqa: E402


@njit(cache=True)
def _epilogue(acc, multiplier, shift, scale, rounding, chunk_rows, out):
    # The fused GEMM's epilogue calls, one per chunk of rows.
    count = 0
    for m0 in range(0, out.shape[0], chunk_rows):
        m1 = min(m0 + chunk_rows, out.shape[0])
        count += requantize_rows(rounding, acc[:m1 - m0], 0, multiplier, shift, scale, 31, 120, 0, 255, out[m0:m1])
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--elements", type=int, default=112 * 112 * 96, help="accumulators per run (rounded to rows)")
    parser.add_argument("--channels", type=int, nargs="+", default=[16, 24, 96, 1152])
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"{'mode':18s} {'scales':12s}" + "".join(f" {'C=' + str(c):>9s}" for c in args.channels) + "   (ns/elem)")
    results = {}
    for channels in args.channels:
        rows = max(1, args.elements // channels)
        acc = rng.integers(-40000, 40000, size=(CHUNK_ROWS, channels)).astype(np.int32)
        out = np.empty((rows, channels), np.uint8)
        runners = {}
        for mode in ROUNDING_MODES:
            for kind, real in (("per-tensor", np.full(channels, 2.5e-3)),
                               ("per-channel", rng.uniform(1.5e-3, 3.5e-3, channels))):
                rq = Rescale.from_real(real, mode)
                multiplier, shift, scale = rq.kernel_args(channels)
                runners[mode, kind] = (lambda a=(acc, multiplier, shift, scale, rq.code, CHUNK_ROWS, out):
                                       _epilogue(*a))
        for run in runners.values():
            run()
        times = {key: [] for key in runners}
        for _ in range(args.rounds):
            for key, run in runners.items():
                start = time.perf_counter()
                run()
                times[key].append(time.perf_counter() - start)
        for key, t in times.items():
            results.setdefault(key, {})[channels] = statistics.median(t) * 1e9 / out.size
    for (mode, kind), per_channels in results.items():
        print(f"{mode:18s} {kind:12s}" + "".join(f" {per_channels[c]:9.3f}" for c in args.channels), flush=True)


if __name__ == "__main__":
    main()
