"""How much the preprocessed cache speeds up a training epoch, measured on real images.

Both paths feed the same shuffled batches through the same `to_model_input(train=True)`:

- naive: every epoch decodes each PNG and resizes it to 256 (`core.data.cache.load_preprocessed`), as a
  plain folder Dataset would; decoding uses the same thread count the cache build uses.
- cached: rows are read from the prebuilt memmap (`ImageCache.batch`), in the main thread only.

The cache build is timed separately (it is paid once). Reading and augmentation are timed apart, so
the result gives both the end-to-end speedup and the reading speedup. The sample's `images/` are
512 px; the real dataset's files are 1024 px (`image_dir="full-resolution"` times the sample's 24
originals), where decoding, and so the speedup, is about 4x larger.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.data.augment import to_model_input
from core.data.cache import ImageCache, build_cache, load_preprocessed
from core.data.dataset import load_chestxray14

Progress = Callable[[int, int], None]


def bench_loader(
    sample_dir: str | os.PathLike[str],
    n_images: int | None = None,
    batch_size: int = 32,
    epochs: int = 2,
    progress: Progress | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    image_dir: str | os.PathLike[str] | None = None,
    torch_threads: int | None = 1,
) -> dict:
    """Time `epochs` training epochs read naively vs from the cache; return images/s and the speedups.

    `speedup` is end to end (reading + the shared augmentation); `read_speedup` compares the reading
    alone (decode + resize vs memmap rows). `image_dir`: time the PNGs of this folder instead of the
    dataset's images (relative paths are taken inside `sample_dir`, e.g. "full-resolution" for the
    sample's 1024-px originals, the size of the real dataset's files). `cache_dir`: where to build the
    cache (default: a temporary folder, removed afterwards). `torch_threads`: intra-op threads for the
    augmentation during the run (None: torch's current setting). Default 1: on a 2-core machine torch's
    OpenMP threads keep spinning after each augmentation and starve the decode threads (measured:
    naive decoding fell from 230 to 93 images/s with 2 torch threads), which would flatter the cache.
    """
    previous_threads = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(max(1, torch_threads))
    try:
        return _bench(sample_dir, n_images, batch_size, epochs, progress, workers, cache_dir, image_dir)
    finally:
        torch.set_num_threads(previous_threads)


def _bench(
    sample_dir: str | os.PathLike[str],
    n_images: int | None,
    batch_size: int,
    epochs: int,
    progress: Progress | None,
    workers: int | None,
    cache_dir: str | os.PathLike[str] | None,
    image_dir: str | os.PathLike[str] | None,
) -> dict:
    if image_dir is not None:
        folder = Path(sample_dir) / image_dir
        paths = {p.name: p for p in sorted(folder.glob("*.png"))}
        if not paths:
            raise ValueError(f"There are no PNG files in {folder}.")
    else:
        paths = load_chestxray14(sample_dir).image_paths()
    indexes = sorted(paths)[:n_images] if n_images else sorted(paths)
    workers = max(1, workers or os.cpu_count() or 1)
    total_steps = 2 * epochs + 1
    step = 0

    def advance() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(step, total_steps)

    generator = torch.Generator().manual_seed(0)
    # Warm torch's kernels and thread pool up so the first timed batch is not charged for it.
    to_model_input(torch.zeros((min(batch_size, 4), 256, 256), dtype=torch.uint8), train=True)
    order_rng = np.random.default_rng(0)
    epoch_orders = [order_rng.permutation(len(indexes)) for _ in range(epochs)]
    naive = {"read": 0.0, "augment": 0.0}
    cached = {"read": 0.0, "augment": 0.0}

    # Naive path: decode + resize every image every epoch (same thread count as the cache build).
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for order in epoch_orders:
            for batch_rows in _batches(order, batch_size):
                started = time.perf_counter()
                images = np.stack(list(pool.map(load_preprocessed, [paths[indexes[i]] for i in batch_rows])))
                middle = time.perf_counter()
                to_model_input(torch.from_numpy(images), train=True, generator=generator)
                naive["read"] += middle - started
                naive["augment"] += time.perf_counter() - middle
            advance()

    with tempfile.TemporaryDirectory(prefix="chexnet-bench-") as tmp:
        target = Path(cache_dir) if cache_dir is not None else Path(tmp)
        started = time.perf_counter()
        build_cache({i: paths[i] for i in indexes}, target, workers=workers)
        build_seconds = time.perf_counter() - started
        advance()
        cache = ImageCache.open(target)  # read as training would: a fresh, read-only memmap
        rows = cache.rows(indexes)
        for order in epoch_orders:
            for batch_rows in _batches(order, batch_size):
                started = time.perf_counter()
                images = cache.batch(rows[batch_rows])
                middle = time.perf_counter()
                to_model_input(torch.from_numpy(images), train=True, generator=generator)
                cached["read"] += middle - started
                cached["augment"] += time.perf_counter() - middle
            advance()
        del cache

    seen = len(indexes) * epochs
    naive_rate = seen / (naive["read"] + naive["augment"])
    cached_rate = seen / (cached["read"] + cached["augment"])
    naive_read_rate = seen / naive["read"]
    cached_read_rate = seen / cached["read"]
    return {
        "images": len(indexes),
        "image_size": _image_size(paths[indexes[0]]),
        "epochs": epochs,
        "batch_size": batch_size,
        "workers": workers,
        "torch_threads": torch.get_num_threads(),
        "naive_images_per_s": naive_rate,
        "cached_images_per_s": cached_rate,
        "speedup": cached_rate / naive_rate,
        "naive_read_images_per_s": naive_read_rate,
        "cached_read_images_per_s": cached_read_rate,
        "read_speedup": cached_read_rate / naive_read_rate,
        "naive_augment_ms_per_image": 1000 * naive["augment"] / seen,
        "cached_augment_ms_per_image": 1000 * cached["augment"] / seen,
        "naive_seconds": naive["read"] + naive["augment"],
        "cached_seconds": cached["read"] + cached["augment"],
        "cache_build_seconds": build_seconds,
        "cache_build_images_per_s": len(indexes) / build_seconds if build_seconds else float("inf"),
    }


def format_bench(result: dict) -> str:
    """A few printable lines for the CLI."""
    return "\n".join(
        [
            f"{result['images']:,} images of {result['image_size']} px, {result['epochs']} epoch(s), "
            f"batch {result['batch_size']}, {result['workers']} decode thread(s), "
            f"{result['torch_threads']} torch thread(s)",
            f"naive  (decode + resize every epoch): {result['naive_images_per_s']:8.0f} images/s "
            f"(reading alone {result['naive_read_images_per_s']:.0f}/s)",
            f"cached (memmap rows):                 {result['cached_images_per_s']:8.0f} images/s "
            f"(reading alone {result['cached_read_images_per_s']:.0f}/s)",
            f"speedup: {result['speedup']:.1f}x end to end, {result['read_speedup']:.0f}x reading alone "
            f"(augmentation {result['naive_augment_ms_per_image']:.2f} / "
            f"{result['cached_augment_ms_per_image']:.2f} ms/image)",
            f"cache build (once): {result['cache_build_seconds']:.1f} s, "
            f"{result['cache_build_images_per_s']:.0f} images/s",
        ]
    )


def _image_size(path: Path) -> str:
    with Image.open(path) as image:
        return f"{image.width}x{image.height}"


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
