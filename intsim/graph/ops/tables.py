"""``lut_interpolated``: an elementwise function of a 16-bit input from a 513-entry table, linearly
interpolated (:mod:`intsim.kernels.tables`; the profile's ``int16_tables = "interpolated"``)."""

from __future__ import annotations

import numpy as np

from intsim.codes import dtype_range
from intsim.graph.ops.base import Op, check_arity, check_dtypes, check_range, param, register
from intsim.kernels.tables import INTERPOLATED_ENTRIES


@register("lut_interpolated")
class LutInterpolated(Op):
    """``table`` (int32, 513 output codes) interpolated at the int16 / uint16 input's codes.  Every result
    lies between two entries, which lie inside the output's range: nothing is clamped at run time (the
    converter's clamp of the entries is the only one)."""

    def check(self, node, graph):
        check_arity(node, 1)
        check_dtypes(node, graph, ("int16", "uint16"))
        out = graph.tensors[node.outputs[0]]
        table = param(node, "table", shape=(INTERPOLATED_ENTRIES,))
        check_range(node, "table", table.astype(np.int64), *out.code_range)

    def infer(self, node, inputs, graph):
        return [inputs[0].shape]

    def prepare(self, node, graph):
        x, out = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
        return {"args": (node.params["table"].astype(np.int32), dtype_range(x.dtype)[0], out.np_dtype)}

    def run(self, plan, inputs, kernels):
        return [kernels.lookup_table_interpolated(inputs[0], *plan["args"])], {}
