#!/usr/bin/env bash
# Creates .venv/ in the repo root if it is missing and installs the project (and its test extra) into it.
# Safe to re-run: an up-to-date venv is left as it is. pip runs as `python -m pip`, so a copied venv
# installs into itself (its `pip` script names the interpreter of the venv it was copied from).
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi
