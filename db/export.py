"""Exporting the effective labels (see db.reviews) as tables.

format "data-entry": like NIH's Data_Entry_2017.csv, for people and other tools:
    Image Index, Finding Labels ("A|B" or "No Finding"), Patient ID, View Position,
    Reviewer Count, Exclude (0/1), then Label Status ("adjudicated", "consensus", "disputed" or
    "nlp"), Disputed Findings and Uncertain Findings ("A|B", "" for none)
format "trainer": the labels table the trainer takes (core.data.dataset.labels_matrix's `label_table`):
    image_index, the 14 findings as 0/1 in FINDINGS order, exclude (0/1), then `uncertain` (the
    findings marked Uncertain, "A|B"; their columns hold 0) and `disputed` (the findings, and "exclude",
    the readers differ on while no admin has adjudicated the image). jobs.labels applies the fine-tune's
    disputed-image policy to this table; core.training reads `uncertain` with its uncertain policy.

A disputed, unadjudicated image keeps the readers' strict-majority values in the finding columns (a tie
is 0) and is marked as disputed: it is never passed off as agreed. Every image that has a label is
exported (source adjudication, consensus or nlp); uploads nobody has reviewed are left out. Rows are
sorted by image index. Uploads have no NIH image index; their stored file name (<sha256>.<ext>)
stands in for it. One query, whatever the number of images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import pandas as pd
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.adjudication import disputed_names
from db.effective import label_of, label_select
from db.models import Image, ReadStatus, findings_in

ExportFormat = Literal["data-entry", "trainer"]
EXPORT_FORMATS: tuple[str, ...] = ("data-entry", "trainer")
DATA_ENTRY_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Patient ID",
    "View Position",
    "Reviewer Count",
    "Exclude",
    "Label Status",
    "Disputed Findings",
    "Uncertain Findings",
]
TRAINER_COLUMNS = ["image_index", *FINDINGS, "exclude", "uncertain", "disputed"]


def _status(source: str, open_dispute: bool) -> str:
    if source == "adjudication":
        return "adjudicated"
    return "disputed" if open_dispute else source


def export_labels_dataframe(session: Session, format: ExportFormat = "data-entry") -> pd.DataFrame:
    if format not in EXPORT_FORMATS:
        raise ValueError(f"Unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}.")
    statement = label_select(
        Image.image_index,
        Image.path,
        Image.patient_id,
        Image.view,
        ReadStatus.open_dispute,
        ReadStatus.disputed_mask,
        ReadStatus.uncertain_mask,
    ).outerjoin(ReadStatus, ReadStatus.image_id == Image.id)
    rows = []
    for row in session.execute(statement):
        label = label_of(row)
        if label.source == "none":
            continue
        image_index, path, patient_id, view, open_dispute, disputed_mask, uncertain_mask = row[-7:]
        name = image_index or (Path(path).name if path else f"image-{row[0]}")
        disputed = "|".join(disputed_names(int(disputed_mask or 0))) if open_dispute else ""
        uncertain = "|".join(findings_in(uncertain_mask)) if label.source != "nlp" else ""
        if format == "data-entry":
            rows.append(
                (name, label.finding_labels, patient_id, view, label.n_reviews, int(label.exclude),
                 _status(label.source, bool(open_dispute)), disputed, uncertain)
            )  # fmt: skip
        else:
            findings = (int(label.findings[f]) for f in FINDINGS)
            rows.append((name, *findings, int(label.exclude), uncertain, disputed))
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
