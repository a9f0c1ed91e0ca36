"""Clinician reviews, admin adjudications, the effective label of an image, and the review queue.

Every function takes a Session and leaves committing to the caller (`with session_scope() as s:`),
so a save and its audit event always commit, or roll back, together.

Effective label of an image (what exports and training use), first that applies:
1. "adjudication": an admin's adjudication, as it is.
2. "consensus": the image has reviews. Exclude when strictly more than half of the reviewers excluded
   it. Each finding is positive when strictly more than half of the reviewers who did *not* exclude the
   image marked it; a tie is therefore negative (1 of 2 readers is not a majority; the disagreement
   shows up in the quality statistics and the image can be adjudicated).
3. "nlp": the dataset's NLP-mined labels.
4. "none": no label at all (e.g. an upload nobody has reviewed yet); all findings False.
`no_finding` is True when no finding is positive (and the source is not "none").

Optimistic locking: a review (or adjudication) carries `version`, 1 on creation and +1 per saved
change. A save passes the version the user started from (`expected_version`, None for "there was no
review yet"); the UPDATE only matches that version (compare-and-set), so a concurrent change makes the
save fail with StaleReviewError instead of silently overwriting it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.labels import FINDINGS, NO_FINDING
from db.errors import DbUserError, InvalidLabelError, NotAllowedError, NotFoundError, StaleReviewError
from db.models import (
    FINDING_COLUMNS,
    SOURCE_NLP,
    Adjudication,
    Image,
    LabelEvent,
    ModelVersion,
    NlpLabel,
    Prediction,
    Review,
    User,
    finding_column,
    findings_of,
    utcnow,
)

LabelSource = Literal["adjudication", "consensus", "nlp", "none"]
QueueStrategy = Literal["disagreement", "unreviewed", "random", "finding", "split"]
QUEUE_STRATEGIES: tuple[str, ...] = ("disagreement", "unreviewed", "random", "finding", "split")
_IN_CHUNK = 2_000  # ids per IN (...) list


class QueueError(DbUserError, ValueError):
    """A review queue that cannot be built as asked (one human sentence)."""


@dataclass(frozen=True)
class EffectiveLabel:
    findings: dict[str, bool]  # all 14, FINDINGS order
    no_finding: bool
    exclude: bool
    source: LabelSource
    n_reviews: int

    @property
    def positives(self) -> list[str]:
        return [finding for finding, positive in self.findings.items() if positive]

    @property
    def finding_labels(self) -> str:
        """Data_Entry spelling: "A|B" or "No Finding"."""
        return "|".join(self.positives) or NO_FINDING


@dataclass(frozen=True)
class QueueItem:
    image_id: int
    image_index: str | None
    split: str | None
    n_reviews: int  # reviews by anyone
    score: float | None = None  # "disagreement": max over findings of |probability - effective label|
    top_finding: str | None = None  # "disagreement": the finding where that maximum is


# ----------------------------------------------------------------------------------------------------
# Label values


def validate_label(findings: Mapping[str, bool], no_finding: bool, exclude: bool) -> dict[str, bool]:
    """All 14 findings as booleans (missing ones False); raises InvalidLabelError with a sentence."""
    unknown = sorted(set(findings) - set(FINDINGS))
    if unknown:
        raise InvalidLabelError(f"Unknown finding(s): {', '.join(unknown)}.")
    clean = {finding: bool(findings.get(finding, False)) for finding in FINDINGS}
    positives = [finding for finding, positive in clean.items() if positive]
    if no_finding and positives:
        raise InvalidLabelError(
            f"“No Finding” cannot be combined with findings ({', '.join(positives)}); "
            "untick one or the other."
        )
    if not no_finding and not positives and not exclude:
        raise InvalidLabelError("Tick at least one finding or “No Finding”, or exclude the image.")
    return clean


def label_state(row: Review | Adjudication) -> dict[str, Any]:
    """The audit-trail snapshot of a review or adjudication."""
    return {
        "findings": {finding: bool(value) for finding, value in findings_of(row).items()},
        "no_finding": bool(row.no_finding),
        "exclude": bool(row.exclude),
        "comment": row.comment,
        "version": row.version,
    }


def consensus(votes: Sequence[tuple[Mapping[str, bool], bool]]) -> tuple[dict[str, bool], bool]:
    """(findings, exclude) of reviewers' votes [(findings, exclude), ...]; rules in the module doc."""
    excluded = sum(1 for _, exclude in votes if exclude)
    exclude = 2 * excluded > len(votes)
    readers = [findings for findings, exclude in votes if not exclude]
    findings = {
        finding: 2 * sum(1 for votes_of in readers if votes_of.get(finding, False)) > len(readers)
        for finding in FINDINGS
    }
    return findings, exclude


# ----------------------------------------------------------------------------------------------------
# Saving reviews and adjudications


def save_review(
    session: Session,
    image_id: int,
    user: User,
    findings: Mapping[str, bool],
    no_finding: bool,
    exclude: bool,
    comment: str,
    expected_version: int | None,
    *,
    reason: str = "",
) -> Review:
    """Create or update `user`'s review of the image, with one audit event in the same transaction.

    `expected_version`: the version of this user's review when they opened it (None: they had none).
    Raises StaleReviewError when the stored review is no longer that version (nothing is written),
    InvalidLabelError for an impossible label, NotAllowedError for a deactivated user. Saving values
    identical to the stored ones changes nothing and writes no event. `reason` goes into the event.
    """
    if not user.active:
        raise NotAllowedError(f"The account {user.username!r} is deactivated and cannot save reviews.")
    image = _image(session, image_id)
    return _save_label(
        session,
        Review,
        "review",
        image,
        user,
        findings,
        no_finding,
        exclude,
        comment,
        expected_version,
        reason,
    )


def adjudicate(
    session: Session,
    image_id: int,
    admin: User,
    findings: Mapping[str, bool],
    no_finding: bool,
    exclude: bool,
    comment: str,
    expected_version: int | None,
    *,
    reason: str = "",
) -> Adjudication:
    """Set the final (adjudicated) label of an image; admins only. Same rules as save_review.

    There is one adjudication per image, whoever made it; `expected_version` refers to it.
    """
    if not (admin.active and admin.is_admin):
        raise NotAllowedError("Only an active admin can adjudicate labels.")
    image = _image(session, image_id)
    return _save_label(
        session, Adjudication, "adjudication", image, admin, findings, no_finding, exclude, comment,
        expected_version, reason,
    )  # fmt: skip


def _image(session: Session, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise NotFoundError(f"There is no image with id {image_id}.")
    return image


def _save_label(
    session: Session,
    model: type[Review] | type[Adjudication],
    kind: str,
    image: Image,
    user: User,
    findings: Mapping[str, bool],
    no_finding: bool,
    exclude: bool,
    comment: str,
    expected_version: int | None,
    reason: str,
) -> Any:
    clean = validate_label(findings, no_finding, exclude)
    values: dict[str, Any] = {column: clean[f] for f, column in zip(FINDINGS, FINDING_COLUMNS, strict=True)}
    values.update(no_finding=bool(no_finding), exclude=bool(exclude), comment=(comment or "").strip())
    owner = [model.image_id == image.id]
    if model is Review:
        # One review per (image, reviewer); one adjudication per image, whoever made it.
        owner.append(Review.user_id == user.id)
    # populate_existing: compare with the stored row, not with a copy cached earlier in this session.
    current = session.scalars(
        select(model).where(*owner).execution_options(populate_existing=True)
    ).one_or_none()

    def stale(stored_version: int | None) -> StaleReviewError:
        return StaleReviewError(image.label, expected_version, stored_version, what=kind)

    if current is None:
        if expected_version is not None:
            raise stale(None)
        row = model(image_id=image.id, user_id=user.id, version=1, **values)
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:
            stored_version = session.scalar(select(model.version).where(*owner))
            if stored_version is None:
                raise  # not a concurrent creation (e.g. a user id that does not exist)
            raise stale(stored_version) from None  # created by another session since our read
        before = None
    else:
        if expected_version != current.version:
            raise stale(current.version)
        before = label_state(current)
        if all(getattr(current, key) == value for key, value in values.items()):
            return current  # nothing changed: no new version, no event
        result = session.execute(
            update(model)
            .where(model.id == current.id, model.version == expected_version)
            .values(**values, user_id=user.id, version=expected_version + 1, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # changed since our read: the compare-and-set found another version
            raise stale(session.scalar(select(model.version).where(model.id == current.id)))
        session.refresh(current)
        row = current
    session.add(
        LabelEvent(
            image_id=image.id,
            user_id=user.id,
            kind=kind,
            version=row.version,
            before=before,
            after=label_state(row),
            comment=(reason or "").strip(),
        )
    )
    session.flush()
    return row


# ----------------------------------------------------------------------------------------------------
# Reading labels


def get_image(session: Session, image_id: int) -> Image | None:
    return session.get(Image, image_id)


def find_image(session: Session, image_index: str) -> Image | None:
    """The dataset image with this NIH file name (e.g. "00000001_000.png")."""
    return session.scalars(select(Image).where(Image.image_index == image_index)).one_or_none()


def get_review(session: Session, image_id: int, user: User) -> Review | None:
    return session.scalars(
        select(Review).where(Review.image_id == image_id, Review.user_id == user.id)
    ).one_or_none()


def reviews_for_image(session: Session, image_id: int) -> list[Review]:
    return list(session.scalars(select(Review).where(Review.image_id == image_id).order_by(Review.id)))


def get_adjudication(session: Session, image_id: int) -> Adjudication | None:
    return session.scalars(select(Adjudication).where(Adjudication.image_id == image_id)).one_or_none()


def get_source_labels(session: Session, image_id: int, source: str = SOURCE_NLP) -> NlpLabel | None:
    """The image's labels from a non-reviewer source ("nlp", "google2019"); see db.models.NlpLabel."""
    return session.scalars(
        select(NlpLabel).where(NlpLabel.image_id == image_id, NlpLabel.source == source)
    ).one_or_none()


def label_history(session: Session, image_id: int) -> list[LabelEvent]:
    """The image's audit events, oldest first."""
    return list(
        session.scalars(select(LabelEvent).where(LabelEvent.image_id == image_id).order_by(LabelEvent.id))
    )


def get_effective_label(session: Session, image_id: int) -> EffectiveLabel:
    """The label that counts for the image now (rules in the module doc)."""
    _image(session, image_id)
    return effective_labels(session, [image_id])[image_id]


def effective_labels(session: Session, image_ids: Iterable[int] | None = None) -> dict[int, EffectiveLabel]:
    """image id -> EffectiveLabel, for the given images (None: every image), in a few queries."""
    ids = None if image_ids is None else list(dict.fromkeys(image_ids))
    finding_cols = [getattr(Adjudication, c) for c in FINDING_COLUMNS]
    adjudicated: dict[int, EffectiveLabel] = {}
    for image_id, exclude, *values in _rows(
        session, [Adjudication.image_id, Adjudication.exclude, *finding_cols], ids
    ):
        findings = dict(zip(FINDINGS, map(bool, values), strict=True))
        adjudicated[image_id] = EffectiveLabel(findings, not any(values), bool(exclude), "adjudication", 0)

    votes: dict[int, list[tuple[dict[str, bool], bool]]] = defaultdict(list)
    review_cols = [Review.image_id, Review.exclude, *(getattr(Review, c) for c in FINDING_COLUMNS)]
    for image_id, exclude, *values in _rows(session, review_cols, ids):
        votes[image_id].append((dict(zip(FINDINGS, map(bool, values), strict=True)), bool(exclude)))

    nlp: dict[int, dict[str, bool]] = {}
    nlp_cols = [NlpLabel.image_id, *(getattr(NlpLabel, c) for c in FINDING_COLUMNS)]
    for image_id, *values in _rows(session, nlp_cols, ids, NlpLabel.source == SOURCE_NLP):
        nlp[image_id] = dict(zip(FINDINGS, map(bool, values), strict=True))

    if ids is None:
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
    labels: dict[int, EffectiveLabel] = {}
    for image_id in ids:
        n_reviews = len(votes.get(image_id, ()))
        if image_id in adjudicated:
            label = adjudicated[image_id]
            labels[image_id] = EffectiveLabel(
                label.findings, label.no_finding, label.exclude, label.source, n_reviews
            )
        elif n_reviews:
            findings, exclude = consensus(votes[image_id])
            labels[image_id] = EffectiveLabel(
                findings, not any(findings.values()), exclude, "consensus", n_reviews
            )
        elif image_id in nlp:
            findings = nlp[image_id]
            labels[image_id] = EffectiveLabel(findings, not any(findings.values()), False, "nlp", 0)
        else:
            labels[image_id] = EffectiveLabel(dict.fromkeys(FINDINGS, False), False, False, "none", 0)
    return labels


def _rows(session: Session, columns: Sequence[Any], ids: list[int] | None, *conditions: Any) -> Iterator[Any]:
    """Rows of `columns` (the first is an image_id column), for `ids` in chunks, or all when None."""
    statement = select(*columns).where(*conditions)
    if ids is None:
        yield from session.execute(statement)
        return
    for start in range(0, len(ids), _IN_CHUNK):
        yield from session.execute(statement.where(columns[0].in_(ids[start : start + _IN_CHUNK])))


# ----------------------------------------------------------------------------------------------------
# Review queue


def review_queue(
    session: Session,
    user: User,
    strategy: QueueStrategy = "unreviewed",
    *,
    finding: str | None = None,
    split: str | None = None,
    model_version_id: int | None = None,
    limit: int = 50,
    seed: int | None = None,
) -> list[QueueItem]:
    """The next images for `user` to review. Images the user has already reviewed are never in it.

    - "unreviewed": images nobody has reviewed first, then those with the fewest reviews (then by id).
    - "disagreement": images with a stored prediction of the model version (`model_version_id`, default
      the active one), by decreasing max over findings of |probability - effective label|.
    - "random": a random order, reproducible with `seed`.
    - "finding": images whose effective label has `finding` positive, fewest reviews first.
    - "split": images of the official `split` ("train_val" / "test"), fewest reviews first.
    """
    _check_queue_arguments(strategy, finding, split)
    if strategy in ("unreviewed", "split"):
        statement = _unreviewed_by(user, split if strategy == "split" else None)
        rows = session.execute(statement.order_by("n_reviews", Image.id).limit(limit))
        return [QueueItem(*row) for row in rows]
    return _ranked_queue(session, user, strategy, finding, model_version_id, seed)[:limit]


def remaining_count(
    session: Session,
    user: User,
    strategy: QueueStrategy = "unreviewed",
    *,
    finding: str | None = None,
    split: str | None = None,
    model_version_id: int | None = None,
) -> int:
    """How many images the same queue holds in all (not only the first `limit`)."""
    _check_queue_arguments(strategy, finding, split)
    if strategy in ("unreviewed", "split", "random"):
        statement = _unreviewed_by(user, split if strategy == "split" else None)
        return int(session.scalar(select(func.count()).select_from(statement.subquery())) or 0)
    return len(_ranked_queue(session, user, strategy, finding, model_version_id, None))


def _check_queue_arguments(strategy: str, finding: str | None, split: str | None) -> None:
    if strategy not in QUEUE_STRATEGIES:
        raise QueueError(f"Unknown queue {strategy!r}; choose one of {', '.join(QUEUE_STRATEGIES)}.")
    if strategy == "finding" and finding not in FINDINGS:
        raise QueueError("The finding queue needs one of the 14 findings to be chosen.")
    if strategy == "split" and not split:
        raise QueueError("The split queue needs a split (train_val or test) to be chosen.")


def _unreviewed_by(user: User, split: str | None) -> Select[Any]:
    """Images `user` has not reviewed, with their review count (columns in QueueItem order)."""
    counts = select(Review.image_id, func.count().label("n")).group_by(Review.image_id).subquery()
    reviewed_by_user = exists().where(Review.image_id == Image.id, Review.user_id == user.id)
    statement = (
        select(Image.id, Image.image_index, Image.split, func.coalesce(counts.c.n, 0).label("n_reviews"))
        .outerjoin(counts, counts.c.image_id == Image.id)
        .where(~reviewed_by_user)
    )
    if split:
        statement = statement.where(Image.split == split)
    return statement


def _ranked_queue(
    session: Session,
    user: User,
    strategy: str,
    finding: str | None,
    model_version_id: int | None,
    seed: int | None,
) -> list[QueueItem]:
    """The whole queue of the strategies ordered in Python ("random", "finding", "disagreement")."""
    candidates = _unreviewed_by(user, None)
    if strategy == "random":
        items = [QueueItem(*row) for row in session.execute(candidates.order_by(Image.id))]
        random.Random(seed).shuffle(items)
        return items
    if strategy == "finding":
        assert finding is not None
        column = finding_column(finding)
        # SQL pre-filter: positive somewhere (NLP, a review or the adjudication); the effective label decides.
        maybe_positive = or_(
            exists().where(
                NlpLabel.image_id == Image.id, NlpLabel.source == SOURCE_NLP, getattr(NlpLabel, column)
            ),
            exists().where(Review.image_id == Image.id, getattr(Review, column)),
            exists().where(Adjudication.image_id == Image.id, getattr(Adjudication, column)),
        )
        rows = session.execute(candidates.where(maybe_positive)).all()
        labels = effective_labels(session, [row[0] for row in rows])
        items = [QueueItem(*row) for row in rows if labels[row[0]].findings[finding]]
        return sorted(items, key=lambda item: (item.n_reviews, item.image_id))

    version_id = model_version_id
    if version_id is None:
        version_id = session.scalar(select(ModelVersion.id).where(ModelVersion.is_active))
        if version_id is None:
            raise QueueError("No model version is active, so there are no predictions to disagree with.")
    subquery = candidates.subquery()
    rows = session.execute(
        select(subquery, Prediction.probabilities)
        .join(Prediction, Prediction.image_id == subquery.c.id)
        .where(Prediction.model_version_id == version_id)
    ).all()
    labels = effective_labels(session, [row[0] for row in rows])
    items = []
    for *columns, probabilities in rows:
        label = labels[columns[0]]
        gaps = [
            abs(float(p) - float(label.findings[f])) for f, p in zip(FINDINGS, probabilities, strict=True)
        ]
        worst = max(range(len(gaps)), key=gaps.__getitem__)
        items.append(QueueItem(*columns, score=gaps[worst], top_finding=FINDINGS[worst]))
    return sorted(items, key=lambda item: (-(item.score or 0.0), item.image_id))
