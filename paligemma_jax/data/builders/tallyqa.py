"""TallyQA: counting questions on COCO and Visual Genome images; the answer is a count.

Raw folder (https://github.com/manoja328/TallyQA_dataset: tallyqa.zip; COCO 2014 and Visual
Genome images unzipped beside it, so each row's `image` path resolves from the folder):

    train.json   test.json
    train2014/COCO_train2014_....jpg   val2014/COCO_val2014_....jpg
    VG_100K/{id}.jpg   VG_100K_2/{id}.jpg

Each file is a list of `{image, image_id, question, question_id, answer (int), data_source,
issimple}`. The release marks simple / complex questions (`issimple`) in test only: where a row
lacks it, `issimple` is -1 (unknown), else 1 or 0.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from paligemma_jax.data.builders.raw_files import (
    RawFilesBuilder, image_bytes, image_feature, load_json, raw_path, text)


class TallyQa(RawFilesBuilder):
  """TallyQA: splits train / test; `answer` the count, `answers` its decimal text."""

  name = "tallyqa"
  HOMEPAGE = "https://github.com/manoja328/TallyQA_dataset"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

  def features(self) -> dict[str, Any]:
    return {
        "image": image_feature("jpeg"),
        "image_id": np.int64,
        "image_filename": tfds.features.Text(),  # The row's `image`, e.g. "VG_100K/2.jpg".
        "question_id": np.int64,
        "question": tfds.features.Text(),
        "answer": np.int32,
        "answers": tfds.features.Sequence(tfds.features.Text()),  # [str(answer)]
        "data_source": tfds.features.Text(),  # "amt", "imported_genome", "imported_vqa", ...
        "issimple": np.int32,  # 1 simple, 0 complex, -1 not released (train).
    }

  def splits(self) -> tuple[str, ...]:
    return ("train", "test")

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    return [raw_path(raw_dir, f"{split}.json")]

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for row in load_json(self.required_files(raw_dir, split)[0]):
      answer = int(row["answer"])
      issimple = row.get("issimple")
      yield row["question_id"], {
          "image": image_bytes(raw_dir / row["image"], raw_dir),
          "image_id": row["image_id"],
          "image_filename": row["image"],
          "question_id": row["question_id"],
          "question": row["question"],
          "answer": answer,
          "answers": [str(answer)],
          "data_source": text(row.get("data_source")),
          "issimple": -1 if issimple is None else int(bool(issimple)),
      }
