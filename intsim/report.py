"""What quantization did to a model: float vs simulated vs integer, layer by layer.

Three executions of the same model on the same data:

* **float**: the imported float graph (after batch-norm folding), in float32;
* **simulated**: the same float graph with the integer model's quantized
  weights and biases, and every quantization point passed through
  ``fake_quantize`` with the integer tensor's scale, zero point and clamp
  (white paper §2.3, quantization simulation);
* **integer**: the integer graph on the bit-exact datapath.

Per quantization point the report gives the SQNR of simulated and integer
against float, and how many codes the integer datapath and the simulation
agree on.  Per requantizing node it gives the *local* rounding mismatches: the
fraction of output codes where the integer datapath differs from requantizing
the very same integer inputs by the real scale ratio with round-half-to-even,
i.e. how often the fixed-point multiplier approximation and its rounding rule
change a result.  Saturation statistics: the fraction of each node's outputs the
requantization clamp changed, and for multiply-accumulate nodes the accumulator
headroom (``accumulator_bits - 1 - bit_length(max |acc|)`` over all samples;
:func:`intsim.hwval.sweep` goes further).  Output agreement (top-1) and accuracy
close the report.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from intsim.converter.feeds import FeedRows, named_feeds
from intsim.distributed.data import as_rows
from intsim.distributed.tasks import is_onnx, map_batches
from intsim.errors import ValidationError
from intsim.floatgraph import FloatGraph
from intsim.floatgraph.ort_session import FloatSession, fake_quantize
from intsim.plotting import inline_png, pyplot
from intsim.progress import Progress, progress_enabled
from intsim.runtime import Model


def _to_float_layout(stored: np.ndarray, perm) -> np.ndarray:
    return stored.transpose(np.argsort(perm))


def _as_rewritten(f: np.ndarray, entry: dict) -> np.ndarray:
    """A float tensor as the PTQ-rewritten model holds it (``graph.metadata["ptq"]["rescaled"]``): channel i
    divided by the CLE scale and, where bias absorption moved ``c_i`` past the ReLU, ``max(f / S - c, 0)``
    (which is ``relu(x / S - c)`` for ``f = relu(x)``, ``c >= 0``)."""
    shape = (1, -1) + (1,) * (f.ndim - 2)
    f = f / np.asarray(entry["scale"]).reshape(shape)
    if "offset" in entry:
        f = np.maximum(f - np.asarray(entry["offset"]).reshape(shape), 0.0)
    return f


def _sqnr_db(signal_power: float, noise_power: float) -> float:
    if noise_power == 0.0:
        return math.inf
    if signal_power == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


@dataclass
class LayerRow:
    tensor: str
    node: str
    op: str
    signal: float = 0.0
    noise_sim: float = 0.0
    noise_int: float = 0.0
    agree: int = 0
    elements: int = 0
    local_mismatch: int = 0
    local_elements: int = 0
    saturated: int = 0
    saturation_elements: int = 0
    max_abs_accumulator: int | None = None
    headroom_bits: int | None = None  # profile accumulator bits - 1 - bit_length(max |acc|), over all batches

    @property
    def sqnr_sim(self) -> float:
        return _sqnr_db(self.signal, self.noise_sim)

    @property
    def sqnr_int(self) -> float:
        return _sqnr_db(self.signal, self.noise_int)

    @property
    def agreement(self) -> float:
        return self.agree / self.elements if self.elements else math.nan

    @property
    def local_mismatch_rate(self) -> float:
        return self.local_mismatch / self.local_elements if self.local_elements else math.nan

    @property
    def saturation_rate(self) -> float:
        return self.saturated / self.saturation_elements if self.saturation_elements else math.nan


@dataclass
class CompareReport:
    """The result of :func:`compare`; ``table()`` prints it, ``to_html`` / ``plot`` save it."""

    model_name: str
    profile: str
    samples: int
    layers: list[LayerRow]
    top1_agreement_int: float | None  # None where the output is not (batch, classes)
    top1_agreement_sim: float | None
    max_abs_error_int: float
    max_abs_error_sim: float
    accuracy: dict = field(default_factory=dict)
    output_sqnr_int: float = math.nan  # of the first graph output, over all samples
    output_sqnr_sim: float = math.nan

    def table(self) -> str:
        header = ["tensor", "op", "SQNR sim dB", "SQNR int dB", "int==sim", "local rounding diff", "clamped",
                  "acc headroom"]
        rows = []
        for r in self.layers:
            local = "" if not r.local_elements else f"{100 * r.local_mismatch_rate:.3f}% ({r.local_mismatch})"
            sat = "" if not r.saturation_elements else f"{100 * r.saturation_rate:.2f}%"
            rows.append([r.tensor, r.op, f"{r.sqnr_sim:.2f}", f"{r.sqnr_int:.2f}", f"{100 * r.agreement:.2f}%",
                         local, sat, _headroom_text(r)])
        widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
        lines = [f"{self.model_name} on profile {self.profile!r}, {self.samples} samples"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [header] + rows]
        if self.top1_agreement_int is None:
            lines.append("top-1 agreement: not measured (the output is not (batch, classes))")
        else:
            lines.append(f"top-1 agreement with float: integer {100 * self.top1_agreement_int:.2f}%, "
                         f"simulated {100 * self.top1_agreement_sim:.2f}%")
        lines.append(f"output SQNR vs float: integer {self.output_sqnr_int:.2f} dB, "
                     f"simulated {self.output_sqnr_sim:.2f} dB")
        lines.append(f"max |output error| vs float: integer {self.max_abs_error_int:.5g}, "
                     f"simulated {self.max_abs_error_sim:.5g}")
        if self.accuracy:
            lines.append("accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in self.accuracy.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "model": self.model_name, "profile": self.profile, "samples": self.samples,
            "top1_agreement_int": self.top1_agreement_int, "top1_agreement_sim": self.top1_agreement_sim,
            "max_abs_error_int": self.max_abs_error_int, "max_abs_error_sim": self.max_abs_error_sim,
            "output_sqnr_int_db": self.output_sqnr_int, "output_sqnr_sim_db": self.output_sqnr_sim,
            "accuracy": dict(self.accuracy),
            "layers": [{"tensor": r.tensor, "node": r.node, "op": r.op, "sqnr_sim_db": r.sqnr_sim,
                        "sqnr_int_db": r.sqnr_int, "int_sim_agreement": r.agreement,
                        "local_rounding_mismatches": r.local_mismatch, "local_elements": r.local_elements,
                        "saturation_rate": r.saturation_rate, "max_abs_accumulator": r.max_abs_accumulator,
                        "accumulator_headroom_bits": r.headroom_bits} for r in self.layers],
        }

    def to_html(self, path) -> None:
        """A self-contained HTML page with the summary, the per-layer table and (with matplotlib) the plot."""
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
                r.tensor, r.op, f"{r.sqnr_sim:.2f}", f"{r.sqnr_int:.2f}", f"{100 * r.agreement:.2f}%",
                "" if not r.local_elements else f"{100 * r.local_mismatch_rate:.3f}% ({r.local_mismatch})",
                "" if not r.saturation_elements else f"{100 * r.saturation_rate:.2f}%", _headroom_text(r))) + "</tr>"
            for r in self.layers)
        summary = html.escape(self.table().splitlines()[0])
        tail = "".join(f"<p>{html.escape(line)}</p>" for line in self.table().splitlines()[len(self.layers) + 2:])
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>intsim report</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}</style>"
            f"</head><body><h1>{summary}</h1><table><tr><th>tensor</th><th>op</th><th>SQNR sim dB</th>"
            "<th>SQNR int dB</th><th>int==sim</th><th>local rounding diff</th><th>clamped</th>"
            "<th>acc headroom</th></tr>"
            f"{rows}</table>{tail}{inline_png(self.plot, 'per-layer SQNR')}</body></html>"
        )
        with open(path, "w", encoding="utf-8") as f:
            f.write(page)

    def plot(self, path) -> None:
        """Per-layer SQNR (simulated and integer) as a PNG; needs matplotlib (extra ``plot``)."""
        plt = pyplot()
        finite = [(r.tensor, r.sqnr_sim, r.sqnr_int) for r in self.layers]
        x = np.arange(len(finite))
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(finite)), 4))
        cap = lambda v: min(v, 80.0)  # noqa: E731 - an exact layer has infinite SQNR
        ax.plot(x, [cap(v[1]) for v in finite], "o-", label="simulated")
        ax.plot(x, [cap(v[2]) for v in finite], "s--", label="integer")
        ax.set_xticks(x, [v[0] for v in finite], rotation=90, fontsize=7)
        ax.set_ylabel("SQNR vs float (dB)")
        # Long model names wrap instead of running past the figure's edge.
        ax.set_title(f"{self.model_name}, profile {self.profile}: {self.samples} samples", fontsize=9, wrap=True)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _headroom_text(row: LayerRow) -> str:
    return "" if row.headroom_bits is None else f"{row.headroom_bits} bits"


def simulation_graph(fg: FloatGraph, model: Model) -> tuple[FloatGraph, dict]:
    """The float graph with the integer model's quantized weights, and the fake-quant hook table.

    Returns ``(graph, points)`` where ``points[float_tensor] = (scale, zero_point, lo, hi)``.
    """
    graph = model.graph
    meta = _converter_metadata(model)
    nodes = {n.name: n for n in graph.nodes}
    constants = dict(fg.constants)
    for node_name, (w_name, b_name, transposed) in meta["weight_source"].items():
        node = nodes[node_name]
        w_scale = np.asarray(meta["weight_scale"][node_name])
        codes = node.params["weight"].astype(np.float64)
        zp = node.params["weight_zero_point"].astype(np.float64)
        shape = [-1] + [1] * (codes.ndim - 1)
        deq = (codes - zp.reshape(shape)) * w_scale.reshape(shape)
        if node.op == "conv2d":
            deq = deq.transpose(0, 3, 1, 2)  # OHWI back to ONNX's OIHW
        constants[w_name] = (deq.T if transposed else deq).astype(np.float32)
        x_scale = graph.tensors[node.inputs[0]].scale
        if b_name is not None and b_name in constants:
            constants[b_name] = (node.params["bias"].astype(np.float64) * x_scale * w_scale).astype(np.float32)
    points = {}
    producers = {t: n for n in graph.nodes for t in n.outputs}
    for float_name, int_name in _real_points(meta):
        info = graph.tensors[int_name]
        lo, hi = np.iinfo(info.np_dtype).min, np.iinfo(info.np_dtype).max
        producer = producers.get(int_name)
        if producer is not None and "clamp" in producer.attrs:
            lo, hi = producer.attrs["clamp"]
        points[float_name] = (info.scale, info.zero_point, int(lo), int(hi))
    sim = dataclasses.replace(fg, constants=constants)
    return sim, points


def fake_quant_hook(points: dict):
    """A :func:`~intsim.floatgraph.execute.run_float` hook that fake-quantizes each tensor of ``points``
    (``{float tensor: (scale, zero_point, lo, hi)}``, as :func:`simulation_graph` gives them)."""

    def hook(name, value):
        return value if name not in points else fake_quantize(value, *points[name])

    return hook


def _real_points(meta: dict) -> list[tuple[str, str]]:
    """``(float tensor, integer tensor)`` of every quantization point; integer inputs (token ids, masks)
    are no quantization of reals."""
    integer = set(meta.get("integer_inputs", ()))
    return [(f, t) for f, t in meta["quantized"].items() if f not in integer]


def _converter_metadata(model: Model) -> dict:
    meta = model.graph.metadata
    if "quantized" not in meta:
        raise ValidationError(f"model {model.graph.name!r} carries no converter metadata (was it built by "
                              "intsim.convert?)")
    return meta


def _local_ideal(node, trace, graph, meta) -> np.ndarray | None:
    """The codes node ``node`` would produce with exact real-valued requantization (half to even)."""
    reals = meta["real_multiplier"].get(node.name)
    if reals is None:
        return None
    out = graph.tensors[node.outputs[0]]
    lo, hi = node.attrs.get("clamp", (np.iinfo(out.np_dtype).min, np.iinfo(out.np_dtype).max))
    ins = [trace.tensors[t].astype(np.float64) - graph.tensors[t].zero_point for t in node.inputs]
    if node.op in ("conv2d", "fully_connected", "matmul"):
        real = np.asarray(reals) if node.op != "matmul" else reals[0]
        value = trace.accumulators[node.name].astype(np.float64) * real
    elif node.op == "add":
        a, b = np.broadcast_arrays(*ins)
        value = a * reals[0] - b * reals[1] if node.attrs.get("subtract") else a * reals[0] + b * reals[1]
    elif node.op == "mul":
        a, b = np.broadcast_arrays(*ins)
        value = a * b * reals[0]
    elif node.op == "mean":
        axes = tuple(node.attrs["axes"])
        value = ins[0].sum(axis=axes, keepdims=bool(node.attrs.get("keepdims", False))) * reals[0]
    elif node.op == "concat":
        value = np.concatenate([x * r for x, r in zip(ins, reals)], axis=node.attrs["axis"])
    else:
        return None
    return np.clip(np.rint(value) + out.zero_point, lo, hi)


def compare(onnx_model, int_model: Model, data, labels=None, *, batch_size: int = 64, progress: bool = True,
            client=None) -> CompareReport:
    """Run float, simulated and integer executions of a model on ``data`` and compare them.

    Parameters
    ----------
    onnx_model : path, onnx.ModelProto or FloatGraph
        The float model ``int_model`` was converted from.
    int_model : Model
        The converted model (its graph carries the converter's metadata).
    data : float array, or dict input name -> array, or list of such dicts
        Inputs in the model's layout, first axis = samples; processed in batches.  A model with
        several inputs, or integer ones (token ids, masks), takes a dict (integers for those).
    labels : int array, optional
        Class labels: adds float, simulated and integer accuracy.
    progress : bool
        Draw a progress bar on stderr (:func:`intsim.config.progress_enabled`); the first batch
        includes numba's compilation of the kernels on a fresh install.
    client : dask.distributed.Client, optional
        Spread the batches over a cluster's workers (:mod:`intsim.distributed`); ``None`` runs here.
        Batches keep their boundaries and are folded in order, so the report is the same.
    """
    from intsim.converter.lowering import prepare_float_graph

    graph = int_model.graph
    meta = _converter_metadata(int_model)
    fg = prepare_float_graph(onnx_model, meta.get("input_shapes"))
    if len(fg.inputs) != 1 or fg.integer_inputs:  # several or integer inputs: a dict, or a list of dicts
        data = FeedRows(named_feeds(fg.inputs, fg.integer_inputs, data, "compare data"))
    else:
        data = as_rows(data)
        if data.dtype.kind != "f" or data.shape[0] == 0:
            raise ValidationError(f"compare needs a non-empty float data array, found dtype {data.dtype} shape "
                                  f"{data.shape}")
        int_model.check_input_shapes(data.shape, where="compare data for input")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (data.shape[0],):
            raise ValidationError(f"labels must have shape ({data.shape[0]},), found {labels.shape}")
    producers = {t: n for n in graph.nodes for t in n.outputs}
    rows = {}
    for float_name, int_name in _real_points(meta):
        node = producers.get(int_name)
        rows[float_name] = LayerRow(float_name, node.name if node else "(input)", node.op if node else "input")
    correct = {"float": 0, "simulated": 0, "integer": 0}
    agree_int = agree_sim = 0
    classifier = True
    max_int = max_sim = 0.0
    out_power = [0.0, 0.0, 0.0]  # signal, noise of the simulation, noise of the integer run
    # A cluster's workers receive ONNX bytes and prepare them; an in-memory FloatGraph travels as is (so
    # does one whose input shapes were fixed at conversion).
    shipped_as_onnx = client is not None and is_onnx(onnx_model) and not meta.get("input_shapes")
    source = onnx_model if shipped_as_onnx else fg
    # Batches are folded in order, so the float sums add up exactly as in one process.
    records = map_batches(_compare_context, _compare_batch, (source, int_model), data, labels, batch_size, client)
    with Progress(data.shape[0], progress_enabled(progress), "comparing float, simulated, integer") as bar:
        done = 0
        for record in records:
            for float_name, (sums, peak) in record["rows"].items():
                row = rows[float_name]
                row.signal += sums[0]
                row.noise_sim += sums[1]
                row.noise_int += sums[2]
                row.agree += sums[3]
                row.elements += sums[4]
                row.local_mismatch += sums[5]
                row.local_elements += sums[6]
                row.saturated += sums[7]
                row.saturation_elements += sums[8]
                if peak is not None:
                    row.max_abs_accumulator = max(row.max_abs_accumulator or 0, peak)
                    row.headroom_bits = graph.profile.accumulator_bits - 1 - row.max_abs_accumulator.bit_length()
            max_int = max(max_int, record["max_int"])
            max_sim = max(max_sim, record["max_sim"])
            agree_int += record["agree_int"]
            agree_sim += record["agree_sim"]
            classifier = classifier and record["classifier"]
            out_power = [a + b for a, b in zip(out_power, record["output_power"])]
            for key, count in record["correct"].items():
                correct[key] += count
            done = min(done + batch_size, data.shape[0])
            bar.update(done)
    n = data.shape[0]
    accuracy = {k: v / n for k, v in correct.items()} if labels is not None and classifier else {}
    return CompareReport(graph.name, graph.profile.name, n, list(rows.values()),
                         agree_int / n if classifier else None, agree_sim / n if classifier else None,
                         max_int, max_sim, accuracy, output_sqnr_int=_sqnr_db(out_power[0], out_power[2]),
                         output_sqnr_sim=_sqnr_db(out_power[0], out_power[1]))


def _compare_context(fg: FloatGraph, int_model: Model):
    sim_graph, points = simulation_graph(fg, int_model)
    producers = {t: n for n in int_model.graph.nodes for t in n.outputs}
    # One float session and one simulation session for the whole pass, returning the quantization points.
    watched = list(dict.fromkeys([*int_model.graph.metadata["quantized"], *fg.outputs[:1]]))
    return (FloatSession(fg, watched), FloatSession(sim_graph, watched, fake_quant=points), int_model,
            producers)


def _compare_batch(context, batch, labels) -> dict:
    """One batch: per quantization point its float sums and integer counts, the output errors and top-1 counts."""
    float_session, simulation, int_model, producers = context
    fg = float_session.graph
    graph = int_model.graph
    meta = graph.metadata
    rescaled = meta.get("ptq", {}).get("rescaled", {})
    feeds = batch if isinstance(batch, Mapping) else {fg.inputs[0]: batch}
    ref = {**feeds, **float_session.run(feeds)}
    sim = {**feeds, **simulation.run(feeds)}
    trace = int_model.trace(batch, float_input=True)
    rows = {}
    for float_name, int_name in _real_points(meta):
        info = graph.tensors[int_name]
        perm = meta["source"][int_name][1]
        codes = _to_float_layout(trace.tensors[int_name], perm).astype(np.float64)
        f = ref[float_name].astype(np.float64)
        if float_name in rescaled:
            f = _as_rewritten(f, rescaled[float_name])
        s = sim[float_name].astype(np.float64)
        deq = (codes - info.zero_point) * info.scale
        local_mismatch = local_elements = saturated = saturation_elements = 0
        peak = None
        node = producers.get(int_name)
        if node is not None:
            ideal = _local_ideal(node, trace, graph, meta)
            if ideal is not None:
                local_mismatch, local_elements = int(np.sum(ideal != trace.tensors[int_name])), ideal.size
            stats = trace.stats.get(node.name, {})
            if stats.get("saturation_count") is not None:
                saturated, saturation_elements = int(stats["saturation_count"]), trace.tensors[int_name].size
            if "max_abs_accumulator" in stats:
                peak = int(stats["max_abs_accumulator"])
        rows[float_name] = ((float(np.sum(f * f)), float(np.sum((f - s) ** 2)), float(np.sum((f - deq) ** 2)),
                             int(np.sum(np.rint(s / info.scale) + info.zero_point == codes)), codes.size,
                             local_mismatch, local_elements, saturated, saturation_elements), peak)
    out_float, out_int = fg.outputs[0], graph.outputs[0]
    f_out = ref[out_float]
    info = graph.tensors[out_int]
    i_out = (trace.tensors[out_int].astype(np.float64) - info.zero_point) * info.scale
    s_out = sim[out_float]
    record = {"rows": rows, "max_int": float(np.max(np.abs(f_out - i_out))),
              "max_sim": float(np.max(np.abs(f_out - s_out))), "agree_int": 0, "agree_sim": 0, "correct": {},
              "classifier": f_out.ndim == 2,
              "output_power": (float(np.sum(np.square(f_out, dtype=np.float64))),
                               float(np.sum(np.square(f_out - s_out, dtype=np.float64))),
                               float(np.sum(np.square(f_out - i_out, dtype=np.float64))))}
    if f_out.ndim == 2:
        top_f = f_out.argmax(axis=1)
        record["agree_int"] = int(np.sum(i_out.argmax(axis=1) == top_f))
        record["agree_sim"] = int(np.sum(s_out.argmax(axis=1) == top_f))
        if labels is not None:
            record["correct"] = {"float": int(np.sum(top_f == labels)),
                                 "simulated": int(np.sum(s_out.argmax(axis=1) == labels)),
                                 "integer": int(np.sum(i_out.argmax(axis=1) == labels))}
    return record
