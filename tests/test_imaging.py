"""core.imaging.reader: every input file is built here, except the real NIH sample images."""

from __future__ import annotations

import io
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    generate_uid,
)

from core.imaging.reader import ImageRejected, XrayImage, read_xray, read_xray_file

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


# ------------------------------------------------------------------------------------------ builders


def gradient(height: int = 96, width: int = 128) -> np.ndarray:
    """A uint8 image whose every column differs, so orientation and scaling errors show."""
    row = np.linspace(0, 255, width).round().astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(row, (height, width)))


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height 8-bit grey pixels but carries a tiny compressed stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + png_chunk(b"IEND", b"")
    )


def dicom_bytes(
    array: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    pixel_data: bytes | None = None,
    preamble: bool = True,
    **elements,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Test^Phantom"
    if array is not None:
        frames = array.shape[0] if array.ndim == 3 else 1
        ds.Rows, ds.Columns = array.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = array.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if array.dtype.kind == "i" else 0
        if frames > 1:
            ds.NumberOfFrames = frames
        ds.PixelData = pixel_data if pixel_data is not None else array.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    assert data[128:132] == b"DICM"
    return data if preamble else data[132:]


def assert_valid(image: XrayImage, width: int, height: int) -> None:
    assert image.pixels.dtype == np.uint8
    assert image.pixels.shape == (height, width)
    assert image.pixels.flags.c_contiguous
    assert image.original_size == (width, height)


def rejected(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageRejected) as info:
        read_xray(data, **kwargs)
    sentence = str(info.value)
    assert sentence.endswith(".") and sentence[0].isupper(), sentence
    return sentence


# -------------------------------------------------------------------------------------------- raster


def test_grey_png_round_trips_exactly():
    pixels = gradient()
    image = read_xray(encode(Image.fromarray(pixels, "L"), "PNG"))
    assert_valid(image, 128, 96)
    assert image.format == "PNG" and image.bits_stored == 8 and image.photometric is None
    np.testing.assert_array_equal(image.pixels, pixels)


def test_sixteen_bit_png_is_stretched_by_its_real_range_not_truncated():
    # 12-bit data stored in a 16-bit PNG: keeping the top byte would give values 0..15 (nearly black).
    values = np.linspace(1000, 4000, 128).round().astype(np.uint16)
    pixels16 = np.ascontiguousarray(np.broadcast_to(values, (80, 128)))
    data = encode(Image.fromarray(pixels16), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")  # really a 16-bit file
    image = read_xray(data)
    assert_valid(image, 128, 80)
    assert image.bits_stored == 16
    assert image.pixels.min() == 0 and image.pixels.max() == 255
    expected = np.rint((pixels16.astype(float) - 1000) / 3000 * 255)
    assert np.abs(image.pixels.astype(float) - expected).max() <= 1
    assert np.all(np.diff(image.pixels[0].astype(int)) >= 0)  # order of intensities kept


def test_rgb_png_becomes_luminance():
    rgb = np.zeros((70, 90, 3), np.uint8)
    rgb[..., 0] = 200  # pure red 200 -> 0.299 * 200 = 59.8
    image = read_xray(encode(Image.fromarray(rgb, "RGB"), "PNG"))
    assert_valid(image, 90, 70)
    assert abs(int(image.pixels[0, 0]) - 60) <= 1


def test_rgba_png_is_composited_over_black():
    rgba = np.zeros((64, 100, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[:, :50, 3] = 0  # left half fully transparent
    rgba[:, 50:75, 3] = 128  # half transparent
    image = read_xray(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert_valid(image, 100, 64)
    assert image.source_mode == "RGBA"
    assert image.pixels[:, :50].max() == 0
    assert abs(int(image.pixels[0, 60]) - 100) <= 1
    assert image.pixels[0, 99] == 200


def test_palette_png():
    palette_image = Image.fromarray(gradient(), "L").convert("P")
    assert palette_image.mode == "P"
    image = read_xray(encode(palette_image, "PNG"))
    assert_valid(image, 128, 96)
    assert np.abs(image.pixels.astype(int) - gradient().astype(int)).max() <= 2


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_grey_and_rgb(mode):
    pixels = gradient(100, 150)
    source = Image.fromarray(pixels, "L").convert(mode)
    image = read_xray(encode(source, "JPEG", quality=95))
    assert_valid(image, 150, 100)
    assert image.format == "JPEG"
    assert np.abs(image.pixels.astype(int) - pixels.astype(int)).mean() < 3


def test_cmyk_jpeg_is_read_as_grey():
    cmyk = np.zeros((80, 80, 4), np.uint8)
    cmyk[:, :40, 3] = 200  # black ink 200 -> grey 55
    cmyk[:, 40:, 3] = 20  # black ink 20 -> grey 235
    data = encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    image = read_xray(data)
    assert_valid(image, 80, 80)
    assert image.source_mode == "CMYK"
    assert abs(int(image.pixels[40, 10]) - 55) <= 6
    assert abs(int(image.pixels[40, 70]) - 235) <= 6


def test_exif_orientation_is_applied():
    source = Image.fromarray(gradient(64, 128), "L")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image = read_xray(encode(source, "JPEG", quality=95, exif=exif.tobytes()))
    assert_valid(image, 64, 128)  # displayed upright: now taller than wide


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "WEBP"])
def test_other_raster_formats(fmt):
    params = {"lossless": True} if fmt == "WEBP" else {}
    image = read_xray(encode(Image.fromarray(gradient(), "L"), fmt, **params))
    assert_valid(image, 128, 96)
    assert image.format == fmt
    assert np.abs(image.pixels.astype(int) - gradient().astype(int)).max() <= 1


def test_non_square_aspect_ratio_is_kept():
    image = read_xray(encode(Image.fromarray(gradient(300, 77), "L"), "PNG"))
    assert_valid(image, 77, 300)


def test_pixels_are_read_only():
    image = read_xray(encode(Image.fromarray(gradient(), "L"), "PNG"))
    with pytest.raises(ValueError):
        image.pixels[0, 0] = 1


def test_png_named_dcm_is_read_as_png(tmp_path: Path):
    path = tmp_path / "chest.dcm"
    path.write_bytes(encode(Image.fromarray(gradient(), "L"), "PNG"))
    image = read_xray_file(path)
    assert image.format == "PNG"
    np.testing.assert_array_equal(image.pixels, gradient())


def test_missing_file_is_a_file_system_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        read_xray_file(tmp_path / "nope.png")


# --------------------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_without_window_uses_min_max():
    raw = np.linspace(100, 3000, 128).round().astype(np.uint16)
    raw = np.ascontiguousarray(np.broadcast_to(raw, (96, 128)))
    image = read_xray(dicom_bytes(raw, bits_stored=12))
    assert_valid(image, 128, 96)
    assert image.format == "DICOM" and image.photometric == "MONOCHROME2" and image.bits_stored == 12
    assert image.window is None and image.modality == "DX"
    assert image.pixels[0, 0] == 0 and image.pixels[0, -1] == 255  # low raw value -> dark
    assert np.all(np.diff(image.pixels[0].astype(int)) >= 0)


def test_dicom_monochrome1_is_inverted():
    raw = np.zeros((80, 80), np.uint16)
    raw[:, 40:] = 4000  # high values are *dark* in MONOCHROME1
    mono1 = read_xray(dicom_bytes(raw, photometric="MONOCHROME1", bits_stored=12))
    mono2 = read_xray(dicom_bytes(raw, photometric="MONOCHROME2", bits_stored=12))
    assert mono1.photometric == "MONOCHROME1"
    assert mono1.pixels[0, 0] == 255 and mono1.pixels[0, 79] == 0
    assert mono2.pixels[0, 0] == 0 and mono2.pixels[0, 79] == 255


def test_dicom_12_bit_window_is_applied_and_clips_outside():
    raw = np.full((64, 64), 2048, np.uint16)
    raw[0, 0] = 0  # far below the window
    raw[0, 1] = 4095  # far above the window
    raw[0, 2] = 1000  # exactly the window's lower edge
    raw[0, 3] = 1500  # centre
    data = dicom_bytes(raw, bits_stored=12, WindowCenter=[1500, 2000], WindowWidth=[1001, 4000])
    image = read_xray(data)
    assert image.window == (1500.0, 1001.0)  # the first of the multi-valued window is used
    pixels = image.pixels
    assert pixels[0, 0] == 0 and pixels[0, 2] == 0
    assert pixels[0, 1] == 255 and pixels[1, 1] == 255  # 2048 is above 1500 + 500: clipped white
    assert abs(int(pixels[0, 3]) - 128) <= 1
    # Without the window the same data would be stretched min..max: 2048 would be mid-grey.
    assert read_xray(dicom_bytes(raw, bits_stored=12)).pixels[1, 1] == 128


def test_dicom_rescale_slope_intercept_precedes_window():
    # CT-like: stored 0..2000 with intercept -1024 -> HU -1024..976. Window in HU: center 0, width 200.
    raw = np.zeros((64, 64), np.uint16)
    raw[:, 16:32] = 1024  # 0 HU -> centre of the window
    raw[:, 32:48] = 1124  # +100 HU -> the window's upper edge
    raw[:, 48:] = 2000
    data = dicom_bytes(raw, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=200)
    pixels = read_xray(data).pixels
    assert pixels[0, 0] == 0
    assert abs(int(pixels[0, 20]) - 128) <= 1  # would be 0 if the intercept were ignored
    assert pixels[0, 40] >= 254 and pixels[0, 60] == 255


def test_dicom_rescale_slope_matters():
    raw = np.zeros((64, 64), np.uint16)
    raw[:, 32:] = 100
    # Slope 2: 100 -> 200, centre of the window (center 200, width 400 -> edges 0 and 400).
    data = dicom_bytes(raw, RescaleSlope=2, RescaleIntercept=0, WindowCenter=200, WindowWidth=401)
    pixels = read_xray(data).pixels
    assert abs(int(pixels[0, 40]) - 128) <= 1  # slope ignored: 100 would sit at a quarter (64)
    assert pixels[0, 0] == 0


def test_dicom_signed_pixels():
    raw = np.linspace(-1000, 1000, 64).round().astype(np.int16)
    raw = np.ascontiguousarray(np.broadcast_to(raw, (64, 64)))
    pixels = read_xray(dicom_bytes(raw)).pixels
    assert pixels[0, 0] == 0 and pixels[0, -1] == 255 and abs(int(pixels[0, 32]) - 128) <= 3


def test_dicom_multiframe_gives_first_frame():
    frames = np.zeros((3, 64, 72), np.uint8)
    frames[0, :, 36:] = 200
    frames[1] = 255
    frames[2, :, :36] = 200
    image = read_xray(dicom_bytes(frames))
    assert_valid(image, 72, 64)
    assert image.frame_count == 3
    assert image.pixels[0, 0] == 0 and image.pixels[0, -1] == 255


def test_dicom_pixel_spacing_is_reported():
    image = read_xray(dicom_bytes(gradient(), ImagerPixelSpacing=[0.143, 0.143]))
    assert image.pixel_spacing_mm == pytest.approx((0.143, 0.143))


def test_dicom_without_preamble_is_read():
    raw = gradient()
    image = read_xray(dicom_bytes(raw, preamble=False))
    assert image.format == "DICOM"
    np.testing.assert_array_equal(image.pixels, raw)  # 0..255 min..max maps to itself


def test_raw_dicom_dataset_without_file_meta_is_read():
    source = pydicom.dcmread(io.BytesIO(dicom_bytes(gradient())))
    del source.file_meta
    source.preamble = None
    buffer = io.BytesIO()
    source.save_as(buffer, implicit_vr=True, little_endian=True)
    data = buffer.getvalue()
    assert data[:2] == b"\x08\x00" and b"DICM" not in data[:200]
    image = read_xray(data)
    np.testing.assert_array_equal(image.pixels, gradient())


def test_dicom_without_pixel_data():
    assert rejected(dicom_bytes(None)) == "This DICOM file holds no image (no pixel data)."


def test_dicom_with_jpeg_baseline_compression_is_decoded():
    pixels = gradient()
    jpeg = encode(Image.fromarray(pixels, "L"), "JPEG", quality=95)
    data = dicom_bytes(pixels, transfer_syntax=JPEGBaseline8Bit, pixel_data=encapsulate([jpeg]))
    image = read_xray(data)
    assert_valid(image, 128, 96)
    assert np.abs(image.pixels.astype(int) - pixels.astype(int)).mean() < 3


def test_dicom_with_undecodable_compression_is_rejected_with_a_sentence():
    data = dicom_bytes(
        gradient(), transfer_syntax=JPEGLSLossless, pixel_data=encapsulate([b"\xff\xd8not-jpeg-ls\xff\xd9"])
    )
    sentence = rejected(data)
    assert "compressed" in sentence and "JPEG-LS" in sentence


def test_dicom_with_truncated_pixel_data():
    raw = gradient()
    sentence = rejected(dicom_bytes(raw, pixel_data=raw.tobytes()[:1000]))
    assert "damaged or incomplete" in sentence


def test_dicom_header_claiming_huge_image_is_refused_before_decoding():
    data = dicom_bytes(np.zeros((64, 64), np.uint16), Rows=60000, Columns=60000)
    assert "megapixel limit" in rejected(data)


# -------------------------------------------------------------------------------------------- refusals


def test_empty():
    assert rejected(b"") == "The file is empty."


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "a PDF document"),
        (b"<!DOCTYPE html>\n<html><body>Chest X-ray</body></html>", "a web page (HTML)"),
        (b"  <html lang='en'><head></head></html>", "a web page (HTML)"),
        (b"Patient: Doe\nFindings: none\n", "a text file"),
        (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "a ZIP archive"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "a HEIC photo"),
    ],
)
def test_non_images_are_named(data, named):
    sentence = rejected(data)
    assert sentence.startswith("This file is not an image: it looks like " + named)


def test_unknown_binary_is_rejected():
    assert "not a recognised image" in rejected(bytes(range(256)) * 4)


def test_tiny_image():
    sentence = rejected(encode(Image.fromarray(gradient(32, 32), "L"), "PNG"))
    assert sentence == "The image is only 32x32 pixels; at least 64 pixels on each side are needed."


def test_thin_image_is_refused_and_min_side_is_configurable():
    data = encode(Image.fromarray(gradient(40, 500), "L"), "PNG")
    assert "only 500x40 pixels" in rejected(data)
    assert read_xray(data, min_side=32).pixels.shape == (40, 500)


def test_decompression_bomb_header_is_refused_quickly():
    data = png_header_only(100_000, 100_000)
    assert len(data) < 200
    started = time.perf_counter()
    sentence = rejected(data)
    assert time.perf_counter() - started < 1.0  # refused from the header, nothing allocated
    assert "decompression bomb" in sentence


def test_image_over_max_pixels_is_refused_from_its_header():
    data = png_header_only(8000, 7000)  # 56 MP: under Pillow's own limit, over ours
    sentence = rejected(data)
    assert "8000x7000" in sentence and "50-megapixel limit" in sentence
    assert "megapixel limit" in rejected(encode(Image.fromarray(gradient(), "L"), "PNG"), max_pixels=10_000)


def test_pillow_bomb_warning_does_not_leak_global_warning_state():
    import warnings

    before = list(warnings.filters)
    # 100 MP: within Pillow's warning range (89..179 MP), which read_xray turns into a refusal.
    sentence = rejected(png_header_only(10_000, 10_000), max_pixels=10**9)
    assert "89-megapixel limit" in sentence
    assert list(warnings.filters) == before


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_refused(fmt):
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (256, 256), dtype=np.uint8)  # noise: compresses badly, so a cut hurts
    data = encode(Image.fromarray(noisy, "L"), fmt)
    sentence = rejected(data[: len(data) // 2])
    assert "damaged or incomplete" in sentence


def test_corrupt_png_crc_is_refused():
    data = bytearray(encode(Image.fromarray(gradient(), "L"), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    rejected(bytes(data))


# ---------------------------------------------------------------------------------------------- fuzz


def _mutations(seed_files: list[bytes], count: int, rng: random.Random):
    for _ in range(count):
        data = bytearray(rng.choice(seed_files))
        action = rng.randrange(4)
        if action == 0:  # flip a few bytes
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif action == 1:  # cut
            data = data[: rng.randrange(len(data))]
        elif action == 2:  # flip bytes in the header region, where sizes and types live
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(min(len(data), 400))] = rng.randrange(256)
        else:  # splice random bytes in
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randint(1, 64))
        yield bytes(data)


def test_fuzz_only_image_rejected_or_success():
    rng = random.Random(1234)
    small = gradient(64, 80)
    seeds = [
        encode(Image.fromarray(small, "L"), "PNG"),
        encode(Image.fromarray(small, "L").convert("RGBA"), "PNG"),
        encode(Image.fromarray(small, "L"), "JPEG"),
        encode(Image.fromarray(small, "L"), "TIFF"),
        encode(Image.fromarray(small, "L"), "BMP"),
        dicom_bytes(small.astype(np.uint16) * 16, bits_stored=12, WindowCenter=2000, WindowWidth=1000),
        dicom_bytes(small, preamble=False),
    ]
    inputs = [rng.randbytes(rng.randint(1, 2048)) for _ in range(150)]
    inputs += [b"\x89PNG\r\n\x1a\n" + rng.randbytes(200), b"\xff\xd8\xff" + rng.randbytes(200)]
    inputs += [bytes(128) + b"DICM" + rng.randbytes(300), b"\x08\x00" + rng.randbytes(300)]
    inputs += list(_mutations(seeds, 350, rng))
    outcomes = {"ok": 0, "rejected": 0}
    for data in inputs:
        try:
            image = read_xray(data)
        except ImageRejected as error:
            assert str(error).strip(), data[:40]
            outcomes["rejected"] += 1
        else:
            assert image.pixels.dtype == np.uint8 and image.pixels.ndim == 2
            outcomes["ok"] += 1
    assert outcomes["ok"] > 0 and outcomes["rejected"] > 0  # the mutations exercised both paths


def test_non_bytes_argument_is_a_programming_error():
    with pytest.raises(TypeError):
        read_xray("chest.png")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ real NIH images


def test_real_nih_images(full_resolution_images: list[Path]):
    assert len(full_resolution_images) == 24
    modes = set()
    for path in full_resolution_images:
        image = read_xray_file(path)
        assert_valid(image, 1024, 1024)
        assert image.format == "PNG"
        assert image.pixels.std() > 10, path.name  # a real radiograph, not a blank
        modes.add(image.source_mode)
    assert "RGBA" in modes and "L" in modes


def test_real_nih_grey_png_is_unchanged(full_resolution_images: list[Path]):
    with Image.open(full_resolution_images[0]) as source:
        assert source.mode == "L"
        expected = np.asarray(source)
    np.testing.assert_array_equal(read_xray_file(full_resolution_images[0]).pixels, expected)
