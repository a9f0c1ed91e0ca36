"""Read an uploaded chest X-ray (PNG, JPEG, DICOM, and TIFF/BMP/WebP/GIF) into an 8-bit grey image.

The file type is sniffed from its bytes, never from its name. Anything that is not a usable image is
refused with `ImageRejected`, whose `str()` is one sentence meant for the person who uploaded it; no other
exception escapes `read_xray` for any byte input.

Choices made here (and why):
- Colour becomes grey by ITU-R 601 luminance (Pillow's "L" conversion): X-rays saved as RGB are grey anyway.
- Alpha is composited over black, i.e. a transparent pixel reads as black, as on a radiology viewer.
- 16-bit / 32-bit / float raster images are stretched to 0..255 by their real min..max value range; a
  12-bit image stored in 16 bits would otherwise come out almost black if we kept only the top byte.
- DICOM: Modality LUT (rescale slope/intercept), then the first VOI window (or VOI LUT table) when the file
  has one, else min..max of the data (ignoring Pixel Padding Value); MONOCHROME1 is inverted so that
  bone is always bright. Multi-frame files give their first frame.
- EXIF orientation is applied (phone photos of films); no resizing or cropping happens here.
- 8-bit grey PNGs (the NIH dataset's format) take a fast decoder (core.imaging.png_fast) with the same limits,
  refusals and pixels; every other file, and any PNG that decoder does not fully understand, goes to Pillow.
"""

from __future__ import annotations

import io
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from core.imaging import png_fast
from core.imaging.dicom import read_dicom
from core.imaging.xray_image import (
    GENERIC_SENTENCE,
    ImageRejected,
    XrayImage,
    check_size,
    finish,
    stretch_to_uint8,
)

__all__ = ["ImageRejected", "XrayImage", "read_xray", "read_xray_file"]

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 64


# Raster formats handed to Pillow. An explicit list keeps Pillow away from plugins that shell out
# (EPS runs Ghostscript) or that nobody should upload as an X-ray.
_PILLOW_FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "BMP", "WEBP", "GIF")


def read_xray_file(
    path: str | PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> XrayImage:
    """Read an X-ray from disk. File-system errors (missing file, no permission) raise OSError as usual."""
    return read_xray(Path(path).read_bytes(), max_pixels=max_pixels, min_side=min_side)


def read_xray(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> XrayImage:
    """Decode an uploaded file into an 8-bit grey X-ray, or raise ImageRejected with a sentence saying why."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"read_xray expects bytes, not {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ImageRejected("The file is empty.")
    try:
        # Never decode past Pillow's own bomb threshold: the header check in _read refuses first, so
        # Pillow's DecompressionBombWarning cannot fire. (No warnings filters here: they are
        # process-wide and would race between the threads that decode concurrently.)
        if Image.MAX_IMAGE_PIXELS:
            max_pixels = min(max_pixels, int(Image.MAX_IMAGE_PIXELS))
        return _read(data, max_pixels=max_pixels, min_side=min_side)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected(
            "The image is too large to open safely; it may be a 'decompression bomb'."
        ) from None
    except MemoryError:
        raise ImageRejected("The image is too large to decode with the memory available.") from None
    except Exception as error:  # noqa: BLE001 - the contract: only ImageRejected leaves read_xray
        raise ImageRejected(GENERIC_SENTENCE) from error


def _read(data: bytes, *, max_pixels: int, min_side: int) -> XrayImage:
    # DICOM first: its 128-byte preamble may itself hold a TIFF header (dual-personality files).
    if data[128:132] == b"DICM":
        return read_dicom(data, max_pixels=max_pixels, min_side=min_side, sniffed=True)
    raster_format = _sniff_raster(data)
    if raster_format == "PNG":
        fast = _read_grey_png(data, max_pixels=max_pixels, min_side=min_side)
        if fast is not None:
            return fast
    if raster_format is not None:
        return _read_raster(data, raster_format, max_pixels=max_pixels, min_side=min_side)
    not_an_image = _describe_non_image(data)
    if not_an_image is not None:
        raise ImageRejected(f"This file is not an image: it looks like {not_an_image}.")
    if _looks_like_raw_dicom(data):
        return read_dicom(data, max_pixels=max_pixels, min_side=min_side, sniffed=False)
    raise ImageRejected(
        "This file is not a recognised image; please upload a PNG, JPEG or DICOM chest X-ray."
    )


# ---------------------------------------------------------------------------------------------- sniffing


def _sniff_raster(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data.startswith(b"BM") and len(data) >= 26:
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF", "a PDF document"),
    (0, b"PK\x03\x04", "a ZIP archive (or an Office document such as .docx)"),
    (0, b"PK\x05\x06", "an empty ZIP archive"),
    (0, b"\x1f\x8b", "a gzip-compressed file"),
    (0, b"Rar!\x1a\x07", "a RAR archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (0, b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Microsoft Office document"),
    (0, b"\x7fELF", "a program (executable)"),
    (0, b"MZ", "a Windows program (executable)"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "a JPEG 2000 image, which is not supported; please export a PNG"),
    (0, b"\xff\x4f\xff\x51", "a JPEG 2000 image, which is not supported; please export a PNG"),
    (0, b"8BPS", "a Photoshop document"),
    (0, b"ID3", "an MP3 audio file"),
    (344, b"n+1\x00", "a NIfTI volume, which is not supported; please export a PNG or DICOM"),
)
_FTYP_KINDS = {
    b"heic": "a HEIC photo, which is not supported; please export it as JPEG or PNG",
    b"heix": "a HEIC photo, which is not supported; please export it as JPEG or PNG",
    b"mif1": "a HEIF photo, which is not supported; please export it as JPEG or PNG",
    b"avif": "an AVIF image, which is not supported; please export it as JPEG or PNG",
}


def _describe_non_image(data: bytes) -> str | None:
    """Name what a non-image file looks like, where that is easy to tell."""
    for offset, magic, what in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return what
    if data[4:8] == b"ftyp":
        return _FTYP_KINDS.get(data[8:12], "a video or media file")
    text = _as_text(data[:4096])
    if text is None:
        return None
    head = text.lstrip("\ufeff \t\r\n").lower()
    if head.startswith("<!doctype html") or head.startswith("<html") or "<html" in head[:1024]:
        return "a web page (HTML)"
    if "<svg" in head[:1024]:
        return "an SVG drawing, which is not supported; please export a PNG"
    if head.startswith("<?xml"):
        return "an XML document"
    if head.startswith(("{", "[")):
        return "a JSON text file"
    return "a text file"


def _as_text(head: bytes) -> str | None:
    """The start of the file as text if it is (almost all) printable text, else None."""
    for encoding in ("utf-8", "utf-16"):
        if encoding == "utf-16" and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
            continue
        try:
            text = head.decode(encoding)
        except UnicodeDecodeError as error:
            # A multi-byte character cut by our 4 KiB window is still text.
            if error.start < len(head) - 4:
                continue
            text = head[: error.start].decode(encoding, errors="ignore")
        if not text:
            continue
        printable = sum(ch.isprintable() or ch in "\t\r\n\f" for ch in text)
        if printable / len(text) > 0.95:
            return text
    return None


# Groups a DICOM file without its preamble usually starts with (file meta, identification, patient...).
_RAW_DICOM_FIRST_GROUPS = {0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028}


def _looks_like_raw_dicom(data: bytes) -> bool:
    return len(data) >= 8 and int.from_bytes(data[:2], "little") in _RAW_DICOM_FIRST_GROUPS


# ---------------------------------------------------------------------------------------- raster images


_FORMAT_NAMES = {"MPO": "JPEG"}  # MPO is a camera JPEG with extra frames; users know it as JPEG


def _header_damaged(label: str) -> ImageRejected:
    return ImageRejected(
        f"The file starts like a {label} image but its header is damaged, so it cannot be opened."
    )


def _data_damaged(label: str) -> ImageRejected:
    return ImageRejected(
        f"The {label} file is damaged or incomplete (cut short?), so the image cannot be decoded."
    )


def _pillow_bomb_refusal(max_pixels: int) -> ImageRejected:
    # Pillow's own limit (Image.MAX_IMAGE_PIXELS, about 89 megapixels) tripped while reading the header.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    return ImageRejected(
        f"The image is larger than the {limit / 1e6:,.0f}-megapixel limit; it may be a 'decompression bomb'."
    )


def _read_grey_png(data: bytes, *, max_pixels: int, min_side: int) -> XrayImage | None:
    """The fast path for 8-bit grey PNGs (core.imaging.png_fast), with Pillow's checks in Pillow's order;
    None hands the file to Pillow."""
    try:
        header = png_fast.read_header(data)
        if header is None:
            return None
        width, height = header.width, header.height
        if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
            raise _pillow_bomb_refusal(max_pixels)  # where Pillow's open raises DecompressionBombError
        check_size(width, height, max_pixels=max_pixels, min_side=min_side)
        pixels = png_fast.decode(data, header)
    except png_fast.PngDamaged as damage:
        raise (_header_damaged("PNG") if damage.in_header else _data_damaged("PNG")) from None
    if pixels is None:
        return None
    return XrayImage(pixels=finish(pixels), format="PNG", original_size=(width, height), bits_stored=8,
                     photometric=None, source_mode="L", frame_count=1)  # fmt: skip


def _read_raster(data: bytes, sniffed: str, *, max_pixels: int, min_side: int) -> XrayImage:
    formats = list(_PILLOW_FORMATS) if sniffed == "JPEG" else [sniffed]  # JPEG may open as MPO
    label = sniffed
    try:
        image = Image.open(io.BytesIO(data), formats=formats)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _pillow_bomb_refusal(max_pixels) from None
    except Exception:
        raise _header_damaged(label) from None
    with image:
        label = _FORMAT_NAMES.get(image.format or sniffed, image.format or sniffed)
        check_size(image.width, image.height, max_pixels=max_pixels, min_side=min_side)
        try:
            frame_count = int(getattr(image, "n_frames", 1) or 1)  # may walk the file (TIFF), so guarded
            image.load()  # full decode now, so truncated or corrupt files fail here and not later
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise
        except Exception:
            raise _data_damaged(label) from None
        source_mode = image.mode
        bits = _raster_bits(image)
        oriented = _apply_exif_orientation(image)
        pixels = _raster_to_grey(oriented)
    return XrayImage(
        pixels=finish(pixels),
        format=label,
        original_size=(int(pixels.shape[1]), int(pixels.shape[0])),
        bits_stored=bits,
        photometric=None,
        source_mode=source_mode,
        frame_count=frame_count,
    )


def _raster_bits(image: Image.Image) -> int | None:
    if image.mode.startswith("I;16"):
        return 16
    if image.mode in ("I", "F"):
        return 32
    if image.mode == "1":
        return 1
    return 8


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not cost the user their image
        return image


def _raster_to_grey(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if mode.startswith("I;16") or mode in ("I", "F"):
        return stretch_to_uint8(np.asarray(image).astype(np.float64))
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        grey = np.asarray(rgba.convert("L"), dtype=np.uint16)
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.uint16)
        return ((grey * alpha + 127) // 255).astype(np.uint8)  # composited over black
    if mode in ("1", "P", "RGB", "RGBX"):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    # CMYK, YCbCr, LAB, HSV ...: go through RGB, which Pillow knows how to reach from each of them.
    return np.asarray(image.convert("RGB").convert("L"), dtype=np.uint8)
