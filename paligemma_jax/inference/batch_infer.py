"""Batch inference over a JSONL file of {"image": path, "prompt": text} rows.

Every input row gets one output row, in input order: the prediction (`Result.to_json()`) or
{"error": "..."} for a row that cannot run (missing or unreadable image, a prompt that is too
long). A bad row never stops the run; the summary counts them. The output file is written to a
temporary name and renamed at the end, so an interrupted run leaves no half-file behind, and an
existing output is replaced only with `overwrite`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Iterator

import PIL.Image
import tqdm

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


def _prepare(pipe: Pipeline, row: dict[str, Any], max_new_tokens: int):
  paths = row["image"] if isinstance(row["image"], list) else [row["image"]]
  images = [load_image(str(p)) for p in paths]
  pipe.check_prompt(str(row["prompt"]), max_new_tokens, len(images))
  return images if len(images) > 1 else images[0]


def run_jsonl(pipe: Pipeline, input_path: str, output_path: str, *, batch_size: int = 8,
              overwrite: bool = False, max_new_tokens: int = 32, **generate: Any) -> Summary:
  """Predicts every row of `input_path` into `output_path`; returns the counts."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if not os.path.isfile(input_path):
    raise FileNotFoundError(f"input file not found: {input_path}")
  if os.path.exists(output_path) and not overwrite:
    raise FileExistsError(f"{output_path} exists; pass --overwrite to replace it")
  start, summary = time.perf_counter(), Summary()
  outputs: list[dict[str, Any]] = []
  pending: list[tuple[int, Any, str]] = []  # (output index, image(s), prompt)

  def flush():
    # rows with the same number of images share a batch (the processor needs equal counts)
    groups: dict[int, list[tuple[int, Any, str]]] = {}
    for item in pending:
      groups.setdefault(len(item[1]) if isinstance(item[1], list) else 1, []).append(item)
    for group in groups.values():
      results = pipe([g[1] for g in group], [g[2] for g in group],
                     max_new_tokens=max_new_tokens, **generate)
      for (index, _, _), result in zip(group, results):
        outputs[index].update(result.to_json())
    summary.ok += len(pending)
    pending.clear()

  rows = list(read_rows(input_path))
  with tqdm.tqdm(total=len(rows), unit="row", desc="infer") as bar:
    for row in rows:
      summary.rows += 1
      if isinstance(row, str):
        outputs.append({"error": row})
        summary.errors += 1
      else:
        outputs.append({k: row[k] for k in row if k in ("id", "image", "prompt")})
        try:
          pending.append((len(outputs) - 1, _prepare(pipe, row, max_new_tokens),
                          str(row["prompt"])))
        except (OSError, ValueError) as e:
          outputs[-1]["error"] = str(e)
          summary.errors += 1
      if len(pending) >= batch_size:
        flush()
      bar.update(1)
    if pending:
      flush()
  _write_atomic(output_path, outputs)
  summary.seconds = time.perf_counter() - start
  return summary


def _write_atomic(path: str, rows: list[dict[str, Any]]) -> None:
  tmp = f"{path}.incomplete"
  try:
    with open(tmp, "w") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
