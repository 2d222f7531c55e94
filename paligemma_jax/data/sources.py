"""Random-access example sources for Grain: a built TFDS split (array_record) or a JSONL file.

A source is a `Sequence` of examples: `len(source)` and `source[i]` -> one example dict, the same
layout `tasks.py` reads (texts as bytes or str, ragged fields as lists), with images still
ENCODED (bytes, or a list of bytes for several images). Decoding happens later, per example, so
that a corrupt image fails only its own example (a counted skip, see input_pipeline.py).

- TFDS: `tfds.data_source` over array_record files; nothing is downloaded. A split stored only as
  tfrecord (TFDS's default) stops at start-up with the conversion command (to_array_record.py).
- JSONL (big_vision's `bv:jsonl` convention): one JSON object per line,
  `{"image": "rel/path.jpg" | ["a.jpg", "b.jpg"], "prefix": "caption en", "suffix": "..." | [...]}`,
  image paths relative to `image_dir` (default: the JSONL file's folder). Further keys are kept.
  A malformed line or a missing image fails only its own example, when it is read.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from paligemma_jax.data.tasks import Task, check_fields
from paligemma_jax.data.tfds_input import (TfdsSource, _tfds, check_image_fields, feature_tree,
                                           open_builder, skip_image_decoding, task_name)

CONVERT_COMMAND = "python -m paligemma_jax.data.to_array_record --dataset {name} --data_dir {data_dir}"


@dataclasses.dataclass(frozen=True)
class OpenedSource:
  """A source ready for Grain: its examples, its size and a name for messages and metrics."""

  name: str
  examples: Sequence[dict[str, Any]]

  def __len__(self) -> int:
    return len(self.examples)


def open_tfds(dataset: str, config: str, split: str, data_dir: str, task: Task,
              config_path: str = "input.members[i]") -> OpenedSource:
  """The array_record examples of a built TFDS split, images left encoded.

  Args:
    dataset: TFDS name ("coco_captions"), optionally with ":version".
    config: builder config ("" = the builder's default).
    split: TFDS split syntax ("train", "train[:90%]", "train+restval").
    data_dir: where the dataset is built ("" = TFDS's default).
    task: checked against the dataset's features now (one-line errors).
    config_path: the settings' path, named in errors.

  Raises:
    ValueError, one line, naming what exists: unknown dataset / config / split, task fields the
    dataset lacks, or a split stored only as tfrecord (with the command that converts it).
  """
  _, tfds = _tfds()
  name = f"{dataset}/{config}" if config else dataset
  source = TfdsSource(name, split, data_dir)
  # The files' own description: a builder class registered in this process would ignore the
  # alternative formats that to_array_record.py adds to dataset_info.json.
  builder = tfds.builder_from_directory(_open(source, config_path).data_dir)
  formats = {f.value for f in builder.info.available_file_formats()}
  if "array_record" not in formats:
    command = CONVERT_COMMAND.format(name=name, data_dir=data_dir or "~/tensorflow_datasets")
    raise ValueError(f"TFDS dataset {name!r} in {builder.data_dir} is stored as "
                     f"{', '.join(sorted(formats))}; Grain reads array_record: convert it once "
                     f"with `{command}`")
  tree = feature_tree(builder.info.features)
  check_fields(task, task_name(task), tree, builder.name)
  check_image_fields(builder, tree, task)
  try:
    examples = builder.as_data_source(split=split, file_format="array_record",
                                      decoders=skip_image_decoding(builder.info.features))
  except (ValueError, KeyError) as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"bad split {split!r} for {name}: {first}; its splits are "
                     f"{', '.join(builder.info.splits)} (fix {config_path}.split)") from None
  return OpenedSource(f"{name}:{split}", examples)


def _open(source: TfdsSource, config_path: str) -> Any:
  """`open_builder`, plus the configs a builder has when the named one is unknown."""
  _, tfds = _tfds()
  dataset, _, config = source.name.partition("/")
  try:
    return open_builder(source, config_path)
  except ValueError as e:
    if not config:
      raise
    try:
      parent = tfds.builder(dataset.split(":")[0], data_dir=source.data_dir or None)
    except Exception:  # the dataset itself is unknown: the first error says so
      raise e from None
    configs = [c.name for c in (parent.BUILDER_CONFIGS or [])]
    raise ValueError(f"TFDS dataset {dataset!r} has no built config {config!r}; its configs are "
                     f"{', '.join(configs) or 'none'} (fix {config_path}.config)") from None


class JsonlExamples(Sequence):
  """The rows of a JSONL file as examples; `image` (a path or a list of paths) read as bytes.

  Lines are parsed at construction (a few bytes each); image files are read only when a row is.
  Reading a row raises ValueError (one line) for a malformed line, a row without "image" or a
  missing image file: the pipeline counts it as a skipped example.
  """

  def __init__(self, path: str | pathlib.Path, image_dir: str | pathlib.Path = "") -> None:
    self.path = pathlib.Path(path).expanduser()
    if not self.path.is_file():
      raise ValueError(f"JSONL file {self.path} does not exist; fix the member's jsonl path")
    self.image_dir = pathlib.Path(image_dir).expanduser() if image_dir else self.path.parent
    if not self.image_dir.is_dir():
      raise ValueError(f"JSONL image_dir {self.image_dir} is not a folder; fix the member's "
                       "image_dir")
    self._lines = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                   if line.strip()]

  def __len__(self) -> int:
    return len(self._lines)

  def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
    where = f"{self.path.name} line {index + 1}"
    try:
      row = json.loads(self._lines[index])
    except json.JSONDecodeError as e:
      raise ValueError(f"{where} is not JSON ({e.msg})") from None
    if not isinstance(row, Mapping):
      raise ValueError(f"{where} is a JSON {type(row).__name__}, not an object")
    if "image" not in row:
      raise ValueError(f"{where} has no 'image' field (keys: {', '.join(row) or 'none'})")
    paths = row["image"]
    if isinstance(paths, str):
      return {**row, "image": self._read(paths, where)}
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
      raise ValueError(f"{where}: 'image' must be a path or a non-empty list of paths")
    return {**row, "image": [self._read(p, where) for p in paths]}

  def _read(self, relative: str, where: str) -> bytes:
    path = self.image_dir / relative
    try:
      return path.read_bytes()
    except OSError as e:
      raise ValueError(f"{where}: cannot read image {path} ({e.strerror or e})") from None


def open_jsonl(path: str, image_dir: str = "") -> OpenedSource:
  """A JSONL file's rows as a source (see the module docstring for the row format)."""
  examples = JsonlExamples(path, image_dir)
  if not len(examples):
    raise ValueError(f"JSONL file {examples.path} has no rows")
  return OpenedSource(f"jsonl:{examples.path.name}", examples)
