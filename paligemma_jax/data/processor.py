"""PaliGemma's processor: images + prompts (+ suffixes) -> padded token ids, masks and pixels.

Layout of one row (the paper's, and both references'):

  [<image> x N x n_images] [bos] [prompt] ["\\n"] [suffix] [eos] [pad ...]
  |------------------ prefix: bidirectional ----------|-- suffix: causal --|

- `<image>` placeholders (`tokenizer.image_token_id`) are overwritten by the model with image
  embeddings; N = `num_image_tokens` per image (256 / 1024 / 4096 at 224 / 448 / 896 px).
- A prompt may place the images itself with `<image>` markers, as in HF: each marker becomes N
  placeholders, text before a marker stays before it, and bos follows the last image block.
  Without markers the images go first (HF's default path).
- The suffix (the target) is `suffix + eos`, tokenized on its own, as HF's `text_pair` and
  big_vision both do.

Outputs follow both vocabularies: HF's (`token_type_ids`, `labels`, `input_mask` = attention_mask)
and big_vision's (`mask_ar`, `mask_loss`); `mask_ar` is 0 on the prefix, 1 on suffix and pads.

Tokenization of the prefix. HF tokenizes `bos + prompt + "\\n"` as one string (and reads special
strings such as "<bos>" inside the prompt as special tokens); big_vision tokenizes the prompt and
"\\n" separately (special strings are plain text). They differ when the end of the prompt and "\\n"
merge into one piece, e.g. a prompt ending in "\\n": Gemma has "\\n\\n" as a piece, so HF gives
[.., "\\n\\n"] and big_vision [.., "\\n", "\\n"]. The default `tokenization="hf"` is HF-identical;
`tokenization="big_vision"` reproduces big_vision.

Differences from HF's PaliGemmaProcessor (v5), all deliberate: `max_length` truncates at the end of
each row and refuses to cut into the images (HF's truncation alternates between text and suffix
and can cut image tokens); every row must have the same number of images (pixels are one
[B, n_images, ...] array); markers are optional per row, so a batch may mix rows with and without
them (HF's marker path would put its bos at character 6 of a row without markers); one image may
be shared by all prompts (HF v5 refuses it); `prompts=None` means empty prompts (HF v5 then
returns pixels only).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from paligemma_jax.data.images import (IMAGE_METHODS, check_pixel_values, is_image, preprocess_image,
                                      resize_image, scale_pixels)
from paligemma_jax.data.tokenizer import IMAGE_TOKEN, Tokenizer

TOKENIZATIONS = ("hf", "big_vision")
PADDING_SIDES = ("left", "right")
IGNORE_LABEL = -100  # HF's label for positions without a loss.


class Processor:
  """Turns a batch of (images, prompt, optional suffix) into model inputs.

  Attributes:
    tokenizer: the PaliGemma tokenizer; its loc/seg pieces are checked at construction.
    image_size: side of the square images the vision encoder takes, in pixels.
    num_image_tokens: N, the image placeholders per image.
    image_method: "hf" (PIL bicubic) or "big_vision" (TF bilinear), see data/images.py.
    antialias: big_vision resize's antialias flag (only with image_method="big_vision").
    tokenization: "hf" or "big_vision", see the module docstring.
  """

  def __init__(self, tokenizer: Tokenizer, image_size: int, num_image_tokens: int, image_method: str = "hf", *,
               antialias: bool = False, tokenization: str = "hf") -> None:
    if image_method not in IMAGE_METHODS:
      raise ValueError(f"unknown image_method {image_method!r}; use one of {IMAGE_METHODS}")
    if tokenization not in TOKENIZATIONS:
      raise ValueError(f"unknown tokenization {tokenization!r}; use one of {TOKENIZATIONS}")
    if antialias and image_method != "big_vision":
      raise ValueError("antialias=True applies to image_method='big_vision' only (PIL bicubic always antialiases)")
    for name, value in (("image_size", image_size), ("num_image_tokens", num_image_tokens)):
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    tokenizer.check()
    self.tokenizer = tokenizer
    self.image_size = int(image_size)
    self.num_image_tokens = int(num_image_tokens)
    self.image_method = image_method
    self.antialias = antialias
    self.tokenization = tokenization

  def __call__(self, images: Any, prompts: str | list[str] | None, suffixes: str | list[str] | None = None, *,
               padding_side: str = "left", max_length: int | None = None,
               pixel_values: Any = None) -> dict[str, np.ndarray]:
    """Builds a padded batch.

    Args:
      images: one image (shared by every prompt), a list with one image per prompt, or a list of
        lists (several images per prompt, the same count in every row). An image is a PIL image
        or an array, see data/images.py. None when `pixel_values` is given.
      prompts: a prompt or a list of prompts; None means empty prompts (plain captioning).
      suffixes: the targets for training, one per prompt; None at inference.
      padding_side: "left" (HF, batched prefill) or "right" (big_vision training layout).
      max_length: if given, every row is cut at its end to this length and the batch is padded to
        exactly this length. It counts all tokens, image placeholders included. Cutting into the
        images or their bos is an error; a cut suffix loses its eos, as in big_vision.
      pixel_values: instead of `images`, already-preprocessed float pixels in [-1, 1] of shape
        [B, n_images, S, S, 3] or [B, S, S, 3].

    Returns:
      tokens: int32 [B, L], image placeholders included, pads = tokenizer.pad_id.
      input_mask: bool [B, L], True on real tokens (HF's attention_mask).
      token_type_ids: int32 [B, L], 1 on suffix + eos, 0 on the prefix and pads (HF).
      mask_ar: int32 [B, L], 0 on the prefix, 1 on suffix + eos and on pads (big_vision).
      mask_loss: int32 [B, L], 1 on suffix + eos, else 0 (big_vision).
      labels: int32 [B, L], the token where token_type_ids == 1, else -100 (HF).
      images: float32 [B, n_images, S, S, 3] in [-1, 1], channels last.
    """
    if padding_side not in PADDING_SIDES:
      raise ValueError(f"unknown padding_side {padding_side!r}; use one of {PADDING_SIDES}")
    pixels = self._pixels(images, prompts, pixel_values)
    num_rows, num_images = pixels.shape[:2]
    prompt_list = _as_text_list(prompts, num_rows, "prompts")
    suffix_list = None if suffixes is None else _as_text_list(suffixes, num_rows, "suffixes")
    batch = self.text_arrays(prompt_list, suffix_list, num_images, padding_side=padding_side,
                             max_length=max_length)
    batch["images"] = pixels
    return batch

  def text_arrays(self, prompts: list[str], suffixes: list[str] | None, num_images: int, *,
                  padding_side: str = "left", max_length: int | None = None
                  ) -> dict[str, np.ndarray]:
    """The token arrays of `__call__` (all but "images") for rows of `num_images` images each.

    `prompts` and `suffixes` are lists of strings of the same length (`suffixes` None at
    inference); the other arguments are `__call__`'s.
    """
    if padding_side not in PADDING_SIDES:
      raise ValueError(f"unknown padding_side {padding_side!r}; use one of {PADDING_SIDES}")
    for name, texts in (("prompts", prompts), ("suffixes", suffixes or [])):
      for i, text in enumerate(texts):
        if not isinstance(text, str):
          raise ValueError(f"{name}[{i}] is a {type(text).__name__}, not a str")
    rows = []
    for i, prompt in enumerate(prompts):
      ids = self.prefix_ids(prompt, num_images, row=i)
      num_prefix = len(ids)
      if suffixes is not None:
        ids += self.suffix_ids(suffixes[i], row=i)
      rows.append((ids, num_prefix))
    return self._pad(rows, padding_side, max_length)

  def prefix_ids(self, prompt: str, num_images: int, row: int = 0) -> list[int]:
    """Ids of one row's prefix: image placeholders, bos, prompt, "\\n" (see the module docstring)."""
    parts = prompt.split(IMAGE_TOKEN)
    block = [self.tokenizer.image_token_id] * self.num_image_tokens
    if len(parts) == 1:
      return block * num_images + [self.tokenizer.bos_id] + self._text_ids(prompt, newline=True)
    if len(parts) - 1 != num_images:
      raise ValueError(
          f"prompt {row} has {len(parts) - 1} {IMAGE_TOKEN} markers but {num_images} images; write one marker per "
          "image, or none to put the images first")
    ids = []
    for text in parts[:-1]:
      ids += self._text_ids(text) + block
    return ids + [self.tokenizer.bos_id] + self._text_ids(parts[-1], newline=True)

  def suffix_ids(self, suffix: str, row: int = 0) -> list[int]:
    """Ids of one row's target: suffix + eos."""
    if IMAGE_TOKEN in suffix:
      raise ValueError(f"suffix {row} contains {IMAGE_TOKEN}; image markers belong in the prompt")
    return self._text_ids(suffix) + [self.tokenizer.eos_id]

  def _text_ids(self, text: str, newline: bool = False) -> list[int]:
    """Ids of a text segment, optionally followed by the "\\n" separator (see `tokenization`)."""
    if self.tokenization == "hf":
      return self.tokenizer.encode(text + "\n" if newline else text, parse_special=True)
    return self.tokenizer.encode(text) + ([self.tokenizer.newline_id] if newline else [])

  def _pixels(self, images: Any, prompts: Any, pixel_values: Any) -> np.ndarray:
    """float32 [B, n_images, S, S, 3] from `images` or `pixel_values`; B follows the prompts."""
    num_rows = None if prompts is None else (1 if isinstance(prompts, str) else _len_or_none(prompts))
    if pixel_values is not None:
      if images is not None:
        raise ValueError("pass either images or pixel_values, not both")
      pixels = check_pixel_values(pixel_values, self.image_size)
      if pixels.ndim == 4:
        pixels = pixels[:, None]
      if pixels.ndim != 5:
        raise ValueError(f"pixel_values must be [B, n_images, S, S, 3] or [B, S, S, 3], got shape {pixels.shape}")
      if num_rows is not None and pixels.shape[0] != num_rows:
        raise ValueError(f"got pixel_values for {pixels.shape[0]} rows but {num_rows} prompts; pass one row per prompt")
      if pixels.shape[1] == 0:
        raise ValueError("pixel_values holds no image per row; PaliGemma needs at least one")
      return pixels
    per_row = _images_per_row(images, num_rows)
    size = self.image_size
    # Each image is written straight into its slot of the batch (no per-image array, no stack).
    pixels = np.empty((len(per_row), len(per_row[0]), size, size, 3), np.float32)
    done: dict[int, np.ndarray] = {}  # One image shared by several rows is preprocessed once.
    for i, row in enumerate(per_row):
      for j, im in enumerate(row):
        if id(im) in done:
          pixels[i, j] = done[id(im)]
        else:
          done[id(im)] = preprocess_image(im, size, self.image_method, self.antialias,
                                          out=pixels[i, j])
    return pixels

  def resized_images(self, images: list[Any], out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [n_images, S, S, 3]: one row's images resized by `image_method` but not yet
    normalised; `scale_images` of them gives `__call__`'s float32 images for that row, exactly.
    Written into `out` (C-contiguous uint8 of that shape) if given.

    The training input keeps images this way until they are batched (a quarter of the bytes).
    """
    size = self.image_size
    pixels = np.empty((len(images), size, size, 3), np.uint8) if out is None else out
    for j, image in enumerate(images):
      resize_image(image, size, self.image_method, self.antialias, out=pixels[j])
    return pixels

  def scale_images(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 [..., S, S, 3] in [-1, 1] of `resized_images`' uint8 pixels (any leading axes,
    e.g. a batch [B, n_images, S, S, 3]); written into `out` (float32, same shape) if given."""
    return scale_pixels(np.ascontiguousarray(pixels), self.image_method, out=out)

  def _pad(self, rows: list[tuple[list[int], int]], padding_side: str,
           max_length: int | None) -> dict[str, np.ndarray]:
    """Truncates (if max_length) and pads the rows, each (ids, number of prefix ids), into the
    output arrays."""
    if max_length is not None:
      if not isinstance(max_length, (int, np.integer)) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
      image_id = self.tokenizer.image_token_id
      for i, (ids, _) in enumerate(rows):
        if len(ids) <= max_length:
          continue
        keep = len(ids) - ids[::-1].index(image_id) + 1  # Through the bos after the last image block.
        if keep > max_length:
          raise ValueError(
              f"max_length={max_length} would cut into the image tokens of row {i} (they and their bos end at "
              f"{keep}); use max_length >= {keep}, it counts image tokens")
      rows = [(ids[:max_length], min(num_prefix, max_length)) for ids, num_prefix in rows]
    length = max(len(ids) for ids, _ in rows) if max_length is None else int(max_length)
    tokens = np.full((len(rows), length), self.tokenizer.pad_id, np.int32)
    input_mask = np.zeros((len(rows), length), bool)
    token_type_ids = np.zeros((len(rows), length), np.int32)
    for i, (ids, num_prefix) in enumerate(rows):
      start = length - len(ids) if padding_side == "left" else 0
      tokens[i, start:start + len(ids)] = ids
      input_mask[i, start:start + len(ids)] = True
      token_type_ids[i, start + num_prefix:start + len(ids)] = 1  # the suffix and its eos
    return {
        "tokens": tokens,
        "input_mask": input_mask,
        "token_type_ids": token_type_ids,
        "mask_ar": np.where(input_mask, token_type_ids, 1).astype(np.int32),
        "mask_loss": token_type_ids.copy(),
        "labels": np.where(token_type_ids == 1, tokens, IGNORE_LABEL).astype(np.int32),
    }


def _len_or_none(obj: Any) -> int | None:
  return len(obj) if isinstance(obj, (list, tuple)) else None


def _as_text_list(texts: Any, num_rows: int, name: str) -> list[str]:
  """A list of `num_rows` strings from a string, a list of strings, or None (prompts only)."""
  if texts is None:
    return [""] * num_rows
  if isinstance(texts, str):
    texts = [texts]
  if not isinstance(texts, (list, tuple)):
    raise ValueError(f"{name} must be a str or a list of str, got {type(texts).__name__}")
  if len(texts) != num_rows:
    raise ValueError(f"got {len(texts)} {name} for {num_rows} rows of images; pass one per prompt")
  return list(texts)  # each a str: text_arrays checks


def _images_per_row(images: Any, num_rows: int | None) -> list[list[Any]]:
  """Images grouped by row: [[img, ...], ...], each row with the same count.

  `num_rows` is the number of prompts (None if prompts were not given: then the images decide).
  """
  if images is None:
    raise ValueError("images is None; PaliGemma needs at least one image per prompt (or pass pixel_values)")
  if is_image(images):
    return [[images]] * (num_rows or 1)
  if not isinstance(images, (list, tuple)) or not images:
    raise ValueError(
        f"images must be an image, a list of images or a list of lists of images, got {_describe(images)}")
  if num_rows is not None and len(images) != num_rows:
    hint = "; for several images per prompt pass a list of lists, e.g. [[img1, img2]]" if num_rows == 1 else ""
    raise ValueError(f"got {len(images)} images (rows) for {num_rows} prompts; pass one per prompt{hint}")
  rows = []
  for i, entry in enumerate(images):
    row = list(entry) if isinstance(entry, (list, tuple)) else [entry]
    if not row:
      raise ValueError(f"images[{i}] is an empty list; every prompt needs at least one image")
    for j, image in enumerate(row):
      if not is_image(image):
        where = f"images[{i}][{j}]" if isinstance(entry, (list, tuple)) else f"images[{i}]"
        raise ValueError(f"{where} is {_describe(image)}, not an image; pass a PIL.Image or an array [H, W, 3]")
    rows.append(row)
  counts = sorted({len(row) for row in rows})
  if len(counts) > 1:
    raise ValueError(f"rows have different numbers of images {counts}; every prompt needs the same count")
  return rows


def _describe(obj: Any) -> str:
  """Short description of a bad input for error messages."""
  if isinstance(obj, (list, tuple)):
    return f"an empty {type(obj).__name__}" if not obj else f"a {type(obj).__name__} of {type(obj[0]).__name__}"
  return f"a {type(obj).__name__}"
