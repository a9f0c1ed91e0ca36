"""The prior study of an image: the same patient's image with the next lower follow-up number.

ChestX-ray14 names every image `{Patient ID:08d}_{Follow-up #:03d}.png`, so one patient's images are one
contiguous range of the unique `images.image_index` index, in follow-up order: finding the prior and
counting the patient's images are two range reads of that index (no scan of 112k rows, no migration).
Uploads and images with other names have no prior.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from db.models import Image

NIH_NAME = re.compile(r"^(\d{8})_(\d{3})\.png$")


@dataclass(frozen=True)
class PriorStudy:
    image_id: int
    image_index: str
    path: str | None
    follow_up: int  # the prior's follow-up number
    current_follow_up: int  # the follow-up number of the image it is the prior of
    n_images: int  # how many images of the patient the database holds


def follow_up_number(image_index: str | None) -> int | None:
    """The follow-up number in an NIH file name ("00000001_002.png" -> 2), else None."""
    match = NIH_NAME.match(image_index or "")
    return None if match is None else int(match.group(2))


def prior_study(session: Session, image_id: int) -> PriorStudy | None:
    """The patient's image just before this one (highest lower follow-up number), or None."""
    image = session.get(Image, image_id)
    if image is None or image.source != "dataset":
        return None
    match = NIH_NAME.match(image.image_index or "")
    if match is None:
        return None
    patient = match.group(1)
    # "_" is 0x5F and "`" 0x60: [patient_, patient`) holds exactly this patient's names.
    same_patient = and_(Image.image_index >= f"{patient}_", Image.image_index < f"{patient}`")
    prior = session.execute(
        select(Image.id, Image.image_index, Image.path)
        .where(same_patient, Image.image_index < image.image_index)
        .order_by(Image.image_index.desc())
        .limit(1)
    ).first()
    if prior is None:
        return None
    count = session.scalar(select(func.count(Image.id)).where(same_patient)) or 0
    return PriorStudy(
        image_id=int(prior.id),
        image_index=prior.image_index,
        path=prior.path,
        follow_up=int(follow_up_number(prior.image_index) or 0),
        current_follow_up=int(match.group(2)),
        n_images=int(count),
    )
