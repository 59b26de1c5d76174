"""Float graph rewrites for 1-D convolution stacks (speech models), which the importer writes as
Unsqueeze, 2-D Conv, Squeeze (:mod:`intsim.importers.onnx_speech`).

- :func:`sink_squeezes`: an elementwise activation after a Squeeze moves before it, so it fuses with
  the conv (white paper §2.3: the conv's output is quantized after the ReLU, over its non-negative
  range, instead of over the pre-activation's range and again after it), and an Unsqueeze that undoes
  a Squeeze disappears with it, so consecutive 1-D convs stay 4-D.

It keeps what the graph computes exactly (the moved ops act elementwise) and returns a new graph.
"""

from __future__ import annotations

from intsim.floatgraph import FloatGraph
from intsim.floatgraph.edit import copy_graph, drop_unused, fresh_name

ELEMENTWISE = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish")


def sink_squeezes(graph: FloatGraph) -> FloatGraph:
    """Move elementwise activations from after a Squeeze to before it; drop Squeeze-Unsqueeze pairs
    over the same axes (module docstring).  Returns a new graph."""
    graph = copy_graph(graph)
    changed = True
    while changed:
        changed = _swap_one(graph) or _cancel_one(graph)
    drop_unused(graph)
    return graph


def _sole_reader(graph: FloatGraph, tensor: str):
    readers = [n for n in graph.nodes if tensor in n.inputs]
    return readers[0] if len(readers) == 1 and tensor not in graph.outputs else None


def _swap_one(graph: FloatGraph) -> bool:
    for squeeze in [n for n in graph.nodes if n.op == "Squeeze"]:
        act = _sole_reader(graph, squeeze.outputs[0])
        if act is None or act.op not in ELEMENTWISE or len(act.inputs) != 1:
            continue
        inner = fresh_name(graph, f"{act.outputs[0]}/unsqueezed")
        graph.shapes[inner] = graph.shapes[squeeze.inputs[0]]
        act.inputs, act.outputs, squeeze.inputs, squeeze.outputs = (
            [squeeze.inputs[0]], [inner], [inner], list(act.outputs))
        graph.nodes.remove(act)
        graph.nodes.insert(graph.nodes.index(squeeze), act)
        return True
    return False


def _cancel_one(graph: FloatGraph) -> bool:
    for squeeze in [n for n in graph.nodes if n.op == "Squeeze"]:
        unsqueeze = _sole_reader(graph, squeeze.outputs[0])
        if unsqueeze is None or unsqueeze.op != "Unsqueeze" or unsqueeze.attrs["axes"] != squeeze.attrs["axes"]:
            continue
        if unsqueeze.outputs[0] in graph.outputs:
            continue
        source, target = squeeze.inputs[0], unsqueeze.outputs[0]
        for node in graph.nodes:
            node.inputs = [source if t == target else t for t in node.inputs]
        graph.nodes.remove(squeeze)
        graph.nodes.remove(unsqueeze)
        return True
    return False
