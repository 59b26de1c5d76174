"""The register-tiled int32 micro-kernel of the fast GEMM, written in LLVM IR.

The derivation in full: ``docs/speed.md``, *The micro-kernel in detail*.
"""

from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from intsim.kernels.isa import (
    AVX2_PAIRS,
    AVX512_PAIRS,
    GROUP,
    HOST_FEATURES,
    PORTABLE_PAIRS,
    PORTABLE_QUADS,
    TILE_BLOCKS,
    VARIANT_FEATURES,
    VNNI_PAIRS,
    VNNI_QUADS,
    tile_rows,
)

LANES = 16
T_I8, T_I16, T_I32, T_I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
T_ACC = ir.VectorType(T_I32, LANES)
# Each byte's sign bit in a word: x ^ 0x80 is the uint8 code x + 128 of an int8 code x.
SIGN_BITS = 0x80808080 - 2**32
# The inline assembly of _flipped is assembled by LLVM's parser for the host, which numba leaves out.
llvm.initialize_native_asmparser()


def declare_intrinsic(builder, name, ret, args):
    module = builder.module
    return module.globals.get(name) or ir.Function(module, ir.FunctionType(ret, args), name)


def _lanes(builder, vector, indices):
    return builder.shuffle_vector(vector, ir.Constant(vector.type, ir.Undefined), ir.Constant(
        ir.VectorType(T_I32, len(indices)), indices))


_V32_I16 = ir.VectorType(T_I16, 32)


def _portable_dot(builder, acc, a, w, group):
    # Widen every value to i32 (activations zero-extended in the uint8 quads),
    # multiply lane-wise, then add the ``group`` products of each lane.
    narrow = ir.VectorType(T_I16 if group == 2 else T_I8, LANES * group)
    wide = ir.VectorType(T_I32, LANES * group)
    a_wide = (builder.sext if group == 2 else builder.zext)(builder.bitcast(a, narrow), wide)
    products = builder.mul(a_wide, builder.sext(builder.bitcast(w, narrow), wide))
    for q in range(group):
        acc = builder.add(acc, _lanes(builder, products, [group * j + q for j in range(LANES)]))
    return acc


def _vnni_dot(name):
    # Declared with <16 x i32> operands, the form every LLVM accepts (newer
    # LLVMs upgrade it to their <64 x i8> / <32 x i16> signatures on parsing).
    def dot(builder, acc, a, w):
        return builder.call(declare_intrinsic(builder, name, T_ACC, [T_ACC, T_ACC, T_ACC]), [acc, a, w])

    return dot


def _avx512_pairs_dot(builder, acc, a, w):
    fn = declare_intrinsic(builder, "llvm.x86.avx512.pmaddw.d.512", T_ACC, [_V32_I16, _V32_I16])
    return builder.add(acc, builder.call(fn, [builder.bitcast(a, _V32_I16), builder.bitcast(w, _V32_I16)]))


def _avx2_pairs_dot(builder, acc, a, w):
    # Two ymm halves of the 16 lanes, joined again (LLVM keeps them in two registers).
    v8, v16_i16 = ir.VectorType(T_I32, 8), ir.VectorType(T_I16, 16)
    fn = declare_intrinsic(builder, "llvm.x86.avx2.pmadd.wd", v8, [v16_i16, v16_i16])
    halves = []
    for half in (range(0, 8), range(8, 16)):
        a_half = builder.bitcast(_lanes(builder, a, list(half)), v16_i16)
        w_half = builder.bitcast(_lanes(builder, w, list(half)), v16_i16)
        halves.append(builder.call(fn, [a_half, w_half]))
    return builder.add(acc, builder.shuffle_vector(halves[0], halves[1], ir.Constant(T_ACC, list(range(16)))))


_DOTS = {
    VNNI_QUADS: _vnni_dot("llvm.x86.avx512.vpdpbusd.512"),  # uint8 (a) x int8 (w) quads
    VNNI_PAIRS: _vnni_dot("llvm.x86.avx512.vpdpwssd.512"),  # int16 pairs
    AVX512_PAIRS: _avx512_pairs_dot,
    AVX2_PAIRS: _avx2_pairs_dot,
    PORTABLE_PAIRS: lambda builder, acc, a, w: _portable_dot(builder, acc, a, w, 2),
    PORTABLE_QUADS: lambda builder, acc, a, w: _portable_dot(builder, acc, a, w, 4),
}


def group_dot(builder, variant, acc, a, w):
    """``acc`` plus the per-lane group dot products of ``a`` and ``w`` (all <16 x i32>)."""
    if not VARIANT_FEATURES[variant] <= HOST_FEATURES:
        return _portable_dot(builder, acc, a, w, GROUP[variant])
    return _DOTS[variant](builder, acc, a, w)


def ir_literal(value):
    return value.literal_value if isinstance(value, types.IntegerLiteral) else None


def phi_merged(builder, firsts, first_block, seconds, second_block):
    # One phi per pair: firsts[i] when control came from ``first_block``, seconds[i] from ``second_block``.
    nodes = []
    for first, second in zip(firsts, seconds):
        node = builder.phi(first.type)
        node.add_incoming(first, first_block)
        node.add_incoming(second, second_block)
        nodes.append(node)
    return nodes


def _emit_tile(context, builder, variant, n_rows, n_blocks, a_data, a_starts, n_taps, tap_offset, w_data, w_off,
               groups, c0_data, c0_off, store, prefetch=None, flip=False):
    # The tile of the module docstring as two nested loops, taps outside and
    # groups inside, with the rows x blocks accumulators as phi nodes of both.
    # With ``flip`` the activation words hold raw int8 codes x of a quads variant, made its uint8
    # codes x + 128 here by flipping each byte's sign bit (_flipped: one vpxord per broadcast, shared
    # by the row's blocks), so that they need no encoded copy.
    # ``a_starts`` are the rows' first words (i64 values), ``tap_offset(t)``
    # the word offset of tap ``t`` (an i64 value); the weights of tap ``t``
    # follow those of tap ``t - 1`` in every block.  ``store(finals)``
    # emits the epilogue of the finished accumulators, finals[r][b] those of row r, block b;
    # ``prefetch()``, if given, is emitted before the loops.
    if prefetch is not None:
        prefetch()
    w_block_stride = builder.mul(builder.mul(n_taps, groups), ir.Constant(T_I64, LANES))

    def vector_at(data, index):
        return builder.bitcast(builder.gep(data, [index]), T_ACC.as_pointer())

    def offset(base, stride, i):
        return builder.add(base, builder.mul(stride, ir.Constant(T_I64, i)))

    tile = [(r, b) for r in range(n_rows) for b in range(n_blocks)]
    c0_vecs = [builder.load(vector_at(c0_data, builder.add(c0_off, ir.Constant(T_I64, b * LANES))), align=4)
               for b in range(n_blocks)]
    start = [c0_vecs[b] for _, b in tile]
    w_starts = [offset(w_off, w_block_stride, b) for b in range(n_blocks)]
    entry = builder.block
    tap_loop = builder.append_basic_block("mac_tile.taps")
    group_loop = builder.append_basic_block("mac_tile.groups")
    tap_next = builder.append_basic_block("mac_tile.next_tap")
    done = builder.append_basic_block("mac_tile.done")
    zero, one = ir.Constant(T_I64, 0), ir.Constant(T_I64, 1)
    any_work = builder.and_(builder.icmp_signed(">", groups, zero), builder.icmp_signed(">", n_taps, zero))
    builder.cbranch(any_work, tap_loop, done)

    def phis(incoming, block):
        nodes = []
        for value in incoming:
            phi = builder.phi(value.type)
            phi.add_incoming(value, block)
            nodes.append(phi)
        return nodes

    builder.position_at_end(tap_loop)
    t, *tap_accs = phis([zero] + start, entry)
    tap_a = [builder.add(a_start, tap_offset(t)) for a_start in a_starts]
    tap_w = builder.mul(t, groups)
    builder.branch(group_loop)

    builder.position_at_end(group_loop)
    g, *accs = phis([zero] + tap_accs, tap_loop)
    w_lanes = builder.mul(builder.add(tap_w, g), ir.Constant(T_I64, LANES))
    w_vecs = [builder.load(vector_at(w_data, builder.add(w_start, w_lanes)), align=4) for w_start in w_starts]
    a_vecs = []
    for a_row in tap_a:
        a_val = builder.load(builder.gep(a_data, [builder.add(a_row, g)]), align=4)
        a_vecs.append(_flipped(builder, variant, a_val) if flip else _splat(builder, a_val, T_ACC))
    updated = [group_dot(builder, variant, acc, a_vecs[r], w_vecs[b]) for acc, (r, b) in zip(accs, tile)]
    g_next = builder.add(g, one)
    g.add_incoming(g_next, group_loop)
    for phi, value in zip(accs, updated):
        phi.add_incoming(value, group_loop)
    builder.cbranch(builder.icmp_signed("<", g_next, groups), group_loop, tap_next)

    builder.position_at_end(tap_next)
    t_next = builder.add(t, one)
    t.add_incoming(t_next, tap_next)
    for phi, value in zip(tap_accs, updated):
        phi.add_incoming(value, tap_next)
    builder.cbranch(builder.icmp_signed("<", t_next, n_taps), tap_loop, done)

    builder.position_at_end(done)
    finals = phi_merged(builder, start, entry, updated, tap_next)
    store([finals[r * n_blocks:(r + 1) * n_blocks] for r in range(n_rows)])


def _flipped(builder, variant, a_val):
    # The word a_val with each byte's sign bit flipped, in all 16 lanes.  Where the variant runs
    # natively (AVX-512), vpxord on the broadcast register, written as inline assembly: in IR, LLVM
    # moves an xor of a splat before the splat, and its scalar xor then broadcast from a general
    # register cost more than the encoded copy it saves (1x1 64->256 @56, paper, batch 1: 0.34 ms
    # with the copy, 0.47 ms so; znver5, thread time), while an xor it could not move kept LLVM 22's
    # code generation busy for over 20 minutes of CPU on the GEMM core, unfinished.
    features = VARIANT_FEATURES[variant]
    if "avx512f" in features and features <= HOST_FEATURES:
        xor = ir.FunctionType(T_ACC, [T_ACC, T_ACC])
        return builder.asm(xor, "vpxord $2, $1, $0", "=v,v,v",
                           [_splat(builder, a_val, T_ACC), ir.Constant(T_ACC, [SIGN_BITS] * LANES)], False)
    return _splat(builder, builder.xor(a_val, ir.Constant(T_I32, SIGN_BITS)), T_ACC)


def _int32_store(builder, c_data, c_off, c_stride):
    # The plain epilogue: the accumulators finals[r][b] as int32 at c[c_off + r*c_stride + 16*b + j].
    def store(finals):
        for r, accs in enumerate(finals):
            for b, acc in enumerate(accs):
                index = builder.add(builder.add(c_off, builder.mul(c_stride, ir.Constant(T_I64, r))),
                                    ir.Constant(T_I64, b * LANES))
                builder.store(acc, builder.bitcast(builder.gep(c_data, [index]), T_ACC.as_pointer()), align=4)

    return store


_F32 = ir.FloatType()
_V_F32 = ir.VectorType(_F32, LANES)
_MASK = ir.VectorType(ir.IntType(1), LANES)
HALF = LANES // 2
_V64 = ir.VectorType(T_I64, HALF)

# The int64 rows of the fixed-point epilogue (mac.lane_params), each as long as the padded channels.
LEFT, MULTIPLIER, NUDGE_ABOVE, NUDGE_BELOW, TOTAL_SHIFT, THRESHOLD, PATH = range(7)
LANE_ROWS = 7
# The forms of the rule, by cost; a channel's PATH is the cheapest that serves it, a tile takes the
# dearest of its channels' (see requant_store_tile).
PLAIN, SELECT, GENERAL = 0, 1, 2


def _splat(builder, value, vector_type):
    first = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(T_I32, 0))
    mask = ir.Constant(ir.VectorType(T_I32, vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(first, ir.Constant(vector_type, ir.Undefined), mask)


def requant_params(context, builder, array_type, array_value):
    """``(data pointer, row stride or None)`` of an epilogue's parameter array: float32 scales
    (``FLOAT32_RINT``, stride ``None``) or the int64 rows of :func:`intsim.kernels.mac.lane_params`
    (stride: the array's length / LANE_ROWS)."""
    array = context.make_array(array_type)(context, builder, array_value)
    if array_type.dtype == types.float32:
        return array.data, None
    length = builder.extract_value(array.shape, 0)
    return array.data, builder.sdiv(length, ir.Constant(T_I64, LANE_ROWS))


def _clamp(builder, value, lo, hi):
    # Each select is one vpmaxs / vpmins: (a > b ? a : b) is their operation exactly.
    raised = builder.select(builder.icmp_signed(">", value, lo), value, lo)
    return builder.select(builder.icmp_signed("<", raised, hi), raised, hi)


def _sext_low(builder, value):
    # The low 32 bits of each 64-bit lane, sign-extended (vpmuldq reads nothing else, so LLVM drops the shifts).
    return builder.ashr(builder.shl(value, ir.Constant(_V64, [32] * HALF)), ir.Constant(_V64, [32] * HALF))


def _fixed_point_tile(builder, params_data, stride, scale_off, lo, hi, finals, put):
    # The DOUBLE / SINGLE rule of mac.lane_params over the tile ``finals`` [row][block], each result
    # (minus the zero point, clamped) handed to put(r, b, <16 x i32>).  A <16 x i32> accumulator read
    # as <8 x i64> holds the even channels in the low halves of its lanes and the odd ones in the high
    # halves; lane_params stores each block's rows even channels first, so each half is one vpmuldq
    # against 8 parameters, with no sign extension.  One branch per tile picks the dearest PATH of its
    # channels (the largest value, as the forms are numbered):
    #
    # * PLAIN (every left 0, total_shift >= multiplier_bits and nudge_below == nudge_above: SINGLE and
    #   DOUBLE at a scale below 1 without DOUBLE's second rounding): multiply, add, shift per half.
    #   |p| <= 2**31 * (2**b - 1) with b = multiplier_bits, and the nudge is below 2**(total_shift - 1)
    #   + 2**(b - 1), so with total_shift >= b the result lies inside int32: the halves join into one
    #   int32 vector and the clamp runs on 16 lanes.
    # * SELECT (DOUBLE at a scale below 1/2, every channel of the tile: lane_params sends a layer's other
    #   channels to GENERAL): as PLAIN, then nudge_below - nudge_above (-2**b, the same for every such
    #   channel) added where the accumulator is negative.  The rule picks nudge_below where the product
    #   is below its threshold -2**(b-1); with a right shift r >= 1 the two nudges give 0 alike for the
    #   products in [-2**(b-1), 0), as (p + nudge) >> (b + r) lies in [0, 2**(b+r)) for both, and a
    #   product is negative exactly where its accumulator is (multipliers are not negative; a zero
    #   multiplier gives 0 either way).  The signs are taken from the accumulators before anything else,
    #   so that no instruction the PLAIN branch shares starts the SELECT one (LLVM hoists a common start
    #   of both branches above the branch: a 6 x 4 tile then held every product at once and spilled).
    # * GENERAL (a left shift, whose product may saturate, or a scale of 1 or more under SINGLE, whose
    #   result may leave int32): the saturation and the clamp in 64-bit lanes, as the rule is written.
    n_blocks = len(finals[0])

    def row(k, b, half):
        index = builder.add(builder.add(builder.mul(stride, ir.Constant(T_I64, k)), scale_off),
                            ir.Constant(T_I64, b * LANES + half * HALF))
        return builder.load(builder.bitcast(builder.gep(params_data, [index]), _V64.as_pointer()), align=8)

    paths = [row(PATH, b, half) for b in range(n_blocks) for half in (0, 1)]
    dearest = paths[0]
    for path in paths[1:]:
        dearest = builder.select(builder.icmp_signed(">", path, dearest), path, dearest)

    def any_lane(predicate, value):
        flags = builder.bitcast(builder.icmp_signed(predicate, dearest, ir.Constant(_V64, [value] * HALF)),
                                ir.IntType(HALF))
        return builder.icmp_unsigned("!=", flags, ir.Constant(ir.IntType(HALF), 0))

    lo64, hi64 = _splat(builder, lo, _V64), _splat(builder, hi, _V64)
    lo32, hi32 = (_splat(builder, builder.trunc(bound, T_I32), T_ACC) for bound in (lo, hi))
    int32_min, int32_max = ir.Constant(_V64, [-(2**31)] * HALF), ir.Constant(_V64, [2**31 - 1] * HALF)
    # even results from the low halves of the first vector, odd ones from the low halves of the second
    interleave = ir.Constant(T_ACC, [2 * (j // 2) + (LANES if j % 2 else 0) for j in range(LANES)])

    def scalar(k):  # row k at the tile's first channel (a real one: padding channels come last)
        index = builder.add(builder.mul(stride, ir.Constant(T_I64, k)), scale_off)
        return builder.load(builder.gep(params_data, [index]))

    # even channels' signs in bit 31 of the 64-bit lanes, odd ones' in bit 63
    sign_bits = ir.Constant(_V64, [2**31] * HALF), ir.Constant(_V64, [-(2**63)] * HALF)
    zeros64 = ir.Constant(_V64, [0] * HALF)

    def emit(form):
        if form == SELECT:
            correction = _splat(builder, builder.sub(scalar(NUDGE_BELOW), scalar(NUDGE_ABOVE)), _V64)
        for b in range(n_blocks):
            rows = {k: (row(k, b, 0), row(k, b, 1)) for k in (MULTIPLIER, NUDGE_ABOVE, TOTAL_SHIFT)
                    + ((NUDGE_BELOW, THRESHOLD, LEFT) if form == GENERAL else ())}
            multipliers = [_sext_low(builder, m) for m in rows[MULTIPLIER]]
            for r, accs in enumerate(finals):
                wide = builder.bitcast(accs[b], _V64)
                if form == SELECT:
                    negative = [builder.icmp_unsigned("!=", builder.and_(wide, bit), zeros64) for bit in sign_bits]
                results = []
                odd = builder.ashr(wide, ir.Constant(_V64, [32] * HALF))
                for half, y in enumerate((_sext_low(builder, wide), odd)):
                    if form == GENERAL:
                        y = _clamp(builder, builder.shl(y, rows[LEFT][half]), int32_min, int32_max)
                    product = builder.mul(_sext_low(builder, y), multipliers[half])
                    nudge = rows[NUDGE_ABOVE][half]
                    if form == GENERAL:
                        nudge = builder.select(builder.icmp_signed("<", product, rows[THRESHOLD][half]),
                                               rows[NUDGE_BELOW][half], nudge)
                    value = builder.add(product, nudge)
                    if form == SELECT:
                        value = builder.select(negative[half], builder.add(value, correction), value)
                    value = builder.ashr(value, rows[TOTAL_SHIFT][half])
                    # In GENERAL, clamping in int64 is saturating to int32 and clamping, as lo and hi lie inside int32.
                    results.append(_clamp(builder, value, lo64, hi64) if form == GENERAL else value)
                joined = builder.shuffle_vector(builder.bitcast(results[0], T_ACC), builder.bitcast(results[1], T_ACC),
                                                interleave)
                put(r, b, joined if form == GENERAL else _clamp(builder, joined, lo32, hi32))

    with builder.if_else(any_lane("==", GENERAL)) as (general, narrow):
        with general:
            emit(GENERAL)
        with narrow:
            with builder.if_else(any_lane("!=", PLAIN)) as (select, plain):
                with select:
                    emit(SELECT)
                with plain:
                    emit(PLAIN)


# Output rows a requantized tile prefetches for writing, in tiles ahead of its own rows: a tile's
# multiply-adds take a few hundred cycles, so its prefetches reach a tile this far on in the same
# columns before that tile's stores.  Without them a layer whose output is not in L2 (a 1x1 64->256
# @56 conv at batch 8: 6.4 MB of int8 codes) waited for every stored line, at the end of each tile:
# 1x1 64->256 @56 batch 8 about 2300 -> 1500 us (paper, znver5, thread time); 2 and 8 tiles ahead
# measured alike.
PREFETCH_TILES = 4


def prefetch_rows_for_write(builder, data, offset, stride, first_row, n_rows, row_bytes):
    """Prefetch for writing (``prefetchw`` where the CPU has it, else a read prefetch) every cache line
    of ``n_rows`` rows from row ``first_row`` (an int constant) of ``row_bytes`` bytes each, row r
    starting at element ``offset + r * stride`` of ``data`` (i64 values).  A prefetch never faults,
    so rows past the array's end are allowed (the last tiles of a layer prefetch them)."""
    p_i8 = ir.PointerType(T_I8)
    fn = declare_intrinsic(builder, "llvm.prefetch.p0", ir.VoidType(), [p_i8, T_I32, T_I32, T_I32])
    write, keep, data_cache = ir.Constant(T_I32, 1), ir.Constant(T_I32, 3), ir.Constant(T_I32, 1)
    for r in range(first_row, first_row + n_rows):
        row = builder.bitcast(builder.gep(data, [builder.add(offset, builder.mul(stride, ir.Constant(T_I64, r)))]),
                              p_i8)
        # the first byte of each 64-byte step and the row's last byte: every line of a row at any alignment
        for byte in list(range(0, row_bytes - 1, 64)) + [row_bytes - 1]:
            builder.call(fn, [builder.gep(row, [ir.Constant(T_I64, byte)]), write, keep, data_cache])


def requant_store_tile(builder, params, scale_off, lo, hi, zero_point, valid_rows, valid_channels, out_data,
                       out_type, out_off, out_stride, split_whole=False):
    # The epilogue in registers: a function of the tile's finished accumulators ``finals`` [row][block]
    # (each <16 x i32>, row r block b holding channels scale_off + 16*b + j) that requantizes them
    # and stores row r, channel 16*b + j at out[out_off + r*out_stride + 16*b + j], for rows below
    # ``valid_rows`` and channels below ``valid_channels`` only (masked stores).  With float32 scales
    # (``params`` from requant_params with no stride): the FLOAT32_RINT rule lane for lane as
    # mac._lane_float32 computes it: float32(acc) * float32 scale (round to nearest even, as numpy's
    # conversions and product), rint (ties to even in the default floating-point environment), clamp
    # to [lo, hi] in float, convert.  With the int64 rows of mac.lane_params: the DOUBLE or SINGLE
    # rule as mac._lane_double / mac._lane_single compute it (_fixed_point_tile), clamped to [lo, hi]
    # (the int32 saturation those apply first cannot move a value across bounds inside int32).  Then
    # add the zero point, narrow to the output width.  The caller guarantees |zero point| and the
    # clamp bounds <= 2**16, so lo and hi (the bounds minus the zero point) are exact in float32 and
    # the clamped value plus the zero point fits the output type.  Clamps are not counted: a count per
    # vector (compare, mask, add) cost a third of a small-reduction layer's time, so a caller that
    # wants the count takes the int32 tile and mac.requantize_rows instead.  With ``split_whole`` the
    # epilogue is emitted twice, behind one branch per tile: plain stores when all its rows and channels
    # are valid, masked ones at the edges.  (On znver5 a masked store cost more than a plain one:
    # 1x1 64->256 @56 batch 8 about 1520 -> 1440 us, 16->96 500 -> 380 us, paper, thread time.)
    params_data, fixed_stride = params
    out_vector = ir.VectorType(out_type, LANES)
    masked_store = declare_intrinsic(builder, f"llvm.masked.store.v{LANES}i{out_type.width}.p0", ir.VoidType(),
                                     [out_vector, out_vector.as_pointer(), T_I32, _MASK])
    t_bits = ir.IntType(LANES)

    def bits(finals):
        # The store masks as LANES bits, per block (valid channels) and per row, worked out in scalars
        # (away from the vector units and the few mask registers) before any branch of the epilogue.
        blocks = []
        for b in range(len(finals[0])):
            count = builder.sub(valid_channels, ir.Constant(T_I64, b * LANES))
            count = builder.select(builder.icmp_signed("<", count, ir.Constant(T_I64, LANES)), count,
                                   ir.Constant(T_I64, LANES))
            count = builder.select(builder.icmp_signed(">", count, ir.Constant(T_I64, 0)), count,
                                   ir.Constant(T_I64, 0))
            blocks.append(builder.trunc(builder.sub(builder.shl(ir.Constant(T_I64, 1), count),
                                                    ir.Constant(T_I64, 1)), t_bits))
        rows = [builder.select(builder.icmp_signed("<", ir.Constant(T_I64, r), valid_rows),
                               ir.Constant(t_bits, 2**LANES - 1), ir.Constant(t_bits, 0)) for r in range(len(finals))]
        return blocks, rows, _splat(builder, builder.trunc(zero_point, T_I32), T_ACC)

    def putter(finals, whole):
        # ``whole``: every row and channel of the tile is valid, so the stores need no mask.
        blocks, rows, zero_point_v = bits(finals) if not whole else (None, None, None)
        if whole:
            zero_point_v = _splat(builder, builder.trunc(zero_point, T_I32), T_ACC)

        def put(r, b, centred):
            codes = builder.add(centred, zero_point_v)
            codes = builder.trunc(codes, out_vector) if out_type.width < 32 else codes
            index = builder.add(builder.add(out_off, builder.mul(out_stride, ir.Constant(T_I64, r))),
                                ir.Constant(T_I64, b * LANES))
            pointer = builder.bitcast(builder.gep(out_data, [index]), out_vector.as_pointer())
            if whole:
                builder.store(codes, pointer, align=1)
            else:
                mask = builder.bitcast(builder.and_(blocks[b], rows[r]), _MASK)
                builder.call(masked_store, [codes, pointer, ir.Constant(T_I32, out_type.width // 8), mask])

        return put

    def float32_rint(finals, whole):
        put = putter(finals, whole)
        rint = declare_intrinsic(builder, "llvm.rint.v16f32", _V_F32, [_V_F32])
        lo_v = _splat(builder, builder.sitofp(lo, _F32), _V_F32)
        hi_v = _splat(builder, builder.sitofp(hi, _F32), _V_F32)
        for b in range(len(finals[0])):
            index = builder.add(scale_off, ir.Constant(T_I64, b * LANES))
            scales = builder.load(builder.bitcast(builder.gep(params_data, [index]), _V_F32.as_pointer()), align=4)
            for r, accs in enumerate(finals):
                value = builder.call(rint, [builder.fmul(builder.sitofp(accs[b], _V_F32), scales)])
                # Each select is one vmaxps / vminps: (a > b ? a : b) is their operation exactly.
                raised = builder.select(builder.fcmp_ordered(">", value, lo_v), value, lo_v)
                put(r, b, builder.fptosi(builder.select(builder.fcmp_ordered("<", raised, hi_v), raised, hi_v), T_ACC))

    def fixed_point(finals, whole):
        _fixed_point_tile(builder, params_data, fixed_stride, scale_off, lo, hi, finals, putter(finals, whole))

    body = float32_rint if fixed_stride is None else fixed_point
    if not split_whole:
        return lambda finals: body(finals, False)

    def split(finals):
        n_rows, n_blocks = len(finals), len(finals[0])
        whole = builder.and_(builder.icmp_signed(">=", valid_rows, ir.Constant(T_I64, n_rows)),
                             builder.icmp_signed(">=", valid_channels, ir.Constant(T_I64, n_blocks * LANES)))
        with builder.if_else(whole, likely=True) as (whole_tile, edge_tile):
            with whole_tile:
                body(finals, True)
            with edge_tile:
                body(finals, False)

    return split


def _tile_size(variant, rows, blocks):
    """``(variant code, rows, blocks)`` as compile-time integers (0 blocks: the full width; 0 rows: the
    variant's rows for that width), or ``None``."""
    variant_code, n_rows, n_blocks = ir_literal(variant), ir_literal(rows), ir_literal(blocks)
    if variant_code is None or n_rows is None or n_blocks is None:
        return None
    n_blocks = n_blocks or TILE_BLOCKS[variant_code]
    return variant_code, n_rows or tile_rows(variant_code, n_blocks), n_blocks


def _data(context, builder, signature, args, i):
    return context.make_array(signature.args[i])(context, builder, args[i]).data


def i64_const(context, builder, signature, args, *indices):
    return [context.cast(builder, args[i], signature.args[i], types.int64) for i in indices]


def _plain_reads(context, builder, signature, args, n_rows):
    # The operands of mac_tile (arguments 3-10) as _emit_tile reads them.
    a_off, a_stride, w_off, groups, c0_off = i64_const(context, builder, signature, args, 4, 5, 7, 8, 10)
    a_starts = [builder.add(a_off, builder.mul(a_stride, ir.Constant(T_I64, r))) for r in range(n_rows)]
    return (_data(context, builder, signature, args, 3), a_starts, ir.Constant(T_I64, 1),
            lambda t: ir.Constant(T_I64, 0), _data(context, builder, signature, args, 6), w_off, groups,
            _data(context, builder, signature, args, 9), c0_off)


def _taps_reads(context, builder, signature, args, n_rows):
    # The operands of mac_tile_taps (arguments 3-11) as _emit_tile reads them.
    a_rows_off, w_off, groups, c0_off = i64_const(context, builder, signature, args, 5, 8, 9, 11)
    rows_data = _data(context, builder, signature, args, 4)
    a_starts = [builder.load(builder.gep(rows_data, [builder.add(a_rows_off, ir.Constant(T_I64, r))]))
                for r in range(n_rows)]
    taps_array = context.make_array(signature.args[6])(context, builder, args[6])
    n_taps = builder.extract_value(taps_array.shape, 0)
    return (_data(context, builder, signature, args, 3), a_starts, n_taps,
            lambda t: builder.load(builder.gep(taps_array.data, [t])), _data(context, builder, signature, args, 7),
            w_off, groups, _data(context, builder, signature, args, 10), c0_off)


def flips(variant_code, a):
    """Whether the activations ``a`` (the numba array type) are raw int8 codes to flip in the tile:
    uint32 words under a quads variant (:class:`intsim.kernels.gemm._GemmLaunch` passes them so).  A
    dispatch on the variant at run time types every variant's branch with the same words; the pairs
    read uint32 words as they read int32 ones, and never run with them."""
    return a.dtype == types.uint32 and GROUP[variant_code] == 4


def _int32_codegen(variant_code, n_rows, n_blocks, reads, first):
    # The int32 tile: its operands from ``reads``, then c, c_off, c_stride at arguments first..first+2.
    def codegen(context, builder, signature, args):
        c_off, c_stride = i64_const(context, builder, signature, args, first + 1, first + 2)
        store = _int32_store(builder, _data(context, builder, signature, args, first), c_off, c_stride)
        _emit_tile(context, builder, variant_code, n_rows, n_blocks,
                   *reads(context, builder, signature, args, n_rows), store,
                   flip=flips(variant_code, signature.args[3]))
        return context.get_dummy_value()

    return codegen


def _rint_codegen(variant_code, n_rows, n_blocks, reads, first):
    # The requantized tile: its operands from ``reads``, then scale, lo, hi, zero_point, valid_rows,
    # valid_channels, out, out_off, out_stride at arguments first..first+8 (``scale_off`` is c0_off).
    def codegen(context, builder, signature, args):
        operands = reads(context, builder, signature, args, n_rows)
        lo, hi, zero_point, valid_rows, valid_channels, out_off, out_stride = i64_const(
            context, builder, signature, args, *range(first + 1, first + 6), first + 7, first + 8)
        out_type = context.get_data_type(signature.args[first + 6].dtype)
        params = requant_params(context, builder, signature.args[first], args[first])
        out_data = _data(context, builder, signature, args, first + 6)
        store = requant_store_tile(builder, params, operands[-1], lo, hi, zero_point, valid_rows, valid_channels,
                                   out_data, out_type, out_off, out_stride, split_whole=True)

        def prefetch():
            prefetch_rows_for_write(builder, out_data, out_off, out_stride, PREFETCH_TILES * n_rows, n_rows,
                                    n_blocks * LANES * out_type.width // 8)

        _emit_tile(context, builder, variant_code, n_rows, n_blocks, *operands, store, prefetch,
                   flip=flips(variant_code, signature.args[3]))
        return context.get_dummy_value()

    return codegen


def rint_arguments(scale, out):
    # The epilogue's parameters: float32 scales (FLOAT32_RINT) or the int64 rows of mac.lane_params.
    return (isinstance(scale, types.Array) and scale.ndim == 1 and scale.dtype in (types.float32, types.int64)
            and isinstance(out, types.Array) and isinstance(out.dtype, types.Integer) and out.dtype.bitwidth <= 32)


@intrinsic
def mac_tile(typingctx, variant, rows, blocks, a, a_off, a_stride, w, w_off, groups, c0, c0_off, c, c_off, c_stride):
    """See the module docstring."""
    size = _tile_size(variant, rows, blocks)
    if size is None:
        return None
    sig = types.void(variant, rows, blocks, a, a_off, a_stride, w, w_off, groups, c0, c0_off, c, c_off, c_stride)
    return sig, _int32_codegen(*size, _plain_reads, 11)


@intrinsic
def mac_tile_taps(typingctx, variant, rows, blocks, a, a_rows, a_rows_off, taps, w, w_off, groups, c0, c0_off, c,
                  c_off, c_stride):
    """The tile summed over taps, each row read where it lies (see the module docstring)."""
    size = _tile_size(variant, rows, blocks)
    if size is None or not (a_rows.dtype == types.int64 and taps.dtype == types.int64):
        return None
    sig = types.void(variant, rows, blocks, a, a_rows, a_rows_off, taps, w, w_off, groups, c0, c0_off, c, c_off,
                     c_stride)
    return sig, _int32_codegen(*size, _taps_reads, 12)


@intrinsic
def mac_tile_rint(typingctx, variant, rows, blocks, a, a_off, a_stride, w, w_off, groups, c0, c0_off, scale, lo, hi,
                  zero_point, valid_rows, valid_channels, out, out_off, out_stride):
    """The tile of :func:`mac_tile` requantized in registers (see the module docstring)."""
    size = _tile_size(variant, rows, blocks)
    if size is None or not rint_arguments(scale, out):
        return None
    sig = types.void(variant, rows, blocks, a, a_off, a_stride, w, w_off, groups, c0, c0_off, scale, lo, hi,
                     zero_point, valid_rows, valid_channels, out, out_off, out_stride)
    return sig, _rint_codegen(*size, _plain_reads, 11)


@intrinsic
def mac_tile_taps_rint(typingctx, variant, rows, blocks, a, a_rows, a_rows_off, taps, w, w_off, groups, c0, c0_off,
                       scale, lo, hi, zero_point, valid_rows, valid_channels, out, out_off, out_stride):
    """The tile of :func:`mac_tile_taps` requantized in registers (see the module docstring)."""
    size = _tile_size(variant, rows, blocks)
    if size is None or not (a_rows.dtype == types.int64 and taps.dtype == types.int64 and rint_arguments(scale, out)):
        return None
    sig = types.void(variant, rows, blocks, a, a_rows, a_rows_off, taps, w, w_off, groups, c0, c0_off, scale, lo,
                     hi, zero_point, valid_rows, valid_channels, out, out_off, out_stride)
    return sig, _rint_codegen(*size, _taps_reads, 12)
