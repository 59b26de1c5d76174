"""Accumulator sweep: per layer, the accumulator width the data needs, overflow counts under saturate
and wrap at each width, and end-to-end agreement and accuracy per width (white paper §2.1)."""

from __future__ import annotations

import dataclasses
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from intsim.errors import ValidationError
from intsim.graph import Graph
from intsim.graph.ops import MAC_OPS, REQUANTIZING_OPS
from intsim.plotting import inline_png, pyplot
from intsim.progress import Progress, progress_enabled
from intsim.runtime import Model

from intsim.distributed.data import as_rows
from intsim.distributed.tasks import map_batches
from intsim.hwval.variants import NodeSetup


# --------------------------------------------------------------------------
# Accumulator sweep.
# --------------------------------------------------------------------------


@dataclass
class SweepLayer:
    """One multiply-accumulate node: what its accumulators need on the swept data.

    ``overflows[policy][bits]`` counts outputs whose accumulation left ``bits``
    when the node runs alone on the full-width run's inputs. ``needed_bits`` is
    the narrowest swept width from which every wider swept width is clean;
    ``exact_bits`` the narrowest width of 8..32, swept or not, at which no
    partial sum leaves the range (``None``: not even 32).
    """

    node: str
    op: str
    max_abs_accumulator: int
    final_bits: int
    needed_bits: int | None
    clamped_fraction: float
    headroom_bits: int
    overflows: dict
    exact_bits: int | None = None


@dataclass
class SweepWidth:
    """The whole model run end to end with ``bits``-bit accumulators under ``policy``."""

    bits: int
    policy: str
    overflowing_layers: int
    overflowing_outputs: int
    agreement: float
    accuracy: float | None


@dataclass
class SweepReport:
    """The result of :func:`sweep`: ``table()``, ``answer()``, ``to_dict()``, ``plot(path)``, ``to_html(path)``.

    ``clamped`` maps every node that clamps (MAC, add, mean, ...) to ``(op, fraction of its outputs the
    requantization clamp changed)`` in the 32-bit run.
    """

    model: str
    profile: str
    samples: int
    acc_bits: list
    question_bits: int
    layers: list
    widths: list
    accuracy_full: float | None = None
    clamped: dict = field(default_factory=dict)
    # The weight / activation bit-width sweep run beside it (a BitWidthReport), shown in to_html and plot.
    bit_widths: object = None

    def safe_bits(self) -> int | None:
        """The narrowest swept width at which no layer overflows on this data under either policy."""
        needed = [layer.needed_bits for layer in self.layers]
        if any(n is None for n in needed):
            return None
        return max(needed, default=min(self.acc_bits))

    def answer(self) -> str:
        """Can the MAC array use ``question_bits``-bit accumulators for this model?"""
        q = self.question_bits
        ends = {w.policy: w for w in self.widths if w.bits == q}
        widest = max(self.layers, key=lambda layer: layer.needed_bits or 99, default=None)
        over = [layer.node for layer in self.layers if any(layer.overflows[p].get(q, 0) for p in layer.overflows)]
        agree = ", ".join(f"{p} {100 * w.agreement:.2f}%" for p, w in ends.items())
        head = f"Can the MAC array use {q}-bit accumulators for {self.model!r}? "
        if widest is None:
            return head + "Yes: the model has no multiply-accumulate layers."
        need = "more than the widest swept" if widest.needed_bits is None else f"{widest.needed_bits} bits"
        safe = self.safe_bits()
        tail = f" (on these {self.samples} samples; the narrowest width without overflow is " + \
            (f"{safe} bits)" if safe is not None else "above the swept range)")
        final = max(layer.final_bits for layer in self.layers)
        if safe is None or final < safe:
            tail += (f". With wrap-around accumulators only the final sums must fit (two's complement: transient "
                     f"overflows cancel), and they need {final} bits")
        if not over:
            return (head + f"Yes: no layer's accumulator leaves {q} bits; the widest need is {need} "
                    f"({widest.node!r}); top-1 agreement with the 32-bit run: {agree}" + tail + ".")
        return (head + f"No: {len(over)} layer(s) overflow {q} bits ({', '.join(repr(n) for n in over[:4])}"
                + (", ..." if len(over) > 4 else "") + f"); top-1 agreement with the 32-bit run: {agree}" + tail + ".")

    def table(self) -> str:
        header = ["node", "op", "max |acc|", "final-sum bits", "bits needed", "exact bits", "clamped", "headroom"]
        rows = [[x.node, x.op, str(x.max_abs_accumulator), str(x.final_bits),
                 ">" + str(max(self.acc_bits)) if x.needed_bits is None else str(x.needed_bits),
                 ">32" if x.exact_bits is None else str(x.exact_bits),
                 f"{100 * x.clamped_fraction:.2f}%", str(x.headroom_bits)] for x in self.layers]
        lines = [f"accumulator sweep of {self.model!r} (profile {self.profile!r}) on {self.samples} samples",
                 *text_columns(header, rows), ""]
        header = ["acc bits", "policy", "layers overflowing", "outputs overflowing", "top-1 agreement", "accuracy"]
        rows = [[str(w.bits), w.policy, str(w.overflowing_layers), str(w.overflowing_outputs),
                 f"{100 * w.agreement:.2f}%", "" if w.accuracy is None else f"{100 * w.accuracy:.2f}%"]
                for w in self.widths]
        lines += text_columns(header, rows)
        if self.accuracy_full is not None:
            lines.append(f"accuracy of the 32-bit run: {100 * self.accuracy_full:.2f}%")
        return "\n".join(lines + [self.answer()])

    def to_dict(self) -> dict:
        return {"model": self.model, "profile": self.profile, "samples": self.samples, "acc_bits": self.acc_bits,
                "question_bits": self.question_bits, "answer": self.answer(), "safe_bits": self.safe_bits(),
                "accuracy_full": self.accuracy_full,
                "clamped": {name: {"op": op, "fraction": frac} for name, (op, frac) in self.clamped.items()},
                "layers": [dataclasses.asdict(x) for x in self.layers],
                "widths": [dataclasses.asdict(w) for w in self.widths],
                **({} if self.bit_widths is None else {"bit_widths": self.bit_widths.to_dict()})}

    def plot(self, path) -> None:
        """Bits needed per layer and top-1 agreement per width, as a PNG (needs matplotlib)."""
        plt = pyplot()
        panels = 3 if self.bit_widths is not None else 2
        fig, (left, right, *pairs) = plt.subplots(1, panels, figsize=(max(8, 0.5 * len(self.layers) + 5) + 4 * (panels - 2), 4))
        x = np.arange(len(self.layers))
        cap = max(self.acc_bits) + 1
        left.bar(x, [cap if v.needed_bits is None else v.needed_bits for v in self.layers], color="tab:blue",
                 label="no partial sum overflows")
        left.plot(x, [v.final_bits for v in self.layers], "k_", markersize=14, label="final sum fits")
        left.axhline(self.question_bits, color="tab:red", linestyle="--", label=f"{self.question_bits} bits")
        left.set_xticks(x, [v.node for v in self.layers], rotation=90, fontsize=6)
        left.set_ylabel("accumulator bits needed")
        left.legend(fontsize=7, loc="lower right")
        for policy, style in (("saturate", "o-"), ("wrap", "s--")):
            ws = [w for w in self.widths if w.policy == policy]
            right.plot([w.bits for w in ws], [100 * w.agreement for w in ws], style, label=policy)
        right.set_xlabel("accumulator bits")
        right.set_ylabel("top-1 agreement with 32 bits (%)")
        right.legend()
        left.set_title(f"{self.model}, profile {self.profile}: per layer", fontsize=9, wrap=True)
        right.set_title(f"end to end, {self.samples} samples", fontsize=9)
        for axis in pairs:
            rows = self.bit_widths.rows
            axis.bar(range(len(rows)), [100 * r.agreement for r in rows], color="tab:green")
            axis.set_xticks(range(len(rows)), [f"W{r.weight_bits}A{r.activation_bits}" for r in rows], rotation=90,
                            fontsize=7)
            axis.set_ylabel("top-1 agreement with float (%)")
            axis.set_title("weight / activation bits", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def to_html(self, path) -> None:
        """One self-contained page: the answer, per-layer saturation and headroom, overflow counts per width,
        end-to-end agreement, and the plot (inlined) when matplotlib is installed."""
        q = html.escape
        widths = self.acc_bits
        head = "".join(f"<th>{h}</th>" for h in ["node", "op", "max |acc|", "final-sum bits", "bits needed",
                                                 "exact bits", "clamped", "headroom"]
                       + [f"ovf {b} sat/wrap" for b in widths])
        rows = "".join(
            "<tr>" + "".join(f"<td>{q(str(c))}</td>" for c in [
                x.node, x.op, x.max_abs_accumulator, x.final_bits,
                ">" + str(max(widths)) if x.needed_bits is None else x.needed_bits,
                ">32" if x.exact_bits is None else x.exact_bits,
                f"{100 * x.clamped_fraction:.2f}%", x.headroom_bits]
                + [f"{x.overflows['saturate'].get(b, '')}/{x.overflows['wrap'].get(b, '')}" for b in widths])
            + "</tr>" for x in self.layers)
        ends = "".join(f"<tr><td>{w.bits}</td><td>{w.policy}</td><td>{w.overflowing_layers}</td>"
                       f"<td>{w.overflowing_outputs}</td><td>{100 * w.agreement:.2f}%</td>"
                       f"<td>{'' if w.accuracy is None else f'{100 * w.accuracy:.2f}%'}</td></tr>" for w in self.widths)
        clamped = "".join(f"<tr><td>{q(name)}</td><td>{q(op)}</td><td>{100 * frac:.2f}%</td></tr>"
                          for name, (op, frac) in self.clamped.items())
        image = inline_png(self.plot, "sweep plot")
        pairs = "" if self.bit_widths is None else (
            "<h2>Weight and activation bits</h2><table><tr>"
            + "".join(f"<th>{q(h)}</th>" for h in ["W bits", "A bits", "top-1 agreement with float", "accuracy",
                                                   "final-sum acc bits", "widest layer"]) + "</tr>"
            + "".join(f"<tr><td>{r.weight_bits}</td><td>{r.activation_bits}</td><td>{100 * r.agreement:.2f}%</td>"
                      f"<td>{'' if r.accuracy is None else f'{100 * r.accuracy:.2f}%'}</td><td>{r.final_bits}</td>"
                      f"<td>{q(r.widest_layer)}</td></tr>" for r in self.bit_widths.rows) + "</table>")
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>intsim hardware report</title>"
            "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}</style>"
            f"</head><body><h1>{q(self.model)}: accumulators and saturation</h1>"
            f"<p><b>{q(self.answer())}</b></p>"
            f"<p>profile {q(self.profile)}, {self.samples} samples. <i>clamped</i>: fraction of the layer's outputs "
            "the requantization clamp changed (32-bit run); <i>headroom</i>: profile accumulator bits - 1 - "
            "bit length of max |acc|; <i>bits needed</i>: narrowest width at which the layer, run alone on the "
            "32-bit run's inputs, never leaves the accumulator range (among the swept widths; <i>exact bits</i>: among "
            "all of 8..32); <i>ovf</i>: outputs that overflowed.</p>"
            f"<h2>Multiply-accumulate layers</h2><table><tr>{head}</tr>{rows}</table>"
            f"<h2>Saturation: fraction of outputs clamped</h2><table><tr><th>node</th><th>op</th><th>clamped</th>"
            f"</tr>{clamped}</table>"
            "<h2>End to end</h2><table><tr><th>acc bits</th><th>policy</th><th>layers overflowing</th>"
            f"<th>outputs overflowing</th><th>top-1 agreement</th><th>accuracy</th></tr>{ends}</table>"
            f"{pairs}{image}</body></html>"
        )
        Path(path).write_text(page, encoding="utf-8")


def text_columns(header, rows) -> list[str]:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]


def top1(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(outputs.shape[0], -1).argmax(axis=1)


MIN_ACC_BITS, MAX_ACC_BITS = 8, 32


def _narrowest_clean(setup: NodeSetup, profile, node_inputs: dict, lowest: int | None) -> int | None:
    """The narrowest width in ``lowest``..32 at which ``setup``'s node, run alone on ``node_inputs`` with
    wrapping accumulators, has no partial sum leave the range; ``None`` where even 32 bits overflow (or
    ``lowest`` is ``None`` already).  A sum that fits ``b`` bits fits ``b + 1``: a binary search."""
    def overflows(bits):
        variant = setup.replace(profile=profile.replace(accumulator_bits=bits, overflow="wrap"))
        return variant.run(node_inputs).stats[setup.node.name]["overflow_count"] > 0

    if lowest is None or overflows(MAX_ACC_BITS):
        return None
    lo, hi = lowest, MAX_ACC_BITS
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if overflows(mid) else (lo, mid)
    return lo


def sweep(model: Model, data, labels=None, acc_bits=range(16, 33), *, float_input: bool = True,
          question_bits: int = 24, batch_size: int = 256, progress: bool = True, client=None) -> SweepReport:
    """Accumulator width sweep: what each layer needs, and what narrower accumulators do end to end.

    The reference is the model run with 32-bit accumulators.  Per
    multiply-accumulate layer, the node is re-run alone on the reference's
    inputs at every width under ``saturate`` and ``wrap`` and the outputs whose
    accumulation left the range are counted (``bits needed`` is the narrowest
    width with none; partial sums count, not only the final one).  End to end,
    the whole model runs at every width and policy; the report gives the
    layers that overflowed, top-1 agreement with the reference and, with
    ``labels``, accuracy.  White paper §2.1 (accumulator width).

    Parameters
    ----------
    model : Model
    data : array
        Samples first: floats (quantized as :meth:`Model.run` does) or, with ``float_input=False``, codes.
    labels : int array, optional
    acc_bits : iterable of int
        Widths to sweep, each in 8..32.
    question_bits : int
        The width :meth:`SweepReport.answer` is about.
    progress : bool
        Draw a progress bar on stderr (:func:`intsim.config.progress_enabled`).
    client : dask.distributed.Client, optional
        Spread the batches over a cluster's workers (:mod:`intsim.distributed`); ``None`` runs here.
        The report is the same either way: every batch yields integer counts.
    """
    bits_list = sorted({int(b) for b in acc_bits})
    if not bits_list or bits_list[0] < 8 or bits_list[-1] > 32:
        raise ValidationError(f"sweep: accumulator widths must lie in [8, 32], found {bits_list}")
    data = as_rows(data)
    if data.ndim == 0 or data.shape[0] == 0:
        raise ValidationError(f"sweep: data must hold at least one sample, found shape {data.shape}")
    model.check_input_shapes(data.shape, where="sweep data for input")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (data.shape[0],):
            raise ValidationError(f"sweep: labels must have shape ({data.shape[0]},), found {labels.shape}")
    graph = model.graph
    mac_nodes = [n for n in graph.nodes if n.op in MAC_OPS]
    stats = {n.name: {"peak": 0, "clamped": 0, "outputs": 0} for n in graph.nodes}
    overflows = {n.name: {p: dict.fromkeys(bits_list, 0) for p in ("saturate", "wrap")} for n in mac_nodes}
    ends = {(b, p): {"layers": set(), "outputs": 0, "agree": 0, "correct": 0} for b in bits_list
            for p in ("saturate", "wrap")}
    exact = {n.name: MIN_ACC_BITS for n in mac_nodes}
    correct_full, done = 0, 0
    with Progress(data.shape[0], progress_enabled(progress), "sweeping accumulator widths") as bar:
        for record in map_batches(_sweep_context, _sweep_batch, (model, bits_list, float_input), data, labels,
                                  batch_size, client):
            correct_full += record["correct_full"]
            for name, (peak, clamped, outputs) in record["stats"].items():
                s = stats[name]
                s["peak"] = max(s["peak"], peak)
                s["clamped"] += clamped
                s["outputs"] += outputs
            for name, counts in record["overflows"].items():
                for (policy, bits), count in counts.items():
                    overflows[name][policy][bits] += count
            for name, bits in record["exact"].items():  # the widest need of any batch; None: not even 32 bits
                exact[name] = None if bits is None or exact[name] is None else max(exact[name], bits)
            for key, (overflowing, outputs, agree, correct) in record["ends"].items():
                end = ends[key]
                end["layers"].update(overflowing)
                end["outputs"] += outputs
                end["agree"] += agree
                end["correct"] += correct
            done += record["samples"]
            bar.update(done)
    n = data.shape[0]
    layers = []
    for node in mac_nodes:
        s, ovf = stats[node.name], overflows[node.name]
        clean = [b for b in bits_list if not any(ovf[p][b] for p in ovf)]
        # the narrowest width from which every wider swept width is clean too
        needed = None
        for b in reversed(bits_list):
            if b not in clean:
                break
            needed = b
        layers.append(SweepLayer(node.name, node.op, s["peak"], s["peak"].bit_length() + 1, needed,
                                 s["clamped"] / s["outputs"],
                                 graph.profile.accumulator_bits - 1 - s["peak"].bit_length(), ovf, exact[node.name]))
    widths = [SweepWidth(b, p, len(e["layers"]), e["outputs"], e["agree"] / n,
                         e["correct"] / n if labels is not None else None) for (b, p), e in ends.items()]
    widths.sort(key=lambda w: (w.policy, w.bits))
    clamped = {node.name: (node.op, stats[node.name]["clamped"] / stats[node.name]["outputs"])
               for node in graph.nodes if node.op in REQUANTIZING_OPS}
    return SweepReport(graph.name, graph.profile.name, n, bits_list, question_bits, layers, widths,
                       correct_full / n if labels is not None else None, clamped)


def _sweep_context(model: Model, bits_list: list, float_input: bool):
    graph = model.graph
    full = with_profile(graph, graph.profile.replace(accumulator_bits=32, overflow="wrap"))
    mac_nodes = [n for n in graph.nodes if n.op in MAC_OPS]
    models = {(b, p): Model(with_profile(graph, graph.profile.replace(accumulator_bits=b, overflow=p)))
              for b in bits_list for p in ("saturate", "wrap")}
    setups = {n.name: NodeSetup.of(graph, n) for n in mac_nodes}
    return graph, full, mac_nodes, models, setups, Model(full), bits_list, float_input


def _sweep_batch(context, batch, labels) -> dict:
    """One batch's integer counts: the reference's peaks and clamps, per-node overflows, end-to-end results."""
    graph, full, mac_nodes, models, setups, reference, bits_list, float_input = context
    ref = reference.trace(batch, float_input=float_input)
    top = top1(ref.tensors[graph.outputs[0]])
    stats = {node.name: (int(ref.stats[node.name].get("max_abs_accumulator", 0)),
                         int(ref.stats[node.name].get("saturation_count", 0)), int(ref.tensors[node.outputs[0]].size))
             for node in graph.nodes}
    # Until a step of the hardware order leaves the range, the partial sums are the exact ones under
    # either policy (and at every width): an output overflows, saturating or wrapping, exactly when
    # some exact partial sum leaves the range.  So one (wrap) run per width counts both policies, and
    # from the node's exact width up the count is 0 without a run.
    overflows, exact = {}, {}
    for node in mac_nodes:
        node_inputs = {t: ref.tensors[t] for t in node.inputs}
        setup = setups[node.name]
        exact[node.name] = lowest_clean = _narrowest_clean(setup, full.profile, node_inputs, MIN_ACC_BITS)
        per_width = {}
        for bits in bits_list:
            per_width[bits] = 0
            if lowest_clean is None or bits < lowest_clean:
                variant = setup.replace(profile=full.profile.replace(accumulator_bits=bits, overflow="wrap"))
                per_width[bits] = int(variant.run(node_inputs).stats[node.name]["overflow_count"])
        overflows[node.name] = {(policy, bits): count for policy in ("saturate", "wrap")
                                for bits, count in per_width.items()}
    ends = {}
    for (bits, policy), variant_model in models.items():
        key = bits, policy
        if not any(overflows[node.name][policy, bits] for node in mac_nodes):
            # No node overflows on the reference's inputs at this width (nor, then, at 32 bits), and only the
            # MAC nodes read the accumulator: node by node the run sees the reference's inputs, computes its
            # exact accumulators and ends on the reference's outputs.
            ends[key] = ([], 0, int(batch.shape[0]), 0 if labels is None else int(np.sum(top == labels)))
            continue
        trace = variant_model.trace(batch, float_input=float_input)
        counts = [int(trace.stats[node.name]["overflow_count"]) for node in mac_nodes]
        their = top1(trace.tensors[graph.outputs[0]])
        ends[key] = ([node.name for node, count in zip(mac_nodes, counts) if count], sum(counts),
                     int(np.sum(their == top)), 0 if labels is None else int(np.sum(their == labels)))
    return {"correct_full": 0 if labels is None else int(np.sum(top == labels)), "stats": stats,
            "overflows": overflows, "exact": exact, "ends": ends, "samples": int(batch.shape[0])}


def with_profile(graph: Graph, profile) -> Graph:
    return Graph(graph.name, profile, graph.tensors, graph.nodes, graph.inputs, graph.outputs, graph.metadata)
