"""Location tasks: detection, referring detection and referring segmentation.

| task             | prefix               | references                             | rows         |
|------------------|----------------------|----------------------------------------|--------------|
| `detect`         | `detect {a} ; {b}`   | `<loc>x4 {a} ; <loc>x4 {b} ; ...`      | 1 / example  |
| `refexp_detect`  | `detect {sentence}`  | `<loc>x4 {sentence}`                   | 1 / sentence |
| `refexp_segment` | `segment {sentence}` | `<loc>x4<seg>x16 {sentence}`           | 1 / sentence |
|  (keyword="")    | `{sentence}`         | `<loc>x4<seg>x16` (big_vision RefCOCO) | 1 / sentence |

Boxes are normalised (ymin, xmin, ymax, xmax), TFDS's BBox order; `<loc>` strings come from
`tokenizer.loc_tokens` (processor.md §5). `<seg>` codes come from an injected `encode_mask`
(data/ cannot import models/): the training layer passes
`functools.partial(inference.parsers.segmentation_codes, encode_fn=mask_encoder(vqvae_params))`,
which crops the full-resolution mask to the box, resizes it to 64x64 and runs the VQ-VAE encoder
as big_vision's `refcoco_mask2str`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from paligemma_jax.data.task_base import (Row, RowId, as_id, as_text, as_texts, error_message,
                                          images_of, lookup, nonempty)
from paligemma_jax.data.tokenizer import NUM_SEG_TOKENS, SEG_TOKENS, loc_tokens

SEPARATOR = " ; "  # between objects, in prompts and targets
SEG_CODES_PER_MASK = 16

# (mask uint8 [H, W] (0 / 255) at full resolution, normalised box) -> 16 codes in [0, 128).
MaskEncoder = Callable[[np.ndarray, Sequence[float]], Sequence[int]]


def _boxes(example: Mapping[str, Any], key: str) -> np.ndarray:
  """float32 [N, 4] boxes of `key`."""
  boxes = np.asarray(lookup(example, key), np.float32)
  if boxes.size % 4:
    raise ValueError(f"{key!r} holds {boxes.size} numbers, not boxes of 4")
  return boxes.reshape(-1, 4)


def _box_field(box: np.ndarray) -> list[float]:
  return [round(float(v), 6) for v in box]


@dataclasses.dataclass(frozen=True)
class Detection:
  """`detect {a} ; {b}` → `<loc>x4 {name}` per object, joined with " ; " (COCO-style fields).

  The prompt names each class present once, in order of first appearance; objects keep the
  dataset's order. Labels are texts, or integers indexing `class_names` (a TFDS ClassLabel's
  names). Rows carry `boxes_yxyx` and `labels` (the names). An example without objects fails.
  """

  image_key: str = "image"
  boxes_key: str = "objects/bbox"  # [objects, 4] normalised ymin, xmin, ymax, xmax
  labels_key: str = "objects/label"  # [objects]: texts, or ints indexing class_names
  class_names: tuple[str, ...] = ()
  id_key: str = "image/id"  # "" = the example's index in the split
  one_row_per_example: ClassVar[bool] = True

  def __post_init__(self) -> None:
    for name in self.class_names:
      if not name.strip() or SEPARATOR.strip() in name or "<" in name:
        raise ValueError(f"class name {name!r} is empty or contains ';' or '<'")

  def fields_read(self) -> list[tuple[str, str]]:
    return nonempty(image_key=self.image_key, boxes_key=self.boxes_key,
                    labels_key=self.labels_key, id_key=self.id_key)

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.id_key)) if self.id_key else index

  def names(self, labels: Any) -> list[str]:
    labels = list(labels) if isinstance(labels, (list, tuple, np.ndarray)) else [labels]
    names = []
    for label in labels:
      if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        if not self.class_names:
          raise ValueError(f"integer label {label} but no class_names to name it; set the "
                           "task's class_names")
        if not 0 <= label < len(self.class_names):
          raise ValueError(f"label {label} is not in [0, {len(self.class_names)})")
        names.append(self.class_names[label])
      else:
        names.append(as_text(label).strip())
    return names

  def rows(self, example: Mapping[str, Any], index: int, *,
           rng: np.random.Generator | None = None) -> list[Row]:
    boxes = _boxes(example, self.boxes_key)
    names = self.names(lookup(example, self.labels_key))
    if len(boxes) != len(names):
      raise ValueError(f"{len(boxes)} boxes but {len(names)} labels")
    if not names:
      raise ValueError("no objects to detect")
    prefix = "detect " + SEPARATOR.join(dict.fromkeys(names))
    target = SEPARATOR.join(f"{loc_tokens(box)} {name}" for box, name in zip(boxes, names))
    fields = {"boxes_yxyx": [_box_field(b) for b in boxes], "labels": names}
    return [Row(self.example_id(example, index), prefix, images_of(example, (self.image_key,)),
                (target,), fields)]


@dataclasses.dataclass(frozen=True)
class ReferringDetection:
  """`detect {sentence}`, one row per referring sentence (TFDS ref_coco's layout by default).

  The reference is the box as `<loc>` x 4 followed by the sentence (the detection output
  format); every row also carries `box_yxyx`, the normalised ground-truth box. With `rng`
  (training) the example gives one row: one object, then one of its sentences, uniformly, as
  big_vision's refcoco_seg training pp (`choice_no_replacement` over objects, then `choice`);
  only that object's mask is encoded.
  """

  image_key: str = "image"
  boxes_key: str = "objects/bbox"  # [objects, 4] normalised ymin, xmin, ymax, xmax
  sentences_key: str = "objects/refexp/raw"  # [objects][sentences]
  ids_key: str = "objects/refexp/refexp_id"  # [objects][sentences]; "" = "{image id}/{j}/{k}"
  image_id_key: str = "image/id"
  one_row_per_example: ClassVar[bool] = False

  def fields_read(self) -> list[tuple[str, str]]:
    return nonempty(image_key=self.image_key, boxes_key=self.boxes_key,
                    sentences_key=self.sentences_key, ids_key=self.ids_key,
                    image_id_key=self.image_id_key)

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key,)

  def example_id(self, example: Mapping[str, Any], index: int) -> RowId:
    return as_id(lookup(example, self.image_id_key)) if self.image_id_key else index

  def prompt(self, sentence: str) -> str:
    return f"detect {sentence}"

  @staticmethod
  def draw(sentences: list[tuple[str, ...]], rng: np.random.Generator) -> list[int]:
    """Training: one object that has a sentence, uniformly (then one of its sentences)."""
    described = [j for j, texts in enumerate(sentences) if texts]
    if not described:
      raise ValueError("no object has a referring sentence")
    return [described[int(rng.integers(len(described)))]]

  def target(self, box: np.ndarray, sentence: str, codes: str) -> str:
    return f"{loc_tokens(box)} {sentence}"

  def object_codes(self, example: Mapping[str, Any], j: int, box: np.ndarray) -> str | None:
    """The `<seg>` string of object j ("" = the target has none; None = no target can be
    made); raises on bad data."""
    return ""

  def object_fields(self, example: Mapping[str, Any], j: int, box: np.ndarray
                    ) -> dict[str, Any]:
    return {"box_yxyx": _box_field(box)}

  def rows(self, example: Mapping[str, Any], index: int, *,
           rng: np.random.Generator | None = None) -> list[Row]:
    images = images_of(example, (self.image_key,))
    boxes = _boxes(example, self.boxes_key)
    sentences = lookup(example, self.sentences_key)
    ids = lookup(example, self.ids_key) if self.ids_key else [
        [f"{self.example_id(example, index)}/{j}/{k}" for k in range(len(s))]
        for j, s in enumerate(sentences)]
    if not len(boxes) == len(sentences) == len(ids):
      raise ValueError(f"{len(boxes)} boxes, {len(sentences)} sentence lists and {len(ids)} id "
                       f"lists: {self.boxes_key}, {self.sentences_key} and {self.ids_key} "
                       "must have one entry per object")
    sentences = [as_texts(texts) for texts in sentences]
    ids = [[as_id(i) for i in text_ids] for text_ids in ids]
    chosen = range(len(boxes)) if rng is None else self.draw(sentences, rng)
    rows = []
    for j in chosen:
      texts, text_ids = sentences[j], ids[j]
      try:  # a bad object (mask, box) fails only its own rows
        if len(texts) != len(text_ids):
          raise ValueError(f"{len(texts)} sentences but {len(text_ids)} ids")
        codes = self.object_codes(example, j, boxes[j])
        fields = self.object_fields(example, j, boxes[j])
      except (ValueError, KeyError, TypeError, IndexError) as e:
        rows += [Row(i, None, error=f"example {index} object {j}: {error_message(e)}")
                 for i in text_ids]
        continue
      ks = range(len(texts)) if rng is None else [int(rng.integers(len(texts)))]
      for k in ks:
        text = texts[k].strip()
        refs = () if codes is None else (self.target(boxes[j], text, codes),)
        rows.append(Row(text_ids[k], self.prompt(text), images, refs, fields))
    return rows


@dataclasses.dataclass(frozen=True)
class ReferringSegmentation(ReferringDetection):
  """`segment {sentence}` (keyword="" gives the bare sentence, big_vision's RefCOCO transfer
  prompt), one row per sentence. With `encode_mask` the reference is `<loc>x4<seg>x16`, followed
  by " {sentence}" when there is a keyword (the detection output format); without it there is no
  reference. `keep_masks` puts the object's full-resolution uint8 [H, W] mask in the row's
  `mask` field for the segmentation evaluator (an array: not for JSON output).
  """

  mask_key: str = "objects/mask"  # [objects] of uint8 [H, W, 1 | 3] (0 / 255)
  encode_mask: MaskEncoder | None = None
  keyword: str = "segment"
  keep_masks: bool = False

  def __post_init__(self) -> None:
    if self.encode_mask is not None and not callable(self.encode_mask):
      raise ValueError(f"encode_mask must be a function (mask, box) -> 16 codes, got "
                       f"{self.encode_mask!r}")
    if self.keyword != self.keyword.strip():
      raise ValueError(f"keyword {self.keyword!r} has surrounding spaces")

  def uses_masks(self) -> bool:
    return self.encode_mask is not None or self.keep_masks

  def fields_read(self) -> list[tuple[str, str]]:
    return super().fields_read() + ([("mask_key", self.mask_key)] if self.uses_masks() else [])

  def image_fields(self) -> tuple[str, ...]:
    return (self.image_key, self.mask_key) if self.uses_masks() else (self.image_key,)

  def prompt(self, sentence: str) -> str:
    return f"{self.keyword} {sentence}" if self.keyword else sentence

  def target(self, box: np.ndarray, sentence: str, codes: str) -> str:
    return f"{loc_tokens(box)}{codes} {sentence}" if self.keyword else loc_tokens(box) + codes

  def mask(self, example: Mapping[str, Any], j: int) -> np.ndarray:
    masks = lookup(example, self.mask_key)
    if j >= len(masks):
      raise ValueError(f"{self.mask_key!r} has {len(masks)} masks; object {j} has none")
    mask = np.asarray(masks[j])
    mask = mask[..., 0] if mask.ndim == 3 else mask
    if mask.ndim != 2 or mask.dtype not in (np.uint8, np.bool_):
      raise ValueError(f"mask {j} must be uint8 [H, W] or [H, W, C], got {mask.dtype} "
                       f"{np.shape(masks[j])}")
    return mask

  def object_codes(self, example: Mapping[str, Any], j: int, box: np.ndarray) -> str | None:
    if self.encode_mask is None:
      return None
    codes = [int(c) for c in np.asarray(self.encode_mask(self.mask(example, j), box)).reshape(-1)]
    if len(codes) != SEG_CODES_PER_MASK or not all(0 <= c < NUM_SEG_TOKENS for c in codes):
      raise ValueError(f"encode_mask gave {codes}; want {SEG_CODES_PER_MASK} codes in "
                       f"[0, {NUM_SEG_TOKENS})")
    return "".join(SEG_TOKENS[c] for c in codes)  # <seg{c:03d}>

  def object_fields(self, example: Mapping[str, Any], j: int, box: np.ndarray
                    ) -> dict[str, Any]:
    fields = super().object_fields(example, j, box)
    return {**fields, "mask": self.mask(example, j)} if self.keep_masks else fields

