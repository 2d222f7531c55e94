"""A persistent JAX compilation cache for one test module: functions rebuilt with the same HLO
(each `train()` call, each `make_train_step`) compile once, also across subprocesses that get
`env()`. The previous settings come back when the module is done."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

_NAMES = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
          "jax_persistent_cache_min_entry_size_bytes")


@contextlib.contextmanager
def compilation_cache(directory: str) -> Iterator[str]:
  saved = {name: getattr(jax.config, name) for name in _NAMES}
  for name, value in zip(_NAMES, (directory, 0.0, 0)):
    jax.config.update(name, value)
  try:
    yield directory
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)


def env(directory: str) -> dict[str, str]:
  """Environment variables that give a subprocess the same cache."""
  return {"JAX_COMPILATION_CACHE_DIR": directory, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
