"""Database command line: `python -m db COMMAND ...` (`python -m db --help`).

The database is $DATABASE_URL, else the SQLite file under $CHEXNET_HOME; `--database-url` overrides.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from core.cli.console import run_command
from db.account_cli import add_commands as add_account_commands

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from db.models import User


def _progress_bar(description: str) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="step", leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _cmd_migrate(args: argparse.Namespace) -> int:
    from db.engine import create_configured_engine, default_url
    from db.migrate import current_revision, upgrade

    url = args.database_url or default_url()
    engine = create_configured_engine(url)
    before = current_revision(engine)
    upgrade(engine)
    print(f"Database at revision {current_revision(engine)} (was {before or 'empty'}).")
    return 0


def _cmd_create_user(args: argparse.Namespace) -> int:
    from db.account_cli import read_new_password
    from db.accounts import create_user
    from db.engine import session_scope

    password = read_new_password(args.password_stdin)
    with session_scope(args.database_url) as session:
        user = create_user(session, args.username, password, role=args.role)
        print(f"Created {user.role} {user.username!r}.")
    return 0


def _cmd_init_admin(args: argparse.Namespace) -> int:
    from db.accounts import INITIAL_ADMIN_USERNAME, ensure_initial_admin
    from db.engine import get_engine, session_scope
    from db.registry import seed_registry

    engine = get_engine(args.database_url)
    password_file = ensure_initial_admin(engine)
    if password_file:
        # The password goes to a private file, not the console (process managers keep console logs).
        print(f"Created the user {INITIAL_ADMIN_USERNAME!r}; its password is in {password_file} (mode 0600).")
        print("Log in and change it on the Change password page; the file is then deleted.")
    else:
        print("No new admin account was needed (users exist, or the password came from the environment).")
    # The registry starts with the model the app uses now (the bundled demo), so the pages never write.
    with session_scope(engine) as session:
        seeded = seed_registry(session)
        if seeded is not None:
            print(f"Registered {seeded.name!r} as the active model version (the registry was empty).")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from pathlib import Path

    from db.engine import session_scope
    from db.registry import register_existing_model

    with session_scope(args.database_url) as session:
        version = register_existing_model(session, Path(args.model_dir).expanduser())
        print(f"Registered {version.name!r} (version id {version.id}) from {version.path}.", flush=True)
    return 0


def _acting_admin(session: Session, username: str | None) -> User | None:
    """The admin named by --by (None when omitted: the event is recorded as made on the command line)."""
    from db.accounts import get_user
    from db.errors import NotAllowedError, NotFoundError

    if username is None:
        return None
    user = get_user(session, username)
    if user is None:
        raise NotFoundError(f"There is no user named {username!r}.")
    if user.role != "admin" or not user.active:
        state = "not an admin" if user.role != "admin" else "a deactivated account"
        raise NotAllowedError(f"{user.username!r} is {state}; only an active admin may promote or roll back.")
    return user


def _version_ref(session: Session, text: str) -> int | str:
    """A version's name, or its id when the text is a number that is no version's name."""
    from db.registry import name_taken

    return int(text) if text.isdigit() and not name_taken(session, text) else text


def _reason(args: argparse.Namespace) -> str:
    return args.reason if args.reason.strip() else ""  # blank: no reason, as on the Models page


def _serving_line(name: str, version_id: int, replaced: str | None, what: str, by: str | None) -> str:
    from core.settings import model_override

    replacing = f", replacing {replaced!r}" if replaced else ""
    who = f"by {by}" if by else "from the command line"
    line = f"Now serving {name!r} (version id {version_id}{replacing}); recorded as {what} {who}."
    override = model_override()
    if override is not None:  # it wins over the registry wherever it is set
        line += f" Note: CHEXNET_MODEL is set here, so processes with it serve {override} instead."
    return line


def _cmd_promote(args: argparse.Namespace) -> int:
    from db.engine import session_scope
    from db.registry import get_active_version, get_version, promote_version

    with session_scope(args.database_url) as session:
        by = _acting_admin(session, args.by)
        target = get_version(session, _version_ref(session, args.version))
        if target.is_active:
            print(f"{target.name!r} (version id {target.id}) is already the served model; nothing changed.")
            return 0
        active = get_active_version(session)
        replaced = active.name if active is not None else None
        promoted = promote_version(session, target.id, by=by, reason=_reason(args))
        line = _serving_line(promoted.name, promoted.id, replaced, "promoted", by.username if by else None)
    print(line)  # after the commit: the promotion (and the ACTIVE pointer) now holds
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from db.engine import session_scope
    from db.registry import get_active_version, rollback_version

    with session_scope(args.database_url) as session:
        by = _acting_admin(session, args.by)
        active = get_active_version(session)
        replaced = active.name if active is not None else None
        back = rollback_version(session, by=by, reason=_reason(args))
        line = _serving_line(back.name, back.id, replaced, "a roll back", by.username if by else None)
    print(line)
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from db.engine import get_engine
    from db.importer import import_chestxray14

    update, close = _progress_bar("import")
    try:
        stats = import_chestxray14(
            get_engine(args.database_url),
            args.dataset_dir,
            require_images=not args.all_rows,
            hash_images=not args.no_hash,
            progress=update,
        )
    finally:
        close()
    for problem in stats.problems:
        print(f"Note: {problem}")
    print(stats.summary())
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from db.engine import session_scope
    from db.export import write_labels_csv

    with session_scope(args.database_url, read_only=True) as session:
        count = write_labels_csv(session, args.out, args.format)
    print(f"Wrote {count:,} rows ({args.format}) to {args.out}.")
    return 0


def _cmd_make_migration(args: argparse.Namespace) -> int:
    from db.engine import create_configured_engine, default_url
    from db.migrate import make_revision

    make_revision(create_configured_engine(args.database_url or default_url()), args.message)
    return 0


def _cmd_benchmark_import(args: argparse.Namespace) -> int:
    from db.importer import benchmark_metadata_import

    result = benchmark_metadata_import(args.dataset_dir, args.database_url)
    for key, value in result.items():
        print(f"{key:>24}: {value:,.2f}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """`python -m db bench scale ...`: scripts/bench_scale.py, run as a script (it drives the pages, which
    this package must not import), with the same arguments and the same JSON."""
    import subprocess

    from core.paths import REPO_ROOT
    from core.settings import subprocess_env

    script = REPO_ROOT / "scripts" / "bench_scale.py"
    return subprocess.run([sys.executable, str(script), *args.arguments], env=subprocess_env()).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m db", description="CheXNet Studio database tools.")
    parser.add_argument(
        "--database-url", help="database URL (default: $DATABASE_URL or SQLite in CHEXNET_HOME)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", help="bring the schema up to date")
    migrate.set_defaults(run=_cmd_migrate)

    create_user = commands.add_parser("create-user", help="add a user account")
    create_user.add_argument("username")
    create_user.add_argument("--role", choices=["clinician", "admin"], default="clinician")
    create_user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (the default when stdin is not a terminal)",
    )
    create_user.set_defaults(run=_cmd_create_user)
    add_account_commands(commands)  # verify-audit, sessions, revoke-session

    init_admin = commands.add_parser(
        "init-admin",
        help="create the first admin when there are no users; register the bundled model in an empty "
        "registry",
    )
    init_admin.set_defaults(run=_cmd_init_admin)

    register = commands.add_parser(
        "register",
        help="register a model folder made outside the app (e.g. by `torchrun ... -m core train`) as a new "
        "version (not promoted)",
    )
    register.add_argument("model_dir")
    register.set_defaults(run=_cmd_register)

    promote = commands.add_parser(
        "promote", help="make a registered version the served model (recorded with who and why)"
    )
    promote.add_argument("version", help="the version's name (or its id)")
    promote.add_argument("--by", required=True, metavar="USERNAME", help="the admin doing it")
    promote.add_argument("--reason", default="", help="why (kept in the promotion history)")
    promote.set_defaults(run=_cmd_promote)

    rollback = commands.add_parser(
        "rollback", help="serve the version promoted before the active one again (one step back)"
    )
    rollback.add_argument(
        "--by", metavar="USERNAME", help="the admin doing it (default: recorded as the command line)"
    )
    rollback.add_argument("--reason", default="", help="why (kept in the promotion history)")
    rollback.set_defaults(run=_cmd_rollback)

    importer = commands.add_parser("import", help="import a ChestX-ray14 folder (idempotent)")
    importer.add_argument("dataset_dir")
    importer.add_argument(
        "--all-rows", action="store_true", help="import every Data_Entry row, also images without a file"
    )
    importer.add_argument("--no-hash", action="store_true", help="skip hashing the image files (much faster)")
    importer.set_defaults(run=_cmd_import)

    export = commands.add_parser("export-labels", help="write the effective labels as CSV")
    export.add_argument("out")
    export.add_argument("--format", choices=["data-entry", "trainer"], default="data-entry")
    export.set_defaults(run=_cmd_export)

    revision = commands.add_parser("make-migration", help="autogenerate an alembic revision (developers)")
    revision.add_argument("message")
    revision.set_defaults(run=_cmd_make_migration)

    bench = commands.add_parser("benchmark-import", help="time a metadata-only import into a fresh database")
    bench.add_argument("dataset_dir")
    bench.set_defaults(run=_cmd_benchmark_import)

    scale = commands.add_parser(
        "bench", help="benchmarks: scale (every page at 112,120 images; scripts/bench_scale.py's arguments)"
    )
    scale.add_argument("what", choices=["scale"])
    scale.add_argument("arguments", nargs=argparse.REMAINDER, help="passed on, e.g. --images 20000 --json")
    scale.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.run, args)


if __name__ == "__main__":
    sys.exit(main())
