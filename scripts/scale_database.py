"""The throw-away database of the scale benchmark (scripts/bench_scale.py): the full Data_Entry
metadata, synthetic predictions, reviews with double reads, disputes and adjudications, and model
versions with full evaluation reports: the state of a busy studio."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

PASSWORD = "Scale-bench password 2026"


def dataset_folder(sample: Path, folder: Path, n_images: int) -> Path:
    """A ChestX-ray14 folder of `n_images` Data_Entry rows: the sample's rows, cut or replicated."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").symlink_to(sample / "images")
    for name in ("BBox_List_2017.csv", "google2019_nih-chest-xray-labels.csv"):
        if (sample / name).exists():
            (folder / name).symlink_to(sample / name)
    entries = pd.read_csv(sample / "Data_Entry_2017_v2020.csv")
    splits = {name: (sample / name).read_text().split() for name in ("train_val_list.txt", "test_list.txt")}
    copies = [entries]
    copy = 1
    while sum(len(c) for c in copies) < n_images:  # MIMIC-CXR-sized: the same rows under new names
        extra = entries.copy()
        extra["Image Index"] = extra["Image Index"].str.replace(".png", f"_r{copy}.png", regex=False)
        extra["Patient ID"] = extra["Patient ID"] + copy * 100_000
        copies.append(extra)
        for name, listed in splits.items():
            splits[name] = listed + [n.replace(".png", f"_r{copy}.png") for n in listed[: len(entries)]]
        copy += 1
    table = pd.concat(copies, ignore_index=True).iloc[:n_images]
    table.to_csv(folder / "Data_Entry_2017_v2020.csv", index=False)
    kept = set(table["Image Index"])
    for name, listed in splits.items():
        (folder / name).write_text("\n".join(n for n in listed if n in kept) + "\n")
    return folder


def build_database(
    url: str, data: Path, sample: Path, args: argparse.Namespace, step: Callable[[str], None]
) -> None:
    """Import, users, predictions, reviews, adjudications, versions: the state of a busy studio."""
    import numpy as np
    from argon2 import PasswordHasher
    from sqlalchemy import select, text, update

    from core.labels import FINDINGS
    from db import accounts
    from db.bulk import bulk_insert
    from db.engine import get_engine, session_scope
    from db.importer import import_chestxray14
    from db.models import (
        FINDING_COLUMNS,
        SOURCE_NLP,
        Adjudication,
        Image,
        LabelEvent,
        ModelVersion,
        NlpLabel,
        Review,
    )
    from db.registry import promote, register_model_version, save_predictions

    # Thousands of accounts, logins not measured: cheap hashes.
    accounts.set_password_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    rng = np.random.default_rng(args.seed)
    engine = get_engine(url)
    import_chestxray14(engine, data, require_images=False, hash_images=False)
    step("imported Data_Entry")

    files = sorted(str(p) for p in (sample / "images").glob("*.png"))
    with session_scope(engine) as session:
        # Every image gets a viewable file (the sample's PNGs, cycled): the review page shows them all.
        session.execute(text("CREATE TABLE bench_files (k INTEGER PRIMARY KEY, path TEXT)"))
        session.execute(text("INSERT INTO bench_files VALUES (:k, :path)"), [
            {"k": k, "path": path} for k, path in enumerate(files)
        ])  # fmt: skip
        session.execute(
            text(
                "UPDATE images SET path = (SELECT path FROM bench_files WHERE k = images.id % :n) "
                "WHERE path IS NULL"
            ),
            {"n": len(files)},
        )
        session.execute(text("DROP TABLE bench_files"))
        users = [
            accounts.create_user(session, f"reader{r + 1:02d}", PASSWORD, role="clinician")
            for r in range(args.readers)
        ]
        admin = accounts.create_user(session, "chief", PASSWORD, role="admin")
        reader_ids = [u.id for u in users]
        admin_id = admin.id
        rows = session.execute(
            select(NlpLabel.image_id, *(getattr(NlpLabel, c) for c in FINDING_COLUMNS))
            .where(NlpLabel.source == SOURCE_NLP)
            .order_by(NlpLabel.image_id)
        ).all()
    image_ids = np.array([row[0] for row in rows])
    nlp = np.array([row[1:] for row in rows], dtype=bool)
    step("users and image files")

    now = dt.datetime.now(dt.UTC)
    with session_scope(engine) as session:
        reference = evaluation_metrics(rng)
        versions = []
        for v in range(args.versions):
            name = "bench-active" if v == 0 else f"bench-v{v:02d}"
            version = register_model_version(
                session, name, str(REPO_ROOT / "models" / "chexnet-demo"), metrics=reference
            )
            versions.append(version.id)
        promote(session, versions[0])
        session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == versions[0])
            .values(created_at=now - dt.timedelta(days=30))
        )
        logits = np.where(nlp, rng.normal(0.5, 1.5, nlp.shape), rng.normal(-3.0, 1.2, nlp.shape))
        probabilities = 1 / (1 + np.exp(-logits))
        save_predictions(
            session,
            versions[0],
            {int(i): [float(p) for p in row] for i, row in zip(image_ids, probabilities, strict=True)},
        )
    step("model versions and predictions")

    n_double = args.reviews // 6
    n_single = args.reviews - 2 * n_double
    n_reviewed = n_single + n_double
    # Half the reviewed images from the start of the id order (readers working "unreviewed first"),
    # half anywhere (the other queues).
    head = np.arange(min(n_reviewed // 2, len(image_ids)))
    rest = rng.choice(np.arange(len(head), len(image_ids)), size=n_reviewed - len(head), replace=False)
    positions = rng.permutation(np.concatenate([head, rest]))
    first_reader = rng.integers(0, len(reader_ids), size=n_reviewed)
    second_reader = (first_reader + rng.integers(1, len(reader_ids), size=n_reviewed)) % len(reader_ids)
    first = nlp[positions] ^ (rng.random((n_reviewed, len(FINDINGS))) < 0.04)
    second = first[:n_double] ^ (rng.random((n_double, len(FINDINGS))) < 0.05)  # disputes
    reads = [
        (positions, first_reader, first, rng.random(n_reviewed) < 0.01),
        (positions[:n_double], second_reader[:n_double], second, rng.random(n_double) < 0.01),
    ]
    review_rows, event_rows = [], []
    for image_pos, readers, findings, excluded in reads:
        for pos, reader, values, exclude in zip(image_pos, readers, findings, excluded, strict=True):
            values = [bool(v) and not exclude for v in values]
            no_finding = not any(values) and not exclude
            at = now - dt.timedelta(minutes=float(rng.uniform(0, 60 * 24 * 60)))
            image_id, user_id = int(image_ids[pos]), reader_ids[int(reader)]
            review_rows.append((image_id, user_id, *values, no_finding, bool(exclude), "", 1, at, at))
            state = {
                "findings": dict(zip(FINDINGS, values, strict=True)),
                "no_finding": no_finding, "exclude": bool(exclude), "comment": "", "version": 1,
            }  # fmt: skip
            event_rows.append((image_id, user_id, at, "review", 1, None, state, ""))
    disputed = np.flatnonzero((first[:n_double] != second).any(axis=1))
    adjudicated = disputed[rng.random(len(disputed)) < 0.3]
    adjudication_rows = []
    for index in adjudicated:
        image_id, values = int(image_ids[positions[index]]), [bool(v) for v in first[index]]
        at = now - dt.timedelta(minutes=float(rng.uniform(0, 60 * 24 * 30)))
        adjudication_rows.append((image_id, admin_id, *values, not any(values), False, "", 1, at, at))
        state = {
            "findings": dict(zip(FINDINGS, values, strict=True)),
            "no_finding": not any(values), "exclude": False, "comment": "", "version": 1,
        }  # fmt: skip
        event_rows.append((image_id, admin_id, at, "adjudication", 1, None, state, "tie-break"))
    event_rows.sort(key=lambda row: row[2])
    event_columns = ["image_id", "user_id", "at", "kind", "version", "before", "after", "comment"]
    if "hash" in LabelEvent.__table__.c:  # the audit trail is a hash chain (db.audit)
        from db.audit import GENESIS_HASH, event_digest

        previous, chained = GENESIS_HASH, []
        for row in event_rows:
            digest = event_digest(previous, dict(zip(event_columns, row, strict=True)))
            chained.append((*row, previous, digest))
            previous = digest
        event_rows, event_columns = chained, [*event_columns, "prev_hash", "hash"]
    label_columns = ["image_id", "user_id", *FINDING_COLUMNS, "no_finding", "exclude", "comment", "version",
                     "created_at", "updated_at"]  # fmt: skip
    with session_scope(engine) as session:
        bulk_insert(session, Review.__table__, label_columns, review_rows)
        bulk_insert(session, Adjudication.__table__, label_columns, adjudication_rows)
        bulk_insert(session, LabelEvent.__table__, event_columns, event_rows)
        rebuild_derived_tables(session)
    # Fresh planner statistics, as a database in use for a while has (PostgreSQL's autovacuum gathers them).
    if engine.dialect.name == "postgresql":
        with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.begin() as connection:
            connection.exec_driver_sql("ANALYZE")
    with session_scope(engine, read_only=True) as session:
        assert session.scalar(select(Image.id).where(Image.path.is_(None)).limit(1)) is None
    step(f"{len(review_rows):,} reviews, {len(adjudication_rows):,} adjudications")


def rebuild_derived_tables(session: Any) -> None:
    """Bring the tables the app derives from reviews up to date after the bulk insert (those it has)."""
    import importlib

    for module, function in (("db.effective", "rebuild"), ("db.adjudication", "rebuild_status")):
        try:
            rebuild = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError):  # a version of the app without it
            continue
        rebuild(session)


def evaluation_metrics(rng: Any) -> dict[str, Any]:
    """A version's `metrics`: full evaluation reports (curves included) as the evaluate job stores them."""
    import numpy as np

    from core.evaluation.metrics import evaluation_report
    from core.labels import FINDINGS

    reports: dict[str, dict[str, Any]] = {}
    for labels in ("nlp", "reviewed"):
        reports[labels] = {}
        for split, n in (("test", 25_596), ("val", 11_000)):
            truth = rng.random((n, len(FINDINGS))) < 0.06
            prob = 1 / (
                1
                + np.exp(
                    -np.where(truth, rng.normal(0.5, 1.5, truth.shape), rng.normal(-2, 1.5, truth.shape))
                )
            )
            reports[labels][split] = evaluation_report(
                truth.astype(int), prob, model_name="bench", split=split, n_boot=20
            )
    return {"evaluations": reports, "training": {"mean_auroc": reports["nlp"]["val"]["mean_auroc"]}}
