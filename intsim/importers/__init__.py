"""Model importers: each turns a model file into a canonical :class:`~intsim.floatgraph.FloatGraph`.

- :func:`intsim.importers.onnx.import_onnx`: ONNX opsets 11 to 21.
"""
