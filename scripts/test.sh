#!/usr/bin/env bash
# The test suite: installs diffq with its test extras (and chromium for the dashboard's browser test),
# lints, then runs pytest against the machine's Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh test
# The dashboard's browser test drives Debian's chromium through chromium-driver (Playwright's and
# Selenium's own browser downloads can't be used here); install them when missing and we may (CI is root).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "chromium and chromium-driver are missing: the dashboard's browser test will be skipped" >&2
    fi
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
