"""Naive twin of :mod:`intsim.kernels.mlas_sgemm`: same names and signatures, plain Python.

Every float32 step is written out; fused multiply-adds are rounded once
(:func:`fma_float32`, checked against the exact rational
:func:`intsim.kernels.naive.onnxruntime_ops.fma_float32` in the tests).
"""

from __future__ import annotations

import numpy as np

from intsim.kernels.mlas_sgemm import EXACT, FMA_BLOCKS, M1, M1_TRANSB


def fma_float32(x, y, z) -> np.float32:
    """``x * y + z`` of float32 operands, rounded once to float32 (``vfmadd``), in float64 steps.

    The product is exact in float64 (24 + 24 significant bits <= 53).  The
    float64 sum ``s`` may round, and rounding it again to float32 differs from
    rounding the exact sum once only where ``s`` lands exactly on the midpoint
    of two float32 values; Knuth's TwoSum gives the exact rounding error of
    ``s``, whose sign says on which side of that midpoint the exact sum lies.
    """
    product, addend = float(x) * float(y), float(z)
    total = product + addend
    virtual = total - addend
    error = (product - virtual) + (addend - (total - virtual))
    rounded = np.float32(total)
    if error != 0.0 and float(rounded) != total:
        other = np.nextafter(rounded, np.float32(np.inf if total > float(rounded) else -np.inf))
        if (float(rounded) + float(other)) / 2 == total and (error > 0) == (float(other) > float(rounded)):
            rounded = other
    return rounded


def _lane_sum(lanes, row, rows) -> np.float32:
    l0, l1, l2, l3, l4, l5, l6, l7 = (np.float32(v) for v in lanes)
    full = rows - rows % 4
    if row < full:  # four rows reduced together
        return (((l0 + l1) + l2) + l3) + (((l4 + l5) + l6) + l7)
    if row < full + (rows % 4 & 2):  # two rows
        return ((l0 + l2) + (l4 + l6)) + ((l1 + l3) + (l5 + l7))
    return ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))  # one row


def mlas_dot(a, b, path, stride_k, m, rows_m, n, cols_n, c) -> np.float32:
    depth = len(a)
    total = np.float32(c)
    if path == EXACT:
        exact = sum(float(a[k]) * float(b[k]) for k in range(depth))  # float64 (each product exact)
        return np.float32(np.float32(exact) + total)
    if path == FMA_BLOCKS:
        for start in range(0, depth, stride_k):
            block = np.float32(0.0)
            for k in range(start, min(depth, start + stride_k)):
                block = fma_float32(a[k], b[k], block)
            total = np.float32(block + total)
        return total
    if path == M1:
        sizes = [4] * (depth // 4) + [2] * (depth % 4 // 2) + [1] * (depth % 2)
        k = 0
        for size in sizes:
            group = np.float32(a[k]) * np.float32(b[k])
            for j in range(k + 1, k + size):
                group = group + np.float32(a[j]) * np.float32(b[j])
            total = np.float32(group + total)
            k += size
        return total
    lanes = [np.float32(0.0)] * 8
    for k in range(depth):
        lanes[k % 8] = lanes[k % 8] + np.float32(a[k]) * np.float32(b[k])
    row, rows = (n, cols_n) if path == M1_TRANSB else (m, rows_m)
    return np.float32(_lane_sum(lanes, row, rows) + total)

