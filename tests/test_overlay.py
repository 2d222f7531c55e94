"""PNG overlays: drawn pixels change, everything else is left exactly as it was."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from paligemma_jax.inference.overlay import PALETTE, draw_overlay, save_overlay
from paligemma_jax.inference.parsers import DetectedObject, parse_detections


def _image(h: int = 60, w: int = 90) -> np.ndarray:
  rng = np.random.default_rng(0)
  return rng.integers(90, 160, (h, w, 3), dtype=np.uint8)  # grey noise, unlike the palette


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
  return (before != after).any(axis=-1)


def test_box_edges_and_label_are_drawn_and_the_rest_is_unchanged(tmp_path):
  image = _image()
  [obj] = parse_detections("<loc0341><loc0341><loc0682><loc0682>", (60, 90))  # no label
  assert obj.box == (20, 30, 40, 60)
  path = tmp_path / "boxes.png"
  save_overlay(image, [obj], path)
  out = np.asarray(PIL.Image.open(path).convert("RGB"))
  assert PIL.Image.open(path).format == "PNG" and out.shape == image.shape
  changed = _changed(image, out)
  # The 2-px outline lies inside the box, on all four edges, in the object's colour.
  for edge in (out[20, 30:60], out[39, 30:60], out[20:40, 30], out[20:40, 59], out[21, 31:59]):
    assert (edge == PALETTE[0]).all()
  assert not changed[22:38, 32:58].any()  # the inside of the box
  outside = np.ones(changed.shape, bool)
  outside[20:40, 30:60] = False
  assert not changed[outside].any()


def test_mask_is_a_translucent_fill_inside_the_mask_only():
  image = _image()
  mask = np.zeros((60, 90), bool)
  mask[25:35, 35:50] = True
  obj = DetectedObject("", (20, 30, 40, 60), (0, 0, 0, 0), (0, 0, 0, 0), mask=mask)
  out = np.asarray(draw_overlay(image, [obj], alpha=0.5))
  changed = _changed(image, out)
  assert changed[mask].all()
  blend = np.round(0.5 * image[mask].astype(np.float32) + 0.5 * np.asarray(PALETTE[0], np.float32))
  np.testing.assert_array_equal(out[mask], blend.astype(np.uint8))  # translucent: image still shows
  box_ring = np.zeros_like(mask)
  box_ring[20:40, 30:60] = True
  box_ring[22:38, 32:58] = False
  assert not changed[~mask & ~box_ring].any()


def test_labels_are_drawn_near_the_box_and_objects_get_distinct_colours():
  image = _image(120, 160)
  objects = parse_detections(
      "<loc0100><loc0100><loc0500><loc0500> cat ; <loc0600><loc0600><loc1000><loc1000> dog",
      (120, 160))
  out = np.asarray(draw_overlay(image, objects, font_size=10))
  unlabelled = [DetectedObject("", o.box, o.box_normalized, o.loc) for o in objects]
  bare = np.asarray(draw_overlay(image, unlabelled))
  label_pixels = _changed(bare, out)
  assert label_pixels.any()
  ys, xs = np.nonzero(label_pixels)
  first, second = objects[0].box, objects[1].box
  near = lambda y, x, b: b[0] <= y < b[0] + 20 and b[1] <= x < b[1] + 40
  assert all(near(y, x, first) or near(y, x, second) for y, x in zip(ys, xs))
  assert (out[second[0] + 10, second[3] - 1] == PALETTE[1]).all()  # the second object's right edge
  assert tuple(out[first[2] - 1, first[1] + 10]) == PALETTE[0]


def test_accepts_pil_images_and_rejects_bad_input():
  image = PIL.Image.fromarray(_image()).convert("L")
  [obj] = parse_detections("<loc0341><loc0341><loc0682><loc0682> x", (60, 90))
  assert draw_overlay(image, [obj]).mode == "RGB"
  assert np.array_equal(np.asarray(draw_overlay(_image(), [])), _image())
  with pytest.raises(ValueError, match="uint8"):
    draw_overlay(_image().astype(np.float32), [obj])
  bad = DetectedObject("x", (0, 0, 5, 5), (0, 0, 0, 0), (0, 0, 0, 0), mask=np.zeros((5, 5), bool))
  with pytest.raises(ValueError, match="the image is"):
    draw_overlay(_image(), [bad])
