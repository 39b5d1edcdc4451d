# shellcheck shell=bash
# Shared set-up for scripts/test.sh and scripts/demo.sh: source it, don't run it.
#
# Sourcing it leaves, in the calling shell:
#   KIQ_ROOT        the repository root
#   KIQ_RUN_DIR     $KIQ_ROOT/.kiq-run (git-ignored): pid files and logs of what the scripts start
#   VENV_PY         the Python of $KIQ_ROOT/.venv, with django-kiq installed editable plus [dev]
#   KIQ_REDIS_URL   (exported) a Redis that answers PING; started here when none did
#   kiq_stop_redis  a function that stops the Redis started here, and only that one;
#                   callers run it on exit: `trap kiq_stop_redis EXIT`
#   kiq_ensure_postgres, kiq_stop_postgres
#                   the same for PostgreSQL (exports KIQ_DATABASE_URL), for callers that need
#                   one: scripts/test.sh calls them, sourcing alone does not
#
# It works under `set -euo pipefail` and exits the calling script with a message (exit 1) when
# the machine lacks something it cannot install itself. Messages go to stderr.

KIQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIQ_RUN_DIR="$KIQ_ROOT/.kiq-run"
KIQ_VENV="$KIQ_ROOT/.venv"
VENV_PY="$KIQ_VENV/bin/python"
KIQ_REDIS_STARTED_PID=""
KIQ_APT_UPDATED="${KIQ_APT_UPDATED:-}"
mkdir -p "$KIQ_RUN_DIR"

kiq_say() { printf 'kiq: %s\n' "$*" >&2; }
kiq_die() { printf 'kiq: error: %s\n' "$*" >&2; exit 1; }

# Install Debian packages; only root can, so anyone else is told what to install.
kiq_apt_install() {
    if [[ "$(id -u)" != 0 ]]; then
        kiq_die "missing packages; install them and re-run: sudo apt-get install $*"
    fi
    command -v apt-get >/dev/null || kiq_die "no apt-get here; install these packages by hand: $*"
    # One `apt-get update` per run is enough; the package lists don't change within minutes.
    if [[ -z "$KIQ_APT_UPDATED" ]]; then
        kiq_say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        KIQ_APT_UPDATED=1
    fi
    kiq_say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Python >= 3.12 ---------------------------------------------------------------------------

# True when "$1" runs and is >= 3.12. Running it (not parsing a name) also rejects pyenv shims
# of versions that are installed but not selected, which exist on PATH yet fail with 127.
kiq_python_ok() {
    [[ -n "$1" ]] && "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

# Print the path of the newest pyenv-installed CPython >= 3.12, if any.
kiq_pyenv_python() {
    command -v pyenv >/dev/null || return 1
    local version py
    # Plain CPython versions only (3.13.0, 3.12.1); virtualenvs and pypy/conda builds are skipped.
    for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.[0-9]+\.[0-9]+$' | sort -rV); do
        py="$(pyenv prefix "$version" 2>/dev/null)/bin/python"
        if kiq_python_ok "$py"; then
            printf '%s\n' "$py"
            return 0
        fi
    done
    return 1
}

kiq_find_python() {
    local candidate py
    if [[ -n "${KIQ_PYTHON:-}" ]]; then
        py="$(command -v "$KIQ_PYTHON" 2>/dev/null || true)"
        kiq_python_ok "$py" && { printf '%s\n' "$py"; return 0; }
        kiq_say "KIQ_PYTHON=$KIQ_PYTHON is not a working Python >= 3.12; looking for another"
    fi
    for candidate in python3.13 python3.12 python3.14; do
        py="$(command -v "$candidate" 2>/dev/null || true)"
        kiq_python_ok "$py" && { printf '%s\n' "$py"; return 0; }
    done
    kiq_pyenv_python && return 0
    py="$(command -v python3 2>/dev/null || true)"
    kiq_python_ok "$py" && { printf '%s\n' "$py"; return 0; }
    return 1
}

# --- the virtualenv ----------------------------------------------------------------------------

kiq_ensure_venv() {
    local base
    if ! kiq_python_ok "$VENV_PY"; then
        base="$(kiq_find_python)" || kiq_die "django-kiq needs Python >= 3.12 (Django 6). Install one, \
e.g. \`apt-get install python3.13\` on Debian 13 or \`pyenv install 3.13\`, or set KIQ_PYTHON=/path/to/python"
        kiq_say "creating .venv with $base ($("$base" --version 2>&1))"
        # --clear: an old .venv of a too-old Python is replaced, not patched.
        "$base" -m venv --clear "$KIQ_VENV" \
            || kiq_die "'$base -m venv' failed; on Debian install the matching python3.X-venv package"
    fi
    # Reinstall only when the dependencies may have changed; pip takes seconds even when idle.
    local stamp="$KIQ_VENV/.kiq-installed"
    if [[ ! -e "$stamp" || "$KIQ_ROOT/pyproject.toml" -nt "$stamp" ]]; then
        kiq_say "installing django-kiq (editable, with [dev]) into .venv"
        (cd "$KIQ_ROOT" && "$VENV_PY" -m pip install -q -e '.[dev]') \
            || kiq_die "pip install -e '.[dev]' failed (see above)"
        touch "$stamp"
    fi
}

# --- Redis -------------------------------------------------------------------------------------

kiq_redis_answers() {
    "$VENV_PY" - "$1" >/dev/null 2>&1 <<'PY'
import sys

import redis

try:
    client = redis.Redis.from_url(sys.argv[1], socket_timeout=1, socket_connect_timeout=1)
    sys.exit(0 if client.ping() else 1)
except Exception:
    sys.exit(1)
PY
}

kiq_free_port() {
    "$VENV_PY" -c '
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])'
}

# Start a throw-away redis-server (no persistence) on a free port and export its URL.
kiq_start_redis() {
    if ! command -v redis-server >/dev/null; then
        kiq_apt_install redis-server
    fi
    local port pidfile url _
    port="$(kiq_free_port)"
    # Files named by port, so a demo and a test run started side by side don't share a pid file
    # (one stopping the other's Redis).
    pidfile="$KIQ_RUN_DIR/redis-$port.pid"
    url="redis://127.0.0.1:$port/0"
    rm -f "$pidfile"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize yes \
        --dir "$KIQ_RUN_DIR" --pidfile "$pidfile" --logfile "$KIQ_RUN_DIR/redis-$port.log" \
        || kiq_die "redis-server did not start; see $KIQ_RUN_DIR/redis-$port.log"
    for _ in $(seq 100); do
        if [[ -s "$pidfile" ]] && kiq_redis_answers "$url"; then
            KIQ_REDIS_STARTED_PID="$(cat "$pidfile")"
            KIQ_REDIS_PIDFILE="$pidfile"
            export KIQ_REDIS_URL="$url"
            kiq_say "Redis: $url (started here, pid $KIQ_REDIS_STARTED_PID, stopped on exit)"
            return 0
        fi
        sleep 0.1
    done
    [[ -s "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null
    kiq_die "redis-server on port $port did not answer within 10 s; see $KIQ_RUN_DIR/redis-$port.log"
}

kiq_ensure_redis() {
    local url="${KIQ_REDIS_URL:-redis://127.0.0.1:6379/0}"
    if kiq_redis_answers "$url"; then
        export KIQ_REDIS_URL="$url"
        kiq_say "Redis: $url (already running; left as it is)"
        return 0
    fi
    kiq_say "no Redis answers at $url; starting a private one"
    kiq_start_redis
}

# Stop the Redis that kiq_start_redis started, if any; a Redis found running is never touched.
# Safe to call twice and from an EXIT trap.
kiq_stop_redis() {
    local pid="$KIQ_REDIS_STARTED_PID" _
    [[ -n "$pid" ]] || return 0
    KIQ_REDIS_STARTED_PID=""
    # The pid could have been reused if that Redis died long ago: only signal a redis-server.
    local comm
    comm="$(ps -p "$pid" -o comm= 2>/dev/null || true)"
    if [[ "$comm" == redis* ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kiq_say "stopped the Redis started here (pid $pid)"
    fi
    rm -f "${KIQ_REDIS_PIDFILE:-}"
}

# --- PostgreSQL (scripts/test.sh's second pass; the demo stays on SQLite) ---------------------

KIQ_PG_STARTED_DIR=""

kiq_pg_answers() {
    "$VENV_PY" - "$1" >/dev/null 2>&1 <<'PY'
import sys

import psycopg

try:
    psycopg.connect(sys.argv[1], connect_timeout=2).close()
except Exception:
    sys.exit(1)
PY
}

# Start a throw-away PostgreSQL (trust auth, no fsync) in a temporary directory on a free port,
# installing Debian's `postgresql` first when its binaries are missing; export its URL.
# initdb and postgres refuse to run as root: as root they run as the package's `postgres` user.
kiq_start_postgres() {
    local bindir port dir as=()
    bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -z "$bindir" ]]; then
        kiq_apt_install postgresql
        bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
        [[ -n "$bindir" ]] || kiq_die "installed postgresql but found no /usr/lib/postgresql/*/bin"
    fi
    port="$(kiq_free_port)"
    # In /tmp, not .kiq-run: the postgres user must be able to reach it whoever owns the checkout.
    dir="$(mktemp -d /tmp/kiq-pg-XXXXXX)"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$dir"
        as=(setpriv --reuid=postgres --regid=postgres --init-groups)
    fi
    "${as[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --no-locale -E UTF8 \
        --no-sync >"$dir/initdb.log" 2>&1 || kiq_die "initdb failed; see $dir/initdb.log"
    KIQ_PG_STARTED_DIR="$dir"
    KIQ_PG_BIN="$bindir"
    "${as[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 -o \
        "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null \
        || kiq_die "PostgreSQL on port $port did not start; see $dir/server.log"
    export KIQ_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
    kiq_say "PostgreSQL: $KIQ_DATABASE_URL (started here, in $dir, stopped on exit)"
}

# Export KIQ_DATABASE_URL: the server it names, or the local one on 5432, if it answers (tests
# create and drop a database of their own there); else a private server started here.
kiq_ensure_postgres() {
    local url="${KIQ_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
    if kiq_pg_answers "$url"; then
        export KIQ_DATABASE_URL="$url"
        kiq_say "PostgreSQL: $url (already running; left as it is)"
        return 0
    fi
    kiq_say "no PostgreSQL answers at $url; starting a private one"
    kiq_start_postgres
}

# Stop the PostgreSQL that kiq_start_postgres started (fast shutdown) and delete its directory;
# one found running is never touched. Safe to call twice and from an EXIT trap.
kiq_stop_postgres() {
    local dir="$KIQ_PG_STARTED_DIR" as=()
    [[ -n "$dir" ]] || return 0
    KIQ_PG_STARTED_DIR=""
    if [[ "$(id -u)" == 0 ]]; then
        as=(setpriv --reuid=postgres --regid=postgres --init-groups)
    fi
    "${as[@]}" "$KIQ_PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    kiq_say "stopped the PostgreSQL started here"
}

kiq_ensure_venv
kiq_ensure_redis
