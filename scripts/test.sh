#!/usr/bin/env bash
# The test command of the README and of CI: `bash scripts/test.sh [pytest args...]`.
#
# Brings the machine up to what the suite needs (Python >= 3.12 venv and a Redis via env.sh; Ruby's
# Sidekiq for the wire-compatibility tests; Chromium and its driver for the browser tests;
# redis-sentinel for the failover test; a PostgreSQL via env.sh), runs pytest from the repository
# root twice: the whole suite on SQLite, then its database tests (marked django_db) on PostgreSQL,
# where pytest-django creates and drops a database of the run's own. Stops the Redis and
# PostgreSQL it started, and exits with the first failing pass's code.
set -euo pipefail

# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
trap 'kiq_stop_postgres; kiq_stop_redis' EXIT
# Exit on signals so the EXIT trap runs and the Redis started above does not outlive us.
trap 'exit 130' INT
trap 'exit 143' TERM

missing=()
# The compatibility tests push and read jobs with the real Ruby Sidekiq client.
if ! ruby -e 'require "sidekiq"' >/dev/null 2>&1; then
    missing+=(ruby-sidekiq)
fi
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    missing+=(chromium chromium-driver)
fi
# The Sentinel failover test starts its own sentinels.
if ! command -v redis-sentinel >/dev/null 2>&1; then
    missing+=(redis-sentinel)
fi
if ((${#missing[@]})); then
    kiq_apt_install "${missing[@]}"
fi

kiq_ensure_postgres
PG_URL="$KIQ_DATABASE_URL"
unset KIQ_DATABASE_URL

cd "$KIQ_ROOT"
export KIQ_REDIS_URL
rc=0
kiq_say "pass 1: the suite on SQLite"
"$VENV_PY" -m pytest "$@" || rc=$?
# pytest's 5 ("no tests collected") stays a failure: a green run must have run tests.
if ((rc == 5)); then
    kiq_say "pytest collected no tests"
fi
kiq_say "pass 2: the database tests (-m django_db) on PostgreSQL"
pg_rc=0
KIQ_DATABASE_URL="$PG_URL" "$VENV_PY" -m pytest -m django_db "$@" || pg_rc=$?
# Here 5 means the selection had no database test (e.g. `scripts/test.sh tests/test_retry.py`).
if ((pg_rc == 5)); then
    kiq_say "no database tests in this selection"
    pg_rc=0
fi
exit $((rc ? rc : pg_rc))
