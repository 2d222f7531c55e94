"""Draw parsed detections and segmentations on the input image and save them as PNG.

Masks become translucent colour fills, boxes 2-pixel outlines, labels white text on a filled tag
at the box's top-left corner (inside the image). Pixels covered by none of these are unchanged.
Objects are anything with `box` (ymin, xmin, ymax, xmax pixel edges, max exclusive), `label` and
`mask` (bool [H, W] or None) attributes, such as `parsers.DetectedObject`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

# Distinct, saturated colours (tab10-like); object i gets PALETTE[i % len(PALETTE)].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


class Drawable(Protocol):
  label: str
  box: tuple[int, int, int, int]
  mask: np.ndarray | None


def _to_rgb(image: Any) -> PIL.Image.Image:
  if isinstance(image, PIL.Image.Image):
    return image.convert("RGB")
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(f"image must be a PIL image or uint8 [H, W, 3], got {array.dtype} "
                     f"{array.shape}")
  return PIL.Image.fromarray(array)


def draw_overlay(image: Any, objects: Sequence[Drawable], *, alpha: float = 0.45,
                 line_width: int = 2, font_size: int = 12) -> PIL.Image.Image:
  """A new RGB image: `image` with every object's mask, box and label drawn on it.

  Args:
    image: PIL image (any mode; converted to RGB) or uint8 [H, W, 3].
    objects: parsed objects (see the module docstring), drawn in order.
    alpha: opacity of the mask fills.
    line_width: box outline width in pixels, drawn inside the box.
    font_size: label text size (PIL's default font).
  """
  canvas = _to_rgb(image)
  width, height = canvas.size
  # Masks first, so outlines and labels stay crisp on top of the fills.
  pixels = np.asarray(canvas, np.float32).copy()
  for i, obj in enumerate(objects):
    if obj.mask is None:
      continue
    mask = np.asarray(obj.mask, bool)
    if mask.shape != (height, width):
      raise ValueError(f"mask of {obj.label!r} is {mask.shape}, the image is {(height, width)}")
    colour = np.asarray(PALETTE[i % len(PALETTE)], np.float32)
    pixels[mask] = (1 - alpha) * pixels[mask] + alpha * colour
  canvas = PIL.Image.fromarray(np.round(pixels).astype(np.uint8))

  draw = PIL.ImageDraw.Draw(canvas)
  font = PIL.ImageFont.load_default(size=font_size)
  for i, obj in enumerate(objects):
    y1, x1, y2, x2 = obj.box
    if y2 <= y1 or x2 <= x1:
      continue
    colour = PALETTE[i % len(PALETTE)]
    # PIL rectangles include their end point: the last pixel row/column is y2 - 1 / x2 - 1.
    draw.rectangle((x1, y1, x2 - 1, y2 - 1), outline=colour, width=line_width)
    if obj.label:
      left, top, right, bottom = draw.textbbox((0, 0), obj.label, font=font)
      tag_w, tag_h = right - left + 4, bottom - top + 4
      tx = min(x1, max(width - tag_w, 0))
      ty = min(y1, max(height - tag_h, 0))
      draw.rectangle((tx, ty, tx + tag_w - 1, ty + tag_h - 1), fill=colour)
      draw.text((tx + 2 - left, ty + 2 - top), obj.label, fill=(255, 255, 255), font=font)
  return canvas


def save_overlay(image: Any, objects: Sequence[Drawable], path: str | os.PathLike,
                 **options: Any) -> None:
  """Writes `draw_overlay(image, objects, **options)` as a PNG at `path`."""
  draw_overlay(image, objects, **options).save(path, format="PNG")
