"""ChartQA: questions on charts, human-written (`human`) or generated from summaries (`augmented`).

Raw folder (https://github.com/vis-nlp/ChartQA, "ChartQA Dataset" unzipped; the folder itself or
its parent may be given):

    train/train_human.json   train/train_augmented.json   train/png/{imgname}
    val/val_human.json       val/val_augmented.json       val/png/{imgname}
    test/test_human.json     test/test_augmented.json     test/png/{imgname}

Each file is a list of `{imgname, query, label}`. The release has no question ids: `question_id`
is the row's index in its file.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from paligemma_jax.data.builders.raw_files import (
    RawFilesBuilder, image_bytes, image_feature, load_json, raw_path, text)

_TOP_FOLDER = "ChartQA Dataset"


class ChartQa(RawFilesBuilder):
  """ChartQA, one config per question source; splits train / validation / test, one answer each."""

  name = "chartqa"
  HOMEPAGE = "https://github.com/vis-nlp/ChartQA"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="human", description="Human-written questions."),
      tfds.core.BuilderConfig(name="augmented", description="Questions generated from summaries."),
  ]
  _SPLITS = {"train": "train", "validation": "val", "test": "test"}  # split -> release folder

  def features(self) -> dict[str, Any]:
    return {
        "image": image_feature("png"),
        "image_filename": tfds.features.Text(),  # imgname
        "question_id": np.int64,
        "question": tfds.features.Text(),  # query
        "answer": tfds.features.Text(),  # label
        "answers": tfds.features.Sequence(tfds.features.Text()),  # [label]
    }

  def splits(self) -> tuple[str, ...]:
    return tuple(self._SPLITS)

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    stem = f"{self._SPLITS[split]}/{self._SPLITS[split]}_{self.builder_config.name}.json"
    return [raw_path(raw_dir, stem, f"{_TOP_FOLDER}/{stem}")]

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    annotations = self.required_files(raw_dir, split)[0]
    for index, row in enumerate(load_json(annotations)):
      answer = text(row["label"])
      yield index, {
          "image": image_bytes(annotations.parent / "png" / row["imgname"], raw_dir),
          "image_filename": row["imgname"],
          "question_id": index,
          "question": row["query"],
          "answer": answer,
          "answers": [answer],
      }
