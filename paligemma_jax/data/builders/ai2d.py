"""AI2D: multiple-choice questions on grade-school science diagrams.

Raw folder (https://allenai.org/data/diagrams: ai2d-all.zip unzipped, ai2d_test_ids.csv beside):

    ai2d_test_ids.csv                  one image id per line; the rest is train
    questions/{id}.png.json            {imageName, questions: {text: {questionId, answerTexts,
                                         correctAnswer, abcLabel}}}
    annotations/{id}.png.json          {text: {T1: {rectangle: [[x0, y0], [x1, y1]],
                                         replacementText, value}, ...}, ...}
    images/{id}.png

Questions with `abcLabel` refer to the diagram's text labels by letter. The release draws no
letters, so for those questions the image is the released diagram with each text box painted
white and its `replacementText` written in (as big_vision builds AI2D), stored as PNG; all other
questions keep the released bytes.
"""

from __future__ import annotations

import functools
import io
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import tensorflow_datasets as tfds

from paligemma_jax.data.builders.raw_files import (
    RawFilesBuilder, image_bytes, image_feature, load_json, raw_path, texts)


@functools.cache
def _font(size: int) -> PIL.ImageFont.ImageFont:
  return PIL.ImageFont.load_default(size=size)  # Pillow's bundled font: nothing to download.


def draw_letters(encoded: bytes, text_boxes: Mapping[str, Mapping[str, Any]]) -> bytes:
  """The diagram with every text box blanked and its replacement letter drawn (PNG bytes)."""
  with PIL.Image.open(io.BytesIO(encoded)) as image:
    image = image.convert("RGB")
  draw = PIL.ImageDraw.Draw(image)
  for box in text_boxes.values():
    (x0, y0), (x1, y1) = box["rectangle"]
    x0, x1, y0, y1 = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
    draw.rectangle([x0, y0, x1, y1], fill="white")
    size = max(1, int(y1 - y0))
    label = str(box.get("replacementText", ""))
    while size > 1:  # The largest font whose text fits the box.
      left, top, right, bottom = draw.textbbox((0, 0), label, font=_font(size))
      if right - left <= x1 - x0 and bottom - top <= y1 - y0:
        break
      size -= 1
    left, top, right, _ = draw.textbbox((0, 0), label, font=_font(size))
    draw.text((x0 + (x1 - x0 - (right - left)) / 2 - left, y0 - top), label, fill="black",
              font=_font(size))
  out = io.BytesIO()
  image.save(out, format="PNG")
  return out.getvalue()


class Ai2d(RawFilesBuilder):
  """AI2D: splits train / test (by ai2d_test_ids.csv), 4 choices and the correct one's index."""

  name = "ai2d"
  HOMEPAGE = "https://allenai.org/data/diagrams"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

  def features(self) -> dict[str, Any]:
    return {
        "image": image_feature("png"),
        "image_id": tfds.features.Text(),  # "{id}" of images/{id}.png
        "image_filename": tfds.features.Text(),  # imageName
        "question_id": tfds.features.Text(),  # questionId, e.g. "0.png-0"
        "question": tfds.features.Text(),
        "choices": tfds.features.Sequence(tfds.features.Text()),  # answerTexts
        "answer_index": np.int32,  # correctAnswer
        "answer": tfds.features.Text(),  # choices[answer_index]
        "answers": tfds.features.Sequence(tfds.features.Text()),  # [answer]
        "abc_label": tfds.features.Scalar(np.bool_),
    }

  def splits(self) -> tuple[str, ...]:
    return ("train", "test")

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    return [raw_path(raw_dir, "ai2d_test_ids.csv"), raw_path(raw_dir, "questions")]

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    test_ids_file, questions_dir = self.required_files(raw_dir, split)
    test_ids = {line.strip() for line in test_ids_file.read_text().splitlines() if line.strip()}
    for path in sorted(questions_dir.glob("*.json")):
      released = load_json(path)
      image_id = released["imageName"].split(".")[0]
      if (image_id in test_ids) != (split == "test"):
        continue
      encoded = image_bytes(raw_dir / "images" / released["imageName"], raw_dir)
      lettered = None
      for question, q in released["questions"].items():
        if q["abcLabel"] and lettered is None:
          boxes = load_json(raw_path(raw_dir, f"annotations/{released['imageName']}.json"))
          lettered = draw_letters(encoded, boxes.get("text") or {})
        choices = texts(q["answerTexts"])
        yield q["questionId"], {
            "image": lettered if q["abcLabel"] else encoded,
            "image_id": image_id,
            "image_filename": released["imageName"],
            "question_id": q["questionId"],
            "question": question,
            "choices": choices,
            "answer_index": int(q["correctAnswer"]),
            "answer": choices[int(q["correctAnswer"])],
            "answers": [choices[int(q["correctAnswer"])]],
            "abc_label": bool(q["abcLabel"]),
        }
