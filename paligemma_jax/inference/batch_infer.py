"""Batch inference: rows in, JSONL predictions out, for a JSONL file or a TFDS split.

Both sources become `Row`s (paligemma_jax.data.tasks) and share one loop, `predict_rows`:

- every input row gets one output row, in input order: the row's id / image / prompt /
  references, then the prediction (`Result.to_json()`) or {"error": "..."} for a row that cannot
  run (missing, unreadable or corrupt image, a prompt that is too long, a malformed example);
- a bad row never stops the run; the summary counts them;
- the output is written as batches finish to `<output>.incomplete` and renamed at the end, so an
  interrupted run leaves no half-file behind; an existing output is replaced only with
  `overwrite`.

JSONL rows are {"image": path (or a list of paths), "prompt": text, optional "id"}.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

import PIL.Image
import tqdm

from paligemma_jax.data.tasks import Row, Task
from paligemma_jax.data.tfds_input import TfdsSource, count_examples, tfds_rows
from paligemma_jax.inference.pipeline import Pipeline


@dataclasses.dataclass
class Summary:
  rows: int = 0
  ok: int = 0
  errors: int = 0
  seconds: float = 0.0

  def __str__(self) -> str:
    return (f"{self.rows} rows: {self.ok} predicted, {self.errors} errors, "
            f"{self.seconds:.1f} s")


def load_image(path: str) -> PIL.Image.Image:
  """The RGB image at `path`; one-line errors for a missing or unreadable file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image not found: {path}")
  try:
    with PIL.Image.open(path) as image:
      return image.convert("RGB")
  except (OSError, PIL.UnidentifiedImageError, ValueError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from None


def check_output(path: str, overwrite: bool) -> None:
  """One-line error when `path` exists and may not be replaced (call before the slow work)."""
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
  folder = os.path.dirname(path) or "."
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"output folder {folder} does not exist; create it first")


# --- sources -------------------------------------------------------------------------------------


def read_rows(path: str) -> Iterator[dict[str, Any] | str]:
  """Parsed rows of a JSONL file; a line that is not a JSON object yields its error message."""
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        yield f"line {number}: not JSON ({e.msg})"
        continue
      if not isinstance(row, dict) or "image" not in row or "prompt" not in row:
        yield f"line {number}: expected an object with 'image' and 'prompt'"
        continue
      yield row


def jsonl_rows(path: str) -> Iterator[Row]:
  """`Row`s of a JSONL file; images are loaded as the rows are consumed."""
  for item in read_rows(path):
    if isinstance(item, str):
      yield Row(None, None, error=item)
      continue
    header = dict(id=item.get("id"), prefix=str(item["prompt"]), fields={"image": item["image"]})
    paths = item["image"] if isinstance(item["image"], list) else [item["image"]]
    try:
      yield Row(images=tuple(load_image(str(p)) for p in paths), **header)
    except (OSError, ValueError) as e:
      yield Row(error=str(e), **header)


# --- the loop ------------------------------------------------------------------------------------


def predict_rows(pipe: Pipeline, rows: Iterable[Row], output_path: str, *, batch_size: int = 8,
                 overwrite: bool = False, max_new_tokens: int = 32, total: int | None = None,
                 **generate: Any) -> Summary:
  """Predicts every row into the JSONL file `output_path`; returns the counts.

  Rows are batched `batch_size` at a time (error rows take no place in a batch); `generate`
  goes to `Pipeline.__call__` (sampler=, beam=, seed=); `total` sizes the progress bar.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  check_output(output_path, overwrite)
  start, summary = time.perf_counter(), Summary()
  waiting: list[dict[str, Any]] = []  # output rows not yet written, in order
  pending: list[tuple[dict[str, Any], Row]] = []  # rows waiting for a batch, with their output
  tmp = f"{output_path}.incomplete"
  try:
    with open(tmp, "w") as f, tqdm.tqdm(total=total, unit="row", desc="infer") as bar:
      for row in rows:
        summary.rows += 1
        out = row.header()
        waiting.append(out)
        error = row.error or _check(pipe, row, max_new_tokens)
        if error:
          out["error"] = error
          summary.errors += 1
        else:
          pending.append((out, row))
        if len(pending) >= batch_size:
          summary.ok += _predict(pipe, pending, max_new_tokens, generate)
        if not pending:
          _write(f, waiting)
        bar.update(1)
      summary.ok += _predict(pipe, pending, max_new_tokens, generate)
      _write(f, waiting)
    os.replace(tmp, output_path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  summary.seconds = time.perf_counter() - start
  return summary


def _check(pipe: Pipeline, row: Row, max_new_tokens: int) -> str | None:
  """Why `row` cannot run, or None."""
  if not row.images:
    return "the row has no image"
  try:
    pipe.check_prompt(row.prefix or "", max_new_tokens, len(row.images))
  except ValueError as e:
    return str(e)
  return None


def _predict(pipe: Pipeline, pending: list[tuple[dict[str, Any], Row]], max_new_tokens: int,
             generate: dict[str, Any]) -> int:
  """Fills the outputs of the pending rows; returns how many there were."""
  # Rows with the same number of images share a batch (the processor needs equal counts).
  groups: dict[int, list[tuple[dict[str, Any], Row]]] = {}
  for item in pending:
    groups.setdefault(len(item[1].images), []).append(item)
  for group in groups.values():
    images = [r.images[0] if len(r.images) == 1 else list(r.images) for _, r in group]
    results = pipe(images, [r.prefix or "" for _, r in group], max_new_tokens=max_new_tokens,
                   **generate)
    for (out, _), result in zip(group, results):
      out.update(result.to_json())
  count = len(pending)
  pending.clear()
  return count


def _write(f: TextIO, rows: list[dict[str, Any]]) -> None:
  for row in rows:
    f.write(json.dumps(row) + "\n")
  f.flush()
  rows.clear()


# --- the two entry points ------------------------------------------------------------------------


def run_jsonl(pipe: Pipeline, input_path: str, output_path: str, *, batch_size: int = 8,
              overwrite: bool = False, max_new_tokens: int = 32, **generate: Any) -> Summary:
  """Predicts every row of the JSONL file `input_path` into `output_path`; returns the counts."""
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f"input file not found: {input_path}")
  check_output(output_path, overwrite)
  with open(input_path) as f:
    total = sum(1 for line in f if line.strip())
  return predict_rows(pipe, jsonl_rows(input_path), output_path, batch_size=batch_size,
                      overwrite=overwrite, max_new_tokens=max_new_tokens, total=total,
                      **generate)


def tfds_job(source: TfdsSource, task: Task, *, process_index: int = 0, process_count: int = 1
             ) -> tuple[Iterator[Row], int | None]:
  """The rows `task` makes of this process's part of the split (dataset, split and fields are
  checked now; examples are read lazily) and how many there are, where that is known up front
  (one row per example), for the progress bar."""
  rows = tfds_rows(source, task, process_index=process_index, process_count=process_count)
  total = (count_examples(source, process_index=process_index, process_count=process_count)
           if task.one_row_per_example else None)
  return rows, total


def run_tfds(pipe: Pipeline, source: TfdsSource, task: Task, output_path: str, *,
             batch_size: int = 8, overwrite: bool = False, max_new_tokens: int = 32,
             process_index: int = 0, process_count: int = 1, **generate: Any) -> Summary:
  """Predicts every row `task` makes of the TFDS split `source` into `output_path`."""
  check_output(output_path, overwrite)
  rows, total = tfds_job(source, task, process_index=process_index, process_count=process_count)
  return predict_rows(pipe, rows, output_path, batch_size=batch_size, overwrite=overwrite,
                      max_new_tokens=max_new_tokens, total=total, **generate)
