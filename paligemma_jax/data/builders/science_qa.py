"""ScienceQA: multiple-choice science questions; the image subset (ScienceQA-IMG) PaliGemma uses.

Raw folder (https://scienceqa.github.io/ → the release's `data/scienceqa`, with the train / val /
test image archives unzipped into `images/`, or beside the json files):

    problems.json
    images/{train,val,test}/{pid}/image.png      (or {train,val,test}/{pid}/image.png)

`problems.json` maps a problem id to `{question, choices, answer (index), hint, image ("image.png"
or null), task, grade, subject, topic, category, skill, lecture, solution, split}`; the split comes
from the problem's own `split` field ("val" is written as `validation`). Problems without an image
are left out: every example has an image.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from paligemma_jax.data.builders.raw_files import (
    RawFilesBuilder, image_bytes, image_feature, load_json, raw_path, text, texts)

_TEXT_FIELDS = ("hint", "lecture", "solution", "task", "grade", "subject", "topic", "category",
                "skill")


class ScienceQa(RawFilesBuilder):
  """ScienceQA-IMG: splits train / validation / test, choices and the correct one's index."""

  name = "science_qa"
  HOMEPAGE = "https://scienceqa.github.io/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  _SPLITS = {"train": "train", "validation": "val", "test": "test"}  # split -> released `split`

  def features(self) -> dict[str, Any]:
    return {
        "image": image_feature("png"),
        "question_id": np.int64,  # The problem id.
        "question": tfds.features.Text(),
        "choices": tfds.features.Sequence(tfds.features.Text()),
        "answer_index": np.int32,  # The released `answer`.
        "answer": tfds.features.Text(),  # choices[answer_index]
        "answers": tfds.features.Sequence(tfds.features.Text()),  # [answer]
        **{name: tfds.features.Text() for name in _TEXT_FIELDS},  # As released ("" when empty).
    }

  def splits(self) -> tuple[str, ...]:
    return tuple(self._SPLITS)

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    return [raw_path(raw_dir, "problems.json")]

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    released_split = self._SPLITS[split]
    for pid, p in load_json(self.required_files(raw_dir, split)[0]).items():
      if p["split"] != released_split or not p.get("image"):
        continue
      image = raw_path(raw_dir, f"images/{released_split}/{pid}/{p['image']}",
                       f"{released_split}/{pid}/{p['image']}")
      choices = texts(p["choices"])
      yield int(pid), {
          "image": image_bytes(image, raw_dir),
          "question_id": int(pid),
          "question": p["question"],
          "choices": choices,
          "answer_index": p["answer"],
          "answer": choices[p["answer"]],
          "answers": [choices[p["answer"]]],
          **{name: text(p.get(name)) for name in _TEXT_FIELDS},
      }
