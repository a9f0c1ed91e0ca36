"""core.imaging.png_fast behind core.imaging.reader: the same pixels and refusals as Pillow, on real and
built PNGs."""

from __future__ import annotations

import io
import pickle
import random
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from core.imaging import png_fast
from core.imaging.reader import ImageRejected, read_xray
from core.paths import REPO_ROOT
from tests.test_imaging import _mutations, png_chunk

pytestmark = pytest.mark.usefixtures("numba_kernels")

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def filtered_rows(pixels: np.ndarray, kinds: list[int]) -> bytes:
    """PNG scanlines for 1 byte per pixel, each row with the filter type asked (the encoder's side)."""
    height, width = pixels.shape
    image = pixels.astype(np.int64)
    out = bytearray()
    for y in range(height):
        kind = kinds[y % len(kinds)]
        row, above = image[y], image[y - 1] if y else np.zeros(width, dtype=np.int64)
        left = np.concatenate([[0], row[:-1]])
        corner = np.concatenate([[0], above[:-1]])
        if kind == 0:
            predicted = np.zeros(width, dtype=np.int64)
        elif kind == 1:
            predicted = left
        elif kind == 2:
            predicted = above
        elif kind == 3:
            predicted = (left + above) // 2
        else:
            estimate = left + above - corner
            to_left, to_up, to_corner = abs(estimate - left), abs(estimate - above), abs(estimate - corner)
            predicted = np.where(
                (to_left <= to_up) & (to_left <= to_corner), left, np.where(to_up <= to_corner, above, corner)
            )
        out.append(kind)
        out += ((row - predicted) % 256).astype(np.uint8).tobytes()
    return bytes(out)


def grey_png(
    pixels: np.ndarray,
    *,
    kinds=(0, 1, 2, 3, 4),
    idat_pieces: int = 1,
    before=(),
    after=(),
    stream: bytes | None = None,
    interlace: int = 0,
) -> bytes:
    height, width = pixels.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
    compressed = stream if stream is not None else zlib.compress(filtered_rows(pixels, list(kinds)), 6)
    cuts = np.linspace(0, len(compressed), idat_pieces + 1).astype(int)
    idats = b"".join(png_chunk(b"IDAT", compressed[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True))
    return (
        SIGNATURE
        + png_chunk(b"IHDR", ihdr)
        + b"".join(png_chunk(k, p) for k, p in before)
        + idats
        + b"".join(png_chunk(k, p) for k, p in after)
        + png_chunk(b"IEND", b"")
    )


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)


def sentence(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageRejected) as info:
        read_xray(data, **kwargs)
    return str(info.value)


def flip_crc(data: bytes, kind: bytes) -> bytes:
    """The same file with one bit of the named chunk's CRC changed (the payload is untouched)."""
    at = data.index(kind) - 4
    (length,) = struct.unpack_from(">I", data, at)
    crc_at = at + 8 + length
    return data[:crc_at] + bytes([data[crc_at] ^ 1]) + data[crc_at + 1 :]


# --------------------------------------------------------------------------------------- real images


def test_the_fast_decoder_is_on_and_takes_the_nih_layout(full_resolution_images):
    assert png_fast.available()
    data = full_resolution_images[0].read_bytes()
    header = png_fast.read_header(data)
    assert header is not None and (header.width, header.height) == (1024, 1024)


def test_every_real_sample_png_decodes_bit_identical_to_pillow(sample_dir):
    # Every full-resolution image and every 5th 512-px one (all 555 pass too; this keeps the suite fast).
    files = (
        sorted((sample_dir / "full-resolution").glob("*.png"))
        + sorted((sample_dir / "images").glob("*.png"))[::5]
    )
    assert len(files) > 100
    fast = 0
    for path in files:
        data = path.read_bytes()
        expected = pillow_pixels(data)
        header = png_fast.read_header(data)
        if header is not None:
            np.testing.assert_array_equal(png_fast.decode(data, header), expected, err_msg=path.name)
            fast += 1
        image = read_xray(data)
        if expected.ndim == 2:
            np.testing.assert_array_equal(image.pixels, expected, err_msg=path.name)
            assert (image.format, image.source_mode, image.bits_stored) == ("PNG", "L", 8)
    assert fast >= len(files) - 1  # one full-resolution image is RGBA: that one goes to Pillow


def test_concurrent_decoding_gives_the_same_pixels(full_resolution_images):
    datas = [path.read_bytes() for path in full_resolution_images[:6]]
    expected = [read_xray(d).pixels for d in datas]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda d: read_xray(d).pixels, datas * 2))
    for got, want in zip(results, expected * 2, strict=True):
        np.testing.assert_array_equal(got, want)


# -------------------------------------------------------------------------------------- built images


@pytest.mark.parametrize("kind", [0, 1, 2, 3, 4])
def test_each_filter_type_alone(kind):
    pixels = noise(70, 97, seed=kind)
    data = grey_png(pixels, kinds=[kind])
    assert png_fast.read_header(data) is not None
    np.testing.assert_array_equal(read_xray(data).pixels, pixels)
    np.testing.assert_array_equal(pillow_pixels(data), pixels)  # the encoder in this test is right


def test_mixed_filters_split_idat_and_harmless_chunks():
    pixels = noise(131, 203, seed=5)
    data = grey_png(
        pixels,
        kinds=[4, 3, 0, 2, 1, 4, 4, 3],
        idat_pieces=7,
        before=[(b"gAMA", struct.pack(">I", 45455)), (b"pHYs", struct.pack(">IIB", 2835, 2835, 1))],
        after=[(b"tIME", struct.pack(">HBBBBB", 2017, 7, 11, 12, 0, 0))],
    )
    assert png_fast.decode(data, png_fast.read_header(data)) is not None
    np.testing.assert_array_equal(read_xray(data).pixels, pixels)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: grey_png(p, before=[(b"tEXt", b"Comment\x00hello")]), id="text chunk"),
        pytest.param(lambda p: grey_png(p, before=[(b"gAMA", b"\x00\x01")]), id="malformed gAMA"),
        pytest.param(
            lambda p: grey_png(p, stream=zlib.compress(filtered_rows(p, [1]) + bytes(500))),
            id="stream longer than the image",
        ),
        pytest.param(lambda p: grey_png(p)[: -len(png_chunk(b"IEND", b""))], id="no IEND"),
        pytest.param(lambda p: grey_png(p, after=[(b"tIME", bytes(7)), (b"IDAT", b"")]), id="a later IDAT"),
    ],
)
def test_files_the_fast_path_does_not_fully_understand_go_to_pillow(make):
    pixels = noise(80, 90, seed=9)
    data = make(pixels)
    header = png_fast.read_header(data)
    assert header is None or png_fast.decode(data, header) is None
    try:
        expected = pillow_pixels(data)
    except Exception:  # noqa: BLE001 - Pillow refuses this one (the malformed gAMA): so does the reader
        assert sentence(data) == HEADER
    else:
        np.testing.assert_array_equal(read_xray(data).pixels, expected)


def test_other_layouts_are_not_taken():
    grey = Image.fromarray(noise(80, 90), "L")
    for image in (grey.convert("I;16"), grey.convert("RGB"), grey.convert("LA"), grey.convert("P")):
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        assert png_fast.read_header(buffer.getvalue()) is None, image.mode
    interlaced = grey_png(noise(80, 90), interlace=1)
    assert png_fast.read_header(interlaced) is None
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", "00")  # Pillow may read an orientation from this
    buffer = io.BytesIO()
    grey.save(buffer, "PNG", pnginfo=info)
    assert png_fast.read_header(buffer.getvalue()) is None


# ---------------------------------------------------------------------------------------------- damage

DAMAGED = "The PNG file is damaged or incomplete (cut short?), so the image cannot be decoded."
HEADER = "The file starts like a PNG image but its header is damaged, so it cannot be opened."


def test_a_bad_crc_anywhere_is_refused():
    data = grey_png(noise(80, 90), before=[(b"sRGB", b"\x00")], after=[(b"tIME", bytes(7))], idat_pieces=3)
    assert sentence(flip_crc(data, b"IHDR")) == HEADER
    assert sentence(flip_crc(data, b"sRGB")) == HEADER  # before the pixels, where Pillow checks too
    # Pillow reads past these three; PNG's CRCs exist to catch exactly this, so the fast path refuses.
    for kind in (b"IDAT", b"tIME", b"IEND"):
        assert sentence(flip_crc(data, kind)) == DAMAGED, kind


def test_unknown_filter_type_and_broken_or_cut_streams_are_refused_like_pillow():
    pixels = noise(80, 90)
    rows = bytearray(filtered_rows(pixels, [2]))
    rows[40 * 91] = 7  # row 40's filter type
    unknown_filter = grey_png(pixels, stream=zlib.compress(bytes(rows)))
    stream = zlib.compress(filtered_rows(pixels, [4]))
    broken = grey_png(pixels, stream=stream[: len(stream) // 2] + bytes(20) + stream[len(stream) // 2 :])
    cut = grey_png(pixels, stream=stream[:-30])
    for data in (unknown_filter, broken, cut):
        assert sentence(data) == DAMAGED
        with pytest.raises(OSError):  # Pillow fails too
            pillow_pixels(data)


def test_a_stream_that_ends_rows_early_is_refused_where_pillow_returns_a_partial_image():
    pixels = noise(80, 90)
    data = grey_png(pixels, stream=zlib.compress(filtered_rows(pixels, [1])[: 60 * 91]))  # 60 of 80 rows
    partial = pillow_pixels(data)
    assert partial.shape == pixels.shape and not np.array_equal(partial[60:], pixels[60:])
    assert sentence(data) == DAMAGED


def test_size_limits_are_refused_from_the_header_with_the_readers_sentences():
    def header_only(width: int, height: int) -> bytes:
        ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        return SIGNATURE + ihdr + png_chunk(b"IDAT", zlib.compress(bytes(64))) + png_chunk(b"IEND", b"")

    assert png_fast.read_header(header_only(100_000, 100_000)) is not None  # decided by the fast path
    assert sentence(header_only(100_000, 100_000)) == (
        "The image is larger than the 50-megapixel limit; it may be a 'decompression bomb'."
    )
    assert "8000x7000 pixels (56 megapixels), more than the 50-megapixel limit" in sentence(
        header_only(8000, 7000)
    )
    assert "89-megapixel limit" in sentence(header_only(10_000, 10_000), max_pixels=10**9)
    assert sentence(header_only(40, 500)) == (
        "The image is only 40x500 pixels; at least 64 pixels on each side are needed."
    )


# -------------------------------------------------------------------- the same outcomes as Pillow alone

_PILLOW_ONLY = """
import pickle, sys
sys.modules["numba"] = None  # as if numba were not installed: the fast path switches itself off
from core.imaging import png_fast
from core.imaging.reader import ImageRejected, read_xray
assert not png_fast.available()
outcomes = []
for data in pickle.load(sys.stdin.buffer):
    try:
        outcomes.append(read_xray(data).pixels)
    except ImageRejected as error:
        outcomes.append(str(error))
pickle.dump(outcomes, sys.stdout.buffer)
"""


def chunks_with_bad_crc(data: bytes) -> bool:
    offset = len(SIGNATURE)
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        end = offset + 8 + length
        if end + 4 > len(data):
            return False
        if zlib.crc32(data[offset + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            return True
        if data[offset + 4 : offset + 8] == b"IEND":
            return False
        offset = end + 4
    return False


def test_mutated_grey_pngs_get_pillows_outcome_unless_a_crc_is_wrong(sample_dir):
    """Fuzzing: each broken file gets the same pixels or the same sentence as the reader without the fast
    path (Pillow alone, in a process where numba is missing), or, where a chunk's CRC is wrong, a refusal."""
    rng = random.Random(2024)
    real = (sample_dir / "images" / "00000001_000.png").read_bytes()
    seeds = [
        grey_png(noise(64, 80, seed=1), kinds=[0, 1, 2, 3, 4]),
        grey_png(read_xray(real).pixels[:96, :128]),
        real,
    ]
    inputs = [data for data in _mutations(seeds, 400, rng) if data.startswith(SIGNATURE)]
    process = subprocess.run(
        [sys.executable, "-c", _PILLOW_ONLY],
        input=pickle.dumps(inputs),
        capture_output=True,
        cwd=REPO_ROOT,
        timeout=300,
        check=True,
    )
    reference = pickle.loads(process.stdout)
    counts = {"same pixels": 0, "same sentence": 0, "bad crc refused": 0}
    for data, theirs in zip(inputs, reference, strict=True):
        try:
            ours = read_xray(data).pixels
        except ImageRejected as error:
            ours = str(error)
        if isinstance(ours, np.ndarray) and isinstance(theirs, np.ndarray):
            np.testing.assert_array_equal(ours, theirs)
            counts["same pixels"] += 1
        elif isinstance(ours, str) and isinstance(theirs, str) and ours == theirs:
            counts["same sentence"] += 1
        else:
            outcome = (
                ours if isinstance(ours, str) else "pixels",
                theirs if isinstance(theirs, str) else "pixels",
            )
            assert outcome == (DAMAGED, "pixels") and chunks_with_bad_crc(data), outcome
            counts["bad crc refused"] += 1
    assert min(counts.values()) > 0, counts  # the mutations reached every outcome


def test_without_numba_the_reader_still_reads_the_sample(full_resolution_images, tmp_path: Path):
    script = _PILLOW_ONLY.replace(
        "pickle.load(sys.stdin.buffer)", "[open(p, 'rb').read() for p in sys.argv[1:]]"
    )
    files = [str(p) for p in full_resolution_images[:3]]
    process = subprocess.run(
        [sys.executable, "-c", script, *files], capture_output=True, cwd=REPO_ROOT, timeout=300, check=True
    )
    for path, pixels in zip(files, pickle.loads(process.stdout), strict=True):
        np.testing.assert_array_equal(pixels, read_xray(Path(path).read_bytes()).pixels)
