#!/usr/bin/env bash
# The test suite: installs diffq with its test extras, lints, then runs pytest against the
# machine's Postgres (127.0.0.1:5432) and Redis (127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
