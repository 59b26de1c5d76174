"""The float graph: what the ONNX importer builds (:mod:`~intsim.floatgraph.graph`), its reference
execution (:mod:`~intsim.floatgraph.execute`) and the passes that simplify it before quantization
(:mod:`~intsim.floatgraph.passes`)."""

from intsim.floatgraph.graph import FloatGraph, FloatNode

__all__ = ["FloatGraph", "FloatNode"]
