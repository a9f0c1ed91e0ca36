"""Model registry: registered checkpoints, the one active version, and stored predictions.

Exactly one version is active once any has been promoted: `promote` switches it in one transaction
(after locking the registry rows on PostgreSQL; SQLite write transactions are already serial), and
a partial unique index on `model_versions.is_active` makes a second active row impossible anyway.
Status: "registered" (never active), "active", "retired" (was active before).

`promote_version` / `rollback_version` also rewrite the ACTIVE pointer (core.paths) that the Predict
page and the CLIs read; `register_existing_model` records a model folder made elsewhere (`python -m db
register DIR`); `seed_registry` registers the bundled demo model on an empty registry (`python -m db
init-admin`, which `make run` calls).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import paths
from core.artifact import ArtifactError, read_artifact
from core.labels import FINDINGS, NUM_FINDINGS
from db.bulk import bulk_insert
from db.errors import DbUserError, NotFoundError
from db.models import ModelVersion, Prediction, User, utcnow


class ModelNameTakenError(DbUserError, ValueError):
    """A model version name that is already registered."""


def register_model_version(
    session: Session,
    name: str,
    path: str,
    *,
    parent_id: int | None = None,
    label_snapshot: dict[str, Any] | None = None,
    hyperparams: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    notes: str = "",
    created_by: User | None = None,
) -> ModelVersion:
    """Record a checkpoint as a new (not yet active) version. Raises ModelNameTakenError."""
    name = name.strip()
    if not name:
        raise ModelNameTakenError("A model version needs a name.")
    if session.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None:
        raise ModelNameTakenError(f"A model version named {name!r} already exists.")
    if parent_id is not None and session.get(ModelVersion, parent_id) is None:
        raise NotFoundError(f"There is no model version with id {parent_id} to derive from.")
    version = ModelVersion(
        name=name,
        path=str(path),
        parent_id=parent_id,
        status="registered",
        is_active=False,
        label_snapshot=label_snapshot,
        hyperparams=hyperparams,
        metrics=metrics,
        notes=notes,
        created_by_id=created_by.id if created_by is not None else None,
    )
    try:
        with session.begin_nested():
            session.add(version)
    except IntegrityError as exc:
        raise ModelNameTakenError(f"A model version named {name!r} already exists.") from exc
    return version


def list_versions(session: Session) -> list[ModelVersion]:
    """All versions, newest first."""
    return list(
        session.scalars(select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc()))
    )


def get_version(session: Session, version: int | str) -> ModelVersion:
    """A version by id or name; raises NotFoundError."""
    if isinstance(version, int):
        found = session.get(ModelVersion, version)
    else:
        found = session.scalars(select(ModelVersion).where(ModelVersion.name == version)).one_or_none()
    if found is None:
        raise NotFoundError(f"There is no model version {version!r}.")
    return found


def get_active_version(session: Session) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(ModelVersion.is_active)).one_or_none()


def promote(session: Session, version: int | str) -> ModelVersion:
    """Make `version` the active one; the previously active one becomes "retired"."""
    target = get_version(session, version)
    if session.get_bind().dialect.name == "postgresql":
        # Serialise concurrent promotions: the second waits here and then sees the first one's result.
        session.execute(select(ModelVersion.id).order_by(ModelVersion.id).with_for_update())
    session.refresh(target)
    if target.is_active:
        return target
    # populate_existing: objects cached in this session before the lock may hold old values.
    active = session.scalars(
        select(ModelVersion).where(ModelVersion.is_active).execution_options(populate_existing=True)
    ).all()
    for version in active:
        version.is_active = False
        version.status = "retired"
    # Flush the deactivation first: the partial unique index allows one active row at any moment.
    session.flush()
    target.is_active = True
    target.status = "active"
    target.promoted_at = utcnow()
    session.flush()
    return target


def rollback(session: Session, to_version: int | str | None = None) -> ModelVersion:
    """Promote an earlier version: `to_version`, or by default the one active before the current one."""
    if to_version is not None:
        return promote(session, to_version)
    current = get_active_version(session)
    previous = session.scalars(
        select(ModelVersion)
        .where(ModelVersion.status == "retired", ModelVersion.promoted_at.is_not(None))
        .where(ModelVersion.id != (current.id if current else -1))
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .limit(1)
    ).one_or_none()
    if previous is None:
        raise NotFoundError("No earlier active model version to roll back to.")
    return promote(session, previous.id)


def retire(session: Session, version: int | str) -> ModelVersion:
    """Mark a version that is not active as retired (no longer offered for promotion by default)."""
    target = get_version(session, version)
    if target.is_active:
        raise DbUserError(f"{target.name!r} is the active model; promote another version before retiring it.")
    target.status = "retired"
    session.flush()
    return target


def version_names(session: Session) -> dict[int, str]:
    """id -> name of every version (one query)."""
    return dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())


def name_taken(session: Session, name: str) -> bool:
    return session.scalar(select(ModelVersion.id).where(ModelVersion.name == name)) is not None


# ----------------------------------------------------------------------------------------------------
# The active model folder


def promote_version(session: Session, version: int | str) -> ModelVersion:
    """Make `version` active in the registry and point the app's ACTIVE model at its folder."""
    target = get_version(session, version)
    try:
        read_artifact(target.path)
    except ArtifactError as exc:
        raise DbUserError(
            f"{target.name!r} cannot be promoted: its model folder is unreadable ({exc})."
        ) from exc
    promoted = promote(session, target.id)
    session.flush()
    paths.set_active_model_dir(Path(promoted.path))
    return promoted


def rollback_version(session: Session, to_version: int | str | None = None) -> ModelVersion:
    """Promote an earlier version (by default the one active before the current one), pointer included."""
    target = rollback(session, to_version)
    paths.set_active_model_dir(Path(target.path))
    return target


def register_existing_model(
    session: Session, model_dir: Path, *, notes: str = "", created_by: User | None = None
) -> ModelVersion:
    """Register a model folder made outside the app (the demo model, a CLI run, an imported checkpoint).
    Raises ArtifactError (not a model folder) or ModelNameTakenError."""
    artifact = read_artifact(model_dir)
    card = artifact.card
    provenance = card.get("provenance") or {}
    label_source = provenance.get("label_source")
    snapshot = {
        "source": "nlp" if label_source in (None, "nlp") or "NLP" in str(label_source) else "table",
        "description": str(label_source or "as recorded in the model card"),
    }
    card_metrics = {
        key: value for key, value in (card.get("metrics") or {}).items() if isinstance(value, dict)
    }
    return register_model_version(
        session,
        artifact.name,
        str(Path(model_dir).resolve()),
        label_snapshot=snapshot,
        hyperparams=provenance.get("hyperparameters"),
        metrics={"card": card_metrics},
        notes=notes or (card.get("description") or "")[:2000],
        created_by=created_by,
    )


def seed_registry(session: Session) -> ModelVersion | None:
    """On an empty registry, register the model the app uses now (normally the bundled demo) as active.

    Returns the version registered, or None when the registry was not empty or there is no model.
    """
    if session.scalar(select(func.count()).select_from(ModelVersion)):
        return None
    candidates = [path for path in (paths.active_model_dir(), paths.BUNDLED_MODEL_DIR) if path is not None]
    for path in candidates:
        try:
            version = register_existing_model(session, Path(path), notes="Registered on first start.")
        except (ArtifactError, OSError):
            continue
        except ModelNameTakenError:
            return None  # another process seeded it at the same moment
        promote(session, version.id)
        session.flush()
        return get_version(session, version.id)
    return None


# ----------------------------------------------------------------------------------------------------
# Predictions


def save_predictions(
    session: Session,
    model_version_id: int,
    probabilities: Mapping[int, Sequence[float] | Mapping[str, float]],
) -> int:
    """Store a version's probabilities per image id (14 in FINDINGS order, or a {finding: p} dict),
    replacing earlier ones of the same version and image. Returns the number stored."""
    rows = []
    for image_id, values in probabilities.items():
        if isinstance(values, Mapping):
            values = [values[finding] for finding in FINDINGS]
        values = [float(p) for p in values]
        if len(values) != NUM_FINDINGS:
            raise ValueError(
                f"Expected {NUM_FINDINGS} probabilities for image {image_id}, got {len(values)}."
            )
        rows.append((int(image_id), values))
    ids = [image_id for image_id, _ in rows]
    for start in range(0, len(ids), 2_000):
        session.execute(
            delete(Prediction).where(
                Prediction.model_version_id == model_version_id,
                Prediction.image_id.in_(ids[start : start + 2_000]),
            )
        )
    constants = {"model_version_id": model_version_id, "created_at": utcnow()}
    return bulk_insert(session, Prediction.__table__, ["image_id", "probabilities"], rows, constants)


def predictions_for(
    session: Session, model_version_id: int, image_ids: Sequence[int] | None = None
) -> dict[int, list[float]]:
    """image id -> 14 probabilities of a version."""
    statement = select(Prediction.image_id, Prediction.probabilities).where(
        Prediction.model_version_id == model_version_id
    )
    if image_ids is None:
        return {image_id: list(p) for image_id, p in session.execute(statement)}
    found: dict[int, list[float]] = {}
    ids = list(image_ids)
    for start in range(0, len(ids), 2_000):
        rows = session.execute(statement.where(Prediction.image_id.in_(ids[start : start + 2_000])))
        found.update({image_id: list(p) for image_id, p in rows})
    return found
