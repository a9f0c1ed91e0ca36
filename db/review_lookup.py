"""Finding an image by what a person has at hand, and the reader's last saved review.

An image is named by its number as the pages give it ("556", "#556", "image #556"), its NIH name
("00000001_000.png", the .png may be left out) or an upload's file name (exact, else ignoring case).
Each look-up is one or two indexed queries.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Image, Review

_NUMBER = re.compile(r"^(?:image\s*)?#?\s*(\d+)$", re.IGNORECASE)


def find_image_id(session: Session, text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    number = _NUMBER.match(text)
    if number and session.get(Image, int(number.group(1))) is not None:
        return int(number.group(1))
    names = [text] if text.lower().endswith(".png") else [text, text + ".png"]
    found = session.scalar(select(Image.id).where(Image.image_index.in_(names)).limit(1))
    if found is None:
        exact = select(Image.id).where(Image.original_filename == text)
        found = session.scalar(exact.order_by(Image.id).limit(1))
    if found is None:  # only uploads have an original file name: a scan of those
        loose = select(Image.id).where(
            Image.original_filename.is_not(None), func.lower(Image.original_filename) == text.lower()
        )
        found = session.scalar(loose.order_by(Image.id).limit(1))
    return None if found is None else int(found)


def last_reviewed_image(session: Session, user_id: int) -> int | None:
    """The image of the reader's most recently saved review."""
    statement = select(Review.image_id).where(Review.user_id == user_id)
    found = session.scalar(statement.order_by(Review.updated_at.desc(), Review.id.desc()).limit(1))
    return None if found is None else int(found)
