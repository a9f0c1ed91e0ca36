"""The labels a fine-tune sees, written once as a table the trainer reads, with the snapshot that the
registered version records (source, counts, sha256 of the table, the disputed-image policy).

Reviewed labels come from db.export's trainer table. An image whose readers disagree and that no admin
has adjudicated is marked there (`disputed`); the fine-tune's `disputed_policy` (jobs.params) says what
the run does with it. Uncertain findings travel in the `uncertain` column, which the trainer reads
with its own `uncertain_policy` (core.training.TrainSettings).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from core.data.dataset import DatasetError, load_chestxray14
from core.labels import FINDINGS
from db.export import TRAINER_COLUMNS, export_labels_dataframe
from db.models import SOURCE_NLP, Adjudication, Image, NlpLabel, ReadStatus, Review, findings_of
from jobs.params import DISPUTED_POLICIES, LABEL_SOURCES, JobParamsError


def _reviewed_ids() -> Any:
    return select(Review.image_id).union(select(Adjudication.image_id)).subquery()


def n_reviewed_images(session: Session) -> int:
    """Images with a clinician review or an admin adjudication."""
    return int(session.scalar(select(func.count()).select_from(_reviewed_ids())) or 0)


def reviewed_image_indexes(session: Session) -> set[str]:
    """NIH names of the images with a review or an adjudication."""
    reviewed = _reviewed_ids()
    return set(session.scalars(select(Image.image_index).where(Image.id.in_(select(reviewed.c.image_id)))))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _nlp_table(data_dir: Path) -> tuple[pd.DataFrame, str]:
    try:
        ds = load_chestxray14(data_dir, require_images=False)
    except DatasetError as exc:
        raise JobParamsError(str(exc)) from exc
    entries = ds.entries.reset_index(drop=True)
    table = pd.DataFrame({"image_index": entries["image_index"].astype(str)})
    for finding in FINDINGS:
        table[finding] = entries[finding].astype(int).to_numpy()
    table["exclude"] = 0
    table["uncertain"] = ""
    table["disputed"] = ""
    table = table[TRAINER_COLUMNS].sort_values("image_index", kind="stable").reset_index(drop=True)
    return table, f"{ds.data_entry_name} (NLP-mined labels)"


def _disputed_nlp(session: Session) -> dict[str, dict[str, bool]]:
    """image index -> NLP findings, for the images with an open dispute (bounded by their number)."""
    rows = session.execute(
        select(Image.image_index, NlpLabel)
        .join(ReadStatus, ReadStatus.image_id == Image.id)
        .join(NlpLabel, (NlpLabel.image_id == Image.id) & (NlpLabel.source == SOURCE_NLP))
        .where(ReadStatus.open_dispute == true())
    )
    return {index: {f: bool(v) for f, v in findings_of(nlp).items()} for index, nlp in rows if index}


def apply_disputed_policy(session: Session, table: pd.DataFrame, policy: str) -> pd.DataFrame:
    """The trainer table with the disputed-image policy applied (rows with `disputed` set):
    "exclude" marks them excluded; "majority" keeps the readers' majority; "nlp" takes the NLP label on
    the disputed findings; "uncertain" adds the disputed findings to `uncertain`."""
    if policy not in DISPUTED_POLICIES:
        raise JobParamsError(f"Unknown disputed-image policy {policy!r}.")
    table = table.copy()
    disputed = table["disputed"].fillna("") != ""
    if policy == "exclude":
        table.loc[disputed, "exclude"] = 1
    elif policy in ("nlp", "uncertain"):
        nlp = _disputed_nlp(session) if policy == "nlp" else {}
        for row in table.index[disputed]:
            findings = [f for f in table.at[row, "disputed"].split("|") if f in FINDINGS]
            if policy == "nlp":
                labels = nlp.get(table.at[row, "image_index"])
                for finding in findings if labels is not None else ():
                    table.at[row, finding] = int(labels[finding])
            else:
                listed = [f for f in str(table.at[row, "uncertain"] or "").split("|") if f]
                merged = [f for f in FINDINGS if f in listed or f in findings]
                for finding in findings:
                    table.at[row, finding] = 0
                table.at[row, "uncertain"] = "|".join(merged)
    return table


def write_labels_table(
    session: Session, source: str, data_dir: Path, path: Path, *, disputed_policy: str = "exclude"
) -> dict[str, Any]:
    """Write the labels table of `source` to `path` (trainer format) and return its snapshot.

    "effective": db.export's trainer table (consensus/adjudication where reviewed, NLP elsewhere,
    `exclude` set where the reviewers excluded the image), with `disputed_policy` applied to the
    disputed, unadjudicated images. "nlp": the dataset's Data_Entry labels.
    """
    n_disputed = 0
    if source == "effective":
        table = export_labels_dataframe(session, "trainer")
        n_disputed = int((table["disputed"].fillna("") != "").sum())
        table = apply_disputed_policy(session, table, disputed_policy)
        n_reviewed = n_reviewed_images(session)
        origin = "db.export trainer table (effective labels)"
    elif source == "nlp":
        table, origin = _nlp_table(data_dir)
        n_reviewed = 0
    else:
        raise JobParamsError(f"Unknown label source {source!r}.")
    if table.empty:
        raise JobParamsError("There are no labels to train on; import a dataset first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    kept = table[table["exclude"] == 0]
    return {
        "source": source,
        "description": LABEL_SOURCES[source],
        "origin": origin,
        "table": str(path),
        "sha256": file_sha256(path),
        "n_images": int(len(table)),
        "n_reviewed": int(n_reviewed),
        "n_excluded": int((table["exclude"] != 0).sum()),
        "n_disputed": n_disputed,
        "disputed_policy": disputed_policy if source == "effective" else None,
        "n_uncertain_labels": int(
            table["uncertain"].fillna("").map(lambda v: len([f for f in v.split("|") if f])).sum()
        ),
        "positives": {finding: int(kept[finding].sum()) for finding in FINDINGS},
    }
