"""The training input on Grain: members -> mixed index stream -> examples -> fixed-shape batches.

    input = TrainInput(config, processor, process_index=jax.process_index(),
                       process_count=jax.process_count())
    batch = next(input)       # host-local NumPy arrays, batch_size / process_count rows
    state = input.get_state() # a small dict; TrainInput(...).set_state(state) resumes exactly

Steps (every one a pure function of the seed and the step number, see mixture.py):
  1. each member's split, this process's share `[p::P]`, shuffled afresh each epoch, repeated;
  2. members interleaved by weight (`MixtureMap`);
  3. per example (`Preparation`, run by Grain's reader threads): read it, decode its images,
     turn it into rows with its task, draw ONE row and ONE reference as the suffix from
     (seed, member, epoch, index) as big_vision's `choice` op does, then the `Processor` at
     `n_images * num_image_tokens + text_len` tokens with right padding (big_vision's training
     layout); a longer row is cut at its end (its eos is lost, as in big_vision) and counted;
  4. skipped examples (bad data) dropped and counted, see `Skipping`; then batching. Images
     stay uint8 (`Processor.resized_images`) until then and are normalised into their slot of
     the float32 batch (`stack_rows`), a quarter of the bytes per example in flight; the uint8
     and batch arrays are reused (`ImageBuffers`, `BatchArrays`) rather than taken afresh from
     the OS, whose page faults and zeroing cost 10-30% of the CPU time at 896 px.

Bad data never raises mid-epoch: an example that cannot be read, decoded or tokenized becomes a
counted skip with its reason; more than `max_skipped` skips stop the run with one line
(`DataLimitError`). `stats()` gives the counts for the trainer's metrics, `summary()` one line.

Batches (per process, B = batch_size / process_count, L = n_images * N + text_len):
  images float32 [B, n_images, S, S, 3] in [-1, 1]; tokens int32 [B, L]; input_mask bool [B, L];
  token_type_ids, mask_ar, mask_loss, labels int32 [B, L] (as `Processor` returns them).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from paligemma_jax.data.input_config import InputConfig, MemberConfig, default_read_threads
from paligemma_jax.data.mixture import Element, mixed_stream, normalise_weights
from paligemma_jax.data.processor import Processor
from paligemma_jax.data.sources import OpenedSource, open_jsonl, open_tfds
from paligemma_jax.data.task_base import DATA_ERRORS, error_message
from paligemma_jax.data.tasks import Row, Task, make_task, rows_or_error
from paligemma_jax.data.tasks_boxes import MaskEncoder, ReferringSegmentation
from paligemma_jax.data.tfds_input import with_decoded_images

NOTES_KEPT = 5  # distinct skip reasons kept for the summary


class DataLimitError(RuntimeError):
  """More examples were skipped for bad data than `max_skipped` allows (a one-line message)."""


@dataclasses.dataclass(frozen=True)
class Member:
  """An opened member: its settings, examples and task."""

  config: MemberConfig
  source: OpenedSource
  task: Task

  def rows(self, index: int, *, rng: np.random.Generator | None = None, label: str = ""
           ) -> list[Row]:
    """Example `index` read, its images decoded and made rows (`rows_or_error`: a bad example
    is one error row)."""
    decode = functools.partial(with_decoded_images, keys=self.task.image_fields(),
                               decoder=self.config.image_decoder)
    return rows_or_error(self.task, lambda: self.source.examples[index], index, rng=rng,
                         decode=decode, label=label)


def open_member(config: MemberConfig, position: int = 0, *,
                encode_mask: MaskEncoder | None = None) -> Member:
  """Opens a member's source and task; one-line errors name the setting to fix.

  `encode_mask` (training) goes to a `refexp_segment` task, whose targets need it.
  """
  where = f"input.members[{position}]"
  name, options = config.task_spec()
  try:
    task = make_task(name, options)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  if encode_mask is not None and isinstance(task, ReferringSegmentation):
    task = dataclasses.replace(task, encode_mask=encode_mask)
  if config.jsonl:
    source = open_jsonl(config.jsonl, config.image_dir)
  else:
    source = open_tfds(config.name, config.config, config.split, config.data_dir, task, where)
  return Member(config, source, task)


@dataclasses.dataclass(frozen=True)
class Skip:
  """An example that was dropped, and why."""

  member: int
  note: str


class ImageBuffers:
  """uint8 image arrays handed back once batched, for later examples to reuse.

  A fresh array per example, made in a reader thread and freed in the batching one, is new
  memory each time (glibc hands blocks this size back to the OS), paid in page faults: at 896 px
  about 600 faults per example. At most `limit` arrays of a shape are kept.
  """

  def __init__(self, limit: int = 256) -> None:
    self.limit = limit
    self._free: dict[tuple[int, ...], list[np.ndarray]] = {}
    self._lock = threading.Lock()  # taken by reader threads, given back by the batching one

  def __getstate__(self) -> dict[str, Any]:  # worker processes start with none
    return {"limit": self.limit}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(state["limit"])

  def take(self, shape: tuple[int, ...]) -> np.ndarray:
    """A C-contiguous uint8 array of `shape` (contents undefined)."""
    with self._lock:
      free = self._free.get(shape)
      if free:
        return free.pop()
    return np.empty(shape, np.uint8)

  def give(self, array: np.ndarray) -> None:
    """Hands `array` back; the caller no longer uses it."""
    with self._lock:
      free = self._free.setdefault(array.shape, [])
      if len(free) < self.limit:
        free.append(array)


class BatchArrays:
  """float32 batch arrays reused once nothing else refers to them.

  A fresh array the size of an image batch (300 MB at 896 px) is fresh memory from the OS each
  time, which the kernel zeroes page by page: 10-15% of the input's CPU time at 896 px. An array
  kept here is handed out again only when this pool holds the sole reference to it (CPython's
  reference count: any batch, view or device buffer still aliasing it holds one), so a batch
  the caller still uses is never overwritten.
  """

  def __init__(self, keep: int = 3) -> None:
    self.keep = keep
    self._arrays: list[np.ndarray] = []

  def empty(self, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of `shape` (contents undefined) that no one else refers to."""
    for i in range(len(self._arrays)):
      # References: the list, and getrefcount's argument.
      if self._arrays[i].shape == shape and sys.getrefcount(self._arrays[i]) == 2:
        return self._arrays[i]
    array = np.empty(shape, np.float32)
    self._arrays = (self._arrays + [array])[-self.keep:]
    return array


@dataclasses.dataclass(frozen=True)
class Preparation:
  """`Element` -> one training example (dict of arrays as in a batch, see the module docstring,
  but images uint8 [n_images, S, S, 3] not yet normalised) or a `Skip`."""

  members: tuple[Member, ...]
  processor: Processor
  text_len: int
  num_images: int
  seed: int
  buffers: ImageBuffers = dataclasses.field(default_factory=ImageBuffers)

  @property
  def max_length(self) -> int:
    return self.num_images * self.processor.num_image_tokens + self.text_len

  def __call__(self, element: Element) -> dict[str, Any] | Skip:
    m, index, epoch = element
    member = self.members[m]
    where = f"{member.config.label} example {index}"
    rng = np.random.default_rng([self.seed, m, epoch, index])
    rows = member.rows(index, rng=rng)  # training: the task draws its variant
    if not rows:
      return Skip(m, f"{where}: the task made no row")
    row = rows[int(rng.integers(len(rows)))]
    if row.error:  # "example {index}: ..." (or a task's "example {index} object {j}: ...")
      return Skip(m, f"{member.config.label} {row.error}")
    if not row.references:
      return Skip(m, f"{where}: no reference to train on")
    if len(row.images) != self.num_images:
      return Skip(m, f"{where}: {len(row.images)} images, input.num_images is {self.num_images}")
    suffix = row.references[int(rng.integers(len(row.references)))]
    try:
      return self.encode(list(row.images), row.prefix or "", suffix) | {"_member": m}
    except DATA_ERRORS as e:
      return Skip(m, f"{where}: {error_message(e)}")

  def encode(self, images: list[Any], prefix: str, suffix: str) -> dict[str, Any]:
    """The processor's arrays for one row (batch axis dropped), plus `_truncated`; "images"
    are still uint8 (`Processor.resized_images`), normalised once batched (`TrainInput`)."""
    size = self.processor.image_size
    pixels = self.processor.resized_images(
        images, out=self.buffers.take((len(images), size, size, 3)))
    out = self.processor.text_arrays([prefix], [suffix], len(images), padding_side="right",
                                     max_length=self.max_length)
    row = {k: v[0] for k, v in out.items()} | {"images": pixels}
    # Right-padded, a whole row ends in eos: a row that fills the length without it was cut.
    cut = row["input_mask"][-1] and row["tokens"][-1] != self.processor.tokenizer.eos_id
    return row | {"_truncated": bool(cut)}


class Skipping(grain.IterDataset):
  """Drops `Skip`s; each kept example carries the skips met just before it (`_skipped`, int64
  [M] per member, and `_note`, the last reason) so the main process can count them wherever this
  stage runs. More than `max_skipped` skips in a row raise `DataLimitError` here."""

  def __init__(self, parent: grain.IterDataset, num_members: int, max_skipped: int) -> None:
    super().__init__(parent)
    self.num_members = num_members
    self.max_skipped = max_skipped

  def __iter__(self) -> grain.DatasetIterator:
    return _SkippingIterator(self._parent.__iter__(), self.num_members, self.max_skipped)


class _SkippingIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, num_members: int, max_skipped: int) -> None:
    super().__init__(parent)
    self.num_members = num_members
    self.max_skipped = max_skipped

  def __next__(self) -> dict[str, Any]:
    skipped = np.zeros(self.num_members, np.int64)
    note = ""
    while True:
      value = next(self._parent)
      if not isinstance(value, Skip):
        return value | {"_skipped": skipped, "_note": note}
      skipped[value.member] += 1
      note = value.note
      if skipped.sum() > self.max_skipped:
        raise DataLimitError(f"input stopped: {skipped.sum()} examples in a row were skipped "
                             f"(input.max_skipped={self.max_skipped}); last: {note}")

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class TrainInput:
  """Host-local training batches; see the module docstring.

  Attributes:
    members: the opened members, in config order.
    weights: their normalised weights.
    examples_per_epoch: sum of the members' split sizes (all processes): the epoch of a mixture.
    local_batch_size: rows per batch on this process.
  """

  def __init__(self, config: InputConfig, processor: Processor, *, process_index: int = 0,
               process_count: int = 1, encode_mask: MaskEncoder | None = None) -> None:
    """`encode_mask` makes the `<seg>` codes of `refexp_segment` targets (the training layer
    builds it from `input.vqvae`; data/ does not run models)."""
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    if config.batch_size % process_count:
      raise ValueError(f"input.batch_size {config.batch_size} does not divide by the "
                       f"{process_count} processes; use a multiple of {process_count}")
    self.config = config
    self.members = tuple(open_member(m, i, encode_mask=encode_mask)
                         for i, m in enumerate(config.members))
    for i, m in enumerate(self.members):
      if isinstance(m.task, ReferringSegmentation) and m.task.encode_mask is None:
        raise ValueError(f"input.members[{i}]: task refexp_segment trains on the <seg> codes of "
                         "each mask, made by the VQ-VAE encoder; set input.vqvae to vae-oid.npz "
                         "(or its Orbax dir)")
    labels = [m.config.label for m in self.members]
    self.weights = normalise_weights([m.weight for m in config.members], labels)
    self.examples_per_epoch = sum(len(m.source) for m in self.members)
    self.local_batch_size = config.batch_size // process_count
    self.preparation = Preparation(self.members, processor, config.text_len, config.num_images,
                                   config.seed)
    stream, self.mixture = mixed_stream(
        [len(m.source) for m in self.members], self.weights, config.seed, config.shuffle,
        process_index, process_count, config.mixture_block)
    read = grain.ReadOptions(num_threads=config.read_threads or default_read_threads(),
                             prefetch_buffer_size=config.prefetch_buffer)
    ds = stream.map(self.preparation).to_iter_dataset(read)
    ds = Skipping(ds, len(self.members), config.max_skipped)
    # Images travel as uint8 and become float32 once, in their batch slots: in the batching
    # step with threads, after it (in this process) with worker processes, whose batches then
    # cross processes at a quarter of the bytes.
    self._scale_after_batch = config.worker_processes > 0
    batch_fn = None if self._scale_after_batch else functools.partial(
        stack_rows, scale_images=processor.scale_images, release=self.preparation.buffers.give,
        empty=BatchArrays().empty)
    ds = ds.batch(self.local_batch_size, drop_remainder=True, batch_fn=batch_fn)
    if config.worker_processes:
      if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags
        raise ValueError("input.worker_processes > 0 needs absl flags parsed (start the program "
                         "with absl.app.run); or set input.worker_processes=0 (threads only)")
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_processes))
    self._iterator = iter(ds)
    self._counts = _zero_counts(len(self.members))

  def __iter__(self) -> TrainInput:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._iterator)
    if self._scale_after_batch:
      batch["images"] = self.preparation.processor.scale_images(batch["images"])
    counts = self._counts
    counts["drawn"] += np.bincount(batch.pop("_member"), minlength=len(self.members))
    truncated = batch.pop("_truncated")
    counts["truncated_total"] += int(truncated.sum())
    counts["skipped"] += batch.pop("_skipped").sum(axis=0)
    for note in batch.pop("_note"):
      if note and len(counts["notes"]) < NOTES_KEPT and note not in counts["notes"]:
        counts["notes"].append(str(note))
    if counts["skipped"].sum() > self.config.max_skipped:
      raise DataLimitError(f"input stopped: {self.summary()}; fix the data or raise "
                           "input.max_skipped")
    return batch

  def get_state(self) -> dict[str, Any]:
    """A small JSON-able dict: Grain's reader position plus the counters."""
    c = self._counts
    return {"grain": self._iterator.get_state(), "drawn": c["drawn"].tolist(),
            "skipped": c["skipped"].tolist(), "truncated": c["truncated_total"],
            "notes": list(c["notes"])}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from `get_state()`'s dict: the next batches are those the saved run would have
    produced next."""
    if len(state["drawn"]) != len(self.members):
      raise ValueError(f"input state has {len(state['drawn'])} members, the input has "
                       f"{len(self.members)}; resume with the same input.members")
    self._iterator.set_state(state["grain"])
    self._counts = _zero_counts(len(self.members))
    self._counts["drawn"] += np.asarray(state["drawn"], np.int64)
    self._counts["skipped"] += np.asarray(state["skipped"], np.int64)
    self._counts["truncated_total"] = int(state["truncated"])
    self._counts["notes"] = list(state["notes"])

  def stats(self) -> dict[str, float]:
    """Flat metrics: examples drawn and skipped per member (since the run began), truncated."""
    out: dict[str, float] = {"input/truncated": float(self._counts["truncated_total"])}
    for member, drawn, skipped in zip(self.members, self._counts["drawn"],
                                      self._counts["skipped"]):
      out[f"input/drawn/{member.config.label}"] = float(drawn)
      out[f"input/skipped/{member.config.label}"] = float(skipped)
    return out

  def summary(self) -> str:
    """One line: skipped and truncated counts, per member, with the first reasons."""
    c = self._counts
    drawn = int(c["drawn"].sum())
    per_member = ", ".join(f"{m.config.label} {int(n)}" for m, n in zip(self.members,
                                                                         c["skipped"]) if n)
    line = (f"{int(c['skipped'].sum())} examples skipped for bad data ({per_member or 'none'}) "
            f"of {drawn + int(c['skipped'].sum())} read (input.max_skipped="
            f"{self.config.max_skipped}); {c['truncated_total']} rows cut at text_len="
            f"{self.config.text_len}")
    return line + (f"; reasons: {' | '.join(c['notes'])}" if c["notes"] else "")


def stack_rows(rows: Sequence[Mapping[str, Any]],
               scale_images: Callable[[np.ndarray, np.ndarray], np.ndarray],
               release: Callable[[np.ndarray], None],
               empty: Callable[[tuple[int, ...]], np.ndarray]) -> dict[str, Any]:
  """Grain's batching (each field stacked on a new leading axis), except that each row's uint8
  "images" are normalised straight into their slot of one float32 batch (`scale_images`, the
  processor's), with no uint8 batch in between, then `release`d for reuse."""
  batch = {}
  for key, first in rows[0].items():
    if key == "images":
      batch[key] = empty((len(rows), *first.shape))
      for i, row in enumerate(rows):
        scale_images(row[key], batch[key][i])
        release(row[key])
    else:
      batch[key] = np.stack([row[key] for row in rows])
  return batch


def _zero_counts(num_members: int) -> dict[str, Any]:
  return {"drawn": np.zeros(num_members, np.int64), "skipped": np.zeros(num_members, np.int64),
          "truncated_total": 0, "notes": []}
