"""Lowerings of the float ops the real vision models brought in (issue 15): Slice, ConvTranspose,
ReduceMax, ReduceSum, Pad reflect / edge, Tile, ArgMax and MatMul by a constant on rank > 2.

Each entry of :data:`LOWERINGS` takes the converter's ``_Lowering`` and a ``Step`` (as the
``lower_<op>`` methods of :mod:`intsim.converter.lowering` do) and emits integer nodes.
"""

from __future__ import annotations

import numpy as np

from intsim.errors import UnsupportedOpError
from intsim.graph import Node, TensorInfo

NHWC = (0, 2, 3, 1)
LOWERINGS = {}


def _lowering(op):
    def wrap(fn):
        LOWERINGS[op] = fn
        return fn

    return wrap


@_lowering("Slice")
def lower_slice(low, step):
    """A strided slice of the stored codes, in the input's own layout; quantized like its input."""
    node = step.nodes[0]
    x_name = node.inputs[0]
    perm = low.layout_of(x_name)
    shape = low.fg.shapes[x_name]
    a = node.attrs
    sliced = {axis: (start, end, k) for axis, start, end, k in zip(a["axes"], a["starts"], a["ends"], a["steps"])}
    whole = {axis: (0, -1 if shape[axis] is None else shape[axis], 1) for axis in range(len(shape))}
    starts, ends, steps = zip(*[sliced.get(axis, whole[axis]) for axis in perm])
    low._tied(step, "slice", x_name, perm, {"starts": list(starts), "ends": list(ends), "steps": list(steps)})


def conv_transpose_as_conv(weight: np.ndarray, group: int) -> np.ndarray:
    """The weight [M, C/group, kh, kw] of the stride-1 convolution that, run on the zero-inserted input,
    computes a ConvTranspose of weight [C, M/group, kh, kw]: per group, input and output channels
    swapped and the kernel flipped in both spatial axes."""
    c, m_per_group, kh, kw = weight.shape
    w = weight.reshape(group, c // group, m_per_group, kh, kw)[:, :, :, ::-1, ::-1]
    return np.ascontiguousarray(w.transpose(0, 2, 1, 3, 4).reshape(group * m_per_group, c // group, kh, kw))


@_lowering("ConvTranspose")
def lower_conv_transpose(low, step):
    """ConvTranspose on the MAC datapath: ``insert_zeros`` spreads the input out by the strides (the
    zero point in between), then a ``conv2d`` with the flipped, transposed kernel and pads
    ``d (k - 1) - pad`` (plus ``output_padding`` at the bottom and right) computes it with the
    profile's accumulator and requantization, as every convolution."""
    node = step.nodes[0]
    a = node.attrs
    weight = low.fg.constants[node.inputs[1]]
    bias = low.fg.constants[node.inputs[2]] if len(node.inputs) > 2 else None
    kh, kw = weight.shape[2:]
    (dh, dw), (sh, sw) = a["dilations"], a["strides"]
    top, left, bottom, right = a["pads"]
    pads = [dh * (kh - 1) - top, dw * (kw - 1) - left, dh * (kh - 1) - bottom + a["output_padding"][0],
            dw * (kw - 1) - right + a["output_padding"][1]]
    if min(pads) < 0:
        raise UnsupportedOpError(f"node {node.name!r}: ConvTranspose pads {a['pads']} larger than the dilated "
                                 f"kernel's reach are not lowered")
    x_name = node.inputs[0]
    if (sh, sw) != (1, 1):
        x = low.tensors[low.need(x_name, NHWC)]
        n, c, h, w = low.fg.shapes[x_name]
        spread = f"{x_name}/zeros_inserted"
        low.fg.shapes[spread] = (n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
        name = low.new_tensor(spread, spread, NHWC, x.scale, x.zero_point)
        low.nodes.append(Node("insert_zeros", f"{node.name}/insert_zeros", [x.name], [name],
                              {"strides": [sh, sw], "value": int(x.zero_point)}))
        low.env[spread] = (name, NHWC)
        low.variants[(spread, NHWC)] = name
        x_name = spread
    attrs = {"strides": [1, 1], "dilations": [dh, dw], "pads": pads, "groups": int(a["group"])}
    low._mac(step, "conv2d", x_name, NHWC, conv_transpose_as_conv(weight, a["group"]), bias, attrs, NHWC,
             source=False)


def _alias(low, float_name, shape, perm, source, op, attrs, node_name):
    """An integer tensor quantized like ``source`` holding a reshaped view of it, known to the lowering as
    the pseudo float tensor ``float_name`` (no float graph tensor: the reports do not read it)."""
    low.fg.shapes[float_name] = shape
    info = low.tensors[source]
    name = low.new_tensor(float_name, float_name, perm, info.scale, info.zero_point)
    low.nodes.append(Node(op, node_name, [source], [name], attrs))
    low.env[float_name] = (name, perm)
    low.variants[(float_name, perm)] = name
    return name


def lower_matmul_rows(low, step):
    """``x @ W`` for ``x`` of rank > 2 and a constant 2-D ``W``: the rows of ``x`` (every axis but the
    last) through one ``fully_connected``, between two reshapes."""
    node = step.nodes[0]
    x_name, w_name = node.inputs
    shape, out_shape = low.fg.shapes[x_name], low.fg.shapes[step.output]
    rank = len(shape)
    x = low.need(x_name, tuple(range(rank)))
    rows = None if None in shape[:-1] else int(np.prod(shape[:-1]))
    flat = _alias(low, f"{x_name}/rows", (rows, shape[-1]), (0, 1), x, "reshape", {"shape": [-1, shape[-1]]},
                  f"{node.name}/rows")
    product = f"{step.output}/rows"
    low.fg.shapes[product] = (rows, out_shape[-1])
    low.qparams[product] = low.qparams[step.output]
    low._mac(type(step)(step.kind, step.nodes, product, step.clamp), "fully_connected", flat, (0, 1),
             low.fg.constants[w_name].T, None, {}, (0, 1), transposed=True)
    del low.meta["quantized"][product]
    target = [-1 if d is None else d for d in out_shape[:-1]] + [out_shape[-1]]
    y = low.env.pop(product)[0]
    info = low.tensors[y]
    out = low.bind(step.output, tuple(range(rank)), info.scale, info.zero_point)
    low.nodes.append(Node("reshape", f"{node.name}/unflatten", [y], [out], {"shape": target}))


LOWERINGS["ReduceSum"] = lambda low, step: low.lower_ReduceMean(step, average=False)


@_lowering("ReduceMax")
def lower_reduce_max(low, step):
    """The largest code over the axes, in the input's own layout; quantized like its input."""
    node = step.nodes[0]
    x_name = node.inputs[0]
    perm = low.layout_of(x_name)
    axes = sorted(list(perm).index(a) for a in node.attrs["axes"])
    keepdims = bool(node.attrs["keepdims"])
    kept = [p for p in perm if keepdims or p not in node.attrs["axes"]]
    out_perm = tuple(sorted(kept).index(p) for p in kept)
    low._tied(step, "reduce_max", x_name, perm, {"axes": axes, "keepdims": keepdims}, out_perm=out_perm)


@_lowering("PadMode")
def lower_pad_reflect_edge(low, step):
    """Pad ``reflect`` or ``edge``: copies of the input's own codes, in its own layout."""
    node = step.nodes[0]
    x_name = node.inputs[0]
    perm = low.layout_of(x_name)
    pads, rank = node.attrs["pads"], len(perm)
    attrs = {"pads_before": [pads[p] for p in perm], "pads_after": [pads[rank + p] for p in perm],
             "reflect": node.attrs["mode"] == "reflect"}
    low._tied(step, "pad_reflect_edge", x_name, perm, attrs)


@_lowering("Tile")
def lower_tile(low, step):
    """Tile (and Expand) of the stored codes, in the input's own layout."""
    node = step.nodes[0]
    perm = low.layout_of(node.inputs[0])
    low._tied(step, "tile", node.inputs[0], perm, {"repeats": [node.attrs["repeats"][p] for p in perm]})


@_lowering("ArgMax")
def lower_arg_max(low, step):
    """ArgMax of the stored codes (codes order like their reals): an int32 tensor of indices, scale 1."""
    node = step.nodes[0]
    x_name = node.inputs[0]
    rank = len(low.fg.shapes[x_name])
    # The input in the float layout, so that the int32 indices need no transpose of their own.
    x = low.tensors[low.need(x_name, tuple(range(rank)))]
    axis, keepdims = node.attrs["axis"], bool(node.attrs["keepdims"])
    y = low.bind(step.output, tuple(range(rank if keepdims else rank - 1)), 1.0, 0)
    low.tensors[y] = TensorInfo(y, "int32", low.tensors[y].shape, 1.0, 0)
    attrs = {"axis": axis, "keepdims": keepdims, "select_last": bool(node.attrs["select_last_index"])}
    low.nodes.append(Node("arg_max", node.name, [x.name], [y], attrs))
