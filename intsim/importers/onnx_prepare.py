"""ONNX models made ready for :func:`intsim.convert` before they are imported: a recurrent model's
constant inputs fixed and its state's batch axis moved to axis 0 (silero's voice-activity detector,
docs/real_models.md)."""

from __future__ import annotations

import numpy as np

from intsim import onnxproto
from intsim.errors import ValidationError
from intsim.importers.onnx import read_onnx


def prepare_recurrent(model, constants=None, batch_axes=None) -> onnxproto.ModelProto:
    """An ONNX model made ready for :func:`intsim.convert`: constant inputs fixed, batch axes moved to axis 0.

    silero's voice-activity detector takes its sample rate as an input ``sr`` (an int64 scalar its
    ``If`` branches on) and a recurrent ``state`` of shape [2, batch, 128] that it returns updated as
    ``stateN``; intsim's graphs take every input and output with its samples along axis 0.  Run the
    model frame by frame, feeding ``stateN`` back as ``state``, as silero's own wrapper does.

    Parameters
    ----------
    model : str, os.PathLike or onnx.ModelProto
        The float model (not modified: a copy is returned).
    constants : mapping of str to array-like, optional
        Graph inputs to fix, by name (e.g. ``{"sr": 16000}``): each becomes an initializer of the
        input's declared element type and rank, so the importer folds what depends on it (an ``If``
        on it imports one branch).
    batch_axes : mapping of str to int, optional
        Graph inputs and outputs whose batch is not on axis 0, by name (e.g. ``{"state": 1,
        "stateN": 1}``): a Transpose moves that axis to the front (inputs) or from it (outputs), so
        the graph input ``state`` becomes [batch, 2, 128] and the output ``stateN`` too.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ValidationError
        A name that is not a graph input (``constants``) or neither an input nor an output
        (``batch_axes``), a value whose rank or kind the input's declaration contradicts, or an
        axis outside the tensor's rank.
    """
    proto = onnxproto.ModelProto()
    proto.CopyFrom(read_onnx(model))
    graph = proto.graph
    inputs, outputs = {t.name: t for t in graph.input}, {t.name: t for t in graph.output}
    for name, value in (constants or {}).items():
        if name not in inputs:
            raise ValidationError(f"constants names {name!r}, but the graph's inputs are {list(inputs)}")
        graph.initializer.append(_constant_input(inputs[name], value))
        graph.input.remove(inputs[name])
    for name, axis in (batch_axes or {}).items():
        info = inputs.get(name) or outputs.get(name)
        if info is None or name in (constants or {}):
            raise ValidationError(f"batch_axes names {name!r}, but the graph's inputs are {list(inputs)} and its "
                                  f"outputs {list(outputs)}")
        dims = info.type.tensor_type.shape.dim
        if not isinstance(axis, int) or not 0 <= axis < len(dims):
            raise ValidationError(f"batch_axes[{name!r}] must be an axis of its rank-{len(dims)} shape, found {axis!r}")
        if axis:
            _batch_first(graph, info, axis, is_input=name in inputs)
    return proto


def _constant_input(info: onnxproto.ValueInfoProto, value) -> onnxproto.TensorProto:
    kind = info.type.tensor_type.elem_type
    dtype = onnxproto.np_dtype(kind)
    array = np.asarray(value)
    rank = len(info.type.tensor_type.shape.dim)
    if array.ndim != rank or (array.dtype.kind == "f") != (np.dtype(dtype).kind == "f"):
        raise ValidationError(f"constants[{info.name!r}] must be a rank-{rank} {np.dtype(dtype).name} value, found "
                              f"{array.dtype} of shape {array.shape}")
    return onnxproto.from_array(array.astype(dtype), info.name)


def _batch_first(graph: onnxproto.GraphProto, info: onnxproto.ValueInfoProto, axis: int, is_input: bool) -> None:
    """Rename ``info`` inside the graph (and its subgraphs) and join the two names with a Transpose."""
    dims = info.type.tensor_type.shape.dim
    front = [axis] + [a for a in range(len(dims)) if a != axis]
    inner = f"{info.name}/batch_axis_{axis}"
    _rename(graph, info.name, inner)
    if is_input:
        graph.node.insert(0, onnxproto.make_node("Transpose", [info.name], [inner], name=f"{inner}/transpose",
                                                   perm=[front.index(a) for a in range(len(dims))]))
    else:
        graph.node.append(onnxproto.make_node("Transpose", [inner], [info.name], name=f"{inner}/transpose", perm=front))
    moved = [onnxproto.TensorShapeProto.Dimension() for _ in dims]
    for new, old in zip(moved, front):
        new.CopyFrom(dims[old])
    del dims[:]
    dims.extend(moved)


def _rename(graph: onnxproto.GraphProto, old: str, new: str, outer: bool = True) -> None:
    """Tensor ``old`` renamed ``new`` in every node of ``graph`` and its subgraphs, and among the subgraphs'
    outputs (a branch may output an outer tensor as it is); the outer graph's own outputs keep their names."""
    for node in graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
        for attr in node.attribute:
            if attr.type == onnxproto.AttributeProto.GRAPH:
                _rename(attr.g, old, new, outer=False)
    for info in [] if outer else graph.output:
        if info.name == old:
            info.name = new
