"""intsim: run neural networks exactly as an integer-only accelerator would.

White paper references are to Nagel et al., "A White Paper on Neural Network
Quantization" (2021).
"""

__version__ = "0.1.0"

from intsim.errors import (  # noqa: E402
    AccumulatorOverflowError,
    IntsimError,
    ModelFormatError,
    UnsupportedOpError,
    ValidationError,
)
from intsim.graph import Graph, Node, TensorInfo  # noqa: E402
from intsim.tables import build_exp_table, build_lut  # noqa: E402
from intsim.profiles import Profile, get_profile  # noqa: E402
from intsim.runtime import Model, Trace, load  # noqa: E402


def __getattr__(name):
    # convert / compare pull in onnx and the importer: loaded on first use.
    if name == "convert":
        from intsim.converter import convert

        return convert
    if name == "compare":
        from intsim.report import compare

        return compare
    raise AttributeError(f"module 'intsim' has no attribute {name!r}")

__all__ = [
    "build_exp_table",
    "compare",
    "convert",
    "build_lut",
    "AccumulatorOverflowError",
    "Graph",
    "IntsimError",
    "Model",
    "ModelFormatError",
    "Node",
    "Profile",
    "TensorInfo",
    "Trace",
    "UnsupportedOpError",
    "ValidationError",
    "get_profile",
    "load",
]
