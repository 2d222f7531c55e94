"""Parsers for PaliGemma's text outputs (detection boxes, segmentation masks) and their inverses.

Everything works on decoded strings, so it is independent of the tokenizer and of token ids
(`<locNNNN>` / `<segNNN>` are user-defined pieces and survive detokenisation). processor.md §5-§6:

- A box is `<loc>` x 4 in the order ymin, xmin, ymax, xmax; bin = clip(round(v * 1023), 0, 1023)
  with half-to-even rounding, decoded as v = bin / 1023. Pixel edges on the *original* image are
  `int(v * H)` for y and `int(v * W)` for x (truncation, as big_vision's segmentation evaluator);
  max edges are exclusive (`mask[y1:y2, x1:x2]`).
- A segmentation adds `<seg>` x 16 after the box: VQ-VAE codes of the mask crop resized to 64x64.
- Objects are `<loc>x4[<seg>x16][ label]`, joined by " ; ".

Malformed model output never raises. An object is a maximal run of `<loc>` tokens, optional
whitespace, a maximal run of `<seg>` tokens and a label (text up to the next "<" or ";",
stripped). It is kept only if it has exactly 4 loc tokens, 0 or 16 seg tokens (16 for
`parse_segmentations`), every index in range (loc <= 1023, seg <= 127) and ymax > ymin,
xmax > xmin in bins (big_vision's validity rule). Anything else, including text between objects,
is skipped. The *encoders* (boxes/masks -> text) do raise on bad input: that input is ours.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import PIL.Image

from paligemma_jax.data.tokenizer import LOC_MAX, NUM_SEG_TOKENS, loc_tokens
from paligemma_jax.models.vqvae import MASK_SIZE, NUM_TOKENS, decode_codes, encode_masks

SEPARATOR = " ; "
# Strings HF's `skip_special_tokens=True` removes from PaliGemma output; <eos> ends the text.
SPECIAL_STRINGS = ("<pad>", "<bos>", "<unk>", "<image>")

# DecodeFn: codes [N, 16] int32 -> mask logits [N, 64, 64, 1] or [N, 64, 64].
# EncodeFn: masks [N, 64, 64, 1] in [0, 1] -> codes [N, 16].
DecodeFn = Callable[[np.ndarray], np.ndarray]
EncodeFn = Callable[[np.ndarray], np.ndarray]
ImageHW = tuple[int, int]

# [0-9], not \d: \d also matches other scripts' digits, which int() would then accept.
_OBJECT_RE = re.compile(r"(?P<loc>(?:<loc[0-9]{4}>)+)\s*(?P<seg>(?:<seg[0-9]{3}>)*)"
                        r"(?P<label>[^<;]*)")
_INDEX_RE = re.compile(r"[0-9]+")


@dataclasses.dataclass(frozen=True)
class ParsedObject:
  """One object as tokens: 4 loc bins (y1, x1, y2, x2), 16 seg codes or None, a label."""

  loc: tuple[int, int, int, int]
  seg: tuple[int, ...] | None
  label: str


@dataclasses.dataclass(frozen=True)
class DetectedObject:
  """An object placed on the original image.

  Attributes:
    label: the text after the tokens ("" if none, as in RefCOCO segmentation output).
    box: pixel edges (ymin, xmin, ymax, xmax) on the original image, max exclusive.
    box_normalized: (ymin, xmin, ymax, xmax) = bins / 1023.
    loc: the 4 loc bins.
    seg: the 16 VQ-VAE codes, or None for a detection.
    mask: bool [H, W] for a segmentation (all False if the box collapses to no pixel), else None.
  """

  label: str
  box: tuple[int, int, int, int]
  box_normalized: tuple[float, float, float, float]
  loc: tuple[int, int, int, int]
  seg: tuple[int, ...] | None = None
  mask: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def xyxy(self) -> tuple[int, int, int, int]:
    """Pixel edges as (xmin, ymin, xmax, ymax), the PIL / COCO-corner order."""
    y1, x1, y2, x2 = self.box
    return x1, y1, x2, y2


# --- text clean-up -------------------------------------------------------------------------------


def clean_generated_text(text: str, prompt: str | None = None) -> str:
  """Generated text as evaluators and parsers want it.

  Cuts at the first "<eos>" (big_vision's `stop_at_eos`), drops the strings HF's
  `skip_special_tokens=True` drops, removes an echoed prompt and strips surrounding whitespace.

  Args:
    text: decoded output, with or without special-token strings.
    prompt: if given, a leading echo of it (HF `generate` returns prompt + answer, decoded as
      "prompt\\nanswer") is removed; as HF's pipeline does, the echo must start within the
      first 2 characters, otherwise the text is left alone.
  """
  text = text.split("<eos>", 1)[0]
  for special in SPECIAL_STRINGS:
    text = text.replace(special, "")
  if prompt is not None:
    for special in SPECIAL_STRINGS:
      prompt = prompt.replace(special, "")
    for echo in (prompt + "\n", prompt):
      start = text.find(echo)
      if echo and 0 <= start <= 2:
        text = text[start + len(echo):]
        break
  return text.strip()


# --- boxes ---------------------------------------------------------------------------------------


def box_from_bins(loc: Sequence[int]) -> tuple[float, float, float, float]:
  """Normalised box of 4 loc bins: bin / 1023."""
  return tuple(float(b) / LOC_MAX for b in loc)


def box_to_pixels(loc: Sequence[int], image_hw: ImageHW) -> tuple[int, int, int, int]:
  """Pixel edges (ymin, xmin, ymax, xmax) of 4 loc bins on an image of size (H, W).

  `int(bin / 1023 * H)` in float64, exactly big_vision's `map(int, (y1 * h, x1 * w, ...))`.
  """
  h, w = image_hw
  y1, x1, y2, x2 = np.asarray(loc, np.int64) / LOC_MAX
  return int(y1 * h), int(x1 * w), int(y2 * h), int(x2 * w)


def encode_detections(boxes_normalized: Sequence[Sequence[float]], labels: Sequence[str]) -> str:
  """Text of detections: `<loc>x4 label` per object, joined by " ; " (the inverse of parsing)."""
  if len(boxes_normalized) != len(labels):
    raise ValueError(f"{len(boxes_normalized)} boxes but {len(labels)} labels")
  return SEPARATOR.join(_object_text(loc_tokens(box), label)
                        for box, label in zip(boxes_normalized, labels))


def _object_text(tokens: str, label: str) -> str:
  if any(c in label for c in "<;"):
    raise ValueError(f"label {label!r} contains '<' or ';', which the output format cannot carry")
  return f"{tokens} {label}" if label else tokens


# --- parsing -------------------------------------------------------------------------------------


def parse_objects(text: str) -> list[ParsedObject]:
  """Every well-formed object of `text`, in order (see the module docstring for the rules)."""
  objects = []
  for match in _OBJECT_RE.finditer(text):
    loc = [int(i) for i in _INDEX_RE.findall(match["loc"])]
    seg = [int(i) for i in _INDEX_RE.findall(match["seg"])]
    if len(loc) != 4 or len(seg) not in (0, NUM_TOKENS):
      continue
    if max(loc) > LOC_MAX or (seg and max(seg) >= NUM_SEG_TOKENS):
      continue
    if loc[2] <= loc[0] or loc[3] <= loc[1]:
      continue
    objects.append(ParsedObject(tuple(loc), tuple(seg) if seg else None, match["label"].strip()))
  return objects


def parse_detections(text: str, image_hw: ImageHW) -> list[DetectedObject]:
  """Boxes of `text` on an image of (H, W) pixels; seg codes, if present, are kept, not decoded."""
  return [DetectedObject(o.label, box_to_pixels(o.loc, image_hw), box_from_bins(o.loc), o.loc,
                         o.seg) for o in parse_objects(text)]


def parse_segmentations(text: str, image_hw: ImageHW, decode_fn: DecodeFn) -> list[DetectedObject]:
  """Objects of `text` with 16 seg codes, each with its mask on an image of (H, W) pixels.

  Args:
    text: decoded model output.
    image_hw: the original image's (H, W).
    decode_fn: codes [N, 16] int32 -> mask logits [N, 64, 64(, 1)], e.g. `mask_decoder(params)`.
  """
  objects = [o for o in parse_objects(text) if o.seg is not None]
  if not objects:
    return []
  logits = np.asarray(decode_fn(np.array([o.seg for o in objects], np.int32)), np.float32)
  logits = logits.reshape(len(objects), MASK_SIZE, MASK_SIZE)
  found = []
  for o, logits_64x64 in zip(objects, logits):
    box = box_to_pixels(o.loc, image_hw)
    found.append(DetectedObject(o.label, box, box_from_bins(o.loc), o.loc, o.seg,
                                paste_mask(logits_64x64, box, image_hw)))
  return found


def paste_mask(logits_64x64: np.ndarray, box: Sequence[int], image_hw: ImageHW) -> np.ndarray:
  """Image-sized bool mask [H, W]: the 64x64 logits resized into the pixel box, `> 0`.

  big_vision's evaluator rule: PIL bilinear resize of the float mask to (xmax - xmin, ymax - ymin),
  threshold at 0. A box that truncation collapsed to no pixel (big_vision: invalid) gives an
  all-False mask.
  """
  y1, x1, y2, x2 = box
  mask = np.zeros(image_hw, bool)
  if y2 <= y1 or x2 <= x1:
    return mask
  image = PIL.Image.fromarray(np.asarray(logits_64x64, np.float32))  # mode "F"
  resized = np.asarray(image.resize((x2 - x1, y2 - y1), resample=PIL.Image.BILINEAR))
  mask[y1:y2, x1:x2] = resized > 0
  return mask


# --- segmentation encoding (training targets) ----------------------------------------------------


def mask_crop_64(mask: np.ndarray, box_normalized: Sequence[float]) -> np.ndarray:
  """The VQ-VAE encoder's input for one object: float32 [64, 64] in [0, 1].

  big_vision's `refcoco_mask2str`: box edges `round(H * ymin)` etc. (float32, half-to-even), crop
  the 0/255 mask, `tf.image.resize(..., [64, 64], "bilinear", antialias=True)`, divide by 255.
  The resize is a NumPy replica of TF's scale-and-translate triangle kernel (no TensorFlow).

  Args:
    mask: [H, W] bool, or uint8 in [0, 255] as big_vision's TFDS masks.
    box_normalized: (ymin, xmin, ymax, xmax) in [0, 1].
  """
  mask = np.asarray(mask)
  if mask.ndim != 2 or mask.dtype not in (np.bool_, np.uint8):
    raise ValueError(f"mask must be [H, W] bool or uint8, got {mask.dtype} {mask.shape}")
  h, w = mask.shape
  box = np.asarray(box_normalized, np.float32)
  y1, y2 = (int(np.round(np.float32(h) * box[i])) for i in (0, 2))
  x1, x2 = (int(np.round(np.float32(w) * box[i])) for i in (1, 3))
  crop = mask[y1:y2, x1:x2].astype(np.float32) * (255.0 if mask.dtype == np.bool_ else 1.0)
  if crop.size == 0:
    raise ValueError(f"box {tuple(box)} covers no pixel of the {h}x{w} mask ({y1}:{y2}, {x1}:{x2})")
  resized = _resize_weights(crop.shape[0]) @ crop @ _resize_weights(crop.shape[1]).T
  return (resized / np.float32(255.0)).astype(np.float32)


@functools.lru_cache(maxsize=256)
def _resize_weights(in_size: int, out_size: int = MASK_SIZE) -> np.ndarray:
  """[out, in] float32 rows of TF's antialiased bilinear (triangle) resize along one axis.

  Output pixel i samples at (i + 0.5) * in / out; source j weighs max(0, 1 - |j + 0.5 - sample| /
  kernel_scale) with kernel_scale = max(in / out, 1) (wider when shrinking: the antialias), and
  each row is normalised to sum 1 (which also handles the edges).
  """
  inv_scale = in_size / out_size
  kernel_scale = max(inv_scale, 1.0)
  sample = (np.arange(out_size) + 0.5) * inv_scale
  weights = np.maximum(0.0, 1.0 - np.abs(np.arange(in_size)[None, :] + 0.5 - sample[:, None])
                       / kernel_scale)
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def segmentation_codes(mask: np.ndarray, box_normalized: Sequence[float],
                       encode_fn: EncodeFn) -> tuple[int, ...]:
  """The 16 VQ-VAE codes of one object's mask (see `mask_crop_64`)."""
  crop = mask_crop_64(mask, box_normalized)
  codes = np.asarray(encode_fn(crop[None, :, :, None])).reshape(-1)
  return tuple(int(c) for c in codes)


def encode_segmentations(masks: Sequence[np.ndarray], boxes_normalized: Sequence[Sequence[float]],
                         encode_fn: EncodeFn, labels: Sequence[str] | None = None) -> str:
  """Text of segmentations: `<loc>x4<seg>x16[ label]` per object, joined by " ; ".

  With one object and no label this is big_vision's RefCOCO target suffix.
  """
  labels = [""] * len(masks) if labels is None else labels
  if not len(masks) == len(boxes_normalized) == len(labels):
    raise ValueError(f"{len(masks)} masks, {len(boxes_normalized)} boxes, {len(labels)} labels")
  parts = []
  for mask, box, label in zip(masks, boxes_normalized, labels):
    seg = "".join(f"<seg{c:03d}>" for c in segmentation_codes(mask, box, encode_fn))
    parts.append(_object_text(loc_tokens(box) + seg, label))
  return SEPARATOR.join(parts)


# --- the VQ-VAE as decode / encode functions ------------------------------------------------------


def mask_decoder(vqvae_params: Mapping) -> DecodeFn:
  """`decode_fn` for `parse_segmentations` from VQ-VAE params (e.g. `load_vqvae_npz(...)`)."""
  return functools.partial(decode_codes, vqvae_params["decoder"])


def mask_encoder(vqvae_params: Mapping) -> EncodeFn:
  """`encode_fn` for `encode_segmentations` / `segmentation_codes` from VQ-VAE params."""
  return functools.partial(encode_masks, vqvae_params["encoder"])
