"""The one facade: every verb a user calls on a whole model, each delegating to its stage.

``convert`` (float ONNX to an integer model), ``load`` (any integer model file), ``save``,
``compare`` (float vs simulated vs integer), ``debug`` (the white paper's PTQ debugging workflow),
``evaluate`` (accuracy, agreement and per-layer counts over a data set, on a Dask cluster with
``client=``), ``export_tosa``, ``export_qdq``, ``export_golden`` and
``search_mixed_precision`` (per-layer formats within an accuracy budget).  The stages
below never import this module, so the runtime stays beneath the importers, exporters and hwval.
"""

from __future__ import annotations

from pathlib import Path

from intsim.converter.lowering import convert
from intsim.debugging import debug
from intsim.distributed.evaluate import evaluate
from intsim.errors import ValidationError
from intsim.graph.fileformat import load_graph, save_graph
from intsim.hwval.golden import export_golden as _export_golden
from intsim.importers.onnx_prepare import prepare_recurrent  # noqa: F401  (a facade verb)
from intsim.mixed_precision import search_mixed_precision
from intsim.report import compare
from intsim.runtime import Model

__all__ = ["compare", "convert", "debug", "evaluate", "export_golden", "export_qdq", "export_tosa", "load",
           "save", "search_mixed_precision"]


def load(path, backend: str = "fast", profile=None) -> Model:
    """Load a model file as a :class:`~intsim.runtime.Model`: an ``.intsim`` file, an int8
    ``.tflite`` flatbuffer, float edges allowed (read into an integer graph with the ``tflite``
    profile), or a quantized ONNX model (a path ending in ``.onnx`` or an ``onnx.ModelProto``): QDQ or
    QOperator, detected from its nodes (:func:`intsim.importers.onnx_qdq.onnx_format`) and read with
    ``profile`` (default ``"onnxruntime"``).  A float ONNX model raises
    :class:`~intsim.errors.ModelFormatError` (quantize it with :func:`convert`)."""
    if not isinstance(path, (str, Path)) or Path(path).suffix.lower() == ".onnx":
        from intsim.importers.onnx_qdq import load_onnx

        return Model(load_onnx(path, profile), backend)
    if profile is not None:
        raise ValidationError(f"{path}: profile= applies to ONNX models; an .intsim or .tflite file fixes its own")
    if Path(path).suffix.lower() == ".tflite":
        from intsim.importers.tflite import load_tflite  # the flatbuffer schema only where a .tflite is read

        return Model(load_tflite(path), backend)
    return Model(load_graph(path), backend)


def save(model: Model, path) -> None:
    """Write ``model``'s graph as a ``.intsim`` file (see :mod:`intsim.graph.fileformat`)."""
    save_graph(model.graph, path)


def export_tosa(model: Model, path, batch: int = 1) -> Path:
    """Write ``model``'s graph as a TOSA flatbuffer (the ``.tosa`` file TOSA tooling and the reference
    model read) at ``path``, unknown dimensions fixed to ``batch``; returns the path.  An op TOSA
    cannot express exactly raises :class:`~intsim.errors.UnsupportedOpError`."""
    from intsim.export.tosa import export_tosa as write

    return write(model.graph, path, batch)


def export_qdq(model: Model, path):
    """Write ``model``'s graph as a QDQ ONNX model at ``path`` (:meth:`Model.to_onnx_qdq`): onnxruntime
    fuses it back into the kernels the graph models; returns a :class:`intsim.export.qdq.QdqExport`
    whose ``inexact`` names the nodes where onnxruntime's arithmetic differs from the graph's profile."""
    return model.to_onnx_qdq(path)


def export_golden(model: Model, inputs, out_dir, formats=("npy", "hex", "bin"), *, float_input: bool = False) -> Path:
    """Write golden vectors of one forward pass for RTL test benches: every tensor, weight, bias, raw
    accumulator and requantization parameter as ``.npy`` / ``$readmemh`` hex / raw little-endian files
    with a ``manifest.json`` (see :mod:`intsim.hwval.golden`).  Returns the manifest's path."""
    return _export_golden(model, inputs, out_dir, formats, float_input=float_input)
