"""TextVQA 0.5.1: questions that need reading text in Open Images photos, 10 answers each.

Raw folder (https://textvqa.org/dataset/; train_val_images.zip and test_images.zip unzipped):

    TextVQA_0.5.1_train.json   TextVQA_0.5.1_val.json   TextVQA_0.5.1_test.json
    train_images/{image_id}.jpg        (train and val images)
    test_images/{image_id}.jpg

Each file holds `data: [{question, question_id, image_id, answers (10; absent in test),
image_classes, set_name, ...}]`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from paligemma_jax.data.builders.raw_files import (
    RawFilesBuilder, image_bytes, image_feature, load_json, raw_path, texts)


class TextVqa(RawFilesBuilder):
  """TextVQA: train / validation with 10 answers, test without."""

  name = "textvqa"
  HOMEPAGE = "https://textvqa.org/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  # split -> (file suffix, image folder)
  _SPLITS = {"train": ("train", "train_images"), "validation": ("val", "train_images"),
             "test": ("test", "test_images")}

  def features(self) -> dict[str, Any]:
    return {
        "image": image_feature("jpeg"),
        "image_id": tfds.features.Text(),  # Open Images id, e.g. "0054c91397f2fe05".
        "image_filename": tfds.features.Text(),
        "question_id": np.int64,
        "question": tfds.features.Text(),
        "answers": tfds.features.Sequence(tfds.features.Text()),
        "image_classes": tfds.features.Sequence(tfds.features.Text()),
    }

  def splits(self) -> tuple[str, ...]:
    return tuple(self._SPLITS)

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    return [raw_path(raw_dir, f"TextVQA_0.5.1_{self._SPLITS[split][0]}.json")]

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    folder = self._SPLITS[split][1]
    for row in load_json(self.required_files(raw_dir, split)[0])["data"]:
      filename = f"{folder}/{row['image_id']}.jpg"
      yield row["question_id"], {
          "image": image_bytes(raw_dir / filename, raw_dir),
          "image_id": row["image_id"],
          "image_filename": filename,
          "question_id": row["question_id"],
          "question": row["question"],
          "answers": texts(row.get("answers")),
          "image_classes": texts(row.get("image_classes")),
      }
