"""The integer graph as a whole: tensors, nodes in execution order, the profile it was built for.

Every graph is validated when it is built (:func:`validate`): tensor references, dtypes, shapes
(inferred node by node by the op registry) and parameter ranges against its profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from intsim.errors import ValidationError
from intsim.graph.ir import Node, TensorInfo, shapes_compatible
from intsim.graph.ops import get_op
from intsim.profiles import Profile, get_profile

# The most elements a tensor may hold per unit of its unknown dimensions (per sample): 2^28 keeps every
# flat index inside int32 and stops a hostile pad, stride or window from asking for gigabytes.
MAX_STATIC_ELEMENTS = 2**28


@dataclass
class Graph:
    """An integer graph built for one :class:`~intsim.profiles.Profile`.

    ``metadata`` is JSON data the datapath never reads: what the converter
    recorded for reports (the float tensor each integer tensor comes from, real
    multipliers, weight scales, bias overflow counts, calibration settings).
    """

    name: str
    profile: Profile
    tensors: dict[str, TensorInfo]
    nodes: list[Node]
    inputs: list[str]
    outputs: list[str]
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.profile = get_profile(self.profile)
        if isinstance(self.tensors, (list, tuple)):
            self.tensors = {t.name: t for t in self.tensors}
        validate(self)

    def producer(self, tensor: str) -> Node | None:
        for node in self.nodes:
            if tensor in node.outputs:
                return node
        return None


def validate(graph: Graph) -> None:
    """Check references, dtypes, inferred shapes and parameter ranges of ``graph``.

    Raises :class:`~intsim.errors.ValidationError` naming the node or tensor.
    """
    where = f"graph {graph.name!r}"
    for name, info in graph.tensors.items():
        if not isinstance(info, TensorInfo) or info.name != name:
            raise ValidationError(f"{where}: tensor table entry {name!r} does not describe a tensor of that name")
    if not graph.inputs or not graph.outputs:
        raise ValidationError(f"{where}: a graph needs at least one input and one output")
    available = set()
    for name in graph.inputs:
        if name not in graph.tensors:
            raise ValidationError(f"{where}: input {name!r} has no tensor entry")
        if _static_elements(graph.tensors[name].shape) > MAX_STATIC_ELEMENTS:
            raise ValidationError(f"{where}: input {name!r} of shape {graph.tensors[name].shape} holds more than "
                                  f"{MAX_STATIC_ELEMENTS} elements per sample")
        available.add(name)
    names = set()
    for node in graph.nodes:
        if node.name in names:
            raise ValidationError(f"{where}: node name {node.name!r} is used twice")
        names.add(node.name)
        op = get_op(node.op, node.name)
        for t in node.inputs:
            if t not in graph.tensors:
                raise ValidationError(f"{node.op} {node.name!r}: input {t!r} has no tensor entry")
            if t not in available:
                raise ValidationError(f"{node.op} {node.name!r}: input {t!r} is not produced before this node")
        for t in node.outputs:
            if t not in graph.tensors:
                raise ValidationError(f"{node.op} {node.name!r}: output {t!r} has no tensor entry")
            if t in available:
                raise ValidationError(f"{node.op} {node.name!r}: output {t!r} is produced twice")
        op.check(node, graph)
        inferred = op.infer(node, [graph.tensors[t] for t in node.inputs], graph)
        for t, shape in zip(node.outputs, inferred):
            if _static_elements(shape) > MAX_STATIC_ELEMENTS:
                raise ValidationError(f"{node.op} {node.name!r}: output {t!r} of shape {shape} holds more than "
                                      f"{MAX_STATIC_ELEMENTS} elements per sample")
            declared = graph.tensors[t].shape
            if not shapes_compatible(declared, shape):
                raise ValidationError(
                    f"{node.op} {node.name!r}: output {t!r} is declared {declared} but the op produces {shape}"
                )
        available.update(node.outputs)
    for name in graph.outputs:
        if name not in available:
            raise ValidationError(f"{where}: output {name!r} is never produced")


def _static_elements(shape) -> int:
    count = 1
    for d in shape:
        count *= 1 if d is None else d
    return count
