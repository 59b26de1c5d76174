"""AdaRound (white paper §3.4): learn, layer by layer, whether each weight rounds up or down."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from intsim.progress import Progress, progress_enabled
from intsim.errors import ValidationError
from intsim.floatgraph.execute import run_node
from intsim.floatgraph import FloatGraph, FloatNode
from intsim.floatgraph.passes import copy_graph

# Rectified sigmoid stretch (AdaRound, Nagel et al. 2020): h = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1).
ZETA, GAMMA = 1.1, -0.1
from intsim.ptq.bias_correction import activation_bounds, dequantize_weight
from intsim.ptq.layers import layer_bias, set_constant, mac_nodes
from intsim.ptq.statistics import Stepper


# --------------------------------------------------------------------------
# AdaRound (white paper §3.4).
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaRoundOptions:
    """AdaRound settings; the defaults are the white paper's (§3.4) and the AdaRound paper's.

    Attributes
    ----------
    iterations : int
        Adam steps per layer (10,000).
    batch_size : int
        Rows (one output position of one image: its input patch and its
        float output) per step.
    reg_weight : float
        ``lambda``, the weight of the rounding regulariser (0.01).
    beta_start, beta_end : float
        The regulariser's exponent, annealed linearly from 20 to 2 after
        ``warm_up``.
    warm_up : float
        Fraction of the iterations without the regulariser (0.2).
    learning_rate : float
        Adam's step size (1e-3).
    max_rows : int
        Rows kept per layer, sampled evenly from the calibration batches:
        what bounds the layer's problem in memory (besides it, the two
        models' live tensors on the calibration set, :func:`adaround`).
    seed : int
    """

    iterations: int = 10_000
    batch_size: int = 256
    reg_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warm_up: float = 0.2
    learning_rate: float = 1e-3
    max_rows: int = 4096
    seed: int = 0

    def checked(self) -> "AdaRoundOptions":
        where = "AdaRoundOptions"
        for name in ("iterations", "batch_size", "max_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValidationError(f"{where}: {name} must be an integer >= 1, found {value!r}")
        for name in ("reg_weight", "beta_start", "beta_end", "learning_rate"):
            value = getattr(self, name)
            real = not isinstance(value, bool) and isinstance(value, (int, float))
            if not (real and math.isfinite(value) and value >= 0):
                raise ValidationError(f"{where}: {name} must be a finite number >= 0, found {value!r}")
        if not (isinstance(self.warm_up, (int, float)) and 0.0 <= self.warm_up < 1.0):
            raise ValidationError(f"{where}: warm_up must be a fraction in [0, 1), found {self.warm_up!r}")
        if self.learning_rate == 0 or self.beta_end < 1:
            raise ValidationError(f"{where}: need learning_rate > 0 and beta_end >= 1, found "
                                  f"learning_rate={self.learning_rate}, beta_end={self.beta_end}")
        return self


@dataclass
class LayerProblem:
    """One layer's AdaRound problem, grouped: ``G`` groups (1 for dense layers, C for depthwise convs) of
    ``Mg`` outputs reading ``K`` inputs each.

    ``inputs[g, n, :]`` is row n's quantized-model input patch of group g (float32: the Adam steps
    run in float32, the objectives in float64),
    ``targets[g, n, :]`` the float model's output there (after the layer's
    activation ``clamp``); ``weight``, ``bias``, ``scale`` and ``zero_point``
    are ``[G, Mg, K]``, ``[G, Mg]``, and ``[G, Mg]`` (broadcast per tensor).
    """

    inputs: np.ndarray
    targets: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    qmin: int
    qmax: int
    clamp: tuple[float, float] = (-math.inf, math.inf)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        return (codes - self.zero_point[..., None]) * self.scale[..., None]

    def reconstruction(self, weight: np.ndarray, rows=slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """``(clamp(W x~ + b) - target, d clamp / d z)`` on ``rows``, both ``[G, n, Mg]``."""
        x = self.inputs[:, rows]
        z = np.matmul(x, weight.transpose(0, 2, 1)) + self.bias[:, None, :]
        lo, hi = self.clamp
        return np.clip(z, lo, hi) - self.targets[:, rows], ((z > lo) & (z < hi)).astype(np.float64)

    def gradient(self, weight: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``d/dW~`` of ``mean_rows ||clamp(W~ x~ + b) - target||^2`` on ``rows`` (indices), ``[G, Mg, K]``, in
        float64: the plain form of what :class:`Reconstruction` computes in each Adam step, its test twin."""
        residual, slope = self.reconstruction(weight, rows)
        dz = 2.0 * residual * slope / len(rows)
        return np.matmul(dz.transpose(0, 2, 1), self.inputs[:, rows].astype(np.float64))

    def objective(self, codes: np.ndarray) -> float:
        """The layer objective: mean over rows of ``|| clamp(W~ x~ + b) - clamp(W x + b) ||^2``."""
        residual, _ = self.reconstruction(self.dequantize(codes))
        return float(np.sum(residual**2) / self.inputs.shape[1])


def _rectified_sigmoid(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h(V)`` and ``dh/dV``, in ``v``'s dtype."""
    sig = 1.0 / (1.0 + np.exp(-v))
    stretched = sig * (ZETA - GAMMA) + GAMMA
    inside = (stretched > 0) & (stretched < 1)
    return np.clip(stretched, 0.0, 1.0), sig * (1.0 - sig) * (ZETA - GAMMA) * inside


class Reconstruction:
    """The gradient of one layer's reconstruction term on row minibatches (AdaRound, white paper §3.4).

    The rows (input patches, im2col'd once per layer by :func:`_layer_problem`)
    and targets are float32 copies made once; each step gathers its minibatch
    by index into buffers allocated once, then runs one float32 matmul per
    group forward (``z = W~ x + b``) and one backward (``dz^T x``).
    :meth:`LayerProblem.gradient` is its float64 twin.
    """

    def __init__(self, problem: LayerProblem, batch_size: int):
        p = problem
        # Row-major copies: a minibatch gathers whole rows, [G * K] contiguous floats each.
        self.inputs = np.ascontiguousarray(p.inputs.transpose(1, 0, 2), np.float32)
        self.targets = np.ascontiguousarray(p.targets.transpose(1, 0, 2), np.float32)
        self.bias = np.asarray(p.bias, np.float32)[:, None, :]
        self.lo, self.hi = p.clamp
        rows, groups, k = self.inputs.shape
        batch = min(batch_size, rows)
        self.x = np.empty((batch, groups, k), np.float32)
        self.target = np.empty((batch, groups, p.weight.shape[1]), np.float32)
        self.z = np.empty((groups, batch, p.weight.shape[1]), np.float32)
        self.dz = np.empty_like(self.z)
        self.grad = np.empty(p.weight.shape, np.float32)

    def gradient(self, weight: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``d/dW~`` of ``mean_rows ||clamp(W~ x + b) - target||^2`` for the float32 ``weight`` ``[G, Mg, K]``;
        ``rows`` holds valid row indices (the result is a buffer the next call overwrites)."""
        np.take(self.inputs, rows, axis=0, out=self.x, mode="clip")
        np.take(self.targets, rows, axis=0, out=self.target, mode="clip")
        x = self.x.transpose(1, 0, 2)
        np.matmul(x, weight.transpose(0, 2, 1), out=self.z)
        self.z += self.bias
        # Where the clamp passes z, clamp(z) - target = z - target; elsewhere the slope is 0.
        np.subtract(self.z, self.target.transpose(1, 0, 2), out=self.dz)
        self.dz *= 2.0 / len(rows)
        if self.lo > -math.inf:
            self.dz *= self.z > self.lo
        if self.hi < math.inf:
            self.dz *= self.z < self.hi
        return np.matmul(self.dz.transpose(0, 2, 1), x, out=self.grad)


def adaround_layer(problem: LayerProblem, options: AdaRoundOptions = AdaRoundOptions(), *,
                   progress=None) -> tuple[np.ndarray, dict]:
    """Learn the rounding of one layer (AdaRound, white paper §3.4).

    Minimises ``mean_rows ||clamp(W~ x~ + b) - target||^2 + lambda sum(1 -
    |2 h(V) - 1|^beta)`` over ``V`` with Adam, where ``W~ = s (clip(floor(W / s)
    + h(V) + z, qmin, qmax) - z)`` and ``h`` is the rectified sigmoid; ``V``
    starts where ``h(V)`` is the fractional part of ``W / s``, ``beta`` anneals
    from ``beta_start`` to ``beta_end`` after a warm-up without the
    regulariser.  Each Adam step (float32) sees ``batch_size`` rows drawn
    with replacement.  The result rounds up where ``h(V) >= 1/2``.  If its
    objective on all rows (float64) is not below round-to-nearest's, nearest
    is returned.

    Returns
    -------
    codes : float64 array ``[G, Mg, K]``
        Integer-valued codes in ``[qmin, qmax]``.
    info : dict
        ``objective_nearest``, ``objective_adaround``, ``flipped`` (weights
        rounded otherwise than nearest) and ``kept`` ("adaround"/"nearest").
    """
    p, o = problem, options
    scale = p.scale[..., None]
    zero_point = p.zero_point[..., None]
    ratio = p.weight / scale
    base = np.floor(ratio)
    rest = np.clip(ratio - base, 1e-4, 1 - 1e-4)
    sig = (rest - GAMMA) / (ZETA - GAMMA)
    v = np.log(sig / (1.0 - sig)).astype(np.float32)
    # W~ = s (clip(base + h + z, qmin, qmax) - z) = s base + s clip(h, h_low, h_high): the grid ends at h_low, h_high.
    h_low, h_high = (np.asarray(q - zero_point - base, np.float32) for q in (p.qmin, p.qmax))
    scale32 = np.broadcast_to(scale, v.shape).astype(np.float32)
    floor_weight = (scale * base).astype(np.float32)
    first, second = np.zeros_like(v), np.zeros_like(v)
    reconstruction = Reconstruction(p, o.batch_size)
    rng = np.random.default_rng(o.seed)
    rows = p.inputs.shape[1]
    warm = int(o.warm_up * o.iterations)
    for step in range(1, o.iterations + 1):
        h, dh_dv = _rectified_sigmoid(v)
        weight = floor_weight + scale32 * np.clip(h, h_low, h_high)
        batch = rng.integers(0, rows, size=min(o.batch_size, rows))
        grad = reconstruction.gradient(weight, batch) * scale32
        grad *= (h >= h_low) & (h <= h_high)
        if step > warm:
            beta = o.beta_end + (o.beta_start - o.beta_end) * max(0.0, 1.0 - (step - warm) / (o.iterations - warm))
            centred = 2.0 * h - 1.0
            grad -= o.reg_weight * 2.0 * beta * np.abs(centred) ** (beta - 1) * np.sign(centred)
        grad *= dh_dv
        first *= 0.9
        first += 0.1 * grad
        second *= 0.999
        second += 0.001 * grad * grad
        v -= (o.learning_rate / (1 - 0.9**step)) * first / (np.sqrt(second / (1 - 0.999**step)) + 1e-8)
        if progress is not None:
            progress.update(step)
    nearest = np.clip(np.rint(ratio) + zero_point, p.qmin, p.qmax)
    learned = np.clip(base + (v >= 0) + zero_point, p.qmin, p.qmax)
    info = {"objective_nearest": p.objective(nearest), "objective_adaround": p.objective(learned),
            "flipped": int(np.sum(nearest != learned))}
    info["kept"] = "adaround" if info["objective_adaround"] < info["objective_nearest"] else "nearest"
    return (learned if info["kept"] == "adaround" else nearest), info


def _groups(node: FloatNode, weight: np.ndarray) -> int:
    return node.attrs["group"] if node.op == "Conv" else 1


def patch_rows(node: FloatNode, x: np.ndarray, weight: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """Rows ``pick`` (indices over ``N * positions``, image-major) of the layer's input as ``[G, len(pick), K]``:
    for a conv, the im2col patches of those output positions only (zero padding)."""
    if node.op == "Gemm":
        return x[pick][None]
    groups = _groups(node, weight)
    kh, kw = weight.shape[2:]
    (sh, sw), (dh, dw) = node.attrs["strides"], node.attrs["dilations"]
    top, left, bottom, right = node.attrs["pads"]
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (padded.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (padded.shape[3] - dw * (kw - 1) - 1) // sw + 1
    image, position = np.divmod(pick, oh * ow)
    y0, x0 = np.divmod(position, ow)
    # [P, C, kh * kw]: the advanced indices around the channel slice put the picked rows first.
    patches = np.stack([padded[image, :, y0 * sh + i * dh, x0 * sw + j * dw] for i in range(kh) for j in range(kw)],
                       axis=-1)
    return patches.reshape(len(pick), groups, -1).transpose(1, 0, 2)


def output_rows(y: np.ndarray, groups: int) -> np.ndarray:
    """The layer's output as rows ``[G, N * positions, Mg]``."""
    if y.ndim == 2:
        return y.astype(np.float64)[None]
    n, m = y.shape[:2]
    rows = y.astype(np.float64).reshape(n, groups, m // groups, -1).transpose(1, 0, 3, 2)
    return rows.reshape(groups, -1, m // groups)


def _layer_problem(fg: FloatGraph, node: FloatNode, activation: FloatNode | None, quantizer: tuple,
                   qrange: tuple[int, int], inputs: list, outputs: list, options: AdaRoundOptions,
                   rng: np.random.Generator) -> LayerProblem:
    """Sample ``max_rows`` rows of the layer's problem, evenly over the calibration batches: per batch,
    ``inputs`` holds the quantized model's input of ``node``, ``outputs`` the float model's output of
    ``node`` (before ``activation``)."""
    weight = fg.constants[node.inputs[1]].astype(np.float64)
    groups = _groups(node, weight)
    total = sum(len(x) for x in inputs)
    patches, targets = [], []
    for x, y in zip(inputs, outputs):
        target = output_rows(run_node(activation, [y])[0] if activation is not None else y, groups)
        take = min(target.shape[1], math.ceil(options.max_rows * len(x) / total))
        pick = rng.choice(target.shape[1], size=take, replace=False)
        patches.append(patch_rows(node, x, weight, pick))
        targets.append(target[:, pick])
    _, scale, zero_point = quantizer
    m = weight.shape[0]
    shape = (groups, m // groups)
    return LayerProblem(
        np.concatenate(patches, axis=1).astype(np.float32), np.concatenate(targets, axis=1),
        weight.reshape(groups, m // groups, -1),
        layer_bias(fg, node).reshape(shape), np.broadcast_to(np.asarray(scale, np.float64), (m,)).reshape(shape),
        np.broadcast_to(np.asarray(zero_point, np.float64), (m,)).reshape(shape), *qrange,
        activation_bounds(activation) if activation is not None else (-math.inf, math.inf))


def adaround(fg: FloatGraph, weights: Mapping[str, tuple], qrange: tuple[int, int] | Mapping, data: np.ndarray,
             batch_size: int, options: AdaRoundOptions = AdaRoundOptions(),
             progress: bool = True) -> tuple[dict[str, tuple], dict]:
    """AdaRound every layer of ``weights`` in graph order (white paper §3.4).

    Each layer's input comes from the model whose earlier layers already carry
    their learned quantized weights (activations in float), its target from the
    float model (asymmetric reconstruction, with the layer's ReLU / Clip in the
    objective).  Both models walk the calibration data once, node by node
    (:class:`Stepper`), stopping at each layer; memory is what the walk keeps
    live plus ``max_rows`` rows of the current layer.

    Parameters
    ----------
    weights : dict
        ``{node name: (codes, scale, zero_point)}`` from the weight range
        setting; the grid (scale, zero point) is kept, the codes relearned.
    qrange : (int, int) or dict
        The code range, or ``{node name: (qmin, qmax)}`` per layer (mixed precision).

    Returns
    -------
    weights : dict
        The new ``{node name: (codes, scale, zero_point)}``.
    info : dict
        Per layer, :func:`adaround_layer`'s info.
    """
    options = options.checked()
    rng = np.random.default_rng(options.seed)
    quantized_fg = copy_graph(fg)
    floats, quantized = Stepper(fg, data, batch_size), Stepper(quantized_fg, data, batch_size)
    consumers = {t: [n for n in fg.nodes if t in n.inputs] for n in fg.nodes for t in n.outputs}
    position = {n.name: i for i, n in enumerate(fg.nodes)}
    layers = [n for n in mac_nodes(fg) if n.name in weights]
    result, info = dict(weights), {}
    enabled = progress_enabled(progress)
    for i, node in enumerate(layers):
        users = consumers.get(node.outputs[0], [])
        activation = users[0] if (len(users) == 1 and users[0].op in ("Relu", "Clip")
                                  and node.outputs[0] not in fg.outputs) else None
        inputs = [values[node.inputs[0]] for values in quantized.run_to(position[node.name])]
        outputs = [values[node.outputs[0]] for values in floats.run_to(position[node.name] + 1)]
        layer_range = qrange[node.name] if isinstance(qrange, Mapping) else qrange
        problem = _layer_problem(fg, node, activation, weights[node.name], layer_range, inputs, outputs, options, rng)
        bar = Progress(options.iterations, enabled, f"adaround {i + 1}/{len(layers)}")
        codes, info[node.name] = adaround_layer(problem, options, progress=bar)
        nearest, scale, zero_point = weights[node.name]
        codes = codes.reshape(nearest.shape).astype(nearest.dtype)
        result[node.name] = (codes, scale, zero_point)
        qnode = quantized_fg.nodes[position[node.name]]
        set_constant(quantized_fg, qnode, 1, dequantize_weight(codes, scale, zero_point), "weight_quantized")
    return result, info
