"""Batched 2-D transposes of one-byte codes in 16 x 16 register blocks: the NCHW <-> NHWC moves at a
model's edges.

A code-by-code copy (:func:`intsim.kernels.boundary.transpose`'s general
loop) does one strided byte store per code: 270 us for the 56 x 56 x 256
output of a 1x1 conv, as long as a third of the conv itself.  Here each
16 x 16 block of bytes is 16 vector loads, four rounds of byte interleaves
(``punpcklbw`` / ``punpckhbw`` on x86, whatever the target's equivalent is
elsewhere: plain LLVM ``shufflevector``, no instruction-set feature assumed)
and 16 vector stores; the rows and columns past the last whole block are
copied one by one.  Two to four rows or columns (an image's channels) take
unrolled loops of fixed-stride loads and stores instead, which LLVM turns into
byte shuffles.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from intsim.jit import jit

BLOCK = 16
_T_I8, _T_I32, _T_I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_V_I8 = ir.VectorType(_T_I8, BLOCK)
# Interleave the low (high) halves of two 16-byte vectors: a0 b0 a1 b1 ... a7 b7 (a8 b8 ... a15 b15).
_LOW = ir.Constant(ir.VectorType(_T_I32, BLOCK), [i // 2 + (BLOCK if i % 2 else 0) for i in range(BLOCK)])
_HIGH = ir.Constant(ir.VectorType(_T_I32, BLOCK), [BLOCK // 2 + i // 2 + (BLOCK if i % 2 else 0)
                                                   for i in range(BLOCK)])


def _one_byte_array(array):
    return isinstance(array, types.Array) and isinstance(array.dtype, types.Integer) and array.dtype.bitwidth == 8


@intrinsic
def transpose_block16(typingctx, src, src_off, src_stride, dst, dst_off, dst_stride):
    """``dst[dst_off + j * dst_stride + i] = src[src_off + i * src_stride + j]`` for ``i, j < 16``
    (flat one-byte arrays, offsets and strides in elements; no bounds checks)."""
    if not (_one_byte_array(src) and _one_byte_array(dst)):
        return None
    sig = types.void(src, src_off, src_stride, dst, dst_off, dst_stride)

    def codegen(context, builder, signature, args):
        def pointer(i, off_i, stride_i, row):
            data = context.make_array(signature.args[i])(context, builder, args[i]).data
            off, stride = (context.cast(builder, args[k], signature.args[k], types.int64) for k in (off_i, stride_i))
            index = builder.add(off, builder.mul(stride, ir.Constant(_T_I64, row)))
            return builder.bitcast(builder.gep(data, [index]), _V_I8.as_pointer())

        rows = [builder.load(pointer(0, 1, 2, i), align=1) for i in range(BLOCK)]
        # Four rounds of: vector 2i <- low interleave of vectors i and i + 8, vector 2i + 1 <- high.
        # Each round moves bit k of the row index into the column index (a perfect shuffle of the
        # 256 bytes' 8-bit positions by four bits), so four rounds exchange rows and columns.
        for _ in range(4):
            rows = [builder.shuffle_vector(rows[i // 2], rows[i // 2 + BLOCK // 2], _HIGH if i % 2 else _LOW)
                    for i in range(BLOCK)]
        for j in range(BLOCK):
            builder.store(rows[j], pointer(3, 4, 5, j), align=1)
        return context.get_dummy_value()

    return sig, codegen


@jit
def _interleave(src, dst, n_rows, n_cols):
    # dst[j * n_rows + i] = src[i * n_cols + j] for 2 <= n_rows <= 4 (NCHW -> NHWC of an image's few
    # channels): one unrolled loop per count, whose fixed-stride stores LLVM vectorises as byte
    # shuffles; the 16 x 16 blocks would leave all of it to the one-by-one tail.
    if n_rows == 2:
        for j in range(n_cols):
            dst[2 * j] = src[j]
            dst[2 * j + 1] = src[n_cols + j]
    elif n_rows == 3:
        for j in range(n_cols):
            dst[3 * j] = src[j]
            dst[3 * j + 1] = src[n_cols + j]
            dst[3 * j + 2] = src[2 * n_cols + j]
    else:
        for j in range(n_cols):
            dst[4 * j] = src[j]
            dst[4 * j + 1] = src[n_cols + j]
            dst[4 * j + 2] = src[2 * n_cols + j]
            dst[4 * j + 3] = src[3 * n_cols + j]


@jit
def _deinterleave(src, dst, n_rows, n_cols):
    # dst[j * n_rows + i] = src[i * n_cols + j] for 2 <= n_cols <= 4 (NHWC -> NCHW of a few channels).
    if n_cols == 2:
        for i in range(n_rows):
            dst[i] = src[2 * i]
            dst[n_rows + i] = src[2 * i + 1]
    elif n_cols == 3:
        for i in range(n_rows):
            dst[i] = src[3 * i]
            dst[n_rows + i] = src[3 * i + 1]
            dst[2 * n_rows + i] = src[3 * i + 2]
    else:
        for i in range(n_rows):
            dst[i] = src[4 * i]
            dst[n_rows + i] = src[4 * i + 1]
            dst[2 * n_rows + i] = src[4 * i + 2]
            dst[3 * n_rows + i] = src[4 * i + 3]


@jit
def transpose_bytes(src, dst):
    """``dst[n, j, i] = src[n, i, j]`` for C-contiguous one-byte ``src`` [N, R, C] and ``dst`` [N, C, R]."""
    n_batch, n_rows, n_cols = src.shape
    src_flat = src.reshape(src.size)
    dst_flat = dst.reshape(dst.size)
    rows16 = n_rows - n_rows % BLOCK
    cols16 = n_cols - n_cols % BLOCK
    plane = n_rows * n_cols
    for n in range(n_batch):
        base = n * plane
        if 2 <= n_rows <= 4:
            _interleave(src_flat[base:base + plane], dst_flat[base:base + plane], n_rows, n_cols)
            continue
        if 2 <= n_cols <= 4:
            _deinterleave(src_flat[base:base + plane], dst_flat[base:base + plane], n_rows, n_cols)
            continue
        for i0 in range(0, rows16, BLOCK):
            for j0 in range(0, cols16, BLOCK):
                transpose_block16(src_flat, base + i0 * n_cols + j0, n_cols, dst_flat, base + j0 * n_rows + i0, n_rows)
            for i in range(i0, i0 + BLOCK):
                for j in range(cols16, n_cols):
                    dst_flat[base + j * n_rows + i] = src_flat[base + i * n_cols + j]
        for i in range(rows16, n_rows):
            for j in range(n_cols):
                dst_flat[base + j * n_rows + i] = src_flat[base + i * n_cols + j]
