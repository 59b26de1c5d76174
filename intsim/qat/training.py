"""Quantization-aware fine-tuning of an ONNX float model, exported through the converter (white paper §4.4).

The pipeline:

1. **PTQ initialization** (§4.4): :func:`intsim.converter.lowering.plan_quantization` with the standard
   pipeline's settings (batch-norm folding, CLE with bias absorption, MSE weight ranges, MSE
   activation ranges, cross-entropy logits range; AdaRound off, since training moves the weights
   anyway).  Batch norms that follow a Conv or Gemm are folded statically before quantization, the
   variant §4.2 finds on par with the others.
2. **Training** of the :class:`~intsim.qat.module.FakeQuantModel` built from that plan: weights,
   biases and (``learn_ranges``) the scales, with the straight-through estimator, Adam and a cosine
   learning rate.  Without labels the loss is distillation from the float model (KL divergence of the
   softened outputs for a classifier, MSE otherwise); with labels, cross-entropy plus
   ``distillation`` times the distillation loss.
3. **Export** (:func:`export`): the learned weights, weight scales and activation ranges become a new
   plan, which :func:`intsim.converter.lowering.lower` emits on the profile's integer graph: the same path
   AdaRound's codes take.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from intsim.converter.data_free import batch_norm_statistics
from intsim.converter.lowering import lower, plan_quantization
from intsim.converter.steps import plan_steps, quantization_points
from intsim.errors import ValidationError
from intsim.floatgraph import FloatGraph
from intsim.importers.onnx import import_onnx
from intsim.floatgraph.passes import copy_graph, fresh_name
from intsim.progress import Progress, progress_enabled
from intsim.qat.module import MAC_OPS, FakeQuantModel
from intsim.qat.oscillation import OscillationFreezer, annealed, dampening_loss
from intsim.runtime import Model

BATCH_NORM_VARIANTS = ("static", "statistics")  # white paper §4.2
# The PTQ start (white paper §4.4): the standard pipeline (§3.5) without AdaRound.
INIT_SETTINGS = {"pipeline": "standard", "adaround": False, "bias_correction": "none"}
CALIBRATION_SAMPLES = 1024  # taken from the training data when no calibration set is given


def _checked_data(data, labels):
    where = "intsim.qat"
    x = np.asarray(data)
    if x.dtype.kind != "f" or x.ndim < 2 or x.shape[0] == 0:
        raise ValidationError(f"{where}: data must be a float array of samples (first axis), found dtype {x.dtype} "
                              f"and shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValidationError(f"{where}: data must be finite, found NaN or infinity")
    if labels is None:
        return x.astype(np.float32, copy=False), None
    y = np.asarray(labels)
    if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
        raise ValidationError(f"{where}: labels must be integer class indices of shape ({x.shape[0]},), found dtype "
                              f"{y.dtype} and shape {y.shape}")
    return x.astype(np.float32, copy=False), y.astype(np.int64)


def _check_positive(name, value, integer: bool):
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds) or not np.isfinite(value) or not value > 0:
        raise ValidationError(f"intsim.qat: {name} must be a positive {'integer' if integer else 'number'}, "
                              f"found {value!r}")


def _distillation_weight(epochs, batch_size, lr, temperature, distillation, has_labels: bool) -> float:
    """The checked training settings' distillation weight (default 1 without labels, 0 with)."""
    for name, value, integer in (("epochs", epochs, True), ("batch_size", batch_size, True), ("lr", lr, False),
                                 ("temperature", temperature, False)):
        _check_positive(name, value, integer)
    weight = (0.0 if has_labels else 1.0) if distillation is None else distillation
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 or not np.isfinite(weight) \
            or (weight == 0 and not has_labels):
        raise ValidationError(f"intsim.qat: distillation must be a number >= 0 (> 0 without labels), found "
                              f"{distillation!r}")
    return float(weight)


def _check_schedule(scale_lr, freeze_scales, dampening, freeze_oscillations):
    """Checks the optional training settings (scale learning rate, scale freezing, oscillation remedies)."""
    def number(value):
        return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) \
            and bool(np.isfinite(value))

    if scale_lr is not None:
        _check_positive("scale_lr", scale_lr, False)
    for name, value, lo_open, hi in (("freeze_scales", freeze_scales, False, 1.0), ("dampening", dampening, False, None),
                                     ("freeze_oscillations", freeze_oscillations, True, 1.0)):
        if value is None and name == "freeze_oscillations":
            continue
        if not number(value) or value < 0 or (lo_open and value == 0) or (hi is not None and value >= hi):
            bounds = f"in {'(' if lo_open else '['}0, {hi})" if hi is not None else ">= 0"
            raise ValidationError(f"intsim.qat: {name} must be a number {bounds}, found {value!r}")


def prepare(model, calibration, profile="paper", *, weight_bits=None, activation_bits=None, per_channel=None,
            layer_config=None, learn_ranges=True, batch_norm="static", progress=True) -> FakeQuantModel:
    """The fake-quant model of ``model`` for a profile, initialized from PTQ (white paper §4.4).

    Parameters
    ----------
    model : str, path, onnx.ModelProto or FloatGraph
    calibration : float array
        Inputs (samples first) for the PTQ ranges and CLE.
    profile, weight_bits, activation_bits, per_channel, layer_config
        As :func:`intsim.convert` takes them; with ``layer_config`` (per-layer precision) every layer gets
        its own fake-quant grid, and its reads across formats the converter's ``rescale``.
    learn_ranges : bool
        Learn the scales (LSQ, §4.3) or keep the PTQ ranges.
    batch_norm : {"static", "statistics"}
        How a batch norm after a Conv or Gemm trains (§4.2): folded into the layer before training
        (``"static"``), or kept, normalizing with batch statistics and folded on its running statistics
        (``"statistics"``, :meth:`FakeQuantModel.keep_batch_norms`; the model must have such batch norms).
    """
    if batch_norm not in BATCH_NORM_VARIANTS:
        raise ValidationError(f"intsim.qat: batch_norm must be one of {', '.join(BATCH_NORM_VARIANTS)}, found "
                              f"{batch_norm!r}")
    plan = plan_quantization(model, calibration, profile, weight_bits=weight_bits, activation_bits=activation_bits,
                             per_channel=per_channel, layer_config=layer_config, progress=progress, **INIT_SETTINGS)
    qat = FakeQuantModel(plan, learn_ranges)
    if batch_norm == "statistics":
        normalized = batch_norm_statistics(model if isinstance(model, FloatGraph) else import_onnx(model))
        layers = [n.name for n in qat.graph.nodes if n.op in MAC_OPS and n.outputs[0] in normalized]
        if not layers:
            raise ValidationError("intsim.qat: batch_norm='statistics' needs a BatchNormalization right after a Conv "
                                  "or Gemm; the model has none (its exporter folded them: static folding is all "
                                  "there is)")
        qat.keep_batch_norms(layers, np.asarray(calibration, np.float32))
    return qat


def _batches(n, batch_size, generator):
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def predict(qat: FakeQuantModel, data, *, quantize=True, batch_size=256, dtype=torch.float64) -> np.ndarray:
    """The first output of the fake-quant model (``quantize=False``: of the float model) on ``data``.

    ``float64`` (the default) computes every grid step exactly where the profile's is exact (power-of-two
    scales): what the integer model must then equal bit for bit.
    """
    qat.quantize, training = quantize, qat.training
    qat.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            outs.append(qat(torch.as_tensor(np.asarray(data[i : i + batch_size]), dtype=dtype))[0].numpy())
    qat.quantize = True
    qat.train(training)
    return np.concatenate(outs)


def output_codes(qat: FakeQuantModel, data, **kwargs) -> np.ndarray:
    """The integer codes of the fake-quant model's first output on ``data`` (what ``Model.run_int`` returns)."""
    scale, zero_point = qat.activation(qat.grid_source(qat.graph.outputs[0])).params()
    return (np.rint(predict(qat, data, **kwargs) / scale) + zero_point).astype(np.int64)


def layer_agreement(qat: FakeQuantModel, model: Model, data) -> dict[str, float]:
    """``{float tensor: fraction of equal codes}`` between the fake-quant model and its exported integer
    ``model`` at every quantization point, on float inputs ``data`` (the integer model's trace against the
    float64 fake-quant tensors, layouts matched through the converter's metadata)."""
    x = np.asarray(data, np.float32)
    with torch.no_grad():
        values = qat.tensors(torch.as_tensor(x, dtype=torch.float64))
    trace = model.trace(x, float_input=True)
    meta = model.graph.metadata
    rates = {}
    for tensor in qat.point_names:
        scale, zero_point = qat.activation(tensor).params()
        name = meta["quantized"][tensor]
        integer = trace.tensors[name].transpose(np.argsort(meta["source"][name][1]))
        rates[tensor] = float(np.mean(np.rint(values[tensor].numpy() / scale) + zero_point == integer))
    return rates


def _distillation_loss(student, teacher, temperature):
    if student.ndim == 2:
        t = temperature
        return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                        reduction="batchmean") * t * t
    return F.mse_loss(student, teacher)


def train(qat: FakeQuantModel, data, labels=None, *, epochs=2, batch_size=64, lr=1e-3, scale_lr=None,
          freeze_scales=0.0, dampening=0.0, freeze_oscillations=None, distillation=None, temperature=2.0, seed=0,
          progress=True) -> dict:
    """Quantization-aware training of ``qat`` in place (white paper §4).

    Parameters
    ----------
    data : float array
        Training inputs, samples first.  Unlabeled data suffices: the float model teaches.
    labels : int array, optional
        Class indices; adds a cross-entropy term.
    epochs, batch_size : int
    lr : float
        Adam's learning rate for weights and biases (and the ``log2`` scales without ``scale_lr``),
        cosine-annealed to 0.
    scale_lr : float, optional
        Adam's learning rate for the ``log2`` scales (learned ranges, LSQ), cosine-annealed too; default ``lr``.
    freeze_scales : float
        The fraction of the steps, at the end of training, in which the scales stay fixed (0: none).
    dampening : float
        Weight of the oscillation dampening loss (Nagel et al. 2022, :mod:`intsim.qat.oscillation`): the
        squared distance of every latent weight to the centre of its rounding bin, summed, in weight units;
        annealed from 0 to ``dampening`` over training with a cosine ramp.  0: off.
    freeze_oscillations : float, optional
        Iterative weight freezing (Nagel et al. 2022): a weight whose moving-average oscillation frequency
        (momentum 0.01) exceeds this threshold keeps its average code for the rest of training.  None: off.
    distillation : float, optional
        Weight of the distillation loss; default 1 without labels, 0 with labels.
    temperature : float
        Softmax temperature of the distillation loss for a classifier.
    seed : int
        Seeds the order of the batches: the only randomness, so a CPU run is reproducible.
    progress : bool
        Bar on stderr with the running loss and the top-1 agreement with the teacher (or the labels).

    Returns
    -------
    dict
        ``{"epochs", "samples", "seconds", "final_loss", "agreement", "frozen_weights"}`` (the fraction of
        weights frozen by ``freeze_oscillations``).
    """
    x, y = _checked_data(data, labels)
    weight = _distillation_weight(epochs, batch_size, lr, temperature, distillation, y is not None)
    _check_schedule(scale_lr, freeze_scales, dampening, freeze_oscillations)
    start = time.perf_counter()
    inputs = torch.from_numpy(x)
    teacher = torch.from_numpy(predict(qat, x, quantize=False, dtype=torch.float32)) if weight > 0 else None
    generator = torch.Generator().manual_seed(int(seed))
    named = [(n, p) for n, p in qat.named_parameters() if p.requires_grad]
    scales = [p for n, p in named if n.endswith("log2_scale")]
    optimizer = torch.optim.Adam([{"params": [p for n, p in named if not n.endswith("log2_scale")]},
                                  {"params": scales, "lr": lr if scale_lr is None else scale_lr}], lr=lr)
    steps = epochs * -(-len(x) // batch_size)
    scales_until = steps - round(freeze_scales * steps)  # the scales train in steps [0, scales_until)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    layers = list(qat.layers.values())
    freezer = OscillationFreezer(layers, freeze_oscillations) if freeze_oscillations is not None else None
    bar = Progress(epochs * len(x), progress_enabled(progress), "qat")
    qat.train()
    done, loss_sum, agree, seen, step = 0, 0.0, 0, 0, 0
    for epoch in range(epochs):
        for index in _batches(len(x), batch_size, generator):
            out = qat(inputs[index])[0]
            loss = out.new_zeros(())
            if teacher is not None:
                loss = loss + weight * _distillation_loss(out, teacher[index], temperature)
            if y is not None:
                loss = loss + F.cross_entropy(out, torch.from_numpy(y[index.numpy()]))
            if dampening:
                loss = loss + annealed(dampening, step, steps) * dampening_loss(layers)
            optimizer.zero_grad()
            loss.backward()
            if step >= scales_until:
                for p in scales:
                    p.grad = None  # Adam leaves a parameter without a gradient as it is
            optimizer.step()
            schedule.step()
            step += 1
            if freezer is not None:
                freezer.step()
            reference = teacher[index].argmax(1) if teacher is not None else torch.from_numpy(y[index.numpy()])
            agree += int((out.detach().argmax(1) == reference).sum()) if out.ndim == 2 else 0
            seen += len(index)
            loss_sum += loss.item() * len(index)
            done += len(index)
            bar.label = f"qat epoch {epoch + 1}/{epochs} loss {loss_sum / seen:.4f} agree {100.0 * agree / seen:.1f}%"
            bar.update(done)
        final_loss, final_agreement = loss_sum / seen, agree / seen
        loss_sum, agree, seen = 0.0, 0, 0
    qat.eval()
    return {"epochs": epochs, "samples": len(x), "seconds": time.perf_counter() - start, "final_loss": final_loss,
            "agreement": final_agreement, "frozen_weights": freezer.frozen_fraction() if freezer else 0.0}


def export(qat: FakeQuantModel, name=None, info: dict | None = None) -> Model:
    """The integer model of a trained fake-quant model, emitted by :func:`intsim.converter.lowering.lower`.

    The float graph takes the learned weights and biases, the plan the learned weight codes and
    scales and the learned activation scales; the converter derives the multipliers, the int32 biases
    (at ``s_w * s_x``) and the clamp codes from them as for any model.
    """
    plan = qat.plan
    fg = copy_graph(plan.graph)
    weights = {}
    for node in fg.nodes:
        if node.op not in MAC_OPS:
            continue
        layer = qat.layer(node.name)
        weight_name = fresh_name(fg, f"{node.name}/weight_qat")
        bias_name = fresh_name(fg, f"{node.name}/bias_qat")
        with torch.no_grad():
            fg.constants[weight_name], fg.constants[bias_name] = (t.numpy().copy() for t in layer.folded())
        fg.shapes[weight_name], fg.shapes[bias_name] = fg.constants[weight_name].shape, fg.constants[bias_name].shape
        node.inputs = [node.inputs[0], weight_name, bias_name]
        weights[node.name] = layer.export(fg.constants[weight_name].shape[0])
    steps = plan_steps(fg)
    qparams = {t: qat.activation(t).params() for t in quantization_points(fg, steps)}
    meta = dict(plan.meta, qat=dict(info or {}, learn_ranges=any(p.requires_grad for p in qat.activations.parameters())))
    return lower(replace(plan, graph=fg, steps=steps, qparams=qparams, weights=weights, meta=meta), name)


def finetune(model, data, *, labels=None, calibration=None, profile="paper", weight_bits=None, activation_bits=None,
             per_channel=None, layer_config=None, epochs=2, batch_size=64, lr=1e-3, scale_lr=None, freeze_scales=0.0,
             dampening=0.0, freeze_oscillations=None, learn_ranges=True, batch_norm="static", distillation=None,
             temperature=2.0, seed=0, progress=True) -> Model:
    """Quantization-aware training of an ONNX float model, exported to the profile's integer graph
    (white paper §4).

    Parameters
    ----------
    model : str, path, onnx.ModelProto or FloatGraph
        Anything :func:`intsim.convert` imports.
    data : float array
        Training inputs, samples first (unlabeled is enough: see ``labels``).
    labels : int array, optional
        Class labels: cross-entropy, plus ``distillation`` times the distillation loss.  Without
        them the float model's outputs are the only target (distillation, §4.4).
    calibration : float array, optional
        Inputs for the PTQ initialization; default the first 1024 of ``data``.
    profile, weight_bits, activation_bits, per_channel, layer_config
        The chip and per-layer precision, as :func:`intsim.convert` takes them.
    epochs, batch_size, lr, scale_lr, freeze_scales, dampening, freeze_oscillations, distillation, temperature, seed, progress
        As :func:`train` takes them.
    learn_ranges, batch_norm
        As :func:`prepare` takes them.

    Returns
    -------
    intsim.Model
        The integer model; ``graph.metadata["qat"]`` records the training.
    """
    x, _ = _checked_data(data, labels)
    _distillation_weight(epochs, batch_size, lr, temperature, distillation, labels is not None)
    _check_schedule(scale_lr, freeze_scales, dampening, freeze_oscillations)
    calibration = x[:CALIBRATION_SAMPLES] if calibration is None else calibration
    qat = prepare(model, calibration, profile, weight_bits=weight_bits, activation_bits=activation_bits,
                  per_channel=per_channel, layer_config=layer_config, learn_ranges=learn_ranges,
                  batch_norm=batch_norm, progress=progress)
    schedule = {"scale_lr": scale_lr, "freeze_scales": freeze_scales, "dampening": dampening,
                "freeze_oscillations": freeze_oscillations}
    info = train(qat, x, labels, epochs=epochs, batch_size=batch_size, lr=lr, distillation=distillation,
                 temperature=temperature, seed=seed, progress=progress, **schedule)
    return export(qat, info=dict(info, labels=labels is not None, lr=lr, batch_size=batch_size, seed=seed,
                                 batch_norm=batch_norm, **schedule))
