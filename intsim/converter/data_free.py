"""Data-free activation ranges (white paper §3.1): batch-norm statistics, ``beta +- n gamma`` after
every batch norm and interval arithmetic elsewhere, for a conversion without calibration data."""

from __future__ import annotations

import math

import numpy as np

from intsim.converter.calibration import CODOMAINS, bn_range
from intsim.floatgraph import FloatGraph


def batch_norm_statistics(fg: FloatGraph) -> dict:
    """``{BN output tensor: (gamma, beta)}`` of an imported graph, before batch-norm folding."""
    return {n.outputs[0]: (fg.constants[n.inputs[1]], fg.constants[n.inputs[2]])
            for n in fg.nodes if n.op == "BatchNormalization"
            and n.inputs[1] in fg.constants and n.inputs[2] in fg.constants}


def _affine_bounds(weight, bias, lo, hi):
    """Per-output bounds of ``W x + b`` for every ``x`` in [lo, hi] (W flattened to [out, -1])."""
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    pos, neg = np.clip(w, 0, None).sum(axis=1), np.clip(w, None, 0).sum(axis=1)
    b = 0.0 if bias is None else bias.astype(np.float64)
    return pos * lo + neg * hi + b, pos * hi + neg * lo + b


def data_free_ranges(fg: FloatGraph, bn: dict, input_range: tuple[float, float], n_sigma: float = 6.0) -> dict:
    """Activation ranges without data (white paper §3.1): ``beta +- n*gamma`` after batch norm,
    interval arithmetic everywhere else, starting from ``input_range`` for the graph inputs."""
    ranges = {t: (float(input_range[0]), float(input_range[1])) for t in fg.inputs}
    for node in fg.nodes:
        ins = [ranges.get(t) for t in node.inputs]
        lo, hi = ins[0] if ins and ins[0] is not None else (0.0, 0.0)
        op, a = node.op, node.attrs
        if node.outputs[0] in bn:
            gamma, beta = (np.asarray(v, np.float64) for v in bn[node.outputs[0]])
            lo, hi = bn_range(gamma, beta, n_sigma)
        elif op in ("Conv", "Gemm"):
            w = fg.constants[node.inputs[1]]
            b = fg.constants[node.inputs[2]] if len(node.inputs) > 2 else None
            lows, highs = _affine_bounds(w, b, lo, hi)
            lo, hi = float(lows.min()), float(highs.max())
        elif op == "Relu":
            lo, hi = max(lo, 0.0), max(hi, 0.0)
        elif op == "Clip":
            lo, hi = float(np.clip(lo, a["min"], a["max"])), float(np.clip(hi, a["min"], a["max"]))
        elif op in CODOMAINS:
            lo, hi = CODOMAINS[op]
        elif op == "HardSwish":
            lo, hi = -0.375, max(hi, 0.0)
        elif op in ("LeakyRelu", "PRelu"):
            lo, hi = min(lo, 0.0), max(hi, 0.0)
        elif op in ("Add", "Sub", "Mul", "Div", "MatMul", "Concat"):
            bounds = [ranges[t] if t in ranges else (float(fg.constants[t].min()), float(fg.constants[t].max()))
                      for t in node.inputs]
            (l1, h1), (l2, h2) = bounds[0], bounds[-1]
            if op == "Add":
                lo, hi = l1 + l2, h1 + h2
            elif op == "Sub":
                lo, hi = l1 - h2, h1 - l2
            elif op in ("Mul", "MatMul", "Div"):
                if op == "Div":
                    l2, h2 = sorted((1.0 / l2, 1.0 / h2)) if l2 * h2 > 0 else (-math.inf, math.inf)
                k = fg.shapes[node.inputs[0]][-1] if op == "MatMul" else 1
                corners = [l1 * l2, l1 * h2, h1 * l2, h1 * h2]
                lo, hi = k * min(corners), k * max(corners)
            else:
                lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
        ranges[node.outputs[0]] = (lo, hi)
    return ranges
