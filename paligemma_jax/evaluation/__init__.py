"""Metrics and evaluators. Metrics are pure functions over plain Python lists.

Convention (see `stats.py`): every metric `m` comes as `m_stats(predictions, references, ...) ->
Stats` (additive sums and counts), `m_from_stats(stats) -> dict[str, float]`, and `m(...)` = both in
one process. Evaluators sum `m_stats` over processes with `merge` and call `m_from_stats` once:
never a mean of means. Bad input (lengths differ, empty list, an example without references) is a
`ValueError` with one line naming the problem.
"""

from paligemma_jax.evaluation.stats import Stats, StatsMetric, mean, merge, merge_all
