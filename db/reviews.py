"""Saving clinician reviews and admin adjudications, reading labels, and the review queue.

The label types and rules (validation, consensus, EffectiveLabel, QueueItem) live in db.label_rules,
below this module and every module a save refreshes (db.effective, db.adjudication, db.assignments).

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

Readers who differ (on any finding, Present / Absent / Uncertain, or on excluding the image; a 1-1 tie
included) make the image *disputed*: db.adjudication records it in `read_status` in the transaction of
the save, the Disputed queue lists it until an admin adjudicates, and exports and the trainer's labels
mark it. The consensus values above still exist for such an image but are never shown as its answer.

Per finding a reader says Present (the boolean column), Absent, or Uncertain (`uncertain_mask`, the
column then False), with optional reason codes (REASON_CODES). A review also records how it was made:
`blinded`, `study_mode` (db.study) and `read_seconds`.

Optimistic locking: a review (or adjudication) carries `version`, 1 on creation and +1 per saved
change. A save passes the version the user started from (`expected_version`, None for "there was no
review yet"); the UPDATE only matches that version (compare-and-set), so a concurrent change makes the
save fail with StaleReviewError instead of silently overwriting it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.labels import FINDINGS
from db import adjudication, assignments, effective
from db import review_queue as queues
from db.audit import append_label_event, lock_audit_chain
from db.errors import NotAllowedError, NotFoundError, StaleReviewError
from db.label_rules import (
    QueueItem,
    QueueStrategy,
    check_queue_arguments,
    label_state,
    validate_label,
    validate_reasons,
)
from db.models import (
    FINDING_COLUMNS,
    SOURCE_NLP,
    Adjudication,
    Box,
    Image,
    LabelEvent,
    NlpLabel,
    Prediction,
    Review,
    User,
    mask_of,
    utcnow,
)

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
    uncertain: Iterable[str] = (),
    reasons: Mapping[str, Iterable[str]] | None = None,
    blinded: bool = False,
    study_mode: str = "",
    read_seconds: float | None = None,
) -> Review:
    """Create or update `user`'s review of the image, with one audit event in the same transaction.

    `expected_version`: the version of this user's review when they opened it (None: they had none).
    Raises StaleReviewError when the stored review is no longer that version (nothing is written),
    InvalidLabelError for an impossible label, NotAllowedError for a deactivated user. Saving values
    identical to the stored ones changes nothing and writes no event. `reason` goes into the event.
    `uncertain`/`reasons`: Uncertain findings and reason codes; `blinded`, `study_mode`,
    `read_seconds`: how the read was made (stored with the review when its label changes). The
    reader's assignment of the image, if any, is marked done.
    """
    if not user.active:
        raise NotAllowedError(f"The account {user.username!r} is deactivated and cannot save reviews.")
    image = _image(session, image_id)
    read = {"blinded": bool(blinded), "study_mode": study_mode, "read_seconds": read_seconds}
    review = _save_label(
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
        uncertain=uncertain,
        reasons=reasons,
        read=read,
    )
    _refresh_derived(session, image.id, reader_id=user.id)
    return review


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
    uncertain: Iterable[str] = (),
    reasons: Mapping[str, Iterable[str]] | None = None,
) -> Adjudication:
    """Set the final (adjudicated) label of an image; admins only. Same rules as save_review.

    There is one adjudication per image, whoever made it; `expected_version` refers to it. `reason`
    (why this decision) goes into the audit event.
    """
    if not (admin.active and admin.is_admin):
        raise NotAllowedError("Only an active admin can adjudicate labels.")
    image = _image(session, image_id)
    row = _save_label(
        session, Adjudication, "adjudication", image, admin, findings, no_finding, exclude, comment,
        expected_version, reason, uncertain=uncertain, reasons=reasons,
    )  # fmt: skip
    _refresh_derived(session, image.id)
    return row


def _refresh_derived(session: Session, image_id: int, reader_id: int | None = None) -> None:
    """What a saved label changes, in the transaction of the save: the image's reviewed label and
    prediction disagreement (db.effective), its read status (disputes), and the reader's assignment."""
    effective.refresh_image(session, image_id)
    adjudication.refresh_status(session, image_id)
    if reader_id is not None:
        assignments.mark_done(session, image_id, reader_id)


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
    *,
    uncertain: Iterable[str] = (),
    reasons: Mapping[str, Iterable[str]] | None = None,
    read: Mapping[str, Any] | None = None,
) -> Any:
    uncertain = tuple(uncertain)
    clean = validate_label(findings, no_finding, exclude, uncertain=uncertain)
    clean_reasons = validate_reasons(reasons)
    lock_audit_chain(session)  # first, before any row lock: saves on PostgreSQL queue in one order
    values: dict[str, Any] = {column: clean[f] for f, column in zip(FINDINGS, FINDING_COLUMNS, strict=True)}
    values.update(no_finding=bool(no_finding), exclude=bool(exclude), comment=(comment or "").strip())
    values.update(uncertain_mask=mask_of(uncertain), reasons=clean_reasons)
    label_values = dict(values)  # what counts as a change; how the read was made is stored along
    values.update(read or {})
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
        if all(getattr(current, key) == value for key, value in label_values.items()):
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
    append_label_event(
        session,
        image_id=image.id,
        user_id=user.id,
        kind=kind,
        version=row.version,
        before=before,
        after=label_state(row),
        comment=reason,
    )
    return row


# ----------------------------------------------------------------------------------------------------
# Reading labels


def get_image(session: Session, image_id: int) -> Image | None:
    return session.get(Image, image_id)


def account_by_id(session: Session, user_id: int) -> User:
    """The account a logged-in page acts for; NotFoundError (a sentence) when it no longer exists."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError("Your account no longer exists; please log in again.")
    return user


def count_images(session: Session) -> int:
    """Images in the database, dataset and uploads alike."""
    return int(session.scalar(select(func.count()).select_from(Image)) or 0)


def image_splits(session: Session) -> list[str]:
    """The dataset splits images are in ("test", "train_val", ...), sorted."""
    return sorted(session.scalars(select(Image.split).where(Image.split.is_not(None)).distinct()))


def image_boxes(session: Session, image_id: int) -> list[tuple[str, float, float, float, float]]:
    """The image's NIH boxes as (finding, x, y, w, h), in original (1024 px) image space."""
    rows = session.execute(
        select(Box.finding, Box.x, Box.y, Box.w, Box.h).where(Box.image_id == image_id).order_by(Box.id)
    )
    return [(finding, float(x), float(y), float(w), float(h)) for finding, x, y, w, h in rows]


def has_predictions(session: Session, model_version_id: int) -> bool:
    """Whether any prediction of this model version is stored (what the disagreement queue ranks by)."""
    return bool(session.scalar(select(exists().where(Prediction.model_version_id == model_version_id))))


def find_image(session: Session, image_index: str) -> Image | None:
    """The dataset image with this NIH file name (e.g. "00000001_000.png")."""
    return session.scalars(select(Image).where(Image.image_index == image_index)).one_or_none()


def get_review(session: Session, image_id: int, user: User) -> Review | None:
    return session.scalars(
        select(Review).where(Review.image_id == image_id, Review.user_id == user.id)
    ).one_or_none()


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
    - "random": a shuffled order, reproducible with `seed`.
    - "finding": images whose effective label has `finding` positive, fewest reviews first.
    - "split": images of the official `split` ("train_val" / "test"), fewest reviews first.
    A page of any queue is a few indexed statements, whatever the size of the dataset (db.review_queue).
    """

    check_queue_arguments(strategy, finding, split)
    return queues.queue_items(
        session, user, strategy, finding=finding, split=split, model_version_id=model_version_id,
        limit=limit, seed=seed,
    )  # fmt: skip


def remaining_count(
    session: Session,
    user: User,
    strategy: QueueStrategy = "unreviewed",
    *,
    finding: str | None = None,
    split: str | None = None,
    model_version_id: int | None = None,
) -> int:
    """How many images the same queue holds in all (not only the first `limit`): one COUNT."""

    check_queue_arguments(strategy, finding, split)
    return queues.queue_size(
        session, user, strategy, finding=finding, split=split, model_version_id=model_version_id
    )
