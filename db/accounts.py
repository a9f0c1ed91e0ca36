"""User accounts: argon2id password hashes, the password rules, login, and the first admin account.

    result = log_in(engine, "alice", password, LoginClient(address="10.0.0.7"))
    result.account, result.token, result.problem      # Account + session token, or None + a sentence

Logging in never holds a database transaction (and so never SQLite's write lock) while argon2 runs:
the stored hash is read in a short read-only transaction, verified outside any transaction, and the
outcome written in a second short one. Unknown and deactivated users cost one dummy verification
too, so the response time does not tell which usernames exist. At most VERIFY_SLOTS verifications
run at once (argon2 takes 64 MiB each), so a login flood queues instead of exhausting memory.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import settings
from core.paths import chexnet_home
from db import login_throttle, sessions
from db.engine import session_scope
from db.errors import DbUserError, NotAllowedError, NotFoundError, UserExistsError
from db.models import ROLES, User, utcnow

log = logging.getLogger(__name__)

INITIAL_ADMIN_USERNAME = "admin"
ADMIN_PASSWORD_ENV = settings.CHEXNET_ADMIN_PASSWORD.name
INITIAL_PASSWORD_FILE = "initial-admin-password.txt"  # under CHEXNET_HOME, mode 0600
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent / "common_passwords.txt"
VERIFY_SLOTS = 4
_USERNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
WRONG_LOGIN_SENTENCE = "The username or password is not correct, or the account is deactivated."

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_dummy_hash: tuple[PasswordHasher, str] | None = None
_verify_slots = threading.BoundedSemaphore(VERIFY_SLOTS)


class InvalidAccountError(DbUserError, ValueError):
    """A username, password or role that cannot be used (one human sentence)."""


@dataclass(frozen=True)
class Account:
    """A user as read at one moment, detached from any database session."""

    id: int
    username: str
    role: str
    active: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _account(user: User) -> Account:
    return Account(user.id, user.username, user.role, bool(user.active))


# ----------------------------------------------------------------------------------------------------
# Hashes and rules


def set_password_hasher(hasher: PasswordHasher) -> None:
    """Hash (and verify) with other argon2 parameters from now on, in this process.

    For scripts that create thousands of accounts and measure something else (scripts/scale_database.py);
    hashes made with weaker parameters are upgraded at the next login by a server on the defaults.
    """
    global _hasher
    _hasher = hasher


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    with _verify_slots:
        try:
            return _hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False


def _dummy_verify(password: str) -> None:
    """Verify against a throwaway hash made with the current parameters: as slow as a real check."""
    global _dummy_hash
    if _dummy_hash is None or _dummy_hash[0] is not _hasher:
        _dummy_hash = (_hasher, hash_password(secrets.token_urlsafe(16)))
    verify_password(_dummy_hash[1], password)


def username_key(username: str) -> str:
    """The case-insensitive identity of a username (what must be unique)."""
    return username.strip().lower()


def validate_username(username: str) -> str:
    username = username.strip()
    if not _USERNAME_PATTERN.fullmatch(username) or username.endswith("."):
        raise InvalidAccountError(
            "A username is 1 to 64 letters, digits or the characters . _ - ; it starts with a letter or "
            "digit and does not end with a dot."
        )
    return username


@cache
def common_passwords() -> frozenset[str]:
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def validate_password(password: str, username: str | None = None) -> None:
    if not password.strip():
        raise InvalidAccountError("A password cannot be empty or only spaces.")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidAccountError(f"A password needs at least {MIN_PASSWORD_LENGTH} characters.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidAccountError(f"A password can have at most {MAX_PASSWORD_LENGTH} characters.")
    folded = "".join(password.lower().split())
    if folded in common_passwords():
        raise InvalidAccountError("This password is one of the most common ones; choose another.")
    if username and folded == username_key(username):
        raise InvalidAccountError("A password cannot be the username.")


def validate_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidAccountError(f"The role must be one of {', '.join(ROLES)}, not {role!r}.")


# ----------------------------------------------------------------------------------------------------
# Accounts


def create_user(session: Session, username: str, password: str, role: str = "clinician") -> User:
    """A new active user. Raises UserExistsError or InvalidAccountError. The caller commits."""
    username = validate_username(username)
    validate_password(password, username)
    validate_role(role)
    password_hash = hash_password(password)  # before the first query: no transaction is open yet
    key = username_key(username)
    taken = UserExistsError(f"The username {username!r} is already taken (names ignore upper/lower case).")
    if session.scalars(select(User.id).where(User.username_key == key)).first() is not None:
        raise taken
    user = User(username=username, username_key=key, password_hash=password_hash, role=role, active=True)
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError as exc:  # created concurrently
        raise taken from exc
    return user


def get_user(session: Session, username: str) -> User | None:
    return session.scalars(select(User).where(User.username_key == username_key(username))).one_or_none()


def get_account(session: Session, user_id: int) -> Account | None:
    user = session.get(User, user_id)
    return None if user is None else _account(user)


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username_key)))


def require_active_role(session: Session, user_id: int, *roles: str) -> User:
    """The account, read now, if it is active and has one of `roles`; else NotAllowedError.

    Call it in the transaction of a privileged action, so a demotion or deactivation made a moment
    ago applies even to a page that was opened before it.
    """
    user = session.get(User, user_id, populate_existing=True)
    if user is None or not user.active or user.role not in roles:
        raise NotAllowedError("Your account is no longer allowed to do this; reload the page.")
    return user


def _existing_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"There is no user with id {user_id}.")
    return user


def set_password(session: Session, user_id: int, new_password: str) -> User:
    """Set a new password (admin reset); the account's sessions end. Hash first, then the writes."""
    username = session.scalar(select(User.username).where(User.id == user_id))
    if username is None:
        raise NotFoundError(f"There is no user with id {user_id}.")
    validate_password(new_password, username)
    password_hash = hash_password(new_password)
    user = _existing_user(session, user_id)
    user.password_hash = password_hash
    sessions.revoke_user_sessions(session, user_id)
    session.flush()
    return user


def change_password(
    engine: Engine, user_id: int, current_password: str, new_password: str, *, keep_token: str | None = None
) -> None:
    """A user's own change: the current password must be right. Other sessions of the account end
    (`keep_token`'s stays); the first admin's password file goes, since it no longer holds the password."""
    with session_scope(engine, read_only=True) as session:
        user = session.get(User, user_id)
        if user is None or not user.active:
            raise NotAllowedError("Your account is no longer active.")
        stored_hash, username = user.password_hash, user.username
    if not verify_password(stored_hash, current_password):
        raise InvalidAccountError("The current password is not correct.")
    validate_password(new_password, username)
    if new_password == current_password:
        raise InvalidAccountError("The new password must differ from the current one.")
    new_hash = hash_password(new_password)
    with session_scope(engine) as session:
        _existing_user(session, user_id).password_hash = new_hash
        sessions.revoke_user_sessions(session, user_id, keep_token=keep_token)
    if username == INITIAL_ADMIN_USERNAME:
        initial_password_path().unlink(missing_ok=True)


def set_role(session: Session, user_id: int, role: str) -> User:
    validate_role(role)
    user = _existing_user(session, user_id)
    user.role = role
    session.flush()
    return user


def set_active(session: Session, user_id: int, active: bool) -> User:
    """Deactivated users cannot log in and their open sessions end; their reviews and audit events stay."""
    user = _existing_user(session, user_id)
    user.active = active
    if not active:
        sessions.revoke_user_sessions(session, user_id)
    session.flush()
    return user


# ----------------------------------------------------------------------------------------------------
# Login


@dataclass(frozen=True)
class LoginClient:
    """Where a login comes from: an address when known, else some stable id of the browser session."""

    address: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class LoginResult:
    account: Account | None
    token: str | None  # the new session's token (only its sha256 is stored)
    problem: str  # "" on success, else one sentence for the person
    expires_at: dt.datetime | None = None  # the session's absolute expiry


def authenticate(engine: Engine, username: str, password: str) -> Account | None:
    """The active account with this username and password, else None; no throttling, nothing recorded.

    The hash is read in a short read-only transaction and verified after it has ended.
    """
    found = _stored_login(engine, username)
    if found is None or not found[0].active:
        _dummy_verify(password)
        return None
    account, stored_hash = found
    return account if verify_password(stored_hash, password) else None


def _stored_login(engine: Engine, username: str) -> tuple[Account, str] | None:
    key = username_key(username)
    if not key:
        return None
    with session_scope(engine, read_only=True) as session:
        user = session.scalars(select(User).where(User.username_key == key)).one_or_none()
        return None if user is None else (_account(user), user.password_hash)


def log_in(engine: Engine, username: str, password: str, client: LoginClient) -> LoginResult:
    """Check a login (throttled), record the attempt, and open a session when it is right."""
    if not username.strip() or not password:
        return LoginResult(None, None, "Enter your username and password.")
    key = username_key(username)
    client_key = client.address or "unknown"
    with session_scope(engine, read_only=True) as session:
        wait = login_throttle.throttle_wait(session, key, client_key)
    if wait:
        return LoginResult(None, None, login_throttle.wait_sentence(wait))

    found = _stored_login(engine, username)
    account: Account | None = None
    new_hash: str | None = None
    if found is None or not found[0].active:
        _dummy_verify(password)
    elif verify_password(found[1], password):
        account = found[0]
        if _hasher.check_needs_rehash(found[1]):  # made with older parameters: upgrade, still outside
            new_hash = hash_password(password)

    token: str | None = None
    expires_at: dt.datetime | None = None
    with session_scope(engine) as session:
        user = session.get(User, account.id) if account is not None else None
        # Deactivated, or given a new password, between the read and now: the check no longer holds.
        if user is None or not user.active or found is None or user.password_hash != found[1]:
            account = None
        login_throttle.record_attempt(session, key, client_key, succeeded=account is not None)
        if account is not None and user is not None:
            user.last_login_at = utcnow()
            if new_hash is not None:
                user.password_hash = new_hash
            token, expires_at = sessions.create_session(
                session, user.id, client_ip=client.address, user_agent=client.user_agent
            )
            account = _account(user)
    if account is None:
        log.info("Failed login for %r from %s.", key[:64], client_key)
        return LoginResult(None, None, WRONG_LOGIN_SENTENCE)
    log.info("Login of %r from %s.", account.username, client_key)
    return LoginResult(account, token, "", expires_at)


# ----------------------------------------------------------------------------------------------------
# The first admin


def initial_password_path() -> Path:
    return chexnet_home() / INITIAL_PASSWORD_FILE


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, created with that mode (never briefly world-readable)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def ensure_initial_admin(engine: Engine | None = None) -> Path | None:
    """On a database without users, create the user 'admin' (role admin).

    The password is $CHEXNET_ADMIN_PASSWORD when set, else a random one, written to
    CHEXNET_HOME/initial-admin-password.txt (mode 0600; it is stored only as a hash) and that file's
    path returned so the caller can say where it is. Returns None when nothing needs saying: users
    already existed, or the password came from the environment.
    """
    from_env = settings.admin_password()
    password = from_env or secrets.token_urlsafe(12)
    if from_env:
        try:
            validate_password(from_env, INITIAL_ADMIN_USERNAME)
        except InvalidAccountError as exc:
            raise InvalidAccountError(f"${ADMIN_PASSWORD_ENV} cannot be used: {exc}") from exc
    with session_scope(engine, read_only=True) as session:
        if session.scalar(select(func.count()).select_from(User)):
            return None
    with session_scope(engine) as session:  # create_user hashes before its first query opens the write
        try:
            create_user(session, INITIAL_ADMIN_USERNAME, password, role="admin")
        except UserExistsError:  # another process created it at the same moment
            return None
    log.info("Created the initial admin account %r.", INITIAL_ADMIN_USERNAME)
    if from_env:
        return None
    path = initial_password_path()
    _write_private(
        path,
        f"username: {INITIAL_ADMIN_USERNAME}\npassword: {password}\n"
        "Log in, change the password (Change password page), and this file is deleted.\n",
    )
    return path
