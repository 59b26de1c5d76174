"""Depthwise conv2d (one input channel per output channel), NHWC, with the requantization fused.

Called by :func:`intsim.kernels.gemm.conv2d_nhwc_requantized` for layers
with ``groups = Cin = Cout`` (white paper §2.1 MAC array, §2.2
requantization); its naive twin is
:func:`intsim.kernels.naive_gemm.conv2d_nhwc_requantized`.

A depthwise product pairs each channel with its own weight, so the channels
are the vector lanes and the reduction runs over the taps of the window.
The taps of one kernel row are packed in *groups*, as the GEMM packs its
reduction (see :mod:`intsim.kernels.gemm`): one int32 word per channel holds
``GROUP[variant]`` taps, four uint8 codes for the ``*_QUADS`` variants
(``vpdpbusd``) or two int16 codes for the ``*_PAIRS`` variants
(``vpmaddwd`` / ``vpdpwssd``), and one instruction adds all of a word's
products to the channel's int32 accumulator.  The encodings and the start
value ``c0 = bias + (a_sub - z_x) * sum (w - z_w)`` are the GEMM's
(:func:`intsim.kernels.gemm._encoding`), and so is the exactness argument: the
caller proved the static bound fits int32, every add wraps modulo ``2**32``,
so the accumulator ends on the exact sum.

The loop, per output row ``(n, oh)``:

1. each input row ``ih`` the window needs is turned into words once and
   kept in a ring of ``(KH - 1) * dh + 1`` rows, which the next output rows
   reuse (stride 1: every input row is packed once).  A word of output
   column ``ow`` and tap group ``q`` holds the codes at input columns
   ``ow * sw - left + (q * GROUP + j) * dw``; columns outside the image hold
   ``pad_code = z_x - a_sub``, whose products ``c0`` cancels, so border
   windows need no separate code.  Taps past ``KW`` meet zero weights.
2. :func:`dw_tile` adds ``KH * ceil(KW / GROUP)`` words per channel to
   ``TILE_COLUMNS`` output columns at once, each weight vector loaded once
   per tile and the accumulators in registers.
3. the row of accumulators (in L1) is requantized by
   :func:`intsim.kernels.mac._requantize_core` into the output row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from intsim.kernels.isa import (
    AVX2_PAIRS,
    AVX512_PAIRS,
    GROUP,
    PORTABLE_PAIRS,
    PORTABLE_QUADS,
    VNNI_PAIRS,
    VNNI_QUADS,
)
from intsim.kernels.mac import _requantize_core
from intsim.kernels.microkernel import _ACC, _I64, LANES, _dot, _literal

# Output columns per register tile: a 5x5 window in quads is 10 weight
# vectors, plus 6 accumulators, of the 32 zmm registers.
TILE_COLUMNS = 6


@intrinsic
def dw_tile(typingctx, variant, columns, groups, a, a_offs, a_off, a_stride, w, w_off, w_stride, c0, c0_off, c, c_off,
            c_stride):
    """``columns`` (a compile-time constant) output columns of 16 channels, from their start value::

        c[c_off + r*c_stride + j] = c0[c0_off + j]
                                    + sum_g dot(a[a_offs[g] + a_off + r*a_stride + j], w[w_off + g*w_stride + j])

    for ``r < columns``, ``j < 16``, ``g < groups``; ``a``, ``w``, ``c0`` and
    ``c`` are int32 arrays, ``a_offs`` int64, and ``dot`` is the exact sum of
    the products of a word's group of codes (see
    :mod:`intsim.kernels.microkernel` for the instructions per variant).
    """
    variant_code, n_columns = _literal(variant), _literal(columns)
    if variant_code is None or n_columns is None:
        return None
    sig = types.void(variant, columns, groups, a, a_offs, a_off, a_stride, w, w_off, w_stride, c0, c0_off, c, c_off,
                     c_stride)

    def codegen(context, builder, signature, args):
        arg_types = signature.args

        def data(i):
            return context.make_array(arg_types[i])(context, builder, args[i]).data

        a_data, offs_data, w_data, c0_data, c_data = data(3), data(4), data(7), data(10), data(12)
        groups_v, a_off_v, a_stride_v, w_off_v, w_stride_v, c0_off_v, c_off_v, c_stride_v = (
            context.cast(builder, args[i], arg_types[i], types.int64) for i in (2, 5, 6, 8, 9, 11, 13, 14)
        )

        def vector_at(base, index):
            return builder.bitcast(builder.gep(base, [index]), _ACC.as_pointer())

        def column(base, stride, r):
            return builder.add(base, builder.mul(stride, ir.Constant(_I64, r)))

        start = builder.load(vector_at(c0_data, c0_off_v), align=4)
        entry = builder.block
        loop = builder.append_basic_block("dw_tile.loop")
        done = builder.append_basic_block("dw_tile.done")
        zero = ir.Constant(_I64, 0)
        builder.cbranch(builder.icmp_signed(">", groups_v, zero), loop, done)

        builder.position_at_end(loop)
        g = builder.phi(_I64)
        g.add_incoming(zero, entry)
        accs = []
        for _ in range(n_columns):
            phi = builder.phi(_ACC)
            phi.add_incoming(start, entry)
            accs.append(phi)
        a_base = builder.add(builder.load(builder.gep(offs_data, [g]), align=8), a_off_v)
        w_vec = builder.load(vector_at(w_data, builder.add(w_off_v, builder.mul(g, w_stride_v))), align=4)
        updated = [_dot(builder, variant_code, acc, builder.load(vector_at(a_data, column(a_base, a_stride_v, r)),
                                                                 align=4), w_vec)
                   for r, acc in enumerate(accs)]
        g_next = builder.add(g, ir.Constant(_I64, 1))
        g.add_incoming(g_next, loop)
        for phi, value in zip(accs, updated):
            phi.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", g_next, groups_v), loop, done)

        builder.position_at_end(done)
        finals = []
        for last in updated:
            final = builder.phi(_ACC)
            final.add_incoming(start, entry)
            final.add_incoming(last, loop)
            finals.append(final)
        for r, final in enumerate(finals):
            builder.store(final, vector_at(c_data, column(c_off_v, c_stride_v, r)), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _code_row(x_flat, x_base, width, channels, padded_channels, a_sub, left, codes):
    # codes [left + width + ..., padded_channels] already holds pad_code
    # everywhere; the image's columns get their codes x - a_sub.  Slices
    # indexed from 0 let LLVM drop the index checks and vectorise.
    for iw in range(width):
        src = x_flat[x_base + iw * channels:x_base + (iw + 1) * channels]
        dst = codes[(left + iw) * padded_channels:(left + iw) * padded_channels + channels]
        for c in range(channels):
            dst[c] = np.int32(src[c]) - a_sub


@njit(inline="always")
def _pack_row(group, codes, padded_channels, out_w, taps_w, sw, dw, words):
    # words [out_w, taps_w, padded_channels]: the ``group`` codes of columns
    # ow*sw + (q*group + j)*dw (padded coordinates) of channel c, code j in
    # bits [j*bits, (j+1)*bits) of the word.
    bits = 32 // group
    mask = np.uint32((1 << bits) - 1)
    step = dw * padded_channels
    for ow in range(out_w):
        for q in range(taps_w):
            src = codes[(ow * sw + q * group * dw) * padded_channels:]
            dst = words[(ow * taps_w + q) * padded_channels:(ow * taps_w + q + 1) * padded_channels]
            for c in range(padded_channels):
                word = np.uint32(0)
                for j in range(group):
                    word |= (np.uint32(src[np.uint64(j * step + c)]) & mask) << np.uint32(j * bits)
                dst[c] = np.int32(word)


@njit(inline="always")
def _row_tiles_of(variant, group_count, words, a_offs, taps_w, padded_channels, w_words, c0, out_w, acc):
    # Inlined with a constant ``variant``, which dw_tile needs at compile time:
    # whole tiles of TILE_COLUMNS output columns, then single columns.
    row_stride = taps_w * padded_channels
    full = out_w - out_w % TILE_COLUMNS
    for ow0 in range(0, full, TILE_COLUMNS):
        for cb in range(0, padded_channels, LANES):
            dw_tile(variant, TILE_COLUMNS, group_count, words, a_offs, ow0 * row_stride + cb, row_stride, w_words,
                    cb, padded_channels, c0, cb, acc, ow0 * padded_channels + cb, padded_channels)
    for ow in range(full, out_w):
        for cb in range(0, padded_channels, LANES):
            dw_tile(variant, 1, group_count, words, a_offs, ow * row_stride + cb, row_stride, w_words, cb,
                    padded_channels, c0, cb, acc, ow * padded_channels + cb, padded_channels)


@njit(inline="always")
def _row_tiles(variant, group_count, words, a_offs, taps_w, padded_channels, w_words, c0, out_w, acc):
    if variant == VNNI_QUADS:
        _row_tiles_of(VNNI_QUADS, group_count, words, a_offs, taps_w, padded_channels, w_words, c0, out_w, acc)
    elif variant == VNNI_PAIRS:
        _row_tiles_of(VNNI_PAIRS, group_count, words, a_offs, taps_w, padded_channels, w_words, c0, out_w, acc)
    elif variant == AVX512_PAIRS:
        _row_tiles_of(AVX512_PAIRS, group_count, words, a_offs, taps_w, padded_channels, w_words, c0, out_w, acc)
    elif variant == AVX2_PAIRS:
        _row_tiles_of(AVX2_PAIRS, group_count, words, a_offs, taps_w, padded_channels, w_words, c0, out_w, acc)
    elif variant == PORTABLE_QUADS:
        _row_tiles_of(PORTABLE_QUADS, group_count, words, a_offs, taps_w, padded_channels, w_words, c0, out_w, acc)
    else:
        _row_tiles_of(PORTABLE_PAIRS, group_count, words, a_offs, taps_w, padded_channels, w_words, c0, out_w, acc)


# The scalar arguments of the core, in one int64 array.
SETTINGS = ("kernel_h", "taps_w", "sh", "sw", "dh", "dw", "top", "left", "a_sub", "pad_code", "padded_channels",
            "chunks", "rounding", "multiplier_bits", "out_zero_point", "clamp_min", "clamp_max")


@njit(inline="always")
def _depthwise_rows(variant, x, w_words, c0, settings, multiplier, shift, scale, code_sample, out):
    # Output rows (n, oh) in ``chunks`` contiguous runs shared out among the
    # threads, each run with its own ring of packed input rows.
    (kernel_h, taps_w, sh, sw, dh, dw, top, left, a_sub, pad_code, padded_channels, chunks, rounding,
     multiplier_bits, out_zero_point, clamp_min, clamp_max) = settings
    group = GROUP[variant]
    n_batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    x_flat = x.reshape(x.size)
    ring_rows = (kernel_h - 1) * dh + 1
    row_words = out_w * taps_w * padded_channels
    codes_width = max((out_w - 1) * sw + (taps_w * group - 1) * dw + 1, left + width)
    rows_per_image = out_h * sh + ring_rows  # more than any padded row index a window reaches
    total_rows = n_batch * out_h
    saturation_count = 0
    for chunk in prange(chunks):
        codes = np.full(codes_width * padded_channels, pad_code, code_sample.dtype)
        words = np.empty(ring_rows * row_words, np.int32)
        held = np.full(ring_rows, -1, np.int64)  # the padded input row each ring slot holds
        a_offs = np.empty(kernel_h * taps_w, np.int64)
        acc = np.empty(out_w * padded_channels, np.int32)
        for row in range(chunk * total_rows // chunks, (chunk + 1) * total_rows // chunks):
            n, oh = row // out_h, row % out_h
            for kh in range(kernel_h):
                ih = oh * sh + kh * dh  # padded coordinates: the image starts at row ``top``
                slot = ih % ring_rows
                if held[slot] != n * rows_per_image + ih:
                    held[slot] = n * rows_per_image + ih
                    if 0 <= ih - top < height:
                        _code_row(x_flat, (n * height + ih - top) * width * channels, width, channels,
                                  padded_channels, a_sub, left, codes)
                    else:
                        codes[:] = pad_code
                    if group == 4:
                        _pack_row(4, codes, padded_channels, out_w, taps_w, sw, dw, words[slot * row_words:(slot + 1) * row_words])
                    else:
                        _pack_row(2, codes, padded_channels, out_w, taps_w, sw, dw, words[slot * row_words:(slot + 1) * row_words])
                for q in range(taps_w):
                    a_offs[kh * taps_w + q] = slot * row_words + q * padded_channels
            _row_tiles(variant, kernel_h * taps_w, words, a_offs, taps_w, padded_channels, w_words, c0, out_w, acc)
            saturation_count += _requantize_core(acc.reshape(out_w, padded_channels)[:, :channels], 0, multiplier,
                                                 shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
                                                 clamp_max, out[n, oh])
    return saturation_count


# The core twice, from one inlined body: with threads (its prange a parallel
# loop) and serial, which one thread takes to skip the thread pool's launch.
@njit(cache=True, parallel=True)
def _depthwise_threaded(variant, x, w_words, c0, settings, multiplier, shift, scale, code_sample, out):
    return _depthwise_rows(variant, x, w_words, c0, settings, multiplier, shift, scale, code_sample, out)


@njit(cache=True)
def _depthwise_serial(variant, x, w_words, c0, settings, multiplier, shift, scale, code_sample, out):
    return _depthwise_rows(variant, x, w_words, c0, settings, multiplier, shift, scale, code_sample, out)


@dataclass(frozen=True)
class PackedDepthwise:
    """Depthwise weights ``w - z_w`` packed for one variant of :func:`dw_tile`.

    ``words`` is int32 ``[KH * taps_w, padded_channels]``: word ``(kh * taps_w + q, c)``
    holds the weights of taps ``kw = q * GROUP + j`` (zero past ``KW`` and for
    the padded channels); ``c0`` int32 ``[padded_channels]`` is the start value
    (wrapped to int32, exact modulo ``2**32``).  Activations are encoded as
    ``x - a_sub`` into ``code_dtype``, padding as ``pad_code``.
    """

    variant: int
    words: np.ndarray
    c0: np.ndarray
    taps_w: int
    a_sub: int
    pad_code: int
    code_dtype: np.dtype
    launches: dict = field(default_factory=dict, compare=False, repr=False)


def pack_depthwise(w_centred, kernel, encoding, x_zero_point, bias) -> PackedDepthwise:
    """Pack ``w_centred`` [C, KH * KW] (int64, ``w - z_w``) under ``encoding = (variant, a_sub, code_dtype)``
    (from :func:`intsim.kernels.gemm._encoding`)."""
    variant, a_sub, code_dtype = encoding
    channels = w_centred.shape[0]
    kernel_h, kernel_w = kernel
    group = GROUP[variant]
    taps_w = -(-kernel_w // group)
    padded_channels = -(-channels // LANES) * LANES
    grid = np.zeros((kernel_h, taps_w * group, padded_channels), np.int16 if group == 2 else np.int8)
    grid[:, :kernel_w, :channels] = w_centred.reshape(channels, kernel_h, kernel_w).transpose(1, 2, 0)
    words = grid.reshape(kernel_h, taps_w, group, padded_channels).transpose(0, 1, 3, 2)
    words = np.ascontiguousarray(words).view(np.int32).reshape(-1)
    c0 = np.zeros(padded_channels, np.int64)
    c0[:channels] = bias.astype(np.int64) + (a_sub - int(x_zero_point)) * w_centred.sum(axis=1)
    return PackedDepthwise(variant, words, c0.astype(np.int32), taps_w, a_sub, int(x_zero_point) - a_sub,
                           np.dtype(code_dtype))


def depthwise_run(x, packed, kernel_h, strides, dilations, pads, chunks, requant, out) -> int:
    """Output codes of a depthwise layer into ``out`` [N, OH, OW, C] from NHWC codes ``x``; returns the clamp count.

    ``requant`` is ``(multiplier, shift, scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max)`` as in
    :func:`intsim.kernels.mac.requantize`; ``chunks`` runs of output rows go to
    the threads.
    """
    multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max = requant
    key = (kernel_h, strides, dilations, pads, chunks, rounding, multiplier_bits, out_zero_point, clamp_min,
           clamp_max)
    if key not in packed.launches:
        packed.launches[key] = np.array(
            [kernel_h, packed.taps_w, strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1],
             packed.a_sub, packed.pad_code, packed.c0.shape[0], chunks, rounding, multiplier_bits, out_zero_point,
             clamp_min, clamp_max], np.int64)
    core = _depthwise_threaded if chunks > 1 else _depthwise_serial
    return int(core(packed.variant, x, packed.words, packed.c0, packed.launches[key], np.asarray(multiplier, np.int64),
                    np.asarray(shift, np.int64), np.asarray(scale, np.float64), np.zeros(1, packed.code_dtype), out))
