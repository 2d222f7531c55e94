"""Output parsers: loc/seg encodings (processor.md §5-§6), pixel maths, masks, malformed text."""

from __future__ import annotations

import numpy as np
import pytest

from paligemma_jax.inference.parsers import (
    DetectedObject, ParsedObject, box_from_bins, box_to_pixels, clean_generated_text,
    encode_detections, encode_segmentations, mask_crop_64, mask_decoder, mask_encoder,
    parse_detections, parse_objects, parse_segmentations, paste_mask, segmentation_codes)
from paligemma_jax.data.tokenizer import loc_bins, loc_tokens
from paligemma_jax.models.vqvae import init_vqvae_params

CODES = tuple(range(0, 128, 8))
SEG = "".join(f"<seg{c:03d}>" for c in CODES)  # 16 valid seg tokens


def LOC(*bins: int) -> str:  # noqa: N802 (reads like the token text it builds)
  return "".join(f"<loc{b:04d}>" for b in bins)


def constant_decoder(value: float):
  """A stub VQ-VAE decoder: every code decodes to a constant mask (exact under PIL resizing)."""
  calls = []

  def decode(codes):
    calls.append(np.array(codes))
    return np.full((len(codes), 64, 64, 1), value, np.float32)

  decode.calls = calls
  return decode


@pytest.fixture(scope="module")
def vqvae_params():
  return init_vqvae_params(0)


# --- loc encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("value, token, decoded", [
    (0.1, "<loc0102>", 0.09971), (0.5, "<loc0512>", 0.50049), (0.25, "<loc0256>", 0.25024),
    (1.0, "<loc1023>", 1.0), (0.0, "<loc0000>", 0.0), (-0.2, "<loc0000>", 0.0),
    (1.7, "<loc1023>", 1.0)])
def test_processor_md_loc_examples(value, token, decoded):
  assert loc_tokens([value] * 4) == token * 4
  assert box_from_bins(loc_bins([value] * 4))[0] == pytest.approx(decoded, abs=5e-6)


def test_loc_rounding_is_float32_half_to_even():
  # float32(0.0024437927) * 1023 is exactly 2.5 in float32 -> 2 (half-to-even; half-up gives 3).
  assert loc_bins([0.002443792764097452, 0, 0, 0])[0] == 2
  # float32 product 8.5 exactly -> 8, as big_vision's tf.round on float32 boxes; float64 gives 9.
  assert loc_bins([0.008308895863592625, 0, 0, 0])[0] == 8


def test_every_bin_round_trips():
  bins = np.arange(1024)
  for b in bins:
    box = box_from_bins([b, b, b, b])
    assert loc_bins(box) == (b, b, b, b)


def test_detection_text_round_trip():
  boxes = [(0.1, 0.2, 0.5, 1.0), (0.0, 0.0, 0.25, 0.3333)]
  text = encode_detections(boxes, ["cat", "big dog"])
  assert text == LOC(102, 205, 512, 1023) + " cat ; " + LOC(0, 0, 256, 341) + " big dog"
  objects = parse_objects(text)
  assert objects == [ParsedObject((102, 205, 512, 1023), None, "cat"),
                     ParsedObject((0, 0, 256, 341), None, "big dog")]
  again = encode_detections([box_from_bins(o.loc) for o in objects], [o.label for o in objects])
  assert again == text


def test_hf_example_and_unlabelled_objects():
  assert parse_objects("<loc0051><loc0309><loc0708><loc0646> shoe") == [
      ParsedObject((51, 309, 708, 646), None, "shoe")]
  assert parse_objects(LOC(1, 2, 3, 4)) == [ParsedObject((1, 2, 3, 4), None, "")]
  # The official demo's parser splits on "; " as well: any spacing around ";" separates.
  text = LOC(1, 2, 3, 4) + " cat; " + LOC(5, 6, 7, 8) + "dog ;" + LOC(9, 10, 11, 12) + SEG
  assert [(o.loc[0], o.label) for o in parse_objects(text)] == [(1, "cat"), (5, "dog"), (9, "")]
  assert encode_detections([box_from_bins((1, 2, 3, 4))], [""]) == LOC(1, 2, 3, 4)


def test_encoders_reject_bad_input():
  with pytest.raises(ValueError, match="2 boxes but 1 labels"):
    encode_detections([(0, 0, 1, 1)] * 2, ["a"])
  with pytest.raises(ValueError, match="cannot carry"):
    encode_detections([(0, 0, 1, 1)], ["a ; b"])
  with pytest.raises(ValueError, match="4 finite numbers"):
    loc_tokens([0.1, 0.2, 0.3])


# --- pixel coordinates -------------------------------------------------------------------------


def test_pixel_boxes_on_a_non_square_image():
  # H = 480, W = 640: y uses H, x uses W, int() truncates: 102/1023*480 = 47.86,
  # 205/1023*640 = 128.25, 512/1023*480 = 240.23, 1023 -> the full width.
  [obj] = parse_detections(LOC(102, 205, 512, 1023) + " cat", (480, 640))
  assert obj.box == (47, 128, 240, 640)
  assert obj.xyxy == (128, 47, 640, 240)
  assert obj.box_normalized == pytest.approx((102 / 1023, 205 / 1023, 512 / 1023, 1.0))
  assert obj.label == "cat" and obj.seg is None and obj.mask is None
  # Transposed image: the same tokens land elsewhere.
  [obj] = parse_detections(LOC(102, 205, 512, 1023) + " cat", (640, 480))
  assert obj.box == (63, 96, 320, 480)


def test_pixel_boxes_match_the_evaluator_worked_example():
  # evaluators.md §11: on 100x100, bins 102 / 512 -> pixels 9 / 50, bins 205 / 614 -> 20 / 60.
  assert box_to_pixels((102, 102, 512, 512), (100, 100)) == (9, 9, 50, 50)
  assert box_to_pixels((205, 205, 614, 614), (100, 100)) == (20, 20, 60, 60)


# --- segmentation ------------------------------------------------------------------------------


def test_segmentation_mask_matches_the_evaluator_worked_example():
  decode = constant_decoder(1.0)
  [obj] = parse_segmentations(LOC(102, 102, 512, 512) + SEG, (100, 100), decode)
  assert obj.seg == CODES and obj.label == "" and obj.box == (9, 9, 50, 50)
  assert obj.mask.shape == (100, 100) and obj.mask.dtype == bool
  assert obj.mask.sum() == 41 * 41 and obj.mask[9:50, 9:50].all()
  np.testing.assert_array_equal(decode.calls[0], [CODES])


def test_segmentation_mask_is_resized_into_a_non_square_box():
  def left_half(codes):  # positive on the left 32 columns, negative on the right
    out = np.full((len(codes), 64, 64), -1.0, np.float32)
    out[:, :, :32] = 1.0
    return out

  [obj] = parse_segmentations(LOC(0, 0, 512, 1023) + SEG + " wall", (50, 300), left_half)
  y1, x1, y2, x2 = obj.box
  assert (y1, x1, y2, x2) == (0, 0, 25, 300)
  assert not obj.mask[y2:].any()  # nothing outside the box
  assert obj.mask[:25, :140].all() and not obj.mask[:, 160:].any()  # the left half of a 300-px box
  assert obj.mask.sum() == 25 * 150


def test_negative_decoder_output_gives_empty_mask_and_collapsed_boxes_give_none():
  [obj] = parse_segmentations(LOC(100, 100, 900, 900) + SEG, (64, 64), constant_decoder(-0.5))
  assert not obj.mask.any()
  # 1-bin-wide box on a 10-px image: int() collapses it (big_vision counts it invalid): empty mask.
  [obj] = parse_segmentations(LOC(100, 100, 101, 900) + SEG, (10, 10), constant_decoder(1.0))
  assert obj.box[0] == obj.box[2] and not obj.mask.any()


def test_several_segmentations_decode_in_one_batch():
  decode = constant_decoder(1.0)
  text = LOC(0, 0, 511, 511) + SEG + " a ; " + LOC(512, 512, 1023, 1023) + SEG + " b"
  objects = parse_segmentations(text, (20, 40), decode)
  assert [o.label for o in objects] == ["a", "b"] and len(decode.calls) == 1
  assert decode.calls[0].shape == (2, 16)
  assert objects[0].mask[:9, :19].all() and not objects[0].mask[10:].any()
  assert not (objects[0].mask & objects[1].mask).any()


def test_detections_without_seg_tokens_are_not_segmentations():
  decode = constant_decoder(1.0)
  assert parse_segmentations(LOC(1, 2, 3, 4) + " cat", (10, 10), decode) == []
  assert decode.calls == []
  [obj] = parse_detections(LOC(1, 2, 3, 4) + SEG + " cat", (10, 10))
  assert obj.seg == CODES and obj.mask is None


def test_paste_mask_bilinear_rule():
  logits = np.linspace(-1, 1, 64, dtype=np.float32)[None, :].repeat(64, 0)  # rises left to right
  mask = paste_mask(logits, (2, 3, 7, 13), (10, 20))
  assert mask[2:7, 3:13].any() and not mask[:2].any() and not mask[:, 13:].any()
  assert not mask[2:7, 3].any() and mask[2:7, 12].all()  # left of the box negative, right positive


def test_segmentation_round_trip_with_the_vqvae(vqvae_params):
  mask = np.zeros((90, 150), bool)
  mask[20:70, 30:100] = True
  mask[40:50, 50:60] = False
  box = (20 / 90, 30 / 150, 70 / 90, 100 / 150)
  encode, decode = mask_encoder(vqvae_params), mask_decoder(vqvae_params)
  text = encode_segmentations([mask], [box], encode)
  codes = segmentation_codes(mask, box, encode)
  assert text == loc_tokens(box) + "".join(f"<seg{c:03d}>" for c in codes)  # the RefCOCO suffix
  [obj] = parse_segmentations(text, mask.shape, decode)
  assert obj.seg == codes and obj.loc == loc_bins(box)
  logits = np.asarray(decode(np.array([codes], np.int32)))[0, :, :, 0]
  expected = paste_mask(logits, obj.box, mask.shape)
  np.testing.assert_array_equal(obj.mask, expected)
  assert not obj.mask[:obj.box[0]].any() and not obj.mask[:, obj.box[3]:].any()
  labelled = encode_segmentations([mask, mask], [box, box], encode, ["a", "b"])
  assert [o.label for o in parse_segmentations(labelled, mask.shape, decode)] == ["a", "b"]


def test_mask_crop_64():
  mask = np.zeros((100, 60), bool)
  mask[:, :30] = True  # left half
  crop = mask_crop_64(mask, (0.0, 0.0, 1.0, 1.0))
  assert crop.shape == (64, 64) and crop.dtype == np.float32
  assert crop[:, :31].min() == pytest.approx(1.0) and crop[:, 33:].max() == pytest.approx(0.0)
  # uint8 masks are taken as 0..255 (big_vision's TFDS masks), bool as 0 / 255.
  np.testing.assert_allclose(mask_crop_64(mask.astype(np.uint8) * 255, (0, 0, 1, 1)), crop)
  # Box edges: round(H * v) -> rows 10:50 of 100 hold the crop.
  tall = np.zeros((100, 60), bool)
  tall[10:50] = True
  assert mask_crop_64(tall, (0.1, 0.0, 0.5, 1.0)).min() == pytest.approx(1.0)
  with pytest.raises(ValueError, match="covers no pixel"):
    mask_crop_64(mask, (0.5, 0.5, 0.5, 0.9))
  with pytest.raises(ValueError, match="bool or uint8"):
    mask_crop_64(mask.astype(np.float32), (0, 0, 1, 1))


def test_mask_crop_64_matches_tensorflow_antialiased_resize():
  tf = pytest.importorskip("tensorflow")
  rng = np.random.default_rng(0)
  cases = [(100, 37, (0.1, 0.05, 0.93, 0.97)), (480, 640, (0.2, 0.1, 0.7, 0.8)),
           (20, 30, (0, 0, 1, 1))]
  for h, w, box in cases:
    mask = rng.random((h, w)) > 0.5
    y1, x1, y2, x2 = (int(tf.round(np.float32(s) * np.float32(v)))
                      for s, v in zip((h, w, h, w), box))
    crop = (mask.astype(np.uint8) * 255)[None, y1:y2, x1:x2, None]
    want = tf.image.resize(crop, [64, 64], method="bilinear", antialias=True) / 255.0
    want = want.numpy()[0, :, :, 0]
    np.testing.assert_allclose(mask_crop_64(mask, box), want, atol=1e-5)  # float32 sums


# --- text clean-up -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw, prompt, clean", [
    (LOC(1, 2, 3, 4) + " cat<eos><pad><pad>", None, LOC(1, 2, 3, 4) + " cat"),
    ("<bos>detect cat\n<loc0001> cat<eos>", "detect cat", "<loc0001> cat"),
    ("detect cat\n<loc0001> cat", "detect cat", "<loc0001> cat"),
    ("<image><image><bos>caption en\n  a dog  <eos> junk", "<image>caption en", "a dog"),
    (" caption en\nA dog", "caption en", "A dog"),  # echo within 2 characters, as HF's pipeline
    ("the answer is caption en", "caption en", "the answer is caption en"),  # not an echo
    ("  a cat\n", None, "a cat"),
    ("<eos>anything", None, ""),
])
def test_clean_generated_text(raw, prompt, clean):
  assert clean_generated_text(raw, prompt) == clean


# --- malformed output --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "", "no boxes here", "<<<>>>;;;", "\x00\ufffd",
    LOC(1, 2, 3) + " three locs", LOC(1, 2, 3, 4, 5) + " five locs",
    LOC(1, 2, 1024, 4) + " bin out of range", LOC(500, 2, 100, 4) + " y2 < y1",
    LOC(1, 500, 100, 500) + " x2 == x1", LOC(1, 2, 3, 4) + SEG[:-8] + " 15 segs",
    LOC(1, 2, 3, 4) + SEG + "<seg001> 17 segs",
    LOC(1, 2, 3, 4) + SEG.replace("<seg000>", "<seg128>") + " seg out of range",
    LOC(1, 2, 3) + "<loc00", "<seg001>" * 16, "<loc01>" + LOC(2, 3, 4),
    "<loc\u0660\u0661\u0662\u0663><loc0002><loc0500><loc0600> non-ASCII digits",
])
def test_malformed_objects_are_skipped(text):
  assert parse_objects(text) == []
  assert parse_detections(text, (10, 20)) == []
  assert parse_segmentations(text, (10, 20), constant_decoder(1.0)) == []


def test_valid_objects_survive_garbage_around_them():
  text = ("blah " + LOC(1, 2, 3) + " broken ; " + LOC(10, 20, 30, 40) + " cat ; " + LOC(100)
          + " ; " + LOC(10, 20, 30, 40) + SEG + " dog <eos>")
  found = [(o.label, o.seg is not None) for o in parse_objects(text)]
  assert found == [("cat", False), ("dog", True)]
  [dog] = parse_segmentations(text, (30, 30), constant_decoder(1.0))
  assert dog.label == "dog"


def test_random_garbage_never_raises():
  rng = np.random.default_rng(0)
  pieces = ["<loc0001>", "<loc1023>", "<loc9999>", "<seg005>", "<seg999>", " ; ", ";", " cat",
            "<", ">", "<loc", "<seg12>", "\n", " ", "<eos>", "é", "0", LOC(1, 1, 1023, 1023),
            SEG]
  decode = constant_decoder(1.0)
  parsed = 0
  for _ in range(300):
    text = "".join(rng.choice(pieces, size=rng.integers(0, 40)))
    for obj in parse_detections(text, (7, 11)) + parse_segmentations(text, (7, 11), decode):
      parsed += 1
      assert isinstance(obj, DetectedObject)
      y1, x1, y2, x2 = obj.box
      assert 0 <= y1 <= y2 <= 7 and 0 <= x1 <= x2 <= 11
      assert "<" not in obj.label and ";" not in obj.label
  assert parsed > 50  # the garbage does contain objects, so the checks above ran
