"""intsim: run neural networks exactly as an integer-only accelerator would.

White paper references are to Nagel et al., "A White Paper on Neural Network
Quantization" (2021).
"""

__version__ = "0.1.0"

from intsim.errors import (  # noqa: E402
    AccumulatorOverflowError,
    IntsimError,
    ModelFormatError,
    OverflowWarning,
    UnsupportedOpError,
    ValidationError,
)
from intsim.converter.params import build_exp_table, build_lut  # noqa: E402
from intsim.graph import Graph, Node, TensorInfo  # noqa: E402
from intsim.profiles import Profile, get_profile  # noqa: E402
from intsim.runtime import Model, Trace  # noqa: E402

# The facade's verbs (intsim.api) pull in onnx and the importers: loaded on first use.
_FACADE = ("compare", "convert", "debug", "evaluate", "export_golden", "export_qdq", "export_tosa", "load",
           "prepare_recurrent", "save", "search_mixed_precision")


def __getattr__(name):
    if name in _FACADE:
        from intsim import api

        return getattr(api, name)
    raise AttributeError(f"module 'intsim' has no attribute {name!r}")


__all__ = [
    "build_exp_table",
    "compare",
    "convert",
    "debug",
    "evaluate",
    "export_golden",
    "export_qdq",
    "export_tosa",
    "build_lut",
    "AccumulatorOverflowError",
    "Graph",
    "IntsimError",
    "Model",
    "ModelFormatError",
    "OverflowWarning",
    "Node",
    "Profile",
    "TensorInfo",
    "Trace",
    "UnsupportedOpError",
    "ValidationError",
    "get_profile",
    "load",
    "prepare_recurrent",
    "save",
    "search_mixed_precision",
]
