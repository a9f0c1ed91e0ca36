"""Importing the real ChestX-ray14 sample, and storing uploads."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from core.data.dataset import load_chestxray14
from core.labels import FINDINGS
from db.engine import session_scope
from db.importer import fill_missing_sha256, import_chestxray14, store_upload
from db.models import (
    SOURCE_GOOGLE,
    SOURCE_NLP,
    Base,
    Box,
    Image,
    NlpLabel,
    findings_of,
)
from db.reviews import find_image


def _row_counts(engine: Engine) -> dict[str, int]:
    with session_scope(engine, read_only=True) as session:
        return {
            table.name: int(session.scalar(select(func.count()).select_from(table)) or 0)
            for table in Base.metadata.sorted_tables
        }


def test_import_sample_counts_and_values(engine: Engine, sample_dir: Path) -> None:
    dataset = load_chestxray14(sample_dir)
    stats = import_chestxray14(engine, sample_dir)

    assert stats.images_added == len(dataset.entries) == 555
    assert stats.nlp_labels_added == 555
    assert stats.boxes_added == len(dataset.boxes) > 0
    assert dataset.google_labels is not None
    assert stats.google_labels_added == len(dataset.google_labels) > 0
    assert stats.images_hashed == 555
    counts = _row_counts(engine)
    assert counts["images"] == 555 and counts["boxes"] == len(dataset.boxes)
    assert counts["nlp_labels"] == 555 + len(dataset.google_labels)

    with session_scope(engine, read_only=True) as session:
        splits = dict(session.execute(select(Image.split, func.count()).group_by(Image.split)).all())
        assert splits == {"train_val": 551, "test": 4}
        views = dict(session.execute(select(Image.view, func.count()).group_by(Image.view)).all())
        assert views == {"PA": 463, "AP": 92}

        entry = dataset.entries.loc["00000001_000.png"]
        image = find_image(session, "00000001_000.png")
        assert image is not None and image.source == "dataset"
        assert (image.patient_id, image.original_width, image.original_height) == (1, 2682, 2749)
        assert image.sha256 == hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest()
        nlp = session.scalars(select(NlpLabel).where(NlpLabel.image_id == image.id)).one()
        assert nlp.source == SOURCE_NLP
        assert findings_of(nlp) == {f: bool(entry[f]) for f in FINDINGS}

        # Every image's NLP labels equal the reader's.
        positives = session.scalar(
            select(func.count())
            .select_from(NlpLabel)
            .where(NlpLabel.source == SOURCE_NLP, NlpLabel.infiltration)
        )
        assert positives == int(dataset.entries["Infiltration"].sum()) == 112

        box_row = dataset.boxes.iloc[0]
        boxed = find_image(session, box_row["image_index"])
        assert boxed is not None
        stored = session.scalars(
            select(Box).where(Box.image_id == boxed.id, Box.finding == box_row["label"])
        ).first()
        assert (
            stored is not None
            and stored.x == pytest.approx(box_row["x"])
            and stored.h == pytest.approx(box_row["h"])
        )

        google_row = dataset.google_labels.iloc[0]
        google_image = find_image(session, google_row["image_index"])
        assert google_image is not None
        google = session.scalars(
            select(NlpLabel).where(NlpLabel.image_id == google_image.id, NlpLabel.source == SOURCE_GOOGLE)
        ).one()
        assert google.extra is not None
        assert google.extra["Pneumothorax"] == bool(google_row["Pneumothorax"]) == google.pneumothorax
        assert google.extra["set_id"] == google_row["set_id"]
        assert google.atelectasis is None


def test_second_import_changes_nothing(engine: Engine, sample_dir: Path) -> None:
    import_chestxray14(engine, sample_dir)
    before = _row_counts(engine)
    with session_scope(engine, read_only=True) as session:
        ids_before = dict(session.execute(select(Image.image_index, Image.id)).all())
    again = import_chestxray14(engine, sample_dir)
    assert (again.images_added, again.nlp_labels_added, again.google_labels_added, again.boxes_added) == (
        0,
        0,
        0,
        0,
    )
    assert again.images_skipped == 555
    assert _row_counts(engine) == before
    with session_scope(engine, read_only=True) as session:
        assert dict(session.execute(select(Image.image_index, Image.id)).all()) == ids_before


def test_metadata_only_import_then_hashes_filled_later(sqlite_engine: Engine, sample_dir: Path) -> None:
    stats = import_chestxray14(sqlite_engine, sample_dir, hash_images=False)
    assert stats.images_added == 555 and stats.images_hashed == 0
    with session_scope(sqlite_engine, read_only=True) as session:
        assert session.scalar(select(func.count()).select_from(Image).where(Image.sha256.is_(None))) == 555
    assert fill_missing_sha256(sqlite_engine) == 555
    with session_scope(sqlite_engine, read_only=True) as session:
        image = find_image(session, "00000002_000.png")
        assert image is not None and image.path
        assert image.sha256 == hashlib.sha256(Path(image.path).read_bytes()).hexdigest()


@pytest.mark.slow
def test_every_data_entry_row_imports_without_files(sqlite_engine: Engine, sample_dir: Path) -> None:
    stats = import_chestxray14(sqlite_engine, sample_dir, require_images=False, hash_images=False)
    assert stats.images_added == 112_120 and stats.nlp_labels_added == 112_120
    with session_scope(sqlite_engine, read_only=True) as session:
        assert (
            session.scalar(select(func.count()).select_from(Image).where(Image.path.is_(None)))
            == 112_120 - 555
        )
        missing = find_image(session, "00000001_001.png")
        assert missing is not None and missing.path is None and missing.split == "train_val"


def test_store_upload_deduplicates_by_content(
    engine: Engine, make_user, sample_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))
    user = make_user("uploader")
    data = (sample_dir / "full-resolution").glob("*.png").__next__().read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    with session_scope(engine) as session:
        image = store_upload(session, data, "My Scan.PNG", user)
    expected_path = tmp_path / "home" / "uploads" / digest[:2] / f"{digest}.png"
    assert Path(image.path or "") == expected_path and expected_path.read_bytes() == data
    assert (image.source, image.sha256, image.original_filename) == ("upload", digest, "My Scan.PNG")
    assert (image.original_width, image.original_height) == (1024, 1024)
    assert image.uploaded_by_id == user.id

    with session_scope(engine) as session:
        again = store_upload(session, data, "other-name.png", None)
    assert again.id == image.id
    assert _row_counts(engine)["images"] == 1

    with session_scope(engine) as session:
        other = store_upload(session, b"not an image", "notes.dcm", user)
    assert other.id != image.id and other.original_width is None and (other.path or "").endswith(".dcm")


def test_upload_of_a_dataset_image_returns_the_dataset_image(
    engine: Engine, sample_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CHEXNET_HOME", str(tmp_path / "home"))
    import_chestxray14(engine, sample_dir)
    data = (sample_dir / "images" / "00000001_000.png").read_bytes()
    with session_scope(engine) as session:
        image = store_upload(session, data, "copy.png", None)
        assert image.image_index == "00000001_000.png" and image.source == "dataset"
    assert not (tmp_path / "home" / "uploads").exists() or not any(
        (tmp_path / "home" / "uploads").rglob("*.png")
    )
