"""A fast decoder for the one PNG layout the NIH dataset uses: 8-bit greyscale, not interlaced.

Pillow inflates with zlib and unfilters in small pieces; for a 1024x1024 X-ray that is ~12 ms. Here the
whole image is inflated at once by libdeflate (through imagecodecs) into a buffer of exactly the size the
header implies (so a stream that expands further can never allocate more), and unfiltered by a small
numba-compiled kernel. Every chunk's CRC is checked.

The decoder only takes files it fully understands: anything else (another bit depth or colour type,
interlacing, transparency, text or EXIF chunks, palettes, animation, a stream that expands past the image,
a file cut after its pixels ...) makes `read_header`/`decode` answer None, and the caller hands the file to
Pillow, so those files behave exactly as before. Damage it can prove (a bad CRC, a broken zlib stream, too
few pixels, an unknown filter type) raises `PngDamaged`; the reader turns that into its sentences.
When numba is not installed the fast path is off (`available()` is False).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from core.jit import LazyKernel

__all__ = ["PngDamaged", "PngHeader", "available", "decode", "read_header"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_DIMENSION = 2**31 - 1  # the PNG specification's limit on width and height
# Ancillary chunks that do not change the pixels Pillow returns for a grey image, with their exact
# lengths (a malformed one goes to Pillow, which decides as it always did).
_HARMLESS_CHUNKS = {b"gAMA": 4, b"cHRM": 32, b"sRGB": 1, b"pHYs": 9, b"tIME": 7, b"sBIT": 1}


class PngDamaged(ValueError):
    """The file is a PNG this decoder understands, but provably damaged; `in_header` says where."""

    def __init__(self, in_header: bool) -> None:
        super().__init__("damaged PNG header" if in_header else "damaged PNG image data")
        self.in_header = in_header


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    first_idat: int  # offset of the first IDAT chunk's length field


def available() -> bool:
    return _unfilter_kernel() is not None


def _chunk(data: bytes, offset: int) -> tuple[bytes, int, int] | None:
    """(type, payload start, payload end) of the chunk at `offset`, or None when the file ends first."""
    if offset + 8 > len(data):
        return None
    (length,) = struct.unpack_from(">I", data, offset)
    start, end = offset + 8, offset + 8 + length
    if length > 0x7FFFFFFF or end + 4 > len(data):
        return None
    return data[offset + 4 : offset + 8], start, end


def _crc_ok(data: bytes, offset: int, end: int) -> bool:
    (expected,) = struct.unpack_from(">I", data, end)
    return zlib.crc32(memoryview(data)[offset + 4 : end]) == expected


def read_header(data: bytes) -> PngHeader | None:
    """The header of an 8-bit grey PNG this decoder takes, or None (let Pillow decide).

    Reads only up to the first IDAT chunk, like Pillow's `open`, so a size check can refuse a
    decompression bomb before any image data is looked at.
    """
    if not data.startswith(_SIGNATURE) or not available():
        return None
    found = _chunk(data, len(_SIGNATURE))
    if found is None or found[0] != b"IHDR" or found[2] - found[1] != 13:
        return None
    kind, start, end = found
    if not _crc_ok(data, len(_SIGNATURE), end):
        raise PngDamaged(in_header=True)
    width, height, depth, colour, compression, filtering, interlace = struct.unpack_from(
        ">IIBBBBB", data, start
    )
    if (depth, colour, compression, filtering, interlace) != (8, 0, 0, 0, 0):
        return None
    if not (0 < width <= _MAX_DIMENSION and 0 < height <= _MAX_DIMENSION):
        return None
    offset = end + 4
    while True:
        found = _chunk(data, offset)
        if found is None:
            return None
        kind, start, end = found
        if kind == b"IDAT":
            return PngHeader(width=width, height=height, first_idat=offset)
        if _HARMLESS_CHUNKS.get(kind) != end - start:
            return None
        if not _crc_ok(data, offset, end):
            raise PngDamaged(in_header=True)
        offset = end + 4


def decode(data: bytes, header: PngHeader) -> np.ndarray | None:
    """The pixels (uint8, height x width) or None (let Pillow decide); raises PngDamaged."""
    kernel = _unfilter_kernel()
    if kernel is None:
        return None
    pieces: list[memoryview] = []
    view = memoryview(data)
    offset = header.first_idat
    in_image_data = True
    while True:
        found = _chunk(data, offset)
        if found is None:
            return None  # cut before IEND: Pillow decides whether the pixels it has are enough
        kind, start, end = found
        if kind == b"IDAT" and in_image_data:
            pieces.append(view[start:end])
        elif kind == b"IEND":
            if end != start:
                return None
            if not _crc_ok(data, offset, end):
                raise PngDamaged(in_header=False)
            break
        elif _HARMLESS_CHUNKS.get(kind) == end - start:
            in_image_data = False  # a later IDAT would be one Pillow ignores
        else:
            return None
        if not _crc_ok(data, offset, end):
            raise PngDamaged(in_header=False)
        offset = end + 4
    width, height = header.width, header.height
    expected = height * (width + 1)  # one filter-type byte before each row of 8-bit pixels
    raw = _inflate(b"".join(pieces), expected)
    if raw is None:
        return None
    if raw.size != expected:
        raise PngDamaged(in_header=False)  # the stream ended before the last row
    pixels = np.empty((height, width), dtype=np.uint8)
    if kernel(raw.reshape(height, width + 1), pixels) >= 0:
        raise PngDamaged(in_header=False)  # a row with an unknown filter type
    return pixels


def _inflate(stream: bytes, expected: int) -> np.ndarray | None:
    """The inflated zlib stream into a buffer of `expected` bytes (shorter if the stream ends sooner);
    None when it would expand further (Pillow reads such files and ignores the excess)."""
    buffer = np.empty(expected, dtype=np.uint8)
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    if imagecodecs is not None:
        try:
            return np.asarray(imagecodecs.deflate_decode(stream, out=buffer))
        except imagecodecs.DeflateError as error:
            if "INSUFFICIENT_SPACE" in str(error):
                return None
            raise PngDamaged(in_header=False) from None
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(stream, expected)
    except zlib.error:
        raise PngDamaged(in_header=False) from None
    if len(out) == expected and (inflater.unconsumed_tail or not inflater.eof):
        try:
            more = inflater.decompress(inflater.unconsumed_tail, 1)
        except zlib.error:
            raise PngDamaged(in_header=False) from None
        if more:
            return None
    if len(out) < expected and not inflater.eof:
        raise PngDamaged(in_header=False)  # cut short
    buffer[: len(out)] = np.frombuffer(out, dtype=np.uint8)
    return buffer[: len(out)]


def _unfilter(raw: np.ndarray, out: np.ndarray) -> int:
    """PNG filter types 0-4 undone for 1 byte per pixel; -1, or the first row with an unknown type."""
    height, width = out.shape
    zero_row = np.zeros(width, dtype=np.uint8)  # the row "above" the first one
    for y in range(height):
        row, above, filtered = out[y], (out[y - 1] if y > 0 else zero_row), raw[y, 1:]
        kind = raw[y, 0]
        if kind == 0:
            row[:] = filtered
        elif kind == 1:  # Sub
            left = np.int32(0)
            for x in range(width):
                left = (np.int32(filtered[x]) + left) & 0xFF
                row[x] = left
        elif kind == 2:  # Up (uint8 arithmetic wraps, as PNG's modulo 256 does)
            for x in range(width):
                row[x] = filtered[x] + above[x]
        elif kind == 3:  # Average
            left = np.int32(0)
            for x in range(width):
                left = (np.int32(filtered[x]) + ((left + np.int32(above[x])) >> 1)) & 0xFF
                row[x] = left
        elif kind == 4:  # Paeth, with its three distances written as differences from the corner
            left = np.int32(0)
            corner = np.int32(0)
            for x in range(width):
                up = np.int32(above[x])
                from_left, from_up = left - corner, up - corner
                to_left, to_up, to_corner = abs(from_up), abs(from_left), abs(from_left + from_up)
                if to_left <= to_up and to_left <= to_corner:
                    predicted = left
                elif to_up <= to_corner:
                    predicted = up
                else:
                    predicted = corner
                left = (np.int32(filtered[x]) + predicted) & 0xFF
                row[x] = left
                corner = up
        else:
            return y
    return -1


def _unfilter_works(kernel) -> bool:
    # Every filter type once, with its expected result: a kernel that compiles wrongly is not used.
    probe = np.array([[0, 9, 8], [1, 1, 2], [2, 1, 1], [3, 4, 4], [4, 1, 255]], dtype=np.uint8)
    expected = np.array([[9, 8], [1, 3], [2, 4], [5, 8], [6, 7]], dtype=np.uint8)
    out = np.empty((5, 2), dtype=np.uint8)
    return kernel(probe, out) == -1 and np.array_equal(out, expected)


_UNFILTER = LazyKernel(_unfilter, _unfilter_works)


def _unfilter_kernel():
    return _UNFILTER.get()
