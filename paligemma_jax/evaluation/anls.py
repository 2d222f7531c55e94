"""ANLS: average normalised Levenshtein similarity, thresholded (DocVQA, InfoVQA, ST-VQA).

Per example, over its references t and the prediction p (character level):
`NLD = levenshtein(t, p) / max(len(t), len(p))`, score `1 - NLD` if `NLD < threshold` else 0 (the
threshold is strict: NLD = 0.5 scores 0); an empty reference scores 1 iff the prediction is empty
too. Several references: the maximum. No whitespace or case normalisation beyond `to_lower`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from paligemma_jax.evaluation.checks import check_answer_lists, check_pairs, check_strings
from paligemma_jax.evaluation.stats import Stats, mean

ANLS_THRESHOLD = 0.5


def levenshtein(a: str, b: str) -> int:
  """Character edit distance (insertions, deletions, substitutions all cost 1)."""
  if len(a) < len(b):
    a, b = b, a
  previous = list(range(len(b) + 1))
  for i, char_a in enumerate(a, start=1):
    current = [i]
    for j, char_b in enumerate(b, start=1):
      current.append(min(previous[j] + 1, current[j - 1] + 1,
                         previous[j - 1] + (char_a != char_b)))
    previous = current
  return previous[-1]


def anls_score(reference: str, prediction: str, threshold: float = ANLS_THRESHOLD) -> float:
  """ANLS of one prediction against one reference."""
  if not reference:
    return float(prediction == "")
  nld = levenshtein(reference, prediction) / max(len(reference), len(prediction))
  return 1.0 - nld if nld < threshold else 0.0


def best_anls(references: Sequence[str], prediction: str,
              threshold: float = ANLS_THRESHOLD) -> float:
  """Maximum ANLS over an example's references."""
  return max(anls_score(ref, prediction, threshold) for ref in references)


def anls_stats(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *,
               to_lower: bool = False, threshold: float = ANLS_THRESHOLD) -> Stats:
  """`{"anls": Σ per-example ANLS, "num": #examples}`; a reference is a string or a list."""
  check_pairs("anls", predictions, references)
  check_strings("anls", "predictions", predictions)
  refs = check_answer_lists("anls", references)
  post = str.lower if to_lower else (lambda s: s)
  total = sum(best_anls([post(r) for r in rs], post(p), threshold)
              for p, rs in zip(predictions, refs))
  return {"anls": float(total), "num": float(len(predictions))}


def anls_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """`anls` (mean over examples) and `num`."""
  return {**mean(stats, "anls", "num"), "num": stats.get("num", 0.0)}


def anls(predictions: Sequence[str], references: Sequence[str | Sequence[str]], *,
         to_lower: bool = False, threshold: float = ANLS_THRESHOLD) -> dict[str, float]:
  """ANLS over a split in one process; see the module docstring."""
  return anls_from_stats(anls_stats(predictions, references, to_lower=to_lower,
                                    threshold=threshold))
