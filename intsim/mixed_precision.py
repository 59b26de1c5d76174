"""Automatic mixed precision (AMP): per-layer formats chosen for the least cost within an accuracy budget.

:func:`search_mixed_precision` gives every weighted layer (Conv, Gemm, MatMul by a constant) one of a
few candidate formats (``"w8a16"``, ``"w8a8"``, ``"w6a8"``, ``"w4a8"``, ...) so that the integer model
stays within ``max_accuracy_drop`` of the float model at the least cost, the cost being the weight
memory (``objective="size"``) or the bit operations ``sum(MACs x weight bits x activation bits)``
(``objective="bitops"``).  The walk follows the greedy Pareto search of AIMET's AMP, with every
point measured on intsim's integer datapath (white paper §3.7's "higher precision for that layer",
automated):

1. **Baseline.**  Every layer in the most expensive candidate; its metric bounds what the search
   can reach.
2. **Sensitivities.**  One layer at a time in each cheaper candidate, the rest at the baseline:
   the metric drop each move causes, end to end on the integer model.
3. **Walk.**  The moves sorted by drop per unit of cost saved; applying them in that order gives a
   chain of configurations from the baseline to the cheapest.  A binary search finds the longest
   prefix that keeps the metric above ``float - max_accuracy_drop``; the remaining moves are then
   tried one by one, each kept when the target still holds.

The metric is top-1 accuracy with ``labels``, otherwise top-1 agreement with the float model.  Every
configuration measured is kept in ``result.explored``; ``result.pareto`` is its non-dominated front
(cost against metric).  The found configuration is a ``layer_config`` for :func:`intsim.convert`
(:mod:`intsim.converter.layer_config`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from intsim.converter.layer_config import layer_config_toml
from intsim.converter.lowering import convert
from intsim.converter.steps import plan_steps, weighted
from intsim.errors import ValidationError
from intsim.floatgraph import FloatGraph
from intsim.floatgraph.execute import run_float
from intsim.floatgraph.passes import default_passes
from intsim.importers.onnx import import_onnx
from intsim.profiles import FORMAT_PATTERN, get_profile
from intsim.progress import Progress, progress_enabled
from intsim.runtime import Model

OBJECTIVES = ("size", "bitops")
DEFAULT_CANDIDATES = ("w8a16", "w8a8", "w6a8", "w4a8")


@dataclass(frozen=True)
class Layer:
    """A weighted layer: its node name, ONNX op type, weight count and multiply-accumulates per sample."""

    name: str
    op: str
    params: int
    macs: int


@dataclass
class Point:
    """One configuration measured on the integer datapath.

    ``formats`` maps every layer to ``(weight bits, activation bits)``; ``mean_weight_bits`` is
    weighted by the layers' weight counts; ``bitops`` is ``sum(MACs x w x a)`` per sample.
    """

    formats: dict
    metric: float
    mean_weight_bits: float
    bitops: int
    stage: str

    @property
    def layer_config(self) -> dict:
        return {name: {"weight_bits": w, "activation_bits": a} for name, (w, a) in self.formats.items()}

    def to_dict(self) -> dict:
        return {"metric": self.metric, "mean_weight_bits": self.mean_weight_bits, "bitops": self.bitops,
                "stage": self.stage, "formats": {n: f"w{w}a{a}" for n, (w, a) in self.formats.items()}}


@dataclass
class MixedPrecisionResult:
    """What :func:`search_mixed_precision` found.

    Attributes
    ----------
    layer_config : dict
        ``{layer name: {"weight_bits": w, "activation_bits": a}}`` for every weighted layer: pass it to
        :func:`intsim.convert` (or write it with :meth:`to_toml` for ``--layer-config``).
    model : Model
        The integer model of that configuration.
    metric, float_metric, target : float
        The found configuration's metric, the float model's, and ``float - max_accuracy_drop``.
    metric_name : str
        ``"accuracy"`` (with labels) or ``"agreement"`` (top-1 agreement with float).
    met : bool
        Whether ``metric >= target`` (False when even the baseline misses it; the result is then the
        baseline).
    mean_weight_bits : float
        Weight bits averaged over the weights (parameter-weighted).
    bitops : int
        ``sum(MACs x weight bits x activation bits)`` per sample over the weighted layers.
    pareto : list of Point
        The non-dominated configurations among those measured, cheapest first.
    explored : list of Point
        Every configuration measured, in order.
    sensitivities : list of dict
        ``{"node", "op", "format", "drop"}``: the metric drop of one layer moved to a cheaper
        format, the others at the baseline; worst first.
    layers : list of Layer
    objective : str
    seconds : float
    """

    layer_config: dict
    model: Model
    metric: float
    float_metric: float
    target: float
    metric_name: str
    met: bool
    mean_weight_bits: float
    bitops: int
    pareto: list
    explored: list
    sensitivities: list
    layers: list
    objective: str
    seconds: float
    baseline: Point = field(repr=False, default=None)

    def to_toml(self) -> str:
        """The layer configuration as TOML (``intsim convert --layer-config``)."""
        return layer_config_toml(self.layer_config)

    def table(self) -> str:
        """The Pareto front explored, as a plain-text table (cheapest first, the chosen point marked)."""
        header = ["", "mean w bits", "MBitOps", self.metric_name, "formats"]
        rows = []
        for p in self.pareto:
            mark = "*" if p.formats == self.chosen.formats else ""
            counts = {}
            for w, a in p.formats.values():
                counts[f"w{w}a{a}"] = counts.get(f"w{w}a{a}", 0) + 1
            rows.append([mark, f"{p.mean_weight_bits:.2f}", f"{p.bitops / 1e6:.1f}", f"{100 * p.metric:.2f}%",
                         " ".join(f"{k}x{v}" for k, v in sorted(counts.items()))])
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
        return (f"float {self.metric_name} {100 * self.float_metric:.2f}%, target {100 * self.target:.2f}%, "
                f"found {100 * self.metric:.2f}% at {self.mean_weight_bits:.2f} mean weight bits "
                f"({self.objective}); {len(self.explored)} configurations in {self.seconds:.0f} s\n" + "\n".join(lines))

    @property
    def chosen(self) -> Point:
        return next(p for p in self.explored if p.layer_config == self.layer_config)

    def to_dict(self) -> dict:
        return {"layer_config": self.layer_config, "metric": self.metric, "float_metric": self.float_metric,
                "target": self.target, "metric_name": self.metric_name, "met": self.met,
                "mean_weight_bits": self.mean_weight_bits, "bitops": self.bitops, "objective": self.objective,
                "seconds": self.seconds, "sensitivities": self.sensitivities,
                "pareto": [p.to_dict() for p in self.pareto], "explored": [p.to_dict() for p in self.explored]}


def parse_format(text: str, profile, where: str = "candidates") -> tuple[int, int]:
    """``"w4a8"`` -> ``(4, 8)``, checked against the profile's ``supported_formats``."""
    match = FORMAT_PATTERN.fullmatch(text) if isinstance(text, str) else None
    if match is None or not all(2 <= int(b) <= 16 for b in match.groups()):
        raise ValidationError(f"{where}: formats read \"w<bits>a<bits>\" with widths in [2, 16] (e.g. \"w4a8\"), "
                              f"found {text!r}")
    w, a = (int(b) for b in match.groups())
    if not profile.supports(w, a):
        raise ValidationError(f"{where}: format {text} is not supported by profile {profile.name!r} "
                              f"(supported_formats: {', '.join(profile.supported_formats)})")
    return w, a


def weighted_layers(fg: FloatGraph) -> list[Layer]:
    """The layers with weights of a folded float graph, with their weight and MAC counts per sample."""
    layers = []
    for step in plan_steps(fg):
        if not weighted(fg, step):
            continue
        node = step.nodes[0]
        weight = fg.constants[node.inputs[1]]
        spatial = math.prod(d for d in fg.shapes[node.outputs[0]][2:] if d is not None) \
            if node.op in ("Conv", "BatchNormalization") else 1
        macs = (weight.size // max(weight.shape[0], 1) if node.op == "BatchNormalization" else weight.size) * spatial
        layers.append(Layer(node.name, node.op, int(weight.size), int(macs)))
    return layers


def _top1(outputs: np.ndarray, where: str) -> np.ndarray:
    if outputs.ndim != 2:
        raise ValidationError(f"{where}: the search needs a classifier's [batch, classes] output, found shape "
                              f"{outputs.shape}")
    return outputs.argmax(axis=1)


def _batched(run, data: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([run(data[i:i + batch_size]) for i in range(0, len(data), batch_size)])


def search_mixed_precision(model, calibration, data, labels=None, profile="paper", candidates=DEFAULT_CANDIDATES,
                           max_accuracy_drop: float = 0.005, objective: str = "size", *, batch_size: int = 256,
                           progress: bool = True, **convert_args) -> MixedPrecisionResult:
    """Search per-layer formats that keep the integer model within ``max_accuracy_drop`` of float.

    Parameters
    ----------
    model : str, path, onnx.ModelProto or FloatGraph
        The float model (a classifier: one ``[batch, classes]`` output).
    calibration : array
        Calibration inputs for every conversion (:func:`intsim.convert`).
    data : array
        Inputs the configurations are measured on (keep them apart from a test set you report).
    labels : array of int, optional
        Class labels of ``data``: the metric is accuracy; without them, top-1 agreement with float.
    profile : str, path or Profile
        The chip; candidates outside its ``supported_formats`` are refused.
    candidates : sequence of str
        Formats a layer may take, ``"w<bits>a<bits>"`` (default ``w8a16, w8a8, w6a8, w4a8``).
    max_accuracy_drop : float
        The budget, as a fraction (0.005 = half a percentage point below the float metric).
    objective : {"size", "bitops"}
        What to minimise: weight bits (parameter-weighted) or ``sum(MACs x w x a)``.
    batch_size : int
        Samples per run.
    progress : bool
        A progress bar on stderr.
    **convert_args
        Passed to every :func:`intsim.convert` (``range_method``, ``pipeline``, ...).

    Returns
    -------
    MixedPrecisionResult
    """
    started = time.perf_counter()
    profile = get_profile(profile)
    if "layer_config" in convert_args:
        raise ValidationError("search_mixed_precision chooses the layer_config itself; do not pass one")
    if objective not in OBJECTIVES:
        raise ValidationError(f"objective must be one of {', '.join(OBJECTIVES)}, found {objective!r}")
    if isinstance(max_accuracy_drop, bool) or not isinstance(max_accuracy_drop, (int, float)) \
            or not 0 <= max_accuracy_drop < 1:
        raise ValidationError(f"max_accuracy_drop must be a fraction in [0, 1), found {max_accuracy_drop!r}")
    if isinstance(candidates, str) or not candidates:
        raise ValidationError(f"candidates must be a non-empty list of formats like \"w4a8\", found {candidates!r}")
    formats = sorted({parse_format(c, profile) for c in candidates})
    data = np.asarray(data)
    if data.dtype.kind != "f" or data.ndim == 0 or len(data) == 0:
        raise ValidationError(f"data must be a non-empty float array (samples first), found {data.dtype}{data.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
            raise ValidationError(f"labels must be {len(data)} integer class labels, found {labels.dtype}{labels.shape}")
    raw = model if isinstance(model, FloatGraph) else import_onnx(model, input_shapes=convert_args.get("input_shapes"))
    fg = default_passes(raw)
    if len(fg.inputs) != 1 or len(fg.outputs) != 1:
        raise ValidationError(f"search_mixed_precision needs a single-input, single-output model; it has "
                              f"{len(fg.inputs)} input(s) and {len(fg.outputs)} output(s)")
    layers = weighted_layers(fg)
    if not layers:
        raise ValidationError("search_mixed_precision: the model has no layer with weights to give a format")
    reference = _top1(_batched(lambda b: run_float(fg, [b])[fg.outputs[0]], data, batch_size), "float model")
    truth = labels if labels is not None else reference
    float_metric = float(np.mean(reference == truth))
    target = float_metric - max_accuracy_drop
    total_params = sum(layer.params for layer in layers)

    def size(fmt):
        return sum(layer.params * fmt[layer.name][0] for layer in layers)

    def bitops(fmt):
        return sum(layer.macs * fmt[layer.name][0] * fmt[layer.name][1] for layer in layers)

    # The objective first, the other measure breaking ties (a16 -> a8 saves no weight memory).
    def cost(fmt):
        return (size(fmt), bitops(fmt)) if objective == "size" else (bitops(fmt), size(fmt))

    measured: dict = {}
    explored: list[Point] = []
    bar = Progress(None, progress_enabled(progress), "mixed precision")

    def measure(fmt, stage):
        """The point of ``fmt`` ({layer: (w, a)}), converted and run once however often it is asked for."""
        key = tuple(sorted(fmt.items()))
        if key not in measured:
            config = {name: {"weight_bits": w, "activation_bits": a} for name, (w, a) in fmt.items()}
            int_model = convert(raw, calibration, profile, layer_config=config, progress=False, **convert_args)
            top = _top1(_batched(int_model.run, data, batch_size), "integer model")
            point = Point(dict(fmt), float(np.mean(top == truth)), size(fmt) / total_params, bitops(fmt), stage)
            measured[key] = (point, int_model)
            explored.append(point)
            bar.label = f"mixed precision: {len(explored)} configurations ({stage})"
        return measured[key][0]

    with bar:
        chosen = _walk(layers, formats, objective, cost, target, measure)
    pareto = _front(explored, cost)
    int_model = measured[tuple(sorted(chosen.formats.items()))][1]
    baseline = explored[0]
    return MixedPrecisionResult(chosen.layer_config, int_model, chosen.metric, float_metric, target,
                                "accuracy" if labels is not None else "agreement", chosen.metric >= target,
                                chosen.mean_weight_bits, chosen.bitops, pareto, explored,
                                _sensitivities(explored, baseline, layers), layers, objective,
                                time.perf_counter() - started, baseline)


def _walk(layers, formats, objective, cost, target, measure) -> Point:
    """Baseline, sensitivities, then the greedy walk (module docstring); returns the chosen point."""
    top_format = max(formats, key=lambda f: (f[0] * f[1], f) if objective == "bitops" else f)
    base = {layer.name: top_format for layer in layers}
    baseline = measure(base, "baseline")
    moves = []
    for layer in layers:
        for fmt in formats:
            trial = dict(base, **{layer.name: fmt})
            saved = np.subtract(cost(base), cost(trial))
            if fmt == top_format or tuple(saved) <= (0, 0):
                continue
            drop = baseline.metric - measure(trial, "sensitivity").metric
            moves.append((drop, tuple(saved), layer.name, fmt))
    # Least drop per unit of the objective saved first; moves that save only the tie-breaker go last.
    moves.sort(key=lambda m: ((m[0] / m[1][0]) if m[1][0] > 0 else math.inf, m[0] / max(m[1][1], 1), m[2]))

    def walk(count):
        fmt = dict(base)
        for _, _, name, f in moves[:count]:
            if cost({**fmt, name: f}) < cost(fmt):
                fmt[name] = f
        return fmt

    if baseline.metric < target:
        return baseline
    lo, hi = 0, len(moves)  # invariant: prefix lo meets the target
    if measure(walk(hi), "walk").metric >= target:
        lo = hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if measure(walk(mid), "walk").metric >= target:
            lo = mid
        else:
            hi = mid
    current = walk(lo)
    for _, _, name, f in moves[lo:]:
        trial = {**current, name: f}
        if cost(trial) < cost(current) and measure(trial, "refine").metric >= target:
            current = trial
    return measure(current, "refine")


def _sensitivities(explored, baseline, layers) -> list[dict]:
    """The sensitivity points as ``{"node", "op", "format", "drop"}``, worst first."""
    ops = {layer.name: layer.op for layer in layers}
    rows = []
    for p in explored:
        if p.stage != "sensitivity":
            continue
        (name, (w, a)), = [(n, f) for n, f in p.formats.items() if f != baseline.formats[n]]
        rows.append({"node": name, "op": ops[name], "format": f"w{w}a{a}", "drop": baseline.metric - p.metric})
    return sorted(rows, key=lambda r: -r["drop"])


def _front(points: list[Point], cost) -> list[Point]:
    """The points no other point beats on both cost and metric, cheapest first."""
    ordered = sorted(points, key=lambda p: (cost(p.formats), -p.metric))
    front, best = [], -math.inf
    for p in ordered:
        if p.metric > best:
            front.append(p)
            best = p.metric
    return front
