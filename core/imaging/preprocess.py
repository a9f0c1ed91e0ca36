"""Turning a grey X-ray into the model's input, and mapping model space back to the image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.imaging.resample import bilinear_resize_window

# ImageNet's channel statistics: CheXNet's normalization (the model card records them as its input format).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _centre_square(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pixels[top : top + side, left : left + side]


def resize_shorter_side_center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre square of a grey uint8 image, resized to size x size (bilinear, as Pillow does it)."""
    return bilinear_resize_window(_centre_square(pixels), size, 0, size)


@dataclass(frozen=True)
class CropWindow:
    """Where the model's input crop lies in the original image, in original pixels."""

    left: float
    top: float
    side: float


def crop_window(width: int, height: int, resize: int, crop: int) -> CropWindow:
    side = min(width, height)
    scale = side / resize
    inner = crop * scale
    return CropWindow(left=(width - inner) / 2, top=(height - inner) / 2, side=inner)


_MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
_STD = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]


def model_input(pixels: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
    """Grey uint8 HxW → float32 [3, crop, crop], ImageNet-normalised, grey replicated to RGB.

    Identical to resizing the centre square to resize x resize (Pillow bilinear) and cutting out the centre
    crop x crop, but only the crop is computed.
    """
    offset = (resize - crop) // 2
    patch = bilinear_resize_window(_centre_square(pixels), resize, offset, offset + crop)
    return (patch.astype(np.float32)[None, :, :] / 255.0 - _MEAN) / _STD
