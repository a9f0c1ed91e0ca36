"""Which model the Predict page serves, and saying so loudly when it is not the registry's active version.

The registry (the database) says which version is active; the ACTIVE pointer file (core.paths) is what
the CLIs read and is rewritten on every promotion. This page serves the registry's active version (or
the server's CHEXNET_MODEL override). When that version's folder is missing or unreadable it serves the
bundled demo model instead and says so on the page, naming both; it never swaps models silently.
Anonymous visitors are never shown server paths; admins see the folder and the error.

The thresholds are applied here, once: when the served registry version has operating points set by an
admin (db.operating_points), the predictor served carries them in `thresholds`, so its predictions'
`positive`, the page's threshold marks and tables, and the Review page (webapp.model_loader serves this
same model) all use them; `ServedModel.operating_points` says which findings they are and who set them.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from core import paths, settings
from core.errors import UserError
from core.inference.artifact import CARD_FILE, ArtifactError, ModelArtifact
from core.inference.predictor import Predictor
from db.operating_points import OperatingPoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    predictor: Predictor | None
    artifact: ModelArtifact | None
    active_name: str | None = None  # the registry's active version, when the registry could be read
    unavailable: str | None = None  # the active version cannot be served: what is served instead
    problem: str | None = None  # nothing can be served
    detail: str | None = None  # for admins only: folders and the error
    version_id: int | None = None  # the registry version served (None: an override, a fallback, the pointer)
    # The admin-set operating points in the predictor's thresholds, {finding: point}; empty: the card's.
    operating_points: dict[str, OperatingPoint] = field(default_factory=dict)


@st.cache_resource(show_spinner="Loading the model…", max_entries=3)
def _load(model_dir: str, card_mtime: float) -> Predictor:
    # card_mtime is part of the key: re-saving or promoting a model reloads it without an app restart.
    return Predictor.from_path(model_dir)


@st.cache_resource(show_spinner=False, max_entries=8)
def _with_thresholds(
    model_dir: str, card_mtime: float, thresholds: tuple[tuple[str, float], ...]
) -> Predictor:
    # A shallow copy: it shares the loaded network (one model in memory) and Predictor.predict reads
    # `self.thresholds`. Cached, so it stays the same object while the points do (per-upload caches
    # are keyed on it).
    served = copy.copy(_load(model_dir, card_mtime))
    served.thresholds = {**served.thresholds, **dict(thresholds)}
    return served


def _try_load(model_dir: Path, thresholds: dict[str, float] | None = None) -> Predictor:
    """The predictor of a folder (with `thresholds` replacing the card's for those findings); ArtifactError
    or OSError when it is missing or not a model."""
    mtime = (Path(model_dir) / CARD_FILE).stat().st_mtime
    if thresholds:
        return _with_thresholds(str(model_dir), mtime, tuple(thresholds.items()))
    return _load(str(model_dir), mtime)


@dataclass(frozen=True)
class _ActiveVersion:
    id: int
    name: str
    path: Path
    operating_points: dict[str, OperatingPoint]


def _registry_active() -> _ActiveVersion | None:
    """The registry's active version and its admin-set operating points; None when none is active or
    the database cannot be read (the pointer file is then the only record of the promotion)."""
    from db.operating_points import current_operating_points
    from db.registry import get_active_version
    from webapp.database import session

    try:
        with session(read_only=True) as db_session:
            active = get_active_version(db_session)
            if active is None:
                return None
            points = current_operating_points(db_session, active.id)
            return _ActiveVersion(active.id, active.name, Path(active.path), points)
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
        name, target = active.name, active.path
    try:
        predictor = _try_load(target)
    except (ArtifactError, OSError) as exc:
        return _fallback(name, target, exc)
    if active is None:
        return ServedModel(predictor, predictor.artifact)
    _agree_pointer(target)
    # Only this version's points, and only for findings the model has (never for a fallback model).
    points = {f: point for f, point in active.operating_points.items() if f in predictor.labels}
    if points:
        predictor = _try_load(target, {f: point.threshold for f, point in points.items()})
    return ServedModel(
        predictor, predictor.artifact, active_name=name, version_id=active.id, operating_points=points
    )


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
