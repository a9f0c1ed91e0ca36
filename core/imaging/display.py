"""Screen-size copies of an X-ray: a page never needs more than DISPLAY_MAX_SIDE pixels a side.

Drawing a 50-megapixel upload and its overlay at full resolution costs gigabytes per browser tab; the
screen copy costs about a megabyte. Full resolution is rendered only for a download.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

DISPLAY_MAX_SIDE = 1024


def display_size(width: int, height: int, max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    """(width, height) scaled down to fit within max_side, aspect kept; unchanged when it already fits."""
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def display_copy(pixels: np.ndarray, max_side: int = DISPLAY_MAX_SIDE) -> np.ndarray:
    """A grey uint8 image shrunk to fit within max_side (area averaging, so fine detail does not alias);
    the same array when it already fits."""
    height, width = pixels.shape[:2]
    size = display_size(width, height, max_side)
    if size == (width, height):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))
