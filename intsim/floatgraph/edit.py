"""Editing a float graph: copies, fresh tensor names, forgetting what no node uses any more."""

from __future__ import annotations

from dataclasses import replace

from intsim.floatgraph import FloatGraph


def copy_graph(graph: FloatGraph) -> FloatGraph:
    nodes = [replace(n, inputs=list(n.inputs), outputs=list(n.outputs), attrs=dict(n.attrs)) for n in graph.nodes]
    return replace(
        graph,
        nodes=nodes,
        inputs=list(graph.inputs),
        outputs=list(graph.outputs),
        constants=dict(graph.constants),
        shapes=dict(graph.shapes),
    )


def drop_unused(graph: FloatGraph) -> None:
    """Forget constants and shapes of tensors no node and no graph output refers to (in place)."""
    used = set(graph.inputs) | set(graph.outputs) | {t for n in graph.nodes for t in (*n.inputs, *n.outputs)}
    graph.constants = {k: v for k, v in graph.constants.items() if k in used}
    graph.shapes = {k: v for k, v in graph.shapes.items() if k in used}


def fresh_name(graph: FloatGraph, base: str) -> str:
    taken = set(graph.constants) | set(graph.shapes) | {t for n in graph.nodes for t in (*n.inputs, *n.outputs)}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name
