"""Dot products of activation rows with weight rows read where they lie, written in LLVM IR.

A fully-connected layer's weights ``w [O, K]`` are stored row-major: each
output's reduction is one contiguous run of ``K`` int8 values.  Instead of
packing them for the broadcast micro-kernel of
:mod:`intsim.kernels.microkernel` (a second copy of the weights), this kernel
multiplies a row of activation codes with ``outs`` weight rows at once, 64
bytes of each per step, one accumulator vector per (row, output), and reduces
the accumulators of the tile to one vector at the end (white paper §2.1: the
same MAC array, its partial sums spread over vector lanes).

``row_dots(variant, rows, outs, x, x_off, x_stride, w, o0, n_out, depth, lead, acc, acc_off, acc_stride)``
adds, for ``r < rows`` and ``o < outs`` (``rows * outs`` 8 or 16; ``variant``,
``rows`` and ``outs`` compile-time constants)::

    acc[acc_off + r*acc_stride + o] += sum_{k < depth} x[x_off + r*x_stride + lead + k] * w[row(o)*depth + k]
    row(o) = min(o0 + o, n_out - 1)

``w`` is the int8 weight array itself (``n_out`` rows of ``depth``, C
order); an output past ``n_out - 1`` reads the last row again, so a tile may
run past the layer's last output (its sums land in the caller's padding).
``x`` holds the encoded activation codes: uint8 for the quad variants, int16
for the pair variants.  The sums run over whole vectors of ``V = 16 *
GROUP[variant]`` codes, starting ``lead`` weights before each row (``0 <=
lead < V``): where every row starts ``lead`` bytes past a V-byte boundary
(``depth`` a multiple of V), the weights are then read by aligned loads and
the codes of each row stored ``lead`` columns in.  Every code row must be
readable up to ``lead + depth`` rounded up to a whole vector; the weights of
the first and the last vector are read by masked loads, limited to the row
(nothing outside the weight array is read), and the codes against them do
not count.  Per variant (see :mod:`intsim.kernels.isa`):

================  ============================================================
``VNNI_QUADS``    64 weight bytes against 64 uint8 codes by ``vpdpbusd``
``PORTABLE_QUADS``  the same on generic vectors
``*_PAIRS``       32 weight bytes sign-extended to int16 on load, against 32
                  int16 codes by the variant's pair instruction (``vpdpwssd``,
                  ``vpmaddwd`` zmm or ymm, generic vectors)
================  ============================================================

Every product and group sum is exact (``255 * 128 * 4`` and ``2 * 2**15 * 128`` are
far inside int32) and every add wraps modulo ``2**32``: the sums end equal to
the exact ones modulo ``2**32``, which the caller's static bound turns into
equality (see :mod:`intsim.kernels.gemm`).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from intsim.kernels.isa import GROUP
from intsim.kernels.microkernel import T_ACC, T_I8, T_I16, T_I32, T_I64, LANES, declare_intrinsic, group_dot, i64_const, ir_literal, phi_merged

_I1 = ir.IntType(1)


def _lane_sums(builder, vectors):
    # One vector whose lane i is the sum of the lanes of vectors[i] (8 or 16 vectors): a
    # transpose-add tree.  At each level every vector holds ``per`` sources of ``width``
    # partial sums each; two of them become one of ``2 * per`` sources of ``width / 2``
    # (the low and high half of each source's run added), keeping the sources in order.
    # Fewer than 16 sources end paired with themselves (the lanes past them repeat them).
    width = LANES
    while width > 1:
        if len(vectors) == 1:
            vectors = vectors * 2
        per, half = LANES // width, width // 2
        low, high = [], []
        for j in range(2 * per):
            base = (j % per) * width + (LANES if j >= per else 0)
            low += [base + h for h in range(half)]
            high += [base + half + h for h in range(half)]
        low_mask, high_mask = ir.Constant(T_ACC, low), ir.Constant(T_ACC, high)
        vectors = [builder.add(builder.shuffle_vector(a, b, low_mask), builder.shuffle_vector(a, b, high_mask))
                   for a, b in zip(vectors[::2], vectors[1::2])]
        width = half
    return vectors[0]


def _emit_row_dots(builder, variant, n_rows, n_outs, x_data, x_off, x_stride, w_data, o0, n_out, depth, lead,
                   acc_data, acc_off, acc_stride):
    group = GROUP[variant]
    step = LANES * group  # codes (and weight bytes) per vector
    w_vector = ir.VectorType(T_I8, step)
    lane_vector = ir.VectorType(T_I64, step)

    def constant(value):
        return ir.Constant(T_I64, value)

    last_row = builder.sub(n_out, constant(1))
    w_rows = []  # where each output's run of steps starts: ``lead`` weights before its row
    for o in range(n_outs):
        row = builder.add(o0, constant(o))
        row = builder.select(builder.icmp_signed("<", row, last_row), row, last_row)
        w_rows.append(builder.sub(builder.mul(row, depth), lead))
    x_rows = [builder.add(x_off, builder.mul(x_stride, constant(r))) for r in range(n_rows)]

    def widened(weights):
        # Weight bytes as the <16 x i32> operand of the variant's dot: as they are for quads,
        # sign-extended to int16 pairs otherwise.
        if group == 4:
            return builder.bitcast(weights, T_ACC)
        return builder.bitcast(builder.sext(weights, ir.VectorType(T_I16, step)), T_ACC)

    def accumulate(accs, s, load_weights):
        # Step s: codes s*step .. of every row against the same weights of every output.
        k = builder.mul(s, constant(step))
        x_vecs = [builder.load(builder.bitcast(builder.gep(x_data, [builder.add(x_row, k)]), T_ACC.as_pointer()),
                               align=1) for x_row in x_rows]
        updated = list(accs)
        for o, w_row in enumerate(w_rows):
            pointer = builder.bitcast(builder.gep(w_data, [builder.add(w_row, k)]), w_vector.as_pointer())
            weights = widened(load_weights(pointer))
            for r in range(n_rows):
                i = r * n_outs + o
                updated[i] = group_dot(builder, variant, accs[i], x_vecs[r], weights)
        return updated

    masked_load = declare_intrinsic(builder, f"llvm.masked.load.v{step}i8.p0", w_vector,
                           [w_vector.as_pointer(), T_I32, ir.VectorType(_I1, step), w_vector])

    def splat(value):
        first = builder.insert_element(ir.Constant(lane_vector, ir.Undefined), value, ir.Constant(T_I32, 0))
        return builder.shuffle_vector(first, ir.Constant(lane_vector, ir.Undefined),
                                      ir.Constant(ir.VectorType(T_I32, step), [0] * step))

    def masked_step(accs, s):
        # Step s with only the weights of lanes j, lead <= s*step + j < lead + depth, read (the
        # others zero): the first step of a run that starts before its row, the last one of a
        # run that ends inside a vector.
        lanes = builder.add(ir.Constant(lane_vector, list(range(step))), splat(builder.mul(s, constant(step))))
        mask = builder.and_(builder.icmp_signed(">=", lanes, splat(lead)),
                            builder.icmp_signed("<", lanes, splat(builder.add(lead, depth))))
        no_weights = ir.Constant(w_vector, [0] * step)
        return accumulate(accs, s, lambda pointer: builder.call(masked_load, [pointer, ir.Constant(T_I32, 1), mask,
                                                                             no_weights]))

    def when(condition, name, body, accs):
        # ``body(accs)`` where ``condition`` holds, else ``accs``.
        before, then, join = builder.block, builder.append_basic_block(name), builder.append_basic_block(name + ".end")
        builder.cbranch(condition, then, join)
        builder.position_at_end(then)
        updated = body(accs)
        then_end = builder.block
        builder.branch(join)
        builder.position_at_end(join)
        return phi_merged(builder, accs, before, updated, then_end)

    def steps(begin, end, accs):
        # The unmasked steps begin .. end - 1, in a loop.
        before, loop, join = builder.block, builder.append_basic_block("row_dots.steps"), \
            builder.append_basic_block("row_dots.steps_end")
        builder.cbranch(builder.icmp_signed("<", begin, end), loop, join)
        builder.position_at_end(loop)
        s = builder.phi(T_I64)
        s.add_incoming(begin, before)
        loop_accs = []
        for value in accs:
            node = builder.phi(T_ACC)
            node.add_incoming(value, before)
            loop_accs.append(node)
        stepped = accumulate(loop_accs, s, lambda pointer: builder.load(pointer, align=1))
        s_next = builder.add(s, constant(1))
        s.add_incoming(s_next, loop)
        for node, value in zip(loop_accs, stepped):
            node.add_incoming(value, loop)
        builder.cbranch(builder.icmp_signed("<", s_next, end), loop, join)
        builder.position_at_end(join)
        return phi_merged(builder, accs, before, stepped, loop)

    # Steps 0 .. ceil((lead + depth) / step) - 1: a masked first step if lead > 0, the whole
    # steps, a masked last step if lead + depth ends inside a vector (and it is not the first).
    zero = constant(0)
    span = builder.add(lead, depth)
    whole_end = builder.sdiv(span, constant(step))
    has_head = builder.icmp_signed(">", lead, zero)
    first_whole = builder.zext(has_head, T_I64)
    accs = [ir.Constant(T_ACC, [0] * LANES)] * (n_rows * n_outs)
    accs = when(has_head, "row_dots.head", lambda a: masked_step(a, zero), accs)
    accs = steps(first_whole, whole_end, accs)
    has_tail = builder.and_(builder.icmp_signed(">", builder.srem(span, constant(step)), zero),
                            builder.icmp_signed(">=", whole_end, first_whole))
    finals = when(has_tail, "row_dots.tail", lambda a: masked_step(a, whole_end), accs)
    sums = _lane_sums(builder, finals)
    out_vector = ir.VectorType(T_I32, n_outs)
    for r in range(n_rows):
        part = builder.shuffle_vector(sums, ir.Constant(T_ACC, ir.Undefined),
                                      ir.Constant(ir.VectorType(T_I32, n_outs), [r * n_outs + o for o in range(n_outs)]))
        index = builder.add(acc_off, builder.mul(acc_stride, constant(r)))
        pointer = builder.bitcast(builder.gep(acc_data, [index]), out_vector.as_pointer())
        builder.store(builder.add(builder.load(pointer, align=4), part), pointer, align=4)


@intrinsic
def row_dots(typingctx, variant, rows, outs, x, x_off, x_stride, w, o0, n_out, depth, lead, acc, acc_off,
             acc_stride):
    """See the module docstring."""
    variant_code, n_rows, n_outs = ir_literal(variant), ir_literal(rows), ir_literal(outs)
    if variant_code is None or n_rows is None or n_outs is None or n_rows * n_outs not in (8, LANES):
        return None
    # Codes of either width type-check with every variant: a caller that picks the variant at run
    # time compiles each with its one code dtype, and runs only the variant that matches it.
    if not (x.dtype in (types.uint8, types.int16) and w.dtype == types.int8 and acc.dtype == types.int32):
        return None
    sig = types.void(variant, rows, outs, x, x_off, x_stride, w, o0, n_out, depth, lead, acc, acc_off, acc_stride)

    def codegen(context, builder, signature, args):
        x_off_v, x_stride_v, o0_v, n_out_v, depth_v, lead_v, acc_off_v, acc_stride_v = i64_const(
            context, builder, signature, args, 4, 5, 7, 8, 9, 10, 12, 13)

        def data(i):
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        _emit_row_dots(builder, variant_code, n_rows, n_outs, data(3), x_off_v, x_stride_v, data(6), o0_v, n_out_v,
                       depth_v, lead_v, data(11), acc_off_v, acc_stride_v)
        return context.get_dummy_value()

    return sig, codegen

