"""One node re-run alone under a modified setting (rounding, accumulator width, bias, zero points,
int16 pairs): the causes the diff tries and the widths the sweep measures."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from intsim.fixedpoint import INTEGER_ROUNDING_MODES, ROUNDING_MODES, saturate, wrap
from intsim.graph import Graph, Node
from intsim.graph.ops import MAC_OPS, REQUANTIZING_OPS
from intsim.runtime import Model, Trace


# --------------------------------------------------------------------------
# One node alone, under a modified setting: the diff's causes and the sweep's widths.
# --------------------------------------------------------------------------


@dataclass
class NodeSetup:
    """One node with the profile and tensor descriptions it runs under (copies: safe to modify)."""

    profile: object
    node: Node
    tensors: dict

    @classmethod
    def of(cls, graph: Graph, node: Node) -> "NodeSetup":
        copy = Node(node.op, node.name, list(node.inputs), list(node.outputs), dict(node.attrs), dict(node.params))
        return cls(graph.profile, copy, {t: graph.tensors[t] for t in node.inputs + node.outputs})

    def replace(self, profile=None, attrs=None, params=None, tensors=None) -> "NodeSetup":
        node = Node(self.node.op, self.node.name, self.node.inputs, self.node.outputs,
                    {**self.node.attrs, **(attrs or {})}, {**self.node.params, **(params or {})})
        return NodeSetup(profile or self.profile, node, {**self.tensors, **(tensors or {})})

    @property
    def rounding(self) -> str:
        """The node's requantization rounding mode (its own attribute, else the profile's)."""
        return self.node.attrs.get("rounding", self.profile.rounding)

    def run(self, inputs: dict) -> Trace:
        """Run the node alone on ``inputs`` (tensor name -> codes); raises ValidationError for an invalid setting."""
        names = list(dict.fromkeys(self.node.inputs))
        graph = Graph(f"{self.node.name} alone", self.profile, dict(self.tensors), [self.node], names,
                      list(self.node.outputs))
        return Model(graph).trace(*[inputs[t] for t in names])


def _rescale_prefixes(node: Node) -> list[str]:
    return [key[: -len("multiplier")] for key in node.params if key.endswith("multiplier")
            and f"{key[: -len('multiplier')]}shift" in node.params]


def _rounding_variants(setup: NodeSetup):
    """Each other requantization rounding mode (white paper §2.2): the device rounds differently.

    A float mode needs each rescale's real ``scale``: the node's own where it has one, else
    ``multiplier * 2**(shift - multiplier_bits)``; an integer mode must not carry it.
    """
    node = setup.node
    if node.op not in REQUANTIZING_OPS:
        return
    prefixes = _rescale_prefixes(node)
    bits = setup.profile.multiplier_bits
    integer_params = {k: v for k, v in node.params.items() if k not in {f"{p}scale" for p in prefixes}}
    float_params = dict(integer_params)
    for p in prefixes:
        derived = node.params[f"{p}multiplier"].astype(np.float64) * 2.0 ** (node.params[f"{p}shift"] - bits)
        float_params[f"{p}scale"] = node.params.get(f"{p}scale", derived)
    for mode in ROUNDING_MODES:
        if mode != setup.rounding:
            params = integer_params if mode in INTEGER_ROUNDING_MODES else float_params
            variant = dataclasses.replace(node, attrs={**node.attrs, "rounding": mode}, params=params)
            yield (f"rounding={mode}", f"requantization rounds {mode!r} instead of {setup.rounding!r}",
                   NodeSetup(setup.profile, variant, setup.tensors))


def _accumulator_variants(setup: NodeSetup):
    """Accumulator widths 16..32 bits under wrap and saturate: the device's MAC array is narrower."""
    if setup.node.op not in MAC_OPS:
        return
    current = (setup.profile.accumulator_bits, setup.profile.overflow)
    for policy in ("wrap", "saturate"):
        for bits in range(16, 33):
            if (bits, policy) != current:
                yield (f"accumulator={bits}-bit {policy}", f"{bits}-bit accumulators that {policy} on overflow",
                       setup.replace(profile=setup.profile.replace(accumulator_bits=bits, overflow=policy)))


def _bias_variants(setup: NodeSetup):
    """The bias dropped, or stored in fewer bits than int32 (saturated or wrapped on the way in)."""
    bias = setup.node.params.get("bias")
    if bias is None:
        return
    if np.any(bias):
        yield "bias omitted", "the bias is not added", setup.replace(params={"bias": np.zeros_like(bias)})
    wide = bias.astype(np.int64)
    for bits in range(8, setup.profile.bias_bits):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if wide.min() >= lo and wide.max() <= hi:
            continue
        for policy, limit in (("saturate", saturate), ("wrap", wrap)):
            narrowed = np.array([limit(int(b), bits) for b in wide], dtype=bias.dtype)
            yield (f"bias={bits}-bit {policy}", f"the bias is stored in {bits} bits and {policy}s",
                   setup.replace(params={"bias": narrowed}))


def _zero_point_variants(setup: NodeSetup):
    """A zero point the device leaves out (white paper §2.4: the z_x and z_w terms of the MAC)."""
    node = setup.node
    for t in dict.fromkeys(node.inputs):
        info = setup.tensors[t]
        if info.zero_point:
            yield (f"input zero point omitted ({t})", f"input {t!r} is used without subtracting its zero point "
                   f"{info.zero_point}", setup.replace(tensors={t: dataclasses.replace(info, zero_point=0)}))
    out = setup.tensors[node.outputs[0]]
    if out.zero_point and node.op in REQUANTIZING_OPS:
        yield ("output zero point omitted", f"the output zero point {out.zero_point} is not added",
               setup.replace(tensors={out.name: dataclasses.replace(out, zero_point=0)}))
    wzp = node.params.get("weight_zero_point")
    if wzp is not None and np.any(wzp):
        yield ("weight zero point omitted", "the weight zero point is not subtracted",
               setup.replace(params={"weight_zero_point": np.zeros_like(wzp)}))


def _pairwise_variants(setup: NodeSetup):
    """Products summed in saturating int16 pairs (x86 ``vpmaddubsw``) or not."""
    profile = setup.profile
    if setup.node.op in MAC_OPS and profile.weight_bits <= 8 and profile.activation_bits <= 8:
        state = not profile.pairwise_int16
        yield (f"pairwise_int16={str(state).lower()}", "int16 pair saturation " + ("on" if state else "off"),
               setup.replace(profile=profile.replace(pairwise_int16=state)))


# The causes the diff tries, in the order it prefers them when several reproduce the device exactly.
CAUSES = {
    "rounding mode": _rounding_variants,
    "accumulator overflow": _accumulator_variants,
    "bias overflow": _bias_variants,
    "zero-point handling": _zero_point_variants,
    "int16 pair saturation": _pairwise_variants,
}
