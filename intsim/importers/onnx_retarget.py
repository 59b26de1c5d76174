"""Run an onnxruntime-lowered graph under another chip profile: same scales and zero points, the chip's arithmetic.

The QDQ and QOperator importers lower a model as onnxruntime runs it: every
requantization rounds ``float32_rint``, QLinearAdd / QLinearMul / average
pooling are onnxruntime's float32 kernels, and unfused groups are float
islands.  :func:`retarget` rebuilds each node for ``profile`` from the real
multipliers those nodes carry and the tensors' scales (white paper §2.3,
eq. 2.9: ``M = s_x s_w / s_y``), with the profile's rounding and multiplier
width; accumulator width and overflow policy come with the profile itself.
Lookup tables stay the file's (a table is what the chip stores).  What the
chip cannot express raises :class:`~intsim.errors.UnsupportedOpError` naming
the node, never a silent change.
"""

from __future__ import annotations

import numpy as np

from intsim.errors import UnsupportedOpError
from intsim.fixedpoint import Rescale
from intsim.converter.params import add_params
from intsim.graph import Graph, Node
from intsim.profiles import get_profile

_REQUANTIZING = ("conv2d", "fully_connected", "matmul", "mean", "concat")
_FLOAT_ISLANDS = ("conv2d_float32", "add_float32", "gemm_float32", "global_avg_pool_float32",
                  "avg_pool_float32_island")
_RETARGETS = {}


def _retargets(op):
    def wrap(fn):
        _RETARGETS[op] = fn
        return fn

    return wrap


def retarget(graph: Graph, profile) -> Graph:
    """``graph`` (lowered for onnxruntime) rebuilt for ``profile``.

    Parameters
    ----------
    graph : Graph
        A graph from :func:`intsim.importers.onnx_qdq.load_onnx_qdq` or
        :func:`intsim.importers.onnx_qop.load_onnx_qoperator`.
    profile : str, Path or Profile

    Raises
    ------
    UnsupportedOpError
        A float island (the chip has no float datapath), or a tensor wider than
        the profile's ``activation_bits``; names the node.
    """
    profile = get_profile(profile)
    producers = {out: node for node in graph.nodes for out in node.outputs}
    for name, info in graph.tensors.items():
        bits = np.dtype(info.dtype).itemsize * 8
        if bits > profile.activation_bits:
            node = producers.get(name)
            where = f"{node.op} {node.name!r}" if node is not None else f"input {name!r}"
            raise UnsupportedOpError(f"{where}: tensor {name!r} holds {info.dtype} codes, profile {profile.name!r} "
                                     f"has {profile.activation_bits}-bit activations")
    nodes = []
    for node in graph.nodes:
        if node.op in _FLOAT_ISLANDS:
            raise UnsupportedOpError(f"{node.op} {node.name!r}: onnxruntime runs this group in float32 (a float "
                                     f"island); profile {profile.name!r} has no float datapath")
        rebuild = _RETARGETS.get(node.op)
        nodes.append(rebuild(graph, node, profile) if rebuild is not None else node)
    metadata = dict(graph.metadata, retargeted_from=graph.profile.name)
    return Graph(graph.name, profile, graph.tensors, nodes, graph.inputs, graph.outputs, metadata)


def _requantizing(graph, node, profile):
    """The node's real multipliers (its float ``scale`` parameter) under the profile's rounding."""
    attrs = {k: v for k, v in node.attrs.items() if k not in ("rounding", "pairwise_int16")}
    params = {k: v for k, v in node.params.items() if k not in ("multiplier", "shift", "scale")}
    params.update(Rescale.from_real(node.params["scale"], profile.rounding, profile.multiplier_bits).params())
    return Node(node.op, node.name, node.inputs, node.outputs, attrs, params)


for _op in _REQUANTIZING:
    _retargets(_op)(_requantizing)


@_retargets("add_float32_fma")
def _add(graph, node, profile):
    a, b, y = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
    params, left_shift = add_params(a.scale, b.scale, y.scale, profile, profile.activation_bits)
    return Node("add", node.name, node.inputs, node.outputs, {"left_shift": left_shift}, params)


@_retargets("mul_float32")
def _mul(graph, node, profile):
    a, b, y = (graph.tensors[t] for t in (*node.inputs, node.outputs[0]))
    real = np.array([np.float64(a.scale) * b.scale / y.scale])
    return Node("mul", node.name, node.inputs, node.outputs, {},
                Rescale.from_real(real, profile.rounding, profile.multiplier_bits).params())


@_retargets("avg_pool_float32")
def _avg_pool(graph, node, profile):
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    if not x.same_quantization(y):
        raise UnsupportedOpError(f"avg_pool_float32 {node.name!r}: input and output quantized differently "
                                 f"({x.scale}, {x.zero_point} vs {y.scale}, {y.zero_point}); profile "
                                 f"{profile.name!r} averages codes without requantizing")
    attrs = {k: node.attrs[k] for k in ("kernel", "strides", "pads", "count_include_pad") if k in node.attrs}
    return Node("avg_pool", node.name, node.inputs, node.outputs, attrs, {})
