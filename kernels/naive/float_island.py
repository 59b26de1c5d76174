"""Naive twins of :mod:`intsim.kernels.float_island`: same names and signatures, plain Python."""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import FLOAT32_RINT, saturating_round_float


def _dequantize(code, zero_point, scale) -> np.float32:
    return np.float32(np.float32(int(code) - int(zero_point)) * np.float32(scale))


def _quantize(value, y_scale, y_zero_point, clamp_min, clamp_max) -> tuple[int, bool]:
    rounded = int(saturating_round_float(np.float32(np.float32(value) / np.float32(y_scale)), FLOAT32_RINT))
    rounded += int(y_zero_point)
    clamped = min(max(rounded, clamp_min), clamp_max)
    return clamped, clamped != rounded


def add_float32(a, a_zero_point, a_scale, b, b_zero_point, b_scale, y_scale, y_zero_point, clamp_min, clamp_max,
                out_dtype):
    out = np.empty(a.shape, out_dtype)
    saturated = 0
    for index in np.ndindex(a.shape):
        total = _dequantize(a[index], a_zero_point, a_scale) + _dequantize(b[index], b_zero_point, b_scale)
        out[index], clipped = _quantize(total, y_scale, y_zero_point, clamp_min, clamp_max)
        saturated += clipped
    return out, saturated


def conv2d_float32_nhwc(x, x_zero_point, x_scale, weight, bias, strides, dilations, pads, groups, y_scale,
                        y_zero_point, clamp_min, clamp_max, out_dtype):
    (sh, sw), (dh, dw), (top, left, bottom, right) = strides, dilations, pads
    n_batch, height, width, _ = x.shape
    cout, kernel_h, kernel_w, cin_g = weight.shape
    out_h = (height + top + bottom - dh * (kernel_h - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kernel_w - 1) - 1) // sw + 1
    out = np.empty((n_batch, out_h, out_w, cout), out_dtype)
    saturated = 0
    for n, oh, ow, o in np.ndindex(out.shape):
        first_channel = (o // (cout // groups)) * cin_g
        total = 0.0  # a Python float: float64
        for kh, kw, c in np.ndindex(kernel_h, kernel_w, cin_g):
            h, w = oh * sh - top + kh * dh, ow * sw - left + kw * dw
            if 0 <= h < height and 0 <= w < width:
                total += float(_dequantize(x[n, h, w, first_channel + c], x_zero_point, x_scale)) * float(
                    weight[o, kh, kw, c])
        value = np.float32(np.float32(total) + np.float32(bias[o]))
        out[n, oh, ow, o], clipped = _quantize(value, y_scale, y_zero_point, clamp_min, clamp_max)
        saturated += clipped
    return out, saturated


def gemm_float32(a, a_zero_point, a_scale, weight, bias, y_scale, y_zero_point, clamp_min, clamp_max, out_dtype):
    rows, depth = a.shape
    out = np.empty((rows, weight.shape[1]), out_dtype)
    saturated = 0
    for m, n in np.ndindex(out.shape):
        total = 0.0  # a Python float: float64
        for k in range(depth):
            total += float(_dequantize(a[m, k], a_zero_point, a_scale)) * float(weight[k, n])
        value = np.float32(np.float32(total) + np.float32(bias[n]))
        out[m, n], clipped = _quantize(value, y_scale, y_zero_point, clamp_min, clamp_max)
        saturated += clipped
    return out, saturated


def global_avg_pool_float32_nhwc(x, x_zero_point, x_scale, y_scale, y_zero_point, clamp_min, clamp_max, out_dtype):
    n_batch, height, width, channels = x.shape
    out = np.empty((n_batch, 1, 1, channels), out_dtype)
    saturated = 0
    for n, c in np.ndindex(n_batch, channels):
        values = [_dequantize(v, x_zero_point, x_scale) for v in x[n, :, :, c].reshape(-1)]
        vector_end = len(values) - len(values) % 4
        lanes = [np.float32(0.0)] * 4
        for i in range(vector_end):
            lanes[i % 4] = np.float32(lanes[i % 4] + values[i])
        total = np.float32(np.float32(lanes[0] + lanes[2]) + np.float32(lanes[1] + lanes[3]))
        for value in values[vector_end:]:
            total = np.float32(total + value)
        mean = np.float32(total / np.float32(len(values)))
        out[n, 0, 0, c], clipped = _quantize(mean, y_scale, y_zero_point, clamp_min, clamp_max)
        saturated += clipped
    return out, saturated


def avg_pool_float32_island_nhwc(x, x_zero_point, x_scale, kernel, strides, pads, count_include_pad, y_scale,
                                 y_zero_point, clamp_min, clamp_max, out_dtype):
    (kernel_h, kernel_w), (sh, sw), (top, left, bottom, right) = kernel, strides, pads
    n_batch, height, width, channels = x.shape
    out = np.empty((n_batch, (height + top + bottom - kernel_h) // sh + 1, (width + left + right - kernel_w) // sw + 1,
                    channels), out_dtype)
    saturated = 0
    for n, oh, ow, c in np.ndindex(out.shape):
        rows = range(max(oh * sh - top, 0), min(oh * sh - top + kernel_h, height))
        cols = range(max(ow * sw - left, 0), min(ow * sw - left + kernel_w, width))
        total = np.float32(0.0)
        for h in rows:
            for w in cols:
                total = np.float32(total + _dequantize(x[n, h, w, c], x_zero_point, x_scale))
        count = kernel_h * kernel_w if count_include_pad else len(rows) * len(cols)
        out[n, oh, ow, c], clipped = _quantize(np.float32(total / np.float32(count)), y_scale, y_zero_point,
                                               clamp_min, clamp_max)
        saturated += clipped
    return out, saturated
