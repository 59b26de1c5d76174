"""Hardware profiles: the one place a chip's arithmetic is described.

A :class:`Profile` fixes bit widths, signedness, granularity and symmetry of
the quantizers (white paper §2.1-2.4), the requantization rounding mode and
multiplier width (see :mod:`intsim.fixedpoint`), and the accumulator width with
its overflow policy.  The converter reads it to choose quantization parameters;
the runtime reads it to know what the hardware does with them.

Built-ins live next to this file as TOML (``tflite``, ``tosa``, ``onnxruntime``,
``onnxruntime_avx2``, ``paper``, ``pow2``); a user describes a chip in a TOML
file with the same keys (every key but ``name`` is optional)::

    name = "my_npu"
    activation_bits = 8
    accumulator_bits = 24
    overflow = "saturate"
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from intsim.codes import OVERFLOW_POLICIES, code_range, storage_dtype
from intsim.errors import ValidationError
from intsim.safeio import read_toml

# Summation orders of the float32 Conv / Gemm / MatMul islands (intsim.kernels.mlas_sgemm).
FLOAT_ISLAND_ORDERS = ("exact", "mlas")
from intsim.fixedpoint import INTEGER_ROUNDING_MODES, ROUNDING_MODES

LAYERNORM_MODES = ("integer", "int16", "none")  # how a chip normalizes layers (intsim.converter.lower_sequence)
INT16_TABLE_MODES = ("full", "interpolated")  # tables of 16-bit inputs (intsim.converter.tables)


@dataclass(frozen=True)
class Profile:
    """The integer arithmetic of one accelerator.

    Attributes
    ----------
    name, description : str
    weight_bits, activation_bits : int
        2..16.  Stored as int8/uint8 up to 8 bits, int16/uint16 above.
    weight_signed, activation_signed : bool
    weight_symmetric, activation_symmetric : bool
        Symmetric quantizers have zero point 0 (white paper §2.2).
    weight_narrow_range : bool
        Symmetric signed weights use [-(2**(b-1) - 1), 2**(b-1) - 1], so that
        ``-w`` is representable (TFLite's int8 weights are in [-127, 127]).
    per_channel : bool
        One weight scale per output channel instead of one per tensor (§2.4.2).
    power_of_two_scales : bool
        Scales are powers of two, so requantization is a rounding shift (§2.2).
    rounding : str
        Requantization rounding mode, one of :data:`intsim.fixedpoint.ROUNDING_MODES`.
    multiplier_bits : int
        Fractional bits of the fixed-point multiplier, 2..31.
    bias_bits : int
        Width of the stored bias, 8..32.
    accumulator_bits : int
        Width of the MAC accumulator, 8..32.
    overflow : str
        What the accumulator does when a sum leaves its range:
        ``"saturate"`` (clamp after every addition), ``"wrap"`` (two's
        complement) or ``"error"`` (raise :class:`intsim.errors.AccumulatorOverflowError`).
    pairwise_int16 : bool
        Model x86 ``vpmaddubsw``: the products of each consecutive pair along
        the reduction axis are summed into a saturating int16 before being
        added to the accumulator (onnxruntime's u8s8 kernels on AVX2 without VNNI).
    supported_formats : tuple of str
        The layer formats the chip runs, as ``"w<weight bits>a<activation bits>"`` (``"w8a8"``,
        ``"w8a16"``, ``"w4a8"``); a per-layer configuration (``convert(..., layer_config=...)``)
        outside them is refused.  Empty: every format the kernels run (2 to 16 bits each).
    layernorm : str
        Layer normalization on the chip: ``"integer"`` (integer-only, inputs at
        ``activation_bits``), ``"int16"`` (the same with 16-bit inputs) or
        ``"none"`` (a LayerNormalization does not convert; see
        :mod:`intsim.converter.lower_sequence`).
    int16_tables : str
        Elementwise functions of 16-bit inputs (sigmoid, tanh, GELU, exp, ...): ``"full"`` (a table of
        65,536 output codes, one per input code, op ``lut``) or ``"interpolated"`` (513 entries, one per
        128 input codes, linearly interpolated in integers, op ``lut_interpolated``; LiteRT's int16 LUT
        semantics, see :mod:`intsim.kernels.tables`).
    float_island_order : str
        Summation order of the float32 Conv / Gemm / MatMul islands of a QDQ
        model (ops ``conv2d_float32``, ``gemm_float32``, ``matmul_float32``), one
        of :data:`FLOAT_ISLAND_ORDERS`: ``"exact"`` (exact products summed in
        float64, rounded once) or ``"mlas"`` (onnxruntime's MLAS kernels on
        x86-64, see :mod:`intsim.kernels.mlas_sgemm`).
    """

    name: str
    description: str = ""
    weight_bits: int = 8
    weight_signed: bool = True
    weight_symmetric: bool = True
    weight_narrow_range: bool = True
    per_channel: bool = True
    activation_bits: int = 8
    activation_signed: bool = True
    activation_symmetric: bool = False
    power_of_two_scales: bool = False
    rounding: str = "double"
    multiplier_bits: int = 31
    bias_bits: int = 32
    accumulator_bits: int = 32
    overflow: str = "wrap"
    pairwise_int16: bool = False
    supported_formats: tuple = ()
    layernorm: str = "integer"
    int16_tables: str = "full"
    float_island_order: str = "exact"

    def __post_init__(self):
        where = f"profile {self.name!r}"
        object.__setattr__(self, "supported_formats", _checked_formats(self.supported_formats, where))
        for f in dataclasses.fields(self):
            if f.name == "supported_formats":
                continue
            value = getattr(self, f.name)
            expected = {"str": str, "int": int, "bool": bool}[f.type]
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValidationError(f"{where}: {f.name} must be {f.type}, found {value!r}")
        for field, lo, hi in (
            ("weight_bits", 2, 16),
            ("activation_bits", 2, 16),
            ("multiplier_bits", 2, 31),
            ("bias_bits", 8, 32),
            ("accumulator_bits", 8, 32),
        ):
            value = getattr(self, field)
            if not lo <= value <= hi:
                raise ValidationError(f"{where}: {field} must be in [{lo}, {hi}], found {value}")
        if self.rounding not in ROUNDING_MODES:
            raise ValidationError(f"{where}: rounding must be one of {', '.join(ROUNDING_MODES)}, found {self.rounding!r}")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValidationError(
                f"{where}: overflow must be one of {', '.join(OVERFLOW_POLICIES)}, found {self.overflow!r}"
            )
        if self.layernorm not in LAYERNORM_MODES:
            raise ValidationError(f"{where}: layernorm must be one of {', '.join(LAYERNORM_MODES)}, found {self.layernorm!r}")
        if self.int16_tables not in INT16_TABLE_MODES:
            raise ValidationError(f"{where}: int16_tables must be one of {', '.join(INT16_TABLE_MODES)}, "
                                  f"found {self.int16_tables!r}")
        if self.power_of_two_scales and self.rounding not in INTEGER_ROUNDING_MODES:
            raise ValidationError(f"{where}: power_of_two_scales needs an integer rounding mode, found {self.rounding!r}")
        if self.float_island_order not in FLOAT_ISLAND_ORDERS:
            raise ValidationError(f"{where}: float_island_order must be one of {', '.join(FLOAT_ISLAND_ORDERS)}, "
                                  f"found {self.float_island_order!r}")
        if self.pairwise_int16 and (self.weight_bits > 8 or self.activation_bits > 8):
            raise ValidationError(
                f"{where}: pairwise_int16 models 8-bit x 8-bit products, found weight_bits={self.weight_bits}, "
                f"activation_bits={self.activation_bits}"
            )

    # --- derived ---------------------------------------------------------
    def supports(self, weight_bits: int | None, activation_bits: int) -> bool:
        """Whether a layer of ``weight_bits`` weights (None: a layer without weights) and
        ``activation_bits`` activations is in :attr:`supported_formats` (always, when it is empty)."""
        if not self.supported_formats:
            return True
        if weight_bits is None:
            return any(f.endswith(f"a{activation_bits}") for f in self.supported_formats)
        return f"w{weight_bits}a{activation_bits}" in self.supported_formats

    def weight_range(self) -> tuple[int, int]:
        """Inclusive integer range of a weight code."""
        lo, hi = code_range(self.weight_bits, self.weight_signed)
        if self.weight_signed and self.weight_symmetric and self.weight_narrow_range:
            lo += 1
        return lo, hi

    def activation_range(self) -> tuple[int, int]:
        """Inclusive integer range of an activation code."""
        return code_range(self.activation_bits, self.activation_signed)

    @property
    def weight_dtype(self) -> np.dtype:
        return storage_dtype(self.weight_bits, self.weight_signed)

    @property
    def activation_dtype(self) -> np.dtype:
        return storage_dtype(self.activation_bits, self.activation_signed)

    # --- (de)serialisation ----------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The profile as a TOML document that :meth:`from_toml` reads back to an equal profile."""
        return "".join(f"{key} = {toml_value(value)}\n" for key, value in self.to_dict().items())

    @classmethod
    def from_dict(cls, data: dict, *, where: str = "profile") -> "Profile":
        if not isinstance(data, dict):
            raise ValidationError(f"{where}: expected a table of profile fields, found {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValidationError(f"{where}: unknown profile field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "name" not in data:
            raise ValidationError(f"{where}: a profile needs a name")
        return cls(**data)

    @classmethod
    def from_toml(cls, path) -> "Profile":
        path = Path(path)
        data = read_toml(path, f"profile file {path}")
        return cls.from_dict(data, where=f"profile file {path}")

    def replace(self, **overrides) -> "Profile":
        """A copy with some fields changed (validated like any profile)."""
        return dataclasses.replace(self, **overrides)


def toml_value(value) -> str:
    """A field's value as TOML: booleans lower case, strings as basic strings (JSON's escapes are TOML's),
    tuples of strings as arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, tuple)):
        return json.dumps(value if isinstance(value, str) else list(value), ensure_ascii=False)
    return repr(value)


FORMAT_PATTERN = re.compile(r"w([0-9]+)a([0-9]+)")


def _checked_formats(formats, where: str) -> tuple:
    """``supported_formats`` as a tuple of ``"w<bits>a<bits>"`` strings, each width in [2, 16]."""
    if isinstance(formats, str) or not isinstance(formats, (list, tuple)):
        raise ValidationError(f"{where}: supported_formats must be a list of strings like \"w8a8\", found {formats!r}")
    for text in formats:
        match = FORMAT_PATTERN.fullmatch(text) if isinstance(text, str) else None
        if match is None or not all(2 <= int(b) <= 16 for b in match.groups()):
            raise ValidationError(f"{where}: supported_formats entries must read \"w<bits>a<bits>\" with widths in "
                                  f"[2, 16] (e.g. \"w8a16\"), found {text!r}")
    return tuple(formats)




def builtin_names() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in resources.files(__name__).iterdir() if p.name.endswith(".toml"))


def get_profile(profile) -> Profile:
    """A :class:`Profile` from a built-in name, a TOML path, or a Profile (returned as is)."""
    if isinstance(profile, Profile):
        return profile
    if not isinstance(profile, (str, Path)):
        raise ValidationError(f"profile must be a name, a TOML path or a Profile, found {type(profile).__name__}")
    text = str(profile)
    if text in builtin_names():
        resource = resources.files(__name__) / f"{text}.toml"
        return Profile.from_dict(tomllib.loads(resource.read_text(encoding="utf-8")), where=f"built-in profile {text}")
    if text.endswith(".toml") or Path(text).exists():
        return Profile.from_toml(text)
    raise ValidationError(f"unknown profile {text!r}: expected one of {', '.join(builtin_names())} or a .toml file")
