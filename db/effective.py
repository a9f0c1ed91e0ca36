"""The effective label in SQL: the `reviewed_labels` table and the stored disagreement of predictions.

The rules of the effective label are db.reviews' (module doc; the code is db.label_rules). They are
applied in Python, once per save: `refresh_image` rewrites the image's `reviewed_labels` row
(adjudication, else the reviewers' consensus; no row: the NLP label applies) and the `disagreement` of
its stored predictions, in the transaction of the review or adjudication being saved. Reading the label
of any number of images is then one join (`label_select`), and the "model disagrees most" queue reads
an index instead of scoring 112k predictions on every load.

Why a maintained table rather than a GROUP BY over `reviews` in every query: labels are read on every
queue load and statistics page, written once per save; the queue's ranking must sit in an index; and
the tie and exclusion rules stay in one Python function (db.label_rules.consensus) instead of being
restated in two SQL dialects.

`rebuild` recomputes everything (after bulk loads, or to repair); `refresh_disagreement` scores the
predictions of a model version and should follow every `registry.save_predictions`. Rows it has not
scored yet (disagreement NULL) are still ranked correctly by the queue, only more slowly.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Select, and_, bindparam, case, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, aliased

from core.labels import FINDINGS
from db.bulk import bulk_insert
from db.errors import NotFoundError
from db.label_rules import EffectiveLabel, consensus
from db.models import (
    FINDING_COLUMNS,
    SOURCE_NLP,
    Adjudication,
    Image,
    NlpLabel,
    Prediction,
    Review,
    ReviewedLabel,
    utcnow,
)

NLP = aliased(NlpLabel, name="nlp")  # the NLP row of an image, joined beside its reviewed label
_EFFECTIVE_IN_LIST = 500  # more ids than this: read every label in one pass instead of IN lists
_REFRESH_CHUNK = 5_000  # image ids per UPDATE when rescoring given images (a write, not a page's read)


# ----------------------------------------------------------------------------------------------------
# Keeping reviewed_labels and the disagreement scores current


def refresh_image(session: Session, image_id: int) -> None:
    """Rewrite the image's reviewed label and rescore its predictions (in the caller's transaction)."""
    # Concurrent saves of one image queue here (PostgreSQL; SQLite writers are serial anyway), so the
    # reviews read below include every committed one and the last writer's row is complete.
    session.execute(select(Image.id).where(Image.id == image_id).with_for_update())
    finding_cols = [getattr(Review, c) for c in FINDING_COLUMNS]
    votes = session.execute(select(Review.exclude, *finding_cols).where(Review.image_id == image_id)).all()
    adjudication = session.execute(
        select(Adjudication.exclude, *(getattr(Adjudication, c) for c in FINDING_COLUMNS)).where(
            Adjudication.image_id == image_id
        )
    ).first()
    session.execute(delete(ReviewedLabel).where(ReviewedLabel.image_id == image_id))
    row = _reviewed_row(image_id, [(v[0], v[1:]) for v in votes], adjudication)
    if row is not None:
        session.execute(insert(ReviewedLabel).values(**row))
    refresh_disagreement(session, image_ids=[image_id])


def rebuild(session: Session) -> int:
    """Recompute every reviewed label and every disagreement score; returns the reviewed images."""
    votes: dict[int, list[tuple[bool, Sequence[bool]]]] = defaultdict(list)
    review_cols = [Review.image_id, Review.exclude, *(getattr(Review, c) for c in FINDING_COLUMNS)]
    for image_id, exclude, *values in session.execute(select(*review_cols)):
        votes[image_id].append((exclude, values))
    adjudication_cols = [Adjudication.image_id, Adjudication.exclude]
    adjudication_cols += [getattr(Adjudication, c) for c in FINDING_COLUMNS]
    adjudications = {row[0]: row[1:] for row in session.execute(select(*adjudication_cols))}
    session.execute(delete(ReviewedLabel))
    rows = []
    for image_id in sorted(set(votes) | set(adjudications)):
        row = _reviewed_row(image_id, votes.get(image_id, []), adjudications.get(image_id))
        assert row is not None
        rows.append(tuple(row.values()))
    if rows:
        bulk_insert(session, ReviewedLabel.__table__, list(_row_columns()), rows)
    refresh_disagreement(session)
    return len(rows)


def _row_columns() -> tuple[str, ...]:
    return ("image_id", "source", "n_reviews", "exclude", *FINDING_COLUMNS, "updated_at")


def _reviewed_row(
    image_id: int, votes: Sequence[tuple[Any, Sequence[Any]]], adjudication: Sequence[Any] | None
) -> dict[str, Any] | None:
    """The reviewed_labels row of an image: adjudication as it is, else the consensus, else None."""
    if adjudication is not None:
        source, exclude, values = "adjudication", bool(adjudication[0]), [bool(v) for v in adjudication[1:]]
    elif votes:
        ballots = [(dict(zip(FINDINGS, map(bool, values), strict=True)), bool(ex)) for ex, values in votes]
        findings, exclude = consensus(ballots)
        source, values = "consensus", [findings[f] for f in FINDINGS]
    else:
        return None
    row: dict[str, Any] = {
        "image_id": image_id,
        "source": source,
        "n_reviews": len(votes),
        "exclude": exclude,
    }
    row.update(zip(FINDING_COLUMNS, values, strict=True))
    row["updated_at"] = utcnow()
    return row


def refresh_disagreement(
    session: Session, model_version_id: int | None = None, image_ids: Iterable[int] | None = None
) -> None:
    """Store max over findings of |probability - effective label| (and where it is) on predictions.

    For one model version, some images (in chunks), or everything; one UPDATE, which rewrites only the
    rows whose score changed. About 6 s (SQLite) / 14 s (PostgreSQL) for 112k new predictions here.
    """
    dialect = session.get_bind().dialect.name
    statement = _refresh_statement(dialect, model_version_id is not None, image_ids is not None)
    parameters: dict[str, Any] = {}
    if model_version_id is not None:
        parameters["only_version"] = model_version_id
    if image_ids is None:
        session.execute(statement, parameters)
        return
    ids = list(image_ids)
    for start in range(0, len(ids), _REFRESH_CHUNK):  # SQLite takes at most 32,766 parameters
        session.execute(statement, {**parameters, "only_images": ids[start : start + _REFRESH_CHUNK]})


@functools.cache
def _refresh_statement(dialect: str, by_version: bool, by_images: bool) -> Any:
    """The UPDATE, built once per shape (it runs on every save; building it costs more than running it)."""
    gaps = select(Prediction.id.label("prediction_id"), *disagreement_gaps(Prediction.probabilities))
    gaps = _join_labels(gaps.select_from(Prediction), Prediction.image_id)
    if by_version:
        gaps = gaps.where(Prediction.model_version_id == bindparam("only_version"))
    if by_images:
        gaps = gaps.where(Prediction.image_id.in_(bindparam("only_images", expanding=True)))
    scored = scored_gaps(dialect, gaps_table(gaps), "prediction_id").subquery("scored")
    return (
        update(Prediction)
        .where(
            Prediction.id == scored.c.prediction_id,
            # Rewrite only what changed: a full rescore after a rebuild then writes next to nothing.
            or_(
                Prediction.disagreement.is_distinct_from(scored.c.score),
                Prediction.disagreement_finding.is_distinct_from(scored.c.finding),
            ),
        )
        .values(disagreement=scored.c.score, disagreement_finding=scored.c.finding)
        .execution_options(synchronize_session=False)
    )


def disagreement_gaps(probabilities: Any) -> list[Any]:
    """|p_i - effective label_i| for the 14 findings (columns g0..g13), over `label_select`'s joins."""
    gaps = []
    for index, column in enumerate(FINDING_COLUMNS):
        label = case((effective_finding(column), 1.0), else_=0.0)
        gaps.append(func.abs(probabilities[index].as_float() - label).label(f"g{index}"))
    return gaps


def gaps_table(gaps: Select[Any]) -> Any:
    """`gaps` as a materialized CTE: computed once per row. As a plain subquery both planners inline
    it, and the score (read by 15 expressions) would parse each row's JSON some 200 times."""
    return gaps.cte("gaps").prefix_with("MATERIALIZED")


def scored_gaps(dialect: str, gaps: Any, *keep: str) -> Select[Any]:
    """From `gaps_table` (columns g0..g13 and `keep`): keep..., score (the largest gap) and finding
    (the index of the first finding with that gap, as Python's max() picks it)."""
    columns = [gaps.c[f"g{i}"] for i in range(len(FINDINGS))]
    largest = func.greatest if dialect == "postgresql" else func.max  # SQLite's max() of several values
    score = largest(*columns).label("score")
    ranked = select(*(gaps.c[name] for name in keep), score, *columns).subquery("ranked")
    finding = case(*((ranked.c[f"g{i}"] == ranked.c.score, i) for i in range(len(FINDINGS))), else_=0)
    return select(*(ranked.c[name] for name in keep), ranked.c.score, finding.label("finding"))


# ----------------------------------------------------------------------------------------------------
# Reading effective labels


def effective_finding(column: str) -> Any:
    """SQL truth value of a finding of the effective label (reviewed label, else NLP, else NULL)."""
    return func.coalesce(getattr(ReviewedLabel, column), getattr(NLP, column))


def _join_labels(statement: Select[Any], image_id: Any) -> Select[Any]:
    """LEFT JOIN the reviewed label and the NLP label of the image whose id is `image_id`."""
    return statement.outerjoin(ReviewedLabel, ReviewedLabel.image_id == image_id).outerjoin(
        NLP, and_(NLP.image_id == image_id, NLP.source == SOURCE_NLP)
    )


def label_select(*extra: Any) -> Select[Any]:
    """image id, reviewed source, n_reviews, exclude, 14 reviewed, has NLP, 14 NLP (+ extra) per image."""
    columns = [
        Image.id,
        ReviewedLabel.source,
        ReviewedLabel.n_reviews,
        ReviewedLabel.exclude,
        *(getattr(ReviewedLabel, c) for c in FINDING_COLUMNS),
        NLP.id.is_not(None),
        *(getattr(NLP, c) for c in FINDING_COLUMNS),
        *extra,
    ]
    return _join_labels(select(*columns).select_from(Image), Image.id)


def label_of(row: Sequence[Any]) -> EffectiveLabel:
    """The EffectiveLabel of a `label_select` row (its first 33 columns)."""
    n = len(FINDINGS)
    source, n_reviews, exclude = row[1], row[2], row[3]
    if source is not None:
        findings = dict(zip(FINDINGS, map(bool, row[4 : 4 + n]), strict=True))
        return EffectiveLabel(findings, not any(findings.values()), bool(exclude), source, int(n_reviews))
    if row[4 + n]:
        findings = dict(zip(FINDINGS, map(bool, row[5 + n : 5 + 2 * n]), strict=True))
        return EffectiveLabel(findings, not any(findings.values()), False, "nlp", 0)
    return no_label()


def no_label() -> EffectiveLabel:
    return EffectiveLabel(dict.fromkeys(FINDINGS, False), False, False, "none", 0)


def effective_labels(session: Session, image_ids: Iterable[int] | None = None) -> dict[int, EffectiveLabel]:
    """image id -> EffectiveLabel: one query (every image, by id, when `image_ids` is None)."""
    ids = None if image_ids is None else list(dict.fromkeys(image_ids))
    statement = label_select()
    if ids is not None and len(ids) <= _EFFECTIVE_IN_LIST:
        statement = statement.where(Image.id.in_(ids))
    labels = {row[0]: label_of(row) for row in session.execute(statement.order_by(Image.id))}
    if ids is None:
        return labels
    return {image_id: labels.get(image_id) or no_label() for image_id in ids}


def get_effective_label(session: Session, image_id: int) -> EffectiveLabel:
    """The label that counts for the image now (rules in db.reviews' module doc)."""
    if session.get(Image, image_id) is None:
        raise NotFoundError(f"There is no image with id {image_id}.")
    return effective_labels(session, [image_id])[image_id]
