#!/usr/bin/env bash
# Creates ./.venv and installs diffq into it: the CPU build of torch first, so that nothing
# pulls the CUDA packages, then the project itself (with EXTRAS, e.g. "test").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -q -e ".[$extras]"
else
  .venv/bin/python -m pip install -q -e .
fi
