"""CIDEr-D, RefCOCO box accuracy and segmentation mIoU, COCO detection mAP, perplexity.

Worked examples from shared/reference/evaluators.md (§5, §10, §11), hand computations, and the
upstream implementations (pycocoevalcap's CiderScorer and PTBTokenizer, pycocotools) where they
are installed.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from paligemma_jax.evaluation.box_accuracy import (box_accuracy, box_accuracy_stats, box_iou,
                                                   parse_leading_object, predicted_box)
from paligemma_jax.evaluation.cider import cider, cider_from_stats, cider_scores, cider_stats
from paligemma_jax.evaluation.detection_map import (detection_map, detection_map_from_stats,
                                                    detection_map_stats, detections_from_text)
from paligemma_jax.evaluation.perplexity import (perplexity, perplexity_from_stats,
                                                 perplexity_stats)
from paligemma_jax.evaluation.ptb_tokenizer import ptb_tokenize
from paligemma_jax.evaluation.segmentation_miou import (mask_iou, mask_miou, mask_miou_from_stats,
                                                        mask_miou_stats, refcoco_segmentation,
                                                        refcoco_segmentation_from_stats,
                                                        refcoco_segmentation_stats)
from paligemma_jax.evaluation.stats import merge

# --- CIDEr-D -------------------------------------------------------------------------------------

REFS = [["a dog runs on the grass", "a brown dog running on grass"],
        ["a cat sleeps on a sofa", "a cat is sleeping on the couch"]]
WORKED = [  # evaluators.md §5: hypotheses, per-image scores, corpus score
    (["a dog running on grass", "a cat on a sofa"], [4.239595, 2.871833], 3.555714),
    (["a brown dog running on grass", "a cat sleeps on a sofa"], [5.721688, 5.602419], 5.662053),
    (["grass", "a cat on a sofa"], [0.951635, 2.871833], 1.911734),
]


@pytest.mark.parametrize("hyps, per_image, corpus", WORKED)
def test_cider_worked_examples(hyps, per_image, corpus):
  assert cider_scores(hyps, REFS) == pytest.approx(per_image, abs=1e-6)
  assert cider(hyps, REFS, tokenize=False) == pytest.approx({"cider": corpus, "num": 2.0},
                                                            abs=1e-6)
  assert cider(hyps, REFS)["cider"] == pytest.approx(corpus, abs=1e-6)  # already PTB-clean


def test_cider_hand_computation():
  # M = 2 images, every reference n-gram in one image: idf = ln 2 - ln 1 for all of them.
  # Image 0: hypothesis = reference "a b": sim_1 = sim_2 = 1, sim_3 = sim_4 = 0 (no 3-grams),
  #   equal bigram counts: score = 10 * (1 + 1) / 4 = 5.
  # Image 1: "c" vs "c d": sim_1 = ln2^2 / (ln2 * sqrt(2) ln2) = 1 / sqrt(2), sim_2 = 0 (no
  #   bigram), lengths 0 vs 1 bigram: penalty exp(-1 / 72); score = 10 * sim_1 * penalty / 4.
  image1 = 10 * (1 / math.sqrt(2)) * math.exp(-1 / 72) / 4
  assert cider_scores(["a b", "c"], [["a b"], ["c d"]]) == pytest.approx([5.0, image1], rel=1e-12)
  assert cider(["a b", "c"], [["a b"], ["c d"]])["cider"] == pytest.approx((5 + image1) / 2)


def test_cider_one_image_corpus_is_zero_and_empty_hypothesis_scores_zero():
  assert cider(["a dog"], [["a dog"]]) == {"cider": 0.0, "num": 1.0}
  assert cider_scores(["", "a cat"], [["a dog"], ["a cat"]])[0] == 0.0


def test_cider_tokenizes_with_ptb_rules():
  raw = ["A dog, running on grass.", "A cat on a sofa!"]
  assert cider(raw, REFS)["cider"] == pytest.approx(3.555714, abs=1e-6)
  refs_raw = [["A dog runs on the grass.", "A brown dog, running on grass"],
              ["A cat sleeps on a sofa.", "A cat is sleeping on the couch."]]
  assert cider(raw, refs_raw) == cider(["a dog running on grass", "a cat on a sofa"], REFS)
  # Without tokenisation "dog," and "grass." are other words: the score drops.
  assert cider(raw, refs_raw, tokenize=False)["cider"] < 3.0


def test_cider_merged_halves_equal_whole():
  hyps = ["a dog running on grass", "a cat on a sofa", "a dog running on grass", "grass"]
  refs = [REFS[0], REFS[1], REFS[0], ["green grass", "a lawn"]]
  whole = cider_stats(hyps, refs)
  halves = merge(cider_stats(hyps[2:], refs[2:]), cider_stats(hyps[:2], refs[:2]))
  assert halves == whole
  assert cider_from_stats(halves) == cider(hyps, refs)
  # The repeated image counts twice in df and M, as two image ids do in pycocoevalcap.
  assert cider(hyps, refs)["cider"] == pytest.approx(np.mean(cider_scores(hyps, refs)), rel=1e-12)


def test_cider_equals_pycocoevalcap_on_tokenized_input():
  scorer_module = pytest.importorskip("pycocoevalcap.cider.cider_scorer")
  rng = np.random.default_rng(0)
  words = "a the dog cat man on grass sofa red big runs sits with of".split()
  sentence = lambda: " ".join(rng.choice(words, size=rng.integers(1, 9)))
  hyps = [sentence() for _ in range(12)] + ["", "dog"]
  refs = [[sentence() for _ in range(rng.integers(1, 6))] for _ in hyps]
  refs[0].append(hyps[0])
  scorer = scorer_module.CiderScorer(n=4, sigma=6.0)
  for hyp, image_refs in zip(hyps, refs):
    scorer += (hyp, image_refs)
  expected_mean, expected_scores = scorer.compute_score()
  assert cider_scores(hyps, refs) == pytest.approx(list(expected_scores), rel=1e-9, abs=1e-12)
  assert cider(hyps, refs, tokenize=False)["cider"] == pytest.approx(expected_mean, rel=1e-9)


PTB_CASES = [  # outputs of CoreNLP 3.4.1 (`-preserveLines -lowerCase`) + pycocoevalcap's filter
    ("A man riding a wave on top of a surfboard.", "a man riding a wave on top of a surfboard"),
    ("A dog's bowl, full of water, sits on the floor.",
     "a dog 's bowl full of water sits on the floor"),
    ("It's a sunny day, isn't it?", "it 's a sunny day is n't it"),
    ("A woman cannot see; they can't.", "a woman can not see they ca n't"),
    ('A sign that says "STOP" on a pole.', "a sign that says stop on a pole"),
    ("A group of people (some wearing hats) walking.",
     "a group of people -lrb- some wearing hats -rrb- walking"),
    ("Black-and-white photo of 1,000 cats, 3.5 m tall; wow!? ... -- -",
     "black-and-white photo of 1,000 cats 3.5 m tall wow !?"),
    ("A clock that reads 12:30 in the U.S. at 9 a.m.",
     "a clock that reads 12:30 in the u.s. at 9 a.m."),
    ("Mr. Smith went to Washington yesterday.", "mr. smith went to washington yesterday"),
    ("A t-shirt with a $5 price tag at 50% off.", "a t-shirt with a $ 5 price tag at 50 % off"),
    ("The dogs' toys and 'small' AT&T a/b", "the dogs toys and small at&t a/b"),
    ("you're gonna love it, we'll see", "you 're gon na love it we 'll see"),
    ("Café ÉCOLE 日本", "café école 日本"),
    ("  ", ""),
]


@pytest.mark.parametrize("text, expected", PTB_CASES)
def test_ptb_tokenize(text, expected):
  assert ptb_tokenize(text) == expected


def test_ptb_tokenize_matches_java_ptb_tokenizer():
  ptb = pytest.importorskip("pycocoevalcap.tokenizer.ptbtokenizer")
  if shutil.which("java") is None:
    pytest.skip("the Java PTBTokenizer needs java")
  texts = [text for text, _ in PTB_CASES if text.strip()]
  java = ptb.PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
  assert [ptb_tokenize(t) for t in texts] == [java[i][0] for i in range(len(texts))]
  # End to end, as big_vision scores: Java PTBTokenizer on both sides, then Cider.
  from pycocoevalcap.cider.cider import Cider
  hyps = ["A dog, running on grass.", "A cat (grey) on a sofa!", "Two men's hats."]
  refs = [["A dog runs on the grass.", "A brown dog running on grass"],
          ["A cat sleeps on a sofa.", "A cat is sleeping on the couch."],
          ["The men's hats.", "Two hats, on a table."]]
  res = ptb.PTBTokenizer().tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
  gts = ptb.PTBTokenizer().tokenize({i: [{"caption": r} for r in rs] for i, rs in enumerate(refs)})
  assert cider(hyps, refs)["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-9)


def test_cider_bad_input():
  with pytest.raises(ValueError, match="2 predictions but 1 references"):
    cider(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match="no predictions"):
    cider([], [])
  with pytest.raises(ValueError, match="example 1 has no references"):
    cider(["a", "b"], [["a"], []])


# --- RefCOCO boxes and masks (evaluators.md §11) -------------------------------------------------

SEG16 = "".join(f"<seg{k:03d}>" for k in range(16))
CASE_A = "<loc0102><loc0102><loc0512><loc0512>" + SEG16
CASE_C = "<loc0205><loc0205><loc0614><loc0614>" + SEG16
CASE_D = "<loc0512><loc0102><loc0102><loc0512>" + SEG16  # y2 < y1: invalid
GT_BOX = (0.1, 0.1, 0.5, 0.5)


def gt_mask_100():
  mask = np.zeros((100, 100), bool)
  mask[10:50, 10:50] = True  # rows and cols 10..49: 1600 px
  return mask


def ones_decoder(codes):
  """The reference's stub: +1 everywhere, so the PIL resize is exact."""
  return np.ones((len(codes), 64, 64, 1), np.float32)


def test_box_iou_worked_examples():
  assert box_iou(predicted_box(CASE_A), GT_BOX) == pytest.approx(0.996101, abs=1e-6)
  assert box_iou(predicted_box(CASE_C), GT_BOX) == pytest.approx(0.390153, abs=1e-6)
  assert predicted_box(CASE_D) == (0.0, 0.0, 0.0, 0.0)
  assert predicted_box(CASE_A) == pytest.approx((0.099707, 0.099707, 0.500489, 0.500489), abs=1e-6)


def test_box_accuracy_worked_example():
  result = box_accuracy([CASE_A, CASE_C, CASE_D], [GT_BOX] * 3)
  assert result == pytest.approx({"boxacc/0.5": 1 / 3, "boxacc/0.75": 1 / 3, "num": 3.0})


def test_box_iou_edge_cases():
  assert box_iou((0.0, 0.0, 0.2, 0.2), (0.5, 0.5, 0.9, 0.9)) == 0.0  # no overlap
  assert box_iou((0.0, 0.0, 0.2, 0.2), (0.2, 0.0, 0.4, 0.2)) == 0.0  # touching edges
  assert box_iou((0.1, 0.2, 0.5, 0.7), (0.1, 0.2, 0.5, 0.7)) == 1.0  # identical
  assert box_iou((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)) == 0.0  # empty union: 0, not NaN
  assert box_iou((0.0, 0.0, 0.5, 1.0), (0.0, 0.0, 1.0, 1.0)) == pytest.approx(0.5)


@pytest.mark.parametrize("text", [
    "",
    "a cat",
    "cat <loc0102><loc0102><loc0512><loc0512>",  # text first: big_vision reads the first ids
    "<loc0102><loc0102><loc0512>",  # 3 locs
    "<loc0102> <loc0102><loc0512><loc0512>",  # a space token between locs
    "<loc0102><loc0102><loc1024><loc0512>",  # past <loc1023>
    "<loc0102><loc0102><loc0102><loc0512>",  # y2 == y1
    "<loc0102><loc0600><loc0512><loc0512>",  # x2 < x1
])
def test_malformed_box_prediction_scores_zero(text):
  assert parse_leading_object(text) is None
  assert box_accuracy([text], [GT_BOX]) == {"boxacc/0.5": 0.0, "boxacc/0.75": 0.0, "num": 1.0}


def test_box_prediction_with_label_and_seg_rules():
  loc = "<loc0102><loc0102><loc0512><loc0512>"
  assert parse_leading_object(" " + loc + " the left cat") == ((102, 102, 512, 512), None)
  assert parse_leading_object(loc, with_seg=True) is None  # segmentation needs its 16 codes
  assert parse_leading_object(loc + SEG16[:-8], with_seg=True) is None  # 15 codes
  assert parse_leading_object(loc + "<seg128>" + SEG16[8:], with_seg=True) is None
  assert parse_leading_object(CASE_A, with_seg=True) == ((102, 102, 512, 512), tuple(range(16)))


def test_box_accuracy_merged_halves_and_bad_input():
  preds, refs = [CASE_A, CASE_C, CASE_D], [GT_BOX] * 3
  assert merge(box_accuracy_stats(preds[:1], refs[:1]),
               box_accuracy_stats(preds[1:], refs[1:])) == box_accuracy_stats(preds, refs)
  with pytest.raises(ValueError, match="3 predictions but 2 references"):
    box_accuracy(preds, refs[:2])
  with pytest.raises(ValueError, match="no predictions"):
    box_accuracy([], [])
  with pytest.raises(ValueError, match="example 1 has no reference box"):
    box_accuracy([CASE_A, CASE_C], [GT_BOX, None])
  with pytest.raises(ValueError, match="reference box 0 must be 4 finite numbers"):
    box_accuracy([CASE_A], [(0.1, 0.2, 0.3)])


def test_refcoco_segmentation_worked_example():
  gt = gt_mask_100()
  result = refcoco_segmentation([CASE_A, CASE_C, CASE_D], [gt] * 3, [GT_BOX] * 3, ones_decoder)
  assert result == pytest.approx({"miou": (1600 / 1681 + 900 / 2300) / 3, "boxacc/0.5": 1 / 3,
                                  "boxacc/0.75": 1 / 3, "invalid": 1.0, "num": 3.0})
  assert result["miou"] == pytest.approx(0.447706, abs=1e-6)
  one = lambda text: refcoco_segmentation([text], [gt], [GT_BOX], ones_decoder)["miou"]
  assert one(CASE_A) == pytest.approx(0.951814, abs=1e-6)  # 1600 / 1681: pixel box (9, 9, 50, 50)
  assert one(CASE_C) == pytest.approx(0.391304, abs=1e-6)  # 900 / 2300


def test_refcoco_segmentation_invalid_cases_and_merge():
  gt = gt_mask_100()
  box_only = "<loc0102><loc0102><loc0512><loc0512>"  # no seg codes: invalid, box counts as 0
  result = refcoco_segmentation([box_only], [gt], [GT_BOX], ones_decoder)
  assert result == {"miou": 0.0, "boxacc/0.5": 0.0, "boxacc/0.75": 0.0, "invalid": 1.0, "num": 1.0}
  # On a 2 x 2 image, bins 0 and 1 truncate to the same pixel edge: the box collapses.
  tiny = np.ones((2, 2), bool)
  collapsed = "<loc0000><loc0000><loc0001><loc0001>" + SEG16
  assert refcoco_segmentation([collapsed], [tiny], [(0, 0, 1, 1)], ones_decoder)["invalid"] == 1.0
  preds, gts, boxes = [CASE_A, CASE_C, CASE_D], [gt] * 3, [GT_BOX] * 3
  halves = merge(refcoco_segmentation_stats(preds[:2], gts[:2], boxes[:2], ones_decoder),
                 refcoco_segmentation_stats(preds[2:], gts[2:], boxes[2:], ones_decoder))
  assert halves == refcoco_segmentation_stats(preds, gts, boxes, ones_decoder)
  assert refcoco_segmentation_from_stats(halves) == refcoco_segmentation(preds, gts, boxes,
                                                                         ones_decoder)


def test_refcoco_segmentation_decoded_logits_threshold_at_zero():
  # A decoder whose left half is negative: only the right half of the box is predicted.
  def half_decoder(codes):
    logits = np.ones((len(codes), 64, 64), np.float32)
    logits[:, :, :32] = -1.0
    return logits
  gt = np.zeros((64, 64), bool)
  gt[:, 32:] = True
  full = "<loc0000><loc0000><loc1023><loc1023>" + SEG16
  result = refcoco_segmentation([full], [gt], [(0, 0, 1, 1)], half_decoder)
  assert result["miou"] == 1.0 and result["boxacc/0.5"] == 1.0


def test_mask_miou_hand_made_masks():
  gt1 = np.zeros((4, 4), bool)
  gt1[:2, :2] = True  # 4 px
  pred1 = np.zeros((4, 4), bool)
  pred1[:2, :] = True  # 8 px, 4 shared: IoU 4 / 8
  gt2 = np.zeros((4, 4), np.uint8)
  gt2[3, 3] = 255  # uint8 masks: > 0 is foreground
  pred2 = np.ones((4, 4), bool)  # IoU 1 / 16
  assert mask_iou(pred1, gt1) == 0.5
  result = mask_miou([pred1, pred2, None], [gt1, gt2, gt1])
  # The mean of per-example IoUs, not cumulative I / U = (4 + 1) / (8 + 16 + 4) = 5 / 28.
  assert result == pytest.approx({"miou": (0.5 + 1 / 16 + 0) / 3, "invalid": 1.0, "num": 3.0})
  assert merge(mask_miou_stats([pred1], [gt1]), mask_miou_stats([pred2, None], [gt2, gt1])) == \
      mask_miou_stats([pred1, pred2, None], [gt1, gt2, gt1])
  assert mask_miou_from_stats({}) == {}


def test_mask_miou_bad_input():
  gt = gt_mask_100()
  with pytest.raises(ValueError, match="1 predictions but 2 references"):
    mask_miou([gt], [gt, gt])
  with pytest.raises(ValueError, match="no predictions"):
    mask_miou([], [])
  with pytest.raises(ValueError, match="GT mask 0 is empty"):
    mask_miou([gt], [np.zeros((100, 100), bool)])
  with pytest.raises(ValueError, match="example 0 has no GT mask"):
    mask_miou([gt], [None])
  with pytest.raises(ValueError, match=r"prediction 0 is \(10, 10\)"):
    mask_miou([np.ones((10, 10), bool)], [gt])


# --- COCO detection mAP (pycocotools) ------------------------------------------------------------

CAT = ((10, 10, 50, 50), "cat")
GT_IMAGES = [[CAT], [((0, 0, 100, 80), "dog"), ((60, 60, 100, 100), "cat")]]


def test_detection_map_perfect_predictions():
  result = detection_map(GT_IMAGES, GT_IMAGES)
  assert result["map"] == result["map_50"] == result["map_75"] == result["mar_100"] == 1.0
  assert result["num"] == 2.0
  assert "map_small" not in result  # no small GT object: COCOeval's -1 is left out


def test_detection_map_false_positive_ranked_first_halves_precision():
  # Scores: FP 0.9 then TP 0.8. Precision 0 at recall 0, 1/2 at recall 1; COCO's interpolated
  # precision is 1/2 at all 101 recall points: AP = 0.5 at every IoU threshold.
  preds = [[((200, 200, 260, 260), "cat", 0.9), (CAT[0], "cat", 0.8)]]
  result = detection_map(preds, [[CAT]])
  assert result["map"] == pytest.approx(0.5) and result["map_50"] == pytest.approx(0.5)
  assert result["mar_1"] == 0.0 and result["mar_10"] == 1.0


def test_detection_map_false_positive_between_two_hits():
  # TP (0.9), FP (0.8), TP (0.7) on 2 GT: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
  # Interpolated: 1 for the 51 recall points <= 0.5, 2/3 for the 50 above: AP = (51 + 100/3) / 101.
  gts = [[CAT, ((60, 60, 100, 100), "cat")]]
  preds = [[(CAT[0], "cat", 0.9), ((200, 200, 250, 250), "cat", 0.8),
            ((60, 60, 100, 100), "cat", 0.7)]]
  assert detection_map(preds, gts)["map"] == pytest.approx((51 + 100 / 3) / 101, rel=1e-9)


def test_detection_map_unknown_labels_images_without_gt_and_merge():
  # A label no GT object has is not evaluated; a box on an image without GT is a false positive.
  preds = [[CAT + (1.0,), ((0, 0, 9, 9), "zebra", 1.0)], [], [((0, 0, 90, 90), "cat", 0.95)]]
  gts = [[CAT], [((5, 5, 40, 40), "cat")], []]
  whole = detection_map(preds, gts)
  halves = merge(detection_map_stats(preds[:1], gts[:1]), detection_map_stats(preds[1:], gts[1:]))
  assert detection_map_from_stats(halves) == whole
  # Ranked: TP (1.0, image 0), FP (0.95, image 2); the cat of image 1 is missed: 1 of 2 found.
  assert whole["map_50"] == pytest.approx(51 / 101)
  assert whole["mar_100"] == pytest.approx(0.5)
  assert detection_map(preds[:1], gts[:1])["map"] == pytest.approx(1.0)  # the zebra is ignored
  assert detection_map([[]], [[]]) == {"num": 1.0}  # no GT object at all: no mAP


def test_detections_from_text():
  objects = detections_from_text("<loc0000><loc0000><loc1023><loc0511> cat ; junk", (100, 200))
  assert objects == [((0.0, 0.0, 100.0, pytest.approx(511 / 1023 * 200)), "cat", 1.0)]


def test_detection_map_bad_input():
  with pytest.raises(ValueError, match="2 predictions but 1 references"):
    detection_map([[], []], [[]])
  with pytest.raises(ValueError, match="no predictions"):
    detection_map([], [])
  with pytest.raises(ValueError, match="references\\[0\\] must be a list of objects"):
    detection_map([[]], [None])
  with pytest.raises(ValueError, match="max >= min"):
    detection_map([[((10, 10, 5, 50), "cat")]], [[CAT]])
  with pytest.raises(ValueError, match="must be \\(box, label\\)"):
    detection_map([[]], [[(CAT[0], "cat", 0.5)]])


# --- perplexity (evaluators.md §10) --------------------------------------------------------------


def log_softmax_at(logits, target):
  logits = np.asarray(logits, np.float64)
  return float(logits[target] - np.log(np.sum(np.exp(logits))))


def test_perplexity_worked_examples():
  uniform = 3 * log_softmax_at([0.0] * 4, 0)  # 3 supervised tokens, V = 4
  result = perplexity([uniform], [3])
  assert result == pytest.approx({"sum": 4.158883, "avg": 1.386294, "token_nll": 1.386294,
                                  "perplexity": 4.0, "num": 1.0, "tokens": 3.0}, abs=1e-6)
  assert perplexity([log_softmax_at([2.0, 0, 0, 0], 0)], [1])["sum"] == pytest.approx(0.340753,
                                                                                       abs=1e-6)


def test_perplexity_example_mean_vs_token_mean_and_merge():
  lls, counts = [-2.0, -9.0, 0.0], [1, 3, 0]  # the empty example: avg 0 (big_vision's clip)
  result = perplexity(lls, counts)
  assert result["sum"] == pytest.approx(11 / 3)
  assert result["avg"] == pytest.approx((2 + 3 + 0) / 3)
  assert result["token_nll"] == pytest.approx(11 / 4)
  assert result["perplexity"] == pytest.approx(math.exp(11 / 4))
  assert perplexity_from_stats(merge(perplexity_stats(lls[:1], counts[:1]),
                                     perplexity_stats(lls[1:], counts[1:]))) == result


def test_perplexity_bad_input():
  with pytest.raises(ValueError, match="2 log-likelihoods but 1 token counts"):
    perplexity([-1.0, -2.0], [1])
  with pytest.raises(ValueError, match="no examples"):
    perplexity([], [])
  with pytest.raises(ValueError, match="log-likelihood 0 is 0.5 > 0"):
    perplexity([0.5], [1])
  with pytest.raises(ValueError, match="example 0 has 0 tokens"):
    perplexity([-1.0], [0])
  with pytest.raises(ValueError, match="not finite"):
    perplexity([float("nan")], [1])
