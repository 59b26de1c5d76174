"""Canonical float ops that the real vision models of issue 15 brought in: ConvTranspose, Slice,
ArgMax, ReduceMax, ReduceSum, Tile (and Expand as Tile), and elementwise functions (Pow, Sqrt, Reciprocal, Exp, Erf).  ONNX semantics on NCHW float32 tensors, as
the rest of :mod:`intsim.floatgraph.execute`; data movement keeps the input's dtype.
"""

from __future__ import annotations

import math

import numpy as np

from intsim.floatgraph.execute import register_op


@register_op("ConvTranspose")
def _conv_transpose(attrs, x, weight, bias=None):
    """ONNX ConvTranspose, 2-D: input pixel ``(i, j)`` adds ``x * W[:, :, ki, kj]`` to output pixel
    ``(i * sh - top + ki * dh, j * sw - left + kj * dw)``; ``output_padding`` grows the bottom/right."""
    n, c, h, w = x.shape
    _, m_per_group, kh, kw = weight.shape
    group = attrs["group"]
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    top, left, bottom, right = attrs["pads"]
    out_h = (h - 1) * sh + (kh - 1) * dh + 1 + attrs["output_padding"][0]
    out_w = (w - 1) * sw + (kw - 1) * dw + 1 + attrs["output_padding"][1]
    full = np.zeros((n, group * m_per_group, out_h, out_w))
    xg = x.astype(np.float64).reshape(n, group, c // group, h, w)
    wg = weight.astype(np.float64).reshape(group, c // group, m_per_group, kh, kw)
    for ki in range(kh):
        for kj in range(kw):
            contribution = np.einsum("ngchw,gcm->ngmhw", xg, wg[:, :, :, ki, kj]).reshape(n, -1, h, w)
            full[:, :, ki * dh: ki * dh + (h - 1) * sh + 1: sh, kj * dw: kj * dw + (w - 1) * sw + 1: sw] += contribution
    y = full[:, :, top: out_h - bottom, left: out_w - right]
    if bias is not None:
        y = y + bias.astype(np.float64).reshape(1, -1, 1, 1)
    return y.astype(np.float32)


@register_op("Slice")
def _slice(attrs, x):
    """``x[start:end:step]`` on each axis of ``attrs["axes"]`` (indices already normalised by the importer)."""
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(attrs["axes"], attrs["starts"], attrs["ends"], attrs["steps"]):
        index[axis] = slice(start, None if end < 0 else end, step)
    return x[tuple(index)]


@register_op("Tile")
def _tile(attrs, x):
    return np.tile(x, attrs["repeats"])


@register_op("ArgMax")
def _arg_max(attrs, x):
    axis = attrs["axis"]
    if attrs["select_last_index"]:
        index = x.shape[axis] - 1 - np.argmax(np.flip(x, axis), axis=axis)
    else:
        index = np.argmax(x, axis=axis)
    return np.expand_dims(index, axis).astype(np.int64) if attrs["keepdims"] else index.astype(np.int64)


@register_op("ReduceMax")
def _reduce_max(attrs, x):
    return x.max(axis=tuple(attrs["axes"]), keepdims=bool(attrs["keepdims"]))


@register_op("ReduceSum")
def _reduce_sum(attrs, x):
    total = x.astype(np.float64).sum(axis=tuple(attrs["axes"]), keepdims=bool(attrs["keepdims"]))
    return total.astype(np.float32) if x.dtype.kind == "f" else total.astype(x.dtype)


def _finite(values):
    """Overflowing results (1/0, exp of a large input) as the largest float32, keeping the sign."""
    limit = float(np.finfo(np.float32).max)
    return np.clip(np.nan_to_num(values, nan=0.0, posinf=limit, neginf=-limit), -limit, limit)


def elementwise_functions() -> dict:
    """Float64 functions of the elementwise ops, by canonical op: ``attrs -> (x -> y)``; each is defined
    (finite) for every real input, so it can be tabulated over every code (``Sqrt`` of a negative
    input is 0, ``Reciprocal`` of 0 the largest float32)."""
    erf = np.vectorize(math.erf, otypes=[np.float64])
    with np.errstate(all="ignore"):
        return {
            "Pow": lambda a: lambda x: _finite(np.power(np.where(x == 0, 0.0, x), a["exponent"])),
            "Sqrt": lambda a: lambda x: np.sqrt(np.maximum(x, 0.0)),
            "Reciprocal": lambda a: lambda x: _finite(np.divide(1.0, x, out=np.full_like(x, np.inf),
                                                                where=x != 0)),
            "Exp": lambda a: lambda x: _finite(np.exp(np.minimum(x, 709.0))),
            "Erf": lambda a: erf,
        }


ELEMENTWISE = elementwise_functions()


def _op_of(name):
    fn = ELEMENTWISE[name]

    def run(attrs, x):
        with np.errstate(all="ignore"):
            return fn(attrs)(x.astype(np.float64)).astype(np.float32)

    return run


for _name in ELEMENTWISE:
    register_op(_name)(_op_of(_name))
