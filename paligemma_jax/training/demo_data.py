"""A toy task that a tiny PaliGemma learns in minutes on a CPU: coloured shapes at positions.

Each image holds one shape (circle, square or triangle) in one colour at one of six places (left
or right, top / middle / bottom), shifted by up to 2 pixels, so most held-out images are new.
Every image gives three rows, written to JSONL in big_vision's `bv:jsonl` layout ({"image",
"prefix", "suffix"}):

    caption en                                -> "a red circle on the left"
    answer en what colour is the circle?      -> "red"
    detect red circle                         -> "<loc0012><loc0034><loc0456><loc0478> red circle"

    python -m paligemma_jax.training.demo_data --out /tmp/shapes   # train.jsonl, test.jsonl,
                                                                   # images/, tokenizer.model
    python -m paligemma_jax.training.demo_data --out /tmp/shapes --evaluate WORKDIR
                                      # held-out accuracy of WORKDIR/params, per task

`evaluator(test_jsonl)` is the same check as a trainer `evaluate` hook: captions and answers by
exact match, boxes by IoU >= 0.5 with the right name.

`ensure_demo_data(dir)` writes it once (deterministic for a seed) and returns the paths; the
stand-in tokenizer (data/standin_tokenizer.py) is trained into the same folder.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

from paligemma_jax.data.standin_tokenizer import train_standin_tokenizer
from paligemma_jax.data.tokenizer import loc_tokens

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220),
           "yellow": (240, 210, 20)}
SHAPES = ("circle", "square", "triangle")
COLUMNS = {"left": 0.25, "right": 0.75}
ROWS = (0.2, 0.5, 0.8)
IMAGE_SIZE = 64
SHAPE_SIZE = 0.36  # side of the shape's box, as a fraction of the image
# Shifts of the centre (fractions of the image). Few distinct values keep each <loc> bin frequent
# enough for a model trained from scratch; 9 x 6 centres x 12 looks are mostly unseen when held out.
JITTERS = (-0.03, 0.0, 0.03)


def draw(shape: str, colour: str, cx: float, cy: float, size: int = IMAGE_SIZE
         ) -> tuple[PIL.Image.Image, tuple[float, float, float, float]]:
  """The image and the shape's normalised box (ymin, xmin, ymax, xmax)."""
  image = PIL.Image.new("RGB", (size, size), (235, 235, 235))
  half = SHAPE_SIZE / 2
  box = (cy - half, cx - half, cy + half, cx + half)
  y0, x0, y1, x1 = (v * size for v in box)
  pen = PIL.ImageDraw.Draw(image)
  fill = COLOURS[colour]
  if shape == "circle":
    pen.ellipse((x0, y0, x1, y1), fill=fill)
  elif shape == "square":
    pen.rectangle((x0, y0, x1, y1), fill=fill)
  else:
    pen.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
  return image, box


def rows_of(shape: str, colour: str, column: str, box) -> list[tuple[str, str]]:
  """(prefix, suffix) of the three tasks for one image."""
  return [("caption en", f"a {colour} {shape} on the {column}"),
          (f"answer en what colour is the {shape}?", colour),
          (f"detect {colour} {shape}", f"{loc_tokens(box)} {colour} {shape}")]


def write_split(out: pathlib.Path, name: str, num_images: int, rng: np.random.Generator) -> None:
  images = out / "images"
  images.mkdir(parents=True, exist_ok=True)
  with open(out / f"{name}.jsonl", "w") as f:
    for i in range(num_images):
      shape = SHAPES[rng.integers(len(SHAPES))]
      colour = list(COLOURS)[rng.integers(len(COLOURS))]
      column = list(COLUMNS)[rng.integers(len(COLUMNS))]
      cy = ROWS[rng.integers(len(ROWS))] + JITTERS[rng.integers(len(JITTERS))]
      cx = COLUMNS[column] + JITTERS[rng.integers(len(JITTERS))]
      image, box = draw(shape, colour, cx, cy)
      path = f"images/{name}_{i:05d}.png"
      image.save(out / path)
      for prefix, suffix in rows_of(shape, colour, column, box):
        f.write(json.dumps({"image": path, "prefix": prefix, "suffix": suffix}) + "\n")


def ensure_demo_data(out: str | pathlib.Path, num_train: int = 1000, num_test: int = 60,
                     seed: int = 0) -> dict[str, str]:
  """Writes the task into `out` unless it is there; returns {"train", "test", "tokenizer"}."""
  out = pathlib.Path(out).expanduser()
  paths = {"train": out / "train.jsonl", "test": out / "test.jsonl",
           "tokenizer": out / "tokenizer.model"}
  if not all(p.exists() for p in paths.values()):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    write_split(out, "test", num_test, rng)
    write_split(out, "train", num_train, rng)
    train_standin_tokenizer(out / "tokenizer")
  return {k: str(v) for k, v in paths.items()}


def correct(prefix: str, prediction: str, target: str) -> bool:
  """Exact match, or for `detect` rows: the first object's label equal to the target's and its
  box at IoU >= 0.5 (the project's parser and the box evaluator's IoU)."""
  if not prefix.startswith("detect"):
    return prediction.strip() == target
  # Imported here: generating the data needs neither jax nor the evaluators.
  from paligemma_jax.evaluation.box_accuracy import box_iou
  from paligemma_jax.inference.parsers import box_from_bins, parse_objects
  got, want = parse_objects(prediction), parse_objects(target)
  return bool(got) and got[0].label == want[0].label and box_iou(
      box_from_bins(got[0].loc), box_from_bins(want[0].loc)) >= 0.5


def evaluator(test_jsonl: str | pathlib.Path, batch_size: int = 32) -> Callable[[Any], dict]:
  """An `evaluate(predictor)` hook: accuracy per task ("caption", "answer", "detect") and all."""
  folder = pathlib.Path(test_jsonl).parent
  rows = [json.loads(line) for line in open(test_jsonl)]

  def evaluate(predict) -> dict[str, float]:
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(rows), batch_size):
      chunk = rows[i:i + batch_size]
      images = [PIL.Image.open(folder / r["image"]).convert("RGB") for r in chunk]
      texts = predict.generate(images, [r["prefix"] for r in chunk], max_new_tokens=12)
      for row, text in zip(chunk, texts):
        hits.setdefault(row["prefix"].split()[0], []).append(
            correct(row["prefix"], text, row["suffix"]))
    out = {f"acc/{k}": float(np.mean(v)) for k, v in hits.items()}
    out["acc"] = float(np.mean([h for v in hits.values() for h in v]))
    return out

  return evaluate


def evaluate_workdir(workdir: str, data: dict[str, str]) -> dict[str, float]:
  """Held-out accuracy of `workdir/params` (the trainer's final params)."""
  from paligemma_jax import checkpoints
  from paligemma_jax.api import make_processor
  from paligemma_jax.training.predictor import Predictor
  config, params = checkpoints.load_params(pathlib.Path(workdir) / "params")
  processor = make_processor(config, data["tokenizer"])
  return evaluator(data["test"])(Predictor(config, params, processor, step=-1))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="folder to write the task into")
  parser.add_argument("--num_train", type=int, default=1000)
  parser.add_argument("--num_test", type=int, default=60)
  parser.add_argument("--evaluate", metavar="WORKDIR", help="print held-out accuracy of "
                      "WORKDIR/params instead")
  args = parser.parse_args(argv)
  data = ensure_demo_data(args.out, args.num_train, args.num_test)
  if args.evaluate:
    for name, value in evaluate_workdir(args.evaluate, data).items():
      print(f"{name}: {value:.3f}")
  else:
    print(data)


if __name__ == "__main__":
  main()
