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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.labels import FINDINGS, NO_FINDING
from db.audit import append_label_event, lock_audit_chain
from db.errors import DbUserError, InvalidLabelError, NotAllowedError, NotFoundError, StaleReviewError
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
    findings_in,
    findings_of,
    mask_of,
    utcnow,
)

LabelSource = Literal["adjudication", "consensus", "nlp", "none"]
QueueStrategy = Literal["disagreement", "unreviewed", "random", "finding", "split"]
QUEUE_STRATEGIES: tuple[str, ...] = ("disagreement", "unreviewed", "random", "finding", "split")
# Why a finding is Uncertain or differs from the report: optional codes a reader attaches to a finding.
REASON_CODES: dict[str, str] = {
    "not_visible": "Not visible on this image",
    "report_only": "Report-only finding",
    "poor_quality": "Poor image quality",
    "wrong_view": "Wrong view or body part",
    "borderline": "Subtle or borderline",
}


class QueueError(DbUserError, ValueError):
    """A review queue that cannot be built as asked (one human sentence)."""


@dataclass(frozen=True)
class EffectiveLabel:
    findings: dict[str, bool]  # all 14, FINDINGS order
    no_finding: bool
    exclude: bool
    source: LabelSource
    n_reviews: int
    disputed: tuple[str, ...] = ()  # findings (and "exclude") the readers differ on, unadjudicated
    uncertain: tuple[str, ...] = ()  # findings whose effective state is Uncertain

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


def validate_label(
    findings: Mapping[str, bool], no_finding: bool, exclude: bool, *, uncertain: Iterable[str] = ()
) -> dict[str, bool]:
    """All 14 findings as booleans (missing ones False); raises InvalidLabelError with a sentence.

    `uncertain`: the findings the reader marked Uncertain (neither Present nor Absent).
    """
    uncertain = set(uncertain)
    unknown = sorted((set(findings) | uncertain) - set(FINDINGS))
    if unknown:
        raise InvalidLabelError(f"Unknown finding(s): {', '.join(unknown)}.")
    clean = {finding: bool(findings.get(finding, False)) for finding in FINDINGS}
    positives = [finding for finding, positive in clean.items() if positive]
    both = [finding for finding in positives if finding in uncertain]
    if both:
        raise InvalidLabelError(f"A finding is either Present or Uncertain, not both ({', '.join(both)}).")
    if no_finding and (positives or uncertain):
        named = positives + sorted(uncertain, key=FINDINGS.index)
        raise InvalidLabelError(
            f"“No Finding” cannot be combined with findings ({', '.join(named)}); untick one or the other."
        )
    if not no_finding and not positives and not uncertain and not exclude:
        raise InvalidLabelError("Tick at least one finding or “No Finding”, or exclude the image.")
    return clean


def validate_reasons(reasons: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]] | None:
    """{finding: [reason code, ...]} with known findings and codes only (None when empty)."""
    clean: dict[str, list[str]] = {}
    for finding, codes in (reasons or {}).items():
        if finding not in FINDINGS:
            raise InvalidLabelError(f"Unknown finding {finding!r} in the reasons.")
        codes = sorted(set(codes))
        unknown = [code for code in codes if code not in REASON_CODES]
        if unknown:
            raise InvalidLabelError(f"Unknown reason code(s): {', '.join(unknown)}.")
        if codes:
            clean[finding] = codes
    return {finding: clean[finding] for finding in FINDINGS if finding in clean} or None


def label_state(row: Review | Adjudication) -> dict[str, Any]:
    """The audit-trail snapshot of a review or adjudication."""
    return {
        "findings": {finding: bool(value) for finding, value in findings_of(row).items()},
        "uncertain": list(findings_in(row.uncertain_mask)),
        "reasons": dict(row.reasons or {}),
        "no_finding": bool(row.no_finding),
        "exclude": bool(row.exclude),
        "comment": row.comment,
        "version": row.version,
    }


def finding_states(row: Review | Adjudication) -> dict[str, str]:
    """{finding: "present" | "absent" | "uncertain"} of a review or adjudication, in FINDINGS order."""
    uncertain = set(findings_in(row.uncertain_mask))
    return {
        finding: "uncertain" if finding in uncertain else "present" if value else "absent"
        for finding, value in findings_of(row).items()
    }


def consensus(votes: Sequence[tuple[Mapping[str, bool], bool]]) -> tuple[dict[str, bool], bool]:
    """(findings, exclude) of reviewers' votes [(findings, exclude), ...]; rules in the module doc.

    These are the values `reviewed_labels` holds; where the votes differ the image is disputed
    (db.adjudication.dispute_mask), which the pages, exports and the trainer's labels say.
    """
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
    _refresh_effective(session, image.id)
    _refresh_study(session, image.id, reader_id=user.id)
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
    adjudication = _save_label(
        session, Adjudication, "adjudication", image, admin, findings, no_finding, exclude, comment,
        expected_version, reason, uncertain=uncertain, reasons=reasons,
    )  # fmt: skip
    _refresh_effective(session, image.id)
    _refresh_study(session, image.id)
    return adjudication


def _refresh_effective(session: Session, image_id: int) -> None:
    """The image's derived label rows (db.effective), in the transaction of the save."""
    from db import effective  # late: db.effective builds on this module's rules

    effective.refresh_image(session, image_id)


def _refresh_study(session: Session, image_id: int, reader_id: int | None = None) -> None:
    """The image's read status (disputes) and the reader's assignment, in the transaction of the save."""
    from db import adjudication, assignments  # late: both build on this module's rules

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
    """image id -> EffectiveLabel, for the given images (None: every image, by id), in one query."""
    from db import effective  # late: db.effective builds on this module's rules

    return effective.effective_labels(session, image_ids)


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
    from db import review_queue as queues  # late: db.review_queue builds on this module's types

    _check_queue_arguments(strategy, finding, split)
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
    from db import review_queue as queues

    _check_queue_arguments(strategy, finding, split)
    return queues.queue_size(
        session, user, strategy, finding=finding, split=split, model_version_id=model_version_id
    )


def _check_queue_arguments(strategy: str, finding: str | None, split: str | None) -> None:
    if strategy not in QUEUE_STRATEGIES:
        raise QueueError(f"Unknown queue {strategy!r}; choose one of {', '.join(QUEUE_STRATEGIES)}.")
    if strategy == "finding" and finding not in FINDINGS:
        raise QueueError("The finding queue needs one of the 14 findings to be chosen.")
    if strategy == "split" and not split:
        raise QueueError("The split queue needs a split (train_val or test) to be chosen.")
