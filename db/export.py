"""Exporting the effective labels (see db.reviews) as tables.

format "data-entry": like NIH's Data_Entry_2017.csv, for people and other tools:
    Image Index, Finding Labels ("A|B" or "No Finding"), Patient ID, View Position,
    Reviewer Count, Exclude (0/1)
format "trainer": the labels table the trainer takes (core.dataset.labels_matrix's `label_table`):
    image_index, the 14 findings as 0/1 in FINDINGS order, exclude (0/1)

Every image that has a label is exported (source adjudication, consensus or nlp); uploads nobody has
reviewed are left out. Rows are sorted by image index. Uploads have no NIH image index; their
stored file name (<sha256>.<ext>) stands in for it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.models import Image
from db.reviews import effective_labels

ExportFormat = Literal["data-entry", "trainer"]
EXPORT_FORMATS: tuple[str, ...] = ("data-entry", "trainer")
DATA_ENTRY_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Patient ID",
    "View Position",
    "Reviewer Count",
    "Exclude",
]
TRAINER_COLUMNS = ["image_index", *FINDINGS, "exclude"]


def export_labels_dataframe(session: Session, format: ExportFormat = "data-entry") -> pd.DataFrame:
    if format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    labels = effective_labels(session)
    images = session.execute(
        select(Image.id, Image.image_index, Image.path, Image.patient_id, Image.view)
    ).all()
    rows = []
    for image_id, image_index, path, patient_id, view in images:
        label = labels[image_id]
        if label.source == "none":
            continue
        name = image_index or (Path(path).name if path else f"image-{image_id}")
        if format == "data-entry":
            rows.append((name, label.finding_labels, patient_id, view, label.n_reviews, int(label.exclude)))
        else:
            rows.append((name, *(int(label.findings[f]) for f in FINDINGS), int(label.exclude)))
    columns = DATA_ENTRY_COLUMNS if format == "data-entry" else TRAINER_COLUMNS
    table = pd.DataFrame(rows, columns=columns)
    if format == "data-entry":
        table["Patient ID"] = table["Patient ID"].astype("Int64")
    return table.sort_values(columns[0], kind="stable").reset_index(drop=True)


def write_labels_csv(
    session: Session, path: str | os.PathLike[str], format: ExportFormat = "data-entry"
) -> int:
    """Write the export as CSV; returns the number of rows."""
    table = export_labels_dataframe(session, format)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return len(table)
