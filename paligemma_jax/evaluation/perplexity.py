"""Perplexity from summed token log-likelihoods and token counts (natural log, nats).

evaluators.md §10 (big_vision `perplexity.py` over `mean.py`). Per example, from the summed
log-likelihood `ll` of its supervised tokens (e.g. `inference.score(...).total`) and their count
`n` (`Scores.count`, the sum of `mask_loss`):

  sum = -ll                        (the example's NLL)
  avg = -ll / max(n, 2e-38)        (its per-token NLL; 0 for an example with no token)

Reported:
- `sum`, `avg`: the means over examples of these, exactly big_vision's `pplx/sum` and `pplx/avg`.
  They are NOT exponentiated: despite the evaluator's name, `avg` is a mean per-token NLL.
- `token_nll` = sum of NLLs / sum of tokens (every token weighs the same, whatever its example),
  and `perplexity` = exp(token_nll), the usual corpus perplexity. big_vision reports neither.
- `num` (examples) and `tokens`.

Stats: `sum`, `avg` (sums over examples), `tokens`, `num`; all additive. A log-likelihood above 0
by at most `POSITIVE_TOLERANCE` (float32 rounding of a near-certain token) is accepted as is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from paligemma_jax.evaluation.stats import Stats, mean

MIN_COUNT = 2e-38  # big_vision's clip of the per-example token count
POSITIVE_TOLERANCE = 1e-3


def perplexity_stats(log_likelihoods: Sequence[float], token_counts: Sequence[float]) -> Stats:
  """Sums over examples of the NLL, the per-token NLL and the token count.

  Args:
    log_likelihoods: per example, the summed log-likelihood (<= 0) of its scored tokens.
    token_counts: per example, how many tokens were scored (>= 0; 0 needs a log-likelihood 0).
  """
  if isinstance(log_likelihoods, (str, bytes)) or isinstance(token_counts, (str, bytes)):
    raise ValueError("perplexity: log-likelihoods and token counts must be lists of numbers")
  if len(log_likelihoods) != len(token_counts):
    raise ValueError(f"perplexity: {len(log_likelihoods)} log-likelihoods but "
                     f"{len(token_counts)} token counts")
  if len(log_likelihoods) == 0:
    raise ValueError("perplexity: no examples (empty list)")
  stats: Stats = {"sum": 0.0, "avg": 0.0, "tokens": 0.0, "num": float(len(log_likelihoods))}
  for i, (ll, count) in enumerate(zip(log_likelihoods, token_counts)):
    ll, count = _number(i, ll, "log-likelihood"), _number(i, count, "token count")
    if ll > POSITIVE_TOLERANCE:
      raise ValueError(f"perplexity: log-likelihood {i} is {ll} > 0 (not a log-probability)")
    if count < 0 or (count == 0 and ll != 0):
      raise ValueError(f"perplexity: example {i} has {count:g} tokens for log-likelihood {ll}")
    stats["sum"] -= ll
    stats["avg"] -= ll / max(count, MIN_COUNT)
    stats["tokens"] += count
  return stats


def perplexity_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """`sum`, `avg` (big_vision), `token_nll`, `perplexity`, `num`, `tokens` (module docstring)."""
  out = {**mean(stats, "sum", "num"), **mean(stats, "avg", "num")}
  if not out:
    return {}
  token_mean = mean(stats, "sum", "tokens")
  if token_mean:
    out["token_nll"] = token_mean["sum"]
    out["perplexity"] = math.exp(min(token_mean["sum"], 709.0))  # inf-free; e^709 ~ 8e307
  out.update(num=stats["num"], tokens=stats.get("tokens", 0.0))
  return out


def perplexity(log_likelihoods: Sequence[float], token_counts: Sequence[float]) -> dict[str, float]:
  """Perplexity metrics of one process (module docstring)."""
  return perplexity_from_stats(perplexity_stats(log_likelihoods, token_counts))


def _number(i: int, value: float, name: str) -> float:
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise ValueError(f"perplexity: {name} {i} is not a number: {value!r}") from None
  if not math.isfinite(value):
    raise ValueError(f"perplexity: {name} {i} is not finite: {value}")
  return value
