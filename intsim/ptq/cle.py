"""Cross-layer equalization and bias absorption (white paper §3.2).

ReLU6 is not positively homogeneous: ``min(relu(x / s), 6) != min(relu(x), 6) / s``. The data-free
quantization paper that §3.2 follows replaces it by a ReLU; that changes what the model computes
wherever the clip acts (on EfficientNet-Lite0 it drops float top-1 agreement to 24%).  Here the
Clip(0, hi) stays, and its channels are scaled only where that changes nothing on the calibration
data: a channel whose pre-activation reaches ``hi`` keeps ``s_i = 1``; any other, with calibration
maximum ``m_i < hi``, takes ``s_i >= m_i / hi``.  Without data the maximum is ``beta + 6 gamma`` of the
batch norm, if any, else the pair's channels are not scaled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.passes import copy_graph

from intsim.ptq.bias_correction import activation_bounds
from intsim.ptq.layers import (
    layer_bias,
    equalizable,
    homogeneous_activation,
    input_channel_ranges,
    is_mac,
    output_channel_ranges,
    response_to_constant,
    scale_input_channels,
    set_constant,
    mac_nodes,
)


# --------------------------------------------------------------------------
# Cross-layer equalization and bias absorption (white paper §3.2).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """Two layers joined by an activation (or none): ``second`` reads only what ``first`` computes."""

    first: str
    activation: str | None
    second: str


def equalization_pairs(fg: FloatGraph) -> list[Pair]:
    """The layer pairs cross-layer equalization rescales (white paper §3.2).

    ``first`` is a Conv (dense or depthwise) or Gemm whose output, after at
    most a ReLU or a Clip(0, max), feeds ``second`` alone and is no graph
    output; ``second`` is a dense or depthwise Conv or a Gemm.  A depthwise
    conv can be ``second`` of one pair and ``first`` of the next (the paper's
    conv -> depthwise -> conv triplet).
    """
    consumers: dict[str, list[FloatNode]] = {}
    for node in fg.nodes:
        for t in node.inputs:
            consumers.setdefault(t, []).append(node)
    pairs = []
    for first in mac_nodes(fg):
        if not equalizable(first, fg.constants[first.inputs[1]]):
            continue
        tensor, activation = first.outputs[0], None
        users = consumers.get(tensor, [])
        if len(users) == 1 and tensor not in fg.outputs and users[0].op in ("Relu", "Clip"):
            if not homogeneous_activation(users[0]):
                continue
            activation = users[0]
            tensor = activation.outputs[0]
            users = consumers.get(tensor, [])
        if len(users) != 1 or tensor in fg.outputs or first.outputs[0] in fg.outputs:
            continue
        second = users[0]
        if not (is_mac(fg, second) and second.inputs[0] == tensor and second.op == first.op
                and equalizable(second, fg.constants[second.inputs[1]])):
            continue
        pairs.append(Pair(first.name, activation.name if activation else None, second.name))
    return pairs


def clips(nodes: Mapping[str, FloatNode], pair: Pair) -> bool:
    """The pair's activation has an upper clip (a ReLU6)."""
    return pair.activation is not None and math.isfinite(activation_bounds(nodes[pair.activation])[1])


def cross_layer_equalization(fg: FloatGraph, *, clip_maxima: Mapping[str, np.ndarray] | None = None,
                             tolerance: float = 1e-8,
                             max_sweeps: int = 1000) -> tuple[FloatGraph, dict[str, np.ndarray], list[Pair]]:
    """Cross-layer equalization (CLE, white paper §3.2).

    For each pair ``W1 -> f -> W2`` (:func:`equalization_pairs`) with ``f``
    positively homogeneous, ``W1[i] /= s_i``, ``b1[i] /= s_i`` and ``W2[:, i]
    *= s_i`` with ``s_i = sqrt(r1_i / r2_i)``, where ``r1_i = max |W1[i]|`` and
    ``r2_i = max |W2[:, i]|``: both ranges become ``sqrt(r1_i r2_i)``, the
    paper's optimum.  Pairs that share a layer (conv -> depthwise -> conv) are
    swept until every scale of a sweep is within ``tolerance`` of 1.

    A Clip(0, hi) inside a pair stays; ``clip_maxima`` gives the per-channel
    maximum of its input (the first layer's output, before equalization):
    channels that reach ``hi`` are not scaled, the others only so far that
    their maximum stays below ``hi`` (module docstring).  Pairs with a clip
    and no maxima are not scaled.

    Returns
    -------
    graph : FloatGraph
        A new graph.
    scales : dict
        ``{first layer's output tensor: S}``: its channel i now holds the
        original's divided by ``S_i`` (the product over all sweeps).
    pairs : list of Pair
    """
    fg = copy_graph(fg)
    nodes = {n.name: n for n in fg.nodes}
    pairs = equalization_pairs(fg)
    weights = {name: fg.constants[nodes[name].inputs[1]].astype(np.float64)
               for p in pairs for name in (p.first, p.second)}
    biases = {name: layer_bias(fg, nodes[name]) for name in weights}
    scales = {p.first: np.ones(weights[p.first].shape[0]) for p in pairs}
    clip_maxima = clip_maxima or {}
    for _ in range(max_sweeps):
        largest = 0.0
        for p in pairs:
            second = nodes[p.second]
            r1 = output_channel_ranges(weights[p.first])
            r2 = input_channel_ranges(second, weights[p.second])
            live = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[live] = np.sqrt(r1[live] / r2[live])
            if clips(nodes, p):
                hi = activation_bounds(nodes[p.activation])[1]
                maximum = clip_maxima.get(nodes[p.first].outputs[0])
                if maximum is None:
                    s[:] = 1.0
                else:
                    s = np.where(maximum >= hi, 1.0, np.maximum(s, maximum / scales[p.first] / hi))
            weights[p.first] = weights[p.first] / s.reshape((-1,) + (1,) * (weights[p.first].ndim - 1))
            biases[p.first] = biases[p.first] / s
            weights[p.second] = scale_input_channels(second, weights[p.second], s)
            scales[p.first] = scales[p.first] * s
            largest = max(largest, float(np.max(np.abs(s - 1.0))))
        if largest <= tolerance:
            break
    for name, weight in weights.items():
        set_constant(fg, nodes[name], 1, weight, "weight_equalized")
        set_constant(fg, nodes[name], 2, biases[name], "bias_equalized")
    return fg, {nodes[p.first].outputs[0]: scales[p.first] for p in pairs}, pairs


def absorb_biases(fg: FloatGraph, stats: Mapping[str, tuple[np.ndarray, np.ndarray]], pairs: list[Pair],
                  n_sigma: float = 3.0) -> tuple[FloatGraph, dict, dict[str, np.ndarray]]:
    """Bias absorption (white paper §3.2).

    For each pair ``W1 -> ReLU -> W2`` (a ReLU6 is left alone: ``c`` would move
    its clip per channel) whose pre-activation has per-channel
    mean ``beta`` and standard deviation ``gamma`` in ``stats``, ``c =
    max(0, beta - n_sigma gamma)`` leaves layer 1's bias and enters layer 2's:
    ``b1 -= c``, ``b2 += W2 c``.  Exact wherever the ReLU input is at least
    ``c`` and, for a padded conv, away from the border (its padding adds zeros,
    not ``c``).

    Returns
    -------
    graph : FloatGraph
        A new graph.
    stats : dict
        ``stats`` with each absorbed pre-activation mean lowered by ``c``.
    absorbed : dict
        ``{first layer of a pair: c}`` for the pairs that moved a bias.
    """
    fg = copy_graph(fg)
    stats = dict(stats)
    absorbed = {}
    nodes = {n.name: n for n in fg.nodes}
    for p in pairs:
        first, second = nodes[p.first], nodes[p.second]
        tensor = first.outputs[0]
        if p.activation is None or clips(nodes, p) or tensor not in stats:
            continue
        mean, std = stats[tensor]
        c = np.maximum(0.0, mean - n_sigma * std)
        w2 = fg.constants[second.inputs[1]]
        set_constant(fg, first, 2, layer_bias(fg, first) - c, "bias_absorbed")
        set_constant(fg, second, 2, layer_bias(fg, second) + response_to_constant(second, w2, c), "bias_absorbed")
        stats[tensor] = (mean - c, std)
        absorbed[p.first] = c
    return fg, stats, absorbed
