"""core.imaging.resample and core.imaging.preprocess: Pillow's bilinear resize reproduced bit for bit, only
where needed."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core.imaging.preprocess import IMAGENET_MEAN, IMAGENET_STD, model_input, resize_shorter_side_center_crop
from core.imaging.reader import read_xray_file
from core.imaging.resample import bilinear_resize_window
from core.paths import REPO_ROOT

pytestmark = pytest.mark.usefixtures("numba_kernels")


def pillow_resize(square: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(square)).resize((size, size), Image.Resampling.BILINEAR)
    )


def pillow_model_input(pixels: np.ndarray, resize: int = 256, crop: int = 224) -> np.ndarray:
    """The previous implementation: a full Pillow resize of the centre square, then the centre crop."""
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    resized = pillow_resize(pixels[top : top + side, left : left + side], resize)
    offset = (resize - crop) // 2
    patch = resized[offset : offset + crop, offset : offset + crop].astype(np.float32) / 255.0
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)[:, None, None]
    std = np.asarray(IMAGENET_STD, dtype=np.float32)[:, None, None]
    return (patch[None, :, :] - mean) / std


@pytest.mark.parametrize("side", [64, 97, 255, 256, 257, 333, 600, 1000, 1023, 1024, 2500])
def test_window_equals_pillows_full_resize_cut_out(side):
    square = np.random.default_rng(side).integers(0, 256, (side, side), dtype=np.uint8)
    full = pillow_resize(square, 256)
    for first, last in [(16, 240), (0, 256), (100, 101), (0, 1)]:
        np.testing.assert_array_equal(
            bilinear_resize_window(square, 256, first, last), full[first:last, first:last]
        )


def test_a_strided_view_is_read_correctly():
    wide = np.random.default_rng(1).integers(0, 256, (700, 1024), dtype=np.uint8)
    view = wide[:, 162:862]
    np.testing.assert_array_equal(
        bilinear_resize_window(view, 256, 16, 240), pillow_resize(view, 256)[16:240, 16:240]
    )


def test_bad_arguments_are_programming_errors():
    square = np.zeros((100, 100), dtype=np.uint8)
    with pytest.raises(ValueError):
        bilinear_resize_window(np.zeros((100, 90), dtype=np.uint8), 64, 0, 64)
    with pytest.raises(ValueError):
        bilinear_resize_window(square, 64, 10, 65)


def test_model_input_is_unchanged_on_real_and_non_square_images(full_resolution_images):
    images = [read_xray_file(path).pixels for path in full_resolution_images[:4]]
    images += [np.ascontiguousarray(images[0][100:740, :]), np.ascontiguousarray(images[1][:, 211:812])]
    for pixels in images:
        ours, before = model_input(pixels), pillow_model_input(pixels)
        assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
        np.testing.assert_array_equal(ours, before)
        np.testing.assert_array_equal(
            resize_shorter_side_center_crop(pixels, 256), pillow_model_resize(pixels)
        )


def pillow_model_resize(pixels: np.ndarray) -> np.ndarray:
    height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return pillow_resize(pixels[top : top + side, left : left + side], 256)


def test_without_numba_pillow_gives_the_same_window():
    script = (
        "import sys, numpy as np; sys.modules['numba'] = None\n"
        "from core.imaging import resample\n"
        "assert resample._kernel() is None\n"
        "square = np.random.default_rng(3).integers(0, 256, (1000, 1000), dtype=np.uint8)\n"
        "sys.stdout.buffer.write(resample.bilinear_resize_window(square, 256, 16, 240).tobytes())\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, cwd=REPO_ROOT, timeout=120, check=True
    )
    square = np.random.default_rng(3).integers(0, 256, (1000, 1000), dtype=np.uint8)
    assert process.stdout == bilinear_resize_window(square, 256, 16, 240).tobytes()


def test_a_web_process_never_waits_for_numba_and_sees_the_same_pixels(full_resolution_images):
    # Importing webapp turns compiling off (core.jit): decoding and resizing take Pillow's path.
    path = str(full_resolution_images[0])
    script = (
        "import sys\n"
        "import webapp\n"
        "from core.imaging.reader import read_xray_file\n"
        "from core.imaging.preprocess import model_input\n"
        f"pixels = read_xray_file({path!r}).pixels\n"
        "batch = model_input(pixels, 256, 224)\n"
        "assert 'numba' not in sys.modules, 'the web process imported numba'\n"
        "sys.stdout.buffer.write(pixels.tobytes() + batch.tobytes())\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, cwd=REPO_ROOT, timeout=120, check=True
    )
    pixels = read_xray_file(path).pixels
    assert process.stdout == pixels.tobytes() + model_input(pixels, 256, 224).tobytes()
