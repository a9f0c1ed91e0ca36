"""Reading assignments: which images each reader is asked to read, double reads to different readers.

An admin picks how many images to read (from images nobody has reviewed or been assigned yet, in a
seeded shuffled order, optionally of one split), the readers, and the share of images that get a
second read. First reads go to the readers in turn; a second read always goes to another reader than
the image's first (the next one in turn), so each double-read image has two independent readers.

A reader's open assignments are their "My assignments" queue (one indexed query with LIMIT); saving a
review of an assigned image marks the assignment done (db.reviews.save_review calls `mark_done`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import case, exists, func, literal_column, select, update
from sqlalchemy.orm import Session

from db.bulk import bulk_insert
from db.errors import NotAllowedError
from db.label_rules import QueueItem
from db.models import SHUFFLE_KEY_SQL, Assignment, Image, Review, User, utcnow
from db.study import StudyError

MAX_IMAGES_PER_BATCH = 50_000
_SHUFFLE_KEYS = 2**32


@dataclass(frozen=True)
class AssignmentBatch:
    n_images: int
    n_double: int  # images with a second read
    reads_per_reader: dict[str, int]  # username -> reads assigned in this batch


def _candidates(session: Session, n_images: int, split: str | None, seed: int) -> list[int]:
    """Up to n_images ids nobody has reviewed or been assigned, in a seeded shuffled order."""
    key = literal_column(SHUFFLE_KEY_SQL)  # the indexed expression (db.models): the order is an index walk
    start = random.Random(seed).randrange(_SHUFFLE_KEYS)
    free = select(Image.id).where(
        ~exists().where(Assignment.image_id == Image.id), ~exists().where(Review.image_id == Image.id)
    )
    if split:
        free = free.where(Image.split == split)
    ids = list(session.scalars(free.where(key >= start).order_by(key).limit(n_images)))
    if len(ids) < n_images:
        ids += session.scalars(free.where(key < start).order_by(key).limit(n_images - len(ids)))
    return [int(i) for i in ids]


def create_assignments(
    session: Session,
    admin: User,
    reader_ids: Sequence[int],
    n_images: int,
    double_read_percent: float,
    *,
    split: str | None = None,
    seed: int = 0,
) -> AssignmentBatch:
    """Assign `n_images` unread images to the readers, `double_read_percent` % of them twice."""
    if not (admin.active and admin.is_admin):
        raise NotAllowedError("Only an active admin can assign images.")
    readers = list(session.scalars(select(User).where(User.id.in_(list(reader_ids))).order_by(User.id)))
    readers = [reader for reader in readers if reader.active]
    if not readers:
        raise StudyError("Choose at least one active reader to assign images to.")
    if not 1 <= n_images <= MAX_IMAGES_PER_BATCH:
        raise StudyError(f"Assign between 1 and {MAX_IMAGES_PER_BATCH:,} images at a time, not {n_images:,}.")
    if not 0 <= double_read_percent <= 100:
        raise StudyError(f"The double-read share must be between 0 and 100 %, not {double_read_percent:g} %.")
    n_double = round(n_images * double_read_percent / 100)
    if n_double and len(readers) < 2:
        raise StudyError("A second read needs a second reader: choose at least two readers.")
    ids = _candidates(session, n_images, split, seed)
    if not ids:
        raise StudyError("Every image is already reviewed or assigned; there is nothing left to assign.")
    n_double = min(n_double, len(ids))
    now = utcnow()
    rows, counts = [], dict.fromkeys((reader.username for reader in readers), 0)
    order = random.Random(seed).sample(range(len(readers)), len(readers))  # who starts the rotation
    for position, image_id in enumerate(ids):
        first = readers[order[position % len(readers)]]
        rows.append((image_id, first.id, 1, now, admin.id))
        counts[first.username] += 1
        if position < n_double:  # the next reader in turn: never the first one
            second = readers[order[(position + 1) % len(readers)]]
            rows.append((image_id, second.id, 2, now, admin.id))
            counts[second.username] += 1
    columns = ("image_id", "user_id", "read_number", "created_at", "created_by_id")
    bulk_insert(session, Assignment.__table__, columns, rows)
    return AssignmentBatch(len(ids), n_double, counts)


def mark_done(session: Session, image_id: int, user_id: int) -> None:
    """The reader's assignment of the image, if open, is done now."""
    session.execute(
        update(Assignment)
        .where(Assignment.image_id == image_id, Assignment.user_id == user_id, Assignment.done_at.is_(None))
        .values(done_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def my_assignments(
    session: Session, user_id: int, *, limit: int = 50, skip: Sequence[int] = ()
) -> list[QueueItem]:
    """The reader's open assignments, oldest first (n_reviews is 0: a blinded reader is not told)."""
    statement = (
        select(Assignment.image_id, Image.image_index, Image.split)
        .join(Image, Image.id == Assignment.image_id)
        .where(Assignment.user_id == user_id, Assignment.done_at.is_(None))
        .order_by(Assignment.id)
        .limit(limit + len(skip))
    )
    items = [QueueItem(int(i), index, split, 0) for i, index, split in session.execute(statement)]
    skipped = set(skip)
    return [item for item in items if item.image_id not in skipped][:limit]


def progress(session: Session, user_id: int) -> tuple[int, int]:
    """(done, assigned) of the reader's assignments: one query on the reader's index."""
    done, total = session.execute(
        select(func.count(Assignment.done_at), func.count()).where(Assignment.user_id == user_id)
    ).one()
    return int(done or 0), int(total or 0)


@dataclass(frozen=True)
class ReaderWorkload:
    username: str
    assigned: int
    done: int
    second_reads: int


def workload(session: Session) -> list[ReaderWorkload]:
    """Per reader with assignments: assigned, done, second reads (one GROUP BY)."""
    statement = (
        select(
            User.username,
            func.count(),
            func.count(Assignment.done_at),
            func.coalesce(func.sum(case((Assignment.read_number > 1, 1), else_=0)), 0),
        )
        .join(User, User.id == Assignment.user_id)
        .group_by(User.username)
        .order_by(User.username)
    )
    return [ReaderWorkload(name, int(a), int(d), int(s)) for name, a, d, s in session.execute(statement)]
