"""Depthwise conv2d (one input channel per output channel), NHWC, with the requantization fused.

Called by :func:`intsim.kernels.gemm.conv2d_nhwc_requantized` for layers
with ``groups = Cin = Cout`` (white paper §2.1 MAC array, §2.2
requantization); its naive twin is
:func:`intsim.kernels.naive_gemm.conv2d_nhwc_requantized`.

A depthwise product pairs each channel with its own weight, so the channels
are the vector lanes (16 per int32 vector) and the reduction runs over the
taps of the window.  Activations are encoded as the GEMM encodes them
(:func:`intsim.kernels.gemm.encoding_for`): codes ``x - a_sub`` (uint8, or int16
for the pairs encoding), the zero point moved into the start value
``c0 = bias + (a_sub - z_x) * sum (w - z_w)``.  A code, zero-extended into an
int32 lane, times a weight ``w - z_w`` in the low half of an int32 lane is one
exact ``vpmaddwd`` / ``vpdpwssd`` product (the high halves multiply a zero);
the ISA's pairs variant of :mod:`intsim.kernels.microkernel` does the
multiply-add.  The weights are stored as narrow as they are (int8 when every
``w - z_w`` fits, else int16) and sign-extended into their int32 lanes on load
(one ``vpmovsxbd`` / ``vpmovsxwd``): the low half of the lane is then the int16
``w - z_w`` and its high half (the sign) multiplies the code's zero high half.
The caller proved the static bound fits int32, and every add wraps modulo
``2**32``, so the accumulators end on the exact sum.

The loop, per output row ``(n, oh)``:

1. each input row the window needs is encoded once into a ring of
   ``(KH - 1) * dh + 1`` padded rows, which the next output rows reuse
   (stride 1: every input row is encoded once).  Columns outside the image
   hold ``pad_code = z_x - a_sub``, whose products ``c0`` cancels, so border
   windows need no separate code.
2. :func:`dw_tile` computes several output columns of 16 channels in
   registers: every input column a kernel row reaches is loaded once and
   feeds each output whose window covers it, every weight vector once per
   kernel row.  3x3 and 5x5 windows at stride 1 and 2 have their shapes
   compiled in; any other window runs tap by tap.
3. the row of accumulators (in L1) is requantized by
   :func:`intsim.kernels.mac.requantize_rows` into the output row; or, for
   ``FLOAT32_RINT`` when the caller wants no clamp count (a model's run),
   :func:`dw_tile_rint` requantizes each tile in registers and stores its
   output codes directly (the GEMM's register epilogue).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from intsim.kernels.isa import ISAS
from intsim.fixedpoint import FLOAT32_RINT
from intsim.kernels.mac import epilogue_params, requantize_rows, requantized_in_registers
from intsim.kernels.microkernel import (T_ACC, T_I64, LANES, group_dot, ir_literal, phi_merged, requant_params,
                                       requant_store_tile, rint_arguments)
from intsim.jit import jit, jit_inline, jit_parallel
from intsim.kernels.threads import run_calls

# Output columns per register tile: with a 5x5 window, 8 accumulators + 12 (stride 1) or 19 (stride 2)
# input columns + 5 weights of the 32 zmm (at stride 2 not all inputs live at once).  Rows whose width
# is a multiple of 7 and not of 8 (MobileNet's and EfficientNet's 7, 14, 28) take tiles of 7, which
# cover them exactly: a row of 14 as two tiles of 8 (columns 0-7 and 6-13) computed 16 columns, a row
# of 7 as two tiles of 4 computed 8 and read more input columns per output column.
# A 3x3 window at stride 1 takes one tile of 14 for a row of 14 (14 accumulators + 16 input columns +
# 3 weights): half the tiles, each with the epilogue's fixed cost (its parameters, its rule's branch).
TILE_COLUMNS, EXACT_COLUMNS, HALF_COLUMNS, WIDE_COLUMNS = 8, 7, 4, 14
# Accumulator chains per output column (see _dw_tile_codegen): about 8 chains in a tile.
CHAINS = {1: 4, HALF_COLUMNS: 2, EXACT_COLUMNS: 1, TILE_COLUMNS: 1, WIDE_COLUMNS: 1}


def _dw_tile_codegen(variant_code, n_columns, n_taps, step, code_type, weight_type, epilogue):
    # The tile's reduction as LLVM IR over dw_tile's first 13 arguments (up to
    # c0_off); ``epilogue(context, builder, signature, args, finals)`` then
    # stores the ``n_columns`` finished accumulators.
    def codegen(context, builder, signature, args):
        arg_types = signature.args

        def data(i):
            return context.make_array(arg_types[i])(context, builder, args[i]).data

        codes_data, offs_data, w_data, c0_data = data(4), data(5), data(9), data(11)
        rows_v, a_off_v, column_step_v, w_off_v, c0_off_v = (
            context.cast(builder, args[i], arg_types[i], types.int64) for i in (6, 7, 8, 10, 12)
        )

        def at(base, index, vector_type):
            return builder.bitcast(builder.gep(base, [index]), vector_type.as_pointer())

        def plus(base, i):
            return builder.add(base, builder.mul(column_step_v, ir.Constant(T_I64, i)))

        start = builder.load(at(c0_data, c0_off_v, T_ACC), align=4)
        # Chains: accumulators per column, tap t of each kernel row into chain t % chains, summed at the
        # end (every add wraps modulo 2**32, so the sum is the same).  A multiply-add waits for the one
        # before it on its accumulator: a narrow tile's few columns alone leave the multiply-add units
        # idle for most of its latency.
        chains = min(CHAINS[n_columns], n_taps)
        starts = [start] + [ir.Constant(T_ACC, [0] * LANES)] * (chains - 1)
        entry = builder.block
        loop = builder.append_basic_block("dw_tile.loop")
        done = builder.append_basic_block("dw_tile.done")
        zero = ir.Constant(T_I64, 0)
        builder.cbranch(builder.icmp_signed(">", rows_v, zero), loop, done)

        builder.position_at_end(loop)
        k = builder.phi(T_I64)
        k.add_incoming(zero, entry)
        accs = []
        for _ in range(n_columns):
            for first in starts:
                phi = builder.phi(T_ACC)
                phi.add_incoming(first, entry)
                accs.append(phi)
        a_base = builder.add(builder.load(builder.gep(offs_data, [k]), align=8), a_off_v)
        w_base = builder.add(w_off_v, builder.mul(builder.mul(k, ir.Constant(T_I64, n_taps)), column_step_v))
        weights = [builder.sext(builder.load(at(w_data, plus(w_base, t), weight_type), align=1), T_ACC)
                   for t in range(n_taps)]
        inputs = [builder.zext(builder.load(at(codes_data, plus(a_base, i), code_type), align=1), T_ACC)
                  for i in range((n_columns - 1) * step + n_taps)]
        updated = list(accs)
        for r in range(n_columns):
            for t in range(n_taps):
                i = r * chains + t % chains
                updated[i] = group_dot(builder, variant_code, updated[i], inputs[r * step + t], weights[t])
        k_next = builder.add(k, ir.Constant(T_I64, 1))
        k.add_incoming(k_next, loop)
        for phi, value in zip(accs, updated):
            phi.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", k_next, rows_v), loop, done)

        builder.position_at_end(done)
        merged = phi_merged(builder, starts * n_columns, entry, updated, loop)
        finals = []
        for r in range(n_columns):
            total = merged[r * chains]
            for i in range(1, chains):
                total = builder.add(total, merged[r * chains + i])
            finals.append(total)
        epilogue(context, builder, signature, args, finals)
        return context.get_dummy_value()

    return codegen


def _tile_constants(variant, columns, taps, stride):
    constants = ir_literal(variant), ir_literal(columns), ir_literal(taps), ir_literal(stride)
    return None if None in constants else constants


@intrinsic
def dw_tile(typingctx, variant, columns, taps, stride, codes, row_offs, rows, a_off, column_step, w, w_off, c0,
            c0_off, c, c_off):
    """``columns`` output columns of 16 channels (``columns``, ``taps`` and ``stride`` compile-time constants)::

        c[c_off + r*column_step + j] = c0[c0_off + j] + sum_{k < rows} sum_{t < taps}
            codes[row_offs[k] + a_off + (r*stride + t)*column_step + j] * w[w_off + (k*taps + t)*column_step + j]

    for ``r < columns``, ``j < 16``: ``codes`` uint8 or int16 (zero-extended
    into int32 lanes), ``w`` int8 or int16 (sign-extended into int32 lanes),
    ``c0`` and ``c`` int32, ``row_offs`` int64.  Each product is one lane of
    the pairs ``variant``'s multiply-add (see the module docstring).
    """
    constants = _tile_constants(variant, columns, taps, stride)
    if constants is None:
        return None
    sig = types.void(variant, columns, taps, stride, codes, row_offs, rows, a_off, column_step, w, w_off, c0, c0_off,
                     c, c_off)

    def store(context, builder, signature, args, finals):
        c_data = context.make_array(signature.args[13])(context, builder, args[13]).data
        c_off_v, column_step_v = (context.cast(builder, args[i], signature.args[i], types.int64) for i in (14, 8))
        for r, final in enumerate(finals):
            index = builder.add(c_off_v, builder.mul(column_step_v, ir.Constant(T_I64, r)))
            builder.store(final, builder.bitcast(builder.gep(c_data, [index]), T_ACC.as_pointer()), align=4)

    code_type = ir.VectorType(ir.IntType(codes.dtype.bitwidth), LANES)
    weight_type = ir.VectorType(ir.IntType(w.dtype.bitwidth), LANES)
    return sig, _dw_tile_codegen(*constants, code_type, weight_type, store)


@intrinsic
def dw_tile_rint(typingctx, variant, columns, taps, stride, codes, row_offs, rows, a_off, column_step, w, w_off, c0,
                 c0_off, scale, lo, hi, zero_point, valid_channels, out, out_off, out_stride):
    """The tile of :func:`dw_tile` requantized in registers, as the GEMM's ``mac_tile_rint`` does
    (:mod:`intsim.kernels.microkernel`): column ``r``, channel ``j < valid_channels`` of the tile
    goes to ``out[out_off + r*out_stride + j]``; ``scale`` is float32 (the ``FLOAT32_RINT`` rule)
    or the int64 rows of :func:`intsim.kernels.mac.lane_params` (``DOUBLE`` / ``SINGLE``), laid out
    like ``c0``; no clamp is counted."""
    constants = _tile_constants(variant, columns, taps, stride)
    if constants is None or not rint_arguments(scale, out):
        return None
    sig = types.void(variant, columns, taps, stride, codes, row_offs, rows, a_off, column_step, w, w_off, c0, c0_off,
                     scale, lo, hi, zero_point, valid_channels, out, out_off, out_stride)

    def store(context, builder, signature, args, finals):
        def data(i):
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        c0_off_v, lo_v, hi_v, zero_point_v, channels_v, out_off_v, out_stride_v = (
            context.cast(builder, args[i], signature.args[i], types.int64) for i in (12, 14, 15, 16, 17, 19, 20))
        out_type = context.get_data_type(signature.args[18].dtype)
        params = requant_params(context, builder, signature.args[13], args[13])
        store_tile = requant_store_tile(builder, params, c0_off_v, lo_v, hi_v, zero_point_v,
                                        ir.Constant(T_I64, len(finals)), channels_v, data(18), out_type, out_off_v,
                                        out_stride_v)
        store_tile([[final] for final in finals])

    code_type = ir.VectorType(ir.IntType(codes.dtype.bitwidth), LANES)
    weight_type = ir.VectorType(ir.IntType(w.dtype.bitwidth), LANES)
    return sig, _dw_tile_codegen(*constants, code_type, weight_type, store)


@jit_inline
def _code_row(x_flat, x_base, width, channels, padded_channels, a_sub, left, codes):
    # codes [left + width + ..., padded_channels] already holds pad_code
    # everywhere; the image's columns get their codes x - a_sub, in one run
    # when no channel is padded.  Slices indexed from 0 let LLVM drop the
    # index checks and vectorise.
    runs, run = (1, width * channels) if channels == padded_channels else (width, channels)
    for i in range(runs):
        src = x_flat[x_base + i * run:x_base + (i + 1) * run]
        dst = codes[left * padded_channels + i * padded_channels:left * padded_channels + i * padded_channels + run]
        for c in range(run):
            dst[c] = np.int32(src[c]) - a_sub


@jit_inline
def _tile_at(variant, columns, taps, stride, ring, row_offs, rows, padded_channels, w_taps, c0, ow0, acc, rint):
    # The tile of ``columns`` output columns from column ow0, every 16 channels:
    # int32 into the row of accumulators ``acc`` when ``rint`` is None, else
    # requantized in registers into the output row (see _depthwise_rows).
    for cb in range(0, padded_channels, LANES):
        a_off = ow0 * stride * padded_channels + cb
        if rint is None:
            dw_tile(variant, columns, taps, stride, ring, row_offs, rows, a_off, padded_channels, w_taps, cb, c0, cb,
                    acc, ow0 * padded_channels + cb)
        else:
            scale32, lo, hi, zero_point, channels, out_flat, row_start = rint
            dw_tile_rint(variant, columns, taps, stride, ring, row_offs, rows, a_off, padded_channels, w_taps, cb,
                         c0, cb, scale32, lo, hi, zero_point, channels - cb, out_flat, row_start + ow0 * channels + cb,
                         channels)


@jit_inline
def _exact_tiles(variant, columns, taps, stride, ring, row_offs, rows, padded_channels, w_taps, c0, out_w, acc,
                 rint):
    # A row of a multiple of ``columns`` (a constant) output columns, tile by tile.
    for ow0 in range(0, out_w, columns):
        _tile_at(variant, columns, taps, stride, ring, row_offs, rows, padded_channels, w_taps, c0, ow0, acc, rint)


@jit_inline
def _tiles_of(variant, taps, stride, ring, row_offs, rows, padded_channels, w_taps, c0, out_w, acc, rint):
    # Inlined with constant ``variant``, ``taps`` and ``stride`` (dw_tile needs
    # them at compile time).  Rows of a multiple of 7 columns (and not of 8) in
    # tiles of 7 (see EXACT_COLUMNS); else the last tile of a row moves left to
    # end at the row's end: it computes a few columns twice, with the same
    # result, instead of running them one by one.
    ow0 = 0
    if out_w % TILE_COLUMNS != 0 and out_w % EXACT_COLUMNS == 0:
        _exact_tiles(variant, EXACT_COLUMNS, taps, stride, ring, row_offs, rows, padded_channels, w_taps, c0,
                     out_w, acc, rint)
        ow0 = out_w
    while ow0 < out_w:
        if out_w >= TILE_COLUMNS:
            ow0 = min(ow0, out_w - TILE_COLUMNS)
            _tile_at(variant, TILE_COLUMNS, taps, stride, ring, row_offs, rows, padded_channels, w_taps, c0, ow0,
                     acc, rint)
            ow0 += TILE_COLUMNS
        elif out_w >= HALF_COLUMNS:
            ow0 = min(ow0, out_w - HALF_COLUMNS)
            _tile_at(variant, HALF_COLUMNS, taps, stride, ring, row_offs, rows, padded_channels, w_taps, c0, ow0,
                     acc, rint)
            ow0 += HALF_COLUMNS
        else:
            _tile_at(variant, 1, taps, stride, ring, row_offs, rows, padded_channels, w_taps, c0, ow0, acc, rint)
            ow0 += 1


@jit_inline
def _compiled_in(kernel_w, sw, dw):
    return (kernel_w == 3 or kernel_w == 5) and (sw == 1 or sw == 2) and dw == 1


@jit_inline
def _row_tiles_for(variant, kernel_w, sw, dw, ring, row_offs, kernel_h, padded_channels, w_taps, c0, out_w, acc,
                   rint):
    # The compiled-in windows (3x3 and 5x5 at stride 1 and 2, no dilation),
    # else one tap at a time: ``row_offs`` then lists every tap (see _depthwise_rows;
    # ``rint`` is None there).
    if not _compiled_in(kernel_w, sw, dw):
        for ow in range(out_w):  # one tap per row offset, the stride in the offset
            for cb in range(0, padded_channels, LANES):
                dw_tile(variant, 1, 1, 1, ring, row_offs, row_offs.shape[0], ow * sw * padded_channels + cb,
                        padded_channels, w_taps, cb, c0, cb, acc, ow * padded_channels + cb)
    elif kernel_w == 3 and sw == 1 and out_w % WIDE_COLUMNS == 0 and out_w % TILE_COLUMNS != 0:
        _exact_tiles(variant, WIDE_COLUMNS, 3, 1, ring, row_offs, kernel_h, padded_channels, w_taps, c0, out_w, acc,
                     rint)
    elif kernel_w == 3 and sw == 1:
        _tiles_of(variant, 3, 1, ring, row_offs, kernel_h, padded_channels, w_taps, c0, out_w, acc, rint)
    elif kernel_w == 3:
        _tiles_of(variant, 3, 2, ring, row_offs, kernel_h, padded_channels, w_taps, c0, out_w, acc, rint)
    elif sw == 1:
        _tiles_of(variant, 5, 1, ring, row_offs, kernel_h, padded_channels, w_taps, c0, out_w, acc, rint)
    else:
        _tiles_of(variant, 5, 2, ring, row_offs, kernel_h, padded_channels, w_taps, c0, out_w, acc, rint)


# The scalar arguments of the core, in one int64 array.
SETTINGS = ("kernel_h", "kernel_w", "sh", "sw", "dh", "dw", "top", "left", "a_sub", "pad_code", "padded_channels",
            "chunks", "rounding", "multiplier_bits", "out_zero_point", "clamp_min", "clamp_max", "in_registers")


@jit_inline
def _depthwise_rows(variant, x, w_taps, c0, settings, multiplier, shift, scale, scale32, fixed, code_sample,
                    out):
    # Output rows (n, oh) in ``chunks`` contiguous runs shared out among the
    # threads, each run with its own ring of encoded input rows: ring slot s
    # holds padded input row ih with ih % ring_rows == s, as
    # [codes_width, padded_channels] codes, the image from column ``left``.
    (kernel_h, kernel_w, sh, sw, dh, dw, top, left, a_sub, pad_code, padded_channels, chunks, rounding,
     multiplier_bits, out_zero_point, clamp_min, clamp_max, in_registers) = settings
    n_batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    x_flat, out_flat = x.reshape(x.size), out.reshape(out.size)  # row (n, oh) of out from row * out_w * channels
    ring_rows = (kernel_h - 1) * dh + 1
    codes_width = max((out_w - 1) * sw + (kernel_w - 1) * dw + 1, left + width)
    slot_size = codes_width * padded_channels
    rows_per_image = out_h * sh + ring_rows  # more than any padded row index a window reaches
    whole_rows = _compiled_in(kernel_w, sw, dw)
    total_rows = n_batch * out_h
    # multiplier, shift (int64), scale, scale32 and fixed: intsim.kernels.mac.epilogue_params, made once
    # per call list (requantize_rows then widens nothing per row).
    saturation_count = 0
    for chunk in prange(chunks):
        ring = np.full(ring_rows * slot_size, pad_code, code_sample.dtype)
        held = np.full(ring_rows, -1, np.int64)  # n * rows_per_image + ih of the row each slot holds
        # dw_tile's row offsets: one per kernel row (compiled-in windows) or one per tap
        row_offs = np.empty(kernel_h if whole_rows else kernel_h * kernel_w, np.int64)
        acc = np.empty(out_w * padded_channels, np.int32)
        for row in range(chunk * total_rows // chunks, (chunk + 1) * total_rows // chunks):
            n, oh = row // out_h, row % out_h
            for kh in range(kernel_h):
                ih = oh * sh + kh * dh  # padded coordinates: the image starts at row ``top``
                slot = ih % ring_rows
                if held[slot] != n * rows_per_image + ih:
                    held[slot] = n * rows_per_image + ih
                    slot_codes = ring[slot * slot_size:(slot + 1) * slot_size]
                    if 0 <= ih - top < height:
                        _code_row(x_flat, (n * height + ih - top) * width * channels, width, channels,
                                  padded_channels, a_sub, left, slot_codes)
                    else:
                        slot_codes[:] = pad_code
                if whole_rows:
                    row_offs[kh] = slot * slot_size
                else:
                    for kw in range(kernel_w):
                        row_offs[kh * kernel_w + kw] = slot * slot_size + kw * dw * padded_channels
            if in_registers and rounding == FLOAT32_RINT:  # in the tiles' registers, straight into the output row
                rint = (scale32, clamp_min - out_zero_point, clamp_max - out_zero_point, out_zero_point, channels,
                        out_flat, row * out_w * channels)
                _row_tiles_for(variant, kernel_w, sw, dw, ring, row_offs, kernel_h, padded_channels, w_taps, c0,
                               out_w, acc, rint)
            elif in_registers:
                fixed_rint = (fixed, clamp_min - out_zero_point, clamp_max - out_zero_point, out_zero_point,
                              channels, out_flat, row * out_w * channels)
                _row_tiles_for(variant, kernel_w, sw, dw, ring, row_offs, kernel_h, padded_channels, w_taps, c0,
                               out_w, acc, fixed_rint)
            else:
                _row_tiles_for(variant, kernel_w, sw, dw, ring, row_offs, kernel_h, padded_channels, w_taps, c0,
                               out_w, acc, None)
                # the core reads the leading ``channels`` columns of the padded rows
                saturation_count += requantize_rows(rounding, acc.reshape(out_w, padded_channels), 0, multiplier,
                                                    shift, scale, multiplier_bits, out_zero_point, clamp_min,
                                                    clamp_max, out[n, oh])
    return saturation_count


def _cores(variant):
    # The core twice, from one inlined body: with threads (its prange a
    # parallel loop) and serial, which one thread takes to skip the thread
    # pool's launch.  ``variant`` is a constant of the closure, as dw_tile
    # needs it; only the variants that run are ever compiled.
    @jit_parallel
    def threaded(x, w_taps, c0, settings, multiplier, shift, scale, scale32, fixed, code_sample, out):
        return _depthwise_rows(variant, x, w_taps, c0, settings, multiplier, shift, scale, scale32, fixed,
                               code_sample, out)

    @jit
    def serial(x, w_taps, c0, settings, multiplier, shift, scale, scale32, fixed, code_sample, out):
        return _depthwise_rows(variant, x, w_taps, c0, settings, multiplier, shift, scale, scale32, fixed,
                               code_sample, out)

    return serial, threaded


# (serial, threaded) core per pairs variant
CORES = {isa.pairs: _cores(isa.pairs) for isa in ISAS.values()}


@dataclass(frozen=True)
class PackedDepthwise:
    """Depthwise weights ``w - z_w`` packed for :func:`dw_tile`.

    ``weights`` is ``[KH * KW, padded_channels]`` (channels rounded up to 16,
    padded channels zero), int8 when every ``w - z_w`` fits int8 (one byte per
    tap and channel, as the graph stores it), else int16; ``c0`` int32
    ``[padded_channels]`` the start value (wrapped to int32, exact modulo
    ``2**32``).  Activations are encoded as ``x - a_sub`` into ``code_dtype``,
    padding as ``pad_code``; ``variant`` is the ISA's pairs variant.
    """

    variant: int
    weights: np.ndarray
    c0: np.ndarray
    a_sub: int
    pad_code: int
    code_dtype: np.dtype
    launches: dict = field(default_factory=dict, compare=False, repr=False)


def pack_depthwise(w_centred, variant, a_sub, code_dtype, x_zero_point, bias) -> PackedDepthwise:
    """Pack ``w_centred`` [C, KH * KW] (int64, ``w - z_w``, in int16) for the pairs ``variant``, activation
    codes ``x - a_sub`` of ``code_dtype`` (uint8, or int16 holding ``x - z_x``)."""
    channels = w_centred.shape[0]
    padded_channels = -(-channels // LANES) * LANES
    narrow = not w_centred.size or (-128 <= w_centred.min() and w_centred.max() <= 127)
    weights = np.zeros((w_centred.shape[1], padded_channels), np.int8 if narrow else np.int16)
    weights[:, :channels] = w_centred.T
    c0 = np.zeros(padded_channels, np.int64)
    c0[:channels] = bias.astype(np.int64) + (a_sub - int(x_zero_point)) * w_centred.sum(axis=1)
    return PackedDepthwise(variant, weights.reshape(-1), c0.astype(np.int32), a_sub, int(x_zero_point) - a_sub,
                           np.dtype(code_dtype))


def depthwise_calls(x, packed, kernel, strides, dilations, pads, chunks, requant, out, count_clamps=True):
    """``[(numba function, arguments)]`` that :func:`depthwise_run` runs (one call; it returns the clamp
    count), for a caller that keeps ``x`` and ``out`` and repeats it."""
    multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max = requant
    key = (kernel, strides, dilations, pads, chunks, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max,
           count_clamps)
    if key not in packed.launches:
        in_registers = (requantized_in_registers(rounding, out_zero_point, clamp_min, clamp_max, count_clamps)
                        and _compiled_in(kernel[1], strides[1], dilations[1]))
        packed.launches[key] = np.array(
            [kernel[0], kernel[1], strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1],
             packed.a_sub, packed.pad_code, packed.c0.shape[0], chunks, rounding, multiplier_bits, out_zero_point,
             clamp_min, clamp_max, in_registers], np.int64)
    settings = packed.launches[key]
    serial, threaded = CORES[packed.variant]
    return [(threaded if chunks > 1 else serial,
             (x, packed.weights, packed.c0, settings,
              *epilogue_params(multiplier, shift, scale, rounding, multiplier_bits, settings[-1], x.shape[-1],
                               packed.c0.shape[0]),
              np.zeros(1, packed.code_dtype), out))]


def depthwise_run(x, packed, kernel, strides, dilations, pads, chunks, requant, out, count_clamps=True):
    """Output codes of a depthwise layer into ``out`` [N, OH, OW, C] from NHWC codes ``x``; returns the clamp
    count, or ``None`` without ``count_clamps``.

    ``requant`` is ``(multiplier, shift, scale, rounding, multiplier_bits,
    out_zero_point, clamp_min, clamp_max)`` as in
    :func:`intsim.kernels.mac.requantize`; ``chunks`` runs of output rows go to
    the threads.  Without ``count_clamps``, ``FLOAT32_RINT`` within the 32-bit
    lanes' bounds is requantized in the tiles' registers (compiled-in windows;
    see :func:`intsim.kernels.gemm.conv2d_nhwc_requantized`).
    """
    count = run_calls(depthwise_calls(x, packed, kernel, strides, dilations, pads, chunks, requant, out, count_clamps))
    return int(count) if count_clamps else None
