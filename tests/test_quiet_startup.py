"""Quiet start-up: the entry points print no backend-probe noise ("Unable to initialize backend
'tpu'") on machines without the accelerator, and real warnings still show."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys

import pytest

import convert_fixtures as CF
from paligemma_jax.quiet_startup import BACKEND_LOGGER, quiet_startup

REPO = pathlib.Path(__file__).resolve().parents[1]
NOISE = "Unable to initialize backend"


def run_python(*args: str) -> subprocess.CompletedProcess:
  """A fresh interpreter that probes every backend, as a user's shell does (no JAX_PLATFORMS)."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=300)


class Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.DEBUG)
    self.messages: list[tuple[int, str]] = []

  def emit(self, record: logging.LogRecord) -> None:
    self.messages.append((record.levelno, record.getMessage()))


def test_filter_drops_only_the_backend_probe():
  logger = logging.getLogger(BACKEND_LOGGER)
  handler, level = Records(), logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  try:
    quiet_startup()
    quiet_startup()  # idempotent
    logger.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
    logger.info("Unable to initialize backend '%s': %s", "cuda", "no GPU")
    logger.warning("Unable to initialize backend 'rocm': a real failure")
    logger.info("Platform 'cpu' is experimental")
  finally:
    logger.removeHandler(handler)
    logger.setLevel(level)
  assert handler.messages == [(logging.WARNING, "Unable to initialize backend 'rocm': a real failure"),
                              (logging.INFO, "Platform 'cpu' is experimental")]


# Runs a script with every INFO record shown, as absl's app.run (infer.py) or a user's logging
# setup shows them: the probe's record reaches stderr unless the entry point drops it.
SHOW_INFO = ("import logging, runpy, sys; logging.basicConfig(level=logging.INFO); "
             "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.fixture(scope="module")
def machine_is_noisy() -> bool:
  """Whether starting JAX here logs the probe: else there is nothing to hide (a machine with a
  TPU) and the checks below prove nothing."""
  control = run_python("-c", "import logging; logging.basicConfig(level=logging.INFO); "
                       "import jax; print(jax.devices())")
  assert control.returncode == 0, control.stderr[-2000:]
  return NOISE in control.stderr


def test_convert_checkpoint_is_quiet(machine_is_noisy, tmp_path):
  if not machine_is_noisy:
    pytest.skip("JAX logs no backend probe on this machine")
  src = CF.write_big_vision_npz(str(tmp_path / "bv.npz"), CF.BV_PG2)
  run = run_python("-c", SHOW_INFO, "convert_checkpoint.py", "--src", src, "--dst",
                   str(tmp_path / "orbax"), "--verify", "--noprogress")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "verify: max |dlogit|" in run.stdout  # JAX ran a model: the backend was initialised
  assert NOISE not in run.stderr, run.stderr[-2000:]


# The demo's run in test_demo.py checks that it is quiet too.
