"""A device's (or an RTL simulation's) per-layer dump against intsim: the first diverging node, the
mismatches classified, and the setting that reproduces the device's output on its own inputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from intsim.errors import IntsimError, ValidationError
from intsim.graph import Graph, Node
from intsim.graph.ops import REQUANTIZING_OPS, clamp_bounds
from intsim.runtime import Model

from intsim.hwval.golden import Golden, load_golden
from intsim.hwval.variants import CAUSES, NodeSetup


# --------------------------------------------------------------------------
# Diff.
# --------------------------------------------------------------------------


@dataclass
class Comparison:
    """One compared array (a tensor, or a node's accumulators): ``device - intsim`` on mismatches."""

    node: str
    op: str
    what: str  # "output 't1'", "accumulator", "graph input 'x'"
    elements: int
    mismatches: int = 0
    off_by_one: int = 0
    at_clamp: int = 0
    large: int = 0
    max_abs_diff: int = 0
    first_index: tuple | None = None

    @property
    def pattern(self) -> str:
        """The most frequent kind of mismatch."""
        if not self.mismatches:
            return "exact"
        counts = {"off-by-one (rounding)": self.off_by_one, "saturation at the clamp bounds": self.at_clamp,
                  "large (wrap-around or garbage)": self.large}
        return max(counts, key=counts.get)

    def describe(self) -> str:
        if not self.mismatches:
            return f"{self.op} {self.node!r} {self.what}: all {self.elements} equal"
        return (f"{self.op} {self.node!r} {self.what}: {self.mismatches} of {self.elements} differ "
                f"({self.off_by_one} off by one, {self.at_clamp} at the clamp bounds, {self.large} large; "
                f"max |diff| {self.max_abs_diff}, first at index {list(self.first_index)})")


def _compare(node, op, what, device, ours, bounds=None) -> Comparison:
    if device.shape != ours.shape:
        raise ValidationError(f"device dump: {op} {node!r} {what} has shape {device.shape}, intsim's has {ours.shape}")
    d, s = device.astype(np.int64), ours.astype(np.int64)
    bad = d != s
    result = Comparison(node, op, what, int(d.size), int(bad.sum()))
    if result.mismatches:
        diff = np.abs(d - s)[bad]
        one = diff == 1
        clamp = np.zeros_like(one)
        if bounds is not None:
            device_bad = d[bad]  # the device clamped where intsim did not, or did not clamp
            clamp = ~one & (np.isin(device_bad, bounds) | (device_bad < bounds[0]) | (device_bad > bounds[1]))
        result.off_by_one, result.at_clamp = int(one.sum()), int(clamp.sum())
        result.large = result.mismatches - result.off_by_one - result.at_clamp
        result.max_abs_diff = int(diff.max())
        result.first_index = tuple(int(i) for i in np.argwhere(bad)[0])
    return result


@dataclass
class Candidate:
    """One setting tried on the first diverging node: how many compared values still differ."""

    cause: str
    setting: str
    description: str
    mismatches: int
    elements: int

    @property
    def exact(self) -> bool:
        return self.mismatches == 0


@dataclass
class DiffReport:
    """The result of :func:`diff`: comparisons in graph order, the first divergence and its likely cause."""

    model: str
    profile: str
    dump: str
    comparisons: list
    first: Comparison | None
    inputs_from: dict = field(default_factory=dict)
    candidates: list = field(default_factory=list)

    @property
    def cause(self) -> Candidate | None:
        """The best candidate (fewest mismatches, then the order of :data:`CAUSES`)."""
        return self.candidates[0] if self.candidates else None

    def summary(self) -> str:
        if self.first is None:
            return f"no divergence: every dumped array equals intsim's ({len(self.comparisons)} compared)"
        lines = [f"first divergence: {self.first.describe()}; pattern: {self.first.pattern}"]
        if self.candidates:
            sources = ", ".join(f"{t} from {src}" for t, src in self.inputs_from.items())
            best = self.cause
            as_is = next((c for c in self.candidates if c.cause == "none"), None)
            verb = "reproduces the device exactly" if best.exact else \
                f"comes closest ({best.mismatches} of {best.elements} still differ)"
            if as_is is not None:
                lines.append(f"re-running {self.first.node!r} alone on its inputs ({sources}): as simulated, "
                             f"{as_is.mismatches} of {as_is.elements} differ")
            if best.cause == "none" and best.exact:
                lines.append("most likely cause: the node's inputs (the node itself computes like intsim on them)")
            elif best.cause == "none":
                lines.append(f"no setting tried reproduces the device or comes closer than the simulation "
                             f"({len(self.candidates) - 1} tried)")
            else:
                lines.append(f"most likely cause: {best.cause}: {best.setting} ({best.description}) {verb}")
            others = [c.setting for c in self.candidates[1:] if c.exact]
            if others:
                lines.append("also exact: " + ", ".join(others))
        return "\n".join(lines)

    def table(self) -> str:
        header = ["node", "op", "compared", "elements", "mismatches", "pattern"]
        rows = [[c.node, c.op, c.what, str(c.elements), str(c.mismatches), c.pattern] for c in self.comparisons]
        widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
        lines = [f"model {self.model!r} (profile {self.profile!r}) vs device dump {self.dump}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
        return "\n".join(lines + [self.summary()])

    def to_dict(self) -> dict:
        return {"model": self.model, "profile": self.profile, "dump": self.dump,
                "comparisons": [dataclasses.asdict(c) | {"pattern": c.pattern} for c in self.comparisons],
                "first": None if self.first is None else self.first.describe(),
                "inputs_from": self.inputs_from,
                "candidates": [dataclasses.asdict(c) for c in self.candidates]}


def diff(model: Model, inputs, device_dump, *, float_input: bool = False, format: str | None = None) -> DiffReport:
    """Compare a device's per-layer dump with intsim and diagnose the first diverging node.

    Every dumped graph input, node output and accumulator is compared in graph
    order.  The first node with a mismatch is re-run alone, on the device's
    own inputs where the dump has them (else intsim's), as simulated and under
    every setting of :data:`CAUSES`; the candidates are ranked by how many of
    the dumped values (outputs and accumulators) still differ.

    Parameters
    ----------
    model : Model
    inputs : array or list of arrays
        The input the device ran: integer codes, or floats with ``float_input=True``.
    device_dump : path or Golden
        A directory in the :func:`write_golden` layout (any subset of tensors).
    format : str, optional
        Which files of the dump to read (see :func:`load_golden`).
    """
    dump = device_dump if isinstance(device_dump, Golden) else load_golden(device_dump, format)
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    graph = model.graph
    trace = model.trace(*inputs, float_input=float_input)
    unknown = sorted(set(dump.tensors) - set(graph.tensors))
    unknown += sorted(f"accumulator of {n!r}" for n in set(dump.accumulators) - set(trace.accumulators))
    if unknown:
        raise ValidationError(f"device dump {dump.directory}: expected names of model {graph.name!r} "
                              f"(see intsim golden's manifest), found {len(unknown)} unknown: {', '.join(unknown[:5])}")
    comparisons, first_node = [], None
    for t in graph.inputs:
        if t in dump.tensors:
            comparisons.append(_compare("(graph input)", "input", f"tensor {t!r}", dump.tensors[t], trace.tensors[t]))
    for node in graph.nodes:
        bounds = None
        if node.op in REQUANTIZING_OPS:
            bounds = list(clamp_bounds(node, graph.tensors[node.outputs[0]]))
        if node.name in dump.accumulators and node.name in trace.accumulators:
            comparisons.append(_compare(node.name, node.op, "accumulator", dump.accumulators[node.name],
                                        trace.accumulators[node.name]))
        for t in node.outputs:
            if t in dump.tensors:
                comparisons.append(_compare(node.name, node.op, f"output {t!r}", dump.tensors[t], trace.tensors[t],
                                            bounds))
        if first_node is None and any(c.mismatches for c in comparisons):
            first_node = node
    first = next((c for c in comparisons if c.mismatches), None)
    report = DiffReport(graph.name, graph.profile.name, str(dump.directory), comparisons, first)
    if first_node is not None and first.node == first_node.name:
        report.inputs_from = {t: "device" if t in dump.tensors else "intsim" for t in dict.fromkeys(first_node.inputs)}
        # a dumped input was compared above, so its shape is intsim's
        node_inputs = {t: dump.tensors[t] if t in dump.tensors else trace.tensors[t] for t in report.inputs_from}
        report.candidates = _diagnose(graph, first_node, node_inputs, dump)
    return report


def _diagnose(graph: Graph, node: Node, inputs: dict, dump: Golden) -> list[Candidate]:
    setup = NodeSetup.of(graph, node)
    if setup.profile.overflow == "error":  # count overflows instead of stopping at them
        setup = setup.replace(profile=setup.profile.replace(overflow="wrap"))
    targets = [(t, dump.tensors[t]) for t in node.outputs if t in dump.tensors]
    acc = dump.accumulators.get(node.name)

    def score(variant: NodeSetup) -> int | None:
        try:
            result = variant.run(inputs)
        except IntsimError:
            return None  # the setting is not valid for this node (e.g. integer softmax in a float mode)
        bad = sum(int(np.sum(result.tensors[t].astype(np.int64) != target)) for t, target in targets)
        if acc is not None and node.name in result.accumulators:
            bad += int(np.sum(result.accumulators[node.name].astype(np.int64) != acc))
        return bad

    elements = sum(target.size for _, target in targets) + (0 if acc is None else acc.size)
    ranked = [(score(setup), 0, 0, Candidate("none", "as simulated", "the profile's own settings", 0, elements))]
    for order, (cause, variants) in enumerate(CAUSES.items(), start=1):
        for index, (setting, description, variant) in enumerate(variants(setup)):
            mismatches = score(variant)
            if mismatches is not None:
                ranked.append((mismatches, order, index, Candidate(cause, setting, description, 0, elements)))
    ranked = [r for r in ranked if r[0] is not None]
    for mismatches, _, _, candidate in ranked:
        candidate.mismatches = mismatches
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked]
