"""Evaluate an integer model on a data set: accuracy, top-1 agreement, per-layer saturation and overflow.

Every batch yields integer counts (correct and agreeing samples, clamped and overflowing outputs) and
per-layer maxima; the evaluation is their sum and maximum, so it is the same, exactly, however the
batches are spread over processes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from intsim.distributed.data import as_rows
from intsim.distributed.tasks import map_batches
from intsim.errors import ValidationError
from intsim.hwval.sweep import with_profile, text_columns, top1
from intsim.runtime import Model


@dataclass
class LayerCounts:
    """One node over the whole data set: outputs, outputs the requantization clamp changed, outputs whose
    accumulation left the profile's accumulator range, and the largest ``|accumulator|`` (MAC nodes)."""

    node: str
    op: str
    outputs: int = 0
    clamped: int = 0
    overflows: int = 0
    max_abs_accumulator: int | None = None


@dataclass
class EvaluationReport:
    """The result of :func:`evaluate`; ``table()`` and ``to_dict()``.

    ``agreement`` is top-1 agreement with ``reference``: ``"float"`` (the float ONNX model) or
    ``"32-bit accumulators"`` (the same integer model with 32-bit wrap-around accumulators, so that
    only the accumulator width and policy differ).
    """

    model: str
    profile: str
    samples: int
    correct: int | None
    agreeing: int
    reference: str
    reference_correct: int | None
    layers: list

    @property
    def accuracy(self) -> float | None:
        return None if self.correct is None else self.correct / self.samples

    @property
    def agreement(self) -> float:
        return self.agreeing / self.samples

    @property
    def reference_accuracy(self) -> float | None:
        return None if self.reference_correct is None else self.reference_correct / self.samples

    def table(self) -> str:
        header = ["node", "op", "outputs", "clamped", "overflows", "max |acc|"]
        rows = [[x.node, x.op, str(x.outputs), str(x.clamped), str(x.overflows),
                 "" if x.max_abs_accumulator is None else str(x.max_abs_accumulator)] for x in self.layers]
        lines = [f"evaluation of {self.model!r} (profile {self.profile!r}) on {self.samples} samples",
                 *text_columns(header, rows),
                 f"top-1 agreement with {self.reference}: {100 * self.agreement:.2f}% ({self.agreeing})"]
        if self.correct is not None:
            lines.append(f"accuracy: integer {100 * self.accuracy:.2f}% ({self.correct}), {self.reference} "
                         f"{100 * self.reference_accuracy:.2f}% ({self.reference_correct})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"model": self.model, "profile": self.profile, "samples": self.samples, "accuracy": self.accuracy,
                "correct": self.correct, "agreement": self.agreement, "agreeing": self.agreeing,
                "reference": self.reference, "reference_accuracy": self.reference_accuracy,
                "reference_correct": self.reference_correct, "layers": [dataclasses.asdict(x) for x in self.layers]}


def wide_accumulators(model: Model) -> Model:
    """``model`` with 32-bit wrap-around accumulators: the reference where only the accumulators differ."""
    profile = model.graph.profile.replace(accumulator_bits=32, overflow="wrap")
    return Model(with_profile(model.graph, profile), model.backend)


def _context(model: Model, float_model, float_input: bool):
    if float_model is None:
        return model, wide_accumulators(model), None, float_input
    from intsim.converter.lowering import prepare_float_graph
    from intsim.floatgraph.ort_session import FloatSession

    fg = prepare_float_graph(float_model)
    return model, None, FloatSession(fg, fg.outputs[:1]), float_input


def _batch(context, batch, labels) -> dict:
    model, wide, float_session, float_input = context
    trace = model.trace(batch, float_input=float_input)
    top = top1(trace.tensors[model.graph.outputs[0]])
    if float_session is None:
        reference = top1(wide.trace(batch, float_input=float_input).tensors[wide.graph.outputs[0]])
    else:
        reference = top1(float_session.run([batch])[float_session.outputs[0]])
    layers = {}
    for node in model.graph.nodes:
        s = trace.stats[node.name]
        layers[node.name] = (int(trace.tensors[node.outputs[0]].size), int(s.get("saturation_count", 0)),
                             int(s.get("overflow_count", 0)),
                             None if "max_abs_accumulator" not in s else int(s["max_abs_accumulator"]))
    return {"agreeing": int(np.sum(top == reference)), "layers": layers,
            "correct": None if labels is None else int(np.sum(top == labels)),
            "reference_correct": None if labels is None else int(np.sum(reference == labels))}


def evaluate(model: Model, data, labels=None, *, float_model=None, float_input: bool = True, batch_size: int = 256,
             client=None) -> EvaluationReport:
    """Run ``model`` over a data set and count what its integer datapath did.

    Per batch: correct samples (with ``labels``), samples whose top-1 class agrees with the reference,
    and per node its outputs, clamped outputs, overflowing outputs and largest ``|accumulator|``.  The
    counts are summed (maxima taken) over batches, so the result does not depend on how batches are
    spread over processes (white paper §2.1 for accumulators, §2.2 for the clamp).

    Parameters
    ----------
    model : Model
    data : array or :class:`~intsim.distributed.data.NpyData`
        Samples first: floats (quantized as :meth:`Model.run` does) or, with ``float_input=False``, codes.
    labels : int array, optional
    float_model : path or onnx.ModelProto, optional
        The float model ``model`` came from: agreement is then with its top-1; otherwise with ``model``
        run with 32-bit wrap-around accumulators.
    batch_size : int
    client : dask.distributed.Client, optional
        Spread the batches over a cluster's workers; ``None`` runs here.
    """
    data = as_rows(data)
    if data.ndim == 0 or data.shape[0] == 0:
        raise ValidationError(f"evaluate: data must hold at least one sample, found shape {data.shape}")
    if float_model is not None and not float_input:
        raise ValidationError("evaluate: agreement with a float model needs float data, found float_input=False")
    if float_input and data.dtype.kind != "f":
        raise ValidationError(f"evaluate: float_input=True needs float data, found dtype {data.dtype}")
    if batch_size < 1:
        raise ValidationError(f"evaluate: batch_size must be at least 1, found {batch_size}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (data.shape[0],):
            raise ValidationError(f"evaluate: labels must have shape ({data.shape[0]},), found {labels.shape}")
    graph = model.graph
    layers = {n.name: LayerCounts(n.name, n.op) for n in graph.nodes}
    totals = {"agreeing": 0, "correct": 0, "reference_correct": 0}
    for record in map_batches(_context, _batch, (model, float_model, float_input), data, labels, batch_size, client):
        for key in totals:
            totals[key] += record[key] or 0
        for name, (outputs, clamped, overflows, peak) in record["layers"].items():
            layer = layers[name]
            layer.outputs += outputs
            layer.clamped += clamped
            layer.overflows += overflows
            if peak is not None:
                layer.max_abs_accumulator = max(layer.max_abs_accumulator or 0, peak)
    labelled = labels is not None
    return EvaluationReport(graph.name, graph.profile.name, int(data.shape[0]),
                            totals["correct"] if labelled else None, totals["agreeing"],
                            "float" if float_model is not None else "32-bit accumulators",
                            totals["reference_correct"] if labelled else None, list(layers.values()))
