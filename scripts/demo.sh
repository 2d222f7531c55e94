#!/usr/bin/env bash
# Runs the demo (creating .venv/ first if it is missing): fine-tunes a tiny PaliGemma from scratch
# on a toy shapes task on the CPU, evaluates it on held-out images and runs one through the
# inference Pipeline with a PNG overlay. Flags: --workdir DIR, --steps N, --quick, --image I.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export TF_CPP_MIN_LOG_LEVEL=3
exec .venv/bin/python -m paligemma_jax.training.demo "$@"
