"""COCO-style detection mAP, computed by pycocotools' `COCOeval` (iouType "bbox").

Input per image: predicted objects `(box, label)` or `(box, label, score)` and GT objects
`(box, label)`, boxes in **pixels** as (ymin, xmin, ymax, xmax) (the project's order; converted
to COCO's [x, y, w, h]). Labels are strings; the categories are the GT labels of the evaluated set
(a predicted label that no GT object has is not evaluated, as COCOeval only scores the GT's
categories). Areas are the box areas w * h, for GT and predictions alike, and iscrowd is 0.

Scores: PaliGemma's text output has no confidence, so a missing score is 1.0. COCOeval ranks
detections by score with a stable sort, so tied detections keep their order: within an image the
output order; across images the order of `cocoEval.params.imgIds`, which here is a canonical order
of the examples (sorted by content), so the result does not depend on how the set is sharded.
`detections_from_text` turns generated text into objects (`inference.parse_detections`).

Reported (COCOeval.summarize's 12 numbers, fractions 0..1): `map` (AP at IoU .50:.05:.95),
`map_50`, `map_75`, `map_small`, `map_medium`, `map_large`, `mar_1`, `mar_10`, `mar_100`,
`mar_small`, `mar_medium`, `mar_large`; a value COCOeval marks undefined (-1, e.g. no small GT
objects) is left out. Also `num` (images).

Sufficient statistics: mAP ranks detections across the whole set, so it is not a sum over images.
As for CIDEr, the stats are the multiset of examples: one key per distinct image content
(`DETECTION_PREFIX` + JSON of its predictions and GT), valued by how many images have it, plus
`num`; `merge` of shard stats is the multiset union, and `detection_map_from_stats` runs COCOeval
once on the whole set. Images without GT objects are allowed (COCO has them: their detections are
false positives); a set with no GT object at all has no mAP.

Requires `pycocotools` (imported when the metric is computed).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence

from paligemma_jax.evaluation.checks import check_pairs
from paligemma_jax.evaluation.stats import Stats
from paligemma_jax.inference.parsers import box_from_bins, parse_objects

DETECTION_PREFIX = "detection_image:"
SUMMARY_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
                 "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")

PixelBox = tuple[float, float, float, float]  # (ymin, xmin, ymax, xmax)


def detections_from_text(text: str, image_hw: tuple[int, int]) -> list[tuple[PixelBox, str, float]]:
  """Generated detection text -> [(pixel box, label, 1.0)], boxes = bins / 1023 * (H, W).

  Uses `inference.parse_objects` (malformed objects are skipped). Boxes are not truncated to
  whole pixels: COCO boxes are floats.
  """
  h, w = image_hw
  out = []
  for obj in parse_objects(text):
    y1, x1, y2, x2 = box_from_bins(obj.loc)
    out.append(((y1 * h, x1 * w, y2 * h, x2 * w), obj.label, 1.0))
  return out


def detection_map_stats(predictions: Sequence[Sequence], references: Sequence[Sequence]) -> Stats:
  """The multiset of examples (module docstring).

  Args:
    predictions: per image, a list of `(box, label)` or `(box, label, score)`.
    references: per image, a list of GT `(box, label)` (may be empty).
  """
  check_pairs("detection_map", predictions, references)
  stats: Stats = {"num": float(len(predictions))}
  for i, (preds, gts) in enumerate(zip(predictions, references)):
    example = [
        [_object(i, o, "prediction", scored=True) for o in _objects(i, preds, "predictions")],
        [_object(i, o, "reference", scored=False) for o in _objects(i, gts, "references")]]
    key = DETECTION_PREFIX + json.dumps(example, ensure_ascii=False)
    stats[key] = stats.get(key, 0.0) + 1.0
  return stats


def detection_map_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """COCOeval's summary over the (merged) stats' images (module docstring)."""
  examples = []
  for key in sorted(k for k in stats if k.startswith(DETECTION_PREFIX)):
    count = int(round(stats[key]))
    examples.extend([json.loads(key[len(DETECTION_PREFIX):])] * count)
  num = float(len(examples))
  if num != stats.get("num", 0.0):
    raise ValueError(f"detection_map: stats hold {num:g} images but 'num' is "
                     f"{stats.get('num', 0.0):g}")
  labels = sorted({label for _, gts in examples for _, label in gts})
  if not labels:
    return {"num": num} if num else {}
  summary = _coco_summary(examples, labels)
  out = {name: float(v) for name, v in zip(SUMMARY_NAMES, summary) if v >= 0}
  out["num"] = num
  return out


def detection_map(predictions: Sequence[Sequence], references: Sequence[Sequence]
                  ) -> dict[str, float]:
  """COCO mAP of one process: `{"map", "map_50", "map_75", ..., "num"}`."""
  return detection_map_from_stats(detection_map_stats(predictions, references))


def _coco_summary(examples: list, labels: list[str]) -> list[float]:
  """Runs COCOeval (bbox) on [(predictions, gts)] and returns its 12 summary numbers."""
  try:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
  except ImportError:
    raise ImportError("detection_map needs pycocotools: pip install pycocotools") from None
  category = {label: k + 1 for k, label in enumerate(labels)}
  images = [{"id": i + 1} for i in range(len(examples))]
  categories = [{"id": k, "name": label} for label, k in category.items()]
  gt_anns, dt_anns = [], []
  for image_id, (preds, gts) in enumerate(examples, start=1):
    for box, label in gts:
      gt_anns.append(_annotation(len(gt_anns) + 1, image_id, box, category[label]))
    for box, label, score in preds:
      if label in category:
        dt_anns.append(_annotation(len(dt_anns) + 1, image_id, box, category[label], score))
  coco_gt, coco_dt = COCO(), COCO()
  with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
    coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt_anns}
    coco_gt.createIndex()
    coco_dt.dataset = {"images": images, "categories": categories, "annotations": dt_anns}
    coco_dt.createIndex()
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return [float(v) for v in evaluator.stats]


def _annotation(ann_id: int, image_id: int, box: PixelBox, category_id: int,
                score: float | None = None) -> dict:
  y1, x1, y2, x2 = box
  ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
  if score is not None:
    ann["score"] = score
  return ann


def _objects(i: int, objects: Sequence, name: str) -> Sequence:
  if objects is None or isinstance(objects, (str, bytes)) or not isinstance(objects, Sequence):
    raise ValueError(f"detection_map: {name}[{i}] must be a list of objects, got "
                     f"{type(objects).__name__}")
  return objects


def _object(i: int, obj: Sequence, name: str, *, scored: bool) -> list:
  """[box, label] (reference) or [box, label, score] (prediction), checked."""
  sizes = (2, 3) if scored else (2,)
  if isinstance(obj, (str, bytes)) or not isinstance(obj, Sequence) or len(obj) not in sizes:
    raise ValueError(f"detection_map: a {name} of image {i} must be (box, label"
                     f"{'[, score]' if scored else ''}), got {obj!r}")
  box, label = obj[0], obj[1]
  try:
    box = [float(v) for v in box]
  except (TypeError, ValueError):
    box = []
  if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] < box[0] or box[3] < box[1]:
    raise ValueError(f"detection_map: a {name} box of image {i} must be 4 finite pixel edges "
                     f"(ymin, xmin, ymax, xmax) with max >= min, got {obj[0]!r}")
  if not isinstance(label, str):
    raise ValueError(f"detection_map: a {name} label of image {i} is not a string: {label!r}")
  if not scored:
    return [box, label]
  score = float(obj[2]) if len(obj) == 3 else 1.0
  if not math.isfinite(score):
    raise ValueError(f"detection_map: a {name} score of image {i} is not finite: {obj[2]!r}")
  return [box, label, score]
