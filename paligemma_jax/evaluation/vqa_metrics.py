"""VQA accuracies: plain (`min(1, #matches / 3)`), official VQAv2 (leave-one-out), and RSVQA.

References per example are a string (one reference: big_vision's `answer` field, scored by exact
match) or a list of strings (its `answers` field, scored against all of them, even a list of one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from paligemma_jax.evaluation.anls import best_anls
from paligemma_jax.evaluation.checks import check_answer_lists, check_pairs, check_strings
from paligemma_jax.evaluation.stats import Stats, mean
from paligemma_jax.evaluation.vqav2_normalize import normalize_vqav2_answer, strip_space

# VQAv2 answer types and the suffix each gets in metric names.
VQAV2_ANSWER_TYPES = {"yes/no": "yesno", "number": "number", "other": "other"}
# RSVQA's question-type subsets without counting questions, in big_vision's order (LR, then HR).
RSVQA_NONUM_SUBSETS = (("lr", ("comp", "presence", "rural_urban")), ("hr", ("comp", "presence")))


def _lower_if(to_lower: bool):
  return str.lower if to_lower else (lambda s: s)


def _plain_scores(prediction: str, refs: str | list[str]) -> tuple[float, float]:
  """(acc, acc_any) of one example: exact match for a single string, else min(1, n/3), min(1, n)."""
  if isinstance(refs, str):
    return (float(prediction == refs),) * 2
  matches = sum(prediction == ref for ref in refs)
  return min(1.0, matches / 3.0), min(1.0, float(matches))


def _plain_example_scores(predictions, references, to_lower, metric):
  """Per example (acc, acc_any, anls) after validation and optional lower-casing."""
  check_pairs(metric, predictions, references)
  check_strings(metric, "predictions", predictions)
  ref_lists = check_answer_lists(metric, references)
  post = _lower_if(to_lower)
  for pred, raw, refs in zip(predictions, references, ref_lists):
    pred, refs = post(pred), [post(r) for r in refs]
    acc, acc_any = _plain_scores(pred, refs[0] if isinstance(raw, str) else refs)
    yield acc, acc_any, best_anls(refs, pred)


def vqa_accuracy_stats(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *,
                       to_lower: bool = False) -> Stats:
  """Sums of `acc`, `acc_any`, `anls` and the count `num` (big_vision `vqa` evaluator)."""
  stats = {"acc": 0.0, "acc_any": 0.0, "anls": 0.0, "num": 0.0}
  for acc, acc_any, anls in _plain_example_scores(predictions, references, to_lower, "vqa"):
    stats["acc"] += acc
    stats["acc_any"] += acc_any
    stats["anls"] += anls
    stats["num"] += 1
  return stats


def vqa_accuracy_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  out = {}
  for key in ("acc", "acc_any", "anls"):
    out.update(mean(stats, key, "num"))
  return {**out, "num": stats.get("num", 0.0)}


def vqa_accuracy(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *,
                 to_lower: bool = False) -> dict[str, float]:
  """Plain VQA accuracy: `acc` = min(1, #matches/3) (no leave-one-out), `acc_any`, `anls`, `num`."""
  return vqa_accuracy_from_stats(vqa_accuracy_stats(predictions, references, to_lower=to_lower))


def vqav2_example_accuracy(prediction: str, references: Sequence[str]) -> float:
  """Official VQAv2 accuracy of one example: leave-one-out mean of min(1, #other matches / 3)."""
  prediction = strip_space(prediction)
  refs = [strip_space(r) for r in references]
  if len(set(refs)) > 1:  # Normalise only when the references disagree (as big_vision does).
    prediction = normalize_vqav2_answer(prediction)
    refs = [normalize_vqav2_answer(r) for r in refs]
  matches = sum(prediction == ref for ref in refs)
  # Leaving out a matching reference leaves matches - 1 others, any other leaves matches.
  left_out = [min(1.0, (matches - (prediction == ref)) / 3.0) for ref in refs]
  return sum(left_out) / len(left_out)


def vqav2_accuracy_stats(predictions: Sequence[str], references: Sequence[Sequence[str]],
                         answer_types: Sequence[str] | None = None) -> Stats:
  """`acc`, `num`, and with `answer_types` ("yes/no", "number", "other") `acc/<t>`, `num/<t>`."""
  check_pairs("vqav2", predictions, references, answer_types=answer_types)
  check_strings("vqav2", "predictions", predictions)
  ref_lists = check_answer_lists("vqav2", references)
  stats = {"acc": 0.0, "num": 0.0}
  for i, (pred, refs) in enumerate(zip(predictions, ref_lists)):
    acc = vqav2_example_accuracy(pred, refs)
    stats["acc"] += acc
    stats["num"] += 1
    if answer_types is not None:
      if answer_types[i] not in VQAV2_ANSWER_TYPES:
        raise ValueError(f"vqav2: example {i} has answer type {answer_types[i]!r}, valid: "
                         f"{', '.join(VQAV2_ANSWER_TYPES)}")
      suffix = VQAV2_ANSWER_TYPES[answer_types[i]]
      stats[f"acc/{suffix}"] = stats.get(f"acc/{suffix}", 0.0) + acc
      stats[f"num/{suffix}"] = stats.get(f"num/{suffix}", 0.0) + 1
  return stats


def vqav2_accuracy_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  out = mean(stats, "acc", "num")
  for suffix in VQAV2_ANSWER_TYPES.values():
    if stats.get(f"num/{suffix}", 0.0) > 0:
      out.update(mean(stats, f"acc/{suffix}", f"num/{suffix}"))
      out[f"num/{suffix}"] = stats[f"num/{suffix}"]
  return {**out, "num": stats.get("num", 0.0)}


def vqav2_accuracy(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   answer_types: Sequence[str] | None = None) -> dict[str, float]:
  """Official VQAv2 / TextVQA accuracy (evaluators.md §3); TextVQA passes "other" as types."""
  return vqav2_accuracy_from_stats(vqav2_accuracy_stats(predictions, references, answer_types))


def rsvqa_accuracy_stats(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
                         question_types: Sequence[str], *, to_lower: bool = True) -> Stats:
  """The plain VQA sums plus, per question type t, `acc_any/<t>` and `num/<t>`."""
  check_pairs("rsvqa", predictions, references, question_types=question_types)
  stats = {"acc": 0.0, "acc_any": 0.0, "anls": 0.0, "num": 0.0}
  scores = _plain_example_scores(predictions, references, to_lower, "rsvqa")
  for qtype, (acc, acc_any, anls) in zip(question_types, scores):
    if not isinstance(qtype, str) or not qtype:
      raise ValueError(f"rsvqa: question type {qtype!r} is not a non-empty string")
    for key, value in (("acc", acc), ("acc_any", acc_any), ("anls", anls), ("num", 1.0),
                       (f"acc_any/{qtype}", acc_any), (f"num/{qtype}", 1.0)):
      stats[key] = stats.get(key, 0.0) + value
  return stats


def rsvqa_accuracy_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """`acc`, `acc_any` (OA), `anls`, `acc_<t>`, `acc_avg` (AA over present types), the no-count
  averages `acc_avg_nonum_lr` / `acc_avg_nonum_hr` when all their types are present, and
  `acc_avg_nonum` = the last of those two, the value big_vision logs (it yields both under one
  name and its writer keeps the last)."""
  out = vqa_accuracy_from_stats(stats)
  if stats.get("num", 0.0) <= 0:
    return out
  per_type = {key.split("/", 1)[1]: stats[f"acc_any/{key.split('/', 1)[1]}"] / count
              for key, count in sorted(stats.items()) if key.startswith("num/") and count > 0}
  out.update({f"acc_{t}": acc for t, acc in per_type.items()})
  if per_type:
    out["acc_avg"] = sum(per_type.values()) / len(per_type)
  for name, types in RSVQA_NONUM_SUBSETS:
    if all(t in per_type for t in types):
      out[f"acc_avg_nonum_{name}"] = out["acc_avg_nonum"] = (
          sum(per_type[t] for t in types) / len(types))
  return out


def rsvqa_accuracy(predictions: Sequence[str], references: Sequence[str | Sequence[str]],
                   question_types: Sequence[str], *, to_lower: bool = True) -> dict[str, float]:
  """RSVQA (evaluators.md §6): plain VQA metrics plus exact-match-any per question type."""
  return rsvqa_accuracy_from_stats(
      rsvqa_accuracy_stats(predictions, references, question_types, to_lower=to_lower))
