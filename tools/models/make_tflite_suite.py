"""Write the TFLite conformance suite: small fully-int8 .tflite models and one input each.

Run offline, in a separate environment with ``tensorflow-cpu`` and ``tf_keras`` (never intsim
dependencies; the LSTM models need Keras 2's LSTM layer, which the converter fuses into
UNIDIRECTIONAL_SEQUENCE_LSTM, where Keras 3's becomes a WHILE loop)::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf_keras
    /tmp/tfvenv/bin/python models/make_tflite_suite.py [--out tests/data/tflite] [--only NAME ...]

Every model is built from ``tf.nn`` ops with seeded random weights, converted
with full-integer post-training quantization (int8 activations, per-channel int8
weights, int32 bias, int8 input and output; ``Optimize.DEFAULT``, a seeded
representative dataset, ``TFLITE_BUILTINS_INT8``), and written as
``NAME.tflite`` next to ``NAME.input.npy`` (int8 codes of one sample, batch 1).

The ``lstm_*`` models are Keras LSTM layers (seeded initial weights) converted the same way from
the Keras model: the fully-integer (8x8_16) UNIDIRECTIONAL_SEQUENCE_LSTM.  ``lstm_cifg`` is
``lstm_sequence`` with its input gate removed and ``lstm_peephole`` with seeded int16 peephole weights
added (``DERIVED``), LiteRT's CIFG and peephole variants, which the converter does not write.

The ``float_io_*`` models are converted the same way but keep float32 input and
output (no ``inference_input_type`` / ``inference_output_type``), so a QUANTIZE
and a DEQUANTIZE frame the int8 body; their ``NAME.input.npy`` is one float32
sample.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
import tensorflow as tf  # noqa: E402


def _weights(rng, shape, scale=0.3):
    return tf.constant(rng.normal(0.0, scale, size=shape).astype(np.float32))


def _conv(rng, x, cin, cout, k=3, stride=1, padding="SAME", dilation=1, act=tf.nn.relu):
    w = _weights(rng, (k, k, cin, cout), 1.0 / np.sqrt(k * k * cin))
    b = _weights(rng, (cout,), 0.1)
    y = tf.nn.conv2d(x, w, strides=stride, padding=padding, dilations=dilation) + b
    return act(y) if act else y


def _dw(rng, x, cin, mult=1, k=3, stride=1, padding="SAME", dilation=1, act=tf.nn.relu6):
    w = _weights(rng, (k, k, cin, mult), 1.0 / k)
    b = _weights(rng, (cin * mult,), 0.1)
    y = tf.nn.depthwise_conv2d(x, w, strides=[1, stride, stride, 1], padding=padding,
                               dilations=[dilation, dilation]) + b
    return act(y) if act else y


def _dense(rng, x, cin, cout, act=None):
    w = _weights(rng, (cin, cout), 1.0 / np.sqrt(cin))
    b = _weights(rng, (cout,), 0.1)
    y = tf.matmul(x, w) + b
    return act(y) if act else y


def _hard_swish(x):
    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def _flatten(x):
    return tf.reshape(x, (1, -1))


def _inverted_residual(rng, x, c, expand=3, stride=1):
    h = _conv(rng, x, c, c * expand, k=1, act=tf.nn.relu6)
    h = _dw(rng, h, c * expand, stride=stride, act=tf.nn.relu6)
    h = _conv(rng, h, c * expand, c, k=1, act=None)
    return x + h if stride == 1 else h


def _residual_cnn(rng, x):
    h = _conv(rng, x, 3, 8)
    for _ in range(2):
        h = tf.nn.relu(h + _conv(rng, _conv(rng, h, 8, 8), 8, 8, act=None))
    h = tf.nn.max_pool2d(h, 2, 2, "VALID")
    h = _conv(rng, h, 8, 12, stride=2)
    return tf.nn.softmax(_dense(rng, tf.reduce_mean(h, axis=[1, 2]), 12, 10))


def _mobilenet(rng, x):
    h = _conv(rng, x, 3, 8, stride=2, act=tf.nn.relu6)
    h = _inverted_residual(rng, h, 8)
    h = _inverted_residual(rng, h, 8, stride=2)
    h = _inverted_residual(rng, h, 8)
    h = tf.reduce_mean(_conv(rng, h, 8, 16, k=1, act=tf.nn.relu6), axis=[1, 2])
    return _dense(rng, h, 16, 5)


# name -> (input shape NHWC or [1, n], builder(rng, x) -> y)
SUITE = {
    "conv_valid_s1_relu": ((1, 9, 9, 3), lambda r, x: _conv(r, x, 3, 8, padding="VALID")),
    "conv_same_s2_relu6": ((1, 10, 9, 4), lambda r, x: _conv(r, x, 4, 6, stride=2, act=tf.nn.relu6)),
    "conv_same_dil2_none": ((1, 11, 11, 3), lambda r, x: _conv(r, x, 3, 5, dilation=2, act=None)),
    "conv_5x5_valid_s2": ((1, 13, 12, 2), lambda r, x: _conv(r, x, 2, 4, k=5, stride=2, padding="VALID")),
    "dw_same_s1_relu6": ((1, 8, 8, 6), lambda r, x: _dw(r, x, 6)),
    "dw_m2_valid_s2": ((1, 11, 10, 4), lambda r, x: _dw(r, x, 4, mult=2, stride=2, padding="VALID", act=None)),
    "dw_m3_same_dil2_relu": ((1, 9, 9, 3), lambda r, x: _dw(r, x, 3, mult=3, dilation=2, act=tf.nn.relu)),
    "fc_relu": ((1, 24), lambda r, x: _dense(r, x, 24, 10, act=tf.nn.relu)),
    "reshape_fc": ((1, 4, 4, 3), lambda r, x: _dense(r, _flatten(x), 48, 7)),
    "add_relu": ((1, 6, 6, 4), lambda r, x: tf.nn.relu(_conv(r, x, 4, 4, act=None) + _conv(r, x, 4, 4, k=1, act=None))),
    "max_pool_same_s2": ((1, 9, 9, 4), lambda r, x: tf.nn.max_pool2d(_conv(r, x, 4, 4), 3, 2, "SAME")),
    "max_pool_valid": ((1, 8, 8, 3), lambda r, x: tf.nn.max_pool2d(_conv(r, x, 3, 3, act=None), 2, 2, "VALID")),
    "avg_pool_same_s2": ((1, 9, 9, 4), lambda r, x: tf.nn.avg_pool2d(_conv(r, x, 4, 4, act=None), 3, 2, "SAME")),
    "avg_pool_valid_s1": ((1, 7, 7, 3), lambda r, x: tf.nn.avg_pool2d(_conv(r, x, 3, 3), 2, 1, "VALID")),
    "relu_op": ((1, 5, 5, 3), lambda r, x: tf.nn.relu(tf.concat([x, x * 0.5], axis=3))),
    "relu6_op": ((1, 5, 5, 3), lambda r, x: tf.nn.relu6(tf.concat([x, x * 3.0], axis=3))),
    "pad_conv": ((1, 6, 6, 3), lambda r, x: _conv(r, tf.pad(x, [[0, 0], [1, 2], [2, 1], [0, 0]]), 3, 4, padding="VALID")),
    "concat_branches": ((1, 6, 6, 3), lambda r, x: tf.concat([_conv(r, x, 3, 4), _conv(r, x, 3, 2, k=1)], axis=3)),
    "mean_global": ((1, 5, 5, 6), lambda r, x: tf.reduce_mean(_conv(r, x, 6, 6, act=None), axis=[1, 2])),
    "mean_keepdims": ((1, 6, 4, 5), lambda r, x: tf.reduce_mean(_conv(r, x, 5, 5), axis=[1, 2], keepdims=True)),
    "sub_branches": ((1, 6, 6, 3), lambda r, x: _conv(r, x, 3, 4, act=None) - _conv(r, x, 3, 4, k=1, act=None)),
    "mul_branches": ((1, 6, 6, 3), lambda r, x: _conv(r, x, 3, 4, act=None) * _conv(r, x, 3, 4, k=1, act=None)),
    "softmax_fc": ((1, 16), lambda r, x: tf.nn.softmax(_dense(r, x, 16, 10) * 3.0)),
    "softmax_spatial": ((1, 4, 4, 8), lambda r, x: tf.nn.softmax(_conv(r, x, 8, 8, act=None))),
    "logistic": ((1, 6, 6, 3), lambda r, x: tf.sigmoid(_conv(r, x, 3, 4, act=None) * 2.0)),
    "tanh": ((1, 6, 6, 3), lambda r, x: tf.tanh(_conv(r, x, 3, 4, act=None))),
    "hard_swish": ((1, 6, 6, 3), lambda r, x: _hard_swish(_conv(r, x, 3, 4, act=None) * 3.0)),
    "residual_cnn": ((1, 12, 12, 3), lambda r, x: _residual_cnn(r, x)),
    "mobilenetv2_blocks": ((1, 12, 12, 3), lambda r, x: _mobilenet(r, x)),
}




def _keras_lstm(units, return_sequences, dense=None):
    def build(shape):
        inputs = tf.keras.Input(batch_shape=shape)
        y = tf.keras.layers.LSTM(units, return_sequences=return_sequences)(inputs)
        if dense:
            y = tf.keras.layers.Dense(dense)(y)
        return tf.keras.Model(inputs, y)

    return build


# Keras models (converted from the Keras model): name -> (input shape, builder(shape) -> tf.keras.Model).
KERAS_SUITE = {
    "lstm_sequence": ((1, 6, 5), _keras_lstm(8, True)),
    "lstm_last_dense": ((1, 8, 4), _keras_lstm(12, False, dense=5)),
}


# Variants the converter does not write, derived from a converted model's first operator (its LSTM):
# name -> (source, transform). CIFG: no input-gate weights (inputs 1, 5) or bias (12), so LiteRT runs the
# coupled-input-forget-gate path of its integer kernel. Peephole: seeded int16 cell-to-gate weights
# (inputs 9, 10, 11) at scale 2**-14.
def drop_inputs(blob: bytes, dropped) -> bytes:
    """``blob`` with the first operator's inputs ``dropped`` set to -1 (optional, absent), patched in place."""
    from tensorflow.lite.python import schema_py_generated as schema

    op = schema.Model.GetRootAsModel(blob, 0).Subgraphs(0).Operators(0)
    start = op._tab.Vector(op._tab.Offset(6))  # the inputs vector: int32 tensor indices
    patched = bytearray(blob)
    for index in dropped:
        patched[start + 4 * index:start + 4 * index + 4] = np.int32(-1).tobytes()
    return bytes(patched)


def add_peepholes(blob: bytes, seed: int) -> bytes:
    """``blob`` re-serialized with int16 peephole weights as the first operator's inputs 9, 10, 11."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(blob, 0))
    subgraph = model.subgraphs[0]
    op = subgraph.operators[0]
    cells = subgraph.tensors[op.inputs[4]].shape[0]
    rng = np.random.default_rng(seed)
    inputs = list(op.inputs)
    for slot in (9, 10, 11):
        buffer = schema.BufferT()
        buffer.data = rng.integers(-20000, 20000, cells).astype(np.int16).view(np.uint8).tolist()
        model.buffers.append(buffer)
        quantization = schema.QuantizationParametersT()
        quantization.scale, quantization.zeroPoint = [2.0**-14], [0]
        tensor = schema.TensorT()
        tensor.shape, tensor.type, tensor.buffer = [cells], schema.TensorType.INT16, len(model.buffers) - 1
        tensor.name, tensor.quantization = f"peephole_{slot}".encode(), quantization
        subgraph.tensors.append(tensor)
        inputs[slot] = len(subgraph.tensors) - 1
    op.inputs = inputs
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


DERIVED = {"lstm_cifg": ("lstm_sequence", lambda blob: drop_inputs(blob, (1, 5, 12))),
           "lstm_peephole": ("lstm_sequence", lambda blob: add_peepholes(blob, 11))}


# Float input and output around an int8 body: name -> (input shape, builder).
FLOAT_IO_SUITE = {
    "float_io_conv_fc": ((1, 6, 6, 3), lambda r, x: _dense(r, _flatten(_conv(r, x, 3, 4, stride=2)), 36, 6)),
    "float_io_softmax": ((1, 12), lambda r, x: tf.nn.softmax(_dense(r, x, 12, 8) * 2.0)),
}


# Models the importer must refuse (tests of its errors): name -> (shape, builder, fully int8?).
ERROR_CASES = {
    "error_float_model": ((1, 6, 6, 3), lambda r, x: _conv(r, x, 3, 4), False),
    "error_unsupported_op": ((1, 6, 6, 3), lambda r, x: tf.nn.leaky_relu(_conv(r, x, 3, 4, act=None), 0.2), True),
}


def representative(shape, seed):
    rng = np.random.default_rng(seed)
    for _ in range(64):
        yield [rng.normal(0.0, 1.0, size=shape).astype(np.float32)]


def convert(name, shape, builder, quantize=True, int8_io=True):
    rng = np.random.default_rng(sum(map(ord, name)))
    if name in KERAS_SUITE:
        tf.keras.utils.set_random_seed(sum(map(ord, name)))
        converter = tf.lite.TFLiteConverter.from_keras_model(builder(shape))
    else:
        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="x")])
        def model(x):
            return builder(rng, x)

        converter = tf.lite.TFLiteConverter.from_concrete_functions([model.get_concrete_function()], model)
    if not quantize:
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: representative(shape, sum(map(ord, name)) + 1)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "data" / "tflite"))
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = {name: (shape, builder, True) for name, (shape, builder) in (SUITE | KERAS_SUITE | FLOAT_IO_SUITE).items()}
    cases |= ERROR_CASES
    for name, (shape, builder, quantize) in cases.items():
        if args.only and name not in args.only:
            continue
        blob = convert(name, shape, builder, quantize, int8_io=name not in FLOAT_IO_SUITE)
        (out / f"{name}.tflite").write_bytes(blob)
        rng = np.random.default_rng(sum(map(ord, name)) + 2)
        if name in SUITE or name in KERAS_SUITE:
            np.save(out / f"{name}.input.npy", rng.integers(-128, 128, size=shape, dtype=np.int8))
        elif name in FLOAT_IO_SUITE:
            np.save(out / f"{name}.input.npy", rng.normal(0.0, 1.0, size=shape).astype(np.float32))
        print(f"{name}: {len(blob)} bytes")
    for name, (source, transform) in DERIVED.items():
        if args.only and name not in args.only:
            continue
        (out / f"{name}.tflite").write_bytes(transform((out / f"{source}.tflite").read_bytes()))
        (out / f"{name}.input.npy").write_bytes((out / f"{source}.input.npy").read_bytes())
        print(f"{name}: derived from {source}")


if __name__ == "__main__":
    main()
