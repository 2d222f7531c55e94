"""Referring segmentation mIoU (RefCOCO), as big_vision's `transfers/segmentation.py`.

evaluators.md §11. Per referring expression, with the GT mask `gt` [H, W] at full resolution:

  IoU = I / (sum(gt) + sum(pred) - I),   I = sum(gt & pred)

where `pred` is the predicted mask pasted into its pixel box on an all-False [H, W] image, so the
GT area counts over the whole image and the prediction exists only inside its box. An invalid
prediction scores 0 and counts in `invalid`. `miou` is the **mean of per-example IoUs** (not
cumulative intersection over cumulative union), over all examples, invalid ones included.

Two entry points:
- `mask_miou*` take masks that are already decoded and pasted (e.g. `DetectedObject.mask` of
  `inference.parse_segmentations`, or `inference.parsers.paste_mask`), None for an invalid one.
- `refcoco_segmentation*` take the generated texts and do big_vision's whole pipeline: the first
  4 + 16 tokens (`box_accuracy.parse_leading_object(with_seg=True)`), box accuracy on them, pixel
  box `int(y1 * H)`, ... (truncation; a box that collapses is invalid), the 16 codes through the
  VQ-VAE decoder (`decode_fn`, e.g. `inference.mask_decoder(params)`), PIL bilinear resize of the
  64 x 64 logits into the box and `> 0` (`paste_mask`).

Stats: `miou` (sum of IoUs), `invalid`, `num`, and for `refcoco_segmentation` also
`boxacc/<t>`; all additive.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from paligemma_jax.evaluation.box_accuracy import (THRESHOLDS, box_accuracy_from_stats,
                                                  box_accuracy_stats, parse_leading_object)
from paligemma_jax.evaluation.checks import check_pairs, check_strings
from paligemma_jax.evaluation.stats import Stats, mean, merge
from paligemma_jax.inference.parsers import DecodeFn, box_to_pixels, paste_mask
from paligemma_jax.models.vqvae import MASK_SIZE


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
  """IoU of two [H, W] masks (anything > 0 is foreground); the GT must not be empty."""
  pred, gt = np.asarray(pred) > 0, np.asarray(gt) > 0
  inter = int(np.sum(pred & gt))
  union = int(np.sum(gt)) + int(np.sum(pred)) - inter
  return inter / union


def mask_miou_stats(pred_masks: Sequence[np.ndarray | None],
                    gt_masks: Sequence[np.ndarray]) -> Stats:
  """Sum of per-example IoUs, invalid count and example count.

  Args:
    pred_masks: per example an image-sized [H, W] mask (bool, or > 0 is foreground), or None
      for an invalid prediction (IoU 0, counted in `invalid`).
    gt_masks: per example the GT mask [H, W] of the same size, not empty.
  """
  check_pairs("mask_miou", pred_masks, gt_masks)
  stats: Stats = {"miou": 0.0, "invalid": 0.0, "num": float(len(pred_masks))}
  for i, (pred, gt) in enumerate(zip(pred_masks, gt_masks)):
    gt = _check_gt_mask("mask_miou", i, gt)
    if pred is None:
      stats["invalid"] += 1.0
      continue
    pred = np.asarray(pred)
    if pred.shape != gt.shape:
      raise ValueError(f"mask_miou: prediction {i} is {pred.shape}, its GT mask {gt.shape}")
    stats["miou"] += mask_iou(pred, gt)
  return stats


def mask_miou_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """`miou` = sum of IoUs / num, plus `invalid` and `num` (counts)."""
  out = mean(stats, "miou", "num")
  if out:
    out.update(invalid=stats.get("invalid", 0.0), num=stats["num"])
  return out


def mask_miou(pred_masks: Sequence[np.ndarray | None],
              gt_masks: Sequence[np.ndarray]) -> dict[str, float]:
  """mIoU of decoded, pasted masks in one process: `{"miou", "invalid", "num"}`."""
  return mask_miou_from_stats(mask_miou_stats(pred_masks, gt_masks))


def refcoco_pred_masks(predictions: Sequence[str], image_hws: Sequence[tuple[int, int]],
                       decode_fn: DecodeFn) -> list[np.ndarray | None]:
  """big_vision's predicted masks: image-sized bool [H, W] per text, None where invalid.

  Invalid: the first tokens are not 4 valid loc + 16 valid seg tokens, or the pixel box
  collapses after truncation. The valid codes are decoded in one `decode_fn` call.
  """
  parsed = [parse_leading_object(t, with_seg=True) for t in predictions]
  boxes = [box_to_pixels(p[0], hw) if p else None for p, hw in zip(parsed, image_hws)]
  keep = [i for i, b in enumerate(boxes) if b is not None and b[2] > b[0] and b[3] > b[1]]
  masks: list[np.ndarray | None] = [None] * len(predictions)
  if not keep:
    return masks
  codes = np.array([parsed[i][1] for i in keep], np.int32)
  logits = np.asarray(decode_fn(codes), np.float32).reshape(len(keep), MASK_SIZE, MASK_SIZE)
  for i, logits_64x64 in zip(keep, logits):
    masks[i] = paste_mask(logits_64x64, boxes[i], image_hws[i])
  return masks


def refcoco_segmentation_stats(predictions: Sequence[str], gt_masks: Sequence[np.ndarray],
                               gt_boxes: Sequence[Sequence[float]], decode_fn: DecodeFn, *,
                               thresholds: Sequence[float] = THRESHOLDS) -> Stats:
  """big_vision's segmentation evaluator on one shard: mIoU and box accuracy stats.

  Args:
    predictions: generated texts (cut at eos), `<loc>` x 4 `<seg>` x 16 first.
    gt_masks: the GT mask [H, W] of each expression, at the original image size.
    gt_boxes: the GT box of each, normalised (y1, x1, y2, x2).
    decode_fn: codes [N, 16] int32 -> mask logits [N, 64, 64(, 1)].
    thresholds: box IoU thresholds of `boxacc/<t>`.
  """
  metric = "refcoco_segmentation"
  check_pairs(metric, predictions, gt_masks, gt_boxes=gt_boxes)
  check_strings(metric, "predictions", predictions)
  gts = [_check_gt_mask(metric, i, m) for i, m in enumerate(gt_masks)]
  boxes = box_accuracy_stats(predictions, gt_boxes, thresholds=thresholds,
                                        with_seg=True)
  masks = refcoco_pred_masks(predictions, [m.shape for m in gts], decode_fn)
  seg = mask_miou_stats(masks, gts)
  del boxes["num"]  # both count the same examples: keep one `num`
  return merge(seg, boxes)


def refcoco_segmentation_from_stats(stats: Mapping[str, float]) -> dict[str, float]:
  """`miou`, `boxacc/<t>`, `invalid`, `num` from (merged) stats."""
  out = mask_miou_from_stats(stats)
  out.update(box_accuracy_from_stats(stats))
  return out


def refcoco_segmentation(predictions: Sequence[str], gt_masks: Sequence[np.ndarray],
                         gt_boxes: Sequence[Sequence[float]], decode_fn: DecodeFn, *,
                         thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
  """RefCOCO segmentation in one process: `{"miou", "boxacc/0.5", "boxacc/0.75", "invalid",
  "num"}`."""
  return refcoco_segmentation_from_stats(refcoco_segmentation_stats(
      predictions, gt_masks, gt_boxes, decode_fn, thresholds=thresholds))


def _check_gt_mask(metric: str, i: int, gt: np.ndarray | None) -> np.ndarray:
  if gt is None:
    raise ValueError(f"{metric}: example {i} has no GT mask")
  gt = np.asarray(gt)
  if gt.ndim == 3 and gt.shape[-1] == 1:  # big_vision's [H, W, 1] TFDS masks
    gt = gt[..., 0]
  if gt.ndim != 2:
    raise ValueError(f"{metric}: GT mask {i} must be [H, W], got shape {gt.shape}")
  gt = gt > 0
  if not gt.any():
    raise ValueError(f"{metric}: GT mask {i} is empty (IoU undefined)")
  return gt
