"""Label export in the Data_Entry and trainer shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine

from core.data.dataset import labels_matrix, load_chestxray14
from core.labels import FINDINGS
from db.__main__ import main
from db.engine import session_scope
from db.export import DATA_ENTRY_COLUMNS, TRAINER_COLUMNS, export_labels_dataframe
from db.importer import import_chestxray14
from db.reviews import adjudicate, find_image, save_review


def _label(*positive: str) -> dict[str, bool]:
    return {f: f in positive for f in FINDINGS}


def test_export_shapes_and_values(engine: Engine, make_user, make_images) -> None:
    reader, other, admin = make_user("reader"), make_user("other"), make_user("admin2", role="admin")
    nlp_image, reviewed, excluded, adjudicated = make_images(4, nlp={0: ["Mass", "Effusion"], 1: ["Hernia"]})
    [unlabelled] = make_images(1, with_nlp=False)
    with session_scope(engine) as session:
        save_review(session, reviewed, reader, _label("Edema"), False, False, "", None)
        save_review(session, excluded, reader, _label(), False, True, "rotated", None)
        save_review(session, excluded, other, _label(), False, True, "", None)
        adjudicate(session, adjudicated, admin, _label(), True, False, "", None)

    with session_scope(engine, read_only=True) as session:
        entry = export_labels_dataframe(session, "data-entry")
        trainer = export_labels_dataframe(session, "trainer")
        index_of = {
            image_id: find_image_index(session, image_id) for image_id in (nlp_image, reviewed, excluded)
        }

    assert list(entry.columns) == DATA_ENTRY_COLUMNS
    assert (
        list(trainer.columns)
        == TRAINER_COLUMNS
        == ["image_index", *FINDINGS, "exclude", "uncertain", "disputed"]
    )
    assert len(entry) == len(trainer) == 4  # the image without any label is not exported
    assert find_image_index_absent(entry, unlabelled)
    assert entry["Image Index"].is_monotonic_increasing

    rows = entry.set_index("Image Index")
    assert rows.loc[index_of[nlp_image], "Finding Labels"] == "Effusion|Mass"  # FINDINGS order
    assert rows.loc[index_of[reviewed], "Finding Labels"] == "Edema"
    assert rows.loc[index_of[reviewed], "Reviewer Count"] == 1
    assert (
        rows.loc[index_of[excluded], "Exclude"] == 1 and rows.loc[index_of[excluded], "Reviewer Count"] == 2
    )
    assert (rows["Finding Labels"] == "No Finding").sum() == 2  # excluded (no findings) and adjudicated
    assert rows["View Position"].eq("PA").all() and str(rows["Patient ID"].dtype) == "Int64"
    assert rows.loc[index_of[reviewed], "Label Status"] == "consensus"
    assert rows.loc[index_of[nlp_image], "Label Status"] == "nlp"
    assert (rows["Label Status"] == "adjudicated").sum() == 1 and rows["Disputed Findings"].eq("").all()

    by_index = trainer.set_index("image_index")
    assert by_index.loc[index_of[reviewed], "Edema"] == 1 and by_index.loc[index_of[reviewed], "Hernia"] == 0
    assert by_index[list(FINDINGS)].isin([0, 1]).all().all()
    assert by_index.loc[index_of[excluded], "exclude"] == 1 and by_index["exclude"].sum() == 1


def test_disputed_and_uncertain_images_are_marked(engine: Engine, make_user, make_images) -> None:
    """A 1-1 tie is exported as disputed, never as agreed; adjudication settles it; Uncertain is listed."""
    alice, bob, admin = make_user("alice"), make_user("bob"), make_user("boss", role="admin")
    tie, unsure = make_images(2, nlp={0: ["Cardiomegaly"]})
    with session_scope(engine) as session:
        save_review(session, tie, alice, _label("Cardiomegaly"), False, False, "", None, blinded=True)
        save_review(session, tie, bob, _label(), True, False, "", None, blinded=True)
        for reader in (alice, bob):
            save_review(session, unsure, reader, _label("Mass"), False, False, "", None, uncertain=["Nodule"])
    with session_scope(engine, read_only=True) as session:
        entry = export_labels_dataframe(session, "data-entry").set_index("Image Index")
        trainer = export_labels_dataframe(session, "trainer").set_index("image_index")
        names = {image_id: find_image_index(session, image_id) for image_id in (tie, unsure)}
    assert entry.loc[names[tie], "Label Status"] == "disputed"
    assert entry.loc[names[tie], "Disputed Findings"] == "Cardiomegaly"
    assert trainer.loc[names[tie], "disputed"] == "Cardiomegaly"
    assert entry.loc[names[unsure], "Uncertain Findings"] == "Nodule"
    assert (
        entry.loc[names[unsure], "Finding Labels"] == "Mass"
        and entry.loc[names[unsure], "Label Status"] == "consensus"
    )
    assert trainer.loc[names[unsure], "uncertain"] == "Nodule" and trainer.loc[names[unsure], "Nodule"] == 0

    with session_scope(engine) as session:
        adjudicate(session, tie, admin, _label("Cardiomegaly"), False, False, "", None, reason="CTR 0.6")
    with session_scope(engine, read_only=True) as session:
        entry = export_labels_dataframe(session, "data-entry").set_index("Image Index")
        trainer = export_labels_dataframe(session, "trainer").set_index("image_index")
    assert (
        entry.loc[names[tie], "Label Status"] == "adjudicated"
        and entry.loc[names[tie], "Disputed Findings"] == ""
    )
    assert trainer.loc[names[tie], "Cardiomegaly"] == 1 and trainer.loc[names[tie], "disputed"] == ""


def find_image_index(session, image_id: int) -> str:
    from db.models import Image

    image = session.get(Image, image_id)
    assert image is not None and image.image_index
    return image.image_index


def find_image_index_absent(table: pd.DataFrame, image_id: int) -> bool:
    return f"{image_id:08d}" not in "".join(table["Image Index"])


def test_trainer_export_feeds_the_dataset_reader(engine: Engine, sample_dir: Path, make_user) -> None:
    import_chestxray14(engine, sample_dir, hash_images=False)
    dataset = load_chestxray14(sample_dir)
    with session_scope(engine) as session:
        image = find_image(session, "00000001_000.png")  # NLP: Cardiomegaly
        assert image is not None
        image_id = image.id
    reader = make_user("reader")
    with session_scope(engine) as session:
        save_review(session, image_id, reader, _label("Effusion"), False, False, "", None)
        table = export_labels_dataframe(session, "trainer")
    assert len(table) == 555
    indexes = ["00000001_000.png", "00000002_000.png"]
    matrix = labels_matrix(dataset, indexes, label_table=table)
    assert matrix[0].tolist() == [float(f == "Effusion") for f in FINDINGS]
    assert np.array_equal(
        matrix[1], dataset.entries.loc["00000002_000.png", list(FINDINGS)].to_numpy(np.float32)
    )


def test_cli_export_writes_csv(engine: Engine, make_images, tmp_path: Path) -> None:
    make_images(3, nlp={0: ["Mass"]})
    url = engine.url.render_as_string(hide_password=False)
    out = tmp_path / "labels.csv"
    assert main(["--database-url", url, "export-labels", str(out), "--format", "trainer"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == TRAINER_COLUMNS and len(table) == 3 and table["Mass"].sum() == 1
    with pytest.raises(SystemExit):
        main(["--database-url", url, "export-labels", str(out), "--format", "xml"])
