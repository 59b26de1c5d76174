"""Integer kernels (numba), imported as ``intsim.kernels``.

Every function here has a naive twin of the same name and signature in
:mod:`intsim.kernels.naive`; the twins are the definition, these are the fast
versions, and the tests demand exact equality.  Activation layout is NHWC.
Kernels do not validate their arguments: :mod:`intsim.graph.ops` does that once,
when a graph is built or loaded.
"""

from intsim.kernels.boundary import (
    dequantize_codes,
    dequantize_launcher,
    quantize_float,
    quantize_launcher,
    transpose,
    transpose_launcher,
)
from intsim.kernels.elementwise import (
    add,
    add_launcher,
    avg_pool_nhwc,
    lookup_table,
    max_pool_nhwc,
    mean_launcher,
    mean_reduce,
    mul,
    pad_constant,
    softmax_lastaxis,
)
from intsim.kernels.gemm import (
    conv2d_nhwc_launcher,
    conv2d_nhwc_prepare,
    conv2d_nhwc_requantized,
    fully_connected_launcher,
    fully_connected_prepare,
    fully_connected_requantized,
    matmul_requantized,
)
from intsim.kernels.mac import conv2d_nhwc_acc, fully_connected_acc, matmul_acc, requantize
from intsim.kernels.float_island import (
    add_float32,
    avg_pool_float32_island_nhwc,
    conv2d_float32_nhwc,
    gemm_float32,
    global_avg_pool_float32_nhwc,
)
from intsim.kernels.onnxruntime_ops import add_float32_fma, avg_pool_float32_nhwc, mul_float32, softmax_qlinear
from intsim.kernels.gru import gru_int8
from intsim.kernels.lstm import lstm_int8
from intsim.kernels.sequence import (
    embedding_lookup,
    gather_axis,
    gather_elements,
    layer_norm_lastaxis,
    softmax_masked_lastaxis,
)
from intsim.kernels.vision import (
    arg_max,
    insert_zeros_nhwc,
    pad_reflect_edge,
    reduce_max,
    slice_strided,
    tile,
)
from intsim.kernels.tables import lookup_table_interpolated
from intsim.kernels.tflite_ops import softmax_gemmlowp_lastaxis

__all__ = [
    "add",
    "add_launcher",
    "add_float32",
    "add_float32_fma",
    "arg_max",
    "avg_pool_float32_island_nhwc",
    "avg_pool_float32_nhwc",
    "avg_pool_nhwc",
    "conv2d_float32_nhwc",
    "conv2d_nhwc_acc",
    "conv2d_nhwc_launcher",
    "conv2d_nhwc_prepare",
    "conv2d_nhwc_requantized",
    "dequantize_codes",
    "dequantize_launcher",
    "embedding_lookup",
    "fully_connected_acc",
    "fully_connected_launcher",
    "fully_connected_prepare",
    "fully_connected_requantized",
    "gather_axis",
    "gather_elements",
    "gemm_float32",
    "global_avg_pool_float32_nhwc",
    "gru_int8",
    "layer_norm_lastaxis",
    "insert_zeros_nhwc",
    "lookup_table",
    "lstm_int8",
    "lookup_table_interpolated",
    "matmul_acc",
    "matmul_requantized",
    "max_pool_nhwc",
    "mean_launcher",
    "mean_reduce",
    "mul",
    "mul_float32",
    "softmax_qlinear",
    "pad_constant",
    "pad_reflect_edge",
    "quantize_float",
    "quantize_launcher",
    "reduce_max",
    "requantize",
    "slice_strided",
    "softmax_gemmlowp_lastaxis",
    "softmax_lastaxis",
    "softmax_masked_lastaxis",
    "tile",
    "transpose",
    "transpose_launcher",
]
