"""Tasks: how one decoded dataset example becomes model rows (images, prompt, references).

A task is a small frozen dataclass. Its options name the example fields it reads (TFDS keys;
"a/b" reaches into nested features, e.g. "captions/text") and set typed switches, and
`rows(example, index)` turns one example (a dict of NumPy values: images uint8 [H, W, 3 | 4],
texts as bytes, sequences as arrays or lists) into `Row`s: an id, the image(s), the prefix
(prompt), the reference suffixes and the fields evaluators need.

| name              | prefix (per row)                                    | references           |
|-------------------|-----------------------------------------------------|----------------------|
| `caption`         | `caption {lang}`                                    | every caption        |
| `vqa`             | `answer {lang} {question}`                          | every answer         |
| `refexp_detect`   | `detect {sentence}` (1 row per sentence)            | `<loc>x4 {sentence}` |
| `refexp_segment`  | `segment {sentence}` / `{sentence}` (per sentence)  | `<loc>x4<seg>x16...` |
| `template`        | `prompt` with `{field}`s                            | `reference_key`'s    |
| `question_only`   | `{question}`                                        | every answer         |
| `count`           | `answer {lang} {question}`                          | the count            |
| `multiple_choice` | `answer {lang}  {question} choose from: {a} \\t {b}`| the correct option   |
| `science_qa`      | `Question: ..\\nContext: ..\\nOptions: (A) ..\\nAnswer:` | `The answer is X.`|
| `multi_image_vqa` | `answer {lang} {sentence}`, two images (NLVR2)      | the label            |
| `ocr`             | `ocr`                                               | the text             |
| `detect`          | `detect {a} ; {b}`                                  | `<loc>x4 {a} ; ...`  |

Training takes one reference per example per epoch; evaluation keeps them all. `TASKS` is the
one table from config names to task classes and `make_task(name, options)` the one place a name
resolves. A bad option fails at construction; a field the dataset lacks fails before the run
(`check_fields`); a bad example fails only its own row (`rows_or_error`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from paligemma_jax.data.task_base import (Row, RowId, Task, as_id, as_text, as_texts, check_fields,
                                          field_names, images_of, lookup, rows_or_error)
from paligemma_jax.data.tasks_boxes import (Detection, MaskEncoder, ReferringDetection,
                                            ReferringSegmentation)
from paligemma_jax.data.tasks_caption import Captioning, Ocr, Template
from paligemma_jax.data.tasks_vqa import (Counting, MultiImageQuestionAnswering, MultipleChoice,
                                          QuestionAnswering, QuestionOnly, ScienceQA)

__all__ = [
    "TASKS", "Captioning", "Counting", "Detection", "MaskEncoder", "MultiImageQuestionAnswering",
    "MultipleChoice", "Ocr", "QuestionAnswering", "QuestionOnly", "ReferringDetection",
    "ReferringSegmentation", "Row", "RowId", "ScienceQA", "Task", "Template", "as_id", "as_text",
    "as_texts", "check_fields", "field_names", "images_of", "lookup", "make_task", "rows_or_error",
]

# The one table from config names to tasks (the first five are infer.py --config's originals).
TASKS: dict[str, type] = {
    "caption": Captioning,
    "vqa": QuestionAnswering,
    "refexp_detect": ReferringDetection,
    "refexp_segment": ReferringSegmentation,
    "template": Template,
    "question_only": QuestionOnly,
    "count": Counting,
    "multiple_choice": MultipleChoice,
    "science_qa": ScienceQA,
    "multi_image_vqa": MultiImageQuestionAnswering,
    "ocr": Ocr,
    "detect": Detection,
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
    options[key] = _typed(name, key, value, hints[key])
  try:
    return cls(**options)
  except ValueError as e:
    raise ValueError(f"task {name!r}: {e}") from None


def _typed(task: str, key: str, value: Any, want: Any) -> Any:
  """`value` checked against option `key`'s annotation (lists become tuples)."""
  def bad(kind: str) -> ValueError:
    return ValueError(f"task {task!r} option {key!r} must be {kind}, got {value!r}")

  if want is str and not isinstance(value, str):
    raise bad("a string")
  if want is bool and not isinstance(value, bool):
    raise bad("true or false")
  if want is int and (isinstance(value, bool) or not isinstance(value, int)):
    raise bad("an integer")
  if want == tuple[str, ...]:
    value = (value,) if isinstance(value, str) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
      raise bad("a list of strings")
    return tuple(value)
  if typing.get_origin(want) in (typing.Union, types.UnionType):
    callables = [a for a in typing.get_args(want) if typing.get_origin(a) is Callable]
    if callables and value is not None and not callable(value):
      raise bad("a function or None")
  return value
