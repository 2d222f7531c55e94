"""Short-answer QA metrics: exact match, ChartQA relaxed accuracy, TallyQA, ScienceQA and POPE.

Each follows big_vision's evaluator of the same task (evaluators.md §4, §7, §8, §9): comparisons
are exact string equality after only the normalisation stated per metric.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from paligemma_jax.evaluation.checks import (check_answer_lists, check_pairs,
                                             check_single_references, check_strings)
from paligemma_jax.evaluation.stats import Stats, mean

CHARTQA_MAX_RELATIVE_ERROR = 0.05
# TallyQA / CountBenchQA: the lower-cased whole answer is looked up; anything else is kept as is.
TALLY_NUMBER_WORDS = {word: str(value) for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty".split())} | {"none": "0"}
SCIENCEQA_ANSWER = re.compile(r"the answer is ([a-z])\.")
SCIENCEQA_FAILED = "failed"  # The parse result of an answer that does not match; compares equal.
POPE_ANSWERS = ("yes", "no")


def _start(metric: str, predictions: Sequence[str], references: Sequence, **others) -> None:
  check_pairs(metric, predictions, references, **others)
  check_strings(metric, "predictions", predictions)


def _means(stats: Mapping[str, float], keys: Sequence[str]) -> dict[str, float]:
  out = {}
  for key in keys:
    out.update(mean(stats, key, "num"))
  return {**out, "num": stats.get("num", 0.0)}


# --- exact match ---------------------------------------------------------------------------------

def exact_match_stats(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *,
                      to_lower: bool = False) -> Stats:
  """`exact_match`: #examples whose prediction equals one of its references; `num`."""
  _start("exact_match", predictions, references)
  post = str.lower if to_lower else (lambda s: s)
  refs = check_answer_lists("exact_match", references)
  hits = sum(post(p) in {post(r) for r in rs} for p, rs in zip(predictions, refs))
  return {"exact_match": float(hits), "num": float(len(predictions))}


def exact_match_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  return _means(stats, ("exact_match",))


def exact_match(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *,
                to_lower: bool = False) -> dict[str, float]:
  """Fraction of predictions equal (as strings, lower-cased with `to_lower`) to a reference."""
  return exact_match_from_stats(exact_match_stats(predictions, references, to_lower=to_lower))


# --- ChartQA -------------------------------------------------------------------------------------

def _chartqa_float(text: str) -> float | None:
  """Python `float()` of the text; a trailing `%` is stripped and the value divided by 100."""
  try:
    return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
  except ValueError:
    return None


def chartqa_relaxed_match(reference: str, prediction: str,
                          max_relative_error: float = CHARTQA_MAX_RELATIVE_ERROR) -> bool:
  """Within 5% of a non-zero numeric reference when the prediction parses; else exact match."""
  pred, ref = _chartqa_float(prediction), _chartqa_float(reference)
  if pred is not None and ref:  # A zero (or unparsable) reference needs an exact match.
    return abs(pred - ref) / abs(ref) <= max_relative_error
  return prediction == reference


def chartqa_accuracy_stats(predictions: Sequence[str], references: Sequence[str], *,
                           to_lower: bool = True) -> Stats:
  """Sums of `acc` (exact) and `relaxed_acc`; `num`. One reference per example."""
  _start("chartqa", predictions, references)
  refs = check_single_references("chartqa", references)
  post = str.lower if to_lower else (lambda s: s)
  stats = {"acc": 0.0, "relaxed_acc": 0.0, "num": float(len(predictions))}
  for pred, ref in zip(predictions, refs):
    pred, ref = post(pred), post(ref)
    stats["acc"] += float(pred == ref)
    stats["relaxed_acc"] += float(chartqa_relaxed_match(ref, pred))
  return stats


def chartqa_accuracy_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  return _means(stats, ("acc", "relaxed_acc"))


def chartqa_accuracy(predictions: Sequence[str], references: Sequence[str], *,
                     to_lower: bool = True) -> dict[str, float]:
  """ChartQA `relaxed_acc` (the reported score), `acc` (exact) and `num` (evaluators.md §4)."""
  return chartqa_accuracy_from_stats(
      chartqa_accuracy_stats(predictions, references, to_lower=to_lower))


# --- TallyQA / CountBenchQA ----------------------------------------------------------------------

def tally_numeral(text: str) -> str:
  """"Four" -> "4" (whole string, up to twenty); anything else unchanged (case and spaces kept)."""
  return TALLY_NUMBER_WORDS.get(text.lower(), text)


def tallyqa_accuracy_stats(predictions: Sequence[str], references: Sequence[str],
                           issimple: Sequence[int] | None = None) -> Stats:
  """`acc`/`num` overall, `acc/simple`, `acc/complex` (issimple 1 / 0; other values, such as the
  train split's -1, go to neither) and `acc/count_<gt>` with their `num/...` counts."""
  _start("tallyqa", predictions, references, issimple=issimple)
  refs = check_single_references("tallyqa", references)
  stats: Stats = {"acc": 0.0, "num": 0.0}
  for i, (pred, ref) in enumerate(zip(predictions, refs)):
    gt = tally_numeral(ref)
    correct = float(tally_numeral(pred) == gt)
    groups = ["", f"/count_{gt}"]
    if issimple is not None and issimple[i] in (0, 1):
      groups.append("/simple" if issimple[i] == 1 else "/complex")
    for group in groups:
      stats[f"acc{group}"] = stats.get(f"acc{group}", 0.0) + correct
      stats[f"num{group}"] = stats.get(f"num{group}", 0.0) + 1.0
  return stats


def tallyqa_accuracy_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  out = mean(stats, "acc", "num")
  for key in sorted(stats):
    if key.startswith("num/") and stats[key] > 0:
      group = key[len("num"):]
      out.update(mean(stats, f"acc{group}", key))
      out[key] = stats[key]
  return {**out, "num": stats.get("num", 0.0)}


def tallyqa_accuracy(predictions: Sequence[str], references: Sequence[str],
                     issimple: Sequence[int] | None = None) -> dict[str, float]:
  """TallyQA / CountBenchQA accuracy after mapping number words to numerals (evaluators.md §8)."""
  return tallyqa_accuracy_from_stats(tallyqa_accuracy_stats(predictions, references, issimple))


# --- ScienceQA -----------------------------------------------------------------------------------

def scienceqa_letter(text: str) -> str:
  """The letter of "The answer is B." at the start of the lower-cased text, else "failed"."""
  match = SCIENCEQA_ANSWER.match(text.lower())
  return match.group(1) if match else SCIENCEQA_FAILED


def scienceqa_accuracy_stats(predictions: Sequence[str], references: Sequence[str]) -> Stats:
  """Sums of `acc` (letters equal; two failed parses compare equal) and `parsefail`; `num`."""
  _start("scienceqa", predictions, references)
  refs = check_single_references("scienceqa", references)
  stats = {"acc": 0.0, "parsefail": 0.0, "num": float(len(predictions))}
  for pred, ref in zip(predictions, refs):
    letter = scienceqa_letter(pred)
    stats["acc"] += float(letter == scienceqa_letter(ref))
    stats["parsefail"] += float(letter == SCIENCEQA_FAILED)
  return stats


def scienceqa_accuracy_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  return _means(stats, ("acc", "parsefail"))


def scienceqa_accuracy(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """ScienceQA letter accuracy `acc` and the fraction `parsefail` (evaluators.md §7)."""
  return scienceqa_accuracy_from_stats(scienceqa_accuracy_stats(predictions, references))


# --- POPE ----------------------------------------------------------------------------------------

def pope_stats(predictions: Sequence[str], references: Sequence[str]) -> Stats:
  """Counts over lower-cased predictions and yes/no references: `acc` (equal), `valid` (the
  prediction is yes or no), `tp`/`fp`/`fn`/`tn` with "yes" the positive class (a prediction is a
  positive iff it is "yes"), `pred_yes`, `num`."""
  _start("pope", predictions, references)
  refs = check_single_references("pope", references)
  keys = ("acc", "valid", "tp", "fp", "fn", "tn", "pred_yes")
  stats = dict.fromkeys(keys, 0.0) | {"num": float(len(predictions))}
  for i, (pred, ref) in enumerate(zip(predictions, refs)):
    if ref not in POPE_ANSWERS:
      raise ValueError(f"pope: reference {i} is {ref!r}, valid: yes, no")
    pred = pred.lower()
    said_yes, is_yes = pred == "yes", ref == "yes"
    stats["acc"] += float(pred == ref)
    stats["valid"] += float(pred in POPE_ANSWERS)
    stats["pred_yes"] += float(said_yes)
    stats[("t" if said_yes == is_yes else "f") + ("p" if said_yes else "n")] += 1.0
  return stats


def pope_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """`acc`, `valid_percent` (a fraction), `yes_ratio`, `precision` (when some prediction is yes),
  `recall` (when some reference is yes), `f1` (when both exist), `num`."""
  out = _means(stats, ("acc",))
  out.update({k: v for k, v in (("valid_percent", mean(stats, "valid", "num").get("valid")),
                                ("yes_ratio", mean(stats, "pred_yes", "num").get("pred_yes")))
              if v is not None})
  tp, fp, fn = stats.get("tp", 0.0), stats.get("fp", 0.0), stats.get("fn", 0.0)
  if tp + fp > 0:
    out["precision"] = tp / (tp + fp)
  if tp + fn > 0:
    out["recall"] = tp / (tp + fn)
  if "precision" in out and "recall" in out:
    p, r = out["precision"], out["recall"]
    out["f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
  return out


def pope(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """POPE: accuracy, valid fraction, and precision / recall / F1 / yes-ratio with "yes" positive."""
  return pope_from_stats(pope_stats(predictions, references))
