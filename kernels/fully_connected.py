"""Fully-connected layers: the GEMV launch for a few rows over packed weights, and the kernel that
reads int8 weights in place (:mod:`intsim.kernels.rowdot`: no packed copy held)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import prange

from intsim.kernels import isa as isa_module
from intsim.kernels.isa import (
    AVX2_PAIRS,
    AVX512_PAIRS,
    GROUP,
    PORTABLE_PAIRS,
    PORTABLE_QUADS,
    TILE_BLOCKS,
    VNNI_PAIRS,
    VNNI_QUADS,
)
from intsim.kernels.mac import requantize_rows
from intsim.kernels.microkernel import LANES, mac_tile
from intsim.kernels.rowdot import row_dots
from intsim.kernels.gemm_chunk import copy_encoded
from intsim.kernels.threads import run_calls, splits_among, threads_to_use
from intsim.jit import jit, jit_inline, jit_parallel


# --------------------------------------------------------------------------
# GEMV: fully-connected layers over a few rows
# --------------------------------------------------------------------------

# Fully-connected inputs of at most this many rows take the GEMV launch (rows x 4 blocks of the
# widest tile are 16 zmm accumulators, of 32).
GEMV_MAX_ROWS = 4


@jit_inline
def _gemv_rows(variant, rows, a, w, groups, c0, acc):
    # All ``rows`` (a compile-time constant) in one tile, so that every packed
    # weight is read once for all of them (at batch 1..4 the layer is bound by
    # reading its weights): full tiles of the variant's blocks, then single blocks.
    n_blocks = c0.shape[0] // LANES
    tile_blocks = TILE_BLOCKS[variant]
    nb = 0
    while nb < n_blocks:
        if nb + tile_blocks <= n_blocks:
            mac_tile(variant, rows, 0, a, 0, groups, w, nb * groups * LANES, groups, c0, nb * LANES, acc,
                     nb * LANES, c0.shape[0])
            nb += tile_blocks
        else:
            mac_tile(variant, rows, 1, a, 0, groups, w, nb * groups * LANES, groups, c0, nb * LANES, acc,
                     nb * LANES, c0.shape[0])
            nb += 1


@jit_inline
def _gemv_variant(variant, rows, a, w, groups, c0, acc):
    # Inlined with a constant ``variant``: the row count made a constant too.
    if rows == 1:
        _gemv_rows(variant, 1, a, w, groups, c0, acc)
    elif rows == 2:
        _gemv_rows(variant, 2, a, w, groups, c0, acc)
    elif rows == 3:
        _gemv_rows(variant, 3, a, w, groups, c0, acc)
    else:
        _gemv_rows(variant, 4, a, w, groups, c0, acc)


@jit
def _gemv_core(variant, x, w, c0, multiplier, shift, scale, settings, code_sample, out):
    # out [M, O] from x [M, K] with M <= 4: the rows are encoded (x - a_sub,
    # zeros up to the whole group) into one buffer, one micro-kernel tile
    # covers all rows for each run of 16-channel blocks from c0 (bias and
    # zero-point terms folded in at pack time), and the accumulators are
    # requantized in place of an int32 tensor.  No chunks, no thread pool,
    # one argument array of scalars.
    a_sub, groups, row_len, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max = settings
    rows, depth = x.shape
    codes = np.zeros((rows, row_len), code_sample.dtype)
    for r in range(rows):
        copy_encoded(x[r], 0, depth, a_sub, codes[r], 0)
    a = codes.reshape(codes.size).view(np.int32)
    acc = np.empty((rows, c0.shape[0]), np.int32)
    acc_flat = acc.reshape(acc.size)
    if variant == VNNI_QUADS:
        _gemv_variant(VNNI_QUADS, rows, a, w, groups, c0, acc_flat)
    elif variant == VNNI_PAIRS:
        _gemv_variant(VNNI_PAIRS, rows, a, w, groups, c0, acc_flat)
    elif variant == AVX512_PAIRS:
        _gemv_variant(AVX512_PAIRS, rows, a, w, groups, c0, acc_flat)
    elif variant == AVX2_PAIRS:
        _gemv_variant(AVX2_PAIRS, rows, a, w, groups, c0, acc_flat)
    elif variant == PORTABLE_QUADS:
        _gemv_variant(PORTABLE_QUADS, rows, a, w, groups, c0, acc_flat)
    else:
        _gemv_variant(PORTABLE_PAIRS, rows, a, w, groups, c0, acc_flat)
    return requantize_rows(rounding, acc, 0, multiplier, shift, scale, multiplier_bits, out_zero_point, clamp_min,
                           clamp_max, out)


class GemvLaunch:
    """The GEMV over codes [M, K] (M <= :data:`GEMV_MAX_ROWS`) of one layer and requantization, its
    arguments worked out once: ``run(x, out)`` writes ``out`` [M, O] and returns the clamp count."""

    def __init__(self, packed, requant):
        multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max = requant
        self.args = (packed.variant, packed.words, packed.c0, np.asarray(multiplier, np.int32),
                     np.asarray(shift, np.int32), np.asarray(scale, np.float64))
        self.settings = np.array([packed.a_sub, packed.groups, packed.row_len, rounding, multiplier_bits,
                                  out_zero_point, clamp_min, clamp_max], np.int64)
        self.code_sample = packed.code_sample

    def calls(self, x, out, threads=1):
        """``[(numba function, arguments)]`` of :meth:`run` (see ``_GemmLaunch.calls``; serial whatever
        ``threads``: a GEMV of a few rows is a few microseconds)."""
        variant, words, c0, multiplier, shift, scale = self.args
        return [(_gemv_core, (variant, x, words, c0, multiplier, shift, scale, self.settings, self.code_sample, out))]

    def run(self, x, out):
        return int(run_calls(self.calls(x, out)))


# --------------------------------------------------------------------------
# Fully-connected layers over their int8 weights where they lie
# --------------------------------------------------------------------------

# Output channels per chunk of the threaded in-place kernel (four 16-output blocks).
ROW_DOT_CHUNK = 64


@dataclass(frozen=True)
class InPlaceWeights:
    """What a fully-connected layer needs to read its int8 weights ``w [O, K]`` where they lie: no copy of them.

    The kernel of :mod:`intsim.kernels.rowdot` sums ``xe[n, k] * w[o, k]`` with
    the raw weights and the encoded codes ``xe = x - a_sub`` (``code_dtype``:
    uint8 ``x`` or ``x + 128`` for the quads, int16 ``x - z_x`` for the pairs),
    starting from ``c0[o] - w_zero_point[o] * sum_k xe[n, k]``, where
    ``c0 = bias + (a_sub - z_x) * sum_k (w - z_w)``: together
    ``bias + sum_k (x - z_x)(w - z_w)`` (the zero-point expansion of white paper
    §2.3).  ``c0`` is int32 [O rounded up to 16], wrapped to int32 (exact modulo
    ``2**32``, see the module docstring); ``w_zero_point`` is int32 laid out
    like ``c0``, or empty where every ``z_w`` is 0.
    """

    variant: int
    c0: np.ndarray
    w_zero_point: np.ndarray
    a_sub: int
    code_dtype: np.dtype


def in_place_weights(x_dtype, x_zero_point, w, w_zero_point, bias):
    """:class:`InPlaceWeights` for a layer the static bound proved exact, or ``None`` where the weights
    are not int8 in C order (uint8 or int16 weights take the packed path) or the activations are not
    8-bit (the unfused kernels)."""
    info = np.iinfo(x_dtype)
    if w.dtype != np.int8 or not w.flags.c_contiguous or info.bits != 8:
        return None
    isa = isa_module.current_isa()
    if isa.quads is not None:  # x (uint8) or x + 128 (int8): the unsigned operand of vpdpbusd
        variant, a_sub, code_dtype = isa.quads, 0 if info.min == 0 else -128, np.dtype(np.uint8)
    else:  # x - z_x as int16 pairs against the weights sign-extended on load
        variant, a_sub, code_dtype = isa.pairs, int(x_zero_point), np.dtype(np.int16)
        if not (-(2**15) <= info.min - a_sub and info.max - a_sub < 2**15):
            return None
    n_out, depth = w.shape
    padded = -(-n_out // LANES) * LANES
    w_zero_point = w_zero_point.astype(np.int64)
    c0 = np.zeros(padded, np.int64)
    c0[:n_out] = bias.astype(np.int64) + (a_sub - int(x_zero_point)) * (w.sum(axis=1, dtype=np.int64)
                                                                          - depth * w_zero_point)
    zero_points = np.zeros(padded if w_zero_point.any() else 0, np.int32)
    if zero_points.size:
        zero_points[:n_out] = w_zero_point
    return InPlaceWeights(variant, c0.astype(np.int32), zero_points, a_sub, code_dtype)


@jit_inline
def _row_dot_tiles(variant, rows_per_tile, outs_per_tile, codes, r_begin, r_end, w, n_out, depth, lead, acc,
                   o_begin, o_end):
    # acc[r, o] += codes[r, lead:] . w[o] for rows r_begin .. r_end - 1 (whole tiles) and outputs o_begin ..
    # o_end - 1 (whole tiles, past n_out into acc's padding), output tiles outside so that a tile's
    # weight rows stay in L1 while the rows of the batch pass over them.
    stride, acc_stride = codes.shape[1], acc.shape[1]
    for o0 in range(o_begin, o_end, outs_per_tile):
        for r in range(r_begin, r_end, rows_per_tile):
            row_dots(variant, rows_per_tile, outs_per_tile, codes, r * stride, stride, w, o0, n_out, depth, lead, acc,
                     r * acc_stride + o0, acc_stride)


@jit_inline
def _row_dot_blocks(variant, codes, w, n_out, depth, lead, acc, o_begin, o_end):
    # acc [N, O rounded up to 16] += codes [N, lead:lead + depth] . w[o] for outputs o_begin .. o_end - 1
    # (multiples of 16): tiles of 4 rows x 4 outputs (16 accumulator vectors), then 2 x 8 and
    # 1 x 8 for the rows left over (a single row keeps 8 vectors: its 8 weight rows and its
    # row of codes are 9 pointers, 16 of them would not fit the general registers).  Inlined
    # with a constant ``variant``, which row_dots needs at compile time.
    rows = codes.shape[0]
    fours, twos = rows - rows % 4, rows - rows % 2
    _row_dot_tiles(variant, 4, 4, codes, 0, fours, w, n_out, depth, lead, acc, o_begin, o_end)
    _row_dot_tiles(variant, 2, 8, codes, fours, twos, w, n_out, depth, lead, acc, o_begin, o_end)
    _row_dot_tiles(variant, 1, 8, codes, twos, rows, w, n_out, depth, lead, acc, o_begin, o_end)


@jit_inline
def _fully_connected_in_place_rows(variant, x, w, c0, w_zero_point, multiplier, shift, scale, settings, code_sample,
                                   out):
    # out [N, O] from x [N, K] and the int8 weights w [O, K] as they lie: each row encoded
    # once into ``codes`` (x - a_sub from column ``lead`` on, zeros around it up to ``stride``,
    # a whole number of vectors; the buffer 64-byte aligned) and summed; acc starts at
    # c0 - z_w * sum(codes) (see InPlaceWeights); the outputs are shared out among the threads
    # in chunks of ROW_DOT_CHUNK; the int32 accumulators are requantized at the end.
    a_sub, lead, stride, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max = settings
    rows, depth = x.shape
    padded = c0.shape[0]
    per_line = 64 // code_sample.itemsize
    buffer = np.empty(rows * stride + per_line, code_sample.dtype)
    start = (-buffer.ctypes.data) % 64 // code_sample.itemsize
    codes = buffer[start:start + rows * stride].reshape((rows, stride))
    acc = np.empty((rows, padded), np.int32)
    for r in range(rows):
        x_row, code_row, acc_row = x[r], codes[r, lead:lead + depth], acc[r]
        codes[r, :lead] = 0
        codes[r, lead + depth:] = 0
        code_sum = 0
        for k in range(depth):
            code = x_row[k] - a_sub
            code_row[k] = code
            code_sum += code
        if w_zero_point.shape[0]:
            for o in range(padded):
                acc_row[o] = np.int32(c0[o] - np.int64(w_zero_point[o]) * code_sum)  # wraps: exact modulo 2**32
        else:
            acc_row[:] = c0
    for chunk in prange((padded + ROW_DOT_CHUNK - 1) // ROW_DOT_CHUNK):
        o_begin = chunk * ROW_DOT_CHUNK
        _row_dot_blocks(variant, codes, w, w.shape[0], depth, lead, acc, o_begin,
                        min(padded, o_begin + ROW_DOT_CHUNK))
    return requantize_rows(rounding, acc, 0, multiplier, shift, scale, multiplier_bits, out_zero_point, clamp_min,
                           clamp_max, out)


# The kernel per variant (a compile-time constant of each), serial and threaded from one inlined
# body (see conv2d_gemm_threaded); each is compiled on its own, at its first call.  (Inlining every
# variant into one function behind a run-time switch made the VNNI one 15% slower.)
def _in_place_serial(variant):
    @jit
    def core(x, w, c0, w_zero_point, multiplier, shift, scale, settings, code_sample, out):
        return _fully_connected_in_place_rows(variant, x, w, c0, w_zero_point, multiplier, shift, scale, settings,
                                              code_sample, out)

    return core


def _in_place_threaded(variant):
    @jit_parallel
    def core(x, w, c0, w_zero_point, multiplier, shift, scale, settings, code_sample, out):
        return _fully_connected_in_place_rows(variant, x, w, c0, w_zero_point, multiplier, shift, scale, settings,
                                              code_sample, out)

    return core


_IN_PLACE_SERIAL = tuple(_in_place_serial(variant) for variant in range(len(GROUP)))
_IN_PLACE_THREADED = tuple(_in_place_threaded(variant) for variant in range(len(GROUP)))


class InPlaceLaunch:
    """The fully-connected kernel over the int8 weights ``w`` where they lie, for codes [N, K] of one
    layer and requantization: ``run(x, out)`` writes ``out`` [N, O] and returns the clamp count."""

    def __init__(self, w, in_place, requant, depth):
        multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max = requant
        step = LANES * GROUP[in_place.variant]  # codes, and weight bytes, per vector
        # Where every weight row starts the same distance past a vector boundary, the kernel reads
        # each row from that boundary by aligned loads (split loads cost 10-20% of the layer), the
        # codes shifted by as much; its first and last vectors are masked to the row.
        lead = w.ctypes.data % step if depth % step == 0 else 0
        self.w, self.in_place = w, in_place
        self.requant = (np.asarray(multiplier, np.int64), np.asarray(shift, np.int64), np.asarray(scale, np.float64))
        self.settings = np.array([in_place.a_sub, lead, -(-(lead + depth) // step) * step, rounding, multiplier_bits,
                                  out_zero_point, clamp_min, clamp_max], np.int64)
        self.chunks = -(-in_place.c0.shape[0] // ROW_DOT_CHUNK)
        self.depth = depth
        self.code_sample = np.zeros(1, in_place.code_dtype)

    def calls(self, x, out, threads=1):
        """``[(numba function, arguments)]`` of :meth:`run` (see ``_GemmLaunch.calls``)."""
        in_place = self.in_place
        threaded = splits_among(threads, self.chunks, out.size * self.depth)
        core = (_IN_PLACE_THREADED if threaded else _IN_PLACE_SERIAL)[in_place.variant]
        return [(core, (np.ascontiguousarray(x), self.w, in_place.c0, in_place.w_zero_point, *self.requant,
                        self.settings, self.code_sample, out))]

    def run(self, x, out):
        return int(run_calls(self.calls(x, out, threads_to_use(self.chunks, out.size * self.depth))))
