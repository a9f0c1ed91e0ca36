"""Which model the Predict page serves, and saying so loudly when it is not the registry's active version.

The registry (the database) says which version is active; the ACTIVE pointer file (core.paths) is what
the CLIs read and is rewritten on every promotion. This page serves the registry's active version (or
the server's CHEXNET_MODEL override). When that version's folder is missing or unreadable it serves the
bundled demo model instead and says so on the page, naming both; it never swaps models silently.
Anonymous visitors are never shown server paths; admins see the folder and the error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import paths, settings
from core.artifact import CARD_FILE, ArtifactError, ModelArtifact
from core.errors import UserError
from core.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    predictor: Predictor | None
    artifact: ModelArtifact | None
    active_name: str | None = None  # the registry's active version, when the registry could be read
    unavailable: str | None = None  # the active version cannot be served: what is served instead
    problem: str | None = None  # nothing can be served
    detail: str | None = None  # for admins only: folders and the error


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def _load(model_dir: str, card_mtime: float) -> Predictor:
    # card_mtime is part of the key: re-saving or promoting a model reloads it without an app restart.
    return Predictor.from_path(model_dir)


def _try_load(model_dir: Path) -> Predictor:
    """The predictor of a folder; ArtifactError or OSError when it is missing or not a model."""
    mtime = (Path(model_dir) / CARD_FILE).stat().st_mtime
    return _load(str(model_dir), mtime)


def _registry_active() -> tuple[str, Path] | None:
    """(name, folder) of the registry's active version; None when none is active or the database cannot
    be read (the pointer file is then the only record of the promotion)."""
    from db.registry import get_active_version
    from webapp.database import session

    try:
        with session(read_only=True) as db_session:
            active = get_active_version(db_session)
            return (active.name, Path(active.path)) if active is not None else None
    except (SQLAlchemyError, UserError) as exc:
        log.warning("Predict: the registry cannot be read (%s); using the ACTIVE pointer.", exc)
        return None


def _agree_pointer(model_dir: Path) -> None:
    """Point ACTIVE at the registry's usable active version if it names another folder (e.g. a promotion
    whose pointer write was lost), so the CLIs and this page serve the same model."""
    try:
        if paths.promoted_model_dir() != model_dir.resolve():
            paths.set_active_model_dir(model_dir)
    except OSError as exc:
        log.warning("The ACTIVE pointer could not be rewritten: %s", exc)


def served_model() -> ServedModel:
    """What this page predicts with, and why when it is not the active version."""
    override = settings.model_override()
    if override is not None:
        try:
            predictor = _try_load(override)
        except (ArtifactError, OSError) as exc:
            problem = (
                "The model chosen by the server's settings cannot be loaded, so nothing can be predicted."
            )
            return ServedModel(None, None, problem=problem, detail=f"CHEXNET_MODEL={override}: {exc}")
        return ServedModel(predictor, predictor.artifact)
    active = _registry_active()
    if active is None:
        target, name = paths.active_model_dir(), None
        if target is None:
            problem = (
                "No model is configured yet, so nothing can be predicted. An admin can train or import one."
            )
            return ServedModel(None, None, problem=problem)
    else:
        name, target = active
    try:
        predictor = _try_load(target)
    except (ArtifactError, OSError) as exc:
        return _fallback(name, target, exc)
    if active is not None:
        _agree_pointer(target)
    return ServedModel(predictor, predictor.artifact, active_name=name)


def _fallback(name: str | None, target: Path, exc: Exception) -> ServedModel:
    """The active model is unusable: serve the bundled demo model, loudly, or nothing."""
    who = f"The active model version '{name}'" if name else "The promoted model"
    detail = f"Its folder {target}: {exc}"
    demo = paths.BUNDLED_MODEL_DIR
    if Path(target).resolve() != demo.resolve() and paths.is_model_folder(demo):
        try:
            predictor = _try_load(demo)
        except (ArtifactError, OSError):
            predictor = None
        if predictor is not None:
            text = (
                f"{who} is unavailable: its model folder is missing or unreadable. This page serves the "
                f"bundled demo model '{predictor.name}' instead until an admin restores the folder or "
                "promotes another version."
            )
            return ServedModel(
                predictor, predictor.artifact, active_name=name, unavailable=text, detail=detail
            )
    text = (
        f"{who} is unavailable: its model folder is missing or unreadable, so nothing can be predicted "
        "until an admin restores it or promotes another version."
    )
    return ServedModel(None, None, active_name=name, unavailable=text, problem=text, detail=detail)
