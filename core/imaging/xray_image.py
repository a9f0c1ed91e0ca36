"""What every X-ray reader returns (XrayImage) or raises (ImageRejected), and the checks they share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import UserError

GENERIC_SENTENCE = "The file could not be read as an image; please upload a PNG, JPEG or DICOM chest X-ray."


class ImageRejected(UserError, ValueError):
    """The upload cannot be used as an X-ray; `str(e)` is one human sentence saying why."""

    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence

    def __str__(self) -> str:
        return self.sentence


@dataclass(frozen=True, eq=False)  # eq=False: comparing ndarrays field by field is ambiguous
class XrayImage:
    """A decoded X-ray: 8-bit grey pixels plus what we learnt about the source file."""

    pixels: np.ndarray  # uint8, (height, width), C-contiguous, read-only
    format: str  # "PNG" | "JPEG" | "DICOM" | "TIFF" | "BMP" | "WEBP" | "GIF"
    original_size: tuple[int, int]  # (width, height) of the decoded image, before any model resizing
    bits_stored: int | None  # significant bits per sample in the source (8, 12, 16 ...)
    photometric: str | None  # DICOM Photometric Interpretation (e.g. "MONOCHROME1"); None for raster files
    window: tuple[float, float] | None = None  # DICOM (center, width) applied; None when min..max was used
    source_mode: str | None = None  # Pillow mode of a raster source ("L", "I;16", "RGBA", "CMYK" ...)
    frame_count: int = 1  # frames in the source; only the first is read
    modality: str | None = None  # DICOM Modality ("CR", "DX" ...)
    pixel_spacing_mm: tuple[float, float] | None = None  # DICOM (row, column) spacing when present

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def check_size(width: int, height: int, *, max_pixels: int, min_side: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected("The image header declares no pixels (a width or height of 0).")
    if width * height > max_pixels:
        raise ImageRejected(
            f"The image is {width}x{height} pixels ({width * height / 1e6:,.0f} megapixels), more than the "
            f"{max_pixels / 1e6:,.0f}-megapixel limit; it may be a 'decompression bomb'."
        )
    if width < min_side or height < min_side:
        raise ImageRejected(
            f"The image is only {width}x{height} pixels; at least {min_side} pixels on each side are needed."
        )


def stretch_to_uint8(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Linearly map the real min..max of `values` (over `mask` when given) to 0..255."""
    finite = np.isfinite(values)
    sample = values[finite & mask] if mask is not None else values[finite]
    if sample.size == 0:
        sample = values[finite]
    if sample.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(sample.min()), float(sample.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low))
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def finish(pixels: np.ndarray) -> np.ndarray:
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 2:
        raise ImageRejected(GENERIC_SENTENCE)
    pixels.setflags(write=False)  # XrayImage is frozen; keep shared/cached pixels from being edited
    return pixels
