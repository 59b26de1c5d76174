"""Fake quantizers on the profile's integer grid, with straight-through gradients (white paper §4.1).

A fake quantizer maps a real tensor to ``scale * (q - zero_point)`` where ``q`` is the integer code
the chip would hold.  Everything that decides ``q`` is the profile's, read the way the converter
reads it:

* code ranges: :meth:`intsim.profiles.Profile.activation_range` and
  :attr:`intsim.ptq.bias_correction.WeightFormat.codes` (narrow range for symmetric signed weights);
* granularity: one weight scale per output channel (axis 0) or per tensor;
* power-of-two scales: the learned ``log2`` scale is rounded to an integer exponent;
* rounding: weights, biases and graph inputs round ties to even (``np.rint``, as
  :func:`intsim.converter.calibration.quantize_weights`, the converter's bias and ``Model.run``'s input
  quantizer do); requantized activations round as the profile's requantization does
  (:data:`REQUANTIZATION_ROUNDING`);
* fused activations: the clamp codes of :func:`intsim.converter.lowering.clamp_codes`;
* the bias: integer codes at ``s_w * s_x``, saturated to ``bias_bits``.

Rounding uses the straight-through estimator (§4.1): the forward pass rounds, the backward pass
treats rounding as the identity.  Scales are learned LSQ-style (Esser et al. 2020, white paper
§4.3): the gradient of ``s * (clamp(round(v / s)) - z)`` with respect to ``s`` follows from the STE,
``round(v/s) - v/s`` inside the range and the clamp bound outside.  They are stored as ``log2``
scales so that one learning rate moves every scale by the same relative amount.
"""

from __future__ import annotations

import numpy as np
import torch

from intsim.converter.lowering import clamp_codes
from intsim.fixedpoint import INT32_MAX, INT32_MIN, Rescale, rescale


def round_half_even(v: torch.Tensor) -> torch.Tensor:
    """Nearest integer, ties to even (``np.rint``)."""
    return torch.round(v)


def round_half_up(v: torch.Tensor) -> torch.Tensor:
    """Nearest integer, ties toward +infinity: single-rounding requantization (:mod:`intsim.fixedpoint`).

    ``v - floor(v)`` is exact, so there is no ``floor(v + 0.5)`` error at 0.49999999999999994.
    """
    floor = torch.floor(v)
    return floor + (v - floor >= 0.5).to(v.dtype)


def round_half_away(v: torch.Tensor) -> torch.Tensor:
    """Nearest integer, ties away from zero."""
    return torch.sign(v) * round_half_up(torch.abs(v))


# How each requantization rounding mode rounds a real value on the output grid.  ``"single"`` is
# exact (one rounding, ties up); ``"double"`` rounds twice in fixed point and ``"float32_rint"``
# forms its product in float32, so those agree with the integer datapath up to near-ties.
REQUANTIZATION_ROUNDING = {
    "single": round_half_up,
    "double": round_half_away,
    "float32_rint": round_half_even,
    "float64_half_away": round_half_away,
}


def round_ste(v: torch.Tensor, rounding=round_half_even) -> torch.Tensor:
    """``rounding(v)`` forward, the identity backward (straight-through estimator, white paper §4.1)."""
    return v + (rounding(v) - v).detach()


class _LearnedScale(torch.nn.Module):
    """A positive scale (one, or one per channel) stored as ``log2``; an integer exponent with
    power-of-two scales (rounded with the STE, so the exponent still learns)."""

    def __init__(self, scale, power_of_two: bool, learn: bool):
        super().__init__()
        log2 = torch.log2(torch.as_tensor(scale, dtype=torch.float64).reshape(-1)).to(torch.float32)
        self.log2_scale = torch.nn.Parameter(log2, requires_grad=learn)
        self.power_of_two = power_of_two

    def scale(self, dtype=torch.float32) -> torch.Tensor:
        exponent = self.log2_scale.to(dtype)
        if self.power_of_two:
            exponent = round_ste(exponent)
        return torch.exp2(exponent)


class ActivationQuantizer(_LearnedScale):
    """The grid of one activation tensor: ``scale * (clamp(round(v / scale) + zp, lo, hi) - zp)``.

    Parameters
    ----------
    scale, zero_point
        The PTQ starting point (the converter's calibrated range).
    profile : Profile
    rounding : callable
        :func:`round_half_even` for a graph input, the profile's
        :data:`REQUANTIZATION_ROUNDING` for a requantized output.
    clamp : (float, float), optional
        A fused activation's real range (ReLU, ReLU6), turned into codes by the converter's rule.
    learn : bool
        Learn the scale (the zero point stays).
    """

    def __init__(self, scale: float, zero_point: int, profile, rounding, clamp=None, learn: bool = True):
        super().__init__(scale, profile.power_of_two_scales, learn)
        self.zero_point = int(zero_point)
        self.profile = profile
        self.rounding = rounding
        self.clamp = clamp

    def params(self) -> tuple[float, int]:
        """``(scale, zero_point)`` as the converter takes them: the float64 value of the scale the
        forward pass uses."""
        with torch.no_grad():
            return float(self.scale(torch.float64)), self.zero_point

    def code_range(self) -> tuple[int, int]:
        lo, hi = clamp_codes(self.params()[0], self.zero_point, self.clamp, self.profile)
        return lo, hi

    def codes(self, v: torch.Tensor) -> torch.Tensor:
        """The integer codes (as floats) of ``v`` on this grid; rounding with the STE."""
        lo, hi = self.code_range()
        return torch.clamp(round_ste(v / self.scale(v.dtype), self.rounding) + self.zero_point, lo, hi)

    def forward(self, v: torch.Tensor, accumulator_scale: torch.Tensor | None = None) -> torch.Tensor:
        """``v`` on this grid.  ``accumulator_scale``: where ``v`` is a Conv / Gemm output, the scale of its
        int32 accumulator (``s_x s_w``, one per channel on axis 1); its codes are then the integer
        datapath's own requantization of the accumulator (:func:`requantized_codes`), with the
        straight-through gradient of ``v / scale``."""
        scale = self.scale(v.dtype)
        if accumulator_scale is None:
            return (self.codes(v) - self.zero_point) * scale
        real = v / scale + self.zero_point
        exact = requantized_codes(v, accumulator_scale, self.params()[0], self.zero_point, self.profile)
        codes = torch.clamp(real + (exact.to(v.dtype) - real).detach(), *self.code_range())
        return (codes - self.zero_point) * scale


def requantized_codes(v: torch.Tensor, accumulator_scale: torch.Tensor, scale: float, zero_point: int,
                      profile) -> torch.Tensor:
    """The output codes (before the clamp) the integer layer computes for the real accumulator ``v``:
    ``rint(v / accumulator_scale)`` is the int32 accumulator (bias included; saturated), requantized by
    :func:`intsim.fixedpoint.rescale` with the multiplier and shift the converter forms from
    ``accumulator_scale / scale`` under the profile's rounding (gemmlowp's double rounding too), plus the
    zero point.  Exact where ``v`` is computed in float64 (:func:`intsim.qat.predict`)."""
    with torch.no_grad():
        acc_scale = accumulator_scale.detach().to(torch.float64).reshape(-1)
        per_channel = acc_scale.numel() > 1  # one per channel, on axis 1
        v = v.detach().to(torch.float64)
        if per_channel:
            v = (v / acc_scale.reshape((1, -1) + (1,) * (v.ndim - 2))).movedim(1, -1)
        acc = torch.round(v if per_channel else v / acc_scale).numpy()
        params = Rescale.from_real(acc_scale.numpy() / scale, profile.rounding, profile.multiplier_bits)
        out = rescale(np.clip(acc, INT32_MIN, INT32_MAX).astype(np.int64), params).astype(np.float64) + zero_point
        return torch.from_numpy(out).movedim(-1, 1) if per_channel else torch.from_numpy(out)


class WeightQuantizer(_LearnedScale):
    """A layer's weights and bias, learned in float, used on the integer grid.

    Weights: ``s_w * (clamp(round(w / s_w) + z_w, qmin, qmax) - z_w)`` per output channel (axis 0)
    or per tensor, ties to even.  Bias: ``s_x s_w * clamp(round(b / (s_x s_w)))`` to ``bias_bits``,
    the int32 bias the converter emits.
    """

    def __init__(self, weight, bias, scale, zero_point, codes: tuple[int, int], bias_bits: int, profile,
                 learn_scale: bool = True):
        super().__init__(scale, profile.power_of_two_scales, learn_scale)
        self.weight = torch.nn.Parameter(torch.as_tensor(weight, dtype=torch.float32).clone())
        self.bias = torch.nn.Parameter(torch.as_tensor(bias, dtype=torch.float32).clone())
        self.register_buffer("zero_point", torch.as_tensor(zero_point, dtype=torch.int64).reshape(-1).clone())
        # Iterative weight freezing (:mod:`intsim.qat.oscillation`): where ``frozen``, the code is ``frozen_codes``.
        self.register_buffer("frozen", torch.zeros(self.weight.shape, dtype=torch.bool))
        self.register_buffer("frozen_codes", torch.zeros(self.weight.shape))
        self.qmin, self.qmax = codes
        self.bias_max = 2 ** (bias_bits - 1) - 1

    def _channel(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.reshape((-1,) + (1,) * (ndim - 1))

    def folded(self, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` in float, as the integer layer takes them (before quantization)."""
        return self.weight.to(dtype), self.bias.to(dtype)

    def weight_codes(self, dtype=torch.float32) -> torch.Tensor:
        """Weight codes (as floats, ONNX layout), rounded with the STE; a frozen weight's code is its frozen one
        (no gradient reaches its latent weight)."""
        w = self.folded(dtype)[0]
        scale = self._channel(self.scale(dtype), w.ndim)
        zp = self._channel(self.zero_point.to(dtype), w.ndim)
        codes = torch.clamp(round_ste(w / scale) + zp, self.qmin, self.qmax)
        return torch.where(self.frozen, self.frozen_codes.to(dtype), codes)

    def freeze(self, mask: torch.Tensor, codes: torch.Tensor):
        """Fix the codes of the weights in ``mask`` (ONNX layout) at ``codes`` for the rest of training and export;
        a weight frozen before keeps its code."""
        with torch.no_grad():
            new = mask & ~self.frozen
            self.frozen_codes.copy_(torch.where(new, codes.to(self.frozen_codes.dtype), self.frozen_codes))
            self.frozen.logical_or_(new)

    def rounding_distance(self) -> torch.Tensor:
        """``sum((clip(w) - centre)^2)`` over the weights that are not frozen, in weight units: the distance of
        each latent weight, clipped to the grid's range, to the centre of its rounding bin (the dampening loss
        of Nagel et al. 2022).  The centre and the scale are constants for the gradient: only ``w`` moves."""
        w = self.folded()[0]
        with torch.no_grad():
            scale = self._channel(self.scale(), w.ndim)
            zp = self._channel(self.zero_point.to(w.dtype), w.ndim)
            centre = (torch.clamp(torch.round(w / scale) + zp, self.qmin, self.qmax) - zp) * scale
            lo, hi = (self.qmin - zp) * scale, (self.qmax - zp) * scale
        clipped = torch.minimum(torch.maximum(w, lo), hi)
        return torch.where(self.frozen, 0.0, (clipped - centre) ** 2).sum()

    def dequantized(self, x_scale: torch.Tensor, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weight, bias)`` on the integer grid for an input of scale ``x_scale``."""
        scale = self.scale(dtype)
        codes = self.weight_codes(dtype)
        zp = self._channel(self.zero_point.to(dtype), codes.ndim)
        weight = (codes - zp) * self._channel(scale, codes.ndim)
        bias_scale = x_scale * scale
        bias_codes = torch.clamp(round_ste(self.folded(dtype)[1] / bias_scale), -self.bias_max - 1, self.bias_max)
        return weight, bias_codes * bias_scale

    def export(self, channels: int):
        """``(codes, scale, zero_point)`` as :attr:`intsim.converter.lowering.QuantizationPlan.weights` holds them:
        the codes and float64 scales the forward pass uses, the scale broadcast to ``channels``."""
        with torch.no_grad():
            codes = self.weight_codes(torch.float64).numpy().astype("int64")
            scale = self.scale(torch.float64).numpy()
        zp = self.zero_point.numpy()
        return codes, scale.repeat(channels // scale.size), zp.repeat(channels // zp.size)


class BatchNormWeightQuantizer(WeightQuantizer):
    """A layer that keeps its batch norm during training: white paper §4.2's variant with batch statistics
    (Krishnamoorthi 2018), beside static folding.

    ``weight`` is the layer's weight before the batch norm, ``bias`` the batch norm's ``beta``; ``gamma``
    is learned too, and the running mean and variance of the layer's output ``z = W * x`` are tracked
    (``momentum``).  The integer layer is always the fold on the running statistics
    (:meth:`folded`: ``W gamma / sigma``, ``beta - mean gamma / sigma``), quantized on the layer's grid.
    While training, :meth:`batch_normalize` rescales that layer's output to the batch statistics, so the
    batch norm trains as it did in float.  Built from the statically folded layer with the running
    statistics of its output measured on data, it starts as the identity on them: ``gamma = sigma``,
    ``beta = mean + bias``.  Every fold is computed in float32, the type of the exported constants.
    """

    def __init__(self, folded: WeightQuantizer, profile, mean, var, eps: float = 1e-5, momentum: float = 0.1):
        with torch.no_grad():
            weight, bias = folded.folded()
            super().__init__(weight, bias, torch.exp2(folded.log2_scale.double()), folded.zero_point, (folded.qmin, folded.qmax), profile.bias_bits,
                             profile, folded.log2_scale.requires_grad)
            self.log2_scale.copy_(folded.log2_scale)
            self.eps, self.momentum = eps, momentum
            mean, var = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(var, dtype=torch.float32)
            self.register_buffer("running_mean", mean.clone())
            self.register_buffer("running_var", var.clone())
            self.gamma = torch.nn.Parameter(torch.sqrt(var + eps))
            self.bias.copy_(bias + mean)

    def _factor(self, var):
        return self.gamma / torch.sqrt(var + self.eps)

    def folded(self, dtype=torch.float32):
        factor = self._factor(self.running_var)
        weight = self.weight * self._channel(factor, self.weight.ndim)
        return weight.to(dtype), (self.bias - self.running_mean * factor).to(dtype)

    def batch_normalize(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The training output: ``y``, the quantized layer's output without its bias, and ``z``, the
        float layer's output (``W * x``, channels on axis 1), give ``BN(z)`` with ``z``'s batch
        statistics and the quantized weights, ``y sigma / sigma_B + beta - gamma mean_B / sigma_B``.
        Updates the running statistics."""
        dims = [d for d in range(z.ndim) if d != 1]
        mean, var = z.mean(dims), z.var(dims, unbiased=False)
        shape = (1, -1) + (1,) * (z.ndim - 2)
        factor = self._factor(var).to(y.dtype)
        out = y * (torch.sqrt(self.running_var + self.eps) / torch.sqrt(var + self.eps)).to(y.dtype).reshape(shape)
        out = out + (self.bias - mean * factor).to(y.dtype).reshape(shape)
        with torch.no_grad():
            count = z.numel() // z.shape[1]
            self.running_mean.lerp_(mean.detach().float(), self.momentum)
            self.running_var.lerp_(var.detach().float() * count / max(count - 1, 1), self.momentum)
        return out
