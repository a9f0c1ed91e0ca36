"""What the predict and screen jobs work on: a model version (the one asked for, else the active one)
and the imported images that have a file."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import registry
from db.models import Image, ModelVersion
from jobs.params import JobParamsError


def version_or_active(session: Session, version_id: int | None) -> ModelVersion:
    """The version `version_id`, or the active one when it is None; JobParamsError when none is active."""
    version = registry.get_version(session, version_id) if version_id is not None else None
    version = version or registry.get_active_version(session)
    if version is None:
        raise JobParamsError("No model version is active; promote one first.")
    return version


def images_with_files(session: Session) -> list[tuple[int, str]]:
    """(image id, file path) of every imported image with a file, in id order."""
    statement = select(Image.id, Image.path).where(Image.path.is_not(None)).order_by(Image.id)
    return [(image_id, path) for image_id, path in session.execute(statement)]
