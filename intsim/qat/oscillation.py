"""Weight oscillations in quantization-aware training: dampening and iterative freezing (Nagel et al. 2022,
"Overcoming Oscillations in Quantization-Aware Training"; white paper §4).

Under the straight-through estimator a latent weight near a rounding boundary can flip between two
codes from one step to the next: the gradient of the quantized weight pushes it across the boundary,
the gradient on the other side pushes it back.  Low-bit depthwise kernels oscillate most.  Two remedies:

* **dampening** (:func:`dampening_loss`): a loss on the distance of every latent weight to the centre of
  its rounding bin, so that it settles inside the bin; its weight is annealed up over training
  (:func:`annealed`);
* **iterative freezing** (:class:`OscillationFreezer`): count a weight's oscillations (a code change in the
  direction opposite to its previous change), keep an exponential moving average of that count and of
  its code, and fix the code at the rounded average once the frequency passes a threshold.
"""

from __future__ import annotations

import math

import torch

from intsim.qat.fakequant import WeightQuantizer


def annealed(weight: float, step: int, steps: int) -> float:
    """``weight`` scaled by a cosine ramp from 0 (at step 0) to 1 (at step ``steps``)."""
    return weight * 0.5 * (1.0 - math.cos(math.pi * min(step, steps) / steps))


def dampening_loss(layers) -> torch.Tensor:
    """Sum over ``layers`` (:class:`~intsim.qat.fakequant.WeightQuantizer`) of
    :meth:`~intsim.qat.fakequant.WeightQuantizer.rounding_distance`."""
    return sum(layer.rounding_distance() for layer in layers)


class OscillationFreezer:
    """Iterative weight freezing: call :meth:`step` after every optimizer step.

    Parameters
    ----------
    layers : iterable of WeightQuantizer
    threshold : float
        Oscillation frequency (moving average of 0 / 1 oscillation events per step) above which a
        weight's code is frozen.
    momentum : float
        Weight of the newest step in both moving averages (Nagel et al. use 0.01).
    """

    def __init__(self, layers, threshold: float, momentum: float = 0.01):
        self.layers: list[WeightQuantizer] = list(layers)
        self.threshold, self.momentum = threshold, momentum
        self.state = []
        with torch.no_grad():
            for layer in self.layers:
                codes = layer.weight_codes()
                self.state.append({"codes": codes, "direction": torch.zeros_like(codes),
                                   "frequency": torch.zeros_like(codes), "average": codes.clone()})

    def step(self):
        m = self.momentum
        with torch.no_grad():
            for layer, state in zip(self.layers, self.state):
                codes = layer.weight_codes()
                direction = torch.sign(codes - state["codes"])
                oscillated = (direction != 0) & (direction == -state["direction"])
                state["direction"] = torch.where(direction != 0, direction, state["direction"])
                state["frequency"].mul_(1 - m).add_(oscillated.to(codes.dtype), alpha=m)
                state["average"].mul_(1 - m).add_(codes, alpha=m)
                state["codes"] = codes
                layer.freeze(state["frequency"] > self.threshold, torch.round(state["average"]))

    def frozen_fraction(self) -> float:
        """The fraction of all weights of the layers that are frozen."""
        return sum(int(layer.frozen.sum()) for layer in self.layers) / sum(layer.frozen.numel() for layer in self.layers)
