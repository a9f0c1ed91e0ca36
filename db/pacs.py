"""PACS connections and the instances imported from them (issue 18); the tables are in db.pacs_models.

- Connections: `create_connection`, `update_connection`, `delete_connection` (only one nothing was
  imported through), `list_connections` (plain values without the secret: a secret is never shown
  back, only whether one is set), `connection_row` and `connection_secret` (for the job that needs it;
  it is stored sealed under the pseudonym key, never in the clear).
- The pseudonym key (`pseudonym_key`): 32 random bytes made once in CHEXNET_HOME/pacs-pseudonym-key
  (mode 0600). The keyed-hash pseudonyms and the sealed write-back links depend on it: losing it means
  a re-import gets new pseudonyms and earlier imports cannot be written back.
- Instances: what an import has already looked at (`seen_sop_pseudonyms`), `record_imported` (with the
  images row, via db.importer.store_upload), `record_skipped`, and `write_back_candidates`.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.imaging.deidentify import seal, unseal
from core.paths import chexnet_home
from db.errors import DbUserError
from db.importer import store_upload
from db.models import Image, User, utcnow
from db.pacs_models import PACS_AUTH_KINDS, PacsConnection, PacsInstance, PacsScreenedStudy, PacsScreening

KEY_FILE = "pacs-pseudonym-key"
# Pseudonymous patients get ids above the NIH dataset's (1..30,805), within a 32-bit integer.
PATIENT_ID_BASE = 1_000_000_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")


class PacsConnectionError(DbUserError):
    """A connection cannot be saved or found (one sentence)."""


@dataclass(frozen=True)
class ConnectionSummary:
    """A connection as the pages show it: never the secret."""

    id: int
    name: str
    base_url: str
    auth: str
    username: str
    has_secret: bool
    write_back: bool


def pseudonym_key(home: Path | None = None) -> bytes:
    path = (home or chexnet_home()) / KEY_FILE
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:  # the first process makes it; every later one (web app, workers) reads it
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    if len(text) < 64:
        raise PacsConnectionError(
            f"The pseudonym key {path} is empty or too short; restore it from a backup."
        )
    return bytes.fromhex(text)


def create_connection(
    session: Session,
    name: str,
    base_url: str,
    *,
    auth: str = "none",
    username: str = "",
    secret: str = "",
    write_back: bool = False,
    created_by: User | None = None,
) -> ConnectionSummary:
    """Save a connection (write-back off unless asked). The address is checked by jobs.dicomweb."""
    name = name.strip()
    if not _NAME.match(name):
        raise PacsConnectionError(
            "A connection name is letters, digits, spaces, '.', '_' or '-' (at most 100)."
        )
    if auth not in PACS_AUTH_KINDS:
        raise PacsConnectionError(f"The authentication must be one of {', '.join(PACS_AUTH_KINDS)}.")
    row = PacsConnection(
        name=name,
        base_url=base_url.strip(),
        auth=auth,
        username=username.strip() if auth == "basic" else "",
        secret=_sealed_secret(secret) if auth != "none" and secret else "",
        write_back=write_back,
        created_by_id=created_by.id if created_by is not None else None,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise PacsConnectionError(f"A PACS connection named {name!r} already exists.") from None
    return _summary(row)


def _sealed_secret(secret: str) -> str:
    """The password or token as stored: sealed under the pseudonym key with a fresh nonce, so the
    database alone (a backup, a dump) does not give the PACS credentials away."""
    nonce = secrets.token_hex(16)
    return f"{nonce}:{seal(pseudonym_key(), nonce, secret)}"


def connection_secret(row: PacsConnection) -> str:
    """The connection's password or token, for the job or page that talks to the PACS (never shown)."""
    if not row.secret:
        return ""
    nonce, _, sealed = row.secret.partition(":")
    try:
        return unseal(pseudonym_key(), nonce, sealed)
    except ValueError:
        raise PacsConnectionError(
            f"The secret of the PACS connection {row.name!r} cannot be opened with this installation's "
            "pseudonym key; enter it again."
        ) from None


def _summary(row: PacsConnection) -> ConnectionSummary:
    return ConnectionSummary(
        row.id, row.name, row.base_url, row.auth, row.username, bool(row.secret), bool(row.write_back)
    )


def list_connections(session: Session) -> list[ConnectionSummary]:
    return [_summary(row) for row in session.scalars(select(PacsConnection).order_by(PacsConnection.name))]


def connection_row(session: Session, connection_id: int) -> PacsConnection:
    row = session.get(PacsConnection, connection_id)
    if row is None:
        raise PacsConnectionError(f"There is no PACS connection #{connection_id}.")
    return row


def update_connection(
    session: Session,
    connection_id: int,
    base_url: str,
    *,
    auth: str,
    username: str = "",
    secret: str | None = None,
) -> ConnectionSummary:
    """Change where and how a connection reaches its PACS (a moved server, rotated credentials).

    `secret` None or "" keeps the stored one, unless the authentication changed kind (a password is not
    a token): then a new one is needed. The name, and with it the imports' link, stays."""
    row = connection_row(session, connection_id)
    if auth not in PACS_AUTH_KINDS:
        raise PacsConnectionError(f"The authentication must be one of {', '.join(PACS_AUTH_KINDS)}.")
    if auth != "none" and not secret and (auth != row.auth or not row.secret):
        raise PacsConnectionError("Enter the password or token for this authentication.")
    row.base_url = base_url.strip()
    row.username = username.strip() if auth == "basic" else ""
    if auth == "none":
        row.secret = ""
    elif secret:
        row.secret = _sealed_secret(secret)
    row.auth = auth
    return _summary(row)


def delete_connection(session: Session, connection_id: int) -> str:
    """Remove a connection that nothing was imported through; returns its name. One with imports is
    refused: its images' links back to the PACS (for write-back and re-import) would be lost."""
    row = connection_row(session, connection_id)
    looked_at = session.scalar(
        select(func.count()).select_from(PacsInstance).where(PacsInstance.connection_id == connection_id)
    )
    if looked_at:
        raise PacsConnectionError(
            f"The connection {row.name!r} has imported from its PACS ({looked_at:,} instances looked at), "
            "so it is kept; change its address or credentials instead."
        )
    for table in (PacsScreenedStudy, PacsScreening):
        session.execute(delete(table).where(table.connection_id == connection_id))
    name = row.name
    session.delete(row)
    return name


def set_write_back(session: Session, connection_id: int, enabled: bool) -> None:
    connection_row(session, connection_id).write_back = enabled


def seen_sop_pseudonyms(session: Session, connection_id: int) -> set[str]:
    """The instances an earlier import of this connection imported or skipped: a resumed import skips them."""
    query = select(PacsInstance.sop_pseudonym).where(PacsInstance.connection_id == connection_id)
    return set(session.scalars(query))


def pseudonymous_patient_number(patient_pseudonym: str) -> int:
    return PATIENT_ID_BASE + int(patient_pseudonym[:7], 16)


def record_imported(
    session: Session,
    connection_id: int,
    data: bytes,
    *,
    sop_pseudonym: str,
    study_pseudonym: str,
    patient_pseudonym: str,
    source_link: str,
    view: str,
    patient_sex: str,
    patient_age: str,
    job_id: int | None = None,
) -> Image:
    """Store a de-identified instance as an image (an upload under CHEXNET_HOME/uploads, named by its
    pseudonym) and its pacs_instances row, in the caller's transaction."""
    image = store_upload(session, data, f"pacs-{sop_pseudonym}.dcm", None)
    image.view = view
    image.patient_id = pseudonymous_patient_number(patient_pseudonym)
    session.flush()
    session.add(
        PacsInstance(
            connection_id=connection_id,
            sop_pseudonym=sop_pseudonym,
            study_pseudonym=study_pseudonym,
            patient_pseudonym=patient_pseudonym,
            status="imported",
            image_id=image.id,
            source_link=source_link,
            view=view,
            patient_sex=patient_sex or None,
            patient_age=patient_age or None,
            job_id=job_id,
        )
    )
    session.flush()
    return image


def record_skipped(
    session: Session,
    connection_id: int,
    *,
    sop_pseudonym: str,
    study_pseudonym: str,
    reason: str,
    job_id: int | None = None,
) -> None:
    session.add(
        PacsInstance(
            connection_id=connection_id,
            sop_pseudonym=sop_pseudonym,
            study_pseudonym=study_pseudonym,
            status="skipped",
            reason=reason,
            job_id=job_id,
        )
    )
    session.flush()


@dataclass(frozen=True)
class WriteBackItem:
    instance_id: int
    image_id: int
    path: str
    sop_pseudonym: str
    source_link: str


def write_back_candidates(
    session: Session, connection_id: int, *, again: bool = False
) -> list[WriteBackItem]:
    """Imported instances of a connection whose results were not written back yet (`again`: all)."""
    query = (
        select(PacsInstance.id, Image.id, Image.path, PacsInstance.sop_pseudonym, PacsInstance.source_link)
        .join(Image, Image.id == PacsInstance.image_id)
        .where(PacsInstance.connection_id == connection_id, PacsInstance.status == "imported")
        .order_by(PacsInstance.id)
    )
    if not again:
        query = query.where(PacsInstance.results_written_at.is_(None))
    return [WriteBackItem(*row) for row in session.execute(query) if row[2] and row[4]]


def mark_written(session: Session, instance_id: int, at: dt.datetime | None = None) -> None:
    row = session.get(PacsInstance, instance_id)
    if row is not None:
        row.results_written_at = at or utcnow()


def mark_label_written(session: Session, instance_id: int, sop_uid: str) -> None:
    """The label SR `sop_uid` is the one the PACS holds now for this instance."""
    row = session.get(PacsInstance, instance_id)
    if row is not None:
        row.label_sr_uid = sop_uid


def skipped_instances(session: Session, connection_id: int) -> list[tuple[str, str]]:
    """(pseudonymous SOP UID, why) of every instance an import of this connection left out."""
    query = (
        select(PacsInstance.sop_pseudonym, PacsInstance.reason)
        .where(PacsInstance.connection_id == connection_id, PacsInstance.status == "skipped")
        .order_by(PacsInstance.id)
    )
    return [(sop, reason) for sop, reason in session.execute(query)]
