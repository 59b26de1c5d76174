"""Weight / activation bit-width sweep of a float model: convert at each width pair, run, compare."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from intsim.errors import ValidationError
from intsim.profiles import get_profile
from intsim.progress import Progress, progress_enabled

from intsim.hwval.sweep import text_columns, top1


# --------------------------------------------------------------------------
# Weight / activation bit-width sweep of a float model.
# --------------------------------------------------------------------------


@dataclass
class BitWidthRow:
    """One conversion: top-1 agreement with float, accuracy, and the widest final accumulator sum."""

    weight_bits: int
    activation_bits: int
    agreement: float
    accuracy: float | None
    final_bits: int
    widest_layer: str


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
                   profile="paper", batch_size: int = 256, progress: bool = True,
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
        Each in 2..16.
    progress : bool
        Draw a progress bar over the pairs on stderr (:func:`intsim.config.progress_enabled`).
    """
    from intsim.converter.lowering import convert, prepare_float_graph
    from intsim.floatgraph.execute import run_float

    data = np.asarray(data)
    if data.dtype.kind != "f" or data.ndim == 0 or data.shape[0] == 0:
        raise ValidationError(f"bitwidth_sweep: data must be a non-empty float array, found dtype {data.dtype} "
                              f"shape {data.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (data.shape[0],):
            raise ValidationError(f"bitwidth_sweep: labels must have shape ({data.shape[0]},), found {labels.shape}")
    fg = prepare_float_graph(onnx_model, convert_options.get("input_shapes"))
    batches = [data[i: i + batch_size] for i in range(0, data.shape[0], batch_size)]
    float_top = np.concatenate([top1(run_float(fg, [b])[fg.outputs[0]]) for b in batches])
    rows, name = [], fg.name
    pairs = [(w, a) for w in sorted({int(b) for b in weight_bits}) for a in sorted({int(b) for b in activation_bits})]
    with Progress(len(pairs), progress_enabled(progress), "sweeping weight/activation bits") as bar:
        for done, (w, a) in enumerate(pairs, 1):
            model = convert(fg, calibration=calibration, profile=profile, weight_bits=w, activation_bits=a,
                            progress=False, **convert_options)
            peaks, tops = {}, []
            for b in batches:
                trace = model.trace(b, float_input=True)
                tops.append(top1(trace.tensors[model.graph.outputs[0]]))
                for node, s in trace.stats.items():
                    if "max_abs_accumulator" in s:
                        peaks[node] = max(peaks.get(node, 0), s["max_abs_accumulator"])
            top = np.concatenate(tops)
            widest = max(peaks, key=peaks.get)
            rows.append(BitWidthRow(w, a, float(np.mean(top == float_top)),
                                    None if labels is None else float(np.mean(top == labels)),
                                    peaks[widest].bit_length() + 1, widest))
            name = model.graph.name
            bar.update(done)
    accuracy = None if labels is None else float(np.mean(float_top == labels))
    return BitWidthReport(name, get_profile(profile).name, data.shape[0], rows, accuracy)
