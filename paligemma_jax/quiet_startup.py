"""Quiet start-up for the command-line entry points: no backend-probe noise, real warnings kept.

When JAX picks its backend it tries every platform it knows, and on a machine without a TPU (or
GPU) it logs `Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so ...` at INFO
level. absl's `app.run` (infer.py, convert_checkpoint.py) shows INFO records, so every run began
with a line that reads like an error. `quiet_startup()` drops exactly those records from JAX's
backend logger; anything else it logs (the fallback-to-CPU warning, a failing plugin) still shows.
"""

from __future__ import annotations

import logging

BACKEND_LOGGER = "jax._src.xla_bridge"  # where jax logs its backend probe
PROBE_MESSAGE = "Unable to initialize backend"


class _DropBackendProbe(logging.Filter):
  """Drops the INFO records of a backend that failed to initialise quietly (an absent TPU/GPU)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno <= logging.INFO and
                str(record.getMessage()).startswith(PROBE_MESSAGE))


_FILTER = _DropBackendProbe()


def quiet_startup() -> None:
  """Installs the filter (idempotent); call it first thing in every entry point."""
  logger = logging.getLogger(BACKEND_LOGGER)
  if _FILTER not in logger.filters:
    logger.addFilter(_FILTER)
