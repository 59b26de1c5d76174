"""Step 4 of the PTQ debugging workflow (white paper §3.7): the fixes that match a diagnosis.

Each :class:`Fix` says when it applies (from steps 2 and 3) and which conversion settings it changes;
the workflow converts with them, measures, and reports the result beside the unfixed model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from intsim.profiles import Profile


@dataclass(frozen=True)
class Diagnosis:
    """What steps 2 and 3 found.

    Attributes
    ----------
    weights_hurt, activations_hurt : bool
        Quantizing only the weights (only the activations) loses more than the tolerance (step 2).
    profile : Profile
        The target profile, the bit-width and granularity overrides applied.
    settings : dict
        The conversion settings the target was converted with.
    worst : list of dict
        The worst ranking entries (step 3), worst first.
    high_bits : (int, int)
        Weight and activation bits that count as unquantized.
    """

    weights_hurt: bool
    activations_hurt: bool
    profile: Profile
    settings: dict
    worst: list
    high_bits: tuple


@dataclass(frozen=True)
class Fix:
    """One remedy: its name, where the white paper has it, when it applies, the settings it changes."""

    name: str
    section: str
    applies: Callable[[Diagnosis], bool]
    changes: Callable[[Diagnosis], dict]


def _worst_layers(d: Diagnosis) -> list[dict]:
    return [e for e in d.worst if e["op"] != "Input"]


def _higher_precision(d: Diagnosis) -> dict:
    """The worst layers' weights (or activations) at the high bit widths, the rest as they were."""
    layers = dict(d.settings.get("layer_config") or {})
    for entry in _worst_layers(d):
        key, bits = ("weight_bits", d.high_bits[0]) if entry["kind"] == "weights" else ("activation_bits",
                                                                                       d.high_bits[1])
        layers[entry["node"]] = {**layers.get(entry["node"], {}), key: bits}
    return {"layer_config": layers}


FIXES = (
    Fix("per-channel weights", "§2.4.2", lambda d: d.weights_hurt and not d.profile.per_channel,
        lambda d: {"per_channel": True}),
    Fix("cross-layer equalization", "§3.2", lambda d: not d.settings.get("cle"), lambda d: {"cle": True}),
    Fix("MSE weight ranges", "§3.1", lambda d: d.weights_hurt and d.settings.get("weight_range_method") != "mse",
        lambda d: {"weight_range_method": "mse"}),
    Fix("MSE activation ranges", "§3.1",
        lambda d: d.activations_hurt and d.settings.get("range_method") not in ("mse", "cross_entropy"),
        lambda d: {"range_method": "mse"}),
    Fix("empirical bias correction", "§3.3", lambda d: d.weights_hurt and not d.settings.get("bias_correction"),
        lambda d: {"bias_correction": "empirical"}),
    Fix("higher precision for the worst layers", "§3.7", lambda d: bool(_worst_layers(d)), _higher_precision),
)


def combined_changes(changes: list[dict]) -> dict:
    """One set of conversion settings applying every fix of ``changes`` (the white paper's flowchart
    applies its fixes one after another); per-layer overrides merge node by node, later fixes winning."""
    merged: dict = {}
    for change in changes:
        for key, value in change.items():
            if key == "layer_config":
                layers = dict(merged.get(key) or {})
                for node, overrides in value.items():
                    layers[node] = {**layers.get(node, {}), **overrides}
                merged[key] = layers
            else:
                merged[key] = value
    return merged


def matching_fixes(diagnosis: Diagnosis) -> list[tuple[Fix, dict]]:
    """``(fix, settings changes)`` for every fix that applies, in :data:`FIXES` order."""
    return [(fix, fix.changes(diagnosis)) for fix in FIXES if fix.applies(diagnosis)]
