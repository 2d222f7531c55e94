"""Corpus BLEU-1..4 exactly as pycocoevalcap's `Bleu(4)` (big_vision's `bleu-4` for SciCap).

Per example, over whitespace tokens: `guess_n = max(0, len(hyp) - n + 1)`; `correct_n` = the
hypothesis n-gram counts clipped by their largest count in any one reference; the reference length
is the "closest" one (ties: the shorter). Over the corpus, with the sums of these:

  bleu_n = (prod_{k<=n} (correct_k + 1e-15) / (guess_k + 1e-9)) ** (1/n) * BP,
  BP     = exp(1 - 1/ratio) if ratio < 1 else 1,   ratio = (testlen + 1e-15) / (reflen + 1e-9).

The tiny constants are pycocoevalcap's: they make a corpus with no matching 4-gram score ~0
instead of failing. Values are fractions (0..1), as pycocoevalcap returns them. big_vision stores
`Bleu().compute_score`'s whole list under `bleu-4`; we report its last element as `bleu-4` and the
others as `bleu-1..3`.

Tokenisation: with `tokenize=True` (default) hypotheses and references go through `ptb_tokenize`,
the pure-Python stand-in for pycocoevalcap's Java PTBTokenizer (lower-cases, splits PTB-style,
drops punctuation; see ptb_tokenizer.py); with `tokenize=False` text is split on whitespace as is.

Sufficient statistics: `testlen`, `reflen`, `guess/<n>`, `correct/<n>` (n = 1..4) and `num`; all
are sums over examples, so stats of shards merge exactly into the corpus score.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence

from paligemma_jax.evaluation.checks import check_answer_lists, check_pairs, check_strings
from paligemma_jax.evaluation.ptb_tokenizer import ptb_tokenize
from paligemma_jax.evaluation.stats import Stats

MAX_N = 4
_TINY = 1e-15  # pycocoevalcap's constants, kept for equal numbers
_SMALL = 1e-9


def _ngram_counts(words: Sequence[str]) -> collections.Counter:
  return collections.Counter(tuple(words[i:i + n]) for n in range(1, MAX_N + 1)
                             for i in range(len(words) - n + 1))


def _example_stats(hypothesis: str, references: Sequence[str]) -> Stats:
  hyp = hypothesis.split()
  refs = [ref.split() for ref in references]
  max_ref_counts: collections.Counter = collections.Counter()
  for ref in refs:
    max_ref_counts |= _ngram_counts(ref)  # `|` keeps the maximum count of each n-gram
  correct = [0] * MAX_N
  for ngram, count in _ngram_counts(hyp).items():
    correct[len(ngram) - 1] += min(count, max_ref_counts[ngram])
  reflen = min((abs(len(ref) - len(hyp)), len(ref)) for ref in refs)[1]
  stats = {"testlen": float(len(hyp)), "reflen": float(reflen), "num": 1.0}
  for n in range(1, MAX_N + 1):
    stats[f"guess/{n}"] = float(max(0, len(hyp) - n + 1))
    stats[f"correct/{n}"] = float(correct[n - 1])
  return stats


def bleu_stats(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
               tokenize: bool = True) -> Stats:
  """Sums of lengths and n-gram counts over examples (one hypothesis, ≥ 1 references each)."""
  check_pairs("bleu", predictions, references)
  check_strings("bleu", "predictions", predictions)
  ref_lists = check_answer_lists("bleu", references)
  prep = ptb_tokenize if tokenize else (lambda s: s)
  total: Stats = {}
  for pred, refs in zip(predictions, ref_lists):
    for key, value in _example_stats(prep(pred), [prep(r) for r in refs]).items():
      total[key] = total.get(key, 0.0) + value
  return total


def bleu_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """`bleu-1` .. `bleu-4` (fractions) and `num`; nothing but `num` when there are no examples."""
  num = stats.get("num", 0.0)
  if num <= 0:
    return {"num": num}
  ratio = (stats["testlen"] + _TINY) / (stats["reflen"] + _SMALL)
  brevity = math.exp(1.0 - 1.0 / ratio) if ratio < 1.0 else 1.0
  out, product = {}, 1.0
  for n in range(1, MAX_N + 1):
    product *= (stats[f"correct/{n}"] + _TINY) / (stats[f"guess/{n}"] + _SMALL)
    out[f"bleu-{n}"] = product ** (1.0 / n) * brevity
  return {**out, "num": num}


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
         tokenize: bool = True) -> dict[str, float]:
  """Corpus BLEU-1..4 (pycocoevalcap's `Bleu(4)`, "closest" reference length); see above."""
  return bleu_from_stats(bleu_stats(predictions, references, tokenize=tokenize))
