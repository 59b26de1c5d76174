"""Data-movement kernels the real vision models brought in: strided slices (ONNX Slice and Split),
zero insertion (the first half of a transposed convolution, whose second half is an ordinary conv2d
on the MAC datapath), the largest code over axes, reflect / edge padding and tiling.

Codes are moved, never changed, so the output is quantized like the input.  Each public function
allocates its output and calls a numba core on a rank-6 view (unit axes in front); inputs are trusted
(:mod:`intsim.graph.ops.vision` validates them).  The naive twins are in
:mod:`intsim.kernels.naive.vision`.
"""

from __future__ import annotations

import numpy as np

from intsim.jit import jit

# Rank the cores work on; a tensor of lower rank gets unit axes in front.
CORE_RANK = 6


def sliced_size(size: int, start: int, end: int, step: int) -> int:
    """Elements ``range(start, end, step)`` holds (``end`` -1 with a negative step: through index 0)."""
    return len(range(start, end, step))


@jit
def _slice_core(x, starts, steps, out):
    for a in range(out.shape[0]):
        ia = starts[0] + a * steps[0]
        for b in range(out.shape[1]):
            ib = starts[1] + b * steps[1]
            for c in range(out.shape[2]):
                ic = starts[2] + c * steps[2]
                for d in range(out.shape[3]):
                    id_ = starts[3] + d * steps[3]
                    for e in range(out.shape[4]):
                        ie = starts[4] + e * steps[4]
                        for f in range(out.shape[5]):
                            out[a, b, c, d, e, f] = x[ia, ib, ic, id_, ie, starts[5] + f * steps[5]]


def slice_strided(x, starts, ends, steps):
    """``x[starts[i]:ends[i]:steps[i]]`` on every axis ``i`` (an end of -1 with a negative step goes
    through index 0), as a new C-contiguous array of ``x.dtype``.

    Parameters
    ----------
    x : integer array of rank <= 6
    starts, ends, steps : sequences of int, one per axis of ``x``
        Starts and ends already clamped to the axis (ONNX Slice's normalisation); steps non-zero.
    """
    pad = CORE_RANK - x.ndim
    shape = tuple(sliced_size(n, s, e, k) for n, s, e, k in zip(x.shape, starts, ends, steps))
    out = np.empty(shape, x.dtype)
    if out.size:
        _slice_core(np.ascontiguousarray(x).reshape((1,) * pad + x.shape),
                    np.array((0,) * pad + tuple(starts), np.int64), np.array((1,) * pad + tuple(steps), np.int64),
                    out.reshape((1,) * pad + shape))
    return out


@jit
def _insert_zeros_core(x, stride_h, stride_w, out):
    batch, height, width, channels = x.shape
    for n in range(batch):
        for h in range(height):
            for w in range(width):
                for c in range(channels):
                    out[n, h * stride_h, w * stride_w, c] = x[n, h, w, c]


def insert_zeros_nhwc(x, strides, value):
    """``x`` [N, H, W, C] spread out by ``strides`` (sh, sw): ``out[n, h*sh, w*sw, c] = x[n, h, w, c]``,
    every other position ``value`` (the zero point: real 0), shape [N, (H-1)*sh + 1, (W-1)*sw + 1, C].

    A transposed convolution with stride s is this followed by a stride-1 convolution of the flipped
    kernel (see :mod:`intsim.converter.lower_vision`).
    """
    batch, height, width, channels = x.shape
    sh, sw = strides
    out = np.full((batch, max(0, (height - 1) * sh + 1), max(0, (width - 1) * sw + 1), channels), value, x.dtype)
    if x.size:
        _insert_zeros_core(np.ascontiguousarray(x), int(sh), int(sw), out)
    return out


@jit
def _reduce_max_core(x, out):
    outer, reduced, inner = x.shape
    for o in range(outer):
        for k in range(inner):
            out[o, k] = x[o, 0, k]
        for r in range(1, reduced):
            for k in range(inner):
                if x[o, r, k] > out[o, k]:
                    out[o, k] = x[o, r, k]


def reduce_max(x):
    """The largest code over axis 1 of ``x`` [outer, R, inner] (R >= 1): an array [outer, inner] of
    ``x.dtype``.  Codes order like the reals they stand for, so the output keeps the input's
    quantization."""
    out = np.empty((x.shape[0], x.shape[2]), x.dtype)
    if out.size:
        _reduce_max_core(np.ascontiguousarray(x), out)
    return out


def _source_index(size: int, before: int, after: int, reflect: bool) -> np.ndarray:
    """For each output position of an axis padded by ``before`` / ``after``, the input index it copies:
    mirrored about the first and last element (reflect) or clamped to them (edge)."""
    j = np.arange(-before, size + after, dtype=np.int64)
    if not reflect or size == 1:
        return np.clip(j, 0, size - 1)
    period = 2 * (size - 1)
    j = np.mod(j, period)
    return np.where(j < size, j, period - j)


@jit
def _gather_core(x, index, out):
    # index[i, k]: the input position along axis i of output position k (rows padded with zeros).
    for a in range(out.shape[0]):
        for b in range(out.shape[1]):
            for c in range(out.shape[2]):
                for d in range(out.shape[3]):
                    for e in range(out.shape[4]):
                        for f in range(out.shape[5]):
                            out[a, b, c, d, e, f] = x[index[0, a], index[1, b], index[2, c], index[3, d],
                                                      index[4, e], index[5, f]]


def _gather(x, maps):
    """``out[k0, k1, ...] = x[maps[0][k0], maps[1][k1], ...]``: one index map per axis of ``x``."""
    pad = CORE_RANK - x.ndim
    maps = [np.zeros(1, np.int64)] * pad + list(maps)
    shape = tuple(len(m) for m in maps)
    out = np.empty(shape[pad:], x.dtype)
    if out.size:
        index = np.zeros((CORE_RANK, max(shape)), np.int64)
        for i, m in enumerate(maps):
            index[i, :m.size] = m
        _gather_core(np.ascontiguousarray(x).reshape((1,) * pad + x.shape), index, out.reshape(shape))
    return out


def pad_reflect_edge(x, pads_before, pads_after, reflect):
    """``x`` (rank <= 6) padded on every axis by ``pads_before[i]`` / ``pads_after[i]`` copies of its own
    codes: mirrored without repeating the border (``reflect``, ONNX and numpy ``reflect``; each pad
    smaller than the axis) or repeating the border code (edge).  Returns an array of ``x.dtype``."""
    return _gather(x, [_source_index(n, b, a, bool(reflect)) for n, b, a in zip(x.shape, pads_before, pads_after)])


def tile(x, repeats):
    """``x`` (rank <= 6) repeated ``repeats[i]`` times along each axis ``i`` (numpy ``tile`` with one
    repeat per axis): ``out[..., k, ...] = x[..., k mod n, ...]``.  Returns an array of ``x.dtype``."""
    return _gather(x, [np.arange(n * r, dtype=np.int64) % max(n, 1) for n, r in zip(x.shape, repeats)])


@jit
def _arg_max_core(x, select_last, out):
    outer, reduced, inner = x.shape
    for o in range(outer):
        for k in range(inner):
            best = 0
            for r in range(1, reduced):
                if x[o, r, k] > x[o, best, k] or (select_last and x[o, r, k] == x[o, best, k]):
                    best = r
            out[o, k] = best


def arg_max(x, select_last):
    """The position of the largest code along axis 1 of ``x`` [outer, R, inner] (R >= 1): the first
    one on ties, the last with ``select_last``.  Returns int32 [outer, inner]; codes order like the
    reals they stand for, so it is the float model's ArgMax."""
    out = np.empty((x.shape[0], x.shape[2]), np.int32)
    if out.size:
        _arg_max_core(np.ascontiguousarray(x), bool(select_last), out)
    return out
