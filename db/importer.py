"""Importing ChestX-ray14 into the database, and storing uploads.

`import_chestxray14` is idempotent: images already present (by image index) are skipped, as are NLP
labels, Google labels and boxes that an image already has, so importing twice changes nothing and
importing a bigger copy of the dataset later adds only what is new.

Hashing: with `hash_images=True` (default) each new image file is read once for its sha256 (in a few
threads, before the database transaction starts). For the full dataset (~45 GB of PNGs) that is the
slow part; `hash_images=False` imports only the metadata (seconds) and leaves `images.sha256` NULL,
to be filled later by `fill_missing_sha256` (only needed to recognise uploads that are byte-identical
to dataset images). Rows are inserted with bulk executemany statements in one transaction.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.data.dataset import GOOGLE_FINDINGS, load_chestxray14
from core.labels import FINDINGS
from core.paths import chexnet_home
from db.bulk import bulk_insert
from db.engine import session_scope
from db.models import (
    FINDING_COLUMNS,
    SOURCE_GOOGLE,
    SOURCE_NLP,
    Box,
    Image,
    NlpLabel,
    User,
    finding_column,
    utcnow,
)

Progress = Callable[[int, int], None]
_QUERY_CHUNK = 5_000
_HASH_THREADS = 8


@dataclass
class ImportStats:
    images_added: int = 0
    images_skipped: int = 0  # already in the database
    nlp_labels_added: int = 0
    google_labels_added: int = 0
    boxes_added: int = 0
    images_hashed: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # the reader's notes plus our own

    def summary(self) -> str:
        return (
            f"{self.images_added:,} images added ({self.images_skipped:,} already there), "
            f"{self.nlp_labels_added:,} NLP labels, {self.google_labels_added:,} Google labels, "
            f"{self.boxes_added:,} boxes, in {self.seconds:.1f} s."
        )


def import_chestxray14(
    target: Session | Engine,
    root: str | os.PathLike[str],
    *,
    require_images: bool = True,
    hash_images: bool = True,
    progress: Progress | None = None,
) -> ImportStats:
    """Import a ChestX-ray14 folder (official layout, see core.data.dataset) into the database.

    `target`: a Session (the caller commits) or an Engine (committed here). `require_images=False`
    imports every Data_Entry row even when its PNG is absent (`images.path` is then NULL).
    Progress is reported over 5 stages: read, hash, images, labels, boxes.
    """
    if isinstance(target, Engine):
        with session_scope(target) as session:
            return import_chestxray14(
                session, root, require_images=require_images, hash_images=hash_images, progress=progress
            )
    session = target
    started = time.perf_counter()
    stages = 5

    def stage(done: int) -> None:
        if progress is not None:
            progress(done, stages)

    dataset = load_chestxray14(root, require_images=require_images)
    stats = ImportStats(problems=list(dataset.problems))
    stage(1)

    entries = dataset.entries
    known = set(session.scalars(select(Image.image_index).where(Image.image_index.is_not(None))))
    new_entries = entries[[index not in known for index in entries["image_index"].tolist()]]
    stats.images_skipped = len(entries) - len(new_entries)

    hashes: dict[str, str] = {}
    if hash_images and len(new_entries):
        paths = {i: p for i, p in zip(new_entries["image_index"], new_entries["path"], strict=True) if p}
        hashes = _hash_files(paths)
        stats.images_hashed = len(hashes)
        hashes = _drop_known_hashes(session, hashes, stats.problems)
    stage(2)

    stats.images_added = _insert_images(session, new_entries, hashes)
    stage(3)

    ids = _image_ids(session)
    stats.nlp_labels_added = _insert_nlp_labels(session, entries, ids)
    if dataset.google_labels is not None:
        stats.google_labels_added = _insert_google_labels(session, dataset.google_labels, ids)
    stage(4)

    stats.boxes_added = _insert_boxes(session, dataset.boxes, ids)
    session.flush()
    stage(5)
    stats.seconds = time.perf_counter() - started
    return stats


def _values(series: pd.Series) -> list[Any]:
    """Python values of a column, with pandas' missing markers (NaN, NA, None) as None."""
    missing = series.isna().tolist()
    return [None if gone else value for value, gone in zip(series.tolist(), missing, strict=True)]


def _insert_images(session: Session, entries: pd.DataFrame, hashes: dict[str, str]) -> int:
    names = ["image_index", "patient_id", "view", "split", "path", "original_width", "original_height"]
    columns = [_values(entries[name]) for name in names]
    sha256 = [hashes.get(image_index) for image_index in columns[0]]
    rows = list(zip(*columns, sha256, strict=True))
    constants = {"source": "dataset", "created_at": utcnow()}
    return bulk_insert(session, Image.__table__, [*names, "sha256"], rows, constants)


def _image_ids(session: Session) -> dict[str, int]:
    rows = session.execute(select(Image.image_index, Image.id).where(Image.image_index.is_not(None)))
    return {image_index: image_id for image_index, image_id in rows}


def _image_ids_with(session: Session, model: Any, *conditions: Any) -> set[int]:
    return set(session.scalars(select(model.image_id).where(*conditions).distinct()))


def _insert_nlp_labels(session: Session, entries: pd.DataFrame, ids: dict[str, int]) -> int:
    done = _image_ids_with(session, NlpLabel, NlpLabel.source == SOURCE_NLP)
    image_ids = [ids.get(image_index) for image_index in entries["image_index"].tolist()]
    keep = [image_id is not None and image_id not in done for image_id in image_ids]
    findings = entries.loc[keep, list(FINDINGS)].astype(bool)
    rows = list(
        zip(
            [image_id for image_id, kept in zip(image_ids, keep, strict=True) if kept],
            *(findings[finding].tolist() for finding in FINDINGS),
            strict=True,
        )
    )
    constants = {"source": SOURCE_NLP, "created_at": utcnow()}
    return bulk_insert(session, NlpLabel.__table__, ["image_id", *FINDING_COLUMNS], rows, constants)


def _insert_google_labels(session: Session, google: pd.DataFrame, ids: dict[str, int]) -> int:
    done = _image_ids_with(session, NlpLabel, NlpLabel.source == SOURCE_GOOGLE)
    pneumothorax = finding_column("Pneumothorax")
    columns = ["image_id", "extra", *FINDING_COLUMNS]
    rows = []
    for record in google.to_dict("records"):
        image_id = ids.get(record["image_index"])
        if image_id is None or image_id in done:
            continue
        extra: dict[str, Any] = {name: _optional_bool(record.get(name)) for name in GOOGLE_FINDINGS}
        extra["set_id"] = record.get("set_id")
        # Pneumothorax is the only Google finding that is also a ChestX-ray14 finding, one to one.
        findings = tuple(
            extra["Pneumothorax"] if column == pneumothorax else None for column in FINDING_COLUMNS
        )
        rows.append((image_id, extra, *findings))
    constants = {"source": SOURCE_GOOGLE, "created_at": utcnow()}
    return bulk_insert(session, NlpLabel.__table__, columns, rows, constants)


def _optional_bool(value: Any) -> bool | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return bool(value)


def _insert_boxes(session: Session, boxes: pd.DataFrame, ids: dict[str, int]) -> int:
    if boxes.empty:
        return 0
    done = _image_ids_with(session, Box, Box.source == "nih")
    rows = []
    for record in boxes[["image_index", "label", "x", "y", "w", "h"]].to_dict("records"):
        image_id = ids.get(record["image_index"])
        if image_id is None or image_id in done:
            continue
        coordinates = (float(record[axis]) for axis in ("x", "y", "w", "h"))
        rows.append((image_id, record["label"], *coordinates))
    columns = ["image_id", "finding", "x", "y", "w", "h"]
    return bulk_insert(session, Box.__table__, columns, rows, {"source": "nih"})


# ----------------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _hash_files(paths: dict[str, str]) -> dict[str, str]:
    """key -> sha256 of the file, read in a few threads (hashlib releases the GIL)."""
    keys = list(paths)
    with ThreadPoolExecutor(max_workers=_HASH_THREADS) as pool:
        digests = list(pool.map(sha256_file, (paths[k] for k in keys)))
    return dict(zip(keys, digests, strict=True))


def _drop_known_hashes(session: Session, hashes: dict[str, str], problems: list[str]) -> dict[str, str]:
    """Leave out hashes that are already stored (an earlier upload of the same bytes) or repeated."""
    known: set[str] = set()
    values = list(hashes.values())
    for start in range(0, len(values), _QUERY_CHUNK):
        chunk = values[start : start + _QUERY_CHUNK]
        known.update(session.scalars(select(Image.sha256).where(Image.sha256.in_(chunk))))
    kept: dict[str, str] = {}
    seen: set[str] = set()
    clashes: list[str] = []
    for key, digest in hashes.items():
        if digest in known or digest in seen:
            clashes.append(key)
            continue
        seen.add(digest)
        kept[key] = digest
    if clashes:
        problems.append(
            f"{len(clashes):,} image(s) have the same bytes as an image already stored and were imported "
            f"without a hash (e.g. {clashes[0]})."
        )
    return kept


def fill_missing_sha256(engine: Engine, *, batch: int = 2_000, progress: Progress | None = None) -> int:
    """Compute the sha256 of stored images that have a file but no hash; returns how many were filled."""
    with session_scope(engine, read_only=True) as session:
        todo = session.execute(
            select(Image.id, Image.path).where(Image.sha256.is_(None), Image.path.is_not(None))
        ).all()
    filled = 0
    for start in range(0, len(todo), batch):
        chunk = {
            str(image_id): path for image_id, path in todo[start : start + batch] if os.path.exists(path)
        }
        digests = _hash_files(chunk)  # outside the transaction: reading files is the slow part
        with session_scope(engine) as session:
            digests = _drop_known_hashes(session, digests, [])
            for image_id, digest in digests.items():
                session.execute(
                    update(Image)
                    .where(Image.id == int(image_id), Image.sha256.is_(None))
                    .values(sha256=digest)
                )
        filled += len(digests)
        if progress is not None:
            progress(min(start + batch, len(todo)), len(todo))
    return filled


# ----------------------------------------------------------------------------------------------------
# Uploads


def uploads_dir() -> Path:
    path = chexnet_home() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe_extension(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ".bin"


def store_upload(session: Session, data: bytes, filename: str, user: User | None) -> Image:
    """The Image for these bytes: stored once by content under uploads/<sha[:2]>/<sha256>.<ext>.

    Uploading bytes that are already stored (an earlier upload, or a hashed dataset image) returns
    that image instead of storing a copy. The caller commits.
    """
    digest = hashlib.sha256(data).hexdigest()
    existing = session.scalars(select(Image).where(Image.sha256 == digest)).one_or_none()
    if existing is not None:
        return existing

    path = uploads_dir() / digest[:2] / f"{digest}{_safe_extension(filename)}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)  # atomic: readers never see half a file
    width, height = _image_size(path)
    image = Image(
        sha256=digest,
        path=str(path),
        source="upload",
        original_filename=Path(filename).name[:255] or None,
        original_width=width,
        original_height=height,
        uploaded_by_id=user.id if user is not None else None,
    )
    try:
        with session.begin_nested():
            session.add(image)
    except IntegrityError:
        # The same bytes were stored concurrently by another session: use that row.
        return session.scalars(select(Image).where(Image.sha256 == digest)).one()
    return image


def _image_size(path: Path) -> tuple[int | None, int | None]:
    try:
        from PIL import Image as PILImage

        with PILImage.open(path) as picture:
            return picture.width, picture.height
    except Exception:  # not an image PIL reads (e.g. DICOM): the size stays unknown
        return None, None


# ----------------------------------------------------------------------------------------------------
# Benchmark


def benchmark_metadata_import(root: str | os.PathLike[str], url: str | None = None) -> dict[str, float]:
    """Time the metadata-only import of every Data_Entry row into a fresh database.

    `url` defaults to a new SQLite file in a temporary folder. Returns seconds per phase and counts.
    """
    import tempfile

    from db.engine import dispose_engine, get_engine

    with tempfile.TemporaryDirectory() as folder:
        url = url or f"sqlite:///{Path(folder) / 'bench.db'}"
        started = time.perf_counter()
        engine = get_engine(url)
        migrated = time.perf_counter()
        stats = import_chestxray14(engine, root, require_images=False, hash_images=False)
        imported = time.perf_counter()
        again = import_chestxray14(engine, root, require_images=False, hash_images=False)
        finished = time.perf_counter()
        dispose_engine(url)
    return {
        "migrate_s": migrated - started,
        "import_s": imported - migrated,
        "reimport_s": finished - imported,
        "images": float(stats.images_added),
        "nlp_labels": float(stats.nlp_labels_added),
        "google_labels": float(stats.google_labels_added),
        "boxes": float(stats.boxes_added),
        "reimport_images_added": float(again.images_added),
    }
