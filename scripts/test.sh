#!/usr/bin/env bash
# The test command of the README and of CI: `bash scripts/test.sh [pytest args...]`.
#
# Brings the machine up to what the suite needs (Python >= 3.12 venv and a Redis via env.sh; Ruby's
# Sidekiq for the wire-compatibility tests; Chromium and its driver for the browser tests;
# redis-sentinel for the failover test), runs
# pytest from the repository root, stops the Redis it started, and exits with pytest's code.
set -euo pipefail

# shellcheck source=scripts/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
trap kiq_stop_redis EXIT
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

cd "$KIQ_ROOT"
export KIQ_REDIS_URL
rc=0
"$VENV_PY" -m pytest "$@" || rc=$?
# pytest's 5 ("no tests collected") stays a failure: a green run must have run tests.
if ((rc == 5)); then
    kiq_say "pytest collected no tests"
fi
exit "$rc"
