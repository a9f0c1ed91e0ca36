"""The review queues in SQL: a page of a queue is one or two indexed queries with LIMIT, its size one
COUNT, whatever the number of images (db.reviews.review_queue / remaining_count call these).

- "unreviewed" / "split": images nobody reviewed, by id (the primary key, probing the reviews index),
  then, only when those run out, reviewed images by their number of reviews (reviewed_labels).
- "random": images in the order of a 32-bit hash of their id (an expression index, SHUFFLE_KEY_SQL),
  from a starting point drawn from the seed, wrapping around: a reproducible shuffle read by seeking.
- "finding": the images whose effective label has the finding: NLP positives (a partial index per
  finding) without a reviewed label, and reviewed labels with it.
- "disagreement": predictions of the model version by their stored disagreement (an index read from
  the top); rows not scored yet are scored in the query and merged.
Every queue leaves out the images the reader reviewed (NOT EXISTS on the (image_id, user_id) index).
"""

from __future__ import annotations

import random
from typing import Any

from sqlalchemy import Select, and_, exists, func, literal, literal_column, select, union_all
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db.effective import NLP, disagreement_gaps, gaps_table, scored_gaps
from db.label_rules import QueueError, QueueItem
from db.models import (
    SHUFFLE_KEY_SQL,
    SOURCE_NLP,
    Image,
    ModelVersion,
    NlpLabel,
    Prediction,
    Review,
    ReviewedLabel,
    User,
    finding_column,
)

_SHUFFLE_KEYS = 2**32


def queue_items(
    session: Session,
    user: User,
    strategy: str,
    *,
    finding: str | None,
    split: str | None,
    model_version_id: int | None,
    limit: int,
    seed: int | None,
) -> list[QueueItem]:
    if strategy in ("unreviewed", "split"):
        return _unreviewed(session, user, split if strategy == "split" else None, limit)
    if strategy == "random":
        return _random(session, user, limit, seed)
    if strategy == "finding":
        assert finding is not None
        return _finding(session, user, finding, limit)
    return _disagreement(session, user, _version_id(session, model_version_id), limit)


def queue_size(
    session: Session,
    user: User,
    strategy: str,
    *,
    finding: str | None,
    split: str | None,
    model_version_id: int | None,
) -> int:
    """How many images the queue holds: one COUNT statement (plus the active version's id)."""
    if strategy in ("unreviewed", "split", "random"):
        split = split if strategy == "split" else None
        images = select(func.count()).select_from(Image)
        mine = select(func.count()).select_from(Review).where(Review.user_id == user.id)
        if split:
            images = images.where(Image.split == split)
            mine = mine.join(Image, Image.id == Review.image_id).where(Image.split == split)
        return int(session.scalar(select(images.scalar_subquery() - mine.scalar_subquery())) or 0)
    if strategy == "finding":
        assert finding is not None
        candidates = _finding_candidates(user, finding).subquery()
        return int(session.scalar(select(func.count()).select_from(candidates)) or 0)
    version_id = _version_id(session, model_version_id)
    predicted = select(func.count()).select_from(Prediction).where(Prediction.model_version_id == version_id)
    mine = (
        select(func.count())
        .select_from(Review)
        .join(
            Prediction,
            and_(Prediction.image_id == Review.image_id, Prediction.model_version_id == version_id),
        )
        .where(Review.user_id == user.id)
    )
    return int(session.scalar(select(predicted.scalar_subquery() - mine.scalar_subquery())) or 0)


def _not_reviewed_by(user: User, image_id: Any) -> Any:
    return ~exists().where(Review.image_id == image_id, Review.user_id == user.id)


def _n_reviews() -> Any:
    return func.coalesce(ReviewedLabel.n_reviews, 0).label("n_reviews")


def _items(rows: Any) -> list[QueueItem]:
    return [QueueItem(*row) for row in rows]


def _unreviewed(session: Session, user: User, split: str | None, limit: int) -> list[QueueItem]:
    nobody = select(Image.id, Image.image_index, Image.split, literal(0).label("n_reviews")).where(
        ~exists().where(Review.image_id == Image.id)
    )
    if split:
        nobody = nobody.where(Image.split == split)
    items = _items(session.execute(nobody.order_by(Image.id).limit(limit)))
    if len(items) < limit:  # every image has a review: the least-reviewed ones next
        reviewed = (
            select(Image.id, Image.image_index, Image.split, ReviewedLabel.n_reviews)
            .join(ReviewedLabel, ReviewedLabel.image_id == Image.id)
            .where(ReviewedLabel.n_reviews > 0, _not_reviewed_by(user, Image.id))
        )
        if split:
            reviewed = reviewed.where(Image.split == split)
        ordered = reviewed.order_by(ReviewedLabel.n_reviews, Image.id).limit(limit - len(items))
        items += _items(session.execute(ordered))
    return items


def _random(session: Session, user: User, limit: int, seed: int | None) -> list[QueueItem]:
    key = literal_column(SHUFFLE_KEY_SQL)  # the exact indexed expression, so the index serves the order
    start = (random.Random(seed) if seed is not None else random).randrange(_SHUFFLE_KEYS)
    candidates = (
        select(Image.id, Image.image_index, Image.split, _n_reviews())
        .outerjoin(ReviewedLabel, ReviewedLabel.image_id == Image.id)
        .where(_not_reviewed_by(user, Image.id))
    )
    items = _items(session.execute(candidates.where(key >= start).order_by(key).limit(limit)))
    if len(items) < limit:  # wrap around to the start of the key space
        wrapped = candidates.where(key < start).order_by(key).limit(limit - len(items))
        items += _items(session.execute(wrapped))
    return items


def _nlp_positive(finding: str) -> Select[Any]:
    """Images whose NLP label has `finding` and that have no reviewed label (so the NLP label counts)."""
    column = finding_column(finding)
    # Literal 'nlp' and a bare boolean column: the partial index's own WHERE, so the planner uses it.
    return select(NlpLabel.image_id.label("image_id"), literal(0).label("n")).where(
        NlpLabel.source == literal_column(f"'{SOURCE_NLP}'"),
        literal_column(f"nlp_labels.{column}"),
        ~exists().where(ReviewedLabel.image_id == NlpLabel.image_id),
    )


def _reviewed_positive(finding: str) -> Select[Any]:
    """Images whose reviewed label has `finding`, with their number of reviews."""
    return select(ReviewedLabel.image_id, ReviewedLabel.n_reviews).where(
        getattr(ReviewedLabel, finding_column(finding))
    )


def _finding_candidates(user: User, finding: str) -> Select[Any]:
    """image_id, image_index, split, n_reviews of the images whose effective label has `finding`."""
    positive = union_all(_nlp_positive(finding), _reviewed_positive(finding)).subquery("positive")
    return (
        select(Image.id.label("image_id"), Image.image_index, Image.split, positive.c.n.label("n_reviews"))
        .join(positive, positive.c.image_id == Image.id)
        .where(_not_reviewed_by(user, Image.id))
    )


def _finding(session: Session, user: User, finding: str, limit: int) -> list[QueueItem]:
    """Fewest reviews first: the NLP positives (no review, in index order: no sort) and the reviewed
    positives (a few thousand at most, sorted), merged."""
    columns = [Image.id, Image.image_index, Image.split]
    nlp = _nlp_positive(finding).subquery("nlp_positive")
    unreviewed = (
        select(*columns, nlp.c.n)
        .join(nlp, nlp.c.image_id == Image.id)
        .where(_not_reviewed_by(user, Image.id))
        .order_by(nlp.c.image_id)
        .limit(limit)
    )
    reviewed = (
        select(*columns, ReviewedLabel.n_reviews)
        .join(ReviewedLabel, ReviewedLabel.image_id == Image.id)
        .where(getattr(ReviewedLabel, finding_column(finding)), _not_reviewed_by(user, Image.id))
        .order_by(ReviewedLabel.n_reviews, Image.id)
        .limit(limit)
    )
    rows = [*session.execute(unreviewed), *session.execute(reviewed)]
    rows.sort(key=lambda row: (row[3], row[0]))
    return _items(rows[:limit])


def _version_id(session: Session, model_version_id: int | None) -> int:
    if model_version_id is not None:
        return model_version_id
    version_id = session.scalar(select(ModelVersion.id).where(ModelVersion.is_active))
    if version_id is None:
        raise QueueError("No model version is active, so there are no predictions to disagree with.")
    return int(version_id)


def _disagreement(session: Session, user: User, version_id: int, limit: int) -> list[QueueItem]:
    """The stored scores from the index, merged with any predictions not scored yet."""
    columns = [Prediction.image_id, Image.image_index, Image.split, _n_reviews()]
    scored = (
        select(*columns, Prediction.disagreement, Prediction.disagreement_finding)
        .join(Image, Image.id == Prediction.image_id)
        .outerjoin(ReviewedLabel, ReviewedLabel.image_id == Prediction.image_id)
        .where(
            Prediction.model_version_id == version_id,
            Prediction.disagreement.is_not(None),
            _not_reviewed_by(user, Prediction.image_id),
        )
        .order_by(Prediction.disagreement.desc(), Prediction.image_id)
        .limit(limit)
    )
    rows = list(session.execute(scored))
    rows += _unscored(session, user, version_id, limit)
    rows.sort(key=lambda row: (-row[4], row[0]))
    return [
        QueueItem(image_id, name, split, int(n), score=float(score), top_finding=FINDINGS[int(top)])
        for image_id, name, split, n, score, top in rows[:limit]
    ]


def _unscored(session: Session, user: User, version_id: int, limit: int) -> list[Any]:
    """The best of the version's predictions whose score is not stored yet, scored here (usually none)."""
    gaps = (
        select(
            Prediction.image_id.label("image_id"),
            Image.image_index.label("image_index"),
            Image.split.label("split"),
            func.coalesce(ReviewedLabel.n_reviews, 0).label("n_reviews"),
            *disagreement_gaps(Prediction.probabilities),
        )
        .join(Image, Image.id == Prediction.image_id)
        .outerjoin(ReviewedLabel, ReviewedLabel.image_id == Prediction.image_id)
        .outerjoin(NLP, and_(NLP.image_id == Prediction.image_id, NLP.source == SOURCE_NLP))
        .where(
            Prediction.model_version_id == version_id,
            Prediction.disagreement.is_(None),
            _not_reviewed_by(user, Prediction.image_id),
        )
    )
    keep = ("image_id", "image_index", "split", "n_reviews")
    ranked = scored_gaps(session.get_bind().dialect.name, gaps_table(gaps), *keep).subquery("unscored")
    statement = select(ranked).order_by(ranked.c.score.desc(), ranked.c.image_id).limit(limit)
    return list(session.execute(statement))
