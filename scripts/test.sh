#!/usr/bin/env bash
# Runs the test suite (creating .venv/ first if it is missing). Extra arguments go to pytest.
# By default slow real-width tests are skipped except those marked for CI; `--all` runs every one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=3
if [ "${1:-}" = "--all" ]; then
  shift
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -m "not slow or ci" "$@"
