#!/usr/bin/env bash
# Run the demo on this machine: `bash scripts/demo.sh`, then open the admin it prints.
#
# Sets up the venv and a Redis (env.sh), migrates the database (SQLite's db.sqlite3; set
# KIQ_DATABASE_URL=postgres://user@host:5432/name to use PostgreSQL instead), makes the superuser
# admin/admin, enqueues sample jobs (manage.py kiq_demo), starts a worker in the background and
# the development server in the foreground. Ctrl-C stops the server; the exit trap then stops the
# worker gracefully (TERM, as Sidekiq's) and the Redis started here.
set -euo pipefail

# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$KIQ_ROOT"

WORKER_PID=""
WORKER_LOG="$KIQ_RUN_DIR/worker.log"

stop_worker() {
    local pid="$WORKER_PID" _
    [[ -n "$pid" ]] || return 0
    WORKER_PID=""
    kill -TERM "$pid" 2>/dev/null || return 0
    # The worker finishes in-flight jobs within its TIMEOUT (25 s by default); allow a little more.
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || { kiq_say "worker stopped"; return 0; }
        sleep 0.1
    done
    kiq_say "worker still running after 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    stop_worker
    # After the worker: it needs Redis to hand back what it had not finished.
    kiq_stop_redis
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Print "$1" when 127.0.0.1 has it free, otherwise a free port the system picks.
pick_port() {
    "$VENV_PY" - "$1" <<'PY'
import socket
import sys

with socket.socket() as s:
    # As runserver does, so a port left in TIME_WAIT by the last run still counts as free.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
PY
}

manage() { "$VENV_PY" manage.py "$@"; }

manage migrate --noinput
# Idempotent: creates admin/admin, or resets its password and rights if it exists.
manage shell --no-imports -c '
from django.contrib.auth import get_user_model

user, _ = get_user_model().objects.get_or_create(username="admin")
user.is_active = user.is_staff = user.is_superuser = True
user.set_password("admin")
user.save()
'

manage kiq_demo

# Python itself, not the `manage` function: a function in the background runs in a subshell,
# and TERM sent to that subshell would not reach the worker.
"$VENV_PY" manage.py kiq_worker -c 5 -q default -q slow >"$WORKER_LOG" 2>&1 &
WORKER_PID=$!

PORT="$(pick_port "${KIQ_DEMO_PORT:-8000}")"
cat <<BANNER

  Admin: http://127.0.0.1:$PORT/admin/  user admin  password admin
  Worker: pid $WORKER_PID, log $WORKER_LOG  (tail -f it to watch jobs run)
  Redis: $KIQ_REDIS_URL
  Database: ${KIQ_DATABASE_URL:-SQLite, $KIQ_ROOT/db.sqlite3}
  Ctrl-C stops the server, the worker and any Redis started here.

BANNER
manage runserver "127.0.0.1:$PORT" --noreload
