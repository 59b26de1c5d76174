"""Naive twins of :mod:`intsim.kernels.vision`: same names and signatures, plain loops over
``np.ndindex``."""

from __future__ import annotations

import numpy as np


def slice_strided(x, starts, ends, steps):
    shape = tuple(len(range(s, e, k)) for s, e, k in zip(starts, ends, steps))
    out = np.empty(shape, x.dtype)
    for index in np.ndindex(shape):
        out[index] = x[tuple(s + i * k for i, s, k in zip(index, starts, steps))]
    return out


def insert_zeros_nhwc(x, strides, value):
    batch, height, width, channels = x.shape
    sh, sw = strides
    out = np.empty((batch, max(0, (height - 1) * sh + 1), max(0, (width - 1) * sw + 1), channels), x.dtype)
    for n, h, w, c in np.ndindex(out.shape):
        on_grid = h % sh == 0 and w % sw == 0
        out[n, h, w, c] = x[n, h // sh, w // sw, c] if on_grid else value
    return out


def reduce_max(x):
    outer, reduced, inner = x.shape
    out = np.empty((outer, inner), x.dtype)
    for o, k in np.ndindex(outer, inner):
        out[o, k] = max(int(x[o, r, k]) for r in range(reduced))
    return out


def _mirrored(j, size, reflect):
    if not reflect or size == 1:
        return min(max(j, 0), size - 1)
    while not 0 <= j < size:
        j = -j if j < 0 else 2 * (size - 1) - j
    return j


def pad_reflect_edge(x, pads_before, pads_after, reflect):
    shape = tuple(b + n + a for b, n, a in zip(pads_before, x.shape, pads_after))
    out = np.empty(shape, x.dtype)
    for index in np.ndindex(shape):
        out[index] = x[tuple(_mirrored(i - b, n, reflect) for i, b, n in zip(index, pads_before, x.shape))]
    return out


def tile(x, repeats):
    shape = tuple(n * r for n, r in zip(x.shape, repeats))
    out = np.empty(shape, x.dtype)
    for index in np.ndindex(shape):
        out[index] = x[tuple(i % n for i, n in zip(index, x.shape))]
    return out


def arg_max(x, select_last):
    outer, reduced, inner = x.shape
    out = np.empty((outer, inner), np.int32)
    for o, k in np.ndindex(outer, inner):
        column = [int(x[o, r, k]) for r in range(reduced)]
        top = max(column)
        winners = [r for r, v in enumerate(column) if v == top]
        out[o, k] = winners[-1] if select_last else winners[0]
    return out
