"""GQA 1.2: compositional questions on Visual Genome images, one answer each.

Raw folder (https://cs.stanford.edu/people/dorarad/gqa/download.html; questions1.2.zip and
images.zip unzipped, the question files directly in the folder or under `questions1.2/`):

    train_balanced_questions.json   val_balanced_questions.json   testdev_balanced_questions.json
    train_all_questions/train_all_questions_{0..9}.json
    val_all_questions.json          testdev_all_questions.json
    images/{imageId}.jpg

Each file maps a question id to `{imageId, question, answer, fullAnswer, isBalanced,
types: {structural, semantic, detailed}, groups: {global, local}, ...}`. Config `balanced` (the
default, what PaliGemma trains on) writes train/val/testdev_balanced; `all` the unbalanced sets.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from paligemma_jax.data.builders.raw_files import (
    MissingRawFile, RawFilesBuilder, image_bytes, image_feature, load_json, raw_path, text)

_QUESTIONS_FOLDER = "questions1.2"


class Gqa(RawFilesBuilder):
  """GQA, configs `balanced` and `all`; splits `{train,val,testdev}_{config}`."""

  name = "gqa"
  HOMEPAGE = "https://cs.stanford.edu/people/dorarad/gqa/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="balanced", description="The balanced question sets."),
      tfds.core.BuilderConfig(name="all", description="All questions (train_all is 14M)."),
  ]

  def features(self) -> dict[str, Any]:
    return {
        "image": image_feature("jpeg"),
        "image_id": tfds.features.Text(),  # imageId, e.g. "2354786" or "n161313".
        "question_id": tfds.features.Text(),  # The file's key.
        "question": tfds.features.Text(),
        "answer": tfds.features.Text(),
        "answers": tfds.features.Sequence(tfds.features.Text()),  # [answer]
        "full_answer": tfds.features.Text(),  # fullAnswer
        "is_balanced": tfds.features.Scalar(np.bool_),
        "types": {"structural": tfds.features.Text(), "semantic": tfds.features.Text(),
                  "detailed": tfds.features.Text()},
        "groups": {"global": tfds.features.Text(), "local": tfds.features.Text()},
    }

  def splits(self) -> tuple[str, ...]:
    return tuple(f"{s}_{self.builder_config.name}" for s in ("train", "val", "testdev"))

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    if split != "train_all":
      name = f"{split}_questions.json"
      return [raw_path(raw_dir, name, f"{_QUESTIONS_FOLDER}/{name}")]
    folder = raw_path(raw_dir, "train_all_questions", f"{_QUESTIONS_FOLDER}/train_all_questions")
    files = sorted(folder.glob("train_all_questions_*.json"))
    if not files:
      raise MissingRawFile(f"expected train_all_questions/train_all_questions_0.json in {raw_dir}")
    return files

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in self.required_files(raw_dir, split):
      for question_id, q in load_json(path).items():
        filename = f"images/{q['imageId']}.jpg"
        types, groups = q.get("types") or {}, q.get("groups") or {}
        answer = text(q.get("answer"))
        yield question_id, {
            "image": image_bytes(raw_dir / filename, raw_dir),
            "image_id": q["imageId"],
            "question_id": question_id,
            "question": q["question"],
            "answer": answer,
            "answers": [answer] if "answer" in q else [],
            "full_answer": text(q.get("fullAnswer")),
            "is_balanced": bool(q.get("isBalanced", False)),
            "types": {k: text(types.get(k)) for k in ("structural", "semantic", "detailed")},
            "groups": {k: text(groups.get(k)) for k in ("global", "local")},
        }
