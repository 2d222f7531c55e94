#!/usr/bin/env bash
# Runs the demo (creating .venv/ first if it is missing): a small random PaliGemma 2 on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m paligemma_jax.demo "$@"
