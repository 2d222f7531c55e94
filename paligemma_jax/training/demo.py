"""The README's demo: fine-tune a tiny PaliGemma from scratch on a CPU, evaluate it, run it.

  bash scripts/demo.sh [--workdir DIR] [--steps N] [--quick]

Four stages, each printed as it runs, all through the library's own entry points:
  1. data      the toy shapes task and the stand-in tokenizer (training/demo_data.py) -> DIR/data
  2. train     configs/demo.py through `training.train`, the code `train.py` runs -> DIR/train
  3. evaluate  held-out accuracy of DIR/train/params per kind of row (demo_data's evaluator)
  4. infer     one held-out image through `inference.Pipeline`: a caption, an answer and a box,
               drawn with `save_overlay` -> DIR/overlay.png

The same run by hand:
  python train.py --config configs/demo.py:DIR/data --workdir DIR/train
  python -m paligemma_jax.training.demo_data --out DIR/data --evaluate DIR/train
  python infer.py --checkpoint DIR/train/params --tokenizer DIR/data/tokenizer.model \
      --image DIR/data/images/test_00000.png --prompt "detect ..." --overlay out.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import runpy
import tempfile
import time

import PIL.Image

from paligemma_jax.quiet_startup import quiet_startup

REPO = pathlib.Path(__file__).resolve().parents[2]  # paligemma_jax/training/demo.py -> the repo
CONFIG = REPO / "configs" / "demo.py"
QUICK_STEPS = 6
ACCURACY_TARGET = 0.9
LOSS_TARGET = 5.0  # the loss falls at least this many times (issue 12)
OVERLAY_SCALE = 4  # the 64 px toy image is drawn 4x larger so the box and its label are legible


def stage(number: int, text: str) -> None:
  print(f"\n[{number}/4] {text}", flush=True)


def make_data(workdir: pathlib.Path) -> dict[str, str]:
  from paligemma_jax.training.demo_data import ensure_demo_data
  t0 = time.perf_counter()
  data = ensure_demo_data(workdir / "data")
  count = lambda path: sum(1 for _ in open(path))
  print(f"  {count(data['train'])} training rows, {count(data['test'])} held-out rows "
        f"(caption / answer / detect per image) in {workdir / 'data'}")
  print(f"  stand-in tokenizer: {data['tokenizer']}  ({time.perf_counter() - t0:.1f}s)")
  return data


def train(data: dict[str, str], train_dir: pathlib.Path, steps: int | None) -> dict[str, float]:
  """configs/demo.py's config (what `train.py --config configs/demo.py:DATA` loads) -> train()."""
  from paligemma_jax.training import train as run_training
  # ml_collections' config_flags loads a config file the same way: run it, call get_config.
  config = runpy.run_path(str(CONFIG))["get_config"](str(pathlib.Path(data["train"]).parent))
  if steps is not None:
    config.total_steps = steps
  m = config.model
  print(f"  {CONFIG.relative_to(REPO)}: random init, SigLIP {m.vision.depth}x{m.vision.width} "
        f"at {m.vision.image_size}px + Gemma {m.text.depth}x{m.text.width}; "
        f"{config.total_steps} steps of batch {config.input.batch_size}, "
        f"{config.optimizer.name} lr {config.optimizer.lr}", flush=True)
  t0 = time.perf_counter()
  run_training(config, str(train_dir))
  took = time.perf_counter() - t0
  losses = [r["train_loss"] for r in map(json.loads, open(train_dir / "metrics.jsonl"))
            if "train_loss" in r]
  first, last = losses[0], losses[-1]
  print(f"  loss {first:.3f} at the first step -> {last:.3f} at the last: fell {first / last:.1f}x "
        f"(target >= {LOSS_TARGET:.0f}x) in {took:.0f}s")
  print(f"  final params: {train_dir / 'params'}; curve: {train_dir / 'loss.png'}")
  return {"first_loss": first, "last_loss": last, "train_s": took}


def evaluate(data: dict[str, str], train_dir: pathlib.Path, quick: bool) -> dict[str, float]:
  from paligemma_jax.training.demo_data import evaluate_workdir
  t0 = time.perf_counter()
  results = evaluate_workdir(str(train_dir), data)
  for name, value in results.items():
    kind = name.split("/")[-1] if "/" in name else "all"
    rule = {"detect": "IoU >= 0.5 and the name", "all": ""}.get(kind, "exact match")
    print(f"  {kind:8s} {value:6.1%}  {rule}".rstrip())
  took = time.perf_counter() - t0
  if quick:
    print(f"  (--quick: too few steps to learn anything; no target; {took:.1f}s)")
  else:
    verdict = "meets" if results["acc"] >= ACCURACY_TARGET else "is BELOW"
    print(f"  ({verdict} the {ACCURACY_TARGET:.0%} target; {took:.1f}s)")
  return results


def infer(data: dict[str, str], train_dir: pathlib.Path, overlay: pathlib.Path,
          index: int = 0) -> None:
  """The three rows of held-out image `index`, through the Pipeline as a user would call it."""
  from paligemma_jax.inference import Pipeline, parse_detections, save_overlay
  from paligemma_jax.training.demo_data import correct
  folder = pathlib.Path(data["test"]).parent
  rows = [json.loads(line) for line in open(data["test"])]
  names = sorted({r["image"] for r in rows})
  rows = [r for r in rows if r["image"] == names[index % len(names)]]
  image = PIL.Image.open(folder / rows[0]["image"]).convert("RGB")
  t0 = time.perf_counter()
  pipe = Pipeline.load(train_dir / "params", data["tokenizer"])
  results = pipe([image] * len(rows), [r["prefix"] for r in rows], max_new_tokens=12)
  print(f"  image {folder / rows[0]['image']} ({image.width}x{image.height}), "
        f"{time.perf_counter() - t0:.1f}s")
  objects = []
  for row, result in zip(rows, results):
    mark = "right" if correct(row["prefix"], result.text, row["suffix"]) else "WRONG"
    print(f"  {row['prefix']!r:40s} -> {result.text!r}  [{mark}; expected {row['suffix']!r}]")
    objects += result.objects or []
  hw = (image.height, image.width)
  for o in objects:
    print(f"  detected {o.label!r} at pixels (ymin, xmin, ymax, xmax) = {o.box}")
  # The expected box too, in the palette's next colour, so the overlay shows how close it got.
  expected = [dataclasses.replace(o, label="expected")
              for r in rows if r["prefix"].startswith("detect")
              for o in parse_detections(r["suffix"], hw)]
  big = image.resize((image.width * OVERLAY_SCALE, image.height * OVERLAY_SCALE),
                     PIL.Image.NEAREST)
  save_overlay(big, [dataclasses.replace(o, box=tuple(v * OVERLAY_SCALE for v in o.box))
                     for o in objects + expected], overlay)
  print(f"  overlay of the detected box{'es' * (len(objects) != 1)} ({len(objects)}) and the "
        f"expected one, {OVERLAY_SCALE}x enlarged: {overlay}")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", help="where data, checkpoints and the overlay go "
                      "(default: a new folder under the temp dir; kept)")
  parser.add_argument("--steps", type=int, help="training steps (default: configs/demo.py's)")
  parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps: every stage "
                      "runs, nothing is learnt (for tests)")
  parser.add_argument("--image", type=int, default=0, help="which held-out image to run in "
                      "stage 4 (0 = the first)")
  args = parser.parse_args(argv)
  quiet_startup()
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # as train.py: Orbax logs each save at INFO
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="paligemma_demo_")).resolve()
  train_dir = workdir / "train"
  steps = QUICK_STEPS if args.quick and args.steps is None else args.steps
  t0 = time.perf_counter()
  print(f"PaliGemma demo in {workdir}: fine-tune from scratch -> evaluate -> infer, on "
        f"{_devices()}")
  if (train_dir / "checkpoints").exists():
    print(f"  ({train_dir} holds a run: the trainer resumes it; pass a new --workdir to start "
          "afresh)")

  stage(1, "data: coloured shapes at positions, three kinds of rows per image")
  data = make_data(workdir)
  stage(2, "train: a tiny PaliGemma from random init with training.train (as train.py)")
  train(data, train_dir, steps)
  stage(3, "evaluate: held-out images, each kind of row scored on its own")
  evaluate(data, train_dir, args.quick)
  stage(4, "infer: one held-out image through inference.Pipeline with the trained params")
  infer(data, train_dir, workdir / "overlay.png", args.image)
  print(f"\ndone in {time.perf_counter() - t0:.0f}s; everything is in {workdir}")


def _devices() -> str:
  import jax
  devices = jax.devices()
  return f"{len(devices)} {devices[0].platform.upper()} device{'s' * (len(devices) > 1)}"


if __name__ == "__main__":
  main()
