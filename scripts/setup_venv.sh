#!/usr/bin/env bash
# Creates .venv/ in the repo root if it is missing and installs the project (and its test extra) into it.
# Safe to re-run: an up-to-date venv is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[test]'
  touch "$stamp"
fi
