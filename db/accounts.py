"""User accounts: argon2id password hashes, login, and the first admin account.

with session_scope() as session:
    user = authenticate(session, "alice", password)   # User or None
"""

from __future__ import annotations

import logging
import os
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.engine import session_scope
from db.errors import DbUserError, NotFoundError, UserExistsError
from db.models import ROLES, User, utcnow

log = logging.getLogger(__name__)

INITIAL_ADMIN_USERNAME = "admin"
ADMIN_PASSWORD_ENV = "CHEXNET_ADMIN_PASSWORD"
MIN_PASSWORD_LENGTH = 8
_USERNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_dummy_hash: str | None = None


class InvalidAccountError(DbUserError, ValueError):
    """A username, password or role that cannot be used (one human sentence)."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def validate_username(username: str) -> str:
    username = username.strip()
    if not _USERNAME_PATTERN.fullmatch(username):
        raise InvalidAccountError(
            "A username is 1 to 64 letters, digits or the characters _ . @ - "
            "and starts with a letter or digit."
        )
    return username


def validate_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidAccountError(f"A password needs at least {MIN_PASSWORD_LENGTH} characters.")


def validate_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidAccountError(f"The role must be one of {', '.join(ROLES)}, not {role!r}.")


def create_user(session: Session, username: str, password: str, role: str = "clinician") -> User:
    """A new active user. Raises UserExistsError or InvalidAccountError. The caller commits."""
    username = validate_username(username)
    validate_password(password)
    validate_role(role)
    if session.scalars(select(User.id).where(User.username == username)).first() is not None:
        raise UserExistsError(f"The username {username!r} is already taken.")
    user = User(username=username, password_hash=hash_password(password), role=role, active=True)
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError as exc:  # created concurrently
        raise UserExistsError(f"The username {username!r} is already taken.") from exc
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this username and password, else None.

    Unknown and inactive users cost one argon2 verification too, so the response time does not tell
    which usernames exist. Hashes made with older parameters are upgraded on a successful login.
    """
    global _dummy_hash
    user = session.scalars(select(User).where(User.username == username.strip())).one_or_none()
    if user is None or not user.active:
        if _dummy_hash is None:
            _dummy_hash = hash_password(secrets.token_urlsafe(16))
        verify_password(_dummy_hash, password)
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    user.last_login_at = utcnow()
    session.flush()
    return user


def get_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username == username.strip())).one_or_none()


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))


def _existing_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"There is no user with id {user_id}.")
    return user


def set_password(session: Session, user_id: int, new_password: str) -> User:
    validate_password(new_password)
    user = _existing_user(session, user_id)
    user.password_hash = hash_password(new_password)
    session.flush()
    return user


def set_role(session: Session, user_id: int, role: str) -> User:
    validate_role(role)
    user = _existing_user(session, user_id)
    user.role = role
    session.flush()
    return user


def set_active(session: Session, user_id: int, active: bool) -> User:
    """Deactivated users cannot log in; their reviews and audit events stay."""
    user = _existing_user(session, user_id)
    user.active = active
    session.flush()
    return user


def ensure_initial_admin(engine: Engine | None = None) -> str | None:
    """On a database without users, create the user 'admin' (role admin).

    The password is $CHEXNET_ADMIN_PASSWORD when set, else a random one, which is returned so the
    caller can show it once (it is stored only as a hash). Returns None when no password needs
    showing: users already existed, or the password came from the environment.
    """
    with session_scope(engine) as session:
        if session.scalar(select(func.count()).select_from(User)):
            return None
        from_env = os.environ.get(ADMIN_PASSWORD_ENV, "")
        password = from_env or secrets.token_urlsafe(12)
        try:
            create_user(session, INITIAL_ADMIN_USERNAME, password, role="admin")
        except UserExistsError:  # another process created it at the same moment
            return None
    log.info("Created the initial admin account %r.", INITIAL_ADMIN_USERNAME)
    return None if from_env else password
