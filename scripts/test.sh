#!/usr/bin/env bash
# Runs the test suite (creating .venv/ first if it is missing). Extra arguments go to pytest.
# By default slow real-width tests are skipped except those marked for CI; `--all` runs every one.
# Test modules run in PALIGEMMA_JAX_TEST_WORKERS processes (pytest-xdist, default 2; each module
# stays in one process, so its fixtures and compilation cache are shared); `-n 0` runs in this one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=3
workers=(-n "${PALIGEMMA_JAX_TEST_WORKERS:-2}" --dist loadfile)
if [ "${1:-}" = "--all" ]; then
  shift
  exec .venv/bin/python -m pytest "${workers[@]}" "$@"
fi
exec .venv/bin/python -m pytest "${workers[@]}" -m "not slow or ci" "$@"
