"""Weight / activation bit-width sweep of a float model: convert at each width pair, run, compare."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from intsim.distributed.data import as_rows
from intsim.distributed.tasks import is_onnx, map_batches, map_calls
from intsim.errors import IntsimError, ValidationError
from intsim.profiles import get_profile
from intsim.progress import Progress, progress_enabled

from intsim.hwval.sweep import text_columns, top1


# --------------------------------------------------------------------------
# Weight / activation bit-width sweep of a float model.
# --------------------------------------------------------------------------


@dataclass
class BitWidthRow:
    """One conversion: top-1 agreement with float, accuracy, and the widest final accumulator sum; or, for a
    pair the conversion refused, ``error`` (and ``None`` for the rest)."""

    weight_bits: int
    activation_bits: int
    agreement: float | None
    accuracy: float | None
    final_bits: int | None
    widest_layer: str
    error: str | None = None


@dataclass
class BitWidthReport:
    """The result of :func:`bitwidth_sweep`; ``table()`` and ``to_dict()``."""

    model: str
    profile: str
    samples: int
    rows: list
    accuracy_float: float | None = None

    def table(self) -> str:
        header = ["W bits", "A bits", "top-1 agreement with float", "accuracy", "final-sum acc bits", "widest layer"]
        rows = [[str(r.weight_bits), str(r.activation_bits), f"{100 * r.agreement:.2f}%",
                 "" if r.accuracy is None else f"{100 * r.accuracy:.2f}%", str(r.final_bits), r.widest_layer]
                if r.error is None else [str(r.weight_bits), str(r.activation_bits), f"failed: {r.error}", "", "", ""]
                for r in self.rows]
        lines = [f"bit-width sweep of {self.model!r} (profile {self.profile!r}) on {self.samples} samples",
                 *text_columns(header, rows)]
        if self.accuracy_float is not None:
            lines.append(f"float accuracy: {100 * self.accuracy_float:.2f}%")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"model": self.model, "profile": self.profile, "samples": self.samples,
                "accuracy_float": self.accuracy_float, "rows": [dataclasses.asdict(r) for r in self.rows]}


def bitwidth_sweep(onnx_model, calibration, data, labels=None, *, weight_bits=(8,), activation_bits=(8,),
                   profile="paper", batch_size: int = 256, progress: bool = True, client=None,
                   **convert_options) -> BitWidthReport:
    """Convert a float ONNX model at every weight x activation width and measure each conversion.

    Per ``(weight_bits, activation_bits)`` pair, :func:`intsim.convert` (with
    ``convert_options``) builds the integer model, which runs on ``data``: top-1
    agreement with the float model, accuracy with ``labels``, and the bits its
    widest final accumulator sum needs (narrower weights and activations need
    narrower accumulators; white paper §2.1 and §4).

    Parameters
    ----------
    onnx_model : path, onnx.ModelProto or FloatGraph
    calibration : float array
        Calibration inputs, samples first.
    data : float array
        Evaluation inputs, samples first.
    weight_bits, activation_bits : iterables of int
        Each in 2..16.  A pair the conversion refuses is reported in its row with the error, and the
        sweep goes on.
    progress : bool
        Draw a progress bar over the pairs on stderr (:func:`intsim.config.progress_enabled`).
    client : dask.distributed.Client, optional
        Convert and run every pair on a cluster's workers (:mod:`intsim.distributed`): the model travels
        as ONNX bytes, the data as a shared path or scattered once.  ``None`` runs here; the table is
        the same either way.
    """
    from intsim.converter.lowering import prepare_float_graph

    data = as_rows(data)
    if data.dtype.kind != "f" or data.ndim == 0 or data.shape[0] == 0:
        raise ValidationError(f"bitwidth_sweep: data must be a non-empty float array, found dtype {data.dtype} "
                              f"shape {data.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (data.shape[0],):
            raise ValidationError(f"bitwidth_sweep: labels must have shape ({data.shape[0]},), found {labels.shape}")
    fg = prepare_float_graph(onnx_model, convert_options.get("input_shapes"))
    # A cluster's workers receive ONNX bytes and prepare them; an in-memory FloatGraph travels as is.
    source = onnx_model if client is not None and is_onnx(onnx_model) else fg
    float_top = np.concatenate(list(map_batches(_float_graph, _float_top, (source,), data, None, batch_size, client)))
    pairs = [(w, a) for w in sorted({int(b) for b in weight_bits}) for a in sorted({int(b) for b in activation_bits})]
    results = map_calls(_convert_and_run, (source, calibration, data, profile, batch_size, convert_options), pairs,
                        client)
    rows, name = [], fg.name
    with Progress(len(pairs), progress_enabled(progress), "sweeping weight/activation bits") as bar:
        for done, ((w, a), (graph_name, top, peaks, error)) in enumerate(zip(pairs, results), 1):
            bar.update(done)
            if error is not None:
                rows.append(BitWidthRow(w, a, None, None, None, "", error))
                continue
            widest = max(peaks, key=peaks.get)
            rows.append(BitWidthRow(w, a, float(np.mean(top == float_top)),
                                    None if labels is None else float(np.mean(top == labels)),
                                    peaks[widest].bit_length() + 1, widest))
            name = graph_name
    accuracy = None if labels is None else float(np.mean(float_top == labels))
    return BitWidthReport(name, get_profile(profile).name, data.shape[0], rows, accuracy)


def _float_graph(fg):
    from intsim.floatgraph.ort_session import FloatSession

    return FloatSession(fg, fg.outputs[:1])


def _float_top(session, batch, labels) -> np.ndarray:
    return top1(session.run([batch])[session.outputs[0]])


def _convert_and_run(fg, calibration, data, profile, batch_size, convert_options, w, a):
    """One configuration: ``(graph name, top-1 per sample, peak |accumulator| per node, None)``, or
    ``(None, None, None, error)`` when the conversion refuses it (the sweep goes on)."""
    from intsim.converter.lowering import convert

    try:
        model = convert(fg, calibration=calibration, profile=profile, weight_bits=w, activation_bits=a,
                        progress=False, **convert_options)
    except IntsimError as exc:
        return None, None, None, f"{type(exc).__name__}: {exc}"
    peaks, tops = {}, []
    for start in range(0, data.shape[0], batch_size):
        trace = model.trace(data[start: start + batch_size], float_input=True)
        tops.append(top1(trace.tensors[model.graph.outputs[0]]))
        for node, s in trace.stats.items():
            if "max_abs_accumulator" in s:
                peaks[node] = max(peaks.get(node, 0), s["max_abs_accumulator"])
    return model.graph.name, np.concatenate(tops), peaks, None
