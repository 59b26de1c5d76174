"""The standard PTQ pipeline (white paper §3.5): CLE, bias absorption, range setting, bias correction
and AdaRound in order, on the float graph before the converter lowers it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from intsim.errors import ValidationError
from intsim.floatgraph import FloatGraph

from intsim.ptq.adaround import AdaRoundOptions, adaround
from intsim.ptq.bias_correction import WeightFormat, analytic_bias_correction, empirical_bias_correction
from intsim.ptq.cle import Pair, clips, absorb_biases, cross_layer_equalization, equalization_pairs
from intsim.ptq.layers import mac_nodes
from intsim.ptq.statistics import channel_maxima, preactivation_statistics
from intsim.ptq.bias_correction import BIAS_CORRECTION_METHODS


# --------------------------------------------------------------------------
# The pipeline (white paper §3.5).
# --------------------------------------------------------------------------


def _standard_pipeline(has_data: bool) -> dict:
    """§3.5: CLE with bias absorption, MSE weight ranges, AdaRound with data or analytic bias correction
    without, MSE activation ranges and cross-entropy for the logits."""
    return {"cle": True, "weight_range_method": "mse", "adaround": has_data,
            "bias_correction": None if has_data else "analytic", "range_method": "mse",
            "logits_range_method": "cross_entropy"}


PIPELINES = {"standard": _standard_pipeline}


def resolve_settings(pipeline: str | None, has_data: bool, **given) -> dict:
    """The PTQ settings ``convert`` runs with: the ``pipeline`` preset, overridden by every ``given`` value that
    is not None; validated.  ``bias_correction="none"`` turns a preset's bias correction off."""
    if pipeline is not None and pipeline not in PIPELINES:
        raise ValidationError(f"pipeline must be one of {', '.join(PIPELINES)} or None, found {pipeline!r}")
    settings = {"cle": False, "adaround": False, "bias_correction": None, "range_method": "minmax",
                "logits_range_method": None, "weight_range_method": "minmax"}
    if pipeline is not None:
        settings.update(PIPELINES[pipeline](has_data))
    settings.update({k: v for k, v in given.items() if v is not None})
    if not isinstance(settings["cle"], (bool, np.bool_)):
        raise ValidationError(f"cle must be True or False, found {settings['cle']!r}")
    if settings["bias_correction"] == "none":
        settings["bias_correction"] = None
    if settings["bias_correction"] not in (None, *BIAS_CORRECTION_METHODS):
        raise ValidationError(f"bias_correction must be one of {', '.join(BIAS_CORRECTION_METHODS)}, 'none' or None, "
                              f"found {settings['bias_correction']!r}")
    adaround_setting = settings["adaround"]
    if isinstance(adaround_setting, (bool, np.bool_)):
        settings["adaround"] = AdaRoundOptions() if adaround_setting else None
    elif isinstance(adaround_setting, AdaRoundOptions):
        settings["adaround"] = adaround_setting.checked()
    else:
        raise ValidationError(f"adaround must be True, False or an AdaRoundOptions, found {adaround_setting!r}")
    if not has_data:
        needs = [k for k, on in (("adaround", settings["adaround"] is not None),
                                 ("bias_correction='empirical'", settings["bias_correction"] == "empirical")) if on]
        if needs:
            raise ValidationError(f"{' and '.join(needs)} need calibration data; convert got none "
                                  "(use bias_correction='analytic' for a data-free correction)")
    return settings


def _rescaled_tensors(fg: FloatGraph, pairs: list[Pair], scales: Mapping[str, np.ndarray],
                      absorbed: Mapping[str, np.ndarray]) -> dict:
    """``{tensor: {"scale": S, "offset": c}}`` for each quantized tensor that CLE and bias absorption changed:
    the rewritten model holds ``relu(x / S - c)`` where the original holds ``relu(x)`` (``x / S`` without an
    absorbed bias), so that reports compare like with like (:func:`intsim.report.compare`)."""
    nodes = {n.name: n for n in fg.nodes}
    rescaled = {}
    for p in pairs:
        tensor = nodes[p.activation if p.activation is not None else p.first].outputs[0]
        entry = {"scale": scales[nodes[p.first].outputs[0]].tolist()}
        if p.first in absorbed:
            entry["offset"] = absorbed[p.first].tolist()
        rescaled[tensor] = entry
    return rescaled


@dataclass
class PTQResult:
    """What :func:`apply_ptq` hands the converter.

    Attributes
    ----------
    graph : FloatGraph
        The rewritten float graph.
    weights : dict
        ``{node name: (codes, scale, zero_point)}``, codes in the ONNX weight
        layout: what the converter emits for those layers.
    batch_norms : dict
        The batch-norm statistics ``{tensor: (gamma, beta)}`` of the rewritten
        graph (CLE scales and absorbed biases applied), for data-free ranges.
    meta : dict
        What was done, for ``graph.metadata["ptq"]``.
    """

    graph: FloatGraph
    weights: dict
    batch_norms: dict
    meta: dict


def apply_ptq(fg: FloatGraph, batch_norms: Mapping[str, tuple], profile, data: np.ndarray | None, *, cle: bool,
              bias_correction: str | None, adaround_options: AdaRoundOptions | None, weight_range_method: str,
              batch_size: int, progress: bool = True, layer_weights: Mapping[str, tuple] | None = None) -> PTQResult:
    """Run the PTQ algorithms on a folded float graph, in the order of white paper §3.5.

    1. CLE and bias absorption (``cle``; absorption needs batch-norm statistics
       or data, :func:`preactivation_statistics`).
    2. Weight range setting (``weight_range_method``) with the profile's weight
       quantizer, for every Conv and Gemm.
    3. AdaRound (``adaround_options``), then bias correction
       (``bias_correction``) of whatever error the chosen codes leave.

    Activation ranges are set afterwards by the converter, on the returned graph.  ``layer_weights``
    (``{node name: (WeightFormat, weight range method)}``) gives some layers their own weight format
    (per-layer precision, :mod:`intsim.converter.layer_config`).
    """
    meta: dict = {}
    scales: dict = {}
    pairs: list[Pair] = []
    if cle:
        nodes = {n.name: n for n in fg.nodes}
        clipped = [nodes[p.first].outputs[0] for p in equalization_pairs(fg) if clips(nodes, p)]
        maxima = channel_maxima(fg, clipped, data, batch_size) if data is not None else {
            t: np.asarray(beta, np.float64) + 6.0 * np.abs(np.asarray(gamma, np.float64))
            for t, (gamma, beta) in batch_norms.items() if t in clipped}
        fg, scales, pairs = cross_layer_equalization(fg, clip_maxima=maxima)
        meta["cle_pairs"] = len(pairs)
    stats: dict = {}
    if cle or bias_correction == "analytic":
        stats = preactivation_statistics(fg, batch_norms, scales, data, batch_size)
    if cle:
        fg, stats, absorbed = absorb_biases(fg, stats, pairs)
        meta["bias_absorbed"] = len(absorbed)
        meta["rescaled"] = _rescaled_tensors(fg, pairs, scales, absorbed)
    default = (WeightFormat.of(profile), weight_range_method)
    formats = {n.name: (layer_weights or {}).get(n.name, default) for n in mac_nodes(fg)}
    weights = {n.name: formats[n.name][0].quantize(fg.constants[n.inputs[1]], formats[n.name][1])
               for n in mac_nodes(fg)}
    if adaround_options is not None:
        qranges = {n: fmt.codes for n, (fmt, _) in formats.items()}
        weights, info = adaround(fg, weights, qranges, data, batch_size, adaround_options, progress)
        meta["adaround_layers"] = info
    if bias_correction == "empirical":
        fg = empirical_bias_correction(fg, weights, data, batch_size)
        meta["bias_corrected"] = len(weights)
    elif bias_correction == "analytic":
        fg, corrected = analytic_bias_correction(fg, weights, stats)
        meta["bias_corrected"] = len(corrected)
    batch_norms = {t: (stats[t][1], stats[t][0]) if t in stats else v for t, v in batch_norms.items()}
    return PTQResult(fg, weights, batch_norms, meta)
