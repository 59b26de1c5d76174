"""Lowering of the ops of sequence models (BERT-style encoders) to integer nodes, registered by float op
type in :data:`SEQUENCE_LOWERINGS` (each ``lower(lowering, step)`` with the converter's
``_Lowering``), and the choice of 16-bit tensors a profile's ``layernorm = "int16"`` makes.

- ``Gather`` from a constant table (an embedding) stores the table as codes of the activation format
  (per tensor, its own min/max range) and looks rows up by the int32 token ids; from an activation with
  constant indices it is a data-movement op, with indices computed from an integer input
  ``gather_indexed``.
- ``LayerNormalization`` becomes the integer-only ``layernorm`` (:mod:`intsim.kernels.sequence`): mean and
  variance in integers, the square root by Newton's iteration, ``gamma`` folded into per-channel
  requantization multipliers and ``beta`` into an int32 bias in the units of the normalized value.
  With ``layernorm = "int16"`` the tensors feeding it are 16-bit (a residual stream's outliers keep
  their resolution); ``"integer"`` keeps them at the profile's width; ``"none"`` (a chip without it)
  makes a LayerNormalization an :class:`~intsim.errors.UnsupportedOpError`.
- ``GatherElements`` with constant indices moves codes (op ``gather_elements``).
- ``Gelu`` is a lookup table over the input codes (256 entries at 8 bits, 65,536 at 16, or 513 interpolated
  under the profile's ``int16_tables = "interpolated"``).
- ``MaskedSoftmax`` is the integer softmax over the kept positions of an integer input or of a constant
  mask (stored as an int32 ``constant`` node).
"""

from __future__ import annotations

import numpy as np

from intsim.converter.quantizer import quantization_params
from intsim.errors import UnsupportedOpError
from intsim.fixedpoint import INTEGER_ROUNDING_MODES
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.sequence_ops import gelu
from intsim.graph import Node
from intsim.kernels.sequence import NORMALIZED_BITS

SEQUENCE_LOWERINGS = {}
# Elementwise functions lowered as tables (merged into the converter's table of unary functions).
SEQUENCE_UNARY = {"Gelu": lambda attrs: lambda x: gelu(x, attrs.get("approximate", "none"))}
INDEX_DTYPE = "int32"
WIDE_BITS = 16


def _lowers(kind):
    def wrap(fn):
        SEQUENCE_LOWERINGS[kind] = fn
        return fn

    return wrap


def _identity(rank):
    return tuple(range(rank))


def tensor_dtypes(fg: FloatGraph, profile) -> dict[str, str]:
    """Float tensors stored in a dtype other than the profile's activation dtype: the integer inputs
    (int32), and under ``layernorm = "int16"`` the residual stream into every LayerNormalization (int16):
    the Add (or Sub) that feeds it and the linear layers whose outputs that Add joins."""
    dtypes = {t: INDEX_DTYPE for t in fg.integer_inputs}
    if profile.layernorm == "int16":
        signed = "int16" if profile.activation_signed else "uint16"
        producers = {t: n for n in fg.nodes for t in n.outputs}
        for node in fg.nodes:
            join = producers.get(node.inputs[0]) if node.op == "LayerNormalization" else None
            if join is None or join.op not in ("Add", "Sub"):
                continue
            dtypes[join.outputs[0]] = signed
            for operand in join.inputs:
                layer = _linear_producer(producers, operand)
                if layer is not None:
                    dtypes[layer.outputs[0]] = signed
    return dtypes


def _linear_producer(producers: dict, tensor: str):
    """The Gemm / MatMul / Conv ``tensor`` comes from through Reshape / Transpose only, else None."""
    node = producers.get(tensor)
    while node is not None and node.op in ("Reshape", "Transpose"):
        node = producers.get(node.inputs[0])
    return node if node is not None and node.op in ("Gemm", "MatMul", "Conv") else None


def widen(qparams: dict, dtypes: dict, profile) -> dict:
    """``qparams`` with each 16-bit tensor's scale and zero point recomputed over the same real range."""
    p, wide = profile, dict(qparams)
    for t, dtype in dtypes.items():
        if dtype.endswith("16") and t in qparams:
            scale, zp = qparams[t]
            lo, hi = (scale * (c - zp) for c in p.activation_range())
            scale, zp = quantization_params(lo, hi, WIDE_BITS, p.activation_signed, p.activation_symmetric,
                                            power_of_two=p.power_of_two_scales)
            wide[t] = (float(scale), int(zp))
    return wide


def variance_shift(width: int, lo: int, hi: int) -> int:
    """The smallest right shift of the centred values that keeps the variance sum of ``width`` codes in
    ``[lo, hi]`` below 2**62 (see :mod:`intsim.kernels.sequence`)."""
    worst, shift = 2 * width * (hi - lo), 0
    while width * (worst >> shift) ** 2 >= 2**62:
        shift += 1
    return shift


@_lowers("Gather")
def lower_gather(lw, step):
    node = step.nodes[0]
    data, indices = node.inputs
    out_rank = len(lw.fg.shapes[step.output])
    if data not in lw.fg.constants:
        if indices not in lw.fg.constants:
            _lower_indexed_gather(lw, step, out_rank)
            return
        lw._tied(step, "gather", data, _identity(len(lw.fg.shapes[data])), {"axis": int(node.attrs["axis"])},
                 out_perm=_identity(out_rank), params={"indices": lw.fg.constants[indices].astype(np.int64)})
        return
    ids = lw.need(indices, _identity(len(lw.fg.shapes[indices])))
    if lw.tensors[ids].dtype != INDEX_DTYPE:
        raise UnsupportedOpError(f"node {node.name!r}: embedding indices {indices!r} must come from an integer "
                                 f"graph input, found a {lw.tensors[ids].dtype} tensor")
    table = lw.fg.constants[data]
    codes, scale, zp = lw.constant_codes(table, 2, (0, 1))
    y = lw.bind(step.output, _identity(out_rank), scale, zp)
    lw.nodes.append(Node("embedding", node.name, [ids], [y], {}, {"table": np.ascontiguousarray(codes)}))
    lw.meta["weight_scale"][node.name] = [float(scale)]


def _lower_indexed_gather(lw, step, out_rank):
    """An activation gathered by indices computed from an integer input (op ``gather_indexed``)."""
    node = step.nodes[0]
    data, indices = node.inputs
    ids = lw.need(indices, _identity(len(lw.fg.shapes[indices])))
    if lw.tensors[ids].dtype != INDEX_DTYPE:
        raise UnsupportedOpError(f"node {node.name!r}: Gather indices {indices!r} computed at run time must be "
                                 f"integers (an integer graph input or an ArgMax), found a {lw.tensors[ids].dtype} tensor")
    x = lw.tensors[lw.need(data, _identity(len(lw.fg.shapes[data])))]
    y = lw.bind(step.output, _identity(out_rank), x.scale, x.zero_point, fmt=lw.format_of[x.name],
                dtype=x.dtype if x.name in lw.fixed else None)
    lw.nodes.append(Node("gather_indexed", node.name, [x.name, ids], [y], {"axis": int(node.attrs["axis"])}))


@_lowers("GatherElements")
def lower_gather_elements(lw, step):
    node = step.nodes[0]
    data, indices = node.inputs
    rank = len(lw.fg.shapes[data])
    lw._tied(step, "gather_elements", data, _identity(rank), {"axis": int(node.attrs["axis"])},
             params={"indices": lw.fg.constants[indices].astype(np.int64)})


@_lowers("LayerNormalization")
def lower_layer_norm(lw, step):
    p, node = lw.profile, step.nodes[0]
    if p.layernorm == "none":
        raise UnsupportedOpError(f"node {node.name!r}: profile {p.name!r} has no integer layer normalization "
                                 "(layernorm = \"none\"); choose a profile with layernorm = \"integer\" or \"int16\"")
    if p.rounding not in INTEGER_ROUNDING_MODES:
        raise UnsupportedOpError(f"node {node.name!r}: integer layer normalization needs an integer rounding mode; "
                                 f"profile {p.name!r} rounds {p.rounding!r}")
    rank = len(lw.fg.shapes[node.inputs[0]])
    x = lw.tensors[lw.need(node.inputs[0], _identity(rank))]
    gamma, beta = (lw.fg.constants[t].astype(np.float64) for t in node.inputs[1:3])
    width = gamma.size
    lo, hi = _code_range(x)
    shift = variance_shift(width, lo, hi)
    eps_term = min(2**62, int(round(width**3 * node.attrs["epsilon"] / (x.scale**2 * 4.0**shift))))
    magnitude = np.where(gamma != 0, np.abs(gamma), 1.0)
    bias = np.rint(beta * 2.0**NORMALIZED_BITS / magnitude)
    bias_int = np.clip(bias, -(2**31), 2**31 - 1)
    scale, zp = lw.out_params(step.output)
    real = magnitude * 2.0**-NORMALIZED_BITS / scale
    y = lw.bind(step.output, _identity(rank), scale, zp)
    attrs = {"variance_shift": shift, "eps_term": eps_term,
             "clamp": lw.clamp_codes(scale, zp, step.clamp, step.output)}
    params = {"gamma_sign": np.sign(gamma).astype(np.int8), "bias": bias_int.astype(np.int32), **lw.rescale(real)}
    lw.nodes.append(Node("layernorm", node.name, [x.name], [y], attrs, params))
    lw.meta["real_multiplier"][node.name] = real.tolist()
    lw.meta["bias_overflow"][node.name] = int(np.sum(bias != bias_int))


def _code_range(info) -> tuple[int, int]:
    info_dtype = np.iinfo(info.np_dtype)
    return int(info_dtype.min), int(info_dtype.max)


@_lowers("MaskedSoftmax")
def lower_masked_softmax(lw, step):
    node = step.nodes[0]
    x, mask = node.inputs
    rank = len(lw.fg.shapes[x])
    softmax = FloatNode("Softmax", node.name, [x], list(node.outputs), {"axis": rank - 1})
    lw.lower_Softmax(type(step)("Softmax", [softmax], step.output))
    emitted = lw.nodes[-1]
    emitted.op = "masked_softmax"
    if mask in lw.fg.constants:  # a constant mask (Where with a constant condition)
        value = lw.fg.constants[mask].astype(np.int32)
        keep = lw.new_tensor(f"{node.name}/keep", mask, _identity(value.ndim), 1.0, 0, shape=value.shape,
                             dtype=INDEX_DTYPE)
        lw.nodes.insert(len(lw.nodes) - 1, Node("constant", f"{keep}/constant", [], [keep], {}, {"value": value}))
        emitted.inputs.append(keep)
    else:
        emitted.inputs.append(lw.need(mask, _identity(len(lw.fg.shapes[mask]))))
    emitted.attrs["mask_axes"] = list(node.attrs["mask_axes"])

