"""Class activation maps (Zhou et al. 2016, as used by CheXNet): from model space to the image.

The model computes CAMs on its 7x7 grid (see CheXNet.forward_with_cam). Here they are normalised,
upsampled into the original image's pixel grid (inside the crop the model saw) and rendered as a
colour overlay at the original resolution.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from core.imaging.preprocess import CropWindow

# A compact "jet"-like colormap (blue → cyan → yellow → red), built once: no matplotlib needed.
_ANCHORS = np.array(
    [
        [0.0, 0, 0, 128],
        [0.15, 0, 0, 255],
        [0.35, 0, 255, 255],
        [0.55, 255, 255, 0],
        [0.8, 255, 0, 0],
        [1.0, 128, 0, 0],
    ]
)
_LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), _ANCHORS[:, 0], _ANCHORS[:, c]) for c in (1, 2, 3)], axis=1
).astype(np.uint8)


def normalise(cam: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a flat map becomes all zeros (nothing stands out)."""
    cam = np.asarray(cam, dtype=np.float32)
    low, high = float(cam.min()), float(cam.max())
    if not np.isfinite(low) or not np.isfinite(high) or high - low < 1e-12:
        return np.zeros_like(cam)
    return (cam - low) / (high - low)


@lru_cache(maxsize=32)
def _upsample_weights(cells: int, side: int) -> np.ndarray:
    """[side, cells] float32: Pillow's bilinear weights for upsampling `cells` samples to `side` pixels
    (pixel centres aligned, edges held), so that map @ weights.T is the resize as one small matrix product."""
    centres = (np.arange(side, dtype=np.float64) + 0.5) * (cells / side)
    weights = np.maximum(0.0, 1.0 - np.abs((np.arange(cells) + 0.5)[None, :] - centres[:, None]))
    weights /= weights.sum(axis=1, keepdims=True)
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


# Keeps rounding in the products from lifting the peak a hair above 1 (the result stays within [0, 1]).
_BELOW_ONE = np.float32(1 - 2**-20)


def cam_to_image(cam: np.ndarray, width: int, height: int, window: CropWindow) -> np.ndarray:
    """A [h, w] CAM → float32 [height, width] in [0, 1]; zero outside the part of the image the model saw.

    Bilinear upsampling is separable, so it is two small matrix products (rows x map x columns), written
    straight into the part of the image the model saw: ~10x cheaper than resizing an image of the map.
    """
    scaled = normalise(cam) * _BELOW_ONE
    side = max(1, round(window.side))
    full = np.zeros((height, width), dtype=np.float32)
    left, top = round(window.left), round(window.top)
    # Clip the square to the image (rounding can push it a pixel over).
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + side, height), min(left + side, width)
    if y1 <= y0 or x1 <= x0:
        return full
    rows = _upsample_weights(scaled.shape[0], side)[y0 - top : y1 - top]
    columns = _upsample_weights(scaled.shape[1], side)[x0 - left : x1 - left]
    np.matmul(rows, scaled @ columns.T, out=full[y0:y1, x0:x1])
    return full


def colorize(cam01: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] → RGB uint8 through the colormap."""
    return _LUT[np.clip((cam01 * 255).round(), 0, 255).astype(np.uint8)]


# Rows blended at a time: the float32 temporaries stay a few MB even for a 50-megapixel image.
_OVERLAY_STRIP_ROWS = 256


def render_overlay(grey: np.ndarray, cam01: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """Blend the coloured CAM over the grey X-ray at the X-ray's own resolution (RGB uint8).

    Weak activations stay mostly transparent so the anatomy remains readable.
    """
    if grey.shape != cam01.shape:
        raise ValueError("The CAM and the image must have the same size.")
    opacity = float(np.clip(opacity, 0.0, 1.0))
    out = np.empty((*grey.shape, 3), dtype=np.uint8)
    for top in range(0, grey.shape[0], _OVERLAY_STRIP_ROWS):
        rows = slice(top, top + _OVERLAY_STRIP_ROWS)
        cam = cam01[rows]
        alpha = (opacity * np.clip(cam, 0, 1))[:, :, None]
        base = grey[rows, :, None].astype(np.float32)
        out[rows] = (base * (1 - alpha) + colorize(cam).astype(np.float32) * alpha).round()
    return out


def peak_location(cam01: np.ndarray) -> tuple[int, int]:
    """(x, y) of the CAM's maximum, in image pixels."""
    y, x = np.unravel_index(int(np.argmax(cam01)), cam01.shape)
    return int(x), int(y)
