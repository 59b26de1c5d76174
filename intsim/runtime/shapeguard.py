"""Run-time shape checks: what a call's arrays must satisfy before any kernel reads them.

Load-time validation works on declared shapes, where ``None`` (any size) matches
anything; the kernels take their loop bounds from the arrays they are given.
Between the two, a graph can be valid on paper and still hand a kernel an
activation whose reduction depth differs from its weight's (a ``flatten`` at
axis 0 folds the batch into the features), and the kernel then reads past the
weight.  :func:`check_node_inputs` closes that gap: every input array must have
its tensor's declared shape, and each multiply-accumulate node's reduction depth
must equal its weight's, checked in Python before the launch.  The runtime does
this once per distinct set of input shapes (shapes downstream depend only on
them), so a repeated call costs one dictionary lookup.
"""

from __future__ import annotations

from intsim.errors import ValidationError
from intsim.graph import Graph, Node

_DEPTH_CHECKS = {}


def _depth_check(op_name):
    def wrap(fn):
        _DEPTH_CHECKS[op_name] = fn
        return fn

    return wrap


@_depth_check("conv2d")
def _conv2d_depth(node: Node, arrays) -> str | None:
    w = node.params["weight"]
    groups = int(node.attrs.get("groups", 1))
    x = arrays[0]
    if x.ndim != 4 or x.shape[3] != w.shape[3] * groups:
        return (f"input channels {x.shape[-1] if x.ndim else '?'} (shape {x.shape}) != weight channels "
                f"{w.shape[3]} x groups {groups}")
    return None


@_depth_check("fully_connected")
def _fully_connected_depth(node: Node, arrays) -> str | None:
    w = node.params["weight"]
    x = arrays[0]
    if x.ndim != 2 or x.shape[1] != w.shape[1]:
        return f"input {x.shape} must be [batch, {w.shape[1]}] (the weight's depth)"
    return None


@_depth_check("matmul")
def _matmul_depth(node: Node, arrays) -> str | None:
    a, b = arrays
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        return f"inner dimensions differ: a {a.shape} vs b {b.shape}"
    if b.ndim != 2 and (b.ndim != a.ndim or any(db not in (1, da) for da, db in zip(a.shape[:-2], b.shape[:-2]))):
        return f"b's leading dimensions do not broadcast to a's: a {a.shape} vs b {b.shape}"
    return None


def check_node_inputs(node: Node, graph: Graph, arrays) -> None:
    """Raise :class:`~intsim.errors.ValidationError` unless ``arrays`` (the node's inputs, in order) have
    their tensors' declared shapes and, for a multiply-accumulate node, the weight's reduction depth."""
    for name, array in zip(node.inputs, arrays):
        declared = graph.tensors[name].shape
        if array.ndim != len(declared) or any(d is not None and d != s for d, s in zip(declared, array.shape)):
            expected = tuple("any" if d is None else d for d in declared)
            raise ValidationError(f"{node.op} {node.name!r}: input {name!r} is declared {expected} but the run "
                                  f"gives it shape {array.shape}")
    check = _DEPTH_CHECKS.get(node.op)
    problem = check(node, arrays) if check else None
    if problem:
        raise ValidationError(f"{node.op} {node.name!r}: {problem}")
