"""Reference comparators: a published model's per-image predictions, kept as a non-runnable entry.

A reference is a CSV (`Image Index` + one column per finding, named like the finding or `prob_<finding>`,
as the sample's `reference_chexnet_predictions.csv`) that an admin adds on Models & ROC. It is stored
under CHEXNET_HOME/references (the CSV and a small JSON description beside it, like a model folder: the
web app and the worker share CHEXNET_HOME), never as a model version: it cannot be promoted, predicted
with or fine-tuned from; it is compared with versions on the images it covers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from core import paths
from core.evaluation.prediction_sets import PredictionSetError, ReferencePredictions, read_reference_csv
from db.errors import DbUserError

FOLDER = "references"
MAX_NAME = 80
MAX_BYTES = 64 * 1024 * 1024


class ReferenceCsvError(DbUserError, ValueError):
    """A reference CSV that cannot be added or read (one human sentence)."""


@dataclass(frozen=True)
class ReferenceEntry:
    name: str
    slug: str
    source_file: str  # the name of the file it was added from (no folder)
    n_images: int
    labels: list[str]
    sha256: str
    added_at: str
    added_by: str | None

    def csv_path(self) -> Path:
        return references_dir() / f"{self.slug}.csv"


def references_dir() -> Path:
    folder = paths.chexnet_home() / FOLDER
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "reference"


def add_reference(data: bytes, name: str, *, source_file: str, added_by: str | None = None) -> ReferenceEntry:
    """Check the CSV, store it and its description; raises ReferenceCsvError with the reason."""
    name = " ".join(name.split())
    if not name:
        raise ReferenceCsvError("A reference needs a name.")
    if len(name) > MAX_NAME:
        raise ReferenceCsvError(f"A reference name has at most {MAX_NAME} characters.")
    if len(data) > MAX_BYTES:
        raise ReferenceCsvError(f"The CSV is larger than {MAX_BYTES // (1024 * 1024)} MB.")
    if any(entry.name == name for entry in list_references()):
        raise ReferenceCsvError(f"A reference named {name!r} already exists.")
    folder = references_dir()
    slug, n = _slug(name), 2
    while (folder / f"{slug}.csv").exists():
        slug, n = f"{_slug(name)}-{n}", n + 1
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".upload-", suffix=".csv", delete=False) as tmp:
        tmp.write(data)
    staged = Path(tmp.name)
    try:
        parsed = read_reference_csv(staged, name)
    except PredictionSetError as exc:
        staged.unlink(missing_ok=True)
        raise ReferenceCsvError(str(exc).replace(staged.name, Path(source_file).name)) from exc
    entry = ReferenceEntry(
        name=name,
        slug=slug,
        source_file=Path(source_file).name,
        n_images=len(parsed.probabilities),
        labels=list(parsed.probabilities.columns),
        sha256=hashlib.sha256(data).hexdigest(),
        added_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        added_by=added_by,
    )
    staged.replace(folder / f"{slug}.csv")
    (folder / f"{slug}.json").write_text(json.dumps(asdict(entry), indent=2) + "\n")
    return entry


def add_reference_file(path: str | Path, name: str, *, added_by: str | None = None) -> ReferenceEntry:
    """Add a CSV that is on this machine (e.g. the shared sample's reference predictions)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ReferenceCsvError(f"{path.name} could not be read ({exc.strerror or exc}).") from exc
    return add_reference(data, name, source_file=path.name, added_by=added_by)


def list_references() -> list[ReferenceEntry]:
    """Every stored reference, by name (descriptions that cannot be read are skipped)."""
    entries = []
    for described in sorted(references_dir().glob("*.json")):
        try:
            entry = ReferenceEntry(**json.loads(described.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        if entry.csv_path().is_file():
            entries.append(entry)
    return sorted(entries, key=lambda e: e.name.lower())


def load_reference(entry: ReferenceEntry) -> ReferencePredictions:
    try:
        return read_reference_csv(entry.csv_path(), entry.name)
    except PredictionSetError as exc:
        raise ReferenceCsvError(f"The stored reference {entry.name!r} cannot be read: {exc}") from exc


def remove_reference(name: str) -> None:
    for entry in list_references():
        if entry.name == name:
            entry.csv_path().unlink(missing_ok=True)
            (references_dir() / f"{entry.slug}.json").unlink(missing_ok=True)
            return
    raise ReferenceCsvError(f"There is no reference named {name!r}.")
