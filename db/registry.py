"""Model registry: registered checkpoints, the one active version, and stored predictions.

Exactly one version is active once any has been promoted: `promote` switches it in one transaction
(after locking the registry rows on PostgreSQL; SQLite write transactions are already serial), and
a partial unique index on `model_versions.is_active` makes a second active row impossible anyway.
Status: "registered" (never active), "active", "retired" (was active before).

The promotion history is a stack kept in `promoted_at`: promoting stamps the version (it goes on top);
rolling back takes the active version off (its `promoted_at` is cleared) and re-activates the one below
it, whose stamp is kept. So A -> B -> C, roll back -> B, roll back -> A, and a third roll back has
nowhere to go: it never toggles between two versions.

Every promotion and roll back also appends a `registry_events` row: the version made active, the one it
replaced, who (None: the command line, e.g. `python -m db init-admin` seeding the registry) and why;
`registry_events` / `latest_events` read them back with the usernames.

`promote_version` / `rollback_version` also rewrite the ACTIVE pointer (core.paths) that the Predict
page and the CLIs read, once the transaction has committed (a rolled-back promotion leaves it as it
was), and refuse a version whose folder is unusable; `register_existing_model` records a model folder
made elsewhere (`python -m db register DIR`); `seed_registry` registers the bundled demo model on an
empty registry (`python -m db init-admin`, which `make run` calls).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, defer

from core import paths
from core.inference.artifact import ArtifactError, read_artifact
from core.labels import FINDINGS, NUM_FINDINGS
from db import effective
from db.bulk import bulk_insert
from db.errors import DbUserError, NotFoundError
from db.models import ModelVersion, Prediction, RegistryEvent, User, utcnow


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


def list_versions(session: Session, *, curves: bool = True) -> list[ModelVersion]:
    """All versions, newest first. `curves=False` leaves `metrics` unread (each evaluated version's is
    ~1.2 MB of JSON): read `metrics_summary` instead, and `version_metrics` for the one whose curves are
    drawn."""
    query = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if not curves:
        query = query.options(defer(ModelVersion.metrics, raiseload=True))
    return list(session.scalars(query))


def version_metrics(session: Session, version_id: int) -> dict[str, Any] | None:
    """One version's full metrics, curves included (None: no such version or no metrics)."""
    return session.scalar(select(ModelVersion.metrics).where(ModelVersion.id == version_id))


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


def promote(
    session: Session, version: int | str, *, by: User | None = None, reason: str = ""
) -> ModelVersion:
    """Make `version` the active one (on top of the promotion history); the previous one is "retired".
    `by` (None: the command line) and `reason` are recorded with it."""
    target = get_version(session, version)
    _lock_registry(session)
    session.refresh(target)
    if target.is_active:
        return target
    return _activate(session, target, stamp=True, by=by, reason=reason)


def _lock_registry(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        # Serialise concurrent promotions: the second waits here and then sees the first one's result.
        session.execute(select(ModelVersion.id).order_by(ModelVersion.id).with_for_update())


def _activate(
    session: Session, target: ModelVersion, *, stamp: bool, by: User | None, reason: str
) -> ModelVersion:
    # populate_existing: objects cached in this session before the lock may hold old values.
    active = session.scalars(
        select(ModelVersion).where(ModelVersion.is_active).execution_options(populate_existing=True)
    ).all()
    for version in active:
        version.is_active = False
        version.status = "retired"
        if not stamp:  # rolling back: the version leaves the promotion history
            version.promoted_at = None
    # Flush the deactivation first: the partial unique index allows one active row at any moment.
    session.flush()
    target.is_active = True
    target.status = "active"
    now = utcnow()
    if stamp:
        target.promoted_at = now
    session.add(
        RegistryEvent(
            model_version_id=target.id,
            previous_version_id=active[0].id if active else None,
            action="promote" if stamp else "rollback",
            by_id=by.id if by is not None else None,
            at=now,
            reason=reason or "",
        )
    )
    session.flush()
    return target


def promotion_history(session: Session) -> list[ModelVersion]:
    """The versions a roll back walks through, oldest first; the last one is the active version."""
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.promoted_at.is_not(None))
            .order_by(ModelVersion.promoted_at, ModelVersion.id)
        )
    )


def rollback_target(session: Session) -> ModelVersion | None:
    """The version a roll back would re-activate: the one promoted before the active one, or None."""
    current = get_active_version(session)
    history = [v for v in promotion_history(session) if current is None or v.id != current.id]
    return history[-1] if history else None


def rollback(
    session: Session, to_version: int | str | None = None, *, by: User | None = None, reason: str = ""
) -> ModelVersion:
    """Go back one step in the promotion history (or promote `to_version`, which is a promotion)."""
    if to_version is not None:
        return promote(session, to_version, by=by, reason=reason)
    _lock_registry(session)
    target = rollback_target(session)
    if target is None:
        raise NotFoundError("No earlier active model version to roll back to.")
    session.refresh(target)
    return _activate(session, target, stamp=False, by=by, reason=reason)


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


@dataclass(frozen=True)
class RegistryEventView:
    """A promotion or roll back as pages show it."""

    version_id: int
    version: str
    previous: str | None  # the version it replaced as active
    action: str  # "promote" | "rollback"
    by: str | None  # the username; None: the command line
    at: dt.datetime
    reason: str

    @property
    def by_text(self) -> str:
        return self.by or "command line"


def _events_statement() -> Any:
    version, previous = aliased(ModelVersion), aliased(ModelVersion)
    event = RegistryEvent
    return (
        select(
            event.model_version_id,
            version.name,
            previous.name,
            event.action,
            User.username,
            event.at,
            event.reason,
        )
        .join(version, version.id == event.model_version_id)
        .outerjoin(previous, previous.id == event.previous_version_id)
        .outerjoin(User, User.id == event.by_id)
        .order_by(event.id.desc())
    )


def registry_events(
    session: Session, version_id: int | None = None, limit: int = 200
) -> list[RegistryEventView]:
    """Promotions and roll backs, newest first (of one version when `version_id`), in one query."""
    statement = _events_statement().limit(limit)
    if version_id is not None:
        statement = statement.where(RegistryEvent.model_version_id == version_id)
    return [RegistryEventView(*row) for row in session.execute(statement)]


def latest_events(session: Session, version_id: int) -> dict[str, RegistryEventView]:
    """{action: the version's latest event of that action} ("promote", "rollback"), in one query."""
    latest = (
        select(func.max(RegistryEvent.id))
        .where(RegistryEvent.model_version_id == version_id)
        .group_by(RegistryEvent.action)
    )
    rows = session.execute(_events_statement().where(RegistryEvent.id.in_(latest)))
    return {view.action: view for view in (RegistryEventView(*row) for row in rows)}


# ----------------------------------------------------------------------------------------------------
# The active model folder


class ModelUnavailableError(DbUserError, ValueError):
    """A version whose model folder is missing or unreadable (one sentence naming the version)."""


def usable_model_dir(version: ModelVersion) -> Path:
    """The version's folder, or ModelUnavailableError when it is missing or not a readable model."""
    try:
        read_artifact(version.path)
    except ArtifactError as exc:
        raise ModelUnavailableError(
            f"Model version {version.name!r} is unavailable: {exc} Restore its folder or promote another "
            "version."
        ) from exc
    return Path(version.path)


def _point_after_commit(session: Session, model_dir: Path) -> None:
    """Rewrite the ACTIVE pointer when (and only if) the session's transaction commits."""
    if not session.info.get("_pointer_listeners"):
        event.listen(session, "after_commit", _write_pending_pointer)
        event.listen(session, "after_soft_rollback", _drop_pending_pointer)
        session.info["_pointer_listeners"] = True
    session.info["_pending_pointer"] = model_dir


def _write_pending_pointer(session: Session) -> None:
    model_dir = session.info.pop("_pending_pointer", None)
    if model_dir is not None:
        paths.set_active_model_dir(model_dir)


def _drop_pending_pointer(session: Session, previous_transaction: Any) -> None:
    if not previous_transaction.nested:  # a savepoint's rollback does not undo the promotion
        session.info.pop("_pending_pointer", None)


def promote_version(
    session: Session, version: int | str, *, by: User | None = None, reason: str = ""
) -> ModelVersion:
    """Make `version` active in the registry and point the app's ACTIVE model at its folder; `by`
    (None: the command line) and `reason` are recorded in the registry events."""
    target = get_version(session, version)
    try:
        read_artifact(target.path)
    except ArtifactError as exc:
        raise DbUserError(
            f"{target.name!r} cannot be promoted: its model folder is unreadable ({exc})."
        ) from exc
    promoted = promote(session, target.id, by=by, reason=reason)
    _point_after_commit(session, Path(promoted.path))
    return promoted


def rollback_version(
    session: Session, to_version: int | str | None = None, *, by: User | None = None, reason: str = ""
) -> ModelVersion:
    """Go back one step in the promotion history (or promote `to_version`), pointer included; `by` and
    `reason` are recorded as with promote_version."""
    if to_version is not None:
        return promote_version(session, to_version, by=by, reason=reason)
    target = rollback_target(session)
    if target is not None:
        try:
            read_artifact(target.path)
        except ArtifactError as exc:
            raise DbUserError(
                f"Cannot roll back to {target.name!r}: its model folder is unreadable ({exc})."
            ) from exc
    back = rollback(session, by=by, reason=reason)
    _point_after_commit(session, Path(back.path))
    return back


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
        promote(session, version.id, reason="Registered and activated on first start.")
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
    replacing earlier ones of the same version and image, and score their disagreement with the labels
    (the review queue's "model disagrees most" order reads it). Returns the number stored."""
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
    stored = bulk_insert(session, Prediction.__table__, ["image_id", "probabilities"], rows, constants)
    effective.refresh_disagreement(session, model_version_id, ids)
    return stored


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
