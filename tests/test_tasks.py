"""The task table: one hand-made example per transfer family (NumPy values as TFDS decodes them:
bytes texts, uint8 images, arrays) → rows with exact prompts, references and fields; option
errors at construction; a bad example (or object) fails only its own row.

Prompts and targets are big_vision's transfer configs' (training_and_tasks.md §3). `<loc>` and
`<seg>` appear as strings only: no token ids here.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from paligemma_jax.data.tasks import TASKS, Row, make_task, rows_or_error


def image(value: int = 0, hw: tuple[int, int] = (4, 6)) -> np.ndarray:
  return np.full((*hw, 3), value, np.uint8)


def texts(*values: str) -> np.ndarray:
  return np.array([v.encode() for v in values], dtype=object)


def one(rows: list[Row]) -> Row:
  [row] = rows
  assert row.error is None
  return row


# --- captioning and OCR --------------------------------------------------------------------------


def test_caption_keeps_every_caption_in_the_language_asked():
  example = {"image": image(3), "image/id": np.int64(42),
             "captions": {"text": texts("A dog.", "Two DOGS"), "id": np.array([1, 2])}}
  row = one(make_task("caption").rows(example, 0))
  assert (row.id, row.prefix, row.references) == (42, "caption en", ("A dog.", "Two DOGS"))
  np.testing.assert_array_equal(row.images[0], image(3))
  row = one(make_task("caption", {"lang": "fil", "lower_references": True}).rows(example, 0))
  assert (row.prefix, row.references) == ("caption fil", ("a dog.", "two dogs"))
  screen2words = make_task("caption", {"captions_key": "summary", "id_key": ""})
  row = one(screen2words.rows({"image": image(), "summary": texts("a login page")}, 5))
  assert (row.id, row.references) == (5, ("a login page",))


def test_ocr():
  row = one(make_task("ocr").rows({"image": image(), "text": b"STOP 50 km"}, 3))
  assert (row.id, row.prefix, row.references) == (3, "ocr", ("STOP 50 km",))


# --- question answering --------------------------------------------------------------------------


def test_vqa_keeps_all_ten_answers_with_duplicates_and_evaluator_fields():
  answers = ["2", "2", "two", "2", "3", "2", "2", "2", "2", "2"]
  example = {"image": image(), "question_text": b"How many dogs? ", "question_id": np.int64(7),
             "answers": texts(*answers), "answer_type": b"number", "question_type": b"how many"}
  task = make_task("vqa", {"question_key": "question_text",
                           "field_keys": ["answer_type", "question_type"]})
  row = one(task.rows(example, 0))
  assert row.prefix == "answer en How many dogs?"
  assert row.references == tuple(answers)  # training draws one of the ten, evaluation uses all
  assert row.fields == {"answer_type": "number", "question_type": "how many"}
  assert row.id == 7 and json.dumps(row.header())
  rsvqa = make_task("vqa", {"lang": "en", "lower_references": True, "id_key": ""})
  row = one(rsvqa.rows({"image": image(), "question": b"Is it rural?", "answers": texts("Yes")}, 9))
  assert (row.id, row.references) == (9, ("yes",))
  gqa = make_task("vqa", {"answers_key": "answer"})  # a single answer is one reference
  example = {"image": image(), "question": b"Color?", "answer": b"red", "question_id": b"q1"}
  assert one(gqa.rows(example, 0)).references == ("red",)
  assert one(gqa.rows(example, 0)).id == "q1"


def test_question_only_prompts():
  chartqa = make_task("question_only", {"answers_key": "answer"})
  example = {"image": image(), "question": b"What is the highest value?", "answer": b"12.5",
             "question_id": np.int64(1)}
  row = one(chartqa.rows(example, 0))
  assert (row.prefix, row.references) == ("What is the highest value?", ("12.5",))
  docvqa = make_task("question_only", {"lower_references": True})
  example = {"image": image(), "question": b"Date?", "answers": texts("May 1", "1 May"),
             "question_id": np.int64(2)}
  assert one(docvqa.rows(example, 0)).references == ("may 1", "1 may")


def test_count_tallyqa():
  example = {"image": image(), "question": b"How many birds?", "answer": np.int64(3),
             "issimple": np.bool_(True)}
  row = one(make_task("count").rows(example, 4))
  assert (row.id, row.prefix, row.references) == (4, "answer en How many birds?", ("3",))
  assert row.fields == {"issimple": True} and json.dumps(row.header())
  countbench = make_task("count", {"answers_key": "number", "field_keys": []})
  row = one(countbench.rows({"image": image(), "question": b"How many?", "number": 7}, 0))
  assert (row.references, row.fields) == (("7",), {})


def test_multiple_choice_aokvqa_and_ai2d():
  example = {"image": image(), "question": b"What is on the sofa?", "question_id": b"abc",
             "choices": texts("a cat", "a dog", "a cow"), "answer_index": np.int32(1)}
  row = one(make_task("multiple_choice").rows(example, 0))
  # big_vision: PREFIX "answer en " + " {question} choose from: " + options joined by " \t ".
  assert row.prefix == "answer en  What is on the sofa? choose from: a cat \t a dog \t a cow"
  assert row.references == ("a dog",) and row.id == "abc"
  assert row.fields == {"choices": ["a cat", "a dog", "a cow"], "correct_index": 1}
  unlabelled = one(make_task("multiple_choice").rows(
      {**example, "answer_index": np.int32(-1)}, 0))  # test split
  assert (unlabelled.references, unlabelled.fields["correct_index"]) == ((), None)
  ai2d = make_task("multiple_choice", {"choices_key": "possible_answers", "answer_key": "answer",
                                       "correct_index_key": "", "id_key": "id"})
  example = {"image": image(), "question": b"Which stage is B?", "id": b"7-2",
             "possible_answers": texts("egg", "larva", "adult"), "answer": b"larva"}
  row = one(ai2d.rows(example, 0))
  assert row.prefix == "answer en  Which stage is B? choose from: egg \t larva \t adult"
  assert (row.references, row.fields["correct_index"]) == (("larva",), 1)


SCIQA = {"image": image(), "question": b"Which is a mammal?", "hint": b"Look at the animals.",
         "choices": texts("frog", "whale", "trout"), "answer_index": np.int32(1),
         "question_id": np.int64(11)}


def test_science_qa_template_and_target():
  row = one(make_task("science_qa").rows(SCIQA, 0))
  assert row.prefix == ("Question: Which is a mammal?\nContext: Look at the animals.\n"
                        "Options: (A) frog, (B) whale, (C) trout\nAnswer:")
  assert (row.id, row.references) == (11, ("The answer is B.",))
  no_hint = one(make_task("science_qa").rows({**SCIQA, "hint": b""}, 0))
  assert "\nContext: \nOptions:" in no_hint.prefix


def test_science_qa_training_shuffles_options_and_moves_the_letter():
  task, orders = make_task("science_qa"), set()
  for seed in range(12):
    row = one(task.rows(SCIQA, 0, rng=np.random.default_rng(seed)))
    options = row.prefix.split("\nOptions: ")[1].split("\nAnswer:")[0].split(", ")
    assert sorted(o[4:] for o in options) == ["frog", "trout", "whale"]
    assert [o[:4] for o in options] == ["(A) ", "(B) ", "(C) "]
    letter = next(o[1] for o in options if o.endswith("whale"))
    assert row.references == (f"The answer is {letter}.",)
    orders.add(tuple(options))
  assert len(orders) > 1  # shuffled
  same = [task.rows(SCIQA, 0, rng=np.random.default_rng(3))[0].prefix for _ in range(2)]
  assert same[0] == same[1]  # deterministic for a seed


def test_multi_image_nlvr2():
  example = {"image_left": image(1), "image_right": image(2, (5, 5)), "example_id": b"dev-1",
             "sentence": b"The left image contains two dogs.", "label": np.bool_(True)}
  row = one(make_task("multi_image_vqa").rows(example, 0))
  assert (row.id, row.prefix, row.references) == (
      "dev-1", "answer en The left image contains two dogs.", ("True",))
  assert [int(im[0, 0, 0]) for im in row.images] == [1, 2]  # left, then right
  assert make_task("multi_image_vqa").image_fields() == ("image_left", "image_right")


# --- detection and referring expressions ---------------------------------------------------------


BOXES = np.array([[0.1, 0.25, 0.5, 1.0], [0.0, 0.0, 0.5, 0.5], [0.25, 0.1, 1.0, 0.5]], np.float32)
LOCS = ["<loc0102><loc0256><loc0512><loc1023>", "<loc0000><loc0000><loc0512><loc0512>",
        "<loc0256><loc0102><loc1023><loc0512>"]


def test_detect_names_each_class_once_and_every_object():
  task = make_task("detect", {"class_names": ["person", "cat", "dog"]})
  example = {"image": image(), "image/id": np.int64(8),
             "objects": {"bbox": BOXES, "label": np.array([1, 2, 1])}}
  row = one(task.rows(example, 0))
  assert row.prefix == "detect cat ; dog"
  assert row.references == (f"{LOCS[0]} cat ; {LOCS[1]} dog ; {LOCS[2]} cat",)
  assert row.fields == {"boxes_yxyx": [[0.1, 0.25, 0.5, 1.0], [0.0, 0.0, 0.5, 0.5],
                                       [0.25, 0.1, 1.0, 0.5]], "labels": ["cat", "dog", "cat"]}
  named = {"image": image(), "image/id": 9,
           "objects": {"bbox": BOXES[:2], "label": texts("shoe", "red car")}}
  row = one(make_task("detect").rows(named, 0))
  assert (row.prefix, row.references) == (
      "detect shoe ; red car", (f"{LOCS[0]} shoe ; {LOCS[1]} red car",))


@pytest.mark.parametrize("objects, message", [
    ({"bbox": BOXES, "label": np.array([0, 1, 2])}, "integer label 0 but no class_names"),
    ({"bbox": BOXES, "label": texts("a", "b")}, "3 boxes but 2 labels"),
    ({"bbox": np.zeros((0, 4), np.float32), "label": texts()}, "no objects to detect"),
])
def test_detect_bad_examples_fail_their_row(objects, message):
  example = {"image": image(), "image/id": 1, "objects": objects}
  [row] = rows_or_error(make_task("detect"), example, 6)
  assert row.error.startswith(f"example 6: {message}") and row.id == 1 and row.images == ()


REFCOCO = {
    "image": image(), "image/id": np.int64(50),
    "objects": {
        "bbox": BOXES[:2],
        "refexp": {"raw": [texts("left man", "man in red"), texts("dog")],
                   "refexp_id": [np.array([11, 12]), np.array([21])]},
        "mask": [np.full((10, 10, 3), 255, np.uint8), np.zeros((10, 10, 3), np.uint8)],
    },
}


def test_refexp_detect_rows_per_sentence():
  rows = make_task("refexp_detect").rows(REFCOCO, 0)
  assert [(r.id, r.prefix, r.references) for r in rows] == [
      (11, "detect left man", (f"{LOCS[0]} left man",)),
      (12, "detect man in red", (f"{LOCS[0]} man in red",)),
      (21, "detect dog", (f"{LOCS[1]} dog",))]
  assert rows[2].fields == {"box_yxyx": [0.0, 0.0, 0.5, 0.5]}


class FakeEncoder:
  """(mask [H, W], box) -> 16 codes; records its calls."""

  def __init__(self, codes=tuple(range(0, 128, 8))):
    self.codes, self.calls = codes, []

  def __call__(self, mask, box):
    self.calls.append((mask.shape, mask.dtype, int(mask.max()), [round(float(v), 2) for v in box]))
    return np.array(self.codes)


SEGS = "".join(f"<seg{c:03d}>" for c in range(0, 128, 8))


def test_refexp_segment_bigvision_transfer_target_with_injected_encoder():
  encoder = FakeEncoder()
  task = make_task("refexp_segment", {"encode_mask": encoder, "keyword": ""})
  rows = task.rows(REFCOCO, 0)
  # big_vision refcoco_mask2str: prefix = the sentence, suffix = 4 loc + 16 seg, no label.
  assert [(r.id, r.prefix, r.references) for r in rows] == [
      (11, "left man", (LOCS[0] + SEGS,)), (12, "man in red", (LOCS[0] + SEGS,)),
      (21, "dog", (LOCS[1] + SEGS,))]
  # once per object, on its full-resolution single-channel mask and its normalised box
  assert encoder.calls == [((10, 10), np.uint8, 255, [0.1, 0.25, 0.5, 1.0]),
                           ((10, 10), np.uint8, 0, [0.0, 0.0, 0.5, 0.5])]
  assert task.image_fields() == ("image", "objects/mask")
  assert ("mask_key", "objects/mask") in task.fields_read()
  mix = make_task("refexp_segment", {"encode_mask": FakeEncoder()}).rows(REFCOCO, 0)
  assert (mix[0].prefix, mix[0].references) == ("segment left man",
                                                (f"{LOCS[0]}{SEGS} left man",))


def test_refexp_training_draws_one_object_then_one_sentence():
  encoder, drawn = FakeEncoder(), set()
  task = make_task("refexp_segment", {"encode_mask": encoder, "keyword": ""})
  for seed in range(20):
    [row] = task.rows(REFCOCO, 0, rng=np.random.default_rng(seed))
    drawn.add((row.id, row.prefix, row.references[0][:36]))
  assert drawn == {(11, "left man", LOCS[0]), (12, "man in red", LOCS[0]), (21, "dog", LOCS[1])}
  assert len(encoder.calls) == 20  # only the drawn object's mask is encoded
  silent = {**REFCOCO, "objects": {**REFCOCO["objects"], "refexp": {
      "raw": [texts(), texts()], "refexp_id": [np.array([]), np.array([])]}}}
  [row] = rows_or_error(make_task("refexp_detect"), silent, 3, rng=np.random.default_rng(0))
  assert row.error == "example 3: no object has a referring sentence" and row.id == 50


def test_refexp_segment_without_encoder_has_no_reference_and_can_keep_masks():
  plain = make_task("refexp_segment")
  assert all(r.references == () for r in plain.rows(REFCOCO, 0))
  assert plain.image_fields() == ("image",)  # masks stay encoded
  rows = make_task("refexp_segment", {"keep_masks": True}).rows(REFCOCO, 0)
  assert rows[2].fields["mask"].shape == (10, 10) and rows[2].references == ()


def test_refexp_segment_string_matches_the_inference_encoder():
  """The wiring the training layer uses: inference.parsers.segmentation_codes with the VQ-VAE
  encoder bound (a stub here); the task's target equals parsers.encode_segmentations'."""
  parsers = pytest.importorskip("paligemma_jax.inference.parsers")
  def encode_fn(masks):  # [N, 64, 64, 1] in [0, 1] -> codes [N, 16]
    assert masks.shape == (1, 64, 64, 1)
    return np.full((1, 16), int(round(masks.mean() * 100)))
  encode_mask = functools.partial(parsers.segmentation_codes, encode_fn=encode_fn)
  rows = make_task("refexp_segment", {"encode_mask": encode_mask, "keyword": ""}).rows(REFCOCO, 0)
  masks = [m[..., 0] for m in REFCOCO["objects"]["mask"]]
  assert rows[0].references == (parsers.encode_segmentations(masks[:1], BOXES[:1], encode_fn),)
  assert rows[0].references[0].endswith("<seg100>" * 16)
  assert rows[2].references == (parsers.encode_segmentations(masks[1:], BOXES[1:2], encode_fn),)


def test_refexp_segment_a_bad_object_fails_only_its_rows():
  example = {**REFCOCO, "objects": {**REFCOCO["objects"], "mask": REFCOCO["objects"]["mask"][:1]}}
  rows = make_task("refexp_segment", {"encode_mask": FakeEncoder()}).rows(example, 4)
  assert [r.error for r in rows] == [None, None, "example 4 object 1: 'objects/mask' has 1 "
                                     "masks; object 1 has none"]
  assert rows[2].id == 21
  short = make_task("refexp_segment", {"encode_mask": FakeEncoder(codes=(1,) * 15)})
  assert all(r.error.startswith("example 0 object 0: encode_mask gave [1, 1,")
             for r in short.rows(REFCOCO, 0)[:2])


# --- options and bad data ------------------------------------------------------------------------


def test_every_task_has_defaults_and_json_headers():
  for name in TASKS:
    task = make_task(name, {"prompt": "{question}"} if name == "template" else {})
    assert task.fields_read() and task.image_fields()
  assert list(TASKS)[:5] == ["caption", "vqa", "refexp_detect", "refexp_segment", "template"]


@pytest.mark.parametrize("name, options, message", [
    ("captions", {}, "unknown task 'captions'; use one of caption, vqa, refexp_detect, "
     "refexp_segment, template, question_only, count, multiple_choice, science_qa, "
     "multi_image_vqa, ocr, detect"),
    ("multiple_choice", {"choice_key": "x"}, "unknown option 'choice_key' for task "
     "'multiple_choice'; valid options: lang, image_key, question_key, choices_key, "
     "correct_index_key, answer_key, id_key, field_keys"),
    ("caption", {"lang": "en us"}, "task 'caption': lang must be a language code such as 'en' "
     "(one word), got 'en us'"),
    ("vqa", {"lower_references": "yes"}, "task 'vqa' option 'lower_references' must be true or "
     "false, got 'yes'"),
    ("detect", {"class_names": [1, 2]}, "task 'detect' option 'class_names' must be a list of "
     "strings, got [1, 2]"),
    ("detect", {"class_names": ["a ; b"]}, "task 'detect': class name 'a ; b' is empty or "
     "contains ';' or '<'"),
    ("refexp_segment", {"encode_mask": "vqvae.npz"}, "task 'refexp_segment' option "
     "'encode_mask' must be a function or None, got 'vqvae.npz'"),
    ("multiple_choice", {"answer_key": "answer"}, "task 'multiple_choice': the correct option "
     "comes from correct_index_key or answer_key, not both; set one of them to ''"),
    ("multi_image_vqa", {"image_keys": "image"}, "task 'multi_image_vqa': image_keys must list "
     "two or more image fields, got ('image',)"),
])
def test_bad_options_fail_at_construction_in_one_line(name, options, message):
  with pytest.raises(ValueError) as e:
    make_task(name, options)
  assert str(e.value) == message


@pytest.mark.parametrize("name, options, example, message", [
    ("vqa", {}, {"image": image(), "question_id": 5, "answers": texts("a")},
     "missing field 'question'"),
    ("vqa", {}, {"image": np.zeros((4, 4), np.float32), "question_id": 5, "question": b"q",
                 "answers": texts("a")}, "field 'image' is not a decoded image"),
    ("multiple_choice", {}, {"image": image(), "question_id": 5, "question": b"q",
                             "choices": texts("a", "b"), "answer_index": 2},
     "answer_index = 2 but there are only 2 options"),
    ("science_qa", {}, {**SCIQA, "question_id": 5, "answer_index": 3},
     "answer_index = 3 is not an option index (0..2)"),
])
def test_a_bad_example_fails_only_its_own_row(name, options, example, message):
  task = make_task(name, options)
  good = {"image": image(), "question_id": 1, "question": b"q", "answers": texts("a"),
          "choices": texts("a", "b"), "answer_index": 0,
          **({k: v for k, v in SCIQA.items() if k != "question_id"} if name == "science_qa"
             else {})}
  rows = [r for i, ex in enumerate([good, example, good]) for r in rows_or_error(task, ex, i)]
  assert [r.error is None for r in rows] == [True, False, True]
  assert rows[1].id == 5 and rows[1].error.startswith(f"example 1: {message}")


def test_rows_or_error_covers_reading_and_decoding_for_every_reader():
  """The TFDS, training and eval readers all go through rows_or_error: a read that fails gives
  the index as id, a decode that fails the example's own id; `label` names the source."""
  task = make_task("vqa")
  example = {"image": b"not decoded", "question_id": 9, "question": b"q", "answers": texts("a")}

  def unreadable():
    raise OSError("cannot read record")

  def bad_decode(ex):
    raise ValueError("cannot decode image: truncated\nsecond line")

  [row] = rows_or_error(task, unreadable, 4, label="val.jsonl")
  assert (row.id, row.error) == (4, "val.jsonl example 4: cannot read record")
  [row] = rows_or_error(task, lambda: example, 4, decode=bad_decode)
  assert (row.id, row.error) == (9, "example 4: cannot decode image: truncated")
  [row] = rows_or_error(task, example, 4, decode=lambda ex: {**ex, "image": image()})
  assert row.error is None and row.id == 9 and row.prefix == "answer en q"
