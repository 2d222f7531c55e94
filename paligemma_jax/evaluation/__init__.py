"""Metrics and evaluators. Metrics are pure functions over plain Python lists.

Convention (see `stats.py`): every metric `m` comes as three functions,
  `m_stats(predictions, references, ...) -> Stats`   additive sums and counts over some examples;
  `m_from_stats(stats) -> dict[str, float]`          the metrics from (merged) stats;
  `m(predictions, references, ...)`                  both, for one process.
Evaluators call `m_stats` on each process's examples, sum them with `merge` (key-wise; a missing
key counts as 0) and call `m_from_stats` once: never a mean of means. A sum is named after the
metric it feeds and its count is `num` (sub-groups: `acc/yesno` with `num/yesno`); a mean whose
count is 0 is left out. Bad input (lengths differ, an empty list, an example without references)
is a `ValueError` with one line naming the problem.
"""

from paligemma_jax.evaluation.stats import Stats, StatsMetric, mean, merge, merge_all
from paligemma_jax.evaluation.anls import anls, anls_from_stats, anls_score, anls_stats, levenshtein
from paligemma_jax.evaluation.vqa_metrics import (
    rsvqa_accuracy, rsvqa_accuracy_from_stats, rsvqa_accuracy_stats,
    vqa_accuracy, vqa_accuracy_from_stats, vqa_accuracy_stats,
    vqav2_accuracy, vqav2_accuracy_from_stats, vqav2_accuracy_stats, vqav2_example_accuracy)
from paligemma_jax.evaluation.vqav2_normalize import normalize_vqav2_answer
from paligemma_jax.evaluation.qa_metrics import (
    chartqa_accuracy, chartqa_accuracy_from_stats, chartqa_accuracy_stats, chartqa_relaxed_match,
    exact_match, exact_match_from_stats, exact_match_stats,
    pope, pope_from_stats, pope_stats,
    scienceqa_accuracy, scienceqa_accuracy_from_stats, scienceqa_accuracy_stats,
    tallyqa_accuracy, tallyqa_accuracy_from_stats, tallyqa_accuracy_stats)
from paligemma_jax.evaluation.bleu import bleu, bleu_from_stats, bleu_stats
from paligemma_jax.evaluation.ptb_tokenizer import ptb_tokenize
from paligemma_jax.evaluation.cider import cider, cider_from_stats, cider_scores, cider_stats
from paligemma_jax.evaluation.box_accuracy import (
    box_accuracy, box_accuracy_from_stats, box_accuracy_stats, box_iou, parse_leading_object)
from paligemma_jax.evaluation.segmentation_miou import (
    mask_iou, mask_miou, mask_miou_from_stats, mask_miou_stats, refcoco_pred_masks,
    refcoco_segmentation, refcoco_segmentation_from_stats, refcoco_segmentation_stats)
from paligemma_jax.evaluation.detection_map import (
    detection_map, detection_map_from_stats, detection_map_stats, detections_from_text)
from paligemma_jax.evaluation.perplexity import perplexity, perplexity_from_stats, perplexity_stats
# Evaluators: the table, the config boundary, predict functions, the run loop, saved predictions.
from paligemma_jax.evaluation.evaluators import EVALUATORS, Evaluator, get_evaluator
from paligemma_jax.evaluation.eval_config import (Decoding, EvalConfig, EvalSpec, parse_eval_config,
                                                  parse_evals)
from paligemma_jax.evaluation.predict import PredictFn, ScoreFn, make_predict_fn
from paligemma_jax.evaluation.run_evals import EvalResult, evaluate, periodic_evaluator, run_eval
from paligemma_jax.evaluation.saved_predictions import score_predictions
