"""The README's demo (`python -m paligemma_jax.training.demo`, what scripts/demo.sh runs): with --quick
every stage runs on a fresh folder — data, training through the real trainer, held-out
evaluation, Pipeline inference with an overlay — and says so. Learning itself is measured by the
full run (see the demo's docstring), not here: a handful of steps learns nothing."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import PIL.Image

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# INFO records shown, as absl's app.run or a user's logging setup shows them.
SHOW_INFO = ("import logging, runpy, sys; logging.basicConfig(level=logging.INFO); "
             "runpy.run_module('paligemma_jax.training.demo', run_name='__main__')")


def test_quick_demo_runs_every_stage(tmp_path):
  workdir = tmp_path / "demo"
  # As a user's shell runs it: one device, every backend probed (no JAX_PLATFORMS).
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  run = subprocess.run([sys.executable, "-c", SHOW_INFO, "--quick", "--workdir", str(workdir)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  out = run.stdout
  # Quiet start-up (test_quiet_startup.py): no backend-probe noise among the INFO records.
  assert "Unable to initialize backend" not in run.stderr, run.stderr[-2000:]

  # 1. data and tokenizer
  assert "[1/4] data" in out
  data = workdir / "data"
  assert (data / "tokenizer.model").is_file()
  assert sum(1 for _ in open(data / "train.jsonl")) > 0
  assert f"in {data}" in out

  # 2. training through training.train: its progress line, metrics and final params checkpoint
  assert "[2/4] train" in out
  assert "train: 100%" in run.stderr  # tqdm's line
  steps = [json.loads(line)["step"] for line in open(workdir / "train" / "metrics.jsonl")]
  assert steps[0] == 1 and steps[-1] == 6
  assert (workdir / "train" / "params").is_dir()
  assert (workdir / "train" / "model_config.json").is_file()
  loss_line = next(line for line in out.splitlines() if "at the first step" in line)
  assert "at the last: fell" in loss_line

  # 3. held-out accuracy per kind of row
  assert "[3/4] evaluate" in out
  for kind in ("caption", "answer", "detect", "all"):
    assert any(line.split()[:1] == [kind] and "%" in line for line in out.splitlines()), kind

  # 4. the Pipeline's outputs for the three prompts and a valid PNG overlay
  assert "[4/4] infer" in out
  for prompt in ("'caption en'", "'answer en what colour is the", "'detect "):
    assert any(line.strip().startswith(prompt) and " -> " in line for line in out.splitlines())
  overlay = workdir / "overlay.png"
  assert "overlay of the detected box" in out and str(overlay) in out
  assert overlay.read_bytes()[:8] == PNG_SIGNATURE
  with PIL.Image.open(overlay) as image:
    image.verify()
  with PIL.Image.open(overlay) as image:
    assert image.format == "PNG" and image.size == (256, 256)
  assert "done in" in out


def test_demo_scorer_reads_boxes_as_the_box_evaluator_does():
  """The demo's `detect` scoring is the project's parser + box_accuracy.box_iou >= 0.5 on the
  first object: a hit exactly where the evaluator's IoU says so."""
  from paligemma_jax.evaluation.box_accuracy import box_iou
  from paligemma_jax.inference.parsers import box_from_bins
  from paligemma_jax.training.demo_data import correct
  target_loc = (20, 72, 389, 440)
  target = "".join(f"<loc{b:04d}>" for b in target_loc) + " red circle"
  hits = set()
  for shift in range(0, 400, 20):
    loc = tuple(b + shift for b in target_loc)
    prediction = "".join(f"<loc{b:04d}>" for b in loc) + " red circle"
    want = box_iou(box_from_bins(loc), box_from_bins(target_loc)) >= 0.5
    assert correct("detect red circle", prediction, target) == want, shift
    hits.add(want)
  assert hits == {True, False}
  second = "<loc0500><loc0500><loc0900><loc0900> blue square"
  assert correct("detect red circle", target + " ; " + second, target)  # the first object
  assert not correct("detect red circle", second + " ; " + target, target)
  assert not correct("detect red circle", "<loc0389><loc0072><loc0020><loc0440> red circle",
                     target)  # ymax above ymin: no object
