"""The ``DOUBLE`` / ``SINGLE`` register epilogue over the even and odd int32 lanes, as LLVM IR.

The rule is that of :func:`intsim.fixedpoint.one_shift_constants`, lane for
lane: ``y = saturate32(acc << left)``, ``p = y * multiplier``,
``(p + (nudge_below if p < threshold else nudge_above)) >> total_shift``,
clamped to ``[lo, hi]``, plus the zero point.  The int64 product of two int32
values is one ``vpmuldq``, which reads the low half of each 64-bit lane: the
16 accumulators of a vector, seen as 8 int64 lanes, are the even channels in
place and the odd channels one arithmetic shift right by 32 away, so no lane
is sign-extended into a second register and the parameter rows are stored in
that order (:func:`lane_params`: per 16 channels, the 8 even ones, then the 8
odd ones).

Three paths, chosen per tile from the rows (one branch per tile, not per lane):

* ``plain`` -- every ``left`` is 0, every ``total_shift >= multiplier_bits``
  and ``nudge_below == nudge_above`` (``SINGLE`` at a scale below 1): a
  multiply, an add and a shift per half.  ``|p| <= 2**31 * (2**b - 1)`` and a
  nudge below ``2**(total_shift - 1)`` (plus ``2**(b - 1)``: ``DOUBLE``'s ``h``)
  keep ``(p + nudge) >> total_shift`` inside int32 when ``total_shift >= b``,
  so the two halves join into one int32 vector and the clamp runs on 16 lanes.
* ``select`` -- as ``plain`` but the nudge chosen by the compare (``DOUBLE``
  at a scale below 1).
* ``general`` -- any other row (a left shift, whose product may saturate, or a
  scale of 1 or more under ``SINGLE``, whose result may leave int32): the
  saturation and the clamp in 64-bit lanes, as the rule is written.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from intsim.jit import jit
from intsim.kernels.mac import fixedpoint_params
from intsim.kernels.microkernel import FIXED_ROWS, LANES, T_ACC, T_I32, T_I64, declare_intrinsic

HALF = LANES // 2
# Rows of lane_params: fixedpoint_params' six, then ``wide`` (1 where the lane needs the general path).
LEFT, MULTIPLIER, NUDGE_ABOVE, NUDGE_BELOW, TOTAL_SHIFT, THRESHOLD, WIDE = range(FIXED_ROWS + 1)
LANE_ROWS = FIXED_ROWS + 1
_V64 = ir.VectorType(T_I64, HALF)
_MASK = ir.VectorType(ir.IntType(1), LANES)
_EVEN_ODD = [j for j in range(0, LANES, 2)] + [j for j in range(1, LANES, 2)]


@jit
def lane_params(multiplier, shift, rounding, multiplier_bits, padded_channels):
    """The int64 rows of :func:`intsim.kernels.mac.fixedpoint_params` (``left``, ``multiplier``,
    ``nudge_above``, ``nudge_below``, ``total_shift``, ``threshold``) and a seventh, ``wide``, at
    ``[k * padded_channels + c]``, each 16 channels in even-then-odd order (channel ``16 i + j`` at
    ``16 i + j // 2`` for even ``j``, ``16 i + 8 + j // 2`` for odd ``j``); ``wide`` is 1 for a
    channel with ``left > 0`` or ``total_shift < multiplier_bits``, 0 elsewhere (padding too)."""
    rows = fixedpoint_params(multiplier, shift, rounding, multiplier_bits, padded_channels)
    params = np.zeros(LANE_ROWS * padded_channels, np.int64)
    for block in range(0, padded_channels, LANES):
        for j in range(LANES):
            lane = block + (j // 2 if j % 2 == 0 else HALF + j // 2)
            for k in range(FIXED_ROWS):
                params[k * padded_channels + lane] = rows[k * padded_channels + block + j]
            if block + j < multiplier.shape[0]:
                left = rows[LEFT * padded_channels + block + j]
                total_shift = rows[TOTAL_SHIFT * padded_channels + block + j]
                params[WIDE * padded_channels + lane] = 1 if left > 0 or total_shift < multiplier_bits else 0
    return params


def _splat(builder, value, vector_type):
    first = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value, ir.Constant(T_I32, 0))
    mask = ir.Constant(ir.VectorType(T_I32, vector_type.count), [0] * vector_type.count)
    return builder.shuffle_vector(first, ir.Constant(vector_type, ir.Undefined), mask)


def _any(builder, vectors, predicate):
    # One i1: whether predicate(vector) holds in any lane of any of ``vectors``.
    flags = [builder.bitcast(predicate(v), ir.IntType(HALF)) for v in vectors]
    joined = flags[0]
    for flag in flags[1:]:
        joined = builder.or_(joined, flag)
    return builder.icmp_unsigned("!=", joined, ir.Constant(ir.IntType(HALF), 0))


def _clamp(builder, value, lo, hi):
    raised = builder.select(builder.icmp_signed(">", value, lo), value, lo)
    return builder.select(builder.icmp_signed("<", raised, hi), raised, hi)


def _sext_low(builder, value):
    # The low 32 bits of each 64-bit lane, sign-extended (vpmuldq reads nothing else).
    return builder.ashr(builder.shl(value, ir.Constant(_V64, [32] * HALF)), ir.Constant(_V64, [32] * HALF))


def lane_store_tile(builder, params_data, stride, scale_off, lo, hi, zero_point, valid_channels, out_data, out_type,
                    out_off, out_stride, finals):
    """Requantize the tile ``finals`` (``<16 x i32>`` accumulators of one 16-channel block, column ``r``
    of the tile at ``finals[r]``) by the rows of :func:`lane_params` (``params_data`` an i64 pointer,
    ``stride`` their length / LANE_ROWS, ``scale_off`` the block's first channel) and store column
    ``r``'s channels below ``valid_channels`` at ``out[out_off + r * out_stride]``.  ``lo``, ``hi``
    are the clamp bounds minus the zero point; the caller guarantees them, and the zero point, within
    ``2**16`` (the output type holds the clamped value plus the zero point)."""
    def row(k, half):
        index = builder.add(builder.add(builder.mul(stride, ir.Constant(T_I64, k)), scale_off),
                            ir.Constant(T_I64, half * HALF))
        return builder.load(builder.bitcast(builder.gep(params_data, [index]), _V64.as_pointer()), align=8)

    rows = {k: (row(k, 0), row(k, 1)) for k in range(LANE_ROWS)}
    general = _any(builder, rows[WIDE], lambda v: builder.icmp_signed("!=", v, ir.Constant(_V64, [0] * HALF)))
    split = _any(builder, [builder.xor(a, b) for a, b in zip(rows[NUDGE_ABOVE], rows[NUDGE_BELOW])],
                 lambda v: builder.icmp_signed("!=", v, ir.Constant(_V64, [0] * HALF)))
    out_vector = ir.VectorType(out_type, LANES)
    masked_store = declare_intrinsic(builder, f"llvm.masked.store.v{LANES}i{out_type.width}.p0", ir.VoidType(),
                                     [out_vector, out_vector.as_pointer(), T_I32, _MASK])
    lanes = builder.icmp_signed("<", ir.Constant(T_ACC, list(range(LANES))),
                                _splat(builder, builder.trunc(valid_channels, T_I32), T_ACC))
    zero_point_v = _splat(builder, builder.trunc(zero_point, T_I32), T_ACC)
    multipliers = [_sext_low(builder, m) for m in rows[MULTIPLIER]]

    def emit(with_general, with_select):
        lo64, hi64 = _splat(builder, lo, _V64), _splat(builder, hi, _V64)
        int32_min, int32_max = ir.Constant(_V64, [-(2**31)] * HALF), ir.Constant(_V64, [2**31 - 1] * HALF)
        for r, acc in enumerate(finals):
            wide = builder.bitcast(acc, _V64)
            halves = [_sext_low(builder, wide), builder.ashr(wide, ir.Constant(_V64, [32] * HALF))]
            results = []
            for half, y in enumerate(halves):
                if with_general:
                    y = _clamp(builder, builder.shl(y, rows[LEFT][half]), int32_min, int32_max)
                product = builder.mul(_sext_low(builder, y), multipliers[half])
                nudge = rows[NUDGE_ABOVE][half]
                if with_select:
                    nudge = builder.select(builder.icmp_signed("<", product, rows[THRESHOLD][half]),
                                           rows[NUDGE_BELOW][half], nudge)
                value = builder.ashr(builder.add(product, nudge), rows[TOTAL_SHIFT][half])
                results.append(_clamp(builder, value, lo64, hi64) if with_general else value)
            # even results in the low halves of the first, odd in the low halves of the second
            joined = builder.shuffle_vector(builder.bitcast(results[0], T_ACC), builder.bitcast(results[1], T_ACC),
                                            ir.Constant(T_ACC, [2 * (j // 2) + (LANES if j % 2 else 0)
                                                                for j in range(LANES)]))
            if not with_general:
                joined = _clamp(builder, joined, _splat(builder, builder.trunc(lo, T_I32), T_ACC),
                                _splat(builder, builder.trunc(hi, T_I32), T_ACC))
            codes = builder.add(joined, zero_point_v)
            codes = builder.trunc(codes, out_vector) if out_type.width < 32 else codes
            index = builder.add(out_off, builder.mul(out_stride, ir.Constant(T_I64, r)))
            pointer = builder.bitcast(builder.gep(out_data, [index]), out_vector.as_pointer())
            builder.call(masked_store, [codes, pointer, ir.Constant(T_I32, out_type.width // 8), lanes])

    with builder.if_else(general) as (then_general, otherwise):
        with then_general:
            emit(True, True)
        with otherwise:
            with builder.if_else(split) as (then_select, then_plain):
                with then_select:
                    emit(False, True)
                with then_plain:
                    emit(False, False)
