"""The float reference of the canonical recurrent ops (:mod:`intsim.importers.onnx_recurrent`), one
direction each, computed in float64 and rounded once to float32: ONNX's LSTM (gates ``i, o, f, c`` in
``W``, ``R``, ``B``; peepholes ``i, o, f`` in ``P``; sigmoid, tanh, tanh) and GRU (gates ``z, r, h``;
sigmoid, tanh; ``linear_before_reset`` as ONNX defines it).

``LSTM`` gives ONNX's ``Y`` ``[T, 1, B, H]``; ``LSTMCells`` gives the cell state after every step, in the
same layout, which the converter calibrates to choose the int16 cell state's scale.  Both take
``X, W, R, B, P`` and then the initial ``h`` and ``c`` where the attributes ``initial_h`` / ``initial_c``
say they are given.
"""

from __future__ import annotations

import numpy as np

from intsim.floatgraph.execute import register_op


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_sequence(attrs, x, w, r, b, p, *states):
    """``(Y, C)``: the hidden and cell state after every step, ``[T, 1, B, H]`` each, float64."""
    steps, batch = x.shape[:2]
    hidden = r.shape[-1]
    states = list(states)
    h = states.pop(0)[0].astype(np.float64) if attrs["initial_h"] else np.zeros((batch, hidden))
    c = states.pop(0)[0].astype(np.float64) if attrs["initial_c"] else np.zeros((batch, hidden))
    w, r, p = w[0].astype(np.float64), r[0].astype(np.float64), p[0].astype(np.float64)
    bias = b[0, :4 * hidden].astype(np.float64) + b[0, 4 * hidden:]
    p_input, p_output, p_forget = np.split(p, 3)
    ys, cs = np.empty((steps, 1, batch, hidden)), np.empty((steps, 1, batch, hidden))
    order = range(steps - 1, -1, -1) if attrs["direction"] == "reverse" else range(steps)
    for t in order:
        gates = x[t].astype(np.float64) @ w.T + h @ r.T + bias
        g_input, g_output, g_forget, g_cell = np.split(gates, 4, axis=-1)
        i = _sigmoid(g_input + p_input * c)
        f = _sigmoid(g_forget + p_forget * c)
        c = f * c + i * np.tanh(g_cell)
        o = _sigmoid(g_output + p_output * c)
        h = o * np.tanh(c)
        ys[t, 0], cs[t, 0] = h, c
    return ys, cs


register_op("LSTM")(lambda attrs, *args: lstm_sequence(attrs, *args[:-1])[0].astype(np.float32))
register_op("LSTMCells")(lambda attrs, *args: lstm_sequence(attrs, *args)[1].astype(np.float32))


@register_op("GRU")
def gru_sequence(attrs, x, w, r, b, *states):
    """ONNX's GRU ``Y`` ``[T, 1, B, H]``: ``X, W, R, B`` and the initial ``h`` where ``initial_h`` says."""
    steps, batch = x.shape[:2]
    hidden = r.shape[-1]
    h = states[0][0].astype(np.float64) if attrs["initial_h"] else np.zeros((batch, hidden))
    w, r, b = w[0].astype(np.float64), r[0].astype(np.float64), b[0].astype(np.float64)
    w_bias, r_bias = b[:3 * hidden], b[3 * hidden:]
    ys = np.empty((steps, 1, batch, hidden))
    order = range(steps - 1, -1, -1) if attrs["direction"] == "reverse" else range(steps)
    for t in order:
        from_x = x[t].astype(np.float64) @ w.T + w_bias
        x_update, x_reset, x_new = np.split(from_x, 3, axis=-1)
        r_update, r_reset, r_new = np.split(r, 3)
        b_update, b_reset, b_new = np.split(r_bias, 3)
        z = _sigmoid(x_update + h @ r_update.T + b_update)
        reset = _sigmoid(x_reset + h @ r_reset.T + b_reset)
        if attrs["linear_before_reset"]:
            n = np.tanh(x_new + reset * (h @ r_new.T + b_new))
        else:
            n = np.tanh(x_new + (reset * h) @ r_new.T + b_new)
        h = (1.0 - z) * n + z * h
        ys[t, 0] = h
    return ys.astype(np.float32)
