"""VQAv2 and OK-VQA: the VQA-format question and annotation JSON files over COCO images.

Raw folder for `vqav2` (https://visualqa.org/download.html, COCO images unzipped beside them):

    v2_OpenEnded_mscoco_train2014_questions.json    v2_mscoco_train2014_annotations.json
    v2_OpenEnded_mscoco_val2014_questions.json      v2_mscoco_val2014_annotations.json
    v2_OpenEnded_mscoco_test2015_questions.json     v2_OpenEnded_mscoco_test-dev2015_questions.json
    train2014/COCO_train2014_{image_id:012d}.jpg    val2014/COCO_val2014_{image_id:012d}.jpg
    test2015/COCO_test2015_{image_id:012d}.jpg      (test-dev's images are in test2015/)

Raw folder for `okvqa` (https://okvqa.allenai.org/download.html):

    OpenEnded_mscoco_train2014_questions.json       mscoco_train2014_annotations.json
    OpenEnded_mscoco_val2014_questions.json         mscoco_val2014_annotations.json
    train2014/...jpg                                val2014/...jpg

Questions files hold `questions: [{image_id, question, question_id}]`; annotation files hold
`annotations: [{question_id, image_id, answers: [{answer, answer_confidence, answer_id}] (10),
multiple_choice_answer, answer_type, question_type}]` (OK-VQA's answers add `raw_answer`, kept as
`raw_answers`). Test splits have no annotation file: their `answers` are empty and the answer
fields "". A few VQAv2 test questions name an image that test2015/ lacks (big_vision saw this
too): those questions are skipped and counted in a warning; a missing image elsewhere stops the
build.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from paligemma_jax.data.builders.raw_files import (
    MissingRawFile, RawFilesBuilder, image_bytes, image_feature, load_json, raw_path, text, texts)


def vqa_features() -> dict[str, Any]:
  """The features VQAv2 and OK-VQA share."""
  return {
      "image": image_feature("jpeg"),
      "image_id": np.int64,
      "image_filename": tfds.features.Text(),
      "question_id": np.int64,
      "question": tfds.features.Text(),
      "answers": tfds.features.Sequence(tfds.features.Text()),  # All 10, in release order.
      "answer_confidences": tfds.features.Sequence(tfds.features.Text()),  # "yes" / "maybe" / "no"
      "multiple_choice_answer": tfds.features.Text(),  # The most frequent answer.
      "answer_type": tfds.features.Text(),  # "yes/no", "number", "other".
      "question_type": tfds.features.Text(),  # "what color is the", ...
  }


def vqa_examples(raw_dir: pathlib.Path, questions_file: pathlib.Path,
                 annotations_file: pathlib.Path | None, image_folder: str,
                 skip_missing_images: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
  """Examples of one VQA-format split; `image_folder` is "train2014", "val2014" or "test2015"."""
  skipped = []
  annotations: Mapping[int, Mapping[str, Any]] = {}
  if annotations_file is not None:
    annotations = {a["question_id"]: a for a in load_json(annotations_file)["annotations"]}
  for q in load_json(questions_file)["questions"]:
    if annotations_file is not None and q["question_id"] not in annotations:
      raise ValueError(f"question {q['question_id']} of {questions_file.name} has no annotation "
                       f"in {annotations_file.name}")
    a = annotations.get(q["question_id"], {})
    filename = f"{image_folder}/COCO_{image_folder}_{q['image_id']:012d}.jpg"
    try:
      image = image_bytes(raw_dir / filename, raw_dir)
    except MissingRawFile:
      if not skip_missing_images:
        raise
      skipped.append(filename)
      continue
    yield q["question_id"], {
        "image": image,
        "image_id": q["image_id"],
        "image_filename": filename,
        "question_id": q["question_id"],
        "question": q["question"],
        "answers": texts(x["answer"] for x in a.get("answers", [])),
        "answer_confidences": texts(x.get("answer_confidence") for x in a.get("answers", [])),
        "multiple_choice_answer": text(a.get("multiple_choice_answer")),
        "answer_type": text(a.get("answer_type")),
        "question_type": text(a.get("question_type")),
    }
  if skipped:
    logging.warning("%s: skipped %d questions whose image is missing (first: %s in %s)",
                    questions_file.name, len(skipped), skipped[0], raw_dir)


class Vqav2(RawFilesBuilder):
  """VQAv2: open-ended questions on COCO with 10 answers each (test splits without answers)."""

  name = "vqav2"
  HOMEPAGE = "https://visualqa.org/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  # split -> (question/annotation file stem, image folder); test-dev uses test2015's images.
  _SPLITS = {"train": ("train2014", "train2014"), "validation": ("val2014", "val2014"),
             "test": ("test2015", "test2015"), "test_dev": ("test-dev2015", "test2015")}

  def features(self) -> dict[str, Any]:
    return vqa_features()

  def splits(self) -> tuple[str, ...]:
    return tuple(self._SPLITS)

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    stem, folder = self._SPLITS[split]
    files = [raw_path(raw_dir, f"v2_OpenEnded_mscoco_{stem}_questions.json")]
    if not stem.startswith("test"):
      files.append(raw_path(raw_dir, f"v2_mscoco_{stem}_annotations.json"))
    raw_path(raw_dir, folder)  # The image folder, checked before anything is written.
    return files

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    files = self.required_files(raw_dir, split)
    return vqa_examples(raw_dir, files[0], files[1] if len(files) > 1 else None,
                        self._SPLITS[split][1], skip_missing_images=split.startswith("test"))


class OkVqa(RawFilesBuilder):
  """OK-VQA: outside-knowledge questions on COCO val/train 2014, 10 answers each."""

  name = "okvqa"
  HOMEPAGE = "https://okvqa.allenai.org/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  _SPLITS = {"train": "train2014", "validation": "val2014"}

  def features(self) -> dict[str, Any]:
    return {**vqa_features(), "raw_answers": tfds.features.Sequence(tfds.features.Text())}

  def splits(self) -> tuple[str, ...]:
    return tuple(self._SPLITS)

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    stem = self._SPLITS[split]
    files = [raw_path(raw_dir, f"OpenEnded_mscoco_{stem}_questions.json"),
             raw_path(raw_dir, f"mscoco_{stem}_annotations.json")]
    raw_path(raw_dir, stem)  # The image folder.
    return files

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    questions, annotations_file = self.required_files(raw_dir, split)
    raw_answers = {a["question_id"]: texts(x.get("raw_answer") for x in a["answers"])
                   for a in load_json(annotations_file)["annotations"]}
    for key, example in vqa_examples(raw_dir, questions, annotations_file, self._SPLITS[split]):
      yield key, {**example, "raw_answers": raw_answers[key]}
