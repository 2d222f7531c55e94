"""Sufficient statistics: the one convention every metric in `paligemma_jax.evaluation` follows.

A metric is three functions over plain Python lists:

  `<metric>_stats(predictions, references, ...) -> Stats`
      Sums and counts over the given examples, nothing else (no means). Every key is additive:
      the stats of a split are the key-wise sum of the stats of any partition of it.
  `<metric>_from_stats(stats: Stats) -> dict[str, float]`
      The reported metrics, computed from (possibly merged) stats. A mean whose count is 0 is left
      out rather than reported as 0 or NaN.
  `<metric>(predictions, references, ...) -> dict[str, float]`
      `<metric>_from_stats(<metric>_stats(...))`, for one process.

An evaluator running on several processes calls `<metric>_stats` on its own examples, sums the
stats across processes (`merge` on host, or `jax` collectives on a vector of the sorted keys) and
calls `<metric>_from_stats` once: a mean of per-process means is never taken.

Key names: a sum is named after the metric it feeds (`"acc"`, `"anls"`), its count `"num"`;
sub-groups add a suffix (`"acc/yesno"`, `"num/yesno"`). Counts are floats, like every value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

Stats = dict[str, float]


def merge(*parts: Mapping[str, float]) -> Stats:
  """Key-wise sum of stats; a key missing from a part counts as 0."""
  total: Stats = {}
  for part in parts:
    for key, value in part.items():
      total[key] = total.get(key, 0.0) + float(value)
  return total


def merge_all(parts: Iterable[Mapping[str, float]]) -> Stats:
  """`merge` over an iterable (e.g. the stats gathered from every process)."""
  return merge(*parts)


def mean(stats: Mapping[str, float], total_key: str, count_key: str) -> dict[str, float]:
  """`{total_key: stats[total_key] / stats[count_key]}`, or `{}` when the count is 0 or absent."""
  count = stats.get(count_key, 0.0)
  if count <= 0:
    return {}
  return {total_key: stats.get(total_key, 0.0) / count}


class StatsMetric(Protocol):
  """What an evaluator needs from a metric: stats per shard, and the metric from summed stats."""

  def stats(self, predictions: list, references: list, /, **kwargs) -> Stats: ...

  def from_stats(self, stats: Mapping[str, float], /) -> dict[str, float]: ...
