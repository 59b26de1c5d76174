"""The implicit GEMM core of the fused convolutions: output pixels in chunks, each chunk's rows read
where they lie (the input itself, or one encoded, padded copy of it) and multiplied by the
register-tiled micro-kernel, then requantized in registers or while in cache."""

from __future__ import annotations


import numpy as np
from numba import prange

from intsim.kernels.isa import (
    AVX2_PAIRS,
    AVX512_PAIRS,
    PORTABLE_PAIRS,
    PORTABLE_QUADS,
    TILE_BLOCKS,
    TILE_ROWS,
    VNNI_PAIRS,
    VNNI_QUADS,
    tile_rows,
)
from intsim.fixedpoint import FLOAT32_RINT
from intsim.kernels.mac import requantize_rows
from intsim.kernels.microkernel import LANES, mac_tile_taps, mac_tile_taps_rint
from intsim.jit import jit, jit_inline, jit_parallel


# Output pixels per chunk of a GEMM that writes an int32 tile (requantized by requantize_rows while in
# cache).  A multiple of every tile's rows (24, 12, 8, 6, 4): only a last chunk is padded.
CHUNK_ROWS = 96
# A GEMM requantized in registers keeps no per-chunk buffer but its row offsets, so it takes longer
# chunks: a chunk's fixed cost (a call, the row offsets, array views) is then spread over up to this
# many rows, while a layer still splits into several chunks for the threads.  A multiple of CHUNK_ROWS.
LONG_CHUNK_ROWS = 1536


def chunk_rows(n_rows: int, long_chunks: bool) -> int:
    """Output rows per chunk of a GEMM over ``n_rows`` rows: CHUNK_ROWS, or with ``long_chunks``
    about an eighth of the rows in whole CHUNK_ROWS, between CHUNK_ROWS and LONG_CHUNK_ROWS."""
    if not long_chunks:
        return CHUNK_ROWS
    return min(LONG_CHUNK_ROWS, max(CHUNK_ROWS, -(-n_rows // (8 * CHUNK_ROWS)) * CHUNK_ROWS))


# --------------------------------------------------------------------------
# GEMM over one chunk of rows
# --------------------------------------------------------------------------


@jit_inline
def _column_tiles(variant, blocks, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, nb, rint,
                  out_off):
    # Columns nb .. nb + width of the first ``rows`` rows, whose window offsets are a_rows[a_off:]
    # (they and the int32 tile acc_flat, rows of c_stride, hold the rows up to the last tile's end,
    # see padded_rows), in tiles of ``blocks`` blocks (a compile-time constant; 0: the variant's full
    # width) and their rows (tile_rows).  The tile's weights are reused by every row tile of the chunk
    # before the next blocks are read.  int32 tiles go into acc_flat when ``rint`` is None; otherwise
    # each tile is requantized in registers into rint's flat output from element ``out_off``
    # (acc_flat unused, and empty).  The loops call the micro-kernel directly, over whole arrays and
    # offsets: an inlined helper, a slice or a reshape would bind a new array on every tile or chunk,
    # and numba counts each binding with an atomic reference increment and decrement.
    width = blocks if blocks else TILE_BLOCKS[variant]
    step = tile_rows(variant, width)
    w_off = nb * taps.shape[0] * groups * LANES
    c0_off = nb * LANES
    if rint is None:
        for r in range(0, rows, step):
            mac_tile_taps(variant, 0, blocks, a, a_rows, a_off + r, taps, w, w_off, groups, c0, c0_off, acc_flat,
                          r * c_stride + c0_off, c_stride)
    else:
        scale32, lo, hi, zero_point, channels, out_flat = rint
        for r in range(0, rows, step):
            mac_tile_taps_rint(variant, 0, blocks, a, a_rows, a_off + r, taps, w, w_off, groups, c0, c0_off,
                               scale32, lo, hi, zero_point, rows - r, channels - c0_off, out_flat,
                               out_off + r * channels + c0_off, channels)


@jit_inline
def _gemm_tiles(variant, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, rint, out_off):
    # acc_flat [padded_rows * c_stride], c_stride = n_blocks * 16, receives c0 plus, for every row
    # r < rows (and the padding rows of the last tiles), the sum over the taps t of the ``groups``
    # words of ``a`` from a_rows[a_off + r] + taps[t] against the weights of tap t.  Full-width
    # tiles, then one taller, narrower tile over the blocks left over (see isa.tile_rows).  Inlined
    # with a constant ``variant``, which mac_tile_taps needs at compile time.  With ``rint`` =
    # (float32 scales padded like c0, lo, hi, zero point, channels, the layer's flat output
    # [M * channels]) the tiles are requantized in registers instead, row r into output row
    # out_off / channels + r (acc_flat unused).
    n_blocks = c0.shape[0] // LANES
    full = n_blocks - n_blocks % TILE_BLOCKS[variant]
    for nb in range(0, full, TILE_BLOCKS[variant]):
        _column_tiles(variant, 0, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, nb, rint,
                      out_off)
    rest = n_blocks - full
    if rest == 1:
        _column_tiles(variant, 1, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, full, rint,
                      out_off)
    elif rest == 2:
        _column_tiles(variant, 2, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, full, rint,
                      out_off)
    elif rest == 3:
        _column_tiles(variant, 3, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, full, rint,
                      out_off)


@jit_inline
def padded_rows(variant, n_blocks, rows):
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


@jit
def _gemm_chunk(variant, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, rint, out_off):
    # _gemm_tiles with ``variant`` made a compile-time constant.
    if variant == VNNI_QUADS:
        _gemm_tiles(VNNI_QUADS, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, rint, out_off)
    elif variant == VNNI_PAIRS:
        _gemm_tiles(VNNI_PAIRS, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, rint, out_off)
    elif variant == AVX512_PAIRS:
        _gemm_tiles(AVX512_PAIRS, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, rint, out_off)
    elif variant == AVX2_PAIRS:
        _gemm_tiles(AVX2_PAIRS, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, rint, out_off)
    elif variant == PORTABLE_QUADS:
        _gemm_tiles(PORTABLE_QUADS, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, rint, out_off)
    else:
        _gemm_tiles(PORTABLE_PAIRS, a, rows, a_rows, a_off, taps, w, groups, c0, acc_flat, c_stride, rint, out_off)


@jit
def copy_encoded(src, src_start, count, a_sub, dst, dst_start):
    # Slices first: indexing them from 0 lets LLVM drop the index checks and vectorise.
    source = src[src_start:src_start + count]
    target = dst[dst_start:dst_start + count]
    for j in range(count):
        target[j] = source[j] - a_sub


@jit_inline
def _pixel_before(m0, out_h, out_w):
    # (n, oh, ow) of the output pixel before flat pixel m0, so that _next_pixel
    # gives pixel m0: one division per chunk, then rows are stepped (a division
    # per row costs as much as a small window's copy).
    per_image = out_h * out_w
    n = m0 // per_image
    oh = (m0 - n * per_image) // out_w
    return n, oh, m0 - n * per_image - oh * out_w - 1


@jit_inline
def _next_pixel(n, oh, ow, out_h, out_w):
    ow += 1
    if ow == out_w:
        ow = 0
        oh += 1
        if oh == out_h:
            oh = 0
            n += 1
    return n, oh, ow


@jit
def pad_encode(x, top, left, a_sub, pad_code, padded):
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
            elif cin == 1 and padded_c == 4:  # grayscale stems
                _encode_pixels(1, 4, source, body, inside, a_sub)
            else:
                _encode_pixels(cin, padded_c, source, body, inside, a_sub)
            row[(left_px + inside) * padded_c:] = pad_code


@jit_inline
def _encode_pixels(cin, padded_c, source, body, count, a_sub):
    # body[p * padded_c + c] = source[p * cin + c] - a_sub for p < count and
    # c < cin, zero for the other channels.  Inlined with constant channel
    # counts, the inner loops unroll.
    for p in range(count):
        for c in range(cin):
            body[p * padded_c + c] = source[p * cin + c] - a_sub
        for c in range(cin, padded_c):
            body[p * padded_c + c] = 0


@jit
def _pixel_rows(m0, out_h, out_w, sh, sw, source_h, source_w, pixel_words, rows, tiled_rows, a_rows, a_off):
    # a_rows[a_off + r]: the first word, in an NHWC source of ``pixel_words`` words per pixel, of
    # the window of output pixel m0 + r (its top-left tap) for r < rows; the rows up to ``tiled_rows``
    # (a last tile's padding, not requantized) repeat row 0.
    n, oh, ow = _pixel_before(m0, out_h, out_w)
    for r in range(rows):
        n, oh, ow = _next_pixel(n, oh, ow, out_h, out_w)
        a_rows[a_off + r] = ((n * source_h + oh * sh) * source_w + ow * sw) * pixel_words
    for r in range(rows, tiled_rows):
        a_rows[a_off + r] = a_rows[a_off]


# The scalar arguments of _conv2d_gemm_rows, in one int64 array (one argument
# to type-check per call instead of eighteen): the layer's, then what the launch works out from
# them once (:func:`chunk_settings`), so that a call divides by nothing it could know before.
GEMM_SETTINGS = ("out_h", "out_w", "sh", "sw", "groups", "chunk_rows", "source_h", "source_w", "pixel_words",
                 "rounding", "multiplier_bits", "out_zero_point", "clamp_min", "clamp_max", "in_registers",
                 "n_chunks", "chunk_stride", "last_tiled_rows")


def chunk_settings(variant, padded_channels, n_rows, rows_per_chunk):
    """``(n_chunks, chunk_stride, last_tiled_rows)`` of a GEMM over ``n_rows`` output rows in chunks of
    ``rows_per_chunk``: the chunks, a whole chunk's padded rows (its stretch of :func:`window_rows`)
    and the last chunk's."""
    n_chunks = -(-n_rows // rows_per_chunk)
    blocks = padded_channels // LANES
    last = n_rows - (n_chunks - 1) * rows_per_chunk if n_chunks else 0
    return n_chunks, padded_rows(variant, blocks, rows_per_chunk), padded_rows(variant, blocks, last)


@jit_inline
def _conv2d_gemm_rows(variant, source, taps, w, c0, multiplier, shift, scale, scale32, fixed, all_rows, settings,
                      out):
    # out [M, Cout] with M = N * OH * OW, in chunks of ``chunk_rows`` output
    # pixels shared out among the threads, each chunk with its own buffers.
    # ``source`` holds the packed activations as NHWC pixels of
    # ``pixel_words`` words ([N, source_h, source_w], padding included), read
    # in place: row r of a tile starts at its window's top-left pixel and tap
    # t (``groups`` words) lies taps[t] words further.  The epilogue's parameters come worked out once per
    # layer (``mac.epilogue_params``): int64 ``multiplier`` / ``shift`` and float64 ``scale`` for
    # requantize_rows on an int32 tile, ``scale32`` (FLOAT32_RINT) or ``fixed`` (DOUBLE / SINGLE)
    # in registers.  ``all_rows`` (:func:`window_rows`) holds every chunk's row offsets, a stretch
    # each, worked out once for the layer and its input shape (a pass over the rows per call cost a tenth
    # of a small 1x1 conv).  In registers a chunk allocates nothing, and a call binds two arrays (the flat
    # output and the parameter tuple), once: a small layer's call is a few hundred nanoseconds, of which
    # each array binding (an atomic count up and down) takes tens.
    (out_h, out_w, sh, sw, groups, chunk_rows, source_h, source_w, pixel_words, rounding, multiplier_bits,
     out_zero_point, clamp_min, clamp_max, in_registers, n_chunks, chunk_stride, last_tiled_rows) = settings
    n_rows, channels = out.shape
    lo, hi = clamp_min - out_zero_point, clamp_max - out_zero_point
    out_flat = out.reshape(n_rows * channels)
    rint = (scale32, lo, hi, out_zero_point, channels, out_flat)
    fixed_rint = (fixed, lo, hi, out_zero_point, channels, out_flat)
    no_tile = c0[:0]  # in registers: no int32 tile
    saturation_count = 0
    for chunk in prange(n_chunks):
        m0, a_off = chunk * chunk_rows, chunk * chunk_stride
        rows = min(chunk_rows, n_rows - m0)
        if in_registers and rounding == FLOAT32_RINT:
            _gemm_chunk(variant, source, rows, all_rows, a_off, taps, w, groups, c0, no_tile, 0, rint,
                        m0 * channels)
        elif in_registers:
            _gemm_chunk(variant, source, rows, all_rows, a_off, taps, w, groups, c0, no_tile, 0, fixed_rint,
                        m0 * channels)
        else:
            # Whole row tiles: the rows past ``rows`` repeat row 0 and are not requantized.
            acc = np.empty((chunk_stride if chunk < n_chunks - 1 else last_tiled_rows, c0.shape[0]), np.int32)
            _gemm_chunk(variant, source, rows, all_rows, a_off, taps, w, groups, c0, acc.reshape(acc.size),
                        acc.shape[1], None, 0)
            saturation_count += requantize_rows(rounding, acc[:rows], 0, multiplier, shift, scale, multiplier_bits,
                                                out_zero_point, clamp_min, clamp_max, out[m0:m0 + rows])
    return saturation_count


# The GEMM core twice, from one inlined body: with threads (its prange a
# parallel loop) and serial (the prange a plain loop), which one thread takes
# to skip the thread pool's launch (about 2 us a call).
@jit_parallel
def conv2d_gemm_threaded(variant, source, taps, w, c0, multiplier, shift, scale, scale32, fixed, all_rows, settings,
                         out):
    return _conv2d_gemm_rows(variant, source, taps, w, c0, multiplier, shift, scale, scale32, fixed, all_rows,
                             settings, out)


@jit
def conv2d_gemm_serial(variant, source, taps, w, c0, multiplier, shift, scale, scale32, fixed, all_rows, settings,
                       out):
    return _conv2d_gemm_rows(variant, source, taps, w, c0, multiplier, shift, scale, scale32, fixed, all_rows,
                             settings, out)


def window_rows(n_rows, settings):
    """The row offsets of one GEMM over ``n_rows`` output rows with ``settings`` (GEMM_SETTINGS), in
    one int64 array: each chunk's whole row tiles (:func:`padded_rows`, a stretch of ``chunk_stride``
    each), the first word of each output pixel's window (:func:`_pixel_rows`), for a caller that
    repeats the GEMM over one input shape."""
    named = dict(zip(GEMM_SETTINGS, (int(v) for v in settings)))
    n_chunks, chunk_stride = named["n_chunks"], named["chunk_stride"]
    rows = np.empty(n_chunks * chunk_stride, np.int64)
    _window_rows(settings, n_rows, rows)
    return rows


@jit
def _window_rows(settings, n_rows, all_rows):
    (out_h, out_w, sh, sw, _, chunk_rows, source_h, source_w, pixel_words, _, _, _, _, _, _, n_chunks, chunk_stride,
     last_tiled_rows) = settings
    for chunk in range(n_chunks):
        m0 = chunk * chunk_rows
        _pixel_rows(m0, out_h, out_w, sh, sw, source_h, source_w, pixel_words, min(chunk_rows, n_rows - m0),
                    chunk_stride if chunk < n_chunks - 1 else last_tiled_rows, all_rows, chunk * chunk_stride)
