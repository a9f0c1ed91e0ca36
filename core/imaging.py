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
- 8-bit grey PNGs (the NIH dataset's format) take a fast decoder (core.png_fast) with the same limits,
  refusals and pixels; every other file, and any PNG that decoder does not fully understand, goes to Pillow.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from core import png_fast
from core.errors import UserError

__all__ = ["ImageRejected", "XrayImage", "read_xray", "read_xray_file"]

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 64


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


# Raster formats handed to Pillow. An explicit list keeps Pillow away from plugins that shell out
# (EPS runs Ghostscript) or that nobody should upload as an X-ray.
_PILLOW_FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "BMP", "WEBP", "GIF")

_GENERIC_SENTENCE = "The file could not be read as an image; please upload a PNG, JPEG or DICOM chest X-ray."


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
        raise ImageRejected(_GENERIC_SENTENCE) from error


def _read(data: bytes, *, max_pixels: int, min_side: int) -> XrayImage:
    # DICOM first: its 128-byte preamble may itself hold a TIFF header (dual-personality files).
    if data[128:132] == b"DICM":
        return _read_dicom(data, max_pixels=max_pixels, min_side=min_side, sniffed=True)
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
        return _read_dicom(data, max_pixels=max_pixels, min_side=min_side, sniffed=False)
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


def _check_size(width: int, height: int, *, max_pixels: int, min_side: int) -> None:
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
    """The fast path for 8-bit grey PNGs (core.png_fast), with Pillow's checks in Pillow's order;
    None hands the file to Pillow."""
    try:
        header = png_fast.read_header(data)
        if header is None:
            return None
        width, height = header.width, header.height
        if Image.MAX_IMAGE_PIXELS and width * height > 2 * Image.MAX_IMAGE_PIXELS:
            raise _pillow_bomb_refusal(max_pixels)  # where Pillow's open raises DecompressionBombError
        _check_size(width, height, max_pixels=max_pixels, min_side=min_side)
        pixels = png_fast.decode(data, header)
    except png_fast.PngDamaged as damage:
        raise (_header_damaged("PNG") if damage.in_header else _data_damaged("PNG")) from None
    if pixels is None:
        return None
    return XrayImage(pixels=_finish(pixels), format="PNG", original_size=(width, height), bits_stored=8,
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
        _check_size(image.width, image.height, max_pixels=max_pixels, min_side=min_side)
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
        pixels=_finish(pixels),
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
        return _stretch_to_uint8(np.asarray(image).astype(np.float64))
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


def _stretch_to_uint8(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
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


def _finish(pixels: np.ndarray) -> np.ndarray:
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    if pixels.ndim != 2:
        raise ImageRejected(_GENERIC_SENTENCE)
    pixels.setflags(write=False)  # XrayImage is frozen; keep shared/cached pixels from being edited
    return pixels


# ------------------------------------------------------------------------------------------------- DICOM


def _read_dicom(data: bytes, *, max_pixels: int, min_side: int, sniffed: bool) -> XrayImage:
    import pydicom  # imported lazily: most uploads are PNG/JPEG

    def damaged() -> ImageRejected:
        if sniffed:
            return ImageRejected("The DICOM file is damaged and could not be read.")
        return ImageRejected(
            "This file is not a recognised image; please upload a PNG, JPEG or DICOM chest X-ray."
        )

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:
        raise damaged() from None
    try:
        return _decode_dicom(ds, max_pixels=max_pixels, min_side=min_side, sniffed=sniffed)
    except ImageRejected:
        raise
    except Exception:  # noqa: BLE001 - pydicom parses elements lazily, so any access may fail on bad files
        raise damaged() from None


def _decode_dicom(ds: Any, *, max_pixels: int, min_side: int, sniffed: bool) -> XrayImage:
    import pydicom
    from pydicom.dataset import FileMetaDataset

    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        if sniffed or "SOPClassUID" in ds:
            raise ImageRejected("This DICOM file holds no image (no pixel data).")
        raise ImageRejected(
            "This file is not a recognised image; please upload a PNG, JPEG or DICOM chest X-ray."
        )

    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frame_count = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
        bits_stored = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0) or None
    except Exception:
        raise ImageRejected("The DICOM file is damaged: its image dimensions cannot be read.") from None
    _check_size(columns, rows, max_pixels=max_pixels, min_side=min_side)

    # Datasets saved without a file meta header carry no transfer syntax; say how pydicom parsed them.
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is None or "TransferSyntaxUID" not in file_meta:
        implicit, little = ds.original_encoding
        if file_meta is None:
            ds.file_meta = file_meta = FileMetaDataset()
        file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian
            if implicit
            else (pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
        )
    transfer_syntax = file_meta.TransferSyntaxUID
    if not isinstance(transfer_syntax, pydicom.uid.UID) or not transfer_syntax.is_transfer_syntax:
        raise ImageRejected(
            "The DICOM file declares an unknown transfer syntax, so its pixels cannot be read."
        )

    try:
        raw = pydicom.pixels.pixel_array(ds, index=0)  # first frame only: never decode a whole cine loop
    except Exception:
        if transfer_syntax.is_compressed:
            raise ImageRejected(
                f"This DICOM file is compressed as '{transfer_syntax.name}', which this app cannot decode; "
                "please export it uncompressed (Explicit VR Little Endian)."
            ) from None
        raise ImageRejected(
            "The DICOM file's pixel data is damaged or incomplete, so the image cannot be decoded."
        ) from None

    window: tuple[float, float] | None = None
    if photometric == "PALETTE COLOR":
        rgb = pydicom.pixels.apply_color_lut(raw, ds)
        pixels = _luminance(rgb, bits=16 if rgb.dtype.itemsize > 1 else 8)
    elif samples == 1 and raw.ndim == 2:
        pixels, window = _dicom_grey(raw, ds)
        if photometric == "MONOCHROME1":
            pixels = 255 - pixels  # MONOCHROME1: low values are bright; present bone as bright anyway
    elif raw.ndim == 3 and raw.shape[-1] == 3:
        pixels = _luminance(raw, bits=bits_stored or 8)
    else:
        raise ImageRejected(
            f"This DICOM file's colour layout ('{photometric}') is not supported; "
            "please export a greyscale image."
        )

    return XrayImage(
        pixels=_finish(pixels),
        format="DICOM",
        original_size=(int(pixels.shape[1]), int(pixels.shape[0])),
        bits_stored=bits_stored,
        photometric=photometric,
        window=window,
        frame_count=frame_count,
        modality=str(ds.get("Modality") or "") or None,
        pixel_spacing_mm=_pixel_spacing(ds),
    )


def _dicom_grey(raw: np.ndarray, ds: Any) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Modality LUT, then VOI window or LUT (else min..max), to 8 bits. Returns pixels and the window used."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(raw, ds), dtype=np.float64)
    else:
        slope, intercept = _rescale(ds)
        values = raw.astype(np.float64) * slope + intercept

    window = _first_window(ds)
    if window is not None:
        center, width = window
        function = str(_frame_attribute(ds, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR").upper()
        return _apply_window(values, center, width, function), window

    if "VOILUTSequence" in ds:
        try:
            # The VOI LUT is a table indexed by (integer) Modality LUT output.
            looked_up = np.asarray(apply_voi(np.rint(values).astype(np.int64), ds, index=0), dtype=np.float64)
            return _stretch_to_uint8(looked_up), None
        except Exception:  # noqa: BLE001 - a broken VOI LUT table: fall back to the data range
            pass

    padding = ds.get("PixelPaddingValue")
    mask = None
    if isinstance(padding, int):
        mask = raw != padding  # padding pixels (outside the collimated field) must not stretch the range
    return _stretch_to_uint8(values, mask), None


def _frame_attribute(ds: Any, functional_group: str, keyword: str) -> Any:
    """A value from the top level, or from the first frame's functional groups (enhanced multi-frame)."""
    if keyword in ds:
        return ds.get(keyword)
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            item = ds[groups][0]
            if functional_group in item and keyword in item[functional_group][0]:
                return item[functional_group][0].get(keyword)
        except Exception:  # noqa: BLE001 - malformed or absent functional groups
            continue
    return None


def _rescale(ds: Any) -> tuple[float, float]:
    slope = _first_number(_frame_attribute(ds, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = _first_number(_frame_attribute(ds, "PixelValueTransformationSequence", "RescaleIntercept"))
    if slope is None or slope == 0:
        slope = 1.0
    return slope, intercept or 0.0


def _first_window(ds: Any) -> tuple[float, float] | None:
    center = _first_number(_frame_attribute(ds, "FrameVOILUTSequence", "WindowCenter"))
    width = _first_number(_frame_attribute(ds, "FrameVOILUTSequence", "WindowWidth"))
    if center is None or width is None or width <= 0:
        return None
    return center, width


def _first_number(value: Any) -> float | None:
    """First value of a possibly multi-valued DS/IS element, as a finite float."""
    if value is None:
        return None
    try:
        if not isinstance(value, str | bytes) and hasattr(value, "__len__"):
            if len(value) == 0:
                return None
            value = value[0]
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) else None


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to 0..255."""
    if function == "SIGMOID":
        fraction = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    elif function == "LINEAR_EXACT":
        fraction = (values - center) / width + 0.5
    elif width <= 1.0:  # LINEAR with width 1 is a threshold
        fraction = (values > center - 0.5).astype(np.float64)
    else:  # LINEAR
        fraction = (values - (center - 0.5)) / (width - 1.0) + 0.5
    return np.rint(np.clip(fraction, 0.0, 1.0) * 255.0).astype(np.uint8)


def _luminance(rgb: np.ndarray, *, bits: int) -> np.ndarray:
    top = float(2 ** min(max(bits, 1), 32) - 1)
    weights = np.array([0.299, 0.587, 0.114])
    grey = rgb[..., :3].astype(np.float64) @ weights
    return np.rint(np.clip(grey * (255.0 / top), 0.0, 255.0)).astype(np.uint8)


def _pixel_spacing(ds: Any) -> tuple[float, float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _frame_attribute(ds, "PixelMeasuresSequence", keyword)
        try:
            if value is not None and len(value) >= 2:
                row, column = float(value[0]), float(value[1])
                if row > 0 and column > 0:
                    return row, column
        except (TypeError, ValueError):
            continue
    return None
