"""Text-out tasks without a question: captioning, OCR, and the free-form template.

| task       | prefix                   | references                | big_vision configs         |
|------------|--------------------------|---------------------------|----------------------------|
| `caption`  | `caption {lang}`         | every caption             | cococap, coco35l, textcaps,|
|            |                          |                           | screen2words, scicap, ...  |
| `ocr`      | `ocr`                    | the image's text(s)       | PaliGemma pretraining      |
| `template` | `prompt` with `{field}`s | `reference_key`'s texts   | any                        |
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from paligemma_jax.data.task_base import (Row, RowId, as_id, as_text, as_texts, check_lang,
                                          images_of, lookup, nonempty)


@dataclasses.dataclass(frozen=True)
class Captioning:
  """`caption {lang}`; references are every caption (coco_captions' layout by default).

  COCO-35L / XM3600 set `lang` per split; TextCaps sets `lower_references` (big_vision lower-cases
  its training suffix; CIDEr lower-cases anyway); Screen2Words reads `summary`, TextCaps / WidgetCap
  `texts`.
  """

  lang: str = "en"
  image_key: str = "image"
  id_key: str = "image/id"
  captions_key: str = "captions/text"  # "" = no references
  lower_references: bool = False
  one_row_per_example: ClassVar[bool] = True

  def __post_init__(self) -> None:
    check_lang(self.lang)

  def fields_read(self) -> list[tuple[str, str]]:
    return nonempty(image_key=self.image_key, id_key=self.id_key, captions_key=self.captions_key)

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def rows(self, example: Mapping[str, Any], index: int, *,
           rng: np.random.Generator | None = None) -> list[Row]:
    refs = as_texts(lookup(example, self.captions_key)) if self.captions_key else ()
    if self.lower_references:
      refs = tuple(r.lower() for r in refs)
    return [Row(self.example_id(example, index), f"caption {self.lang}",
                images_of(example, (self.image_key,)), refs)]


@dataclasses.dataclass(frozen=True)
class Ocr:
  """`ocr` (PaliGemma's pretraining prefix for reading all text in raster order); the
  references are the text field's value(s)."""

  image_key: str = "image"
  id_key: str = ""  # "" = the example's index in the split
  text_key: str = "text"  # "" = no references
  one_row_per_example: ClassVar[bool] = True

  def fields_read(self) -> list[tuple[str, str]]:
    return nonempty(image_key=self.image_key, id_key=self.id_key, text_key=self.text_key)

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def rows(self, example: Mapping[str, Any], index: int, *,
           rng: np.random.Generator | None = None) -> list[Row]:
    refs = as_texts(lookup(example, self.text_key)) if self.text_key else ()
    return [Row(self.example_id(example, index), "ocr", images_of(example, (self.image_key,)),
                refs)]


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
    return read + nonempty(reference_key=self.reference_key, id_key=self.id_key)

  def image_fields(self) -> tuple[str, ...]:
    return self.image_keys

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def rows(self, example: Mapping[str, Any], index: int, *,
           rng: np.random.Generator | None = None) -> list[Row]:
    values = {name: as_text(lookup(example, name)).strip() for name in self.template_fields()}
    prefix = self.prompt.format_map(values)
    refs = as_texts(lookup(example, self.reference_key)) if self.reference_key else ()
    return [Row(self.example_id(example, index), prefix, images_of(example, self.image_keys),
                refs)]
