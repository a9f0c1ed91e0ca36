"""The login cookie: `<token>.<expiry>.<HMAC>`, so a reload or a new tab finds its session again.

Streamlit reads cookies (`st.context.cookies`, sent with the websocket's opening request) but has no
way to set one from Python during a session (streamlit/streamlit#14730), so a two-line script in an
`st.html` element writes it in the browser: `SameSite=Strict`, `Secure` over https, an absolute
`Expires`. Script-written cookies cannot be HttpOnly; what the cookie carries is only a random token
whose sha256 the database checks (revoked, idle, expired) on every page run, and the HMAC (a secret
made once into CHEXNET_HOME/session-secret, mode 0600) lets forged values be refused unread.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
from functools import cache
from pathlib import Path

import streamlit as st

from core.paths import chexnet_home

COOKIE_NAME = "chexnet_session"
SECRET_FILE = "session-secret"


def _secret_path() -> Path:
    return chexnet_home() / SECRET_FILE


@cache
def _secret_at(path: Path) -> bytes:
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:  # the first process to start makes it; every other one (and every web server) reads it
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
    secret = path.read_text().strip()
    if len(secret) < 32:  # a file still being written by another process, or emptied by hand
        raise RuntimeError(f"The session secret {path} is empty or too short; delete it and restart.")
    return secret.encode()


def cookie_secret() -> bytes:
    return _secret_at(_secret_path())


def _signature(payload: str) -> str:
    digest = hmac.new(cookie_secret(), payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign(token: str, expires: dt.datetime) -> str:
    payload = f"{token}.{int(expires.timestamp())}"
    return f"{payload}.{_signature(payload)}"


def verify(value: str, now: dt.datetime | None = None) -> str | None:
    """The token of a cookie value whose signature holds and that has not expired, else None."""
    try:
        token, expiry, signature = value.rsplit(".", 2)
        expires_at = int(expiry)
    except ValueError:
        return None
    payload = f"{token}.{expiry}"
    if not hmac.compare_digest(signature, _signature(payload)):
        return None
    now = now or dt.datetime.now(dt.UTC)
    if expires_at <= now.timestamp():
        return None
    return token


def token_from_browser() -> str | None:
    """The verified token of the cookie this browser sent when the page was opened, if any."""
    value = cookie_value()
    return verify(value) if value else None


def cookie_value() -> str | None:
    value = st.context.cookies.get(COOKIE_NAME)
    return value if isinstance(value, str) else None  # no browser (AppTest): stand-in objects


def _secure() -> bool:
    url = st.context.url
    return isinstance(url, str) and url.startswith("https://")


def write_script(value: str, expires: dt.datetime) -> str:
    when = expires.astimezone(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    attributes = f"; Path=/; Expires={when}; SameSite=Strict" + ("; Secure" if _secure() else "")
    cookie = f"{COOKIE_NAME}={value}{attributes}"
    return f"<script>document.cookie = {json.dumps(cookie)};</script>"


def clear_script(value: str | None) -> str:
    """Remove the cookie, but only while it still holds `value` (another tab may have logged in since)."""
    expired = f"{COOKIE_NAME}=; Path=/; Expires=Thu, 01 Jan 1970 00:00:00 GMT; SameSite=Strict"
    if value is None:
        return f"<script>document.cookie = {json.dumps(expired)};</script>"
    current = f"{COOKIE_NAME}={value}"
    return (
        "<script>if (document.cookie.split('; ').includes("
        f"{json.dumps(current)})) document.cookie = {json.dumps(expired)};</script>"
    )


def run_in_browser(script: str) -> None:
    # Our own fixed script and a value we made (token, digits, base64): no user input reaches it.
    st.sidebar.html(script, unsafe_allow_javascript=True)
