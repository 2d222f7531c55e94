"""Tasks: how one decoded dataset example becomes model rows (images, prompt, references).

A task is a small frozen dataclass. Its options name the example fields it reads (TFDS keys;
"a/b" reaches into nested features, e.g. "captions/text"), and `rows(example, index)` turns one
example (a dict of NumPy values: images uint8 [H, W, 3 | 4], texts as bytes, sequences as arrays
or lists) into `Row`s: an id, the image(s), the prefix (prompt) and the reference suffixes.

| name             | prefix (per row)           | references              | rows per example |
|------------------|----------------------------|-------------------------|------------------|
| `caption`        | `caption {lang}`           | every caption           | 1                |
| `vqa`            | `answer {lang} {question}` | the answers             | 1                |
| `refexp_detect`  | `detect {sentence}`        | `<loc>x4 {sentence}`    | 1 per sentence   |
| `refexp_segment` | `segment {sentence}`       | none (needs the VQ-VAE) | 1 per sentence   |
| `template`       | `prompt` with `{field}`s   | `reference_key`'s texts | 1                |

`TASKS` is the one table from config names to task classes and `make_task(name, options)` the one
place a name resolves. A bad option fails at construction; a field the dataset lacks fails before
the run (`check_fields`); a bad example fails only its own row.
"""

from __future__ import annotations

import dataclasses
import string
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import numpy as np

from paligemma_jax.data.tokenizer import loc_tokens

RowId = int | str


@dataclasses.dataclass(frozen=True)
class Row:
  """One model input row, or the reason an example could not become one (`error`).

  Attributes:
    id: the example's id (a dataset id, or the example's index in the split); None if unknown.
    prefix: the prompt; None when the input did not even give one.
    images: the row's images, each uint8 [H, W, 3 | 4] (or a PIL image); several = multi-image.
    references: reference suffixes (captions, answers, `<loc>` strings); may be empty.
    fields: further JSON-able values copied into the output row (a box, an image path).
    error: set, with `images` empty, when the example cannot run.
  """

  id: RowId | None
  prefix: str | None
  images: tuple[Any, ...] = ()
  references: tuple[str, ...] = ()
  fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  error: str | None = None

  def header(self) -> dict[str, Any]:
    """The leading fields of this row's output: id, `fields`, prompt, references."""
    out: dict[str, Any] = {} if self.id is None else {"id": self.id}
    out.update(self.fields)
    if self.prefix is not None:
      out["prompt"] = self.prefix
    if self.references:
      out["references"] = list(self.references)
    return out


class Task(Protocol):
  """What readers need from a task (every class in `TASKS` has these)."""

  one_row_per_example: ClassVar[bool]

  def fields_read(self) -> list[tuple[str, str]]:
    """(option name, example field) of every field the task reads."""

  def image_fields(self) -> tuple[str, ...]:
    """The example fields holding this task's images (readers decode only these)."""

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    """The id of a whole example (for its error row when it cannot be read)."""

  def rows(self, example: Mapping[str, Any], index: int) -> list[Row]:
    """The rows of one decoded example; `index` is its position in the split."""


# --- field access and conversions ----------------------------------------------------------------


def lookup(example: Mapping[str, Any], key: str) -> Any:
  """example[key], where "a/b" also reaches example["a"]["b"] (TFDS keys may contain "/")."""
  if key in example:
    return example[key]
  parts = key.split("/")
  for cut in range(len(parts) - 1, 0, -1):
    head = "/".join(parts[:cut])
    if isinstance(example.get(head), Mapping):
      return lookup(example[head], "/".join(parts[cut:]))
  raise KeyError(key)


def field_names(example: Mapping[str, Any], prefix: str = "") -> list[str]:
  """Every field of a nested example (or feature tree) as "a/b" paths, sorted."""
  names = []
  for key, value in example.items():
    names.append(prefix + key)
    if isinstance(value, Mapping):
      names.extend(field_names(value, f"{prefix}{key}/"))
  return sorted(names)


def check_fields(task: Task, name: str, fields: Mapping[str, Any], dataset: str) -> None:
  """One-line error when the task reads a field that `fields` (a nested tree of names) lacks."""
  for option, key in task.fields_read():
    try:
      lookup(fields, key)
    except KeyError:
      raise ValueError(
          f"task {name!r} reads field {key!r} ({option}) but {dataset} has only "
          f"{', '.join(field_names(fields))}; set --config.task.{option}") from None


def as_text(value: Any) -> str:
  """A text field as str: bytes are UTF-8, NumPy scalars and 0-d arrays become their value."""
  if isinstance(value, np.ndarray):
    if value.ndim:
      raise ValueError(f"expected one text, got an array of shape {value.shape}")
    value = value.item()
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, (list, tuple, dict)):
    raise ValueError(f"expected one text, got a {type(value).__name__}")
  return str(value)


def as_texts(value: Any) -> tuple[str, ...]:
  """A text or a sequence of texts (array or list) as a tuple of str."""
  if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim):
    return tuple(as_text(v) for v in value)
  return (as_text(value),)


def as_id(value: Any) -> RowId:
  value = value.item() if isinstance(value, (np.ndarray, np.generic)) else value
  return value.decode("utf-8") if isinstance(value, bytes) else value


def images_of(example: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[np.ndarray, ...]:
  """The decoded images under `keys`: uint8 [H, W, C] each; a [F, H, W, C] field gives F."""
  images = []
  for key in keys:
    value = lookup(example, key)
    frames = list(value) if isinstance(value, list) or np.ndim(value) == 4 else [value]
    for frame in frames:
      if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3:
        raise ValueError(f"field {key!r} is not a decoded image (uint8 [H, W, C]); "
                         "read the dataset with paligemma_jax.data.tfds_rows")
      images.append(frame)
  return tuple(images)


# --- the tasks -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Captioning:
  """`caption {lang}`; references are every caption (coco_captions' layout by default)."""

  lang: str = "en"
  image_key: str = "image"
  id_key: str = "image/id"
  captions_key: str = "captions/text"  # "" = no references
  one_row_per_example: ClassVar[bool] = True

  def fields_read(self) -> list[tuple[str, str]]:
    return _nonempty(image_key=self.image_key, id_key=self.id_key, captions_key=self.captions_key)

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def rows(self, example: Mapping[str, Any], index: int) -> list[Row]:
    refs = as_texts(lookup(example, self.captions_key)) if self.captions_key else ()
    return [Row(self.example_id(example, index), f"caption {self.lang}",
                images_of(example, (self.image_key,)), refs)]


@dataclasses.dataclass(frozen=True)
class QuestionAnswering:
  """`answer {lang} {question}`; references are the answers (VQAv2-style fields by default)."""

  lang: str = "en"
  image_key: str = "image"
  question_key: str = "question"
  answers_key: str = "answers"  # "" = no references
  id_key: str = "question_id"
  one_row_per_example: ClassVar[bool] = True

  def fields_read(self) -> list[tuple[str, str]]:
    return _nonempty(image_key=self.image_key, question_key=self.question_key,
                     answers_key=self.answers_key, id_key=self.id_key)

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def rows(self, example: Mapping[str, Any], index: int) -> list[Row]:
    question = as_text(lookup(example, self.question_key)).strip()
    refs = as_texts(lookup(example, self.answers_key)) if self.answers_key else ()
    return [Row(self.example_id(example, index), f"answer {self.lang} {question}",
                images_of(example, (self.image_key,)), refs)]


@dataclasses.dataclass(frozen=True)
class ReferringDetection:
  """`detect {sentence}`, one row per referring sentence (TFDS ref_coco's layout by default).

  The reference is the box as `<loc>` x 4 followed by the sentence (the detection output
  format); every row also carries `box_yxyx`, the normalised ground-truth box.
  """

  image_key: str = "image"
  boxes_key: str = "objects/bbox"  # [objects, 4] normalised ymin, xmin, ymax, xmax
  sentences_key: str = "objects/refexp/raw"  # [objects][sentences]
  ids_key: str = "objects/refexp/refexp_id"  # [objects][sentences]; "" = "{image id}/{j}/{k}"
  image_id_key: str = "image/id"
  verb: ClassVar[str] = "detect"
  one_row_per_example: ClassVar[bool] = False

  def fields_read(self) -> list[tuple[str, str]]:
    return _nonempty(image_key=self.image_key, boxes_key=self.boxes_key,
                     sentences_key=self.sentences_key, ids_key=self.ids_key,
                     image_id_key=self.image_id_key)

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.image_id_key)) if self.image_id_key else index

  def rows(self, example: Mapping[str, Any], index: int) -> list[Row]:
    images = images_of(example, (self.image_key,))
    boxes = np.asarray(lookup(example, self.boxes_key), np.float32).reshape(-1, 4)
    sentences = lookup(example, self.sentences_key)
    ids = lookup(example, self.ids_key) if self.ids_key else [
        [f"{self.example_id(example, index)}/{j}/{k}" for k in range(len(s))]
        for j, s in enumerate(sentences)]
    if not len(boxes) == len(sentences) == len(ids):
      raise ValueError(f"{len(boxes)} boxes, {len(sentences)} sentence lists and {len(ids)} id "
                       f"lists: {self.boxes_key}, {self.sentences_key} and {self.ids_key} "
                       "must have one entry per object")
    rows = []
    for box, texts, text_ids in zip(boxes, sentences, ids):
      for text, text_id in zip(as_texts(texts), list(text_ids)):
        text = text.strip()
        refs = (f"{loc_tokens(box)} {text}",) if self.verb == "detect" else ()
        rows.append(Row(as_id(text_id), f"{self.verb} {text}", images, refs,
                        {"box_yxyx": [round(float(v), 6) for v in box]}))
    return rows


@dataclasses.dataclass(frozen=True)
class ReferringSegmentation(ReferringDetection):
  """`segment {sentence}`, one row per sentence. No reference text: the `<seg>` codes need the
  VQ-VAE encoder (paligemma_jax.inference.parsers.encode_segmentations); rows carry the box."""

  verb: ClassVar[str] = "segment"


@dataclasses.dataclass(frozen=True)
class Template:
  """Any dataset: the prompt is `prompt` with `{field}` replaced by the example's texts.

  Example: prompt="answer en {question}", reference_key="answers", id_key="question_id". Field
  names are example keys ("a/b" for nested ones); write "{{" / "}}" for literal braces.
  """

  prompt: str
  image_keys: tuple[str, ...] = ("image",)
  reference_key: str = ""  # "" = no references
  id_key: str = ""  # "" = the example's index in the split
  one_row_per_example: ClassVar[bool] = True

  def __post_init__(self) -> None:
    if isinstance(self.image_keys, str):
      object.__setattr__(self, "image_keys", (self.image_keys,))
    object.__setattr__(self, "image_keys", tuple(self.image_keys))
    if not self.image_keys:
      raise ValueError("template task needs at least one image key (image_keys)")
    self.template_fields()  # fails now on a malformed template

  def template_fields(self) -> list[str]:
    try:
      parsed = list(string.Formatter().parse(self.prompt))
    except ValueError as e:
      raise ValueError(f"prompt template {self.prompt!r}: {e}; write '{{{{' for a literal "
                       "brace") from None
    names = []
    for _, name, spec, conversion in parsed:
      if name is None:
        continue
      if not name or name.isdigit() or any(c in name for c in ".[") or spec or conversion:
        raise ValueError(f"prompt template field {{{name}}} in {self.prompt!r}: use plain "
                         "example field names, such as {question} or {captions/text}")
      names.append(name)
    return names

  def fields_read(self) -> list[tuple[str, str]]:
    read = [("image_keys", key) for key in self.image_keys]
    read += [("prompt", name) for name in self.template_fields()]
    return read + _nonempty(reference_key=self.reference_key, id_key=self.id_key)

  def image_fields(self) -> tuple[str, ...]:
    return self.image_keys

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def rows(self, example: Mapping[str, Any], index: int) -> list[Row]:
    values = {name: as_text(lookup(example, name)).strip() for name in self.template_fields()}
    prefix = self.prompt.format_map(values)
    refs = as_texts(lookup(example, self.reference_key)) if self.reference_key else ()
    return [Row(self.example_id(example, index), prefix, images_of(example, self.image_keys),
                refs)]


def _nonempty(**keys: str) -> list[tuple[str, str]]:
  return [(option, key) for option, key in keys.items() if key]


# The one table from config names to tasks.
TASKS: dict[str, type] = {
    "caption": Captioning,
    "vqa": QuestionAnswering,
    "refexp_detect": ReferringDetection,
    "refexp_segment": ReferringSegmentation,
    "template": Template,
}


def make_task(name: str, options: Mapping[str, Any] | None = None) -> Task:
  """The task `name` of `TASKS` built from `options` (its dataclass fields); one-line errors."""
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
  cls = TASKS[name]
  fields = {f.name: f for f in dataclasses.fields(cls)}
  options = dict(options or {})
  for key in options:
    if key not in fields:
      raise ValueError(f"unknown option {key!r} for task {name!r}; valid options: "
                       f"{', '.join(fields)}")
  missing = [k for k, f in fields.items() if k not in options
             and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
  if missing:
    raise ValueError(f"task {name!r} needs option {missing[0]!r} (e.g. "
                     f"--config.task.{missing[0]}=...)")
  hints = typing.get_type_hints(cls)
  for key, value in options.items():
    want = hints[key]
    if want is str and not isinstance(value, str):
      raise ValueError(f"task {name!r} option {key!r} must be a string, got {value!r}")
    if want == tuple[str, ...]:
      value = (value,) if isinstance(value, str) else value
      if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"task {name!r} option {key!r} must be a list of strings, got {value!r}")
      options[key] = tuple(value)
  return cls(**options)
