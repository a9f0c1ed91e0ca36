"""Pillow's bilinear resize of a grey uint8 image, bit for bit, computing only a window.

The model sees the centre 224x224 of a 256x256 bilinear resize. Pillow computes all 256x256 pixels (and
the horizontal pass over every source row) to have 86% of them kept; for a 1024-px X-ray that is ~3 ms.
Here Pillow's own algorithm (Resample.c: triangle filter scaled to the reduction, coefficients in 22-bit
fixed point, a horizontal pass rounded to 8 bits, then a vertical pass) is reproduced exactly, but only
for the rows and columns of the window, in a numba-compiled kernel. Without numba, Pillow does the work.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from core.jit import LazyKernel

__all__ = ["bilinear_resize_window"]

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


@lru_cache(maxsize=64)
def _coefficients(in_size: int, out_size: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for outputs first..last-1 of an in_size →
    out_size bilinear resize: (bounds [n, 2] = (first source pixel, tap count), int32 weights [n, taps])."""
    scale = float(np.float32(in_size)) / out_size  # Pillow passes the box as C floats
    filter_scale = max(scale, 1.0)
    support = 1.0 * filter_scale  # the bilinear (triangle) filter's support is 1
    taps = int(np.ceil(support)) * 2 + 1
    bounds = np.zeros((last - first, 2), dtype=np.int64)
    weights = np.zeros((last - first, taps), dtype=np.int32)
    for row, out_index in enumerate(range(first, last)):
        center = 0.0 + (out_index + 0.5) * scale
        low = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - low
        raw = [max(0.0, 1.0 - abs((x + low - center + 0.5) * (1.0 / filter_scale))) for x in range(count)]
        total = 0.0
        for w in raw:  # summed left to right, as Pillow does (not sum(), which may compensate)
            total += w
        for x, w in enumerate(raw):
            w = w / total if total != 0.0 else w
            weights[row, x] = (
                int(-0.5 + w * (1 << _PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << _PRECISION_BITS))
            )
        bounds[row] = (low, count)
    bounds.setflags(write=False)
    weights.setflags(write=False)
    return bounds, weights


def bilinear_resize_window(square: np.ndarray, size: int, first: int, last: int) -> np.ndarray:
    """Rows and columns first..last-1 of `Image.fromarray(square).resize((size, size), BILINEAR)`.

    `square` is a grey uint8 [side, side] array (a view is fine); the result is uint8 [n, n],
    n = last - first.
    """
    side = square.shape[0]
    if square.shape != (side, side) or square.dtype != np.uint8:
        raise ValueError("bilinear_resize_window expects a square uint8 image.")
    if not 0 <= first < last <= size:
        raise ValueError("The window must lie inside the resized image.")
    if side == size:  # Pillow returns a copy when nothing is resized
        return np.ascontiguousarray(square[first:last, first:last])
    kernel = _kernel()
    if kernel is None:
        resized = Image.fromarray(np.ascontiguousarray(square)).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        return np.ascontiguousarray(np.asarray(resized)[first:last, first:last])
    bounds, weights = _coefficients(side, size, first, last)
    out = np.empty((last - first, last - first), dtype=np.uint8)
    kernel(square, bounds, weights, out)
    return out


def _resample(source: np.ndarray, bounds: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """Both passes of Pillow's 8-bit resample; the same bounds and weights serve rows and columns."""
    n = out.shape[0]
    half = np.int32(1 << (_PRECISION_BITS - 1))
    top = bounds[0, 0]
    bottom = bounds[n - 1, 0] + bounds[n - 1, 1]
    # Horizontal pass over only the source rows the vertical pass reads, rounded to 8 bits as Pillow does.
    across = np.empty((bottom - top, n), dtype=np.uint8)
    for y in range(top, bottom):
        for j in range(n):
            low, count = bounds[j, 0], bounds[j, 1]
            total = half
            for t in range(count):
                total += np.int32(source[y, low + t]) * weights[j, t]
            across[y - top, j] = min(max(total >> _PRECISION_BITS, 0), 255)
    # Vertical pass, a row of accumulators at a time so that the inner loop runs along memory.
    accumulator = np.empty(n, dtype=np.int32)
    for i in range(n):
        low, count = bounds[i, 0] - top, bounds[i, 1]
        accumulator[:] = half
        for t in range(count):
            weight = weights[i, t]
            for j in range(n):
                accumulator[j] += np.int32(across[low + t, j]) * weight
        for j in range(n):
            out[i, j] = min(max(accumulator[j] >> _PRECISION_BITS, 0), 255)


def _resample_works(kernel) -> bool:
    # A kernel that compiles wrongly is not used: it must give Pillow's answer on a small probe.
    probe = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    expected = np.asarray(Image.fromarray(probe).resize((4, 4), Image.Resampling.BILINEAR))[1:3, 1:3]
    bounds, weights = _coefficients(8, 4, 1, 3)
    out = np.empty((2, 2), dtype=np.uint8)
    kernel(probe, bounds, weights, out)
    return bool(np.array_equal(out, expected))


_RESAMPLE = LazyKernel(_resample, _resample_works)


def _kernel():
    return _RESAMPLE.get()
