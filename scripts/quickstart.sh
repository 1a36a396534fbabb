#!/usr/bin/env bash
# The offline quickstart: installs diffq, then runs it end to end on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "installing diffq into ./.venv (the first time: a minute or two) ..."
bash scripts/venv.sh
exec .venv/bin/diffq quickstart "$@"
