"""A toy task that a tiny PaliGemma learns in minutes on a CPU: coloured shapes at positions.

Each image holds one shape (circle, square or triangle) in one colour at one of six places (left
or right, top / middle / bottom). Every image gives three rows, written to JSONL in
big_vision's `bv:jsonl` layout ({"image", "prefix", "suffix"}):

    caption en                                -> "a red circle on the left"
    answer en what colour is the circle?      -> "red"
    detect red circle                         -> "<loc0012><loc0034><loc0456><loc0478> red circle"

    python -m paligemma_jax.training.demo_data --out /tmp/shapes   # train.jsonl, test.jsonl,
                                                                   # images/, tokenizer.model

`ensure_demo_data(dir)` writes it once (deterministic for a seed) and returns the paths; the
stand-in tokenizer (data/standin_tokenizer.py) is trained into the same folder.
"""

from __future__ import annotations

import argparse
import json
import pathlib

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
      cy = ROWS[rng.integers(len(ROWS))]
      image, box = draw(shape, colour, COLUMNS[column], cy)
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


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="folder to write the task into")
  parser.add_argument("--num_train", type=int, default=1000)
  parser.add_argument("--num_test", type=int, default=60)
  args = parser.parse_args(argv)
  print(ensure_demo_data(args.out, args.num_train, args.num_test))


if __name__ == "__main__":
  main()
