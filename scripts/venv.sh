#!/usr/bin/env bash
# Creates ./.venv and installs diffq into it: the CPU build of torch first, so that nothing
# pulls the CUDA packages, then the project itself (with EXTRAS, e.g. "test"). Skipped when the
# venv already holds this pyproject.toml's dependencies with these extras. `--no-compile`: Python compiles
# what it imports on first use, instead of pip compiling all of torch up front (tens of seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
stamp=".venv/.diffq-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) ${extras}"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --no-compile "torch==2.13.0"
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-compile -e ".[$extras]"
else
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-compile -e .
fi
echo "$want" > "$stamp"
