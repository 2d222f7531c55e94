"""What every task shares: the `Row` it makes, the `Task` protocol, and reading example fields.

An example is one decoded dataset record: a dict of NumPy values (images uint8 [H, W, 3 | 4],
texts as bytes, sequences as arrays or lists), possibly nested ("a/b" reaches example["a"]["b"];
TFDS keys may themselves contain "/").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

import numpy as np

RowId = int | str


@dataclasses.dataclass(frozen=True)
class Row:
  """One model input row, or the reason an example could not become one (`error`).

  Attributes:
    id: the example's id (a dataset id, or the example's index in the split); None if unknown.
    prefix: the prompt; None when the input did not even give one.
    images: the row's images, each uint8 [H, W, 3 | 4] (or a PIL image); several = multi-image.
    references: every valid target suffix, in the dataset's order, duplicates kept (VQAv2's ten
      answers): training draws one per example per epoch, evaluation scores against all. May be
      empty (a test split).
    fields: further values the evaluators need (answer types, choices, boxes), JSON-able unless
      a task's option says otherwise (`keep_masks`).
    error: set, with `images` empty, when the example (or this row of it) cannot run.
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
    """The example fields holding encoded images (or masks) that readers must decode."""

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    """The id of a whole example (for its error row when it cannot be read)."""

  def rows(self, example: Mapping[str, Any], index: int, *,
           rng: np.random.Generator | None = None) -> list[Row]:
    """The rows of one decoded example; `index` is its position in the split.

    `rng` (training) draws what references cannot express, as big_vision's training pp does:
    ScienceQA's option order, one (object, sentence) row of a referring-expression example.
    None (evaluation) = every row, in the dataset's order. The suffix itself is drawn by the
    caller from `Row.references`."""


# What malformed data raises while an example is read, decoded or turned into rows.
DATA_ERRORS = (ValueError, KeyError, TypeError, IndexError, OSError)


def rows_or_error(task: Task, example: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
                  index: int, *, rng: np.random.Generator | None = None,
                  decode: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
                  label: str = "") -> list[Row]:
  """`task.rows(decode(example), index)`, or one error row when the example is malformed.

  The one place a bad example becomes a row instead of an exception, for every reader (TFDS
  through tf.data, Grain's training and evaluation inputs).

  Args:
    example: the example, or a function reading it (a read can fail too: a bad record or file).
    decode: what readers do before the task (decode its images); None = nothing.
    label: names the source in the message ("{label} example {index}: ...").
  Returns:
    the task's rows, or one row with the example's id (its index when even that cannot be read)
    and `error` = "[label ]example {index}: {one-line reason}".
  """
  raw = None
  try:
    raw = example() if callable(example) else example
    return task.rows(raw if decode is None else decode(raw), index, rng=rng)
  except DATA_ERRORS as e:
    row_id = index
    if raw is not None:
      try:
        row_id = task.example_id(raw, index)
      except DATA_ERRORS:
        pass
    where = f"{label} example {index}" if label else f"example {index}"
    return [Row(row_id, None, error=f"{where}: {error_message(e)}")]


def error_message(e: Exception) -> str:
  """One line for a data error: a KeyError names the missing field."""
  if isinstance(e, KeyError):
    return f"missing field {e.args[0]!r}"
  return str(e).splitlines()[0] if str(e) else type(e).__name__


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


def as_int(value: Any, what: str) -> int:
  """An integer field (a Python or NumPy int, or a 0-d array) as int."""
  value = value.item() if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0 \
      else value
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f"{what} must be an integer, got {value!r}")
  return value


def as_id(value: Any) -> RowId:
  value = value.item() if isinstance(value, (np.ndarray, np.generic)) else value
  return value.decode("utf-8") if isinstance(value, bytes) else value


def json_value(value: Any) -> Any:
  """A field value as JSON-able Python: arrays -> lists, NumPy scalars -> items, bytes -> str."""
  if isinstance(value, np.ndarray):
    return json_value(value.tolist())
  if isinstance(value, np.generic):
    return json_value(value.item())
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, Mapping):
    return {k: json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_value(v) for v in value]
  return value


def copied_fields(example: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
  """{key: the example's value, JSON-able} for each of `keys` (an option such as `field_keys`)."""
  return {key: json_value(lookup(example, key)) for key in keys}


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


def nonempty(**keys: str) -> list[tuple[str, str]]:
  """(option, key) pairs of the keys that are set ("" = the option is off)."""
  return [(option, key) for option, key in keys.items() if key]


def check_lang(lang: str) -> None:
  """A language code is one non-empty word ("en", "zh", "fil"), as in `caption {lang}`."""
  if not isinstance(lang, str) or lang.split() != [lang]:
    raise ValueError(f"lang must be a language code such as 'en' (one word), got {lang!r}")
