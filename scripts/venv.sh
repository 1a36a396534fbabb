#!/usr/bin/env bash
# Creates ./.venv and installs diffq into it: the CPU build of torch first, so that nothing
# pulls the CUDA packages, then the project itself (with EXTRAS, e.g. "test"), then byte-compiles
# everything installed. Skipped when the venv already holds this pyproject.toml's dependencies with
# these extras, installed by this version of the script.
#
# Why compile up front: where PYTHONDONTWRITEBYTECODE is set (as in many containers and CI images)
# Python never caches what it compiles, so every process compiles its imports again: a worker spent
# ~8 s of its ~15 s start compiling torch, diffusers and transformers, and the tests start dozens of
# processes. compileall on all cores (~30-60 s on 2 cores, once) instead of pip's one-core compile.
#
# pip runs with -qq: its errors still show, but not the warnings a machine's own pip settings can print
# by the hundred (an unreachable find-links location, once per package), which buried the first screen.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
stamp=".venv/.diffq-installed"
want="$(cat pyproject.toml scripts/venv.sh | sha256sum | cut -d' ' -f1) ${extras}"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -qq --disable-pip-version-check --no-compile "torch==2.13.0"
if [ -n "$extras" ]; then
  .venv/bin/python -m pip install -qq --disable-pip-version-check --no-compile -e ".[$extras]"
else
  .venv/bin/python -m pip install -qq --disable-pip-version-check --no-compile -e .
fi
# Exits 1 for the few files that are not Python 3.11 (torch's py312 test helpers), which nothing imports.
.venv/bin/python -m compileall -qq -j0 .venv/lib || true
echo "$want" > "$stamp"
