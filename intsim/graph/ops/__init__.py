"""The integer ops: one class per op, registered by name (:func:`get_op`).

``check`` validates a node's attributes and parameters against its tensors and the graph's profile
(when a graph is built or loaded); ``infer`` gives output shapes; ``prepare`` turns parameters into
kernel arguments once; ``run`` / ``bind`` call a kernel backend and return outputs with per-node
statistics.  Layout is NHWC for every spatial op; conv weights OHWI, fully-connected ``[out, in]``.
"""

from intsim.graph.ops import elementwise, float_island, layout, mac, peers, recurrent, sequence, vision  # noqa: F401  (each module registers its ops)
from intsim.graph.ops.base import (
    MAC_OPS,
    REQUANTIZING_OPS,
    Op,
    clamp_bounds,
    get_op,
    node_rounding,
    op_names,
    rescale_params,
)

__all__ = ["MAC_OPS", "REQUANTIZING_OPS", "Op", "clamp_bounds", "get_op", "node_rounding", "op_names", "rescale_params"]
