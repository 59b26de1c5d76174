"""Naive twins of :mod:`intsim.kernels.float_island`: same names and signatures, plain Python."""

from __future__ import annotations

import numpy as np

from intsim.fixedpoint import FLOAT32_RINT, saturating_round_float
from intsim.kernels.mlas_sgemm import conv_sgemm_path, sgemm_path
from intsim.kernels.naive.mlas_sgemm import mlas_dot


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
                        y_zero_point, clamp_min, clamp_max, out_dtype, order="exact"):
    (sh, sw), (dh, dw), (top, left, bottom, right) = strides, dilations, pads
    n_batch, height, width, _ = x.shape
    cout, kernel_h, kernel_w, cin_g = weight.shape
    cout_g = cout // groups
    out_h = (height + top + bottom - dh * (kernel_h - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kernel_w - 1) - 1) // sw + 1
    path, stride_k = conv_sgemm_path(order, (height, width), weight.shape, strides, dilations, pads, groups,
                                     (out_h, out_w))
    out = np.empty((n_batch, out_h, out_w, cout), out_dtype)
    saturated = 0
    for n, oh, ow, o in np.ndindex(out.shape):
        group = o // cout_g
        column, filter_row = [], []  # the im2col patch and the filter row, in (channel, kernel row, column) order
        for c, kh, kw in np.ndindex(cin_g, kernel_h, kernel_w):
            h, w = oh * sh - top + kh * dh, ow * sw - left + kw * dw
            inside = 0 <= h < height and 0 <= w < width
            column.append(_dequantize(x[n, h, w, group * cin_g + c], x_zero_point, x_scale) if inside
                          else np.float32(0.0))
            filter_row.append(np.float32(weight[o, kh, kw, c]))
        total = mlas_dot(filter_row, column, path, stride_k, o % cout_g, cout_g, oh * out_w + ow, out_h * out_w,
                         np.float32(0.0))
        out[n, oh, ow, o], clipped = _quantize(np.float32(total + np.float32(bias[o])), y_scale, y_zero_point,
                                               clamp_min, clamp_max)
        saturated += clipped
    return out, saturated


def gemm_float32(a, a_zero_point, a_scale, weight, bias, y_scale, y_zero_point, clamp_min, clamp_max, out_dtype,
                 order="exact", trans_b=True):
    rows, depth = a.shape
    columns = weight.shape[1]
    path, stride_k = sgemm_path(order, rows, columns, depth, trans_b, depth if trans_b else columns)
    out = np.empty((rows, columns), out_dtype)
    saturated = 0
    for m, n in np.ndindex(out.shape):
        row = [_dequantize(a[m, k], a_zero_point, a_scale) for k in range(depth)]
        value = mlas_dot(row, [np.float32(weight[k, n]) for k in range(depth)], path, stride_k, m, rows, n, columns,
                         np.float32(bias[n]))
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
