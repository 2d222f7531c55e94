"""The evaluator table: name -> (metric stats over prediction rows, metric from stats, options).

An evaluator sees **prediction rows**, the same dicts it writes to `predictions.jsonl` and that
`eval.py --predictions` reads back:

    {"id": ..., "prompt": "answer en ...", "prediction": "2", "references": ["two", ...],
     <the row's fields: "answer_type", "issimple", "question_type", "box_yxyx", ...>}

(perplexity rows hold "log_likelihood" and "num_tokens" instead of "prediction"). So a split
evaluated live and a saved predictions file are scored by the same code. Each process calls
`evaluator.stats(rows, **options)` on its own rows; the stats are gathered and merged
(`stats.merge_all`, a key-wise sum: plain sums for most metrics, multisets for CIDEr and mAP) and
`evaluator.from_stats` runs once (evaluation/__init__.py's convention).

`EVALUATORS` is the one table from config names to evaluators; `get_evaluator(name)` fails with
one line listing the valid names. Options (e.g. `to_lower`) are per evaluator; their defaults
are the big_vision configs' (ChartQA and RSVQA lower-case, VQA does not).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from paligemma_jax.evaluation.anls import anls_from_stats, anls_stats
from paligemma_jax.evaluation.bleu import bleu_from_stats, bleu_stats
from paligemma_jax.evaluation.box_accuracy import box_accuracy_from_stats, box_accuracy_stats
from paligemma_jax.evaluation.cider import cider_from_stats, cider_stats
from paligemma_jax.evaluation.detection_map import (detection_map_from_stats,
                                                    detection_map_stats, detections_from_text)
from paligemma_jax.evaluation.perplexity import perplexity_from_stats, perplexity_stats
from paligemma_jax.evaluation.qa_metrics import (
    chartqa_accuracy_from_stats, chartqa_accuracy_stats, exact_match_from_stats,
    exact_match_stats, pope_from_stats, pope_stats, scienceqa_accuracy_from_stats,
    scienceqa_accuracy_stats, tallyqa_accuracy_from_stats, tallyqa_accuracy_stats)
from paligemma_jax.evaluation.segmentation_miou import (refcoco_segmentation_from_stats,
                                                        refcoco_segmentation_stats)
from paligemma_jax.evaluation.stats import Stats
from paligemma_jax.evaluation.vqa_metrics import (rsvqa_accuracy_from_stats, rsvqa_accuracy_stats,
                                                  vqa_accuracy_from_stats, vqa_accuracy_stats,
                                                  vqav2_accuracy_from_stats, vqav2_accuracy_stats)

PredictionRow = Mapping[str, Any]
GENERATE, SCORE = "generate", "score"  # how an evaluator's predictions are made


@dataclasses.dataclass(frozen=True)
class Evaluator:
  """How one evaluator scores prediction rows.

  Attributes:
    stats: (rows, **options) -> additive stats of those rows.
    from_stats: merged stats -> the reported metrics.
    options: the option names with their defaults (the only valid options).
    mode: GENERATE (rows carry "prediction") or SCORE (rows carry "log_likelihood" and
      "num_tokens", from the first reference scored as the suffix).
    needs_references: every row must have a non-empty "references" list.
    field_options: options whose value names a row field every row must have.
    needs_image_hw: rows must carry "image_hw" (the first image's [H, W]).
    multiset: the stats are a multiset keyed by content (CIDEr, mAP): merge on a host.
  """

  stats: Callable[..., Stats]
  from_stats: Callable[[Mapping[str, float]], dict[str, float]]
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  mode: str = GENERATE
  needs_references: bool = True
  field_options: tuple[str, ...] = ()
  needs_image_hw: bool = False
  multiset: bool = False

  def check_options(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults updated by `options`; one-line errors for unknown names or wrong types."""
    out = dict(self.options)
    for key, value in options.items():
      if key not in self.options:
        valid = ", ".join(self.options) or "none"
        raise ValueError(f"unknown option {key!r} for evaluator {name!r}; valid options: {valid}")
      want = type(self.options[key])
      if type(value) is not want:
        raise ValueError(f"evaluator {name!r} option {key!r} must be {want.__name__}, got "
                         f"{value!r}")
      out[key] = value
    return out

  def required_fields(self, options: Mapping[str, Any]) -> list[str]:
    """The fields every prediction row must have (besides "id" and "prompt")."""
    fields = ["prediction"] if self.mode == GENERATE else ["log_likelihood", "num_tokens"]
    fields += ["references"] if self.needs_references else []
    fields += [options[o] for o in self.field_options]
    return fields + (["image_hw"] if self.needs_image_hw else [])

  def check_row(self, row: PredictionRow, options: Mapping[str, Any]) -> str | None:
    """Why `row` cannot be scored (one phrase), or None."""
    for key in self.required_fields(options):
      value = row.get(key)
      if value is None:
        return f"has no {key!r}"
      if key == "references" and (isinstance(value, str) or not value):
        return "has no references" if not value else "'references' is not a list of strings"
    return None


# --- adapters: prediction rows -> the metric's lists ---------------------------------------------


def _predictions(rows: Sequence[PredictionRow]) -> list[str]:
  return [row["prediction"] for row in rows]


def _references(rows: Sequence[PredictionRow]) -> list[Any]:
  return [row.get("references") for row in rows]


def _column(rows: Sequence[PredictionRow], key: str) -> list[Any]:
  return [row[key] for row in rows]


def _optional_column(metric: str, rows: Sequence[PredictionRow], key: str) -> list[Any] | None:
  """The field of every row, or None if no row has it; some but not all is an error."""
  present = [key in row for row in rows]
  if not any(present):
    return None
  if not all(present):
    raise ValueError(f"{metric}: row {present.index(False)} has no {key!r} field but others do")
  return _column(rows, key)


def _vqa(rows, *, to_lower: bool, single_answer: bool) -> Stats:
  """`single_answer`: the dataset has one `answer` (GQA, OCR-VQA, ...), scored by exact match;
  otherwise the references are an `answers` list, min(1, #matches / 3) even for a list of one
  (evaluators.md §1)."""
  refs = _references(rows)
  if single_answer:
    for i, r in enumerate(refs):
      if isinstance(r, list) and len(r) != 1:
        raise ValueError(f"vqa: example {i} has {len(r)} references but single_answer is set")
    refs = [r[0] if isinstance(r, list) else r for r in refs]
  return vqa_accuracy_stats(_predictions(rows), refs, to_lower=to_lower)


def _vqav2(rows, *, answer_type_key: str) -> Stats:
  types = _optional_column("vqav2", rows, answer_type_key)
  return vqav2_accuracy_stats(_predictions(rows), _references(rows), types)


def _anls(rows, *, to_lower: bool) -> Stats:
  return anls_stats(_predictions(rows), _references(rows), to_lower=to_lower)


def _chartqa(rows, *, to_lower: bool) -> Stats:
  return chartqa_accuracy_stats(_predictions(rows), _references(rows), to_lower=to_lower)


def _exact_match(rows, *, to_lower: bool) -> Stats:
  return exact_match_stats(_predictions(rows), _references(rows), to_lower=to_lower)


def _tallyqa(rows, *, issimple_key: str) -> Stats:
  issimple = _optional_column("tallyqa", rows, issimple_key)
  return tallyqa_accuracy_stats(_predictions(rows), _references(rows), issimple)


def _scienceqa(rows) -> Stats:
  return scienceqa_accuracy_stats(_predictions(rows), _references(rows))


def _rsvqa(rows, *, to_lower: bool, question_type_key: str) -> Stats:
  return rsvqa_accuracy_stats(_predictions(rows), _references(rows),
                              _column(rows, question_type_key), to_lower=to_lower)


def _pope(rows) -> Stats:
  return pope_stats(_predictions(rows), _references(rows))


def _cider(rows, *, tokenize: bool) -> Stats:
  return cider_stats(_predictions(rows), _references(rows), tokenize=tokenize)


def _bleu(rows, *, tokenize: bool) -> Stats:
  return bleu_stats(_predictions(rows), _references(rows), tokenize=tokenize)


def _refcoco_box(rows, *, box_key: str) -> Stats:
  return box_accuracy_stats(_predictions(rows), _column(rows, box_key))


@functools.lru_cache(maxsize=2)
def _mask_decoder(vqvae: str) -> Callable:
  from paligemma_jax.inference.parsers import mask_decoder
  from paligemma_jax.inference.pipeline import load_vqvae
  return mask_decoder(load_vqvae(vqvae))


def _refcoco_seg(rows, *, vqvae: str, box_key: str, mask_key: str) -> Stats:
  if not vqvae:
    raise ValueError("refcoco_seg: set the evaluator option vqvae (vae-oid.npz or its Orbax dir) "
                     "to decode the predicted masks")
  return refcoco_segmentation_stats(_predictions(rows), _column(rows, mask_key),
                                    _column(rows, box_key), _mask_decoder(vqvae))


def _detection_map(rows, *, boxes_key: str, labels_key: str) -> Stats:
  """Predicted objects parsed from the text; GT boxes (normalised) scaled to pixels."""
  preds, refs = [], []
  for i, row in enumerate(rows):
    h, w = row["image_hw"]
    boxes, labels = row[boxes_key], row[labels_key]
    if len(boxes) != len(labels):
      raise ValueError(f"detection_map: row {i} has {len(boxes)} boxes but {len(labels)} labels")
    preds.append(detections_from_text(row["prediction"], (h, w)))
    refs.append([((y1 * h, x1 * w, y2 * h, x2 * w), label)
                 for (y1, x1, y2, x2), label in zip(boxes, labels)])
  return detection_map_stats(preds, refs)


def _perplexity(rows) -> Stats:
  return perplexity_stats(_column(rows, "log_likelihood"), _column(rows, "num_tokens"))


# The one table from config names to evaluators (evaluators.md §12 for which task uses which).
EVALUATORS: dict[str, Evaluator] = {
    "vqa": Evaluator(_vqa, vqa_accuracy_from_stats, {"to_lower": False, "single_answer": False}),
    "vqav2": Evaluator(_vqav2, vqav2_accuracy_from_stats, {"answer_type_key": "answer_type"}),
    "anls": Evaluator(_anls, anls_from_stats, {"to_lower": False}),
    "chartqa": Evaluator(_chartqa, chartqa_accuracy_from_stats, {"to_lower": True}),
    "exact_match": Evaluator(_exact_match, exact_match_from_stats, {"to_lower": False}),
    "tallyqa": Evaluator(_tallyqa, tallyqa_accuracy_from_stats, {"issimple_key": "issimple"}),
    "scienceqa": Evaluator(_scienceqa, scienceqa_accuracy_from_stats),
    "rsvqa": Evaluator(_rsvqa, rsvqa_accuracy_from_stats,
                       {"to_lower": True, "question_type_key": "question_type"},
                       field_options=("question_type_key",)),
    "pope": Evaluator(_pope, pope_from_stats),
    "cider": Evaluator(_cider, cider_from_stats, {"tokenize": True}, multiset=True),
    "bleu": Evaluator(_bleu, bleu_from_stats, {"tokenize": True}),
    "refcoco_box": Evaluator(_refcoco_box, box_accuracy_from_stats, {"box_key": "box_yxyx"},
                             needs_references=False, field_options=("box_key",)),
    "refcoco_seg": Evaluator(_refcoco_seg, refcoco_segmentation_from_stats,
                             {"vqvae": "", "box_key": "box_yxyx", "mask_key": "mask"},
                             needs_references=False, field_options=("box_key", "mask_key")),
    "detection_map": Evaluator(_detection_map, detection_map_from_stats,
                               {"boxes_key": "boxes_yxyx", "labels_key": "labels"},
                               needs_references=False, field_options=("boxes_key", "labels_key"),
                               needs_image_hw=True, multiset=True),
    "perplexity": Evaluator(_perplexity, perplexity_from_stats, mode=SCORE,
                            needs_references=False),
}


def get_evaluator(name: str) -> Evaluator:
  """`EVALUATORS[name]`, or a one-line error listing the valid names."""
  if name not in EVALUATORS:
    raise ValueError(f"unknown evaluator {name!r}; valid evaluators: {', '.join(EVALUATORS)}")
  return EVALUATORS[name]
