#!/usr/bin/env bash
# Refresh the admin screenshots docs/admin.md shows: `bash scripts/screenshots.sh`.
#
# Runs the browser tests (tests/test_admin_browser.py, through scripts/test.sh, which installs
# Chromium if needed) with KIQ_SCREENSHOTS_DIR=docs/screenshots, so they save each page there
# instead of into pytest's temporary folder. Review the new images with `git diff --stat
# docs/screenshots` and commit them. Extra arguments go to pytest.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
KIQ_SCREENSHOTS_DIR=docs/screenshots exec bash scripts/test.sh tests/test_admin_browser.py "$@"
