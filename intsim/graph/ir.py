"""The integer graph's records: tensors with quantization parameters, nodes with integer parameters.

Pure data, read by every stage (:class:`intsim.graph.Graph` holds and validates them).  Activation
tensors carry a storage dtype, a shape (``None`` for a dimension of any size,
such as the batch), and the per-tensor ``scale`` and ``zero_point`` that map
codes to reals (``real = scale * (code - zero_point)``, white paper eq. 2.4).
The scale is metadata for the float edges of :meth:`intsim.Model.run` and for
reports; the datapath never reads it.  Nodes hold integer parameters only
(weights, int32 bias, multipliers, shifts, tables), except where the profile's
rounding mode is a float one (then each rescale also stores its real ``scale``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from intsim.codes import code_range, dtype_range
from intsim.errors import ValidationError

ACTIVATION_DTYPES = ("int8", "uint8", "int16", "uint16", "int32")

Shape = tuple  # of int | None


@dataclass
class TensorInfo:
    """One activation tensor: ``real = scale * (code - zero_point)``.

    ``bits`` is the width of the tensor's codes where it is narrower than its storage dtype (a 4-bit
    activation stored in int8 holds codes in [-8, 7]); ``None`` means the dtype's full width.
    """

    name: str
    dtype: str
    shape: Shape
    scale: float
    zero_point: int
    bits: int | None = None

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
        if self.bits is not None:
            width = self.np_dtype.itemsize * 8
            if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) or not 2 <= self.bits <= width:
                raise ValidationError(f"{where}: bits must be None or an integer in [2, {width}] for {self.dtype}, "
                                      f"found {self.bits!r}")
            self.bits = int(self.bits)

    @property
    def code_range(self) -> tuple[int, int]:
        """``(lo, hi)`` of the tensor's codes: its ``bits`` wide, signed like its dtype."""
        if self.bits is None:
            return dtype_range(self.dtype)
        return code_range(self.bits, self.np_dtype.kind == "i")

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


def shape_text(shape: Shape) -> str:
    """A shape as messages and reports write it, a free (batch) dimension as ``N``: ``(N, 8, 8, 3)``."""
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def shapes_compatible(declared: Shape, inferred: Shape) -> bool:
    """Same rank, and equal wherever both dimensions are known."""
    if len(declared) != len(inferred):
        return False
    return all(a is None or b is None or a == b for a, b in zip(declared, inferred))
