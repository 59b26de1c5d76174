"""What the ONNX importer knows of speech models (silero's voice-activity detector): 1-D convolutions
(silero computes its STFT as one) become 2-D ones over a height of 1, the form every integer conv
kernel takes (registered as :data:`intsim.importers.onnx_ops.CONV_BY_RANK` ``[3]``).

A recurrent model also needs its constant inputs fixed (silero's sample rate ``sr``, on which its
``If`` branches) and its state's batch axis moved to the front:
:func:`intsim.importers.onnx_prepare.prepare_recurrent` does both on the ONNX model before it is imported.
"""

from __future__ import annotations

from intsim.importers.onnx_ops import CONV_BY_RANK, OnnxNode


def conv1d_as_conv2d(node: OnnxNode) -> list:
    """A 1-D ``Conv`` (input [N, C, L], weight [O, C/group, K]) as Unsqueeze, a 2-D ``Conv`` with
    weight [O, C/group, 1, K], Squeeze: the same sums, with a height of 1."""
    weight = node.const(1, "weight")
    strides, dilations = node.ints("strides", 1, 1, lo=1), node.ints("dilations", 1, 1, lo=1)
    if "kernel_shape" in node.attrs and node.ints("kernel_shape", 1, 0) != [weight.shape[2]]:
        raise node.invalid(f"kernel_shape {node.attr('kernel_shape')} contradicts the weight's {[weight.shape[2]]}")
    auto_pad = node.choice("auto_pad", "NOTSET", ("NOTSET", "VALID"))
    pads = node.ints("pads", 2, 0, lo=0) if auto_pad == "NOTSET" else [0, 0]
    group = node.attr("group", 1)
    if not isinstance(group, int) or group < 1 or weight.shape[0] % group:
        raise node.invalid(f"group must be an integer >= 1 dividing the {weight.shape[0]} output channels, "
                           f"found {group!r}")
    if node.rank(0) != 3:
        raise node.invalid(f"input must be [N, C, L] for a weight of shape {weight.shape}, found {node.shape(0)}")
    tall, wide = node.fresh("nchw"), node.fresh("conv2d")
    kernel = node.constant(weight.reshape(weight.shape[0], weight.shape[1], 1, weight.shape[2]), "weight")
    attrs = {"strides": [1, strides[0]], "dilations": [1, dilations[0]], "pads": [0, pads[0], 0, pads[1]],
             "group": group}
    return [node.make("Unsqueeze", node.inputs[:1], {"axes": [2]}, output=tall),
            node.make("Conv", [tall, kernel, *node.inputs[2:3]], attrs, output=wide),
            node.make("Squeeze", [wide], {"axes": [2]})]


CONV_BY_RANK[3] = conv1d_as_conv2d
