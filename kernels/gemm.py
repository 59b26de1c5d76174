"""Fast conv2d / fully-connected / matmul with the requantization fused into the epilogue.

Each op comes as a pair: ``*_prepare`` packs the weights once (when a model
is built), ``*_requantized`` runs a batch and returns output codes without
writing an int32 tensor (white paper §2.1 MAC array, §2.2 requantization).

The fast path computes ``bias + sum (x - z_x)(w - z_w)`` as one GEMM per
chunk of output pixels: the register-tiled micro-kernel of
:mod:`intsim.kernels.microkernel` over 16 output channels at a time, then
:func:`intsim.kernels.mac.requantize_core` on the chunk's accumulators; for
``FLOAT32_RINT`` within the 32-bit lanes' preconditions (zero accumulator zero
point, output zero point and clamp bounds within 2**16), when the caller does
not ask for the clamp count (``count_clamps=False``: a model's bound steps),
the micro-kernel requantizes its tile in registers and stores output codes
(no int32 chunk).
Where the micro-kernel reads its rows:

implicit GEMM (dense convs of more than one tap, and 1x1 convs whose codes already are the packed form)
    The weights are packed per tap, each tap's ``Cin`` padded with zero
    weights to whole groups.  The input is encoded once per call into an
    NHWC copy with its padding border (``z_x`` encoded) and its channels
    padded likewise (none when the codes already are the packed form and
    nothing is padded: then they are read where they lie).  Every row of a
    tile is then the top-left pixel of its output pixel's window, whatever
    the stride, and each tap a fixed offset from it; with ``dw == 1`` a whole
    window row is one contiguous run and one tap.  No patch matrix.
im2col (other 1x1 convs, matmul, fully-connected layers whose weights are not int8)
    Each chunk's windows are encoded into an L2-sized patch matrix.

Depthwise convs (one input channel per output channel) run the kernel of
:mod:`intsim.kernels.depthwise` instead, with the same encodings.
Fully-connected layers over int8 weights in C order (the graph's ``[O, K]``
array) keep no packed copy: the kernel of :mod:`intsim.kernels.rowdot` reads
every weight row where it lies, 64 (quads) or 32 (pairs) weights per
vector, against the encoded rows of the input, and the zero point ``z_w``
of the weights becomes a run-time term ``- z_w * sum(x - a_sub)`` in the
accumulator's start value (see :class:`InPlaceWeights`).  uint8 or int16
weights, or weights not in C order, are packed and take the GEMV launch (up
to :data:`GEMV_MAX_ROWS` rows) or im2col.  The in-place kernel splits the
exact sum differently from the hardware order, which the argument below
covers all the same: every partial sum is exact modulo ``2**32``.

It is taken only where it is provably the exact result of the hardware order
of :func:`intsim.kernels.mac.conv2d_nhwc_acc`: no pairwise int16 saturation,
and the static bound ``|c0| + K max|x| max|w| + |z_w| K max|x|`` (``max|x|``
over the whole input dtype and ``z_x``) fits ``acc_bits`` <= 32.  Then no step
of the hardware order overflows, the order of the additions cannot matter,
and int32 arithmetic modulo ``2**32`` (which the micro-kernel and the
depthwise kernel use) ends on the exact sum.  Everywhere else the unfused
kernels of :mod:`intsim.kernels.mac` run, bit-exact first.

Operand encodings (chosen per layer at prepare):

pairs
    ``x - z_x`` and ``w - z_w`` as int16 (they span at most [-255, 255] for
    8-bit codes); every ISA has an exact int16 pair instruction.
quads
    uint8 activations (``x`` itself for uint8, ``x + 128`` for int8) and
    int8 ``w - z_w``; the zero point moves into the start value,
    ``c0 = bias + (a_sub - z_x) * sum_k (w - z_w)`` where ``a_sub`` is what
    was subtracted from ``x``.  Needs ``w - z_w`` in [-128, 127].

Padding taps hold ``z_x``, encoded like any other code; the reduction (or
each tap's run of it) is padded to a whole group with zero weights (and zero
activations in im2col).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cached_property

import numba
import numpy as np
from numba import njit, prange

from intsim.config import threads_setting
from intsim.errors import ValidationError
from intsim.kernels import isa as isa_module
from intsim.kernels.isa import (
    AVX2_PAIRS,
    AVX512_PAIRS,
    GROUP,
    PORTABLE_PAIRS,
    PORTABLE_QUADS,
    TILE_BLOCKS,
    TILE_ROWS,
    VNNI_PAIRS,
    VNNI_QUADS,
    tile_rows,
)
from intsim.kernels.depthwise import PackedDepthwise, depthwise_run, pack_depthwise
from intsim.kernels.mac import (
    _c0_per_output,
    _conv2d_out,
    _fits,
    requantize_core,
    _weighted_bound,
    as_int64,
    conv2d_nhwc_acc,
    fully_connected_acc,
    matmul_acc,
    requantize,
    requantized_in_registers,
)
from intsim.kernels.microkernel import LANES, mac_tile, mac_tile_taps, mac_tile_taps_rint
from intsim.kernels.rowdot import row_dots

# Output pixels per chunk: 96 rows of a 3x3x256 reduction in int16 are
# 440 KiB, inside a 1 MiB L2 with the weights of one 16-channel block.  A
# multiple of every tile's rows (24, 12, 8, 6, 4): only a last chunk is padded.
CHUNK_ROWS = 96
# A GEMM that neither copies patches nor writes an int32 tile (the implicit GEMM requantized in
# registers) keeps no per-chunk buffer but its row offsets, so it takes longer chunks: a chunk's
# fixed cost (a call, the row offsets, array views) is then spread over up to this many rows, while
# a layer still splits into several chunks for the threads.  A multiple of CHUNK_ROWS.
LONG_CHUNK_ROWS = 1536


def _chunk_rows(n_rows: int, long_chunks: bool) -> int:
    """Output rows per chunk of a GEMM over ``n_rows`` rows: CHUNK_ROWS, or with ``long_chunks``
    about an eighth of the rows in whole CHUNK_ROWS, between CHUNK_ROWS and LONG_CHUNK_ROWS."""
    if not long_chunks:
        return CHUNK_ROWS
    return min(LONG_CHUNK_ROWS, max(CHUNK_ROWS, -(-n_rows // (8 * CHUNK_ROWS)) * CHUNK_ROWS))


def _threads_from_environment() -> int:
    value = threads_setting()
    if not value.isdigit() or not 1 <= int(value) <= numba.config.NUMBA_NUM_THREADS:
        raise ValidationError(f"environment variable INTSIM_THREADS must be an integer in "
                              f"[1, {numba.config.NUMBA_NUM_THREADS}] (NUMBA_NUM_THREADS), found {value!r}")
    return int(value)


_threads = _threads_from_environment()


def set_threads(threads: int) -> int:
    """Threads the fused conv / fully-connected kernels share chunks of output pixels among; returns the old value.

    One by default (results never depend on it: every output is computed by
    one thread in the same order).  At most ``numba.config.NUMBA_NUM_THREADS``;
    anything else raises :class:`~intsim.errors.ValidationError`.
    """
    global _threads
    limit = numba.config.NUMBA_NUM_THREADS
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise ValidationError(f"set_threads: threads must be an integer in [1, {limit}] (NUMBA_NUM_THREADS), "
                              f"found {threads!r}")
    previous, _threads = _threads, threads
    return previous


_applied = threading.local()


def _apply_threads(work_items) -> int:
    # No more threads than items of work (waking a thread that has nothing to
    # do costs a scheduler time slice on a busy machine).  numba's thread
    # count is per calling thread and costs microseconds to set, so it is set
    # only when it changes.  Returns the thread count.
    threads = max(1, min(_threads, work_items))
    if getattr(_applied, "threads", None) != threads:
        numba.set_num_threads(threads)
        _applied.threads = threads
    return threads


# --------------------------------------------------------------------------
# GEMM over one chunk of rows
# --------------------------------------------------------------------------


@njit(inline="always")
def _column_tiles(variant, blocks, a, rows, a_rows, taps, w, groups, c0, acc_flat, c_stride, nb, rint):
    # Columns nb .. nb + width of the first ``rows`` rows (a_rows and acc hold
    # the rows up to the last tile's end, see _padded_rows), in tiles of ``blocks`` blocks
    # (a compile-time constant; 0: the variant's full width) and their rows
    # (tile_rows).  The tile's weights are reused by every row tile of the
    # chunk before the next blocks are read.  int32 tiles go into acc_flat
    # when ``rint`` is None; otherwise each tile is requantized in registers
    # into rint's output.  The loops call
    # the micro-kernel directly: an inlined helper would rebind its array
    # arguments on every tile, and numba counts each binding with an atomic
    # reference increment and decrement.
    width = blocks if blocks else TILE_BLOCKS[variant]
    step = tile_rows(variant, width)
    w_off = nb * taps.shape[0] * groups * LANES
    c0_off = nb * LANES
    if rint is None:
        for r in range(0, rows, step):
            mac_tile_taps(variant, 0, blocks, a, a_rows, r, taps, w, w_off, groups, c0, c0_off, acc_flat,
                          r * c_stride + c0_off, c_stride)
    else:
        scale32, lo, hi, zero_point, valid_rows, channels, out_flat = rint
        for r in range(0, rows, step):
            mac_tile_taps_rint(variant, 0, blocks, a, a_rows, r, taps, w, w_off, groups, c0, c0_off, scale32, lo,
                               hi, zero_point, valid_rows - r, channels - c0_off, out_flat, r * channels + c0_off,
                               channels)


@njit(inline="always")
def _gemm_tiles(variant, a, rows, a_rows, taps, w, groups, c0, acc, rint):
    # acc [_padded_rows, n_blocks * 16] receives c0 plus, for every row r < rows
    # (and the padding rows of the last tiles), the sum over the taps t of the
    # ``groups`` words of ``a`` from a_rows[r] + taps[t] against the weights of tap t.
    # Full-width tiles, then one taller, narrower tile over the blocks left
    # over (see isa.tile_rows).  Inlined with a constant ``variant``, which
    # mac_tile_taps needs at compile time.  With ``rint`` = (float32 scales
    # padded like c0, lo, hi, zero point, valid rows, channels, the chunk's
    # flat output [valid rows * channels]) the tiles are requantized in
    # registers instead (acc unused).
    n_blocks = c0.shape[0] // LANES
    acc_flat = acc.reshape(acc.size)
    c_stride = acc.shape[1]
    full = n_blocks - n_blocks % TILE_BLOCKS[variant]
    for nb in range(0, full, TILE_BLOCKS[variant]):
        _column_tiles(variant, 0, a, rows, a_rows, taps, w, groups, c0, acc_flat, c_stride, nb, rint)
    rest = n_blocks - full
    if rest == 1:
        _column_tiles(variant, 1, a, rows, a_rows, taps, w, groups, c0, acc_flat, c_stride, full, rint)
    elif rest == 2:
        _column_tiles(variant, 2, a, rows, a_rows, taps, w, groups, c0, acc_flat, c_stride, full, rint)
    elif rest == 3:
        _column_tiles(variant, 3, a, rows, a_rows, taps, w, groups, c0, acc_flat, c_stride, full, rint)


@njit(inline="always")
def _padded_rows(variant, n_blocks, rows):
    # The rows a chunk of ``rows`` rows is padded to: the end of the last row
    # tile of each tile shape _gemm_tiles runs over ``n_blocks`` blocks (the
    # full tiles' TILE_ROWS, the leftover blocks' taller tile).  Each shape
    # pads on its own, so a few rows (a small batch's fully-connected layer)
    # are not padded to a common multiple of both.
    full, width = TILE_ROWS[variant], TILE_BLOCKS[variant]
    rest = n_blocks % width
    padded = -(-rows // full) * full if n_blocks >= width else rows
    if rest:
        tall = tile_rows(variant, rest)
        padded = max(padded, -(-rows // tall) * tall)
    return padded


@njit(cache=True)
def _gemm_chunk(variant, a, rows, a_rows, taps, w, groups, c0, acc, rint):
    # _gemm_tiles with ``variant`` made a compile-time constant.
    if variant == VNNI_QUADS:
        _gemm_tiles(VNNI_QUADS, a, rows, a_rows, taps, w, groups, c0, acc, rint)
    elif variant == VNNI_PAIRS:
        _gemm_tiles(VNNI_PAIRS, a, rows, a_rows, taps, w, groups, c0, acc, rint)
    elif variant == AVX512_PAIRS:
        _gemm_tiles(AVX512_PAIRS, a, rows, a_rows, taps, w, groups, c0, acc, rint)
    elif variant == AVX2_PAIRS:
        _gemm_tiles(AVX2_PAIRS, a, rows, a_rows, taps, w, groups, c0, acc, rint)
    elif variant == PORTABLE_QUADS:
        _gemm_tiles(PORTABLE_QUADS, a, rows, a_rows, taps, w, groups, c0, acc, rint)
    else:
        _gemm_tiles(PORTABLE_PAIRS, a, rows, a_rows, taps, w, groups, c0, acc, rint)


@njit(cache=True)
def _copy_encoded(src, src_start, count, a_sub, dst, dst_start):
    # Slices first: indexing them from 0 lets LLVM drop the index checks and vectorise.
    source = src[src_start:src_start + count]
    target = dst[dst_start:dst_start + count]
    for j in range(count):
        target[j] = source[j] - a_sub


@njit(cache=True)
def _fill(dst, start, count, value):
    dst[start:start + count] = value


@njit(inline="always")
def _pixel_before(m0, out_h, out_w):
    # (n, oh, ow) of the output pixel before flat pixel m0, so that _next_pixel
    # gives pixel m0: one division per chunk, then rows are stepped (a division
    # per row costs as much as copying a small window).
    per_image = out_h * out_w
    n = m0 // per_image
    oh = (m0 - n * per_image) // out_w
    return n, oh, m0 - n * per_image - oh * out_w - 1


@njit(inline="always")
def _next_pixel(n, oh, ow, out_h, out_w):
    ow += 1
    if ow == out_w:
        ow = 0
        oh += 1
        if oh == out_h:
            oh = 0
            n += 1
    return n, oh, ow


@njit(cache=True)
def _im2col(x, m0, rows, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw, top, left, a_sub, pad_code, patches):
    # patches [rows, row_len]: the encoded window of output pixel m0 + r in
    # (kh, kw, ci) order, then zeros up to the whole group.  Codes move in
    # contiguous runs of the NHWC input: one run of ``cin`` per tap, or of
    # ``kernel_w * cin`` per window row when dw == 1 and the row is inside.
    n_batch, height, width, cin = x.shape
    x_flat = x.reshape(x.size)
    patch_flat = patches.reshape(patches.size)
    row_len = patches.shape[1]
    n, oh, ow = _pixel_before(m0, out_h, out_w)
    for r in range(rows):
        n, oh, ow = _next_pixel(n, oh, ow, out_h, out_w)
        dst = r * row_len
        iw0 = ow * sw - left
        row_inside = dw == 1 and iw0 >= 0 and iw0 + kernel_w <= width
        for kh in range(kernel_h):
            ih = oh * sh - top + kh * dh
            if ih < 0 or ih >= height:
                _fill(patch_flat, dst, kernel_w * cin, pad_code)
            elif row_inside:
                _copy_encoded(x_flat, ((n * height + ih) * width + iw0) * cin, kernel_w * cin, a_sub, patch_flat, dst)
            else:
                for kw in range(kernel_w):
                    iw = iw0 + kw * dw
                    if 0 <= iw < width:
                        _copy_encoded(x_flat, ((n * height + ih) * width + iw) * cin, cin, a_sub, patch_flat,
                                      dst + kw * cin)
                    else:
                        _fill(patch_flat, dst + kw * cin, cin, pad_code)
            dst += kernel_w * cin
        _fill(patch_flat, dst, r * row_len + row_len - dst, 0)


@njit(cache=True)
def _pad_encode(x, top, left, a_sub, pad_code, padded):
    # padded [N, PH, PW, CP]: x - a_sub at (top + ih, left + iw, c) for c < Cin,
    # zeros in the channels up to CP (their weights are zero), ``pad_code``
    # in the border pixels; input rows and columns past PH, PW are dropped
    # (no window reaches them).  The pixels are encoded by inlined loops (a
    # pixel of an RGB image is three codes, too few for a call each).
    n_batch, height, width, cin = x.shape
    padded_h, padded_w, padded_c = padded.shape[1], padded.shape[2], padded.shape[3]
    x_flat = x.reshape(x.size)
    padded_flat = padded.reshape(padded.size)
    left_px = min(left, padded_w)
    inside = max(0, min(width, padded_w - left_px))
    row_len = padded_w * padded_c
    for n in range(n_batch):
        for ph in range(padded_h):
            ih = ph - top
            row = padded_flat[(n * padded_h + ph) * row_len:(n * padded_h + ph + 1) * row_len]
            if ih < 0 or ih >= height:
                row[:] = pad_code
                continue
            source = x_flat[(n * height + ih) * width * cin:(n * height + ih + 1) * width * cin]
            row[:left_px * padded_c] = pad_code
            body = row[left_px * padded_c:(left_px + inside) * padded_c]
            if padded_c == cin:
                _encode_pixels(1, 1, source, body, inside * cin, a_sub)
            elif cin == 3 and padded_c == 4:  # RGB stems
                _encode_pixels(3, 4, source, body, inside, a_sub)
            else:
                _encode_pixels(cin, padded_c, source, body, inside, a_sub)
            row[(left_px + inside) * padded_c:] = pad_code


@njit(inline="always")
def _encode_pixels(cin, padded_c, source, body, count, a_sub):
    # body[p * padded_c + c] = source[p * cin + c] - a_sub for p < count and
    # c < cin, zero for the other channels.  Inlined with constant channel
    # counts, the inner loops unroll.
    for p in range(count):
        for c in range(cin):
            body[p * padded_c + c] = source[p * cin + c] - a_sub
        for c in range(cin, padded_c):
            body[p * padded_c + c] = 0


@njit(cache=True)
def _pixel_rows(m0, out_h, out_w, sh, sw, source_h, source_w, pixel_words, a_rows):
    # a_rows[r]: the first word, in an NHWC source of ``pixel_words`` words per
    # pixel, of the window of output pixel m0 + r (its top-left tap).
    n, oh, ow = _pixel_before(m0, out_h, out_w)
    for r in range(a_rows.shape[0]):
        n, oh, ow = _next_pixel(n, oh, ow, out_h, out_w)
        a_rows[r] = ((n * source_h + oh * sh) * source_w + ow * sw) * pixel_words


# The scalar arguments of _conv2d_gemm_rows, in one int64 array (one argument
# to type-check per call instead of twenty).
GEMM_SETTINGS = ("implicit", "a_sub", "pad_code", "out_h", "out_w", "kernel_h", "kernel_w", "sh", "sw", "dh", "dw",
                 "top", "left", "groups", "chunk_rows", "row_len", "source_h", "source_w", "pixel_words", "rounding",
                 "multiplier_bits", "out_zero_point", "clamp_min", "clamp_max", "in_registers")


@njit(inline="always")
def _conv2d_gemm_rows(variant, x, source, taps, w, c0, multiplier, shift, scale, settings, code_sample, out):
    # out [M, Cout] with M = N * OH * OW, in chunks of ``chunk_rows`` output
    # pixels shared out among the threads, each chunk with its own buffers.
    # ``implicit``: ``source`` holds the packed activations as NHWC pixels of
    # ``pixel_words`` words ([N, source_h, source_w], padding included), read
    # in place: row r of a tile starts at its window's top-left pixel and tap
    # t (``groups`` words) lies taps[t] words further.  Otherwise each chunk's
    # windows are copied into a patch matrix (im2col) and ``taps`` is [0].
    # ``code_sample`` carries the code dtype.
    (implicit, a_sub, pad_code, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw, top, left, groups, chunk_rows,
     row_len, source_h, source_w, pixel_words, rounding, multiplier_bits, out_zero_point, clamp_min,
     clamp_max, in_registers) = settings
    n_rows = out.shape[0]
    multiplier, shift = as_int64(multiplier), as_int64(shift)  # once, not per requantized chunk
    scale32 = np.zeros(c0.shape[0], np.float32)
    for c in range(out.shape[1]):
        scale32[c] = np.float32(scale[c])
    saturation_count = 0
    n_chunks = (n_rows + chunk_rows - 1) // chunk_rows
    # Every chunk's row offsets in one array (a slice each, so threads share nothing), and no
    # int32 tile when the tiles are requantized in registers: a chunk allocates nothing then.
    chunk_stride = _padded_rows(variant, c0.shape[0] // LANES, chunk_rows)
    all_rows = np.empty(n_chunks * chunk_stride, np.int64)
    no_acc = np.empty((0, c0.shape[0]), np.int32)
    for chunk in prange(n_chunks):
        m0 = chunk * chunk_rows
        rows = min(chunk_rows, n_rows - m0)
        # Whole row tiles: the rows past ``rows`` repeat row 0 and are not requantized.
        tiled_rows = _padded_rows(variant, c0.shape[0] // LANES, rows)
        acc = no_acc if in_registers else np.empty((tiled_rows, c0.shape[0]), np.int32)
        a_rows = all_rows[chunk * chunk_stride:chunk * chunk_stride + tiled_rows]
        if implicit:
            _pixel_rows(m0, out_h, out_w, sh, sw, source_h, source_w, pixel_words, a_rows[:rows])
            a = source
        else:
            patches = np.empty((rows, row_len), code_sample.dtype)
            _im2col(x, m0, rows, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw, top, left, a_sub, pad_code,
                    patches)
            for r in range(rows):
                a_rows[r] = r * groups
            a = patches.reshape(patches.size).view(np.int32)
        a_rows[rows:] = a_rows[0]
        if in_registers:
            rint = (scale32, clamp_min - out_zero_point, clamp_max - out_zero_point, out_zero_point, rows,
                    out.shape[1], out[m0:m0 + rows].reshape(rows * out.shape[1]))
            _gemm_chunk(variant, a, rows, a_rows, taps, w, groups, c0, acc, rint)
        else:
            _gemm_chunk(variant, a, rows, a_rows, taps, w, groups, c0, acc, None)
            saturation_count += requantize_core(acc[:rows], 0, multiplier, shift, scale, rounding,
                                                 multiplier_bits, out_zero_point, clamp_min, clamp_max,
                                                 out[m0:m0 + rows])
    return saturation_count


# The GEMM core twice, from one inlined body: with threads (its prange a
# parallel loop) and serial (the prange a plain loop), which one thread takes
# to skip the thread pool's launch (about 2 us a call).
@njit(cache=True, parallel=True)
def _conv2d_gemm_threaded(variant, x, source, taps, w, c0, multiplier, shift, scale, settings, code_sample, out):
    return _conv2d_gemm_rows(variant, x, source, taps, w, c0, multiplier, shift, scale, settings, code_sample, out)


@njit(cache=True)
def _conv2d_gemm_serial(variant, x, source, taps, w, c0, multiplier, shift, scale, settings, code_sample, out):
    return _conv2d_gemm_rows(variant, x, source, taps, w, c0, multiplier, shift, scale, settings, code_sample, out)


# --------------------------------------------------------------------------
# GEMV: fully-connected layers over a few rows
# --------------------------------------------------------------------------

# Fully-connected inputs of at most this many rows take the GEMV launch (rows x 4 blocks of the
# widest tile are 16 zmm accumulators, of 32).
GEMV_MAX_ROWS = 4


@njit(inline="always")
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


@njit(inline="always")
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


@njit(cache=True)
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
        _copy_encoded(x[r], 0, depth, a_sub, codes[r], 0)
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
    return requantize_core(acc, 0, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
                            clamp_max, out)


class _GemvLaunch:
    """The GEMV over codes [M, K] (M <= :data:`GEMV_MAX_ROWS`) of one layer and requantization, its
    arguments worked out once: ``run(x, out)`` writes ``out`` [M, O] and returns the clamp count."""

    def __init__(self, packed, requant):
        multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max = requant
        self.args = (packed.variant, packed.words, packed.c0, np.asarray(multiplier, np.int32),
                     np.asarray(shift, np.int32), np.asarray(scale, np.float64))
        self.settings = np.array([packed.a_sub, packed.groups, packed.row_len, rounding, multiplier_bits,
                                  out_zero_point, clamp_min, clamp_max], np.int64)
        self.code_sample = packed.code_sample

    def run(self, x, out):
        variant, words, c0, multiplier, shift, scale = self.args
        return int(_gemv_core(variant, x, words, c0, multiplier, shift, scale, self.settings, self.code_sample, out))


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


def _in_place(x_dtype, x_zero_point, w, w_zero_point, bias):
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


@njit(inline="always")
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


@njit(inline="always")
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


@njit(inline="always")
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
    return requantize_core(acc, 0, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
                            clamp_max, out)


# The kernel per variant (a compile-time constant of each), serial and threaded from one inlined
# body (see _conv2d_gemm_threaded); each is compiled on its own, at its first call.  (Inlining every
# variant into one function behind a run-time switch made the VNNI one 15% slower.)
def _in_place_serial(variant):
    @njit(cache=True)
    def core(x, w, c0, w_zero_point, multiplier, shift, scale, settings, code_sample, out):
        return _fully_connected_in_place_rows(variant, x, w, c0, w_zero_point, multiplier, shift, scale, settings,
                                              code_sample, out)

    return core


def _in_place_threaded(variant):
    @njit(cache=True, parallel=True)
    def core(x, w, c0, w_zero_point, multiplier, shift, scale, settings, code_sample, out):
        return _fully_connected_in_place_rows(variant, x, w, c0, w_zero_point, multiplier, shift, scale, settings,
                                              code_sample, out)

    return core


_IN_PLACE_SERIAL = tuple(_in_place_serial(variant) for variant in range(len(GROUP)))
_IN_PLACE_THREADED = tuple(_in_place_threaded(variant) for variant in range(len(GROUP)))


class _InPlaceLaunch:
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
        self.code_sample = np.zeros(1, in_place.code_dtype)

    def run(self, x, out):
        in_place = self.in_place
        core = _IN_PLACE_SERIAL[in_place.variant]
        if min(_threads, self.chunks) > 1:
            core = _IN_PLACE_THREADED[in_place.variant]
            _apply_threads(self.chunks)
        return int(core(np.ascontiguousarray(x), self.w, in_place.c0, in_place.w_zero_point, *self.requant,
                        self.settings, self.code_sample, out))


# --------------------------------------------------------------------------
# Packing (once per layer)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PackedWeights:
    """Weights ``w - z_w`` [O, K] packed for one micro-kernel variant.

    ``words`` is int32 ``[O/16, groups, 16]`` (O rounded up to 16, padded
    channels zero), each word one group of ``GROUP[variant]`` reduction values
    of one output channel; ``c0`` int32 [O rounded up] is the accumulator start
    (wrapped to int32; see the module docstring for why wrapping is exact).
    Activations are encoded as ``x - a_sub`` into ``code_dtype``.  The
    reduction is ``taps`` runs of equal length (the KH x KW taps of a conv
    packed for the implicit GEMM, else one run), each padded with zero
    weights to a whole number of groups.
    """

    variant: int
    words: np.ndarray
    c0: np.ndarray
    groups: int
    a_sub: int
    pad_code: int
    code_dtype: np.dtype
    taps: int = 1

    @property
    def row_len(self) -> int:
        return self.groups * GROUP[self.variant]

    @property
    def tap_groups(self) -> int:
        """Groups (int32 words) per tap."""
        return self.groups // self.taps

    @property
    def code_sample(self) -> np.ndarray:
        """A one-element array of ``code_dtype``: how the numba kernels learn the dtype."""
        return np.zeros(1, self.code_dtype)


def _encoding(isa, x_dtype, x_zero_point, w_min, w_max):
    """``(variant, a_sub, code_dtype)`` for activations of ``x_dtype``, or ``None`` if no encoding is exact."""
    info = np.iinfo(x_dtype)
    if info.bits != 8:
        return None
    if isa.quads is not None and -128 <= w_min and w_max <= 127:
        a_sub = 0 if info.min == 0 else -128
        if 0 <= x_zero_point - a_sub <= 255:
            return isa.quads, a_sub, np.dtype(np.uint8)
    lo, hi = min(info.min, x_zero_point) - x_zero_point, max(info.max, x_zero_point) - x_zero_point
    if -(2**15) <= min(lo, w_min) and max(hi, w_max) < 2**15:
        return isa.pairs, x_zero_point, np.dtype(np.int16)
    return None


def _pack(w_centred, x_dtype, x_zero_point, bias, taps=1):
    """:class:`PackedWeights` of ``w_centred`` [O, K] (int64, ``w - z_w``) for the current ISA, or ``None``.

    ``taps`` splits K into that many equal runs, each padded to whole groups.
    """
    n_out, depth = w_centred.shape
    w_min, w_max = (int(w_centred.min()), int(w_centred.max())) if w_centred.size else (0, 0)
    encoding = _encoding(isa_module.current_isa(), x_dtype, int(x_zero_point), w_min, w_max)
    if encoding is None:
        return None
    variant, a_sub, code_dtype = encoding
    group = GROUP[variant]
    tap_depth = depth // taps
    groups = taps * -(-tap_depth // group)
    padded_out = -(-n_out // LANES) * LANES
    grid = np.zeros((padded_out, taps, groups // taps * group), np.int16 if group == 2 else np.int8)
    grid[:n_out, :, :tap_depth] = w_centred.reshape(n_out, taps, tap_depth)
    words = grid.reshape(padded_out // LANES, LANES, groups, group).transpose(0, 2, 1, 3)
    words = np.ascontiguousarray(words).view(np.int32).reshape(-1)
    c0 = np.zeros(padded_out, np.int64)
    c0[:n_out] = bias.astype(np.int64) + (a_sub - int(x_zero_point)) * w_centred.sum(axis=1)
    c0 = c0.astype(np.int32)  # wraps: exact modulo 2**32
    return PackedWeights(variant, words, c0, groups, a_sub, int(x_zero_point) - a_sub, code_dtype, taps)


def _static_fast(x_dtype, x_zero_point, w_rows, w_zero_point, bias, acc_bits, pairwise_int16):
    """Whether no step of the hardware order can overflow for any input of ``x_dtype``."""
    if pairwise_int16 or acc_bits > 32:
        return False
    info = np.iinfo(x_dtype)
    max_x = max(abs(int(info.min)), abs(int(info.max)), abs(int(x_zero_point)))
    c0 = _c0_per_output(x_zero_point, w_rows, w_zero_point, bias)
    return _fits(_weighted_bound(c0, w_rows.shape[1], max_x, w_rows, w_zero_point), acc_bits)


def _matmul_static_fast(dtype, a_zero_point, b_zero_point, depth, acc_bits, pairwise_int16):
    """:func:`_static_fast` for :func:`~intsim.kernels.mac.matmul_acc`'s order, both operands of ``dtype``."""
    if pairwise_int16 or acc_bits > 32:
        return False
    info = np.iinfo(dtype)
    max_a = max(abs(int(info.min)), abs(int(info.max)), abs(a_zero_point))
    max_b = max(abs(int(info.min)), abs(int(info.max)), abs(b_zero_point))
    c0 = depth * a_zero_point * b_zero_point
    bound = abs(c0) + depth * (max_a * max_b + abs(b_zero_point) * max_a + abs(a_zero_point) * max_b)
    return _fits(bound, acc_bits)


# --------------------------------------------------------------------------
# Public pairs: prepare once, run many times
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedConv:
    """A conv2d layer ready to run: packed weights (or ``None``) plus the unfused kernel's arguments."""

    acc_args: tuple
    x_dtype: np.dtype
    packed: PackedWeights | None = None
    depthwise: PackedDepthwise | None = None


def conv2d_nhwc_prepare(x_dtype, x_zero_point, w, w_zero_point, bias, strides, dilations, pads, groups, acc_bits,
                        overflow, pairwise_int16) -> PreparedConv:
    """Pack a conv2d layer for :func:`conv2d_nhwc_requantized`.

    Parameters are those of :func:`intsim.kernels.mac.conv2d_nhwc_acc`, with
    the activation dtype ``x_dtype`` in place of the activations.
    """
    x_dtype = np.dtype(x_dtype)
    acc_args = (x_zero_point, w, w_zero_point, bias, tuple(strides), tuple(dilations), tuple(pads), groups,
                acc_bits, overflow, pairwise_int16)
    w_rows = w.reshape(w.shape[0], -1)
    if not _static_fast(x_dtype, x_zero_point, w_rows, w_zero_point, bias, acc_bits, pairwise_int16):
        return PreparedConv(acc_args, x_dtype)
    w_centred = w_rows.astype(np.int64) - w_zero_point.astype(np.int64).reshape(-1, 1)
    cout, _, _, cin_g = w.shape
    if groups == 1:
        return PreparedConv(acc_args, x_dtype, packed=_pack(w_centred, x_dtype, x_zero_point, bias,
                                                            taps=w.shape[1] * w.shape[2]))
    if cin_g == 1 and cout == groups:
        w_min, w_max = (int(w_centred.min()), int(w_centred.max())) if w_centred.size else (0, 0)
        isa = isa_module.current_isa()
        encoding = _encoding(isa, x_dtype, int(x_zero_point), w_min, w_max)
        if encoding is not None:
            _, a_sub, code_dtype = encoding
            return PreparedConv(acc_args, x_dtype, depthwise=pack_depthwise(w_centred, isa.pairs, a_sub, code_dtype,
                                                                            x_zero_point, bias))
    return PreparedConv(acc_args, x_dtype)


class _GemmLaunch:
    """The fused GEMM over NHWC codes of one shape, everything but the codes worked out once.

    ``run(x4, out)`` writes ``out`` [M, Cout] and returns the clamp count (``None`` when
    ``count_clamps`` is false: then FLOAT32_RINT tiles are requantized in registers).
    The implicit GEMM reads the activations where they lie when the input
    already is the packed form (no padding, nothing to subtract, whole groups
    per pixel); a conv packed per tap makes an encoded padded copy
    (``padded_shape``) otherwise; the rest take the im2col chunks.
    """

    def __init__(self, x_shape, x_dtype, packed, out_h, out_w, kernel, strides, dilations, pads, requant,
                 count_clamps=True):
        multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max = requant
        (kernel_h, kernel_w), (sh, sw), (dh, dw) = kernel, strides, dilations
        n_taps, tap_groups = kernel_h * kernel_w, packed.tap_groups
        tap_row = tap_groups * GROUP[packed.variant]
        in_place = (tuple(pads) == (0, 0, 0, 0) and packed.a_sub == 0 and x_dtype == packed.code_dtype
                    and x_shape[3] == tap_row)
        implicit = packed.taps == n_taps and (n_taps > 1 or in_place)
        padded_shape = None
        source_h, source_w = x_shape[1:3]
        if implicit and not in_place:
            # The rows and columns some window reaches (none when the output is empty).
            source_h = (out_h - 1) * sh + (kernel_h - 1) * dh + 1 if out_h else 0
            source_w = (out_w - 1) * sw + (kernel_w - 1) * dw + 1 if out_w else 0
            padded_shape = (x_shape[0], source_h, source_w, tap_row)
        if implicit and dw == 1:  # a window row is one run of kernel_w pixels: one tap per row
            taps, groups = np.arange(kernel_h, dtype=np.int64) * dh * source_w * tap_groups, kernel_w * tap_groups
        elif implicit:
            taps = np.array([(kh * dh * source_w + kw * dw) * tap_groups for kh in range(kernel_h)
                             for kw in range(kernel_w)], np.int64)
            groups = tap_groups
        else:
            taps, groups = np.zeros(1, np.int64), packed.groups
        self.implicit, self.padded_shape, self.taps, self.packed, self.pads = implicit, padded_shape, taps, packed, pads
        n_rows = x_shape[0] * out_h * out_w
        in_registers = requantized_in_registers(rounding, out_zero_point, clamp_min, clamp_max, count_clamps)
        chunk_rows = _chunk_rows(n_rows, implicit and in_registers)
        self.settings = np.array(
            [implicit, packed.a_sub, packed.pad_code, out_h, out_w, kernel_h, kernel_w, sh, sw, dh, dw, pads[0],
             pads[1], groups, chunk_rows, packed.row_len, source_h, source_w, tap_groups, rounding, multiplier_bits,
             out_zero_point, clamp_min, clamp_max, in_registers], np.int64)
        self.count_clamps = count_clamps
        self.chunks = -(-n_rows // chunk_rows)
        self.requant = (np.asarray(multiplier, np.int32), np.asarray(shift, np.int32), np.asarray(scale, np.float64))
        self.code_sample = packed.code_sample
        self.no_source = np.empty(0, np.int32)

    def run(self, x4, out):
        packed = self.packed
        if self.padded_shape is not None:  # one encoded copy of the input with its padding, read in place by every tap
            padded = np.empty(self.padded_shape, packed.code_dtype)
            _pad_encode(x4, self.pads[0], self.pads[1], packed.a_sub, packed.pad_code, padded)
            source = padded.reshape(-1).view(np.int32)
        else:
            source = x4.reshape(-1).view(np.int32) if self.implicit else self.no_source
        # The serial core needs no thread count; more threads than chunks would wake idle threads.
        core = _conv2d_gemm_threaded if min(_threads, self.chunks) > 1 else _conv2d_gemm_serial
        if core is _conv2d_gemm_threaded:
            _apply_threads(self.chunks)
        multiplier, shift, scale = self.requant
        count = core(packed.variant, x4, source, self.taps, packed.words, packed.c0, multiplier, shift, scale,
                     self.settings, self.code_sample, out)
        return int(count) if self.count_clamps else None


def _run_gemm(x4, packed, out_h, out_w, kernel, strides, dilations, pads, requant, out):
    """The fused GEMM path over NHWC codes ``x4`` into ``out`` [M, Cout], once; returns the clamp count."""
    return _GemmLaunch(x4.shape, x4.dtype, packed, out_h, out_w, kernel, strides, dilations, pads,
                       requant).run(x4, out)


def _unfused(acc_kernel, x, acc_args, requant_args):
    acc, overflow_count, pair_count = acc_kernel(x, *acc_args)
    out, saturation_count = requantize(acc, 0, *requant_args)
    return out, overflow_count, pair_count, saturation_count


def conv2d_nhwc_requantized(x, prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                            clamp_min, clamp_max, out_dtype, count_clamps=True):
    """Output codes of a conv2d layer: :func:`~intsim.kernels.mac.conv2d_nhwc_acc` then
    :func:`~intsim.kernels.mac.requantize` (white paper §2.1-§2.2), fused where exact.

    Parameters
    ----------
    x : array [N, H, W, Cin] of the ``x_dtype`` given to :func:`conv2d_nhwc_prepare`
    prepared : PreparedConv
    multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max, out_dtype
        As in :func:`~intsim.kernels.mac.requantize` (per output channel).
    count_clamps : bool
        Whether to count the outputs the clamp changed.  Without the count
        (a model's run, whose statistics come from a trace) ``FLOAT32_RINT``
        tiles are requantized in the micro-kernel's registers.

    Returns
    -------
    out : ``out_dtype`` array [N, OH, OW, Cout]
    overflow_count, pair_saturation_count : int
    saturation_count : int, or ``None`` without ``count_clamps``
    """
    return conv2d_nhwc_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                clamp_min, clamp_max, out_dtype, count_clamps)(x)


def conv2d_nhwc_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
                         clamp_max, out_dtype, count_clamps=True):
    """``launch(x)``, equal to :func:`conv2d_nhwc_requantized` of ``x`` with these arguments, for a caller
    that runs one layer many times (a model's bound step).

    What depends only on the layer, the requantization and the input shape
    (the output shape, the GEMM's settings and per-channel arrays) is worked
    out at the first call with each input shape; a repeat call is one lookup
    and one numba call.  :func:`set_threads` still applies to the next call.
    """
    return _ConvLauncher(prepared, (multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min,
                                    clamp_max, out_dtype), count_clamps)


class _Launcher:
    """One layer and requantization; ``launcher(x)`` returns ``(out, overflow_count,
    pair_saturation_count, saturation_count)``, the last ``None`` without ``count_clamps``.
    Subclasses say which layers are fused (``_fused``), what is worked out per input shape
    (``_record``), and how it runs (``_run``)."""

    acc_kernel = None  # the unfused accumulator kernel

    def __init__(self, prepared, requant_args, count_clamps):
        self.prepared, self.requant_args, self.out_dtype = prepared, requant_args, requant_args[-1]
        self.count_clamps = count_clamps
        self.fused = self._fused(prepared)
        self.records = {}  # input shape -> what _record worked out for it

    def __call__(self, x):
        prepared = self.prepared
        if not self.fused or x.dtype != prepared.x_dtype:
            result = _unfused(self.acc_kernel, x, prepared.acc_args, self.requant_args)
        else:
            record = self.records.get(x.shape)
            if record is None:
                record = self.records[x.shape] = self._record(x)
            result = self._run(x, *record)
        return result if self.count_clamps else result[:3] + (None,)


class _ConvLauncher(_Launcher):
    acc_kernel = staticmethod(conv2d_nhwc_acc)

    @staticmethod
    def _fused(prepared):
        return prepared.packed is not None or prepared.depthwise is not None

    def _record(self, x):
        # (output shape, output rows shape, _GemmLaunch or None (depthwise))
        _, w, _, _, strides, dilations, pads, _, _, _, _ = self.prepared.acc_args
        shape = _conv2d_out(x, w, strides, dilations, pads).shape
        if self.prepared.packed is None:
            return shape, None, None
        launch = _GemmLaunch(x.shape, x.dtype, self.prepared.packed, shape[1], shape[2], w.shape[1:3], strides,
                             dilations, pads, self.requant_args[:-1], self.count_clamps)
        return shape, (-1, shape[3]), launch

    def _run(self, x, shape, rows_shape, launch):
        out = np.empty(shape, self.out_dtype)
        x = np.ascontiguousarray(x)
        if launch is None:
            return out, 0, 0, _depthwise_requantized(x, self.prepared, self.requant_args[:-1], out, self.count_clamps)
        return out, 0, 0, launch.run(x, out.reshape(rows_shape))


def _depthwise_requantized(x, prepared, requant, out, count_clamps):
    """The direct depthwise kernel over NHWC codes ``x`` into ``out``; returns the clamp count (or ``None``)."""
    _, w, _, _, strides, dilations, pads, _, _, _, _ = prepared.acc_args
    chunks = _apply_threads(out.shape[0] * out.shape[1])
    return depthwise_run(x, prepared.depthwise, w.shape[1:3], strides, dilations, pads, chunks, requant, out,
                         count_clamps)


@dataclass(frozen=True)
class PreparedFullyConnected:
    """A fully-connected layer ready to run: the unfused kernel's arguments (the graph's weights among
    them) plus what the fast path needs: :class:`InPlaceWeights` for int8 weights (read where they
    lie), else packed weights, else neither (the checked kernels)."""

    acc_args: tuple
    x_dtype: np.dtype
    packed: PackedWeights | None = None
    in_place: InPlaceWeights | None = None


def fully_connected_prepare(x_dtype, x_zero_point, w, w_zero_point, bias, acc_bits, overflow,
                            pairwise_int16) -> PreparedFullyConnected:
    """Prepare a fully-connected layer for :func:`fully_connected_requantized`: int8 weights in C
    order are read where they lie (per-channel start values only), other weights are packed.

    Parameters are those of :func:`intsim.kernels.mac.fully_connected_acc`, with
    the activation dtype ``x_dtype`` in place of the activations.
    """
    x_dtype = np.dtype(x_dtype)
    acc_args = (x_zero_point, w, w_zero_point, bias, acc_bits, overflow, pairwise_int16)
    if not _static_fast(x_dtype, x_zero_point, w, w_zero_point, bias, acc_bits, pairwise_int16):
        return PreparedFullyConnected(acc_args, x_dtype)
    in_place = _in_place(x_dtype, x_zero_point, w, w_zero_point, bias)
    if in_place is not None:
        return PreparedFullyConnected(acc_args, x_dtype, in_place=in_place)
    w_centred = w.astype(np.int64) - w_zero_point.astype(np.int64).reshape(-1, 1)
    return PreparedFullyConnected(acc_args, x_dtype, _pack(w_centred, x_dtype, x_zero_point, bias))


def fully_connected_requantized(x, prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                clamp_min, clamp_max, out_dtype, count_clamps=True):
    """Output codes of a fully-connected layer: :func:`~intsim.kernels.mac.fully_connected_acc` then
    :func:`~intsim.kernels.mac.requantize`, fused where exact: the kernel over the int8 weights in
    place (:mod:`intsim.kernels.rowdot`), or for packed weights a GEMV launch for ``N`` up to
    :data:`GEMV_MAX_ROWS` (batch-1 inference), else a 1x1 conv over ``N`` pixels (white paper §2.1-§2.2).

    Returns ``(out [N, O], overflow_count, pair_saturation_count, saturation_count)``, the last
    ``None`` without ``count_clamps`` (see :func:`conv2d_nhwc_requantized`).
    """
    return fully_connected_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                    clamp_min, clamp_max, out_dtype, count_clamps)(x)


def fully_connected_launcher(prepared, multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                             clamp_min, clamp_max, out_dtype, count_clamps=True):
    """``launch(x)``, equal to :func:`fully_connected_requantized` of ``x`` with these arguments, its
    launch worked out once per input shape (see :func:`conv2d_nhwc_launcher`)."""
    return _FullyConnectedLauncher(prepared, (multiplier, shift, scale, rounding, multiplier_bits, out_zero_point,
                                              clamp_min, clamp_max, out_dtype), count_clamps)


class _FullyConnectedLauncher(_Launcher):
    acc_kernel = staticmethod(fully_connected_acc)

    @staticmethod
    def _fused(prepared):
        return prepared.packed is not None or prepared.in_place is not None

    def _record(self, x):
        # (output shape, _InPlaceLaunch, _GemvLaunch or _GemmLaunch)
        n_batch, depth = x.shape
        w = self.prepared.acc_args[1]
        shape, requant = (n_batch, w.shape[0]), self.requant_args[:-1]
        packed = self.prepared.packed
        if self.prepared.in_place is not None:
            if n_batch <= GEMV_MAX_ROWS or self.batch_packed is None:
                return shape, _InPlaceLaunch(w, self.prepared.in_place, requant, depth)
            packed = self.batch_packed
        elif n_batch <= GEMV_MAX_ROWS:
            return shape, _GemvLaunch(packed, requant)
        return shape, _GemmLaunch((n_batch, 1, 1, depth), x.dtype, packed, 1, 1, (1, 1), (1, 1), (1, 1),
                                  (0, 0, 0, 0), requant, self.count_clamps)

    @cached_property
    def batch_packed(self):
        # Batches of more than GEMV_MAX_ROWS rows run faster as the packed GEMM (the in-place
        # kernel's reduction tree weighs more per row there: FC 512->1000 at batch 8 took 1.31x
        # onnxruntime in place, 1.20x packed), so the first such batch packs the weights, once per
        # launcher; batch-1 inference never holds that copy.  None where they cannot be packed.
        x_zero_point, w, w_zero_point, bias = self.prepared.acc_args[:4]
        w_centred = w.astype(np.int64) - w_zero_point.astype(np.int64).reshape(-1, 1)
        return _pack(w_centred, self.prepared.x_dtype, x_zero_point, bias)

    def _run(self, x, shape, launch):
        out = np.empty(shape, self.out_dtype)
        if isinstance(launch, _GemmLaunch):  # N rows as N pixels of a 1x1 conv
            x = np.ascontiguousarray(x).reshape(shape[0], 1, 1, x.shape[1])
        return out, 0, 0, launch.run(x, out)


def matmul_requantized(a, a_zero_point, b, b_zero_point, acc_bits, overflow, pairwise_int16, multiplier, shift,
                       scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max, out_dtype):
    """Output codes of ``a [B, M, K] @ b [B, K, N]``: :func:`~intsim.kernels.mac.matmul_acc` then a
    per-tensor :func:`~intsim.kernels.mac.requantize` (``multiplier`` etc. of length 1), fused where exact.

    ``b`` is packed on every call (it is an activation).  Returns
    ``(out [B, M, N], overflow_count, pair_saturation_count, saturation_count)``.
    """
    n_batch, rows, depth = a.shape
    cols = b.shape[2]
    requant = (multiplier, shift, scale, rounding, multiplier_bits, out_zero_point, clamp_min, clamp_max)
    fast = a.dtype == b.dtype and np.iinfo(a.dtype).bits == 8 and _matmul_static_fast(
        a.dtype, int(a_zero_point), int(b_zero_point), depth, acc_bits, pairwise_int16)
    packs = [_pack(b[i].T.astype(np.int64) - int(b_zero_point), a.dtype, a_zero_point, np.zeros(cols, np.int64))
             for i in range(n_batch)] if fast else []
    if not fast or any(p is None for p in packs):
        acc, overflow_count, pair_count = matmul_acc(a, a_zero_point, b, b_zero_point, acc_bits, overflow,
                                                     pairwise_int16)
        out, saturation_count = requantize(acc.reshape(-1, 1), 0, *requant, out_dtype)
        return out.reshape(acc.shape), overflow_count, pair_count, saturation_count
    per_channel = tuple(np.full(cols, np.asarray(v).reshape(-1)[0]) for v in requant[:3]) + requant[3:]
    out = np.empty((n_batch, rows, cols), out_dtype)
    saturations = 0
    for i, packed in enumerate(packs):
        x4 = np.ascontiguousarray(a[i]).reshape(rows, 1, 1, depth)
        saturations += _run_gemm(x4, packed, 1, 1, (1, 1), (1, 1), (1, 1), (0, 0, 0, 0), per_channel, out[i])
    return out, 0, 0, saturations
