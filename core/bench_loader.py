"""How much the preprocessed cache speeds up a training epoch, measured on real images.

Both paths feed the same shuffled batches through the same `to_model_input(train=True)`:

- naive: every epoch decodes each PNG and resizes it to 256 (`core.cache.load_preprocessed`), as a
  plain folder Dataset would; decoding uses the same thread count the cache build uses.
- cached: rows are read from the prebuilt memmap (`ImageCache.batch`), in the main thread only.

The cache build is timed separately (it is paid once). The sample's images are 512 px; the full
dataset's are 1024 px, which makes decoding (and so the speedup) about 4x larger there.
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

from core.augment import to_model_input
from core.cache import ImageCache, build_cache, load_preprocessed
from core.dataset import load_chestxray14

Progress = Callable[[int, int], None]


def bench_loader(
    sample_dir: str | os.PathLike[str],
    n_images: int | None = None,
    batch_size: int = 32,
    epochs: int = 2,
    progress: Progress | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict:
    """Time `epochs` training epochs read naively vs from the cache; return images/s and the speedup.

    `cache_dir`: where to build the cache (default: a temporary folder, removed afterwards).
    """
    ds = load_chestxray14(sample_dir)
    paths = ds.image_paths()
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
    order_rng = np.random.default_rng(0)
    epoch_orders = [order_rng.permutation(len(indexes)) for _ in range(epochs)]

    # Naive path: decode + resize every image every epoch.
    naive_seconds = 0.0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for order in epoch_orders:
            started = time.perf_counter()
            for batch_rows in _batches(order, batch_size):
                images = list(pool.map(load_preprocessed, [paths[indexes[i]] for i in batch_rows]))
                to_model_input(torch.from_numpy(np.stack(images)), train=True, generator=generator)
            naive_seconds += time.perf_counter() - started
            advance()

    with tempfile.TemporaryDirectory(prefix="chexnet-bench-") as tmp:
        target = Path(cache_dir) if cache_dir is not None else Path(tmp)
        started = time.perf_counter()
        cache = build_cache({i: paths[i] for i in indexes}, target, workers=workers)
        build_seconds = time.perf_counter() - started
        advance()
        cache = ImageCache.open(target)  # read as training would: a fresh, read-only memmap
        rows = cache.rows(indexes)
        cached_seconds = 0.0
        for order in epoch_orders:
            started = time.perf_counter()
            for batch_rows in _batches(order, batch_size):
                images = cache.batch(rows[batch_rows])
                to_model_input(torch.from_numpy(images), train=True, generator=generator)
            cached_seconds += time.perf_counter() - started
            advance()
        del cache

    seen = len(indexes) * epochs
    naive_rate = seen / naive_seconds
    cached_rate = seen / cached_seconds
    return {
        "images": len(indexes),
        "epochs": epochs,
        "batch_size": batch_size,
        "workers": workers,
        "torch_threads": torch.get_num_threads(),
        "naive_seconds": naive_seconds,
        "naive_images_per_s": naive_rate,
        "cache_build_seconds": build_seconds,
        "cache_build_images_per_s": len(indexes) / build_seconds if build_seconds else float("inf"),
        "cached_seconds": cached_seconds,
        "cached_images_per_s": cached_rate,
        "speedup": cached_rate / naive_rate,
    }


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
