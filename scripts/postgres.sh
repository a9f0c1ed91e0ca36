#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and local development.
#
#   scripts/postgres.sh start [DIR]   initialise (first time) and start a server in DIR, print its DATABASE_URL
#   scripts/postgres.sh url   [DIR]   print the DATABASE_URL of the server in DIR
#   scripts/postgres.sh stop  [DIR]   stop the server in DIR and delete DIR
#   scripts/postgres.sh status [DIR]  exit 0 when the server in DIR is running
#
# DIR defaults to $CHEXNET_PG_DIR or ${TMPDIR:-/tmp}/chexnet-pg-$(id -un).
# The server listens on 127.0.0.1 on a free port, uses trust authentication and no fsync: it is for
# tests only, never for data you want to keep. initdb refuses to run as root, so as root the server runs
# as the `postgres` system user (or `chexnet-pg`, created on demand). When the server binaries are
# missing and we are root, Debian's `postgresql` package is installed.
set -euo pipefail

cmd="${1:-}"
dir="${2:-${CHEXNET_PG_DIR:-${TMPDIR:-/tmp}/chexnet-pg-$(id -un)}}"

die() { echo "postgres.sh: $*" >&2; exit 1; }

find_bindir() {
    local candidate
    # Newest Debian cluster binaries first, then whatever is on PATH.
    for candidate in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [[ -x "$candidate/initdb" && -x "$candidate/pg_ctl" && -x "$candidate/postgres" ]]; then
            echo "$candidate"; return 0
        fi
    done
    if command -v pg_config >/dev/null 2>&1; then
        candidate="$(pg_config --bindir)"
        [[ -x "$candidate/initdb" && -x "$candidate/postgres" ]] && { echo "$candidate"; return 0; }
    fi
    if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"; return 0
    fi
    return 1
}

ensure_binaries() {
    if bindir="$(find_bindir)"; then return 0; fi
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "postgres.sh: PostgreSQL server binaries not found; installing Debian's postgresql package" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bindir="$(find_bindir)" && return 0
    fi
    die "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install the postgresql package."
}

# As root, every server command runs as an unprivileged user.
run_user=""
if [[ "$(id -u)" == 0 ]]; then
    if id postgres >/dev/null 2>&1; then
        run_user=postgres
    else
        id chexnet-pg >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin chexnet-pg
        run_user=chexnet-pg
    fi
fi

as_server_user() {
    if [[ -n "$run_user" ]]; then
        runuser -u "$run_user" -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 - <<'EOF'
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
EOF
}

url() {
    [[ -f "$dir/port" ]] || die "no server was started in $dir"
    echo "postgresql+psycopg://postgres@127.0.0.1:$(cat "$dir/port")/postgres"
}

is_running() {
    [[ -d "$dir/data" ]] || return 1
    ensure_binaries
    as_server_user "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1
}

start() {
    ensure_binaries
    if is_running; then url; return 0; fi
    mkdir -p "$dir"
    [[ -n "$run_user" ]] && chown "$run_user" "$dir"
    chmod 700 "$dir"
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        as_server_user "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-sync \
            >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    local port
    port="$(free_port)"
    echo "$port" >"$dir/port"
    # Socket in DIR: /var/run/postgresql may not exist or may not be writable by the server user.
    as_server_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
            -c full_page_writes=off -c max_connections=200" start >/dev/null \
        || { cat "$dir/server.log" >&2 || true; die "the server did not start"; }
    url
}

stop() {
    if [[ -d "$dir/data" ]]; then
        ensure_binaries
        as_server_user "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    url) url ;;
    status) is_running ;;
    *) echo "usage: $0 start|stop|url|status [DIR]" >&2; exit 2 ;;
esac
