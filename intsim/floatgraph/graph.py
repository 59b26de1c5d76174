"""The float graph: what an imported model computes before quantization.

Nodes use ONNX op types and ONNX (NCHW) layout, normalised by the importer so
that every op has one form whatever the opset or exporter: attributes that
later opsets pass as constant inputs (Clip's min/max, Squeeze/Unsqueeze/
ReduceMean axes, Pad's pads, Resize's scales, Reshape's shape) are attributes
here, ``auto_pad`` is resolved to explicit ``pads``, and Identity / Dropout are
gone.  See :mod:`intsim.importers.onnx` for the exact canonical forms.

Constants (initializers and folded subgraphs) live in ``constants``; every
other tensor is computed.  ``shapes`` holds the inferred shape of every tensor,
``None`` for a dimension of unknown size (the batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FloatNode:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)


@dataclass
class FloatGraph:
    name: str
    nodes: list[FloatNode]
    inputs: list[str]
    outputs: list[str]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, tuple] = field(default_factory=dict)
    opset: int = 17
    integer_inputs: list[str] = field(default_factory=list)  # inputs holding integers (token ids, masks)

    def producer(self, tensor: str) -> FloatNode | None:
        for node in self.nodes:
            if tensor in node.outputs:
                return node
        return None

    def consumers(self, tensor: str) -> list[FloatNode]:
        return [node for node in self.nodes if tensor in node.inputs]
