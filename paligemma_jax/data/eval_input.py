"""Evaluation input: every row of a split with ALL its references, and fixed-shape prompt batches.

    rows = eval_rows(MemberConfig(name="coco_captions", split="val"), process_index=p,
                     process_count=P)
    for group, bad in row_groups(rows, batch_size=64):
      errors += [r.error for r in bad]  # unreadable rows (or the wrong number of images)
      if group:
        batch = eval_batch(group, processor, batch_size=64, text_len=32)
        batch["tokens"], batch["valid"], batch["references"]

- Rows come in stored order over this process's share of the split (examples p, p + P, ...),
  read and decoded by Grain's threads; a task may make several rows per example (refexp).
- An example that cannot be read or decoded becomes one `Row` with `error` set
  (`task_base.rows_or_error`, as in `tfds_input.tfds_rows`); `row_groups` leaves such rows out
  of the groups and hands them over beside the group that follows them (or alone, at the end), so
  the evaluator can count every one.
- Batches hold prompts only (no suffix), padded on the left (`padding_side`) to
  `num_images * num_image_tokens + text_len` tokens; the last batch is filled with copies of
  its first row marked `valid = False`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator
from typing import Any

import grain
import numpy as np

from paligemma_jax.data.input_config import MemberConfig, default_read_threads
from paligemma_jax.data.input_pipeline import open_member
from paligemma_jax.data.processor import Processor
from paligemma_jax.data.tasks import Row


def eval_rows(config: MemberConfig, *, process_index: int = 0, process_count: int = 1,
              read_threads: int = 0) -> Iterator[Row]:
  """Every row of this process's share of a member's split, in stored order (see above).

  Opening checks the dataset, split and task now (one-line errors); rows are read lazily.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  member = open_member(config)
  read_threads = read_threads or default_read_threads()
  ds = grain.MapDataset.range(len(member.source))[process_index::process_count]
  ds = ds.map(functools.partial(member.rows, label=member.config.label)).to_iter_dataset(
      grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=4 * read_threads))
  return (row for rows in ds for row in rows)


def row_groups(rows: Iterable[Row], batch_size: int, *, num_images: int = 1
               ) -> Iterator[tuple[list[Row], list[Row]]]:
  """Groups of up to `batch_size` usable rows, each with the rows left out since the previous one.

  A row is left out when it has `error` set or not `num_images` images. Yields (group, bad rows);
  bad rows after the last group come in a final ([], bad rows), so none is lost, even when every
  row of a group is bad.
  """
  group: list[Row] = []
  bad: list[Row] = []
  for row in rows:
    if row.error or len(row.images) != num_images:
      bad.append(row if row.error else dataclasses.replace(
          row, error=f"row {row.id}: {len(row.images)} images, expected {num_images}"))
      continue
    group.append(row)
    if len(group) == batch_size:
      yield group, bad
      group, bad = [], []
  if group or bad:
    yield group, bad


def eval_batch(group: list[Row], processor: Processor, batch_size: int, text_len: int, *,
               num_images: int = 1, padding_side: str = "left") -> dict[str, Any]:
  """One fixed-shape prompt batch of 1 to `batch_size` rows (B = batch_size,
  L = num_images * N + text_len), filled with copies of the first row (valid = False).

  Returns:
    the processor's arrays for the prompts (images float32 [B, n, S, S, 3], tokens int32 [B, L],
    input_mask, mask_ar, ...), and valid bool [B], ids, prompts and references (lists of B).
  """
  if not 0 < len(group) <= batch_size:
    raise ValueError(f"a batch holds 1 to {batch_size} rows, got {len(group)}")
  max_length = num_images * processor.num_image_tokens + text_len
  valid = np.arange(batch_size) < len(group)
  rows = group + [group[0]] * (batch_size - len(group))
  out: dict[str, Any] = processor([list(r.images) for r in rows], [r.prefix or "" for r in rows],
                                  padding_side=padding_side, max_length=max_length)
  return out | {"valid": valid, "ids": [r.id for r in rows], "prompts": [r.prefix for r in rows],
                "references": [list(r.references) for r in rows]}
