"""DocVQA (single-page, 2020 release): questions on scanned industry documents.

Raw folder (https://rrc.cvc.uab.es/?ch=17, Task 1 annotations and images, each split's archive
unpacked into its own folder):

    train/train_v1.0_withQT.json   train/documents/{name}.png
    val/val_v1.0_withQT.json       val/documents/{name}.png
    test/test_v1.0.json            test/documents/{name}.png

(`{split}_v1.0.json`, the release without question types, is read when `_withQT` is absent.)
Each file holds `data: [{questionId, question, question_types, image: "documents/....png", docId,
ucsf_document_id, ucsf_document_page_no, answers (absent in test)}]`; `image` is relative to the
split's folder.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from paligemma_jax.data.builders.raw_files import (
    RawFilesBuilder, image_bytes, image_feature, load_json, raw_path, text, texts)


class DocVqa(RawFilesBuilder):
  """DocVQA: train / validation with their answers, test without."""

  name = "docvqa"
  HOMEPAGE = "https://www.docvqa.org/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  _SPLITS = {"train": "train", "validation": "val", "test": "test"}  # split -> release folder

  def features(self) -> dict[str, Any]:
    return {
        "image": image_feature("png"),
        "image_filename": tfds.features.Text(),  # "documents/....png", relative to the split.
        "question_id": np.int64,
        "question": tfds.features.Text(),
        "answers": tfds.features.Sequence(tfds.features.Text()),
        "question_types": tfds.features.Sequence(tfds.features.Text()),
        "doc_id": np.int64,
        "ucsf_document_id": tfds.features.Text(),
        "ucsf_document_page_no": tfds.features.Text(),
    }

  def splits(self) -> tuple[str, ...]:
    return tuple(self._SPLITS)

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    folder = self._SPLITS[split]
    return [raw_path(raw_dir, f"{folder}/{folder}_v1.0_withQT.json",
                     f"{folder}/{folder}_v1.0.json")]

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    annotations = self.required_files(raw_dir, split)[0]
    for row in load_json(annotations)["data"]:
      yield row["questionId"], {
          "image": image_bytes(annotations.parent / row["image"], raw_dir),
          "image_filename": row["image"],
          "question_id": row["questionId"],
          "question": row["question"],
          "answers": texts(row.get("answers")),
          "question_types": texts(row.get("question_types")),
          "doc_id": row.get("docId", -1),
          "ucsf_document_id": text(row.get("ucsf_document_id")),
          "ucsf_document_page_no": text(row.get("ucsf_document_page_no")),
      }
