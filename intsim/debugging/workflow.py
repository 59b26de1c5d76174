"""The PTQ debugging workflow of white paper §3.7 (its Fig. 9 flowchart), on the integer datapath with the
quantization simulation beside it.

0. Convert as asked and measure: a model that holds up (within ``tolerance`` of float) stops here, and
   its report is one line.
1. Convert at high bit widths: the integer model and its simulation must match float (a wrong pipeline, a
   saturating accumulator or a bad input range shows here, before any real quantization noise).
2. Quantize only the weights (activations at high bits), then only the activations (weights at high bits):
   which of the two loses the metric.
3. Quantize one tensor at a time and rank the tensors by the drop each causes; inspect the worst ones'
   per-channel ranges.
4. Apply each fix that matches the diagnosis (per-channel weights, CLE, another range setting, bias
   correction, higher precision for the worst layers), convert again and measure.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path

import numpy as np

from intsim.converter.lowering import convert, lower, plan_quantization, prepare_float_graph
from intsim.debugging.fixes import Diagnosis, combined_changes, matching_fixes
from intsim.debugging.metric import Metric, run_integer, run_simulated
from intsim.debugging.report import DebugReport, Measurement
from intsim.debugging.sensitivity import channel_ranges, quantized_tensors, rank
from intsim.distributed.data import as_rows
from intsim.errors import ValidationError
from intsim.floatgraph import FloatGraph
from intsim.report import compare, fake_quant_hook, simulation_graph
from intsim.runtime import Model

# Step 1's "unquantized" bit widths (weights, activations).  16 x 16 bits does not fit a 32-bit accumulator
# (one product of full-scale codes needs 31 bits), 12-bit weights times 16-bit activations leave 4 bits for
# the sum, which real layers' sums of mostly small products stay within.
HIGH_BITS = (12, 16)
DATAPATHS = ("integer", "simulated")
# The conversion settings debug passes on to intsim.convert.
CONVERT_SETTINGS = tuple(name for name, p in inspect.signature(convert).parameters.items()
                         if p.kind is p.KEYWORD_ONLY and name not in ("progress", "batch_size"))


def _model_name(model) -> str | None:
    """A model file's stem names the report (an ONNX graph's own name is often ``main_graph``)."""
    return Path(model).stem if isinstance(model, (str, Path)) else None


def _onnx_op_types(model) -> dict[str, str]:
    """``{node name: ONNX op type}`` of an ONNX model (the importer renames some ops, e.g.
    GlobalAveragePool to ReduceMean); empty for a FloatGraph."""
    if isinstance(model, FloatGraph):
        return {}
    from intsim import onnxproto

    proto = model if isinstance(model, onnxproto.ModelProto) else onnxproto.load(str(model))
    return {n.name: n.op_type for n in proto.graph.node}


def _checked_inputs(calibration, data, labels, tolerance, high_bits, inspect_count, convert_args):
    unknown = sorted(set(convert_args) - set(CONVERT_SETTINGS))
    if unknown:
        raise ValidationError(f"debug: unknown conversion setting(s) {', '.join(unknown)}; known: "
                              f"{', '.join(CONVERT_SETTINGS)}")
    if calibration is None:
        raise ValidationError("debug needs calibration data (an array of model inputs, first axis = samples)")
    data = as_rows(data)
    if data.dtype.kind != "f" or data.ndim < 1 or data.shape[0] == 0:
        raise ValidationError(f"debug needs a non-empty float data array, found dtype {data.dtype} shape {data.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
            raise ValidationError(f"debug: labels must be integers of shape ({data.shape[0]},), found dtype "
                                  f"{labels.dtype} shape {labels.shape}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ValidationError(f"debug: tolerance must be a number >= 0, found {tolerance!r}")
    if not (isinstance(inspect_count, int) and inspect_count >= 0):
        raise ValidationError(f"debug: inspect must be an integer >= 0, found {inspect_count!r}")
    if not isinstance(high_bits, (tuple, list)) or len(high_bits) != 2 or not all(
            isinstance(b, int) and not isinstance(b, bool) for b in high_bits):
        raise ValidationError(f"debug: high_bits must be (weight bits, activation bits), found {high_bits!r}")
    return data, labels


def debug(model, calibration, data, labels=None, profile="paper", *, tolerance: float = 0.01,
          high_bits: tuple = HIGH_BITS, inspect: int = 3, datapath: str = "integer", batch_size: int = 64,
          progress: bool = True,
          **convert_args) -> DebugReport:
    """Run the white paper's PTQ debugging workflow (§3.7) on a float model; returns a :class:`DebugReport`.

    Parameters
    ----------
    model : str, path, onnx.ModelProto or FloatGraph
        The float model.
    calibration : float array
        Calibration inputs for every conversion (first axis = samples).
    data : float array
        Evaluation inputs, first axis = samples.
    labels : int array, optional
        Class labels of ``data``: the metric is accuracy.  Without them it is top-1 agreement with float for
        a classifier, else output SQNR (:mod:`intsim.debugging.metric`).
    profile : str, path or Profile
        The target chip; ``convert_args`` (``weight_bits``, ``per_channel``, ``range_method``, ``cle``, ...,
        everything :func:`intsim.convert` takes) complete the target conversion.
    tolerance : float
        The drop (a fraction: 0.01 is one point of accuracy) within which the model holds up; for the SQNR
        metric the model holds up at 30 dB.
    high_bits : (int, int)
        Weight and activation bits that stand for "unquantized" in steps 1 and 2 (:data:`HIGH_BITS`).
    inspect : int
        How many of the worst tensors get range statistics and plots.
    datapath : {"integer", "simulated"}
        What step 3 ranks by: conversions that quantize one tensor at a time on the integer datapath (every
        other node at ``high_bits``, through ``layer_config``), or the simulation alone (every other tensor
        float; one float run per tensor, much cheaper).  The simulation's drops are in the report either way.
    batch_size : int
        Rows per batch, for the conversions and the evaluations.
    progress : bool
        Progress bars on stderr.

    Raises
    ------
    ValidationError
        Missing calibration, empty or non-float data, labels of the wrong shape, an unknown setting.
    """
    convert_args = {k: v for k, v in convert_args.items() if v is not None}
    data, labels = _checked_inputs(calibration, data, labels, tolerance, high_bits, inspect, convert_args)
    if datapath not in DATAPATHS:
        raise ValidationError(f"debug: datapath must be one of {', '.join(DATAPATHS)}, found {datapath!r}")
    high_w, high_a = (int(b) for b in high_bits)
    name = convert_args.pop("name", None) or _model_name(model)
    fg = prepare_float_graph(model, convert_args.get("input_shapes"))
    metric = Metric.choose(run_simulated(fg, data, batch_size), labels)
    float_value = metric.value(metric.float_output)

    def measure(label: str, changes: dict, converted: Model | None = None) -> Measurement:
        if converted is None:
            converted = convert(model, calibration, profile, progress=False, batch_size=batch_size,
                                **{**convert_args, **changes})
        sim_graph, points = simulation_graph(fg, converted)
        integer = metric.value(run_integer(converted, data, batch_size))
        simulated = metric.value(run_simulated(sim_graph, data, batch_size, fake_quant_hook(points)))
        return Measurement(label, changes, integer, simulated, metric.drop(integer), metric.drop(simulated))

    plan = plan_quantization(model, calibration, profile, batch_size=batch_size, progress=False, **convert_args)
    target_model = lower(plan, name)
    p = plan.profile
    target = measure(f"target: W{p.weight_bits}A{p.activation_bits} "
                     f"{'per-channel' if p.per_channel else 'per-tensor'}", dict(convert_args), target_model)
    report = DebugReport(target_model.graph.name, p.name, int(data.shape[0]), metric.kind, float_value,
                         metric.reference, float(tolerance), target, metric.holds(target.integer, tolerance))
    if report.holds_up:
        return report
    high = measure(f"W{high_w}A{high_a}", {"weight_bits": high_w, "activation_bits": high_a})
    if metric.kind == "sqnr_db":
        metric = metric.with_reference(high.integer)
        report.reference = metric.reference
        high, report.target = (replace(m, drop_integer=metric.drop(m.integer), drop_simulated=metric.drop(m.simulated))
                               for m in (high, target))
    report.steps = {
        "high_bits": high,
        "weights_only": measure(f"weights only (activations {high_a} bits)", {"activation_bits": high_a}),
        "activations_only": measure(f"activations only (weights {high_w} bits)", {"weight_bits": high_w}),
    }
    def convert_one(layer_config: dict) -> Model:
        return convert(model, calibration, profile, progress=False, batch_size=batch_size,
                       **{**convert_args, "layer_config": layer_config})

    report.ranking = rank(plan, data, metric, batch_size, convert_one if datapath == "integer" else None,
                          (high_w, high_a), progress)
    report.ranking_datapath = datapath
    op_types = _onnx_op_types(model)
    for entry in report.ranking:
        entry["op"] = op_types.get(entry["node"], entry["op"])
    tensors = {(t.node, t.kind): t for t in quantized_tensors(plan)}
    report.inspected = [channel_ranges(plan, tensors[(e["node"], e["kind"])], calibration, batch_size)
                        for e in report.ranking[:inspect]]
    diagnosis = Diagnosis(
        weights_hurt=not metric.holds(report.steps["weights_only"].integer, tolerance),
        activations_hurt=not metric.holds(report.steps["activations_only"].integer, tolerance),
        profile=p, settings=dict(convert_args), worst=report.ranking[:inspect], high_bits=(high_w, high_a))
    report.fixes = [{"fix": fix.name, "section": fix.section, "changes": changes,
                     "after": measure(fix.name, changes)} for fix, changes in matching_fixes(diagnosis)]
    helped = [f for f in report.fixes if f["after"].integer > target.integer]
    if len(helped) > 1:  # the fixes that helped alone, applied together
        name = "combined (" + " + ".join(f["fix"] for f in helped) + ")"
        changes = combined_changes([f["changes"] for f in helped])
        report.fixes.append({"fix": name, "section": "§3.7", "changes": changes, "after": measure(name, changes)})
    layers = compare(fg, target_model, data, labels, batch_size=batch_size, progress=False).to_dict()["layers"]
    report.layers = [{k: r[k] for k in ("tensor", "node", "op", "sqnr_sim_db", "sqnr_int_db")} for r in layers]
    return report
