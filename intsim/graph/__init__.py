"""The integer graph: its records (:mod:`~intsim.graph.ir`), the validated whole
(:mod:`~intsim.graph.graph`), the op registry (:mod:`~intsim.graph.ops`) and the ``.intsim`` file
(:mod:`~intsim.graph.fileformat`)."""

from intsim.graph.graph import Graph, validate
from intsim.graph.ir import Node, TensorInfo

__all__ = ["Graph", "Node", "TensorInfo", "validate"]
