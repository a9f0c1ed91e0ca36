"""DICOM chest X-rays into 8-bit grey: Modality LUT, the first VOI window or LUT (else min..max without
padding), MONOCHROME1 inverted so bone is bright, the first frame of a multi-frame file. Sizes are checked
from the header before any pixel data is decoded (core.imaging.reader sniffs the file and calls
read_dicom)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from core.imaging.xray_image import ImageRejected, XrayImage, check_size, finish, stretch_to_uint8


def read_dicom(data: bytes, *, max_pixels: int, min_side: int, sniffed: bool) -> XrayImage:
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
    check_size(columns, rows, max_pixels=max_pixels, min_side=min_side)

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
        pixels=finish(pixels),
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
            return stretch_to_uint8(looked_up), None
        except Exception:  # noqa: BLE001 - a broken VOI LUT table: fall back to the data range
            pass

    padding = ds.get("PixelPaddingValue")
    mask = None
    if isinstance(padding, int):
        mask = raw != padding  # padding pixels (outside the collimated field) must not stretch the range
    return stretch_to_uint8(values, mask), None


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
