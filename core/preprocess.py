"""Turning a grey X-ray into the model's input, and mapping model space back to the image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from core.artifact import IMAGENET_MEAN, IMAGENET_STD


def resize_shorter_side_center_crop(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre square of a grey uint8 image, resized to size x size (bilinear, as Pillow does it)."""
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(np.ascontiguousarray(pixels[top : top + side, left : left + side]))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR))


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


def model_input(pixels: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
    """Grey uint8 HxW → float32 [3, crop, crop], ImageNet-normalised, grey replicated to RGB."""
    resized = resize_shorter_side_center_crop(pixels, resize)
    offset = (resize - crop) // 2
    patch = resized[offset : offset + crop, offset : offset + crop].astype(np.float32) / 255.0
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return (patch[None, :, :] - mean) / std
