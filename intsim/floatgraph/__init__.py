"""The float graph: what the ONNX importer builds (:mod:`~intsim.floatgraph.graph`), its reference
execution (:mod:`~intsim.floatgraph.execute`) and the passes that simplify it before quantization
(:mod:`~intsim.floatgraph.passes`)."""

from intsim.floatgraph.graph import FloatGraph, FloatNode
from intsim.floatgraph import sequence_ops  # noqa: F401,E402  (registers the float ops of sequence models)

__all__ = ["FloatGraph", "FloatNode"]
