"""The ONNX ops the real vision models of issue 15 brought in, and the upgrade of opsets below 11.

Canonical forms added to those of :mod:`intsim.importers.onnx` (NCHW, attributes plain Python values):

=====================  =========================================================
op                     inputs; attributes
=====================  =========================================================
ConvTranspose          x, W[, B] (W [C, M/group, kh, kw] and B constants);
                       strides, dilations, pads [top, left, bottom, right],
                       output_padding [h, w], group
Slice                  x; axes, starts, ends, steps (one entry per sliced
                       axis, indices clamped to the axis as ONNX does; an end
                       of -1 under a negative step means "through index 0")
Pow                    x; exponent (a float: the exponent must be a constant)
ArgMax                 x; axis, keepdims, select_last_index
Tile                   x; repeats (one per axis; Expand of an activation becomes
                       a Tile of its size-1 axes)
Sqrt, Reciprocal,      x
Exp, Erf
=====================  =========================================================

``Split`` becomes one ``Slice`` per output (several outputs, each its own tensor).  A model whose
default-domain opset is below 11 is upgraded with ``onnx.version_converter`` first.
"""

from __future__ import annotations

import numpy as np

from intsim import onnxproto
from intsim.errors import UnsupportedOpError

from intsim.importers.onnx_ops import MULTI_OUTPUT, axes_of, register_convert, register_fold

FIRST_OPSET = 11
_INT64_MAX = 2**63 - 1


def upgrade_opset(model: onnxproto.ModelProto) -> onnxproto.ModelProto:
    """The model itself when its default-domain opset is 11 or later, else a copy upgraded to opset 11
    by ``onnx.version_converter`` (an op it cannot upgrade is an :class:`UnsupportedOpError`)."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions or versions[0] >= FIRST_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, FIRST_OPSET)
    except Exception as exc:  # the converter raises RuntimeError, ValueError or its C++ errors
        raise UnsupportedOpError(f"model {model.graph.name!r}: opset {versions[0]} could not be upgraded to "
                                 f"{FIRST_OPSET} by onnx.version_converter ({type(exc).__name__}: {exc})") from None


@register_convert("ConvTranspose")
def _conv_transpose(node):
    weight = node.const(1, "weight")
    if weight.ndim != 4:
        raise node.fail(f"only 2-D transposed convolutions are supported; weight has shape {weight.shape}")
    if node.has(2):
        node.const(2, "bias")
    if "output_shape" in node.attrs:
        raise node.fail("ConvTranspose with output_shape is not supported; give pads and output_padding")
    node.choice("auto_pad", "NOTSET", ("NOTSET", "VALID"))
    group = node.attr("group", 1)
    if not isinstance(group, int) or group < 1 or weight.shape[0] % group or node.shape(0)[1] != weight.shape[0]:
        raise node.invalid(f"group {group!r} must divide the weight's {weight.shape[0]} input channels, which must "
                           f"equal the input's {node.shape(0)[1]}")
    strides, dilations = node.ints("strides", 2, 1, lo=1), node.ints("dilations", 2, 1, lo=1)
    output_padding = node.ints("output_padding", 2, 0, lo=0)
    if any(p >= max(s, d) for p, s, d in zip(output_padding, strides, dilations)):
        raise node.invalid(f"output_padding {output_padding} must be smaller than the stride or the dilation")
    attrs = {"strides": strides, "dilations": dilations, "pads": node.ints("pads", 4, 0, lo=0),
             "output_padding": output_padding, "group": group}
    return [node.make("ConvTranspose", node.inputs, attrs)]


def _clamped(start: int, end: int, step: int, size: int) -> tuple[int, int]:
    """ONNX Slice's start and end on an axis of ``size``: negatives count from the end, then clamped to
    [0, size] (step > 0) or [0, size - 1] and [-1, size - 1] (step < 0)."""
    start = start + size if start < 0 else start
    end = end + size if end < 0 else end
    if step > 0:
        return min(max(start, 0), size), min(max(end, 0), size)
    return min(max(start, 0), size - 1), min(max(end, -1), size - 1)


def _slice_node(node, x_shape, axes, starts, ends, steps, output):
    attrs = {"axes": [], "starts": [], "ends": [], "steps": []}
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise node.invalid(f"steps must not be 0, found {list(steps)}")
        size = x_shape[axis]
        if size is None:
            if (start, step) != (0, 1) or end < _INT64_MAX // 2:
                raise node.fail(f"Slice of the batch axis {axis} is not supported")
            continue
        start, end = _clamped(int(start), int(end), int(step), size)
        for key, value in zip(("axes", "starts", "ends", "steps"), (axis, start, end, int(step))):
            attrs[key].append(value)
    return node.make("Slice", node.inputs[:1], attrs, output=output)


@register_convert("Slice")
def _slice(node):
    shape = node.shape(0)
    if node.opset < 10:
        starts, ends = node.attr("starts"), node.attr("ends")
        axes, steps = node.attr("axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = node.const(1, "starts").tolist(), node.const(2, "ends").tolist()
        axes = node.const(3, "axes").tolist() if node.has(3) else list(range(len(starts)))
        steps = node.const(4, "steps").tolist() if node.has(4) else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise node.invalid(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} must have one length")
    axes = [a + len(shape) if a < 0 else a for a in axes]
    if sorted(axes) != axes_of(node, axes, len(shape)):
        order = sorted(range(len(axes)), key=axes.__getitem__)
        axes, starts, ends, steps = ([v[i] for i in order] for v in (axes, starts, ends, steps))
    return [_slice_node(node, shape, axes, starts, ends, steps, None)]


MULTI_OUTPUT.add("Split")


@register_convert("Split")
def _split(node):
    shape = node.shape(0)
    axis = axes_of(node, [node.attr("axis", 0)], len(shape))[0]
    size = shape[axis]
    if size is None:
        raise node.fail(f"Split of the batch axis {axis} is not supported")
    if node.opset >= 13 and node.has(1):
        sizes = [int(s) for s in node.const(1, "split").tolist()]
    elif node.opset < 13 and "split" in node.attrs:
        sizes = [int(s) for s in node.attr("split")]
    else:
        parts = int(node.attr("num_outputs", len(node.outputs)))
        chunk = -(-size // parts)
        sizes = [min(chunk, size - i * chunk) for i in range(parts)]
    if len(sizes) != len(node.outputs) or sum(sizes) != size or min(sizes) < 0:
        raise node.invalid(f"split sizes {sizes} must be {len(node.outputs)} non-negative sizes adding up to "
                           f"axis {axis}'s {size}")
    nodes, start = [], 0
    for output, length in zip(node.outputs, sizes):
        nodes.append(_slice_node(node, shape, [axis], [start], [start + length], [1], output))
        start += length
    return nodes


@register_convert("Pow")
def _pow(node):
    exponent = node.scalar(1, "exponent", 1.0)
    return [node.make("Pow", node.inputs[:1], {"exponent": exponent})]


@register_convert("Sqrt", "Reciprocal", "Exp", "Erf")
def _elementwise(node):
    return [node.make(node.op, node.inputs[:1])]


register_fold("Expand")(lambda node, x, shape: x * np.ones([int(d) for d in shape], dtype=x.dtype))
register_fold("Tile")(lambda node, x, repeats: np.tile(x, [int(r) for r in repeats]))


def _rearranged(node, split_shape, perm, out_shape):
    """Reshape to ``split_shape``, Transpose by ``perm``, Reshape to ``out_shape`` (0: the batch, copied)."""
    split, moved = node.fresh("split"), node.fresh("moved")
    return [node.make("Reshape", node.inputs[:1], {"shape": split_shape}, output=split),
            node.make("Transpose", [split], {"perm": perm}, output=moved),
            node.make("Reshape", [moved], {"shape": out_shape})]


@register_convert("SpaceToDepth", "DepthToSpace")
def _space_depth(node):
    """SpaceToDepth and DepthToSpace (modes DCR and CRD) as Reshape, Transpose, Reshape (ONNX's own
    definition of both ops)."""
    _, c, h, w = node.shape(0)
    block = node.attr("blocksize")
    if not isinstance(block, int) or block < 1:
        raise node.invalid(f"blocksize must be a positive integer, found {block!r}")
    if node.op == "SpaceToDepth":
        if h % block or w % block:
            raise node.invalid(f"input height {h} and width {w} must be multiples of blocksize {block}")
        return _rearranged(node, [0, c, h // block, block, w // block, block], [0, 3, 5, 1, 2, 4],
                           [0, c * block * block, h // block, w // block])
    if c % (block * block):
        raise node.invalid(f"input channels {c} must be a multiple of blocksize² = {block * block}")
    depth = c // (block * block)
    if node.choice("mode", "DCR", ("DCR", "CRD")) == "DCR":
        split, perm = [0, block, block, depth, h, w], [0, 3, 4, 1, 5, 2]
    else:
        split, perm = [0, depth, block, block, h, w], [0, 1, 4, 2, 5, 3]
    return _rearranged(node, split, perm, [0, depth, h * block, w * block])


def _tile_node(node, repeats):
    if any(r < 1 for r in repeats):
        raise node.invalid(f"repeats {repeats} must be >= 1")
    if node.shape(0)[0] is None and repeats[0] != 1:
        raise node.fail(f"{node.op} along the batch axis is not supported (repeats {repeats})")
    return [node.make("Tile", node.inputs[:1], {"repeats": [int(r) for r in repeats]})]


@register_convert("Tile")
def _tile(node):
    repeats = node.const(1, "repeats").tolist()
    if len(repeats) != node.rank(0):
        raise node.invalid(f"repeats {repeats} must have one value per axis of the input {node.shape(0)}")
    return _tile_node(node, repeats)


@register_convert("Expand")
def _expand(node):
    """Expand of an activation: a Tile of its size-1 axes (a target of higher rank is not supported)."""
    shape, target = node.shape(0), [int(d) for d in node.const(1, "shape").tolist()]
    if len(target) > len(shape):
        raise node.fail(f"Expand to rank {len(target)} of an input of rank {len(shape)} is not supported")
    target = [1] * (len(shape) - len(target)) + target
    repeats = []
    for axis, (have, want) in enumerate(zip(shape, target)):
        if want != 1 and have not in (1, want):
            raise node.invalid(f"shape {target} does not broadcast with the input {shape} at axis {axis}")
        repeats.append(want if have == 1 else 1)
    return _tile_node(node, repeats)


@register_convert("ArgMax")
def _arg_max(node):
    axis = axes_of(node, [node.attr("axis", 0)], node.rank(0))[0]
    attrs = {"axis": axis, "keepdims": int(node.attr("keepdims", 1)),
             "select_last_index": int(node.attr("select_last_index", 0))}
    return [node.make("ArgMax", node.inputs[:1], attrs)]
