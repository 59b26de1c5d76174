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
   prefix that keeps the metric above ``float - max_accuracy_drop``; the remaining moves whose own
   drop fits in the slack left are then tried one by one, each kept when the target still holds.
4. **Verify and back off.**  The walk fits its configuration to the images it measures on, so the
   found point is measured again on validation images the search never saw (``validation``, or a
   seeded ``validation_split`` of ``data``).  It must keep the *upper confidence bound* of its drop
   below the budget (:func:`paired_drop_bound`).  Where it does not, the walk backs off along its own
   chain: the longest prefix of the sorted moves that holds on both sets (a binary search; the moves
   undone are the worst per unit of cost saved, i.e. the most sensitive layers get their precision
   back), then the moves after it are tried one by one, each kept when both sets still hold.

The metric is top-1 accuracy with ``labels``, otherwise top-1 agreement with the float model.  Every
configuration measured is kept in ``result.explored``; ``result.pareto`` is its non-dominated front
(cost against metric).  The found configuration is a ``layer_config`` for :func:`intsim.convert`
(:mod:`intsim.converter.layer_config`).  The calibration data is run once: every other configuration
reuses its statistics (``plan_quantization(statistics=...)``), the ranges chosen for each tensor's own
format.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from intsim.converter.layer_config import layer_config_toml
from intsim.converter.lowering import lower, plan_quantization
from intsim.converter.steps import plan_steps, weighted
from intsim.errors import ValidationError
from intsim.floatgraph import FloatGraph
from intsim.floatgraph.ort_session import FloatSession
from intsim.floatgraph.patterns import simplify
from intsim.importers.onnx import import_onnx
from intsim.profiles import FORMAT_PATTERN, get_profile
from intsim.progress import Progress, progress_enabled
from intsim.runtime import Model

OBJECTIVES = ("size", "bitops")
# w8a16 is left out by default: 16-bit activations take the unfused convolution path, and with them a search
# on a shipped model takes tens of minutes instead of a few (docs/mixed_precision.md, "Cost").
DEFAULT_CANDIDATES = ("w8a8", "w6a8", "w4a8")


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
    weighted by the layers' weight counts; ``bitops`` is ``sum(MACs x w x a)`` per sample.  The
    ``validation_*`` fields are set once the point is measured on the validation images: its metric
    there, its drop below float and that drop's upper confidence bound (:func:`paired_drop_bound`).
    """

    formats: dict
    metric: float
    mean_weight_bits: float
    bitops: int
    stage: str
    validation_metric: float | None = None
    validation_drop: float | None = None
    validation_bound: float | None = None

    @property
    def layer_config(self) -> dict:
        return {name: {"weight_bits": w, "activation_bits": a} for name, (w, a) in self.formats.items()}

    def to_dict(self) -> dict:
        return {"metric": self.metric, "mean_weight_bits": self.mean_weight_bits, "bitops": self.bitops,
                "stage": self.stage, "validation_metric": self.validation_metric,
                "validation_drop": self.validation_drop, "validation_bound": self.validation_bound,
                "formats": {n: f"w{w}a{a}" for n, (w, a) in self.formats.items()}}


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
        Whether ``metric >= target`` and, with validation, ``validation_bound <= max_accuracy_drop``
        (False when even the baseline misses them; the result is then the baseline).
    validation_metric, validation_float_metric : float or None
        The found configuration's metric on the validation images, and the float model's there
        (None without validation).
    validation_drop, validation_bound : float or None
        Its drop below float on the validation images, and that drop's one-sided upper bound at
        ``confidence`` (:func:`paired_drop_bound`).
    validation_samples : int
        Validation images (0: none).
    confidence : float
    max_accuracy_drop : float
    walked : Point
        The point the walk found on the search data, before the validation check (the chosen point
        where it held; a cheaper one where the search backed off).
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
    validation_metric: float | None = None
    validation_float_metric: float | None = None
    validation_drop: float | None = None
    validation_bound: float | None = None
    validation_samples: int = 0
    confidence: float = 0.99
    max_accuracy_drop: float = 0.005
    walked: Point = field(repr=False, default=None)

    def to_toml(self) -> str:
        """The layer configuration as TOML (``intsim convert --layer-config``)."""
        return layer_config_toml(self.layer_config)

    def table(self) -> str:
        """The Pareto front explored, as a plain-text table (cheapest first, the chosen point marked)."""
        header = ["", "mean w bits", "MBitOps", self.metric_name, "validation drop (bound)", "formats"]
        rows = []
        for p in self.pareto:
            mark = "*" if p.formats == self.chosen.formats else ""
            checked = "" if p.validation_drop is None else \
                f"{100 * p.validation_drop:+.2f} ({100 * p.validation_bound:+.2f}) pt"
            rows.append([mark, f"{p.mean_weight_bits:.2f}", f"{p.bitops / 1e6:.1f}", f"{100 * p.metric:.2f}%",
                         checked, " ".join(f"{k}x{v}" for k, v in format_counts(p).items())])
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
        checked = "" if self.validation_drop is None else \
            (f"; on {self.validation_samples} validation samples a drop of {100 * self.validation_drop:+.2f} pt, "
             f"at most {100 * self.validation_bound:+.2f} pt at {100 * self.confidence:.0f}% confidence "
             f"(budget {100 * self.max_accuracy_drop:.2f} pt)")
        return (f"float {self.metric_name} {100 * self.float_metric:.2f}%, target {100 * self.target:.2f}%, "
                f"found {100 * self.metric:.2f}% at {self.mean_weight_bits:.2f} mean weight bits "
                f"({self.objective}){checked}; {len(self.explored)} configurations in {self.seconds:.0f} s"
                + ("" if self.met else "; the budget is NOT met") + "\n" + "\n".join(lines))

    @property
    def chosen(self) -> Point:
        return next(p for p in self.explored if p.layer_config == self.layer_config)

    def to_dict(self) -> dict:
        return {"layer_config": self.layer_config, "metric": self.metric, "float_metric": self.float_metric,
                "target": self.target, "metric_name": self.metric_name, "met": self.met,
                "mean_weight_bits": self.mean_weight_bits, "bitops": self.bitops, "objective": self.objective,
                "seconds": self.seconds, "validation_metric": self.validation_metric,
                "validation_float_metric": self.validation_float_metric, "validation_drop": self.validation_drop,
                "validation_bound": self.validation_bound, "validation_samples": self.validation_samples,
                "confidence": self.confidence, "max_accuracy_drop": self.max_accuracy_drop,
                "walked": self.walked.to_dict(),
                "sensitivities": self.sensitivities,
                "pareto": [p.to_dict() for p in self.pareto], "explored": [p.to_dict() for p in self.explored]}


def format_counts(point: Point) -> dict:
    """``{"w4a8": layers, ...}`` of a point, sorted by format name."""
    counts = {}
    for w, a in point.formats.values():
        counts[f"w{w}a{a}"] = counts.get(f"w{w}a{a}", 0) + 1
    return dict(sorted(counts.items()))


def paired_drop_bound(float_correct, int_correct, confidence: float) -> tuple[float, float]:
    """The metric drop of the integer model below float on the same samples, and its one-sided upper
    confidence bound.

    The two models are scored on the same samples, so the difference is paired (McNemar): of ``n``
    samples, ``b`` are right in float and wrong in integer, ``c`` the reverse.  The drop is
    ``(b - c) / n``; its standard error is that of the mean of the per-sample differences
    (``+1, -1, 0``), ``sqrt(b + c - (b - c)**2 / n) / n``, which depends only on the discordant
    samples, not on the accuracy itself (so a few hundred samples bound a drop well when the models
    rarely disagree).  The bound is ``drop + z * se`` with ``z`` the standard normal quantile of
    ``confidence`` (0.9: 1.28; 0.5: 0, the drop itself): the normal approximation, which holds
    once a few dozen samples are discordant and errs on the safe side below that (the bound cannot
    fall below the drop).

    Parameters
    ----------
    float_correct, int_correct : array of bool
        Per sample, whether the float and the integer model got it right (top-1 agreement with float:
        ``float_correct`` all True).
    confidence : float
        In [0.5, 1).

    Returns
    -------
    (drop, bound) : tuple of float
    """
    float_correct = np.asarray(float_correct, bool)
    int_correct = np.asarray(int_correct, bool)
    if float_correct.shape != int_correct.shape or float_correct.ndim != 1 or len(float_correct) == 0:
        raise ValidationError(f"paired_drop_bound: two equal non-empty 1-D arrays of booleans expected, found shapes "
                              f"{float_correct.shape} and {int_correct.shape}")
    n = len(float_correct)
    b = int(np.count_nonzero(float_correct & ~int_correct))
    c = int(np.count_nonzero(int_correct & ~float_correct))
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    return (b - c) / n, (b - c) / n + NormalDist().inv_cdf(confidence) * se


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


def _samples(data, labels, what: str):
    """``data`` (and ``labels``) checked: a non-empty float array, integer labels of the same length."""
    data = np.asarray(data)
    if data.dtype.kind != "f" or data.ndim == 0 or len(data) == 0:
        raise ValidationError(f"{what} must be a non-empty float array (samples first), found {data.dtype}{data.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
            raise ValidationError(f"{what} labels must be {len(data)} integer class labels, found "
                                  f"{labels.dtype}{labels.shape}")
    return data, labels


def split_validation(data, labels, validation, validation_split: float):
    """``(search data, search labels, validation data, validation labels)``: ``validation`` as given
    (``(x, y)``, or ``x`` / ``(x,)`` without labels), else a seeded random ``validation_split`` of
    ``data`` (0: no validation, the last two None)."""
    data, labels = _samples(data, labels, "data")
    if validation is not None:
        parts = tuple(validation) if isinstance(validation, (tuple, list)) else (validation,)
        if len(parts) not in (1, 2) or (len(parts) == 2) != (labels is not None):
            raise ValidationError("validation must be (inputs, labels) when the search has labels, else inputs "
                                  f"alone; found {len(parts)} part(s) with{'out' if labels is None else ''} labels")
        return (data, labels, *_samples(parts[0], parts[1] if len(parts) == 2 else None, "validation"))
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) \
            or not 0 <= validation_split < 1:
        raise ValidationError(f"validation_split must be a fraction in [0, 1), found {validation_split!r}")
    held = round(len(data) * validation_split)
    if validation_split == 0:
        return data, labels, None, None
    if not 1 <= held < len(data):
        raise ValidationError(f"validation_split {validation_split} of {len(data)} samples leaves no sample on one "
                              "side; give more data or validation=(x, y)")
    order = np.random.default_rng(0).permutation(len(data))
    search, check = np.sort(order[held:]), np.sort(order[:held])
    if labels is None:
        return data[search], None, data[check], None
    return data[search], labels[search], data[check], labels[check]


def search_mixed_precision(model, calibration, data, labels=None, profile="paper", candidates=DEFAULT_CANDIDATES,
                           max_accuracy_drop: float = 0.005, objective: str = "size", *, validation=None,
                           validation_split: float = 0.5, confidence: float = 0.99, batch_size: int = 256,
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
        Formats a layer may take, ``"w<bits>a<bits>"`` (default ``w8a8, w6a8, w4a8``; add ``w8a16`` where the chip has it).
    max_accuracy_drop : float
        The budget, as a fraction (0.005 = half a percentage point below the float metric).
    objective : {"size", "bitops"}
        What to minimise: weight bits (parameter-weighted) or ``sum(MACs x w x a)``.
    validation : (inputs, labels), optional
        Samples the walk never measures on, where the found configuration must hold the budget with
        ``confidence`` (backing off otherwise; module docstring).  Labels exactly when ``labels`` is
        given.  Best from data the model was not trained on: a model's own training images overstate
        how well a quantized model does.
    validation_split : float
        Without ``validation``: the fraction of ``data`` (a seeded random choice) held out as validation
        (default 0.5; 0: no validation, the walk's point is returned as it is).
    confidence : float
        In [0.5, 1): the one-sided confidence that the validation drop is within budget, at each look
        (:func:`paired_drop_bound`; default 0.99, for the 10 to 30 points the back-off looks at; 0.5 asks
        only that the measured drop be within it).
    batch_size : int
        Samples per run.
    progress : bool
        A progress bar on stderr.
    **convert_args
        Passed to every conversion (:func:`intsim.convert`: ``range_method``, ``pipeline``, ...).

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
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 <= confidence < 1:
        raise ValidationError(f"confidence must be a probability in [0.5, 1), found {confidence!r}")
    if isinstance(candidates, str) or not candidates:
        raise ValidationError(f"candidates must be a non-empty list of formats like \"w4a8\", found {candidates!r}")
    formats = sorted({parse_format(c, profile) for c in candidates})
    data, labels, check_data, check_labels = split_validation(data, labels, validation, validation_split)
    name = convert_args.pop("name", None)
    raw = model if isinstance(model, FloatGraph) else import_onnx(model, input_shapes=convert_args.get("input_shapes"))
    fg = simplify(raw)
    if len(fg.inputs) != 1 or len(fg.outputs) != 1:
        raise ValidationError(f"search_mixed_precision needs a single-input, single-output model; it has "
                              f"{len(fg.inputs)} input(s) and {len(fg.outputs)} output(s)")
    layers = weighted_layers(fg)
    if not layers:
        raise ValidationError("search_mixed_precision: the model has no layer with weights to give a format")
    session = FloatSession(fg)

    def float_correct(x, y):
        top = _top1(_batched(lambda b: session.run([b])[fg.outputs[0]], x, batch_size), "float model")
        return top, (top == y if y is not None else np.ones(len(x), bool))

    reference, correct = float_correct(data, labels)
    truth = labels if labels is not None else reference
    float_metric = float(np.mean(correct))
    target = float_metric - max_accuracy_drop
    if check_data is not None:
        check_reference, check_correct = float_correct(check_data, check_labels)
        check_truth = check_labels if check_labels is not None else check_reference
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
    statistics = None
    bar = Progress(None, progress_enabled(progress), "mixed precision")

    def measure(fmt, stage):
        """The point of ``fmt`` ({layer: (w, a)}), converted and run once however often it is asked for."""
        nonlocal statistics
        key = tuple(sorted(fmt.items()))
        if key not in measured:
            config = {name: {"weight_bits": w, "activation_bits": a} for name, (w, a) in fmt.items()}
            plan = plan_quantization(raw, calibration, profile, layer_config=config, progress=False,
                                     statistics=statistics, **convert_args)
            if plan.statistics and plan.meta["ptq"]["bias_correction"] is None and not plan.meta["ptq"]["adaround"]:
                statistics = plan.statistics
            int_model = lower(plan, name)
            top = _top1(_batched(int_model.run, data, batch_size), "integer model")
            point = Point(dict(fmt), float(np.mean(top == truth)), size(fmt) / total_params, bitops(fmt), stage)
            measured[key] = (point, int_model)
            explored.append(point)
            bar.label = f"mixed precision: {len(explored)} configurations ({stage})"
        return measured[key][0]

    def validated(fmt, stage) -> Point:
        """The point of ``fmt``, measured on the validation data too (once)."""
        point = measure(fmt, stage)
        if check_data is not None and point.validation_bound is None:
            int_model = measured[tuple(sorted(fmt.items()))][1]
            right = _top1(_batched(int_model.run, check_data, batch_size), "integer model") == check_truth
            point.validation_metric = float(np.mean(right))
            point.validation_drop, point.validation_bound = paired_drop_bound(check_correct, right, confidence)
        return point

    def holds(fmt, stage) -> bool:
        """Whether ``fmt`` meets the target on the search data and the budget, with confidence, on validation."""
        return measure(fmt, stage).metric >= target and \
            (check_data is None or validated(fmt, stage).validation_bound <= max_accuracy_drop)

    with bar:
        walked, chosen = _walk(layers, formats, objective, cost, target, measure, holds)
        walked, chosen = validated(walked.formats, "refine"), validated(chosen.formats, "refine")
    met = holds(chosen.formats, chosen.stage)
    pareto = _front(explored, cost)
    int_model = measured[tuple(sorted(chosen.formats.items()))][1]
    baseline = explored[0]
    return MixedPrecisionResult(chosen.layer_config, int_model, chosen.metric, float_metric, target,
                                "accuracy" if labels is not None else "agreement", met,
                                chosen.mean_weight_bits, chosen.bitops, pareto, explored,
                                _sensitivities(explored, baseline, layers), layers, objective,
                                time.perf_counter() - started, baseline, chosen.validation_metric,
                                None if check_data is None else float(np.mean(check_correct)),
                                chosen.validation_drop, chosen.validation_bound,
                                0 if check_data is None else len(check_data), confidence, max_accuracy_drop, walked)


def _walk(layers, formats, objective, cost, target, measure, holds) -> tuple[Point, Point]:
    """Baseline, sensitivities, the greedy walk on the search data, then the check on validation and the
    back-off (module docstring); returns the walk's point and the chosen one.

    ``measure(fmt, stage) -> Point`` measures a configuration on the search data; ``holds(fmt, stage)``
    tells whether it meets the target there and the budget on validation.
    """
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
        return baseline, baseline
    found = _longest_prefix(walk, 0, len(moves), lambda fmt: measure(fmt, "walk").metric >= target)
    current = _refine(walk(found), moves[found:], cost, target, measure, lambda fmt: True, "refine")
    walked = measure(current, "refine")
    if holds(current, "refine"):
        return walked, walked
    # Back off: the walk's point fails on validation.  Undo moves from the end of the chain (the most
    # sensitive layers per unit of cost get their precision back) while both sets are checked.
    if not holds(base, "baseline"):
        return walked, baseline
    found = _longest_prefix(walk, 0, found, lambda fmt: holds(fmt, "back-off"))
    current = _refine(walk(found), moves[found:], cost, target, measure, lambda fmt: holds(fmt, "back-off"),
                      "back-off")
    return walked, measure(current, "back-off")


def _longest_prefix(walk, lo: int, hi: int, ok) -> int:
    """The longest prefix ``k`` in ``[lo, hi]`` of the chain with ``ok(walk(k))``, by binary search; ``walk(lo)``
    is taken to be ok (the metric falls roughly monotonically along the chain)."""
    if ok(walk(hi)):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(walk(mid)):
            lo = mid
        else:
            hi = mid
    return lo


def _refine(current, moves, cost, target, measure, ok, stage) -> dict:
    """The remaining ``moves`` tried one by one on ``current``, each kept where the search target and ``ok``
    still hold; a move whose own drop already exceeds the slack left is not tried."""
    for drop, _, name, f in moves:
        trial = {**current, name: f}
        if cost(trial) < cost(current) and drop <= measure(current, stage).metric - target \
                and measure(trial, stage).metric >= target and ok(trial):
            current = trial
    return current


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
