"""The float graph's multiply-accumulate layers as the PTQ algorithms see them: which nodes are layers,
their weights, biases and per-channel ranges."""

from __future__ import annotations

import math

import numpy as np

from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.passes import fresh_name

MAC_OPS = ("Conv", "Gemm")


# --------------------------------------------------------------------------
# Layers and their weights.
# --------------------------------------------------------------------------


def is_mac(fg: FloatGraph, node: FloatNode) -> bool:
    return node.op in MAC_OPS and all(t in fg.constants for t in node.inputs[1:])


def _is_depthwise(node: FloatNode, weight: np.ndarray) -> bool:
    return node.op == "Conv" and node.attrs["group"] == weight.shape[0] and weight.shape[1] == 1


def equalizable(node: FloatNode, weight: np.ndarray) -> bool:
    """Input channel i of the layer meets output channel i of the one before: a dense layer or a depthwise conv."""
    return node.op == "Gemm" or node.attrs["group"] == 1 or _is_depthwise(node, weight)


def homogeneous_activation(node: FloatNode) -> bool:
    """ReLU, or Clip(0, max): scaled only where the clip does not act (module docstring)."""
    return node.op == "Relu" or (node.op == "Clip" and node.attrs.get("min", -math.inf) == 0.0)


def input_channel_ranges(node: FloatNode, weight: np.ndarray) -> np.ndarray:
    """``max |W|`` over everything that reads input channel i (a depthwise conv: its channel i)."""
    w = np.abs(weight.astype(np.float64))
    if _is_depthwise(node, weight):
        return w.reshape(w.shape[0], -1).max(axis=1)
    return w.max(axis=tuple(a for a in range(w.ndim) if a != 1))


def output_channel_ranges(weight: np.ndarray) -> np.ndarray:
    return np.abs(weight.astype(np.float64)).reshape(weight.shape[0], -1).max(axis=1)


def scale_input_channels(node: FloatNode, weight: np.ndarray, factor: np.ndarray) -> np.ndarray:
    axis = 0 if _is_depthwise(node, weight) else 1
    shape = [1] * weight.ndim
    shape[axis] = -1
    return weight * factor.reshape(shape)


def response_to_constant(node: FloatNode, weight: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Per output channel, what the layer (without bias) adds for an input holding ``value[i]`` on channel i
    everywhere (zero padding ignored, as the white paper does)."""
    w = weight.astype(np.float64)
    if node.op == "Gemm":
        return w @ value
    group = node.attrs["group"]
    m, cg = w.shape[:2]
    per_group = w.sum(axis=(2, 3)).reshape(group, m // group, cg)
    return np.einsum("gmc,gc->gm", per_group, value.reshape(group, cg)).reshape(m)


def layer_bias(fg: FloatGraph, node: FloatNode) -> np.ndarray:
    m = fg.constants[node.inputs[1]].shape[0]
    return fg.constants[node.inputs[2]].astype(np.float64) if len(node.inputs) > 2 else np.zeros(m)


def set_constant(fg: FloatGraph, node: FloatNode, index: int, value: np.ndarray, role: str) -> None:
    """Give ``node`` input ``index`` the float32 ``value``: in place under its name when no other node reads
    it (so reports that look weights up by name find the new ones), under a fresh name otherwise."""
    value = np.asarray(value, np.float32)
    name = node.inputs[index] if index < len(node.inputs) else None
    if name is None or sum(name in n.inputs for n in fg.nodes) > 1:
        name = fresh_name(fg, f"{node.name}/{role}")
        if index < len(node.inputs):
            node.inputs[index] = name
        else:
            node.inputs.append(name)
    fg.constants[name] = value
    fg.shapes[name] = value.shape


def mac_nodes(fg: FloatGraph) -> list[FloatNode]:
    """The Conv and Gemm nodes with constant weights, in graph order: the layers PTQ works on."""
    return [n for n in fg.nodes if is_mac(fg, n)]
