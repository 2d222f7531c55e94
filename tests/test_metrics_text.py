"""Text metrics: every worked example of evaluators.md (§1-§4, §6-§9), BLEU against
pycocoevalcap, edge cases (empty prediction, unicode, number words, punctuation and articles),
one-line errors, and the two-process property: merged stats of two halves equal the whole's.
"""

from __future__ import annotations

import math

import pytest

from paligemma_jax import evaluation as ev

# --- the stats convention ------------------------------------------------------------------------


def test_merge_sums_keys_and_treats_missing_as_zero():
  assert ev.merge({"acc": 1, "num": 2}, {"acc": 0.5, "num/yesno": 1}) == {
      "acc": 1.5, "num": 2.0, "num/yesno": 1.0}
  assert ev.merge() == {}
  assert ev.merge_all([{"a": 1}] * 3) == {"a": 3.0}
  assert ev.mean({"acc": 3, "num": 4}, "acc", "num") == {"acc": 0.75}
  assert ev.mean({"acc": 0, "num": 0}, "acc", "num") == {}


# --- §2 ANLS -------------------------------------------------------------------------------------

ANLS_TABLE = [
    ("hello world", "hello word", 1 - 1 / 11),
    ("hello world", "hello", 0.0),  # NLD 6/11 > 0.5
    ("abc", "abd", 2 / 3),
    ("abcd", "abxy", 0.0),  # NLD exactly 0.5: strict threshold
    ("42", "4", 0.0),
    ("Hello", "hello", 0.8),  # no lower-casing
    ("", "", 1.0),
    ("", "x", 0.0),
]


@pytest.mark.parametrize("gt,pred,expected", ANLS_TABLE)
def test_anls_worked_examples(gt, pred, expected):
  assert ev.anls_score(gt, pred) == pytest.approx(expected, abs=1e-12)
  assert ev.anls([pred], [gt])["anls"] == pytest.approx(expected, abs=1e-12)


def test_anls_multiple_references_take_the_max_and_mean_over_examples():
  out = ev.anls(["hello word"], [["hello world", "hello"]])
  assert out == pytest.approx({"anls": 0.909091, "num": 1.0}, abs=1e-6)
  table = ev.anls([p for _, p, _ in ANLS_TABLE], [g for g, _, _ in ANLS_TABLE])
  assert table["anls"] == pytest.approx(sum(e for *_, e in ANLS_TABLE) / len(ANLS_TABLE))


def test_anls_lower_casing_unicode_and_empty_prediction():
  assert ev.anls(["HELLO"], ["hello"], to_lower=True)["anls"] == 1.0
  assert ev.anls_score("café", "cafe") == pytest.approx(0.75)  # one character of four
  assert ev.anls_score("日本語", "日本") == pytest.approx(1 - 1 / 3)
  assert ev.anls_score("abc", "") == 0.0  # NLD 1
  assert ev.levenshtein("kitten", "sitting") == 3


# --- §1 plain VQA accuracy -----------------------------------------------------------------------

@pytest.mark.parametrize("pred,gts,to_lower,acc,acc_any,anls", [
    ("yes", ["yes"] * 2 + ["no"] * 8, False, 2 / 3, 1.0, 1.0),
    ("Yes", ["yes"] * 4 + ["no"] * 6, False, 0.0, 0.0, 2 / 3),
    ("Yes", ["yes"] * 4 + ["no"] * 6, True, 1.0, 1.0, 1.0),
])
def test_vqa_worked_examples(pred, gts, to_lower, acc, acc_any, anls):
  out = ev.vqa_accuracy([pred], [gts], to_lower=to_lower)
  assert out == pytest.approx({"acc": acc, "acc_any": acc_any, "anls": anls, "num": 1.0})


def test_vqa_single_reference_string_is_exact_match_and_a_list_of_one_is_not():
  assert ev.vqa_accuracy(["7"], ["7"])["acc"] == 1.0  # big_vision's `answer` field
  assert ev.vqa_accuracy(["7"], [["7"]])["acc"] == pytest.approx(1 / 3)  # `answers` field
  assert ev.vqa_accuracy(["7"], [["7"]])["acc_any"] == 1.0


def test_vqa_no_leave_one_out_and_empty_prediction():
  assert ev.vqa_accuracy(["a"], [["a"] * 3 + ["b"] * 7])["acc"] == 1.0
  out = ev.vqa_accuracy([""], [["", "x", "y"]])
  assert out["acc"] == pytest.approx(1 / 3) and out["anls"] == 1.0


# --- §3 VQAv2 official accuracy ------------------------------------------------------------------

@pytest.mark.parametrize("pred,gts,expected", [
    ("2", ["two", "two", "2"] + ["3"] * 7, 0.9),  # "two" -> "2": three matches
    ("2", ["2"] + ["3"] * 9, 0.3),
    ("2", ["2"] * 2 + ["3"] * 8, 0.6),
    ("2", ["2"] * 4 + ["3"] * 6, 1.0),
    ("The dog.", ["dog"] * 10, 0.0),  # all GTs agree: nothing normalised
    ("The dog.", ["dog"] * 9 + ["dogs"], 1.0),
    ("1,000", ["1000"] * 9 + ["1 000"], 1.0),  # digit comma: marks deleted
    ("black-and-white", ["black and white"] * 9 + ["gray"], 1.0),
    ("yes\n", ["yes"] * 10, 1.0),  # only the strip
])
def test_vqav2_worked_examples(pred, gts, expected):
  assert ev.vqav2_example_accuracy(pred, gts) == pytest.approx(expected)
  assert ev.vqav2_accuracy([pred], [gts])["acc"] == pytest.approx(expected)


@pytest.mark.parametrize("n,expected",
                         [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqav2_leave_one_out_by_number_of_matches(n, expected):
  gts = ["x"] * n + ["y"] * (10 - n)
  assert ev.vqav2_example_accuracy("x", gts) == pytest.approx(expected)


@pytest.mark.parametrize("text,normalised", [
    ("3.", "3"), ("3.5", "3.5"), (".5", ".5"), ("Hello, world!", "hello world"), ("a b-c", "b c"),
    ("Two dogs", "2 dogs"), ("none", "0"),
    ("An apple and THE pear", "apple and pear"),  # articles
    ("whats that", "what's that"), ("dont know", "don't know"),  # contractions
    ("ten", "10"), ("eleven", "eleven"),  # number words stop at ten
    ("(yes)", "yes"), ("yes (maybe)", "yes maybe"),  # "(" after a space deleted, others -> space
    ("a,b", "b"), ("1,5 a,b", "15 ab"),  # digit comma disables space replacement for every mark
    ("café crème", "café crème"), ("Ünïcode?", "ünïcode"),
    ("  many   spaces  ", "many spaces"),
])
def test_vqav2_normalisation_spot_checks(text, normalised):
  assert ev.normalize_vqav2_answer(text) == normalised


def test_vqav2_unicode_numbers_as_words_and_empty_prediction():
  assert ev.vqav2_example_accuracy("Three", ["3"] * 5 + ["three"] * 5) == 1.0
  assert ev.vqav2_example_accuracy("Three", ["3"] * 10) == 0.0  # GTs agree: no normalisation
  assert ev.vqav2_example_accuracy("Café", ["café"] * 3 + ["tea"] * 7) == pytest.approx(0.9)
  assert ev.vqav2_example_accuracy("", ["a"] * 3 + ["b"] * 7) == pytest.approx(0.9)  # "a" -> ""
  assert ev.vqav2_example_accuracy("", ["b"] * 10) == 0.0


def test_vqav2_answer_types():
  preds = ["yes", "2", "red", "blue"]
  gts = [["yes"] * 10, ["2"] * 10, ["red"] * 10, ["red"] * 10]
  out = ev.vqav2_accuracy(preds, gts, ["yes/no", "number", "other", "other"])
  assert out == pytest.approx({"acc": 0.75, "acc/yesno": 1.0, "num/yesno": 1.0, "acc/number": 1.0,
                               "num/number": 1.0, "acc/other": 0.5, "num/other": 2.0, "num": 4.0})
  assert set(ev.vqav2_accuracy(preds, gts)) == {"acc", "num"}
  with pytest.raises(ValueError, match=r"answer type 'color', valid: yes/no, number, other"):
    ev.vqav2_accuracy(["x"], [["x"] * 10], ["color"])


# --- §4 ChartQA ----------------------------------------------------------------------------------

CHARTQA_TABLE = [  # GT, pred, relaxed, exact
    ("12.5", "13", True, False), ("12.5", "13.2", False, False), ("100", "95", True, False),
    ("100", "94.9", False, False), ("-20", "-21", True, False), ("50%", "0.5", True, False),
    ("50", "50%", False, False), ("0", "0", True, True), ("0", "0.0", False, False),
    ("1,000", "1000", False, False), ("yes", "yes", True, True),
]


@pytest.mark.parametrize("gt,pred,relaxed,exact", CHARTQA_TABLE)
def test_chartqa_worked_examples(gt, pred, relaxed, exact):
  assert ev.chartqa_relaxed_match(gt, pred) is relaxed
  out = ev.chartqa_accuracy([pred], [gt])
  assert out == {"acc": float(exact), "relaxed_acc": float(relaxed), "num": 1.0}


def test_chartqa_table_totals_lower_casing_and_empty_prediction():
  out = ev.chartqa_accuracy([p for _, p, _, _ in CHARTQA_TABLE], [g for g, *_ in CHARTQA_TABLE])
  assert out == pytest.approx({"acc": 2 / 11, "relaxed_acc": 6 / 11, "num": 11.0})
  assert ev.chartqa_accuracy(["Yes"], ["yes"])["relaxed_acc"] == 1.0  # to_lower by default
  assert ev.chartqa_accuracy(["Yes"], ["yes"], to_lower=False)["relaxed_acc"] == 0.0
  assert ev.chartqa_accuracy([""], ["12"]) == {"acc": 0.0, "relaxed_acc": 0.0, "num": 1.0}
  assert ev.chartqa_accuracy([" 13 "], ["12.5"])["relaxed_acc"] == 1.0  # float() accepts spaces
  assert ev.chartqa_accuracy(["twelve"], ["12"])["relaxed_acc"] == 0.0  # no number words


# --- exact match ---------------------------------------------------------------------------------

def test_exact_match_with_and_without_lower_casing():
  preds, refs = ["Paris", "rome", "", "Köln"], ["paris", ["Milan", "rome"], "", "köln"]
  assert ev.exact_match(preds, refs) == {"exact_match": 0.5, "num": 4.0}
  assert ev.exact_match(preds, refs, to_lower=True) == {"exact_match": 1.0, "num": 4.0}
  assert ev.exact_match(["paris "], ["paris"])["exact_match"] == 0.0  # no stripping


# --- §6 RSVQA ------------------------------------------------------------------------------------

def test_rsvqa_worked_example():
  out = ev.rsvqa_accuracy(["yes", "yes", "yes", "urban"], [["yes"], ["no"], ["yes"], ["rural"]],
                          ["comp", "comp", "presence", "rural_urban"])
  assert out == pytest.approx({
      "acc": 1 / 6, "acc_any": 0.5, "anls": 0.5, "num": 4.0, "acc_comp": 0.5,
      "acc_presence": 1.0, "acc_rural_urban": 0.0, "acc_avg": 0.5,
      "acc_avg_nonum_lr": 0.5, "acc_avg_nonum_hr": 0.75, "acc_avg_nonum": 0.75})


def test_rsvqa_hr_only_and_lower_casing():
  out = ev.rsvqa_accuracy(["Yes", "no", "12"], [["yes"], ["yes"], ["12"]],
                          ["presence", "comp", "count"])
  assert out["acc_any"] == 2 / 3 and out["acc_presence"] == 1.0 and out["acc_count"] == 1.0
  assert out["acc_avg_nonum"] == out["acc_avg_nonum_hr"] == 0.5
  assert "acc_avg_nonum_lr" not in out
  assert ev.rsvqa_accuracy(["Yes"], [["yes"]], ["comp"], to_lower=False)["acc_any"] == 0.0


# --- §7 ScienceQA --------------------------------------------------------------------------------

@pytest.mark.parametrize("pred,acc,parsefail", [
    ("The answer is B.", 1.0, 0.0), ("the answer is c. Because…", 0.0, 0.0),
    ("B", 0.0, 1.0), ("The answer is (B).", 0.0, 1.0),
])
def test_scienceqa_worked_examples(pred, acc, parsefail):
  out = ev.scienceqa_accuracy([pred], ["The answer is B."])
  assert out == {"acc": acc, "parsefail": parsefail, "num": 1.0}


def test_scienceqa_totals_and_quirks():
  preds = ["The answer is B.", "the answer is c. Because…", "B"]
  out = ev.scienceqa_accuracy(preds, ["The answer is B."] * 3)
  assert out == pytest.approx({"acc": 1 / 3, "parsefail": 1 / 3, "num": 3.0})
  assert ev.scienceqa_accuracy(["x"], ["y"])["acc"] == 1.0  # two failed parses compare equal
  assert ev.scienceqa_accuracy([""], ["The answer is A."])["parsefail"] == 1.0
  assert ev.scienceqa_accuracy([" The answer is A."], ["The answer is A."])["acc"] == 0.0


# --- §8 TallyQA ----------------------------------------------------------------------------------

def test_tallyqa_worked_example():
  out = ev.tallyqa_accuracy(["two", "3", "Four", "2 "], ["2", "3", "4", "2"])
  assert out["acc"] == 0.75 and out["num"] == 4.0
  assert out["acc/count_2"] == 0.5 and out["num/count_2"] == 2.0
  assert out["acc/count_4"] == 1.0


def test_tallyqa_simple_complex_split():
  out = ev.tallyqa_accuracy(["two", "3", "Four", "2 ", "twenty"], ["2", "3", "4", "2", "20"],
                            issimple=[1, 0, 1, 0, -1])
  assert out["acc/simple"] == 1.0 and out["num/simple"] == 2.0
  assert out["acc/complex"] == 0.5 and out["num/complex"] == 2.0
  assert out["acc"] == 0.8 and out["acc/count_20"] == 1.0  # -1: neither simple nor complex
  out = ev.tallyqa_accuracy(["NONE", "Zero", ""], ["0", "zero", "0"])
  assert out["acc"] == pytest.approx(2 / 3)


# --- §9 POPE -------------------------------------------------------------------------------------

def test_pope_worked_example_and_classification_metrics():
  out = ev.pope(["Yes", "no", "yes.", "No"], ["yes", "no", "yes", "yes"])
  assert out["acc"] == 0.5 and out["valid_percent"] == 0.75 and out["num"] == 4.0
  # "yes" positive: TP 1 (Yes), FN 2 (yes., No), TN 1 (no), FP 0.
  assert out["precision"] == 1.0 and out["recall"] == pytest.approx(1 / 3)
  assert out["f1"] == pytest.approx(0.5) and out["yes_ratio"] == 0.25


def test_pope_undefined_precision_is_left_out():
  out = ev.pope(["no", "no"], ["yes", "no"])
  assert "precision" not in out and "f1" not in out and out["recall"] == 0.0
  out = ev.pope(["yes", "no"], ["no", "no"])
  assert out["precision"] == 0.0 and "recall" not in out and out["yes_ratio"] == 0.5
  with pytest.raises(ValueError, match=r"pope: reference 0 is 'Yes', valid: yes, no"):
    ev.pope(["yes"], ["Yes"])


# --- BLEU (SciCap) -------------------------------------------------------------------------------

def test_bleu_hand_example_with_brevity_penalty():
  out = ev.bleu(["the cat"], [["the cat sat"]], tokenize=False)
  bp = math.exp(1 - 3 / 2)  # 2 words against a 3-word reference
  assert out["bleu-1"] == pytest.approx(bp) and out["bleu-2"] == pytest.approx(bp)
  # No 3- or 4-gram to guess: pycocoevalcap's 1e-15 / 1e-9 factor each.
  assert out["bleu-3"] == pytest.approx(bp * 1e-6 ** (1 / 3), rel=1e-6)
  assert out["bleu-4"] == pytest.approx(bp * 1e-12 ** (1 / 4), rel=1e-6)


def test_bleu_clipping_closest_reference_and_perfect_match():
  # "the the the": clipped to two "the"; the closest reference length is 2 (of 2 and 5): no penalty.
  out = ev.bleu(["the the the"], [["the the", "the cat on the mat"]], tokenize=False)
  assert out["bleu-1"] == pytest.approx(2 / 3)
  # 3 words between references of 2 and 4: a tie, the shorter counts (with 4, BP = 0.7165).
  assert ev.bleu(["a b c"], [["a b", "a b c d"]], tokenize=False)["bleu-1"] == pytest.approx(1.0)
  assert ev.bleu(["a b c d e"], [["a b c d e"]], tokenize=False)["bleu-4"] == pytest.approx(1.0)
  assert ev.bleu([""], [["a b c d"]], tokenize=False)["bleu-4"] == 0.0


def test_bleu_equals_pycocoevalcap():
  bleu_module = pytest.importorskip("pycocoevalcap.bleu.bleu")
  preds = ["a dog running on grass", "a cat on a sofa", "grass", "", "a a a a a"]
  refs = [["a dog runs on the grass", "a brown dog running on grass"],
          ["a cat sleeps on a sofa", "a cat is sleeping on the couch"],
          ["green grass field"], ["something"], ["a a", "a a a a a a a"]]
  expected, _ = bleu_module.Bleu(4).compute_score(
      {i: r for i, r in enumerate(refs)}, {i: [p] for i, p in enumerate(preds)}, verbose=0)
  out = ev.bleu(preds, refs, tokenize=False)
  assert [out[f"bleu-{n}"] for n in range(1, 5)] == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_bleu_tokenises_like_ptb_by_default():
  out = ev.bleu(["A Dog, running!"], [["a dog running ."]])
  assert out["bleu-3"] == pytest.approx(1.0)
  assert ev.bleu(["A Dog, running!"], [["a dog running ."]], tokenize=False)["bleu-1"] < 0.5


# --- bad input -----------------------------------------------------------------------------------

def _call(name, preds, refs):
  extra = {"rsvqa_accuracy": (["comp"] * len(preds),)}.get(name, ())
  return getattr(ev, name)(preds, refs, *extra)


MULTI_REF = ["vqa_accuracy", "vqav2_accuracy", "anls", "exact_match", "rsvqa_accuracy", "bleu"]
SINGLE_REF = ["chartqa_accuracy", "tallyqa_accuracy", "scienceqa_accuracy", "pope"]


@pytest.mark.parametrize("name", MULTI_REF + SINGLE_REF)
def test_lengths_differ_and_empty_split_are_one_line_errors(name):
  with pytest.raises(ValueError, match=r"2 predictions but 1 references") as info:
    _call(name, ["yes", "no"], [["yes"]])
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match=r"no predictions \(empty list\)"):
    _call(name, [], [])


@pytest.mark.parametrize("name", MULTI_REF)
def test_example_without_references_is_an_error(name):
  with pytest.raises(ValueError, match=r"example 1 has no references"):
    _call(name, ["yes", "no"], [["yes"], []])
  with pytest.raises(ValueError, match=r"example 0 has no references \(None\)"):
    _call(name, ["yes"], [None])


@pytest.mark.parametrize("name", SINGLE_REF)
def test_single_reference_metrics_reject_missing_or_several(name):
  with pytest.raises(ValueError, match=r"example 0 has no reference \(None\)"):
    getattr(ev, name)(["yes"], [None])
  with pytest.raises(ValueError, match=r"example 0 has 0 references, expected one"):
    getattr(ev, name)(["yes"], [[]])
  assert getattr(ev, name)(["yes"], [["yes"]])["num"] == 1.0  # a list of one is fine


def test_other_bad_input():
  with pytest.raises(ValueError, match=r"predictions must be a list, got str"):
    ev.vqa_accuracy("yes", ["yes"])
  with pytest.raises(ValueError, match=r"predictions\[0\] is NoneType, not a string"):
    ev.anls([None], ["x"])
  with pytest.raises(ValueError, match=r"1 predictions but 2 question_types"):
    ev.rsvqa_accuracy(["x"], [["x"]], ["comp", "count"])
  with pytest.raises(ValueError, match=r"1 predictions but 0 issimple"):
    ev.tallyqa_accuracy(["1"], ["1"], issimple=[])


# --- two processes give the metrics of one -------------------------------------------------------

PREDS = ["yes", "Two", "the dog.", "", "13", "The answer is B.", "no", "café", "1,000", "black"]
MULTI = [["yes"] * 10, ["2"] * 4 + ["3"] * 6, ["dog"] * 9 + ["dogs"], ["", "a", "b"],
         ["12.5", "13"], ["The answer is B."], ["yes", "no"], ["cafe"], ["1000"] * 10, ["white"]]
SINGLE = ["yes", "2", "dog", "0", "12.5", "The answer is B.", "no", "café", "1000", "white"]
QTYPES = ["comp", "count", "presence", "rural_urban", "area"] * 2
ISSIMPLE = [1, 0, -1, 1, 0, 1, 0, 1, 0, 1]
POPE_REFS = ["yes", "no"] * 5
ANSWER_TYPES = ["yes/no", "number", "other"] * 3 + ["other"]
CASES = {
    "vqa_accuracy": (PREDS, MULTI, {}),
    "vqav2_accuracy": (PREDS, MULTI, {"answer_types": ANSWER_TYPES}),
    "anls": (PREDS, MULTI, {}),
    "exact_match": (PREDS, SINGLE, {"to_lower": True}),
    "rsvqa_accuracy": (PREDS, MULTI, {"question_types": QTYPES}),
    "chartqa_accuracy": (PREDS, SINGLE, {}),
    "tallyqa_accuracy": (PREDS, SINGLE, {"issimple": ISSIMPLE}),
    "scienceqa_accuracy": (PREDS, SINGLE, {}),
    "pope": (PREDS, POPE_REFS, {}),
    "bleu": (PREDS, MULTI, {}),
}


def _stats_functions(name):
  return getattr(ev, f"{name}_stats"), getattr(ev, f"{name}_from_stats")


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("cut", [1, 4, 9])
def test_merged_stats_of_two_halves_equal_the_whole(name, cut):
  preds, refs, kwargs = CASES[name]
  stats_fn, from_stats = _stats_functions(name)

  def part(lo, hi):
    sliced = {k: v[lo:hi] if isinstance(v, list) else v for k, v in kwargs.items()}
    return stats_fn(preds[lo:hi], refs[lo:hi], **sliced)

  whole = stats_fn(preds, refs, **kwargs)
  merged = ev.merge(part(0, cut), part(cut, len(preds)))
  assert merged == pytest.approx(whole)
  assert from_stats(merged) == pytest.approx(getattr(ev, name)(preds, refs, **kwargs))
  assert all(isinstance(v, float) for v in whole.values())
