"""The review queues and label statistics at a size where per-row work shows: 20,000 images.

On both backends: the SQL results equal a plain-Python reference computed from the raw tables with the
rules of db.reviews; a page of every queue and each aggregate is a small constant number of statements;
the hot queue statements use indexes (EXPLAIN QUERY PLAN on SQLite; EXPLAIN with sequential scans
disabled on PostgreSQL, which shows whether an index can serve the query at all). Also the migration
that fills the derived tables, and the change tokens pages cache by.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from sqlalchemy import Engine, create_engine, event, select, text, update
from sqlalchemy.engine import make_url

from core.labels import FINDINGS
from db import changes, effective
from db.bulk import bulk_insert
from db.effective import effective_labels
from db.engine import dispose_engine, get_engine, session_scope
from db.label_rules import EffectiveLabel, consensus
from db.label_status import label_status
from db.migrate import downgrade, upgrade
from db.models import (
    FINDING_COLUMNS,
    SHUFFLE_KEY_SQL,
    SOURCE_GOOGLE,
    SOURCE_NLP,
    Adjudication,
    Image,
    NlpLabel,
    Prediction,
    Review,
    ReviewedLabel,
    User,
    utcnow,
)
from db.quality import cohen_kappa, fleiss_kappa, label_quality
from db.registry import promote, register_model_version, save_predictions
from db.reviews import adjudicate, remaining_count, review_queue, save_review

N_IMAGES = 20_000
N_BULK_REVIEWS = 3_000
N_SAVED_REVIEWS = 60  # through save_review, the app's path (the rest bulk-loaded, then rebuilt)
READERS = 5
QUEUES = [
    ("unreviewed", {}),
    ("split", {"split": "test"}),
    ("random", {"seed": 7}),
    ("finding", {"finding": "Effusion"}),
    ("finding", {"finding": "Hernia"}),
    ("disagreement", {}),
]


@dataclass
class ScaleDb:
    engine: Engine
    readers: list[int]
    admin: int
    version: int
    partly_scored: int
    labels: dict[int, EffectiveLabel]  # the reference: the rules applied to the raw tables


def _build(engine: Engine) -> ScaleDb:
    rng = np.random.default_rng(3)
    now = utcnow()
    with session_scope(engine) as session:
        names = [f"{i:08d}_000.png" for i in range(N_IMAGES)]
        splits = ["test" if i % 5 == 0 else "train_val" for i in range(N_IMAGES)]
        rows = [(name, i, "PA", split) for i, (name, split) in enumerate(zip(names, splits, strict=True))]
        columns = ["image_index", "patient_id", "view", "split"]
        bulk_insert(session, Image.__table__, columns, rows, {"source": "dataset", "created_at": now})
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        nlp = rng.random((N_IMAGES, len(FINDINGS))) < np.linspace(0.12, 0.003, len(FINDINGS))
        nlp_rows = [(i, *map(bool, row)) for i, row in zip(ids, nlp, strict=True)]
        constants = {"source": SOURCE_NLP, "created_at": now}
        bulk_insert(session, NlpLabel.__table__, ["image_id", *FINDING_COLUMNS], nlp_rows, constants)
        google = [
            (i, {"Pneumothorax": bool(rng.random() < 0.1), "Nodule or mass": bool(rng.random() < 0.2),
                 "Airspace opacity": None if rng.random() < 0.1 else bool(rng.random() < 0.3),
                 "set_id": "test"})
            for i in ids[::40]
        ]  # fmt: skip
        bulk_insert(session, NlpLabel.__table__, ["image_id", "extra"], google, {"source": SOURCE_GOOGLE,
                    "created_at": now})  # fmt: skip
        users = [User(username=f"reader{r}", password_hash="-", role="clinician") for r in range(READERS)]
        users.append(User(username="chief", password_hash="-", role="admin"))
        session.add_all(users)
        session.flush()
        readers, admin = [u.id for u in users[:READERS]], users[-1].id
        version = register_model_version(session, "scale-model", "/nowhere")
        version.created_at = now - dt.timedelta(days=1)
        promote(session, version.id)
        probabilities = np.clip(
            np.where(nlp, rng.normal(0.7, 0.2, nlp.shape), rng.beta(1, 12, nlp.shape)), 0, 1
        )
        probabilities[:50] = probabilities[:50].round(1)  # exact ties of the score, broken by image id
        save_predictions(
            session, version.id, {i: row.tolist() for i, row in zip(ids, probabilities, strict=True)}
        )

        # Bulk reviews, a sixth of them second reads, of a prefix and of random images.
        reviewed = (
            list(range(N_BULK_REVIEWS // 2))
            + rng.choice(
                np.arange(N_BULK_REVIEWS, N_IMAGES), N_BULK_REVIEWS - N_BULK_REVIEWS // 2, replace=False
            ).tolist()
        )
        review_rows, seen = [], set()
        for n, position in enumerate(reviewed):
            readers_of = [n % READERS] + ([(n + 1) % READERS] if n % 6 == 0 else [])
            for reader in readers_of:
                values = [bool(v) for v in nlp[position] ^ (rng.random(len(FINDINGS)) < 0.08)]
                exclude = bool(rng.random() < 0.02)
                key = (ids[position], readers[reader])
                if key in seen:
                    continue
                seen.add(key)
                blinded = bool(rng.random() < 0.8)  # agreement statistics count blinded reads only
                review_rows.append((*key, *values, not any(values), exclude, "", 1, now, now, blinded))
        label_columns = ["image_id", "user_id", *FINDING_COLUMNS, "no_finding", "exclude", "comment",
                         "version",
                         "created_at", "updated_at"]  # fmt: skip
        bulk_insert(session, Review.__table__, [*label_columns, "blinded"], review_rows)
        adjudicated = [
            (i, admin, *[f == 2 for f in range(14)], False, False, "", 1, now, now) for i in ids[:30:3]
        ]
        bulk_insert(session, Adjudication.__table__, label_columns, adjudicated)
        effective.rebuild(session)

    # Saves through the app's own path: each rewrites the image's derived rows in its transaction.
    with session_scope(engine) as session:
        people = {u.id: u for u in session.scalars(select(User))}
        for n in range(N_SAVED_REVIEWS):
            image_id = ids[int(rng.integers(0, N_IMAGES))] if n % 3 else ids[n]
            user = people[readers[n % READERS]]
            findings = {f: bool(rng.random() < 0.2) for f in FINDINGS}
            current = session.scalar(
                select(Review.version).where(Review.image_id == image_id, Review.user_id == user.id)
            )
            save_review(session, image_id, user, findings, not any(findings.values()), False, "", current)
        for image_id in ids[1:40:7]:
            current = session.scalar(select(Adjudication.version).where(Adjudication.image_id == image_id))
            exclude = image_id % 2 == 0
            findings = {"Mass": not exclude}
            adjudicate(session, image_id, people[admin], findings, False, exclude, "", current)
        # A second version whose predictions are only half scored (rows written before save_predictions
        # scored them, or by hand): its queue merges stored scores with scores computed in the query.
        partial = register_model_version(session, "partly-scored", "/nowhere")
        save_predictions(
            session, partial.id, {i: probabilities[n][::-1].tolist() for n, i in enumerate(ids[:6000])}
        )
        session.execute(
            update(Prediction)
            .where(Prediction.model_version_id == partial.id, Prediction.image_id.in_(ids[3000:6000]))
            .values(disagreement=None, disagreement_finding=None)
        )
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")
    with session_scope(engine, read_only=True) as session:
        labels = reference_labels(session)
    return ScaleDb(engine, readers, admin, version.id, partial.id, labels)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def scale(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleDb]:
    """One 20k-image database per backend, shared by the tests of this module (they only read it)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('scale') / 'scale.db'}"
        yield _build(get_engine(url))
        dispose_engine(url)
        return
    server = request.getfixturevalue("postgres_server")
    name = f"chexnet_scale_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        yield _build(get_engine(url))
    finally:
        dispose_engine(url)
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def recorded(engine: Engine) -> Iterator[list[tuple[str, object]]]:
    """The statements (and their parameters) executed on `engine` inside the block."""
    seen: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _executemany) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's transaction start, not a query
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _counted(options: dict) -> dict:
    return {key: value for key, value in options.items() if key != "seed"}  # a count has no order


def _user(db: ScaleDb, session, index: int = 0) -> User:
    return session.get(User, db.readers[index])


# ----------------------------------------------------------------------------------------------------
# A plain-Python reference, straight from the raw tables


def reference_labels(session) -> dict[int, EffectiveLabel]:
    columns = [getattr(Review, c) for c in FINDING_COLUMNS]
    votes: dict[int, list] = defaultdict(list)
    for image_id, exclude, *values in session.execute(select(Review.image_id, Review.exclude, *columns)):
        votes[image_id].append((dict(zip(FINDINGS, map(bool, values), strict=True)), bool(exclude)))
    adjudications = {
        row[0]: row[1:]
        for row in session.execute(
            select(
                Adjudication.image_id,
                Adjudication.exclude,
                *(getattr(Adjudication, c) for c in FINDING_COLUMNS),
            )
        )
    }
    nlp = {
        row[0]: dict(zip(FINDINGS, map(bool, row[1:]), strict=True))
        for row in session.execute(
            select(NlpLabel.image_id, *(getattr(NlpLabel, c) for c in FINDING_COLUMNS)).where(
                NlpLabel.source == SOURCE_NLP
            )
        )
    }
    labels = {}
    for image_id in session.scalars(select(Image.id)):
        n = len(votes.get(image_id, ()))
        if image_id in adjudications:
            exclude, *values = adjudications[image_id]
            findings = dict(zip(FINDINGS, map(bool, values), strict=True))
            labels[image_id] = EffectiveLabel(findings, not any(values), bool(exclude), "adjudication", n)
        elif n:
            findings, exclude = consensus(votes[image_id])
            labels[image_id] = EffectiveLabel(findings, not any(findings.values()), exclude, "consensus", n)
        elif image_id in nlp:
            labels[image_id] = EffectiveLabel(nlp[image_id], not any(nlp[image_id].values()), False, "nlp", 0)
        else:
            labels[image_id] = EffectiveLabel(dict.fromkeys(FINDINGS, False), False, False, "none", 0)
    return labels


_REFERENCE_CACHE: dict[tuple, dict] = {}


def _cached(scale_key: object, name: str, compute) -> dict:
    key = (id(scale_key), name)
    if key not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[key] = compute()
    return _REFERENCE_CACHE[key]


def reference_queue(session, user: User, strategy: str, labels, version: int, **options) -> list[int]:
    mine = set(session.scalars(select(Review.image_id).where(Review.user_id == user.id)))
    candidates = [i for i in labels if i not in mine]
    if strategy == "split":
        splits = _cached(labels, "splits", lambda: dict(session.execute(select(Image.id, Image.split)).all()))
        candidates = [i for i in candidates if splits[i] == options["split"]]
    if strategy in ("unreviewed", "split"):
        return sorted(candidates, key=lambda i: (labels[i].n_reviews, i))
    if strategy == "finding":
        positive = [i for i in candidates if labels[i].findings[options["finding"]]]
        return sorted(positive, key=lambda i: (labels[i].n_reviews, i))
    if strategy == "random":
        start = random.Random(options["seed"]).randrange(2**32)
        keys = _cached(labels, "keys", lambda: {i: shuffle_key(i) for i in labels})
        return sorted(candidates, key=lambda i: (keys[i] < start, keys[i]))

    def scores() -> dict[int, float]:
        stored = session.execute(
            select(Prediction.image_id, Prediction.probabilities).where(
                Prediction.model_version_id == version
            )
        )
        return {
            i: max(abs(float(p) - float(labels[i].findings[f])) for f, p in zip(FINDINGS, probs, strict=True))
            for i, probs in stored
        }

    score = _cached(labels, f"scores-{version}", scores)
    return sorted((i for i in candidates if i in score), key=lambda i: (-score[i], i))


def shuffle_key(image_id: int) -> int:
    """db.models.SHUFFLE_KEY_SQL in Python: the SQL must compute exactly this on both backends."""
    mask = 0xFFFFFFFF
    first = (image_id * 2654435761) & mask
    mixed = first ^ (first >> 16)
    second = (mixed * 73244475) & mask
    return second ^ (second >> 16)


# ----------------------------------------------------------------------------------------------------
# Results


def test_effective_labels_equal_the_rules_applied_to_the_raw_tables(scale: ScaleDb) -> None:
    with session_scope(scale.engine, read_only=True) as session:
        expected = scale.labels
        with recorded(scale.engine) as statements:
            labels = effective_labels(session)
        assert len(statements) == 1
        assert labels == expected
        assert {label.source for label in labels.values()} == {"adjudication", "consensus", "nlp"}
        some = list(expected)[::997]
        assert effective_labels(session, some) == {i: expected[i] for i in some}


def test_every_queue_matches_the_reference_order(scale: ScaleDb) -> None:
    with session_scope(scale.engine, read_only=True) as session:
        labels = scale.labels
        for reader in (0, 3):  # one with a share of the saves through the app, one with fewer
            user = _user(scale, session, reader)
            for strategy, options in QUEUES:
                expected = reference_queue(session, user, strategy, labels, scale.version, **options)
                items = review_queue(session, user, strategy, limit=60, **options)  # type: ignore[arg-type]
                assert [item.image_id for item in items] == expected[:60], (strategy, options)
                assert remaining_count(session, user, strategy, **_counted(options)) == len(expected)  # type: ignore[arg-type]
                assert all(item.n_reviews == labels[item.image_id].n_reviews for item in items)
            expected = reference_queue(session, user, "disagreement", labels, scale.partly_scored)
            items = review_queue(
                session, user, "disagreement", model_version_id=scale.partly_scored, limit=80
            )
            assert [item.image_id for item in items] == expected[:80]
            count = remaining_count(session, user, "disagreement", model_version_id=scale.partly_scored)
            assert count == len(expected)
        top = review_queue(session, _user(scale, session), "disagreement", limit=5)
        stored = dict(session.execute(select(Prediction.image_id, Prediction.probabilities).where(
            Prediction.model_version_id == scale.version)).all())  # fmt: skip
        for item in top:
            gaps = [
                abs(p - labels[item.image_id].findings[f])
                for f, p in zip(FINDINGS, stored[item.image_id], strict=True)
            ]
            assert item.score == max(gaps) and item.top_finding == FINDINGS[gaps.index(max(gaps))]


def test_random_queue_key_is_the_python_hash_and_a_shuffle(scale: ScaleDb) -> None:
    with session_scope(scale.engine, read_only=True) as session:
        pairs = session.execute(select(Image.id, text(SHUFFLE_KEY_SQL)).order_by(Image.id).limit(3000)).all()
        assert all(key == shuffle_key(image_id) for image_id, key in pairs)
        order = [
            item.image_id
            for item in review_queue(session, _user(scale, session), "random", limit=500, seed=1)
        ]
        assert len(set(order)) == 500
        assert abs(np.corrcoef(np.arange(500), order)[0, 1]) < 0.2  # not id order, nor its reverse
        assert order != [
            i.image_id for i in review_queue(session, _user(scale, session), "random", limit=500, seed=2)
        ]


def test_label_statistics_equal_the_reference(scale: ScaleDb) -> None:
    with session_scope(scale.engine, read_only=True) as session:
        labels = scale.labels
        nlp = {
            row[0]: row[1:]
            for row in session.execute(select(NlpLabel.image_id,
                                              *(getattr(NlpLabel, c) for c in FINDING_COLUMNS))
                                       .where(NlpLabel.source == SOURCE_NLP))
        }  # fmt: skip
        with recorded(scale.engine) as statements:
            status = label_status(session)
        assert len(statements) <= 10
        reviewed = {i: label for i, label in labels.items() if label.source in ("adjudication", "consensus")}
        assert status.n_reviewed == sum(1 for label in labels.values() if label.n_reviews)
        assert status.n_excluded == sum(1 for label in labels.values() if label.exclude)
        assert status.n_with_nlp == len(nlp)
        assert (status.n_images, status.n_dataset, status.n_uploads) == (N_IMAGES, N_IMAGES, 0)
        assert status.by_split == {"test": N_IMAGES // 5, "train_val": N_IMAGES - N_IMAGES // 5}
        for c, row in enumerate(status.findings):
            assert row.nlp_positive == sum(values[c] for values in nlp.values())
            positive = sum(label.findings[row.finding] for label in labels.values() if not label.exclude)
            assert row.effective_positive == positive
            changed = sum(1 for i, label in reviewed.items() if label.findings[row.finding] != nlp[i][c])
            assert row.changed == changed
        assert status.n_changed == sum(
            1
            for i, label in reviewed.items()
            if any(label.findings[f] != nlp[i][c] for c, f in enumerate(FINDINGS))
        )
        assert status.n_images_changed_since_active > 0  # the saves above came after the version

        with recorded(scale.engine) as statements:
            quality = label_quality(session)
        assert len(statements) <= 6
        kept = {i: label for i, label in reviewed.items() if not label.exclude}
        assert quality.n_reviewed_images == sum(1 for label in labels.values() if label.n_reviews)
        reads: dict[int, list] = defaultdict(list)
        review_cols = [getattr(Review, c) for c in FINDING_COLUMNS]
        for image_id, *values in session.execute(
            select(Review.image_id, *review_cols).where(~Review.exclude, Review.blinded)
        ):
            reads[image_id].append(values)
        multi = [rows for rows in reads.values() if len(rows) >= 2]
        assert quality.n_multi_read_images == len(multi) > 100
        for c, row in enumerate(quality.findings):
            assert row.n_reviewed == len(kept)
            assert row.pos_to_neg == sum(
                1 for i, label in kept.items() if nlp[i][c] and not label.findings[row.finding]
            )
            assert row.neg_to_pos == sum(
                1 for i, label in kept.items() if not nlp[i][c] and label.findings[row.finding]
            )
            counts = [[sum(r[c] for r in rows), sum(not r[c] for r in rows)] for rows in multi]
            assert row.kappa_method == "fleiss"
            assert row.kappa == pytest.approx(fleiss_kappa(counts), abs=1e-12)
            assert row.percent_agreement == pytest.approx(np.mean([0 in pair for pair in counts]))
        pneumothorax = next(g for g in quality.google if g.google_finding == "Pneumothorax")
        google = dict(
            session.execute(
                select(NlpLabel.image_id, NlpLabel.extra).where(NlpLabel.source == SOURCE_GOOGLE)
            ).all()
        )
        pairs = [
            (int(g["Pneumothorax"]), int(kept[i].findings["Pneumothorax"]))
            for i, g in google.items()
            if i in kept
        ]
        assert pneumothorax.n_reviewed == len(pairs) > 0
        assert pneumothorax.reviewed_kappa == cohen_kappa([a for a, _ in pairs], [b for _, b in pairs])


# ----------------------------------------------------------------------------------------------------
# Statements and plans


def test_a_queue_page_is_a_few_statements(scale: ScaleDb) -> None:
    with session_scope(scale.engine, read_only=True) as session:
        user = _user(scale, session)
        for strategy, options in QUEUES:
            with recorded(scale.engine) as page:
                review_queue(session, user, strategy, limit=50, **options)  # type: ignore[arg-type]
            with recorded(scale.engine) as count:
                remaining_count(session, user, strategy, **_counted(options))  # type: ignore[arg-type]
            # the active version's id, then the page (two for a queue that wraps or runs out)
            assert len(page) <= 3 and len(count) <= 2, (strategy, options, len(page), len(count))
        with recorded(scale.engine) as token:
            changes.change_token(session)
        assert len(token) == 1


def _plans(scale: ScaleDb) -> list[tuple[str, str]]:
    """(statement, plan text) of every statement of every queue page and count."""
    captured = []
    with session_scope(scale.engine, read_only=True) as session:
        user = _user(scale, session)
        with recorded(scale.engine) as statements:
            for strategy, options in QUEUES:
                review_queue(session, user, strategy, limit=50, **options)  # type: ignore[arg-type]
                remaining_count(session, user, strategy, **_counted(options))  # type: ignore[arg-type]
        captured = [(s, p) for s, p in statements if "model_versions" not in s]
    plans = []
    with scale.engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:  # can an index serve it at all? Then the plan uses it even on a small table
            connection.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in captured:
            prefix = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
            rows = connection.exec_driver_sql(prefix + statement, parameters).all()
            plans.append((statement, "\n".join(str(row[-1]) for row in rows)))
    return plans


def test_queue_statements_use_indexes(scale: ScaleDb) -> None:
    plans = _plans(scale)
    assert len(plans) >= 2 * len(QUEUES)
    full_scan = re.compile(r"(^|\n)\s*(SCAN|Seq Scan on) (reviews|predictions)\b")
    for statement, plan in plans:
        assert not full_scan.search(plan), f"{statement}\n{plan}"
    text_of = "\n".join(plan for _, plan in plans)
    for index in ("ix_predictions_disagreement", "ix_images_shuffle_key", "ix_nlp_labels_effusion_positive"):
        assert index in text_of, index


# ----------------------------------------------------------------------------------------------------
# The migration and the change tokens


def test_migration_fills_the_derived_tables_from_existing_reviews(
    engine: Engine, make_user, make_images
) -> None:
    readers = [make_user(f"r{i}") for i in range(3)]
    admin = make_user("chief", role="admin")
    images = make_images(24, nlp={i: [FINDINGS[i % 14]] for i in range(0, 24, 2)})
    rng = random.Random(5)
    with session_scope(engine) as session:
        for n, image_id in enumerate(images[:18]):
            for reader in readers[: 1 + n % 3]:
                findings = {f: rng.random() < 0.3 for f in FINDINGS[:4]}
                exclude = rng.random() < 0.15
                no_finding = not any(findings.values()) and not exclude
                save_review(session, image_id, reader, findings, no_finding, exclude, "", None)
        for image_id in (images[0], images[20]):
            adjudicate(session, image_id, admin, {"Edema": True}, False, False, "", None)
        version = register_model_version(session, "v", "/nowhere")
        save_predictions(session, version.id, {i: [rng.random() for _ in FINDINGS] for i in images})
        effective.refresh_disagreement(session, version.id)

    def derived() -> tuple[list, list]:
        with session_scope(engine, read_only=True) as session:
            rows = session.execute(select(ReviewedLabel.__table__).order_by(ReviewedLabel.image_id)).all()
            columns = [Prediction.id, Prediction.disagreement, Prediction.disagreement_finding]
            scores = session.execute(select(*columns).order_by(Prediction.id)).all()
        labels = [tuple(v for k, v in row._mapping.items() if k != "updated_at") for row in rows]
        return labels, scores

    before = derived()
    assert len(before[0]) == 19 and all(score is not None for _, score, _ in before[1])
    downgrade(engine, "0002_security")
    upgrade(engine)
    assert derived() == before


def test_change_tokens_move_on_writes_and_only_then(engine: Engine, make_user, make_images) -> None:
    reader, admin = make_user("reader"), make_user("chief", role="admin")
    [image, other] = make_images(2)

    def tokens() -> tuple:
        with session_scope(engine, read_only=True) as session:
            return changes.labels_token(session), changes.models_token(session)

    labels, models = tokens()
    assert tokens() == (labels, models)
    with session_scope(engine) as session:
        save_review(session, image, reader, {"Mass": True}, False, False, "", None)
    assert tokens()[0] != labels and tokens()[1] == models
    labels = tokens()[0]
    with session_scope(engine) as session:
        adjudicate(session, other, admin, {"Edema": True}, False, False, "", None)
    assert tokens()[0] != labels
    with session_scope(engine) as session:
        version = register_model_version(session, "v1", "/nowhere")
    assert tokens()[1] != models
    models = tokens()[1]
    with session_scope(engine) as session:
        promote(session, version.id)
    assert tokens()[1] != models
    models = tokens()[1]
    with session_scope(engine) as session:
        save_predictions(session, version.id, {image: [0.5] * len(FINDINGS)})
        effective.refresh_disagreement(session, version.id)
    assert tokens()[1] != models
    labels, models = tokens()
    with session_scope(engine) as session:
        change = changes.change_token(session)
    assert change == (*labels, *models)


def test_concurrent_saves_of_one_image_both_count(engine: Engine, make_user, make_images) -> None:
    """The second save waits for the first (saves are serialized: the audit chain lock, and the image row
    lock of db.effective), so its reviewed label includes both reads."""
    first, second = make_user("first"), make_user("second")
    [image] = make_images(1)
    done: list[object] = []

    def later_save() -> None:
        try:
            with session_scope(engine) as session:
                save_review(
                    session, image, session.get(User, second.id), {"Mass": True}, False, False, "", None
                )
            done.append("ok")
        except Exception as exc:  # reported by the assertion below
            done.append(exc)

    with session_scope(engine) as session:
        save_review(session, image, session.get(User, first.id), {"Mass": True}, False, False, "", None)
        thread = threading.Thread(target=later_save)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waiting for this transaction
    thread.join(30)
    assert done == ["ok"]
    with session_scope(engine, read_only=True) as session:
        row = session.get(ReviewedLabel, image)
        assert row is not None and (row.n_reviews, row.mass, row.source) == (2, True, "consensus")
