"""Float graph passes run before quantization (white paper §2.3).

Each pass takes a :class:`FloatGraph` and returns a **new** one; the argument
is left as it was.  Nodes are copied, constant arrays are shared (no pass
writes into an array).  :data:`PASSES` is the pipeline :func:`default_passes`
runs, in order.
"""

from __future__ import annotations

import numpy as np

from intsim.floatgraph.edit import copy_graph, drop_unused, fresh_name
from intsim.floatgraph.execute import run_node
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.speech_patterns import sink_squeezes
from intsim.floatgraph.vision_patterns import (
    fold_affine_into_layers,
    fuse_hardswish,
    remove_identities,
)


def fold_batch_norm(graph: FloatGraph) -> FloatGraph:
    """Fold each BatchNormalization into the Conv or Gemm right before it (white paper §2.3.1).

    With ``f = gamma / sqrt(var + eps)`` per output channel, ``W' = W * f`` and
    ``b' = (b - mean) * f + beta`` (``b = 0`` where the layer has no bias),
    computed in float64 and stored as float32 under new constant names (the old
    weights may be shared).  A BatchNormalization stays where its input comes
    from another op, feeds another consumer too, or is a graph output.
    Returns a new graph.
    """
    graph = copy_graph(graph)
    for bn in [n for n in graph.nodes if n.op == "BatchNormalization"]:
        layer = next((n for n in graph.nodes if bn.inputs[0] in n.outputs), None)
        foldable = (
            layer is not None
            and layer.op in ("Conv", "Gemm")
            and len(graph.consumers(bn.inputs[0])) == 1
            and bn.inputs[0] not in graph.outputs
        )
        if not foldable:
            continue
        gamma, beta, mean, var = (graph.constants[t].astype(np.float64) for t in bn.inputs[1:5])
        factor = gamma / np.sqrt(var + bn.attrs["epsilon"])
        weight = graph.constants[layer.inputs[1]].astype(np.float64)
        bias = graph.constants[layer.inputs[2]].astype(np.float64) if len(layer.inputs) > 2 else 0.0
        new_weight = weight * factor.reshape((-1,) + (1,) * (weight.ndim - 1))
        new_bias = (bias - mean) * factor + beta
        weight_name = fresh_name(graph, f"{layer.name}/weight_bn_folded")
        graph.constants[weight_name] = new_weight.astype(np.float32)
        bias_name = fresh_name(graph, f"{layer.name}/bias_bn_folded")
        graph.constants[bias_name] = new_bias.astype(np.float32)
        graph.shapes[weight_name], graph.shapes[bias_name] = new_weight.shape, new_bias.shape
        layer.inputs = [layer.inputs[0], weight_name, bias_name]
        layer.outputs = list(bn.outputs)
        graph.nodes.remove(bn)
    drop_unused(graph)
    return graph


def fold_constants(graph: FloatGraph) -> FloatGraph:
    """Replace each node whose inputs are all constants by the constants it computes.

    Evaluated with :func:`intsim.floatgraph.execute.run_node`.  A node computing a
    graph output stays.  Returns a new graph.
    """
    graph = copy_graph(graph)
    kept: list[FloatNode] = []
    for node in graph.nodes:
        if all(t in graph.constants for t in node.inputs) and not set(node.outputs) & set(graph.outputs):
            values = run_node(node, [graph.constants[t] for t in node.inputs])
            graph.constants.update(zip(node.outputs, values))
        else:
            kept.append(node)
    graph.nodes = kept
    drop_unused(graph)
    return graph


def remove_dead_nodes(graph: FloatGraph) -> FloatGraph:
    """Remove the nodes none of whose outputs reaches a graph output, and the constants
    nothing uses any more.  Returns a new graph."""
    graph = copy_graph(graph)
    needed = set(graph.outputs)
    kept = []
    for node in reversed(graph.nodes):
        if needed & set(node.outputs):
            kept.append(node)
            needed.update(node.inputs)
    graph.nodes = kept[::-1]
    drop_unused(graph)
    return graph


PASSES = (fold_batch_norm, fold_constants, remove_identities, fold_affine_into_layers, fuse_hardswish,
          sink_squeezes, remove_dead_nodes)


def run_passes(graph: FloatGraph, passes) -> FloatGraph:
    """Run ``passes`` (functions graph -> new graph) in order; returns the last one's graph."""
    for graph_pass in passes:
        graph = graph_pass(graph)
    return graph


def default_passes(graph: FloatGraph) -> FloatGraph:
    """Run :data:`PASSES` in order; returns a new graph."""
    return run_passes(graph, PASSES)
