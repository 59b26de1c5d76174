"""Lower an intsim integer graph to TOSA 1.0 operators (int8 x int8 -> int32, int16 x int8 -> int48, RESCALE).

:func:`lower_to_tosa` maps every node to TOSA operators whose result is the same
integers (checked by ``tests/test_tosa.py`` against the TOSA reference model):

* ``conv2d`` -> CONV2D (groups 1) or DEPTHWISE_CONV2D (one input channel per
  group), int32 result, then a per-channel RESCALE and a CLAMP for a fused clamp;
* ``fully_connected`` -> RESHAPE to ``[N, 1, 1, K]``, 1x1 CONV2D, RESCALE, RESHAPE;
* ``rescale`` -> RESCALE; TOSA's ``shift`` is a right shift, ``multiplier_bits - shift``
  of intsim's left shift, and DOUBLE_ROUND is gemmlowp's SRDHM + RoundingDivideByPOT;
* ``add`` (TFLite scheme) -> RESCALE to int32 by ``2**left_shift`` (exact), RESCALE of
  each input, ADD / SUB in int32, RESCALE to the output;
* ``mul`` -> RESCALE of each input to int32 minus its zero point, MUL (shift 0: the exact
  product, refused when it could leave int32), RESCALE to the output;
* ``matmul`` (int8 activations x activations) -> RESHAPE to rank 3, MATMUL with both
  zero points into int32, RESCALE, RESHAPE;
* ``avg_pool`` -> DEPTHWISE_CONV2D with unit weights (the exact window sum) and a
  RESCALE whose multiplier is rounded up, so that it divides by the window size
  rounding half away from zero (intsim's rule; TOSA AVG_POOL2D rounds half up);
* ``mean`` -> RESCALE to int32, REDUCE_SUM per axis, RESCALE;
* windows (convolutions, pools) that intsim floors drop the unread trailing rows and
  columns (from the padding, else with a SLICE), since TOSA wants exact window counts;
* ``max_pool``, ``concat`` (a RESCALE per input), ``pad``, ``reshape`` / ``flatten`` /
  ``squeeze`` / ``unsqueeze``, ``transpose``, ``lut`` (TABLE, int8), ``lut_interpolated`` (TABLE, int16, and a
  RESCALE);
* ``slice`` and ``insert_zeros`` (ConvTranspose's zero insertion): :mod:`intsim.export.tosa_vision`.
* ``embedding`` and ``gather`` -> GATHER (``[N, K, C]`` values by ``[N, W]`` int32 indices) between
  RESHAPEs.  ``layernorm`` and ``masked_softmax`` have no TOSA operator (and are refused).

Mixed-precision graphs (:mod:`intsim.converter.layer_config`) may hold int16 activations: TOSA
takes them with zero point 0 only (give such layers ``activation_symmetric = true``), and its
int16 x int8 convolutions accumulate in int48.  intsim accumulates in ``accumulator_bits``; the two
agree whenever no sum can leave int32, which the exporter proves per layer from the weights and
the bias (``|bias| + 32768 * sum |w - z_w|``) before it writes an int48 CONV2D, an exact RESCALE
of the int48 sums to int32, and the layer's RESCALE; otherwise the layer is refused.

Every constant becomes a CONST (CONST_SHAPE for shapes) operator, and each operator
records the intsim node it lowers as its location.  :func:`export_tosa` writes the
program as a TOSA flatbuffer (:mod:`intsim.export.tosa_fb`).

Anything else (and any attribute TOSA cannot express exactly) raises
:class:`~intsim.errors.UnsupportedOpError` naming the node; nothing is changed
silently.  TOSA shapes are static: the graph's unknown (batch) dimensions are
fixed to ``batch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from intsim.errors import UnsupportedOpError, ValidationError
from intsim.export.tosa_fb import write_tosa
from intsim.export.tosa_vision import VISION_LOWERINGS
from intsim.graph import Graph
from intsim.codes import dtype_range
from intsim.graph.ops import clamp_bounds, rescale_params

TOSA_DTYPES = ("int8", "int16", "int32", "int48")
INT32_MAX = 2**31 - 1
IDENTITY = (1 << 30, 30)  # TOSA (multiplier, right shift) of exactly 1


@dataclass
class TosaOperator:
    """One TOSA operator; ``attrs`` holds its attribute table's fields by their schema names and
    ``location`` the intsim node it lowers."""

    op: str
    inputs: list
    outputs: list
    attrs: dict
    location: str


@dataclass
class TosaProgram:
    """TOSA operators as plain data: ``tensors`` name -> (shape, dtype) of activations; ``consts``
    name -> array with ``const_dtypes`` (``"shape"`` for CONST_SHAPE), each made by a CONST /
    CONST_SHAPE operator; ``operators`` in execution order."""

    tensors: dict = field(default_factory=dict)
    consts: dict = field(default_factory=dict)
    const_dtypes: dict = field(default_factory=dict)
    operators: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


class _Builder:
    def __init__(self, graph: Graph, batch: int):
        self.graph, self.batch, self.p = graph, batch, TosaProgram()
        self.count = 0
        self.location = ""  # the node being lowered

    def fresh(self, hint):
        self.count += 1
        return f"{hint}__{self.count}"

    def shape(self, tensor):
        return [self.batch if d is None else d for d in self.graph.tensors[tensor].shape]

    def tensor(self, name, shape, dtype):
        if dtype not in TOSA_DTYPES:
            raise UnsupportedOpError(f"tensor {name!r}: dtype {dtype} has no TOSA integer type here (int8/int16/int32)")
        self.p.tensors[name] = (list(map(int, shape)), dtype)
        return name

    def temp(self, hint, shape, dtype):
        return self.tensor(self.fresh(hint), shape, dtype)

    def const(self, hint, array, dtype):
        name = self.fresh(hint)
        self.p.consts[name] = np.asarray(array)
        self.p.const_dtypes[name] = dtype
        self.op("CONST_SHAPE" if dtype == "shape" else "CONST", [], [name])
        return name

    def op(self, op, inputs, outputs, **attrs):
        self.p.operators.append(TosaOperator(op, list(inputs), list(outputs), attrs, self.location))

    def rescale(self, node, x, out, multiplier, shift, in_zp, out_zp, rounding):
        """RESCALE ``x -> out``; ``shift`` in intsim's convention (positive = left)."""
        bits = self.graph.profile.multiplier_bits
        if rounding not in ("double", "single") or bits != 31:
            raise UnsupportedOpError(
                f"{node.op} {node.name!r}: TOSA RESCALE needs an integer rounding mode with 31-bit multipliers, "
                f"found {rounding!r} with {bits} bits")
        right = bits - np.asarray(shift, np.int64)
        self._rescale_raw(node, x, out, multiplier, right, in_zp, out_zp, rounding)

    def _rescale_raw(self, node, x, out, multiplier, right, in_zp, out_zp, rounding):
        multiplier, right = np.atleast_1d(multiplier).astype(np.int64), np.atleast_1d(right).astype(np.int64)
        if right.min() < 2 or right.max() > 62:
            raise UnsupportedOpError(f"{node.op} {node.name!r}: TOSA RESCALE right shift must be in [2, 62], "
                                     f"found {right.min()}..{right.max()}")
        x_dtype, out_dtype = self.p.tensors[x][1], self.p.tensors[out][1]
        _int16_zero_point(node, x, x_dtype, in_zp)
        _int16_zero_point(node, out, out_dtype, out_zp)
        if x_dtype == "int48":
            # TOSA rescales int48 only with 16-bit multipliers: first to int32 by exactly 1 (2**14 >> 14),
            # which keeps every value, since the sums were proven to fit int32 (_conv).
            narrowed = self.temp(x + "_int32", self.p.tensors[x][0], "int32")
            self.op("RESCALE", [x, self.const("multiplier", np.array([1 << 14], np.int16), "int16"),
                                self.const("shift", np.array([14], np.int8), "int8"),
                                self.const("input_zp", np.array([0]), "int48"),
                                self.const("output_zp", np.array([0], np.int32), "int32")],
                    [narrowed], scale32=False, rounding_mode="single", per_channel=False, input_unsigned=False,
                    output_unsigned=False)
            x, x_dtype = narrowed, "int32"
        ins = [x, self.const("multiplier", multiplier.astype(np.int32), "int32"),
               self.const("shift", right.astype(np.int8), "int8"),
               self.const("input_zp", np.array([in_zp], x_dtype), x_dtype),
               self.const("output_zp", np.array([out_zp], out_dtype), out_dtype)]
        self.op("RESCALE", ins, [out], scale32=True, rounding_mode=rounding, per_channel=bool(multiplier.size > 1),
                input_unsigned=False, output_unsigned=False)

    def clamp(self, x, out, lo, hi):
        """CLAMP ``x -> out`` to [lo, hi], or a plain rename when that is the dtype range."""
        dtype = self.p.tensors[x][1]
        if (lo, hi) == dtype_range(dtype):
            return False
        self.op("CLAMP", [x], [out], min_val=np.array([lo], dtype), max_val=np.array([hi], dtype),
                nan_mode="propagate")
        return True

    def requantize(self, node, acc, out_tensor, rq, in_zp=0):
        """RESCALE ``acc`` to ``out_tensor``, quantized like the node's output, and apply its fused clamp."""
        out_info = self.graph.tensors[node.outputs[0]]
        lo, hi = clamp_bounds(node, out_info)
        shape = self.p.tensors[acc][0]
        target = out_tensor if (lo, hi) == dtype_range(out_info.dtype) else self.temp(node.name + "_rq", shape,
                                                                                      out_info.dtype)
        self.rescale(node, acc, target, rq.multiplier, rq.shift, in_zp, out_info.zero_point, rq.rounding)
        if target != out_tensor:
            self.clamp(target, out_tensor, lo, hi)

    def reshape(self, x, out, shape):
        self.op("RESHAPE", [x, self.const("shape", np.array(shape, np.int64), "shape")], [out])

    def reshaped(self, x, shape):
        """``x`` viewed as ``shape``: ``x`` itself when it has that shape, else a RESHAPE of it."""
        shape = list(map(int, shape))
        if self.p.tensors[x][0] == shape:
            return x
        out = self.temp(x + "_as", shape, self.p.tensors[x][1])
        self.reshape(x, out, shape)
        return out

    def requantize_to_output(self, node, acc, rq, in_zp=0):
        """:meth:`requantize` ``acc`` into the node's output, RESHAPEd when the shapes differ."""
        out = node.outputs[0]
        if self.p.tensors[acc][0] == self.shape(out):
            self.requantize(node, acc, out, rq, in_zp)
            return
        kept = self.temp(node.name + "_rq_as", self.p.tensors[acc][0], self.graph.tensors[out].dtype)
        self.requantize(node, acc, kept, rq, in_zp)
        self.reshape(kept, out, self.shape(out))


def _unsupported(node, why):
    raise UnsupportedOpError(f"{node.op} {node.name!r}: {why}; TOSA export does not change a graph silently")


def _uniform_weight_zero_point(node):
    wzp = node.params["weight_zero_point"]
    if np.any(wzp != wzp[0]):
        _unsupported(node, "per-channel weight zero points differ, TOSA takes one weight_zp per tensor")
    return int(wzp[0])


def _exact_windows(b, x, kernel, strides, dilations, pads):
    """``(x, pads)`` for which TOSA's window count ``(size - 1 + pads - dilation (kernel - 1)) / stride + 1`` is
    exact.  intsim (like ONNX) floors it; the rows and columns past the last window are never read, so
    they are dropped: first from the trailing padding, then (a SLICE) from the end of ``x`` itself."""
    top, left, bottom, right = pads
    shape = b.p.tensors[x][0]
    keep, after = list(shape), [bottom, right]
    for axis, (before, k, stride, dilation) in enumerate(zip((top, left), kernel, strides, dilations)):
        unread = (shape[1 + axis] - 1 + before + after[axis] - dilation * (k - 1)) % stride
        from_pad = min(unread, after[axis])
        after[axis] -= from_pad
        keep[1 + axis] -= unread - from_pad
    if keep != shape:
        sliced = b.temp(x + "_read", keep, b.p.tensors[x][1])
        b.op("SLICE", [x, b.const("start", np.zeros(len(keep), np.int64), "shape"),
                       b.const("size", np.array(keep, np.int64), "shape")], [sliced])
        x = sliced
    return x, (top, left, after[0], after[1])


def _int16_zero_point(node, tensor, dtype, zero_point):
    """TOSA's RESCALE and convolutions take signed int16 values with zero point 0 only."""
    if dtype == "int16" and zero_point != 0:
        _unsupported(node, f"TOSA takes int16 activations with zero point 0, found {zero_point} for {tensor!r} "
                           "(quantize the layer with activation_symmetric = true)")


def _int48_fits_int32(node, weight, bias, weight_zp, depthwise):
    """Refuse an int16 x int8 layer unless every sum of its int48 accumulation fits int32 (then it equals
    intsim's accumulation under any overflow policy): ``|bias| + 32768 * sum |w - z_w|`` per output."""
    w = weight.astype(np.int64) - int(weight_zp)
    per_output = np.abs(w).sum(axis=(0, 1)).reshape(-1) if depthwise else np.abs(w).reshape(w.shape[0], -1).sum(1)
    bound = int((np.abs(bias.astype(np.int64)).reshape(-1) + 32768 * per_output).max())
    if bound > INT32_MAX:
        _unsupported(node, f"int16 x int8 sums may reach {bound}, beyond int32: TOSA accumulates them in int48, "
                           "intsim in at most 32 bits, so results could differ")


def _conv(b, node, x, acc_shape, weight, bias, input_zp, weight_zp, pads, strides, dilations, depthwise):
    wide = b.p.tensors[x][1] == "int16"
    if wide:
        _int16_zero_point(node, x, "int16", input_zp)
        _int48_fits_int32(node, weight, bias, weight_zp, depthwise)
    acc_dtype = "int48" if wide else "int32"
    acc = b.temp(node.name + "_acc", acc_shape, acc_dtype)
    wdt = "int8"
    kernel = weight.shape[:2] if depthwise else weight.shape[1:3]  # [KH, KW, C, M] / [O, KH, KW, I]
    x, pads = _exact_windows(b, x, kernel, strides, dilations, pads)
    ins = [x, b.const("weight", weight, wdt), b.const("bias", bias.astype(np.int64), acc_dtype),
           b.const("input_zp", np.array([input_zp], b.p.tensors[x][1]), b.p.tensors[x][1]),
           b.const("weight_zp", np.array([weight_zp], np.int8), wdt)]
    top, left, bottom, right = pads
    b.op("DEPTHWISE_CONV2D" if depthwise else "CONV2D", ins, [acc], pad=[top, bottom, left, right],
         stride=list(strides), dilation=list(dilations), local_bound=False, acc_type=acc_dtype)
    return acc


def _lower_conv2d(b, node):
    w = node.params["weight"]
    if w.dtype != np.int8:
        _unsupported(node, f"weight dtype {w.dtype}: this exporter writes int8 weights")
    x = node.inputs[0]
    cout, kh, kw, cin_g = w.shape
    groups = int(node.attrs.get("groups", 1))
    cin = b.shape(x)[3]
    out = node.outputs[0]
    common = (b.graph.tensors[x].zero_point, _uniform_weight_zero_point(node), tuple(node.attrs.get("pads", (0,) * 4)),
              node.attrs.get("strides", (1, 1)), node.attrs.get("dilations", (1, 1)))
    if groups == 1:
        acc = _conv(b, node, x, b.shape(out), w, node.params["bias"], *common, depthwise=False)
    elif groups == cin and cin_g == 1:
        # intsim output channel c * M + m of group c is TOSA depthwise [KH, KW, C, M] entry (c, m).
        tosa_w = w.reshape(cin, cout // cin, kh, kw).transpose(2, 3, 0, 1)
        acc = _conv(b, node, x, b.shape(out), np.ascontiguousarray(tosa_w), node.params["bias"], *common,
                    depthwise=True)
    else:
        _unsupported(node, f"grouped convolution with {groups} groups of {cin_g} channels is neither CONV2D nor "
                           "DEPTHWISE_CONV2D")
    b.requantize(node, acc, out, rescale_params(node, b.graph, channels=cout))


def _lower_fully_connected(b, node):
    w = node.params["weight"]
    x = node.inputs[0]
    n, k = b.shape(x)
    acc = _conv(b, node, b.reshaped(x, [n, 1, 1, k]), [n, 1, 1, w.shape[0]], w.reshape(w.shape[0], 1, 1, k),
                node.params["bias"], b.graph.tensors[x].zero_point, _uniform_weight_zero_point(node), (0, 0, 0, 0),
                (1, 1), (1, 1), depthwise=False)
    b.requantize_to_output(node, acc, rescale_params(node, b.graph, channels=w.shape[0]))


def _lower_rescale(b, node):
    x, out = node.inputs[0], node.outputs[0]
    b.requantize(node, x, out, rescale_params(node, b.graph), in_zp=b.graph.tensors[x].zero_point)


def _to_int32_shifted(b, node, x, left_shift):
    """``(x - zp) * 2**left_shift`` in int32, exactly (a RESCALE by a power of two)."""
    wide = b.temp(node.name + "_wide", b.shape(x), "int32")
    b._rescale_raw(node, x, wide, IDENTITY[0], IDENTITY[1] - left_shift, b.graph.tensors[x].zero_point, 0, "single")
    return wide


def _check_equal_ranks(b, node):
    shapes = [b.shape(t) for t in node.inputs]
    if len(shapes[0]) != len(shapes[1]):
        _unsupported(node, f"inputs of rank {len(shapes[0])} and {len(shapes[1])}: TOSA elementwise ops broadcast "
                           "equal ranks only")


def _lower_add(b, node):
    out = node.outputs[0]
    _check_equal_ranks(b, node)
    left = int(node.attrs.get("left_shift", 0))
    if left > 28:
        _unsupported(node, f"left_shift {left} leaves a RESCALE right shift below 2")
    terms = []
    for t, prefix in zip(node.inputs, ("a_", "b_")):
        rq = rescale_params(node, b.graph, prefix)
        wide = _to_int32_shifted(b, node, t, left)
        term = b.temp(node.name + "_" + prefix + "rescaled", b.shape(t), "int32")
        b.rescale(node, wide, term, rq.multiplier, rq.shift, 0, 0, rq.rounding)
        terms.append(term)
    total = b.temp(node.name + "_sum", b.shape(out), "int32")
    b.op("SUB" if node.attrs.get("subtract", False) else "ADD", terms, [total])
    b.requantize(node, total, out, rescale_params(node, b.graph, "out_"))


def _lower_mul(b, node):
    """``(a - za) * (b - zb)``: each input RESCALEd to int32 without its zero point, an int32 MUL with
    ``shift`` 0 (the plain product), then RESCALE to the output."""
    _check_equal_ranks(b, node)
    bound = 1
    for t in node.inputs:
        lo, hi = dtype_range(b.graph.tensors[t].dtype)
        zp = b.graph.tensors[t].zero_point
        bound *= max(hi - zp, zp - lo)
    if bound > 2**31 - 1:
        _unsupported(node, f"products of codes minus zero points reach {bound}, beyond int32, where intsim "
                           "saturates and TOSA MUL does not")
    factors = [_to_int32_shifted(b, node, t, 0) for t in node.inputs]
    product = b.temp(node.name + "_product", b.shape(node.outputs[0]), "int32")
    b.op("MUL", factors + [b.const("shift", np.array([0], np.int8), "int8")], [product])
    b.requantize(node, product, node.outputs[0], rescale_params(node, b.graph))


def _lower_matmul(b, node):
    """``a [..., M, K] @ w [..., K, N]`` as a batched MATMUL ``[B, rows, K] @ [B, K, N]`` into int32:
    with a single right-hand matrix every row of ``a`` goes into one batch, else the leading
    dimensions (equal in both) form the batch."""
    x, w = node.inputs
    for t in node.inputs:
        if b.graph.tensors[t].dtype != "int8":
            _unsupported(node, f"input {t!r} is {b.graph.tensors[t].dtype}: TOSA MATMUL of int16 accumulates in "
                               "int48, intsim in int32; this exporter writes int8 x int8")
    x_shape, w_shape = b.shape(x), b.shape(w)
    lead, w_lead, k, n = x_shape[:-2], w_shape[:-2], x_shape[-1], w_shape[-1]
    if int(np.prod(w_lead)) == 1:
        batch, rows = 1, int(np.prod(x_shape[:-1]))
    elif w_lead == lead:
        batch, rows = int(np.prod(lead)), x_shape[-2]
    else:
        _unsupported(node, f"leading dimensions {w_lead} of {w!r} broadcast against {lead} of {x!r}; TOSA MATMUL "
                           "takes equal batches")
    ins = [b.reshaped(x, [batch, rows, k]), b.reshaped(w, [batch, k, n])]
    ins += [b.const(f"{t}_zp", np.array([b.graph.tensors[t].zero_point], np.int8), "int8") for t in node.inputs]
    acc = b.temp(node.name + "_acc", [batch, rows, n], "int32")
    b.op("MATMUL", ins, [acc])
    b.requantize_to_output(node, acc, rescale_params(node, b.graph))


def _lower_max_pool(b, node):
    if tuple(node.attrs.get("dilations", (1, 1))) != (1, 1):
        _unsupported(node, f"dilations {node.attrs['dilations']}: TOSA MAX_POOL2D has no dilation")
    kernel, strides = list(node.attrs["kernel"]), list(node.attrs.get("strides", (1, 1)))
    x, (top, left, bottom, right) = _exact_windows(b, node.inputs[0], kernel, strides, (1, 1),
                                                   tuple(node.attrs.get("pads", (0, 0, 0, 0))))
    b.op("MAX_POOL2D", [x], node.outputs, kernel=kernel, stride=strides, pad=[top, bottom, left, right],
         nan_mode="propagate")


def _divide_half_away(count: int, bound: int):
    """TOSA (multiplier, right shift) with ``floor((v * m + 2**(s-1)) / 2**s) == round_half_away(v / count)``
    for every ``|v| <= bound``; checked exhaustively here (the multiplier is just above ``2**s / count``,
    which pushes ties away from zero on both sides)."""
    shift = 30 + (count - 1).bit_length()
    multiplier = (1 << shift) // count + 1  # strictly above 2**s / count, below 2**31
    v = np.arange(-bound, bound + 1, dtype=object)
    got = (v * multiplier + (1 << (shift - 1))) >> shift
    want = np.array([(abs(int(i)) * 2 + count) // (2 * count) * (1 if i >= 0 else -1) for i in v], dtype=object)
    assert np.array_equal(got, want), f"no exact reciprocal of {count}"
    return multiplier, shift


def _lower_avg_pool(b, node):
    x, out = node.inputs[0], node.outputs[0]
    kernel = tuple(node.attrs["kernel"])
    pads = tuple(node.attrs.get("pads", (0, 0, 0, 0)))
    include_pad = bool(node.attrs.get("count_include_pad", False))
    if any(pads) and not include_pad:
        _unsupported(node, f"pads {list(pads)} without count_include_pad: the divisor changes across the output, "
                           "and TOSA AVG_POOL2D rounds half up where intsim rounds raw codes half away from zero")
    info = b.graph.tensors[x]
    channels = b.shape(x)[3]
    count = kernel[0] * kernel[1]
    # The window sum of raw codes: sum(x - zp) over real positions plus count * zp (padding counts as zp).
    ones = np.ones((kernel[0], kernel[1], channels, 1), np.int8)
    acc = _conv(b, node, x, b.shape(out), ones, np.full(channels, count * info.zero_point, np.int32),
                info.zero_point, 0, pads, node.attrs.get("strides", (1, 1)), (1, 1), depthwise=True)
    lo, hi = dtype_range(info.dtype)
    multiplier, shift = _divide_half_away(count, count * max(-lo, hi))
    b._rescale_raw(node, acc, out, multiplier, shift, 0, 0, "single")


def _lower_mean(b, node):
    x = node.inputs[0]
    axes = sorted(a % len(b.shape(x)) for a in node.attrs["axes"])
    current = _to_int32_shifted(b, node, x, 0)
    shape = b.shape(x)
    for axis in axes:
        shape = [1 if i == axis else d for i, d in enumerate(shape)]
        reduced = b.temp(node.name + f"_sum{axis}", shape, "int32")
        b.op("REDUCE_SUM", [current], [reduced], axis=axis)
        current = reduced
    b.requantize_to_output(node, current, rescale_params(node, b.graph))


def _lower_concat(b, node):
    out = node.outputs[0]
    rq = rescale_params(node, b.graph, channels=len(node.inputs))
    lo, hi = clamp_bounds(node, b.graph.tensors[out])
    parts = []
    for i, t in enumerate(node.inputs):
        part = b.temp(f"{node.name}_in{i}", b.shape(t), b.graph.tensors[out].dtype)
        b.rescale(node, t, part, rq.multiplier[i], rq.shift[i], b.graph.tensors[t].zero_point,
                  b.graph.tensors[out].zero_point, rq.rounding)
        clamped = b.temp(f"{node.name}_in{i}_clamped", b.shape(t), b.graph.tensors[out].dtype)
        parts.append(clamped if b.clamp(part, clamped, lo, hi) else part)
    b.op("CONCAT", parts, [out], axis=int(node.attrs["axis"]) % len(b.shape(out)))


def _lower_pad(b, node):
    x, out = node.inputs[0], node.outputs[0]
    info = b.graph.tensors[x]
    padding = [v for pair in zip(node.attrs["pads_before"], node.attrs["pads_after"]) for v in pair]
    value = int(node.attrs.get("value", info.zero_point))
    b.op("PAD", [x, b.const("padding", np.array(padding, np.int64), "shape"),
                 b.const("pad_const", np.array([value], info.dtype), info.dtype)], [out])


def _lower_layout(b, node):
    b.reshape(node.inputs[0], node.outputs[0], b.shape(node.outputs[0]))


def _lower_transpose(b, node):
    b.op("TRANSPOSE", node.inputs, node.outputs, perms=list(node.attrs["perm"]))


def _lower_lut(b, node):
    if b.graph.tensors[node.inputs[0]].dtype != "int8":
        _unsupported(node, "TOSA TABLE of int8 takes int8 input (int16 tables interpolate 513 entries)")
    b.op("TABLE", [node.inputs[0], b.const("table", node.params["table"], "int8")], node.outputs)


def _lower_lut_interpolated(b, node):
    """TOSA's int16 TABLE is this op's interpolation without its rounding: ``(t[i] << 7) + slope * r`` in
    int32; a RESCALE by ``2**30 / 2**37`` (single rounding: ``(v + 64) >> 7``) finishes it exactly."""
    x, out = (b.graph.tensors[t] for t in (node.inputs[0], node.outputs[0]))
    if x.dtype != "int16" or out.dtype not in ("int8", "int16"):
        _unsupported(node, f"TOSA TABLE interpolates int16 input to int8 / int16 output, found {x.dtype} -> {out.dtype}")
    wide = b.temp(node.name + "_table", b.shape(node.inputs[0]), "int32")
    b.op("TABLE", [node.inputs[0], b.const("table", node.params["table"].astype(np.int16), "int16")], [wide])
    b._rescale_raw(node, wide, node.outputs[0], np.array([1 << 30]), np.array([37]), 0, 0, "single")


def _lower_embedding(b, node):
    """``table[ids]`` as GATHER of the constant ``[1, V, D]`` table by the ids as ``[1, count]``.  TOSA's
    GATHER takes indices in ``[0, V)``; intsim (like ONNX) also reads ``[-V, 0)`` from the end, which the
    exported graph cannot: token ids are never negative."""
    table = node.params["table"]
    ids_shape = b.shape(node.inputs[0])
    count = int(np.prod(ids_shape))
    values = b.const("table", table.reshape((1,) + table.shape), b.graph.tensors[node.outputs[0]].dtype)
    rows = b.temp(node.name + "_rows", [1, count, table.shape[1]], b.graph.tensors[node.outputs[0]].dtype)
    b.op("GATHER", [values, b.reshaped(node.inputs[0], [1, count])], [rows])
    b.reshape(rows, node.outputs[0], b.shape(node.outputs[0]))


def _lower_gather(b, node):
    """``take(x, indices, axis)`` as GATHER of ``x`` viewed ``[outer, K, inner]`` by the constant indices
    (made non-negative) repeated per ``outer`` row."""
    shape, axis, dtype = b.shape(node.inputs[0]), node.attrs["axis"], b.graph.tensors[node.inputs[0]].dtype
    outer, inner = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1:]))
    indices = node.params["indices"].reshape(-1) % shape[axis]
    table = b.const("indices", np.tile(indices.astype(np.int32), (outer, 1)), "int32")
    rows = b.temp(node.name + "_rows", [outer, indices.size, inner], dtype)
    b.op("GATHER", [b.reshaped(node.inputs[0], [outer, shape[axis], inner]), table], [rows])
    b.reshape(rows, node.outputs[0], b.shape(node.outputs[0]))


LOWERINGS = {
    "conv2d": _lower_conv2d,
    "embedding": _lower_embedding,
    "gather": _lower_gather,
    "fully_connected": _lower_fully_connected,
    "rescale": _lower_rescale,
    "add": _lower_add,
    "mul": _lower_mul,
    "matmul": _lower_matmul,
    "max_pool": _lower_max_pool,
    "avg_pool": _lower_avg_pool,
    "mean": _lower_mean,
    "concat": _lower_concat,
    "pad": _lower_pad,
    "reshape": _lower_layout,
    "flatten": _lower_layout,
    "squeeze": _lower_layout,
    "unsqueeze": _lower_layout,
    "transpose": _lower_transpose,
    "lut": _lower_lut,
    "lut_interpolated": _lower_lut_interpolated,
    **VISION_LOWERINGS,
}


def lower_to_tosa(graph: Graph, batch: int = 1) -> TosaProgram:
    """TOSA operators computing exactly what ``graph`` computes, with unknown dimensions set to ``batch``.

    Raises
    ------
    ValidationError
        If ``batch`` is not a positive integer.
    UnsupportedOpError
        For an op (or attribute) TOSA cannot express exactly, naming the node.
    """
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValidationError(f"TOSA export of graph {graph.name!r}: batch must be a positive integer "
                              f"(TOSA shapes are static), found {batch!r}")
    b = _Builder(graph, int(batch))
    for name, info in graph.tensors.items():
        b.tensor(name, b.shape(name), info.dtype)
    for node in graph.nodes:
        lowering = LOWERINGS.get(node.op)
        if lowering is None:
            _unsupported(node, f"no TOSA lowering (exported ops: {', '.join(sorted(LOWERINGS))})")
        b.location = node.name
        lowering(b, node)
    used = {t for o in b.p.operators for t in o.inputs + o.outputs} | set(graph.inputs)
    b.p.tensors = {k: v for k, v in b.p.tensors.items() if k in used and k not in b.p.consts}
    b.p.inputs, b.p.outputs = list(graph.inputs), list(graph.outputs)
    return b.p


def export_tosa(graph: Graph, path, batch: int = 1) -> Path:
    """Write the TOSA program of ``graph`` as one self-contained TOSA flatbuffer (``.tosa``) at ``path``.

    The file is what the TOSA reference model reads (``tools/tosa_run.py`` runs it);
    see :mod:`intsim.export.tosa_fb` for the encoding.

    Raises
    ------
    ValidationError
        If ``path`` is a directory or its parent directory does not exist, or ``batch`` is not positive.
    UnsupportedOpError
        For an op (or attribute) TOSA cannot express exactly, naming the node.
    """
    path = Path(path)
    if path.is_dir() or not path.parent.is_dir():
        raise ValidationError(f"TOSA export of graph {graph.name!r}: expected a file path in an existing "
                              f"directory, found {str(path)!r}")
    return write_tosa(lower_to_tosa(graph, batch), path)
