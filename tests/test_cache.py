"""core.data.cache: the preprocessed 256-px image cache, on a handful of real sample images."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.bench.loader import bench_loader
from core.data.cache import (
    DATA_FILE,
    CacheError,
    ImageCache,
    build_cache,
    decode_grey,
    default_cache_folder,
    load_preprocessed,
    preprocess_pixels,
)
from core.imaging.preprocess import resize_shorter_side_center_crop
from core.imaging.reader import read_xray_file


@pytest.fixture(scope="module")
def some_images(sample_dir: Path) -> dict[str, Path]:
    """Ten 512-px sample images plus the RGBA 1024-px original (copied under its own name)."""
    paths = sorted((sample_dir / "images").glob("*.png"))[:10]
    chosen = {p.name: p for p in paths}
    chosen["full_00001369_000.png"] = sample_dir / "full-resolution" / "00001369_000.png"
    return chosen


def test_cached_images_equal_a_fresh_decode(some_images: dict[str, Path], tmp_path: Path) -> None:
    cache = build_cache(some_images, tmp_path / "cache", workers=2)
    assert len(cache) == len(some_images) and cache.size == 256
    for index, path in some_images.items():
        assert index in cache
        fresh = resize_shorter_side_center_crop(read_xray_file(path).pixels, 256)
        cached = cache.get(index)
        assert cached.shape == (256, 256) and cached.dtype == np.uint8
        np.testing.assert_array_equal(cached, fresh)
        np.testing.assert_array_equal(cached, load_preprocessed(path))
    assert "not-cached.png" not in cache


def test_rgba_original_is_read_like_the_predictor_reads_it(some_images: dict[str, Path]) -> None:
    path = some_images["full_00001369_000.png"]
    with Image.open(path) as image:
        assert image.mode == "RGBA"
    pixels = decode_grey(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (1024, 1024)
    assert pixels.std() > 10  # a real film, not a flat alpha plane


def test_rows_and_batch(some_images: dict[str, Path], tmp_path: Path) -> None:
    cache = build_cache(some_images, tmp_path / "cache")
    names = list(some_images)[::-1][:5]
    rows = cache.rows(names)
    assert rows.dtype == np.int64 and len(set(rows.tolist())) == 5
    batch = cache.batch(rows)
    assert batch.shape == (5, 256, 256) and batch.dtype == np.uint8
    for image, name in zip(batch, names, strict=True):
        np.testing.assert_array_equal(image, cache.get(name))
    with pytest.raises(CacheError, match="missing.png"):
        cache.rows(["missing.png"])


def test_reopen_and_incremental_build(some_images: dict[str, Path], tmp_path: Path) -> None:
    names = list(some_images)
    first = build_cache({n: some_images[n] for n in names[:6]}, tmp_path / "cache")
    assert (first.report.decoded, first.report.added, first.report.already_cached) == (6, 6, 0)
    before = first.batch(first.rows(names[:6]))

    progress: list[tuple[int, int]] = []
    second = build_cache(some_images, tmp_path / "cache", progress=lambda d, t: progress.append((d, t)))
    new = len(names) - 6
    assert (second.report.decoded, second.report.added, second.report.already_cached) == (new, new, 6)
    assert progress[-1] == (new, new)
    assert len(second) == len(names)
    np.testing.assert_array_equal(second.batch(second.rows(names[:6])), before)  # old rows untouched

    third = build_cache(some_images, tmp_path / "cache")
    assert third.report.decoded == 0 and third.report.added == 0

    reopened = ImageCache.open(tmp_path / "cache")
    assert reopened.image_indexes == second.image_indexes
    for name in names:
        np.testing.assert_array_equal(reopened.get(name), load_preprocessed(some_images[name]))


def test_interrupted_build_leftovers_are_overwritten(some_images: dict[str, Path], tmp_path: Path) -> None:
    names = list(some_images)
    build_cache({n: some_images[n] for n in names[:3]}, tmp_path / "cache")
    with open(tmp_path / "cache" / DATA_FILE, "ab") as data:  # rows written, index never updated
        data.write(b"\x07" * (256 * 256 + 1000))
    cache = build_cache({n: some_images[n] for n in names[:5]}, tmp_path / "cache")
    assert cache.report.added == 2
    assert (tmp_path / "cache" / DATA_FILE).stat().st_size == 5 * 256 * 256
    np.testing.assert_array_equal(cache.get(names[3]), load_preprocessed(some_images[names[3]]))


def test_unreadable_files_are_skipped_and_reported(some_images: dict[str, Path], tmp_path: Path) -> None:
    good = list(some_images.items())[:3]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[0][1].read_bytes()[:2000])
    not_png = tmp_path / "notes.png"
    not_png.write_text("these are my notes, not an X-ray")
    jobs = dict(good) | {"truncated.png": truncated, "notes.png": not_png, "gone.png": tmp_path / "gone.png"}

    cache = build_cache(jobs, tmp_path / "cache", workers=2)
    assert len(cache) == 3
    assert set(cache.report.failed) == {"truncated.png", "notes.png", "gone.png"}
    assert cache.report.failed["gone.png"] == "The file cannot be read (No such file or directory)."
    assert "damaged or incomplete" in cache.report.failed["truncated.png"]
    assert all("\n" not in s for s in cache.report.problems)
    assert any(s.startswith("truncated.png could not be decoded") for s in cache.report.problems)
    assert cache.report.decoded == 6

    # Failures are retried by the next build (the file may have been fixed meanwhile).
    shutil.copy(good[0][1], truncated)
    again = build_cache(jobs, tmp_path / "cache")
    assert again.report.decoded == 3 and again.report.added == 1 and "truncated.png" in again


def test_list_input_uses_file_names_and_process_pool(some_images: dict[str, Path], tmp_path: Path) -> None:
    paths = [p for n, p in some_images.items() if not n.startswith("full_")][:4]
    cache = build_cache(paths, tmp_path / "cache", workers=2, executor="process")
    assert sorted(cache.image_indexes) == sorted(p.name for p in paths)
    np.testing.assert_array_equal(cache.get(paths[0].name), load_preprocessed(paths[0]))


def test_size_mismatch_and_missing_cache(some_images: dict[str, Path], tmp_path: Path) -> None:
    one = dict(list(some_images.items())[:1])
    build_cache(one, tmp_path / "cache", size=128)
    assert ImageCache.open(tmp_path / "cache").get(next(iter(one))).shape == (128, 128)
    with pytest.raises(CacheError, match="128-px"):
        build_cache(one, tmp_path / "cache", size=256)
    with pytest.raises(CacheError, match="no image cache"):
        ImageCache.open(tmp_path / "elsewhere")


def test_damaged_cache_is_refused(some_images: dict[str, Path], tmp_path: Path) -> None:
    build_cache(dict(list(some_images.items())[:2]), tmp_path / "cache")
    with open(tmp_path / "cache" / DATA_FILE, "r+b") as data:
        data.truncate(1000)
    with pytest.raises(CacheError, match="damaged"):
        ImageCache.open(tmp_path / "cache")


def test_empty_build_makes_an_empty_cache(tmp_path: Path) -> None:
    cache = build_cache({}, tmp_path / "cache")
    assert len(cache) == 0 and cache.batch([]).shape == (0, 256, 256)
    assert len(ImageCache.open(tmp_path / "cache")) == 0


def test_pickling_does_not_copy_the_images(some_images: dict[str, Path], tmp_path: Path) -> None:
    cache = build_cache(some_images, tmp_path / "cache")
    cache.batch([0, 1])  # memmap now open
    blob = pickle.dumps(cache)
    assert len(blob) < 256 * 256  # DataLoader workers reopen the file instead of receiving a copy
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.batch([2]), cache.batch([2]))


def test_preprocess_non_square_and_bad_input() -> None:
    wide = np.tile(np.arange(600, dtype=np.uint16) % 256, (300, 1)).astype(np.uint8)
    out = preprocess_pixels(wide, 256)
    assert out.shape == (256, 256) and out.dtype == np.uint8
    with pytest.raises(ValueError):
        preprocess_pixels(np.zeros((3, 8, 8), dtype=np.uint8))


def test_bench_loader_runs(sample_dir: Path) -> None:
    result = bench_loader(sample_dir, n_images=12, batch_size=4, epochs=1)
    assert result["images"] == 12
    for key in ("naive_images_per_s", "cached_images_per_s", "cache_build_seconds", "speedup"):
        assert result[key] > 0


def test_default_cache_folder_is_one_per_dataset_copy_and_size(tmp_path: Path) -> None:
    from core.paths import cache_dir

    first = default_cache_folder(tmp_path / "nih copy", 256)
    assert first.parent == cache_dir() / "images" and first.name.startswith("nih-copy-")
    assert first.name.endswith("-256px")
    assert default_cache_folder(tmp_path / "other" / ".." / "nih copy", 256) == first  # the same folder
    assert default_cache_folder(tmp_path / "elsewhere" / "nih copy", 256) != first  # same name, other pixels
    assert default_cache_folder(tmp_path / "nih copy", 512).name.endswith("-512px")
