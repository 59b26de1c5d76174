"""Per-layer precision: which nodes of a float graph get which quantization format.

``convert(..., layer_config={pattern: overrides})`` gives some layers other bit widths (or
granularity, symmetry, range methods) than the profile.  A *pattern* is

- an exact node name (``"conv1"``),
- a glob over node names (``"stage2.*"``, :mod:`fnmatch` rules), or
- an ONNX op type (``"Conv"``, ``"Gemm"``, ``"MatMul"``, ...).

Where several patterns match a node, an exact name beats a glob, a glob beats an op type, and of
two patterns of the same kind the later one wins; the overrides merge key by key in that order.
A pattern that matches nothing is an error (it lists the names there are).

*Overrides* are a dict with any of :data:`LAYER_KEYS`.  ``activation_bits`` (and the other
activation keys) set the format a node computes in: the format of its output tensor(s) and the
one it reads its inputs in (the converter inserts a ``rescale`` node where a producer wrote
another).  ``weight_bits`` sets the format of its weights; the bias keeps the profile's
``bias_bits``.  The profile's ``supported_formats`` bound what may be asked.

The CLI reads the same configuration from TOML (``--layer-config FILE.toml``), one table per
pattern, the pattern quoted::

    ["conv1"]
    activation_bits = 16

    ["Gemm"]
    weight_bits = 4

    ["stage2.*"]
    per_channel = false
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from intsim.converter.calibration import RANGE_METHODS
from intsim.converter.quantizer import WEIGHT_METHODS
from intsim.errors import ValidationError
from intsim.safeio import read_toml
from intsim.profiles import Profile, toml_value

# Keys that override a field of the node's Profile, and the range-setting methods of the node.
PROFILE_KEYS = ("weight_bits", "activation_bits", "per_channel", "weight_symmetric", "activation_signed",
                "activation_symmetric")
METHOD_KEYS = ("range_method", "weight_range_method")
LAYER_KEYS = PROFILE_KEYS + METHOD_KEYS
ACTIVATION_KEYS = ("activation_bits", "activation_signed", "activation_symmetric", "range_method")
_GLOB_CHARACTERS = set("*?[")
_KIND_RANK = {"op": 0, "glob": 1, "name": 2}  # exact name > glob > op type


def check_layer_config(layer_config) -> dict:
    """``layer_config`` validated for its shape (patterns are strings, overrides dicts of known keys
    with values of the right type), as a plain dict in its given order."""
    if not isinstance(layer_config, Mapping):
        raise ValidationError(f"layer_config must be a dict of pattern -> overrides, found {type(layer_config).__name__}")
    checked = {}
    for pattern, overrides in layer_config.items():
        where = f"layer_config[{pattern!r}]"
        if not isinstance(pattern, str) or not pattern:
            raise ValidationError(f"layer_config: patterns must be non-empty strings, found {pattern!r}")
        if not isinstance(overrides, Mapping):
            raise ValidationError(f"{where}: overrides must be a dict, found {type(overrides).__name__}")
        for key, value in overrides.items():
            if key not in LAYER_KEYS:
                raise ValidationError(f"{where}: unknown key {key!r}; allowed: {', '.join(LAYER_KEYS)}")
            allowed = RANGE_METHODS if key == "range_method" else WEIGHT_METHODS if key == "weight_range_method" \
                else None
            if allowed is not None and value not in allowed:
                raise ValidationError(f"{where}: {key} must be one of {', '.join(allowed)}, found {value!r}")
            if key.endswith("_bits") and (isinstance(value, bool) or not isinstance(value, int)
                                          or not 2 <= value <= 16):
                raise ValidationError(f"{where}: {key} must be an integer in [2, 16], found {value!r}")
            if key in PROFILE_KEYS and not key.endswith("_bits") and not isinstance(value, bool):
                raise ValidationError(f"{where}: {key} must be true or false, found {value!r}")
        checked[pattern] = dict(overrides)
    return checked


def load_layer_config(path) -> dict:
    """The layer configuration a TOML file holds (one table per pattern; see the module docstring)."""
    path = Path(path)
    where = f"layer config {path}"
    data = read_toml(path, where)
    for pattern, table in data.items():
        if not isinstance(table, dict):
            raise ValidationError(f"{where}: every top-level entry must be a table [\"pattern\"] of overrides, "
                                  f"found {pattern} = {table!r}")
    try:
        return check_layer_config(data)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc}") from None


def layer_config_toml(layer_config) -> str:
    """A layer configuration as the TOML :func:`load_layer_config` reads back."""
    blocks = []
    for pattern, overrides in check_layer_config(layer_config).items():
        lines = [f"[{toml_value(pattern)}]"] + [f"{k} = {toml_value(v)}" for k, v in overrides.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


class ActivationFormat(NamedTuple):
    """The format of an activation tensor's codes: width, signedness, symmetry of its quantizer."""

    bits: int
    signed: bool
    symmetric: bool

    @classmethod
    def of(cls, profile: Profile) -> "ActivationFormat":
        return cls(profile.activation_bits, profile.activation_signed, profile.activation_symmetric)


def _kind(pattern: str, names: set, ops: set) -> str | None:
    if pattern in names:
        return "name"
    if _GLOB_CHARACTERS & set(pattern) and any(fnmatch.fnmatchcase(n, pattern) for n in names):
        return "glob"
    if pattern in ops:
        return "op"
    return None


def _matches(kind: str, pattern: str, name: str, op: str) -> bool:
    if kind == "name":
        return name == pattern
    if kind == "glob":
        return fnmatch.fnmatchcase(name, pattern)
    return op == pattern


class LayerFormats:
    """The format of every node of a float graph: the profile, with a layer configuration's overrides.

    Parameters
    ----------
    profile : Profile
        The conversion's profile (the format of every node no pattern matches).
    layer_config : dict or None
        ``{pattern: overrides}`` (see the module docstring).
    nodes : list of (name, op type)
        The float graph's nodes, in order.
    tied_ops : tuple of str
        Op types that move data without requantizing: they keep their input's format unless the
        configuration sets one of :data:`ACTIVATION_KEYS` for them.

    The step methods take the converter's steps (``step.nodes``: the float nodes emitted as one
    integer op, a layer and its fused activation; ``step.kind``: the op type).
    """

    def __init__(self, profile: Profile, layer_config=None, nodes=(), tied_ops=()):
        self.base = profile
        self.tied_ops = tuple(tied_ops)
        config = check_layer_config(layer_config or {})
        names, ops = {n for n, _ in nodes}, {op for _, op in nodes}
        kinds = {}
        for pattern in config:
            kind = _kind(pattern, names, ops)
            if kind is None:
                listed = ", ".join(sorted(names)[:60]) + (", ..." if len(names) > 60 else "")
                raise ValidationError(f"layer_config pattern {pattern!r} matches no node name, glob or op type; "
                                      f"node names: {listed}; op types: {', '.join(sorted(ops))}")
            kinds[pattern] = kind
        self.overrides: dict[str, dict] = {}
        for name, op in nodes:
            hits = sorted((_KIND_RANK[kinds[p]], i, p) for i, p in enumerate(config)
                          if _matches(kinds[p], p, name, op))
            merged: dict = {}
            for _, _, pattern in hits:
                merged.update(config[pattern])
            if merged:
                self.overrides[name] = merged
        self._profiles: dict[str, Profile] = {}

    def of_step(self, step) -> dict:
        """The overrides of a step, its nodes' merged in order."""
        merged: dict = {}
        for node in step.nodes:
            merged.update(self.overrides.get(node.name, {}))
        return merged

    def step_profile(self, step) -> Profile:
        """The profile a step is quantized with: the base profile with the step's overrides."""
        first = step.nodes[0].name
        if first not in self._profiles:
            fields = {k: v for k, v in self.of_step(step).items() if k in PROFILE_KEYS}
            profile = self.base
            if fields:
                label = ",".join(f"{k}={v}" for k, v in fields.items())
                try:
                    profile = self.base.replace(name=f"{self.base.name}[{first}: {label}]", **fields)
                except ValidationError as exc:
                    raise ValidationError(f"layer_config for node {first!r}: {exc}") from None
            self._profiles[first] = profile
        return self._profiles[first]

    def step_activation(self, step) -> ActivationFormat | None:
        """The activation format a step reads and writes; None for a data-movement op the
        configuration gives no activation format (it keeps its input's)."""
        if step.kind in self.tied_ops and not any(k in ACTIVATION_KEYS for k in self.of_step(step)):
            return None
        return ActivationFormat.of(self.step_profile(step))

    def method(self, step, key: str, default: str | None) -> str | None:
        """``range_method`` or ``weight_range_method`` of a step, else ``default``."""
        return self.of_step(step).get(key, default)

    def input_profile(self, name: str, steps) -> Profile:
        """The profile of graph input ``name``: that of the widest-activation step reading it directly
        (so no reader loses precision at the input), else the base profile."""
        readers = [self.step_profile(s) for s in steps
                   if self.step_activation(s) is not None and any(name in n.inputs for n in s.nodes)]
        return max(readers, key=lambda p: p.activation_bits, default=self.base)

    def format_name(self, step, weighted: bool) -> str:
        """``"w4a8"`` for a step with weights, ``"a16"`` for one without."""
        p = self.step_profile(step)
        return format_name(p.weight_bits if weighted else None, p.activation_bits)

    def check_supported(self, step, weighted: bool) -> None:
        """Raise a ValidationError naming the node and its format when the profile's
        ``supported_formats`` do not list it."""
        if self.step_activation(step) is None:
            return
        p = self.step_profile(step)
        if not self.base.supports(p.weight_bits if weighted else None, p.activation_bits):
            raise ValidationError(
                f"node {step.nodes[0].name!r} ({step.kind}): format {self.format_name(step, weighted)} is not "
                f"supported by profile {self.base.name!r} (supported_formats: {', '.join(self.base.supported_formats)})")


def format_name(weight_bits: int | None, activation_bits: int) -> str:
    """``"w8a16"``, or ``"a16"`` for a layer without weights."""
    return (f"w{weight_bits}" if weight_bits is not None else "") + f"a{activation_bits}"
