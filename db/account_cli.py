"""The account and audit sub-commands of `python -m db` (registered by db/__main__.py).

python -m db create-user NAME --role clinician     # password from a prompt, or a line on stdin
python -m db verify-audit                          # OK and the count, or the first broken event (exit 1)
python -m db sessions                              # live login sessions
python -m db revoke-session ID | --user NAME       # end one session, or all of an account's
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any, TextIO

from db.errors import DbUserError


class PasswordInputError(DbUserError):
    """No password could be read (no terminal to prompt on, nothing on stdin)."""


def read_new_password(from_stdin: bool, stdin: TextIO | None = None) -> str:
    """The password of a new account: typed twice at a prompt when stdin is a terminal, else the first
    line of stdin (also with --password-stdin). A sentence, never a traceback, when neither works."""
    stream = sys.stdin if stdin is None else stdin
    if stream is None or stream.closed:
        raise PasswordInputError("No password given: stdin is closed; pipe one in with --password-stdin.")
    if from_stdin or not stream.isatty():
        line = stream.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise PasswordInputError(
                "No password given: run this in a terminal to be asked for one, or pipe it in "
                '(echo "$PASSWORD" | python -m db create-user NAME --password-stdin).'
            )
        return password
    try:
        first = getpass.getpass("Password: ")
        again = getpass.getpass("Repeat the password: ")
    except EOFError:
        raise PasswordInputError("No password given: the prompt was closed before one was typed.") from None
    if again != first:
        raise PasswordInputError("The two passwords differ; nothing was created.")
    return first


def _cmd_verify_audit(args: argparse.Namespace) -> int:
    from db.audit import verify_chain
    from db.engine import session_scope

    with session_scope(args.database_url, read_only=True) as session:
        report = verify_chain(session)
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _cmd_sessions(args: argparse.Namespace) -> int:
    from db.engine import session_scope
    from db.sessions import list_live_sessions

    with session_scope(args.database_url, read_only=True) as session:
        rows = list_live_sessions(session)
    if not rows:
        print("No live sessions.")
    for row in rows:
        print(
            f"{row.id:>6}  {row.username:<24} since {row.created_at:%Y-%m-%d %H:%M} UTC, "
            f"last seen {row.last_seen_at:%H:%M}, from {row.client_ip or 'unknown'}  {row.user_agent[:40]}"
        )
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    from db.accounts import get_user
    from db.engine import session_scope
    from db.errors import NotFoundError
    from db.sessions import revoke_session_id, revoke_user_sessions

    with session_scope(args.database_url) as session:
        if args.user:
            user = get_user(session, args.user)
            if user is None:
                raise NotFoundError(f"There is no user named {args.user!r}.")
            count = revoke_user_sessions(session, user.id)
            print(f"Ended {count} session(s) of {user.username!r}.")
        elif args.session_id is not None:
            if not revoke_session_id(session, args.session_id):
                raise NotFoundError(f"There is no live session with id {args.session_id}.")
            print(f"Ended session {args.session_id}.")
        else:
            raise DbUserError("Name a session id or --user NAME.")
    return 0


def add_commands(commands: Any) -> None:
    """Register verify-audit, sessions and revoke-session on `python -m db`'s sub-parsers."""
    verify = commands.add_parser(
        "verify-audit", help="check the label events' hash chain; exit 1 at the first broken link"
    )
    verify.set_defaults(run=_cmd_verify_audit)
    listing = commands.add_parser("sessions", help="list live login sessions")
    listing.set_defaults(run=_cmd_sessions)
    revoke = commands.add_parser("revoke-session", help="end a login session, or all of one account")
    revoke.add_argument("session_id", nargs="?", type=int)
    revoke.add_argument("--user", help="end every session of this account")
    revoke.set_defaults(run=_cmd_revoke)
