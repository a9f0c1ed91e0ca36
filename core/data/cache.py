"""A preprocessed image cache: every X-ray decoded once, stored as 256x256 uint8 in one memory-mapped file.

Training reads each image ~100 times (epochs); decoding a 1024-px PNG costs milliseconds, reading 64 KiB
from a memmap costs microseconds. The cache folder holds

- `images.u8`   raw uint8 rows of size x size pixels, appended to by each build (no header, no copy),
- `index.json`  {"format", "size", "preprocess", "image_indexes": [row order]}: the row of an image is
                its position in `image_indexes`; rows past that list (an interrupted build) are ignored
                and overwritten by the next build.

Preprocessing (`preprocess_pixels`) is inference's own
(`core.imaging.preprocess.resize_shorter_side_center_crop`):
centre square of the grey uint8 image, resized to size x size with Pillow BILINEAR (which low-pass
filters when downscaling). NIH images are square, so this is a plain 1024 -> 256 resize for them; a
model trained on the cache therefore sees what the predictor feeds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from core import paths
from core.errors import UserError
from core.imaging.preprocess import resize_shorter_side_center_crop
from core.imaging.reader import read_xray_file

Progress = Callable[[int, int], None]

DEFAULT_SIZE = 256
CACHE_FORMAT = 1
# Bump when preprocess_pixels changes: an existing cache built another way must not be mixed in.
PREPROCESS_ID = "center-square+bilinear/v1"
DATA_FILE = "images.u8"
INDEX_FILE = "index.json"
LOCK_FILE = ".lock"
# Write the index this often during a build so an interrupted build keeps most of its work.
CHECKPOINT_EVERY = 2000


class CacheError(UserError, ValueError):
    """The image cache cannot be used as asked (one human sentence)."""


# ----------------------------------------------------------------------------------------------------
# Decoding and preprocessing (shared by the cache builder, the equality test and the naive benchmark path)


def decode_grey(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode one X-ray file to uint8 HxW grey with the project's reader (RGBA, 16-bit, DICOM handled).

    Raises `core.imaging.reader.ImageRejected` (one sentence) for a file that is not a usable image.
    """
    return read_xray_file(path).pixels


def preprocess_pixels(pixels: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """uint8 HxW -> uint8 size x size, exactly as inference does it (core.imaging.preprocess)."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"Expected a 2-D uint8 grey image, got {pixels.dtype} with shape {pixels.shape}.")
    return np.array(resize_shorter_side_center_crop(pixels, size), dtype=np.uint8)  # writable copy


def load_preprocessed(path: str | os.PathLike[str], size: int = DEFAULT_SIZE) -> np.ndarray:
    """Decode + preprocess one file: exactly what the cache stores for it."""
    return preprocess_pixels(decode_grey(path), size)


def _load_for_cache(job: tuple[str, str, int]) -> tuple[str, np.ndarray | None, str | None]:
    # Module-level so a process pool can pickle it. Never raises: a failure is returned as a sentence.
    image_index, path, size = job
    try:
        return image_index, load_preprocessed(path, size), None
    except OSError as exc:  # missing file, permission, I/O error
        return image_index, None, f"The file cannot be read ({exc.strerror or type(exc).__name__})."
    except Exception as exc:  # ImageRejected carries a sentence; anything else is reported too
        return image_index, None, str(exc).strip() or type(exc).__name__


# ----------------------------------------------------------------------------------------------------
# The cache


@dataclass
class CacheBuildReport:
    """What one `build_cache` call did."""

    requested: int = 0
    already_cached: int = 0
    decoded: int = 0  # decode attempts made by this build (successes + failures)
    added: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # image index -> reason
    seconds: float = 0.0
    executor: str = ""
    workers: int = 0

    @property
    def problems(self) -> list[str]:
        """One sentence per unreadable image."""
        return [
            f"{index} could not be decoded and was skipped: {reason}" for index, reason in self.failed.items()
        ]

    def describe(self) -> str:
        text = (
            f"{self.added:,} image(s) added to the cache, {self.already_cached:,} already there, "
            f"{len(self.failed):,} unreadable, in {self.seconds:.1f} s."
        )
        return text


class ImageCache:
    """Read side of the cache: image index -> row -> 256x256 uint8, backed by a read-only memmap."""

    def __init__(self, cache_dir: Path, size: int, image_indexes: list[str]):
        self.cache_dir = cache_dir
        self.size = size
        self.image_indexes = image_indexes
        self._rows = {index: row for row, index in enumerate(image_indexes)}
        self._array: np.ndarray | None = None
        self.report: CacheBuildReport | None = None

    @classmethod
    def open(cls, cache_dir: str | os.PathLike[str]) -> ImageCache:
        cache_dir = Path(cache_dir)
        meta = _read_index(cache_dir)
        if meta is None:
            raise CacheError(f"There is no image cache in {cache_dir}; build it first.")
        cache = cls(cache_dir, int(meta["size"]), list(meta["image_indexes"]))
        data = cache_dir / DATA_FILE
        needed = len(cache) * cache.size * cache.size
        if needed and (not data.is_file() or data.stat().st_size < needed):
            raise CacheError(
                f"The image cache in {cache_dir} is damaged (its data file is too short); rebuild it."
            )
        return cache

    @property
    def array(self) -> np.ndarray:
        """All cached images as a read-only [N, size, size] uint8 memmap (opened on first use)."""
        if self._array is None:
            if not self.image_indexes:
                self._array = np.zeros((0, self.size, self.size), dtype=np.uint8)
            else:
                self._array = np.memmap(
                    self.cache_dir / DATA_FILE,
                    dtype=np.uint8,
                    mode="r",
                    shape=(len(self.image_indexes), self.size, self.size),
                )
        return self._array

    def __len__(self) -> int:
        return len(self.image_indexes)

    def __contains__(self, image_index: object) -> bool:
        return image_index in self._rows

    def rows(self, image_indexes: Iterable[str]) -> np.ndarray:
        """Row numbers (int64) of the given images; CacheError naming the first one not cached."""
        try:
            return np.fromiter((self._rows[i] for i in image_indexes), dtype=np.int64)
        except KeyError as exc:
            raise CacheError(f"{exc.args[0]} is not in the image cache at {self.cache_dir}.") from None

    def get(self, image_index: str) -> np.ndarray:
        return np.array(self.array[self.rows([image_index])[0]])

    def batch(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """[B, size, size] uint8 copy of the given rows (fancy indexing on the memmap)."""
        rows = np.asarray(rows, dtype=np.int64)
        # Reading rows in file order is friendlier to the page cache; the result keeps the asked order.
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.size, self.size), dtype=np.uint8)
        out[order] = self.array[rows[order]]
        return out

    # A memmap pickles as a full in-memory copy; DataLoader workers should reopen the file instead.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None
        return state


def default_cache_folder(data_dir: str | os.PathLike[str], size: int) -> Path:
    """One cache per dataset folder and size: image indexes alone do not identify pixels across copies."""
    root = Path(data_dir).resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", root.name).strip("-") or "dataset"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    return paths.cache_dir() / "images" / f"{slug}-{digest}-{size}px"


def build_cache(
    paths_by_index: Mapping[str, str | os.PathLike[str]] | Sequence[str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str],
    size: int = DEFAULT_SIZE,
    workers: int | None = None,
    progress: Progress | None = None,
    executor: Literal["thread", "process"] = "thread",
) -> ImageCache:
    """Add the images not yet cached to the cache in `cache_dir` (created if needed) and return it.

    `paths_by_index` maps image index -> file (a list of files uses each file name as index). Decoding
    runs in parallel (`workers`, default: CPU count); unreadable files are skipped and listed in
    `cache.report.failed` (they are retried by the next build). Images already cached are not decoded
    again. `executor`: threads are the default, Pillow releases the GIL while decoding and resizing, so
    they scale like processes here without pickling every image back (see core.bench.loader).
    """
    started = time.perf_counter()
    if isinstance(paths_by_index, Mapping):
        jobs_by_index = {str(k): str(v) for k, v in paths_by_index.items()}
    else:
        jobs_by_index = {Path(p).name: str(p) for p in paths_by_index}
    if size < 8:
        raise CacheError(f"A cache image size of {size} px is too small.")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)

    with open(cache_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CacheError(
                f"Another build is writing the image cache in {cache_dir}; wait for it."
            ) from None
        report = _build_locked(jobs_by_index, cache_dir, size, workers, progress, executor)
    report.seconds = time.perf_counter() - started
    cache = ImageCache.open(cache_dir)
    cache.report = report
    return cache


def _build_locked(
    jobs_by_index: dict[str, str],
    cache_dir: Path,
    size: int,
    workers: int | None,
    progress: Progress | None,
    executor: str,
) -> CacheBuildReport:
    meta = _read_index(cache_dir)
    if meta is None:
        meta = {"format": CACHE_FORMAT, "size": size, "preprocess": PREPROCESS_ID, "image_indexes": []}
    elif int(meta["size"]) != size or meta.get("preprocess") != PREPROCESS_ID:
        raise CacheError(
            f"The image cache in {cache_dir} holds {meta['size']}-px images made by "
            f"{meta.get('preprocess')!r}; use another folder for {size}-px {PREPROCESS_ID!r} images."
        )
    cached: list[str] = list(meta["image_indexes"])
    known = set(cached)
    todo = [(index, path, size) for index, path in jobs_by_index.items() if index not in known]
    workers = max(1, workers or os.cpu_count() or 1)
    report = CacheBuildReport(
        requested=len(jobs_by_index),
        already_cached=len(jobs_by_index) - len(todo),
        executor=executor,
        workers=workers,
    )
    if progress is not None:
        progress(0, len(todo))
    if not todo:
        if not (cache_dir / INDEX_FILE).is_file():
            _write_index(cache_dir, meta)  # an empty cache is still a cache
        return report

    row_bytes = size * size
    data_path = cache_dir / DATA_FILE
    pool: Executor = (ProcessPoolExecutor if executor == "process" else ThreadPoolExecutor)(
        max_workers=workers
    )
    with open(data_path, "ab+") as data, pool:
        # Drop rows an interrupted build wrote past the index, then append.
        data.truncate(len(cached) * row_bytes)
        data.seek(0, os.SEEK_END)
        # Submit in bounded windows so a 112k-image build does not hold every result in memory at once.
        window = max(64, workers * 16)
        pending = iter(todo)
        futures = {pool.submit(_load_for_cache, job) for job in _take(pending, window)}
        last_checkpoint = len(cached)
        while futures:
            done = next(as_completed(futures))
            futures.remove(done)
            futures.update(pool.submit(_load_for_cache, job) for job in _take(pending, 1))
            image_index, pixels, reason = done.result()
            report.decoded += 1
            if pixels is None:
                report.failed[image_index] = reason or "unknown error"
            else:
                data.write(np.ascontiguousarray(pixels).tobytes())
                cached.append(image_index)
                report.added += 1
            if len(cached) - last_checkpoint >= CHECKPOINT_EVERY:
                data.flush()
                _write_index(cache_dir, {**meta, "image_indexes": cached})
                last_checkpoint = len(cached)
            if progress is not None:
                progress(report.decoded, len(todo))
        data.flush()
        os.fsync(data.fileno())
    _write_index(cache_dir, {**meta, "image_indexes": cached})
    return report


def _take(iterator: Iterable, count: int) -> list:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) >= count:
            break
    return out


def _read_index(cache_dir: Path) -> dict | None:
    path = cache_dir / INDEX_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if int(meta.get("format", 0)) != CACHE_FORMAT or not isinstance(meta.get("image_indexes"), list):
            raise ValueError("unknown format")
        return meta
    except (ValueError, OSError, TypeError) as exc:
        raise CacheError(
            f"The image cache index {path} is unreadable ({exc}); delete the folder to rebuild."
        ) from exc


def _write_index(cache_dir: Path, meta: dict) -> None:
    # Atomic replace: a reader never sees a half-written index.
    tmp = cache_dir / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(tmp, cache_dir / INDEX_FILE)
