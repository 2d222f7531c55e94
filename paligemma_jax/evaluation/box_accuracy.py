"""RefCOCO box accuracy: [IoU(predicted box, GT box) >= threshold], averaged over expressions.

evaluators.md §11 (big_vision `transfers/segmentation.py`):

- The prediction is read from the *start* of the generated text, as big_vision reads the first
  generated ids: `<locNNNN>` x 4 (y1, x1, y2, x2), and for segmentation 16 `<segNNN>` right after.
  It is valid iff all tokens are there, loc <= 1023, seg <= 127, y2 > y1 and x2 > x1 (in bins).
  Leading whitespace is ignored (a string cannot hold a leading token that is not text); text
  after the tokens (a label) is ignored. An invalid prediction becomes the all-zero box: IoU 0.
  The lenient `inference.parsers.parse_objects` is not used on purpose: it skips text before an
  object and whitespace between tokens, where big_vision counts the prediction as invalid.
- Predicted box = bins / 1023. IoU in normalised coordinates, areas max(dx, 0) * max(dy, 0);
  a zero union (two empty boxes) gives IoU 0 (big_vision would divide 0 by 0).
- GT boxes are normalised (y1, x1, y2, x2), as the RefCOCO data and the reference give them.

Stats: `boxacc/<t>` (sum of hits at threshold t) and `num` (expressions); all additive.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from paligemma_jax.data.tokenizer import LOC_MAX, NUM_SEG_TOKENS
from paligemma_jax.evaluation.checks import check_pairs, check_strings
from paligemma_jax.evaluation.stats import Stats, mean
from paligemma_jax.inference.parsers import box_from_bins
from paligemma_jax.models.vqvae import NUM_TOKENS

THRESHOLDS = (0.5, 0.75)  # big_vision's det_ious
Box = tuple[float, float, float, float]  # (y1, x1, y2, x2), normalised

_LEADING_RE = re.compile(r"((?:<loc[0-9]{4}>){4})((?:<seg[0-9]{3}>){%d})?" % NUM_TOKENS)
_INDEX_RE = re.compile(r"[0-9]+")


def parse_leading_object(text: str, *, with_seg: bool = False
                         ) -> tuple[tuple[int, ...], tuple[int, ...] | None] | None:
  """(loc bins, seg codes or None) at the start of `text`, or None if invalid (module docstring).

  Args:
    text: the generated text (cut at eos).
    with_seg: require the 16 seg codes too (the segmentation evaluator's validity rule).
  """
  match = _LEADING_RE.match(text.lstrip())
  if match is None or (with_seg and match[2] is None):
    return None
  loc = tuple(int(i) for i in _INDEX_RE.findall(match[1]))
  seg = tuple(int(i) for i in _INDEX_RE.findall(match[2])) if with_seg else None
  if max(loc) > LOC_MAX or (seg and max(seg) >= NUM_SEG_TOKENS):
    return None
  if loc[2] <= loc[0] or loc[3] <= loc[1]:
    return None
  return loc, seg


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
  """IoU of two (y1, x1, y2, x2) boxes; areas clamp negative extents to 0; 0 if the union is 0."""
  ay1, ax1, ay2, ax2 = box_a
  by1, bx1, by2, bx2 = box_b
  inter = _area(max(ay1, by1), max(ax1, bx1), min(ay2, by2), min(ax2, bx2))
  union = _area(*box_a) + _area(*box_b) - inter
  return inter / union if union > 0 else 0.0


def predicted_box(text: str, *, with_seg: bool = False) -> Box:
  """The normalised box of a prediction; (0, 0, 0, 0) if invalid (as big_vision)."""
  parsed = parse_leading_object(text, with_seg=with_seg)
  return box_from_bins(parsed[0]) if parsed else (0.0, 0.0, 0.0, 0.0)


def box_accuracy_stats(predictions: Sequence[str], references: Sequence[Sequence[float]], *,
                       thresholds: Sequence[float] = THRESHOLDS, with_seg: bool = False) -> Stats:
  """Hits per IoU threshold and the example count.

  Args:
    predictions: generated texts, one per referring expression.
    references: the GT box of each, normalised (y1, x1, y2, x2).
    thresholds: IoU thresholds (a hit is IoU >= t).
    with_seg: a prediction is valid only with its 16 seg codes (referring segmentation).
  """
  check_pairs("box_accuracy", predictions, references)
  check_strings("box_accuracy", "predictions", predictions)
  gt_boxes = check_boxes("box_accuracy", references)
  stats: Stats = {f"boxacc/{t}": 0.0 for t in thresholds}
  stats["num"] = float(len(predictions))
  for text, gt in zip(predictions, gt_boxes):
    iou = box_iou(predicted_box(text, with_seg=with_seg), gt)
    for t in thresholds:
      stats[f"boxacc/{t}"] += float(iou >= t)
  return stats


def box_accuracy_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """`boxacc/<t>` = hits / num for every threshold in the stats, and `num`."""
  out: dict[str, float] = {}
  for key in sorted(k for k in stats if k.startswith("boxacc/")):
    out.update(mean(stats, key, "num"))
  if stats.get("num", 0.0) > 0:
    out["num"] = stats["num"]
  return out


def box_accuracy(predictions: Sequence[str], references: Sequence[Sequence[float]], *,
                 thresholds: Sequence[float] = THRESHOLDS, with_seg: bool = False
                 ) -> dict[str, float]:
  """RefCOCO box accuracy of one process: `{"boxacc/0.5", "boxacc/0.75", "num"}`."""
  return box_accuracy_from_stats(box_accuracy_stats(predictions, references,
                                                    thresholds=thresholds, with_seg=with_seg))


def check_boxes(metric: str, references: Sequence) -> list[Box]:
  """Each reference as 4 finite floats; a missing one is a one-line `ValueError`."""
  boxes = []
  for i, box in enumerate(references):
    if box is None:
      raise ValueError(f"{metric}: example {i} has no reference box")
    try:
      values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
      raise ValueError(f"{metric}: reference box {i} is not 4 numbers: {box!r}") from None
    if not values:
      raise ValueError(f"{metric}: example {i} has no reference box")
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
      raise ValueError(f"{metric}: reference box {i} must be 4 finite numbers (y1, x1, y2, x2), "
                       f"got {box!r}")
    boxes.append(values)
  return boxes


def _area(y1: float, x1: float, y2: float, x2: float) -> float:
  return max(x2 - x1, 0.0) * max(y2 - y1, 0.0)
