"""Scoring saved predictions: a JSONL file of prediction rows -> one evaluator's metrics.

    python eval.py --predictions=preds.jsonl --metric=cider [--output=metrics.json]

Each line is a JSON object with "prediction" and "references" (a list of strings), or the
fields the evaluator needs instead or besides (vqav2: "answer_type"; tallyqa: "issimple";
rsvqa: "question_type"; refcoco_box: "box_yxyx"; detection_map: "boxes_yxyx", "labels",
"image_hw"; perplexity: "log_likelihood", "num_tokens"). The predictions.jsonl that evaluate()
writes is such a file; its {"id", "error"} rows (examples that could not be read) are skipped and
counted. refcoco_seg cannot be scored from a file: its GT masks are not stored there.

A malformed row (not JSON, not an object, a missing or ill-typed field) is a one-line ValueError
naming its line number; nothing is written then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from paligemma_jax.evaluation.evaluators import get_evaluator
from paligemma_jax.evaluation.run_evals import write_atomically
from paligemma_jax.inference.batch_infer import check_output


def read_prediction_rows(path: str, required: list[str]) -> tuple[list[dict[str, Any]], int]:
  """(scoreable rows, number of error rows) of a predictions file; one-line errors."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"predictions file not found: {path}")
  rows, skipped = [], 0
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {number}: not JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path} line {number}: a JSON {type(row).__name__}, not an object")
      if "error" in row and "prediction" not in row:
        skipped += 1
        continue
      _check_fields(path, number, row, required)
      rows.append(row)
  return rows, skipped


def _check_fields(path: str, number: int, row: Mapping[str, Any], required: list[str]) -> None:
  for key in required:
    if key not in row or row[key] is None:
      raise ValueError(f"{path} line {number}: no {key!r} field (needed: {', '.join(required)})")
  if "prediction" in required and not isinstance(row["prediction"], str):
    raise ValueError(f"{path} line {number}: 'prediction' is not a string")
  if "references" in required:
    refs = row["references"]
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
      raise ValueError(f"{path} line {number}: 'references' is not a list of strings")
    if not refs:
      raise ValueError(f"{path} line {number}: no references (an empty list)")


def score_predictions(path: str, metric: str, options: Mapping[str, Any] | None = None
                      ) -> dict[str, float]:
  """The evaluator `metric`'s metrics over the rows of the JSONL file `path`, plus `skipped`."""
  if metric == "refcoco_seg":
    raise ValueError("refcoco_seg cannot score a predictions file: it needs the GT masks; "
                     "evaluate the split instead (eval.py --config)")
  evaluator = get_evaluator(metric)
  options = evaluator.check_options(metric, options or {})
  rows, skipped = read_prediction_rows(path, evaluator.required_fields(options))
  if not rows:
    raise ValueError(f"{path} has no prediction rows to score")
  try:
    metrics = evaluator.from_stats(evaluator.stats(rows, **options))
  except ValueError as e:  # the metric's own checks name the row (0-based) and the problem
    raise ValueError(f"{path}: {e} (row numbers count from 0 over the scored rows)") from None
  return {**metrics, "skipped": float(skipped)}


def write_metrics(path: str, metrics: Mapping[str, float], *, overwrite: bool = False) -> None:
  """`metrics` as JSON at `path` (atomically; an existing file only with `overwrite`)."""
  check_output(path, overwrite)
  write_atomically({path: json.dumps(dict(metrics), indent=1, sort_keys=True) + "\n"})

