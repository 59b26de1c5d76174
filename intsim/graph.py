"""The integer graph: tensors with quantization parameters, nodes with integer parameters.

A :class:`Graph` is what an integer-only accelerator executes.  Activation
tensors carry a storage dtype, a shape (``None`` for a dimension of any size,
such as the batch), and the per-tensor ``scale`` and ``zero_point`` that map
codes to reals (``real = scale * (code - zero_point)``, white paper eq. 2.4).
The scale is metadata for the float edges of :meth:`intsim.Model.run` and for
reports; the datapath never reads it.  Nodes hold integer parameters only
(weights, int32 bias, multipliers, shifts, tables), except where the profile's
rounding mode is a float one (then each rescale also stores its real ``scale``).

Every graph is validated when it is built (:func:`validate`): tensor
references, dtypes, shapes (inferred node by node), and parameter ranges
against the profile it was built for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from intsim.errors import ValidationError
from intsim.profiles import Profile, get_profile

ACTIVATION_DTYPES = ("int8", "uint8", "int16", "uint16", "int32")

Shape = tuple  # of int | None


@dataclass
class TensorInfo:
    """One activation tensor: ``real = scale * (code - zero_point)``."""

    name: str
    dtype: str
    shape: Shape
    scale: float
    zero_point: int

    def __post_init__(self):
        where = f"tensor {self.name!r}"
        if self.dtype not in ACTIVATION_DTYPES:
            raise ValidationError(f"{where}: dtype must be one of {', '.join(ACTIVATION_DTYPES)}, found {self.dtype!r}")
        try:
            self.shape = tuple(None if d is None else int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise ValidationError(f"{where}: shape must be a sequence of ints or None, found {self.shape!r}") from None
        if any(d is not None and d < 1 for d in self.shape):
            raise ValidationError(f"{where}: dimensions must be >= 1 (or None for any size), found {self.shape}")
        scale = float(self.scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ValidationError(f"{where}: scale must be finite and > 0, found {self.scale!r}")
        self.scale = scale
        lo, hi = dtype_range(self.dtype)
        if isinstance(self.zero_point, (bool, float)) or not lo <= int(self.zero_point) <= hi:
            raise ValidationError(f"{where}: zero_point must be an integer in [{lo}, {hi}] for {self.dtype}, found {self.zero_point!r}")
        self.zero_point = int(self.zero_point)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def same_quantization(self, other: "TensorInfo") -> bool:
        return (self.dtype, self.scale, self.zero_point) == (other.dtype, other.scale, other.zero_point)


@dataclass
class Node:
    """One operation.  ``attrs`` are JSON scalars and lists; ``params`` are numpy arrays."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)


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


def dtype_range(dtype) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def validate(graph: Graph) -> None:
    """Check references, dtypes, inferred shapes and parameter ranges of ``graph``.

    Raises :class:`~intsim.errors.ValidationError` naming the node or tensor.
    """
    from intsim.ops import get_op  # the registry needs the graph types

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
            declared = graph.tensors[t].shape
            if not shapes_compatible(declared, shape):
                raise ValidationError(
                    f"{node.op} {node.name!r}: output {t!r} is declared {declared} but the op produces {shape}"
                )
        available.update(node.outputs)
    for name in graph.outputs:
        if name not in available:
            raise ValidationError(f"{where}: output {name!r} is never produced")


def shapes_compatible(declared: Shape, inferred: Shape) -> bool:
    """Same rank, and equal wherever both dimensions are known."""
    if len(declared) != len(inferred):
        return False
    return all(a is None or b is None or a == b for a, b in zip(declared, inferred))
