"""Question answering tasks: one row per example, the answers (or the correct option) as references.

| task              | prefix                                               | references         |
|-------------------|------------------------------------------------------|--------------------|
| `vqa`             | `answer {lang} {question}`                           | every answer       |
| `question_only`   | `{question}`                                         | every answer       |
| `count`           | `answer {lang} {question}`                           | the number         |
| `multi_image_vqa` | `answer {lang} {sentence}`, several images           | the label          |
| `multiple_choice` | `answer {lang}  {question} choose from: {c1} \\t {c2}` | the correct option |
| `science_qa`      | `Question: {q}\\nContext: {hint}\\nOptions: (A) c1, (B) c2\\nAnswer:` |      |
|                   | → `The answer is {X}.`                               |                    |

Prompts and targets are big_vision's transfer configs' (configs/proj/paligemma/transfers). Every
answer is kept, duplicates included: big_vision trains on one answer drawn per example per epoch
(`choice_no_replacement` over all ten VQAv2 answers, so frequent answers are drawn more often) and
evaluates against all of them. `field_keys` copies further example fields into `Row.fields` for the
evaluators (VQAv2's answer_type, TallyQA's issimple, RSVQA's question_type).
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from paligemma_jax.data.task_base import (Row, RowId, as_id, as_int, as_text, as_texts,
                                          check_lang, copied_fields, images_of, lookup, nonempty)

CHOICE_SEPARATOR = " \t "  # big_vision's PROMPT_SEP for `choose from:` (aokvqa_mc.py, ai2d.py)
LETTERS = string.ascii_uppercase  # ScienceQA's option letters


class _AnswerRows:
  """Rows of the question → answers tasks below: each declares its fields and `prompt`."""

  question_key: str
  answers_key: str
  id_key: str
  lower_references: bool
  field_keys: tuple[str, ...]
  one_row_per_example: ClassVar[bool] = True

  def prompt(self, question: str) -> str:
    raise NotImplementedError

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def fields_read(self) -> list[tuple[str, str]]:
    images = self.image_fields()
    return ([("image_keys" if hasattr(self, "image_keys") else "image_key", k) for k in images]
            + nonempty(question_key=self.question_key, answers_key=self.answers_key,
                       id_key=self.id_key)
            + [("field_keys", k) for k in self.field_keys])

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def rows(self, example: Mapping[str, Any], index: int, *,
           rng: np.random.Generator | None = None) -> list[Row]:
    question = as_text(lookup(example, self.question_key)).strip()
    refs = as_texts(lookup(example, self.answers_key)) if self.answers_key else ()
    if self.lower_references:
      refs = tuple(r.lower() for r in refs)
    return [Row(self.example_id(example, index), self.prompt(question),
                images_of(example, self.image_fields()), refs,
                copied_fields(example, self.field_keys))]


@dataclasses.dataclass(frozen=True)
class QuestionAnswering(_AnswerRows):
  """`answer {lang} {question}`; references are every answer (VQAv2-style fields by default).

  Also OK-VQA, A-OKVQA DA (answers_key="direct_answers"), GQA / OCR-VQA (answers_key="answer"),
  TextVQA, VizWiz, RSVQA / InfoVQA / ST-VQA (lower_references=True) and video QA (an image field
  of [F, H, W, 3] frames). TFDS `vqa` names its question `question_text`.
  """

  lang: str = "en"
  image_key: str = "image"
  question_key: str = "question"
  answers_key: str = "answers"  # one text or a list; "" = no references
  id_key: str = "question_id"  # "" = the example's index in the split
  lower_references: bool = False
  field_keys: tuple[str, ...] = ()

  def __post_init__(self) -> None:
    check_lang(self.lang)

  def prompt(self, question: str) -> str:
    return f"answer {self.lang} {question}"


@dataclasses.dataclass(frozen=True)
class QuestionOnly(_AnswerRows):
  """`{question}` alone (ChartQA, DocVQA, POPE)."""

  image_key: str = "image"
  question_key: str = "question"
  answers_key: str = "answers"  # one text or a list (ChartQA: "answer"); "" = no references
  id_key: str = "question_id"
  lower_references: bool = False
  field_keys: tuple[str, ...] = ()

  def prompt(self, question: str) -> str:
    return question


@dataclasses.dataclass(frozen=True)
class Counting(QuestionAnswering):
  """TallyQA: `answer {lang} {question}` → the count as text ("3"); rows carry `issimple`.
  CountBenchQA: answers_key="number", field_keys=()."""

  answers_key: str = "answer"
  id_key: str = ""
  field_keys: tuple[str, ...] = ("issimple",)


@dataclasses.dataclass(frozen=True)
class MultiImageQuestionAnswering(_AnswerRows):
  """NLVR2 (and MaRVL) as big_vision builds it: both images, each resized to the model's
  resolution and stacked as frames (2 x N_img image tokens, left first), prompt
  `answer {lang} {sentence}`, target the label text ("True" / "False")."""

  lang: str = "en"
  image_keys: tuple[str, ...] = ("image_left", "image_right")
  question_key: str = "sentence"
  answers_key: str = "label"
  id_key: str = "example_id"
  lower_references: bool = False
  field_keys: tuple[str, ...] = ()

  def __post_init__(self) -> None:
    check_lang(self.lang)
    if isinstance(self.image_keys, str) or len(self.image_keys) < 2:
      raise ValueError(f"image_keys must list two or more image fields, got {self.image_keys!r}")

  def prompt(self, question: str) -> str:
    return f"answer {self.lang} {question}"

  def image_fields(self) -> tuple[str, ...]:
    return tuple(self.image_keys)


@dataclasses.dataclass(frozen=True)
class MultipleChoice:
  """`answer {lang}  {question} choose from: {c1} \\t {c2} ...` → the correct option's text.

  big_vision's A-OKVQA MC and AI2D prompt (`PREFIX = "answer en "` then
  `"{PREFIX} {question} choose from: {options}"`, hence two spaces). The defaults read what the
  project's builders write (`ai2d`: choices, answer_index, question_id). The correct option comes
  from its index (a negative index = unlabelled; A-OKVQA's release JSON names it
  correct_choice_idx) or its text (answer_key="answer", correct_index_key="").
  Rows carry `choices` and `correct_index` (None when unknown).
  """

  lang: str = "en"
  image_key: str = "image"
  question_key: str = "question"
  choices_key: str = "choices"
  correct_index_key: str = "answer_index"  # "" = use answer_key
  answer_key: str = ""  # the correct option's text; "" = use correct_index_key
  id_key: str = "question_id"
  field_keys: tuple[str, ...] = ()
  one_row_per_example: ClassVar[bool] = True

  def __post_init__(self) -> None:
    check_lang(self.lang)
    if self.correct_index_key and self.answer_key:
      raise ValueError("the correct option comes from correct_index_key or answer_key, not "
                       "both; set one of them to ''")

  def fields_read(self) -> list[tuple[str, str]]:
    return nonempty(image_key=self.image_key, question_key=self.question_key,
                    choices_key=self.choices_key, correct_index_key=self.correct_index_key,
                    answer_key=self.answer_key, id_key=self.id_key) + [
                        ("field_keys", k) for k in self.field_keys]

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def rows(self, example: Mapping[str, Any], index: int, *,
           rng: np.random.Generator | None = None) -> list[Row]:
    question = as_text(lookup(example, self.question_key)).strip()
    choices = as_texts(lookup(example, self.choices_key))
    if not choices:
      raise ValueError(f"no options in {self.choices_key!r}")
    correct = None
    if self.correct_index_key:
      correct = as_int(lookup(example, self.correct_index_key), self.correct_index_key)
      if correct >= len(choices):
        raise ValueError(f"{self.correct_index_key} = {correct} but there are only "
                         f"{len(choices)} options")
      correct = None if correct < 0 else correct
      refs = () if correct is None else (choices[correct],)
    elif self.answer_key:
      refs = (as_text(lookup(example, self.answer_key)),)
      correct = choices.index(refs[0]) if refs[0] in choices else None
    else:
      refs = ()
    prefix = (f"answer {self.lang}  {question} choose from: "
              f"{CHOICE_SEPARATOR.join(choices)}")
    fields = {"choices": list(choices), "correct_index": correct,
              **copied_fields(example, self.field_keys)}
    return [Row(self.example_id(example, index), prefix, images_of(example, (self.image_key,)),
                refs, fields)]


@dataclasses.dataclass(frozen=True)
class ScienceQA:
  """big_vision's science_qa (format QCM → A):
  `Question: {question}\\nContext: {hint}\\nOptions: (A) c1, (B) c2\\nAnswer:` →
  `The answer is {letter}.`

  With `rng` (training) the options are shuffled, as big_vision's `sci_qa_choices_shuffle`;
  without it they keep the dataset's order (big_vision's evaluation reads the dataset's
  precomputed `indexed_choices` / `indexed_answer`, which are that order). The defaults read
  what the project's `science_qa` builder writes.
  """

  image_key: str = "image"
  question_key: str = "question"
  hint_key: str = "hint"
  choices_key: str = "choices"
  answer_key: str = "answer_index"  # the correct option's index; "" = no references
  id_key: str = "question_id"  # "" = the example's index in the split
  one_row_per_example: ClassVar[bool] = True

  def fields_read(self) -> list[tuple[str, str]]:
    return nonempty(image_key=self.image_key, question_key=self.question_key,
                    hint_key=self.hint_key, choices_key=self.choices_key,
                    answer_key=self.answer_key, id_key=self.id_key)

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def rows(self, example: Mapping[str, Any], index: int, *,
           rng: np.random.Generator | None = None) -> list[Row]:
    question = as_text(lookup(example, self.question_key)).strip()
    hint = as_text(lookup(example, self.hint_key)).strip() if self.hint_key else ""
    choices = as_texts(lookup(example, self.choices_key))
    if not 0 < len(choices) <= len(LETTERS):
      raise ValueError(f"{len(choices)} options in {self.choices_key!r}; ScienceQA letters "
                       f"allow 1 to {len(LETTERS)}")
    order = rng.permutation(len(choices)) if rng is not None else np.arange(len(choices))
    options = ", ".join(f"({LETTERS[i]}) {choices[k]}" for i, k in enumerate(order))
    refs = ()
    if self.answer_key:
      answer = as_int(lookup(example, self.answer_key), self.answer_key)
      if not 0 <= answer < len(choices):
        raise ValueError(f"{self.answer_key} = {answer} is not an option index "
                         f"(0..{len(choices) - 1})")
      refs = (f"The answer is {LETTERS[int(np.flatnonzero(order == answer)[0])]}.",)
    prefix = f"Question: {question}\nContext: {hint}\nOptions: {options}\nAnswer:"
    return [Row(self.example_id(example, index), prefix, images_of(example, (self.image_key,)),
                refs)]
