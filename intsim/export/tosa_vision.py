"""TOSA lowerings of the integer ops the real vision models brought in (issue 15), merged into
:data:`intsim.export.tosa.LOWERINGS`:

* ``reduce_max`` -> REDUCE_MAX per axis, then a RESHAPE; ``tile`` -> TILE; ``arg_max`` -> ARGMAX
  (first index on ties; ``select_last`` is refused), then a RESHAPE;
* ``slice`` with unit steps -> SLICE (start, size); a strided or reversed slice has no TOSA operator
  and is refused;
* ``insert_zeros`` -> RESHAPE ``[N, H, W, C]`` to ``[N, H, 1, W, 1, C]``, PAD the unit axes with
  ``stride - 1`` codes of the zero point after each element, RESHAPE to ``[N, H sh, W sw, C]`` and
  SLICE off the trailing row and column of padding.  With the ``conv2d`` that follows it in a lowered
  ConvTranspose this is exact; TOSA's TRANSPOSE_CONV2D is not used because intsim's graph keeps the
  two halves as separate nodes (each checked on its own).

Each function takes the exporter's builder and the node, as the lowerings of :mod:`intsim.export.tosa`.
"""

from __future__ import annotations

import numpy as np

from intsim.errors import UnsupportedOpError


def _lower_slice(b, node):
    x, out = node.inputs[0], node.outputs[0]
    shape = b.shape(x)
    starts, ends, steps = (node.attrs[k] for k in ("starts", "ends", "steps"))
    if any(step != 1 for step in steps):
        raise UnsupportedOpError(f"{node.op} {node.name!r}: steps {list(steps)}: TOSA SLICE takes unit steps "
                                 "only; TOSA export does not change a graph silently")
    size = [n - s if e == -1 else e - s for n, s, e in zip(shape, starts, ends)]
    b.op("SLICE", [x, b.const("start", np.array(starts, np.int64), "shape"),
                   b.const("size", np.array(size, np.int64), "shape")], [out])


def _lower_insert_zeros(b, node):
    x, out = node.inputs[0], node.outputs[0]
    n, h, w, c = b.shape(x)
    sh, sw = node.attrs["strides"]
    dtype = b.p.tensors[x][1]
    value = int(node.attrs.get("value", b.graph.tensors[x].zero_point))
    spread = b.reshaped(x, [n, h, 1, w, 1, c])
    padded = b.temp(node.name + "_padded", [n, h, sh, w, sw, c], dtype)
    padding = [0, 0, 0, 0, 0, sh - 1, 0, 0, 0, sw - 1, 0, 0]
    b.op("PAD", [spread, b.const("padding", np.array(padding, np.int64), "shape"),
                 b.const("pad_const", np.array([value], dtype), dtype)], [padded])
    grid = b.reshaped(padded, [n, h * sh, w * sw, c])
    size = [n, (h - 1) * sh + 1, (w - 1) * sw + 1, c]
    b.op("SLICE", [grid, b.const("start", np.zeros(4, np.int64), "shape"),
                   b.const("size", np.array(size, np.int64), "shape")], [out])


def _lower_reduce_max(b, node):
    x = node.inputs[0]
    current, shape = x, b.shape(x)
    for axis in node.attrs["axes"]:
        shape = [1 if i == axis else d for i, d in enumerate(shape)]
        reduced = b.temp(node.name + f"_max{axis}", shape, b.p.tensors[x][1])
        b.op("REDUCE_MAX", [current], [reduced], axis=int(axis), nan_mode="propagate")
        current = reduced
    b.reshape(current, node.outputs[0], b.shape(node.outputs[0]))


def _lower_tile(b, node):
    multiples = b.const("multiples", np.array(node.attrs["repeats"], np.int64), "shape")
    b.op("TILE", [node.inputs[0], multiples], node.outputs)


def _lower_arg_max(b, node):
    if node.attrs.get("select_last", False):
        raise UnsupportedOpError(f"{node.op} {node.name!r}: TOSA ARGMAX returns the first of equal values, the "
                                 "node the last; TOSA export does not change a graph silently")
    x, axis = node.inputs[0], int(node.attrs["axis"])
    shape = [d for i, d in enumerate(b.shape(x)) if i != axis]
    index = b.temp(node.name + "_index", shape, "int32")
    b.op("ARGMAX", [x], [index], axis=axis, nan_mode="propagate")
    b.reshape(index, node.outputs[0], b.shape(node.outputs[0]))


VISION_LOWERINGS = {"arg_max": _lower_arg_max, "slice": _lower_slice, "insert_zeros": _lower_insert_zeros, "reduce_max": _lower_reduce_max,
                    "tile": _lower_tile}
