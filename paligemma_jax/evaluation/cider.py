"""CIDEr-D, equal to pycocoevalcap's `Cider` (sigma 6, clipping, x10) on the same tokens.

evaluators.md §5. For n = 1..4, with M images in the evaluated set and df(g) the number of images
whose references contain the n-gram g:

  w(g)  = tf(g) * (ln M - ln max(1, df(g)))                      (tf-idf vector of one sentence)
  sim_n = sum_g min(w_hyp(g), w_ref(g)) * w_ref(g) / (|w_hyp| |w_ref|)   (division skipped if a
          norm is 0) * exp(-(l_hyp - l_ref)^2 / (2 * 6^2))
  score = 10 * mean_n(sum_refs sim_n) / #refs                     (per image)
  CIDEr = mean over images

where l is pycocoevalcap's length quirk: the number of *bigrams* of a sentence (words - 1).
Values are raw (big_vision logs 1.419; papers print 141.9). A one-image set has ln M = 0, so
every weight and the score are 0.

Tokenisation: with `tokenize=True` (default) hypotheses and references go through `ptb_tokenize`
(the PTBTokenizer stand-in of ptb_tokenizer.py); with `tokenize=False` they are used as given,
split on whitespace, as `CiderScorer` does on already tokenised text.

Sufficient statistics. CIDEr is not a sum over examples: the idf comes from the whole set (df and
M), so per-process partial scores cannot be added. The stats are therefore the *multiset of
tokenised examples*: one key per distinct (hypothesis, sorted references) pair, serialised as
JSON after `EXAMPLE_PREFIX`, whose value is how many images have exactly that content, plus
`"num"`. Key-wise sums of such stats are multiset unions, so `merge` over processes gives the
stats of the whole set, in any order or partition; `cider_from_stats` then computes df, M and
every score once. The keys differ between processes, so stats are gathered and merged on the
host (as big_vision gathers captions to host 0), not reduced by a collective over fixed keys.
Each example is one image; a split with one row per (image, caption) must be grouped first.
"""

from __future__ import annotations

import collections
import json
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from paligemma_jax.evaluation.checks import check_answer_lists, check_pairs, check_strings
from paligemma_jax.evaluation.ptb_tokenizer import ptb_tokenize
from paligemma_jax.evaluation.stats import Stats

MAX_N = 4  # 1- to 4-grams
SIGMA = 6.0  # the length penalty's standard deviation
EXAMPLE_PREFIX = "cider_example:"

NgramCounts = collections.Counter  # Counter[tuple[str, ...]]


def cider_stats(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
                tokenize: bool = True) -> Stats:
  """Additive stats of one shard: the multiset of its tokenised examples (module docstring).

  Args:
    predictions: one caption per image.
    references: each image's reference captions (at least one; a bare string is one).
    tokenize: apply `ptb_tokenize` to both sides; False if they are tokenised already.
  """
  check_pairs("cider", predictions, references)
  check_strings("cider", "predictions", predictions)
  refs = check_answer_lists("cider", references)
  prep = ptb_tokenize if tokenize else (lambda s: " ".join(s.split()))
  stats: Stats = {"num": float(len(predictions))}
  for hyp, image_refs in zip(predictions, refs):
    key = EXAMPLE_PREFIX + json.dumps([prep(hyp), sorted(prep(r) for r in image_refs)],
                                      ensure_ascii=False)
    stats[key] = stats.get(key, 0.0) + 1.0
  return stats


def cider_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """`{"cider": corpus CIDEr-D, "num": images}` from (merged) `cider_stats`."""
  examples, counts = [], []
  for key, count in stats.items():
    if key.startswith(EXAMPLE_PREFIX) and count > 0:
      hyp, refs = json.loads(key[len(EXAMPLE_PREFIX):])
      examples.append((hyp, refs))
      counts.append(count)
  num = sum(counts)
  if num != stats.get("num", 0.0):
    raise ValueError(f"cider: stats hold {num:g} examples but 'num' is {stats.get('num', 0.0):g}")
  if num == 0:
    return {}
  scores = cider_scores([h for h, _ in examples], [r for _, r in examples], weights=counts)
  return {"cider": sum(c * s for c, s in zip(counts, scores)) / num, "num": num}


def cider(predictions: Sequence[str], references: Sequence[Sequence[str]], *,
          tokenize: bool = True) -> dict[str, float]:
  """Corpus CIDEr-D of one process: `{"cider", "num"}`."""
  return cider_from_stats(cider_stats(predictions, references, tokenize=tokenize))


def cider_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                 weights: Sequence[float] | None = None) -> list[float]:
  """Per-image CIDEr-D of tokenised text (whitespace-separated tokens), as `CiderScorer`.

  Args:
    hypotheses: one tokenised caption per distinct image.
    references: each image's tokenised references (non-empty).
    weights: how many images each entry stands for (default 1 each): they count in df and M.
  """
  weights = [1.0] * len(hypotheses) if weights is None else list(weights)
  ref_counts = [[ngram_counts(r) for r in refs] for refs in references]
  df: dict[tuple[str, ...], float] = collections.defaultdict(float)
  for refs, weight in zip(ref_counts, weights):
    for ngram in set().union(*refs):
      df[ngram] += weight
  log_m = math.log(sum(weights))
  scores = []
  for hyp, refs in zip(hypotheses, ref_counts):
    hyp_vec = _tfidf(ngram_counts(hyp), df, log_m)
    sims = [0.0] * MAX_N
    for ref in refs:
      ref_vec = _tfidf(ref, df, log_m)
      for n, sim in enumerate(_similarity(hyp_vec, ref_vec)):
        sims[n] += sim
    scores.append(10.0 * (sum(sims) / MAX_N) / len(refs))
  return scores


def ngram_counts(sentence: str) -> NgramCounts:
  """Counts of the 1..4-grams of whitespace-separated tokens."""
  words = sentence.split()
  return collections.Counter(tuple(words[i:i + n]) for n in range(1, MAX_N + 1)
                             for i in range(len(words) - n + 1))


class _Vector(NamedTuple):
  """A sentence's tf-idf weights split by n-gram length, their norms, and its bigram count."""
  weights: list[dict]
  norms: list[float]
  length: int


def _tfidf(counts: NgramCounts, df: Mapping, log_m: float) -> _Vector:
  weights = [{} for _ in range(MAX_N)]
  squares = [0.0] * MAX_N
  for ngram, tf in counts.items():
    w = float(tf) * (log_m - math.log(max(1.0, df.get(ngram, 0.0))))
    weights[len(ngram) - 1][ngram] = w
    squares[len(ngram) - 1] += w * w
  # pycocoevalcap's length quirk: it counts bigrams (words - 1), not words.
  length = sum(tf for ngram, tf in counts.items() if len(ngram) == 2)
  return _Vector(weights, [math.sqrt(s) for s in squares], length)


def _similarity(hyp: _Vector, ref: _Vector) -> list[float]:
  """Clipped cosine similarity per n, times the Gaussian length penalty (CIDEr-D)."""
  penalty = math.exp(-float(hyp.length - ref.length) ** 2 / (2 * SIGMA ** 2))
  sims = []
  for n in range(MAX_N):
    ref_w = ref.weights[n]
    value = sum(min(w, ref_w.get(g, 0.0)) * ref_w.get(g, 0.0) for g, w in hyp.weights[n].items())
    if hyp.norms[n] != 0 and ref.norms[n] != 0:
      value /= hyp.norms[n] * ref.norms[n]
    sims.append(value * penalty)
  return sims
