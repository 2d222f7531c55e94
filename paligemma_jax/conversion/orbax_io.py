"""The project's Orbax params checkpoints (`paligemma_jax.checkpoints`) as a source and a writer.

Writing: a stacked leaf ("/layers/" in its key, [L, ...]) larger than `batch_bytes` is streamed
with `ParamsWriter.write_layers`: its layers are pulled from the source one at a time as the
checkpoint commits, and stored in chunks that never span two layers. Orbax cannot be handed an
array a layer at a time, so it writes the checkpoint with a one-element stand-in that is then
replaced, in Orbax's own store and with Orbax's own tensorstore spec
(`paligemma_jax.checkpoint_layers` says why this way and not a custom Orbax handler). Every
other leaf goes through `ParamsWriter.write`, an Orbax partial save; each costs ~50 ms whatever
its size, so leaves smaller than `batch_bytes` travel together (norms, biases: a few MB in all)
and a large unstacked leaf (the embedding) goes alone; small layers are written several at a
time, within the same budget.
Host memory: two layers of the largest stacked leaf, or `batch_bytes` plus a leaf, or the largest
unstacked leaf, whichever is largest (plus tensorstore's buffers for what is being compressed).
Leaves are handed to Orbax as numpy arrays (recorded as `np.ndarray`, as `save_params` writes
them; earlier versions of this writer handed over CPU `jax.Array`s, recorded with a CPU sharding).

Reading: `read` restores whole leaves through Orbax (small ones batched, as above); `read_layer`
reads only the chunks that hold one layer, through tensorstore (`checkpoints.open_leaf`), so
writers that go layer by layer (HF, npz) hold one layer. A checkpoint whose chunks span several
layers (Orbax's default, as written before per-layer streaming) is read a chunk's layers at a
time: for that layout the whole leaf, kept until its last layer has been handed out.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import tensorstore as ts

from paligemma_jax import checkpoints
from paligemma_jax.conversion import buffers
from paligemma_jax.conversion.streaming import Source, Specs, check_specs, nbytes, stacked

BATCH_BYTES = 64 << 20


class OrbaxSource(Source):
  """Native leaves of an Orbax params checkpoint, in its stored dtypes."""

  def __init__(self, path: str, batch_bytes: int = BATCH_BYTES):
    self.path = os.fspath(path)
    self.config = checkpoints.read_config(self.path)
    self._specs = checkpoints.leaf_specs(self.path)
    check_specs(self._specs, self.config, self.path)
    self._batch_bytes = batch_bytes
    self._unread = list(self._specs)
    self._prefetched: dict[str, np.ndarray] = {}
    self._blocks: dict[str, tuple[int, np.ndarray]] = {}  # key -> (first layer, layers)
    self._stores: dict[str, ts.TensorStore] = {}  # stacked leaves being read by layer

  def specs(self) -> Specs:
    return dict(self._specs)

  def read(self, key: str) -> np.ndarray:
    if key in self._prefetched:
      return self._prefetched.pop(key)
    group, size = [key], nbytes(self._specs[key])
    for other in self._unread:  # small unread leaves ride along, up to the budget
      if other != key and other not in self._prefetched:
        extra = nbytes(self._specs[other])
        if size + extra > self._batch_bytes:
          continue
        group.append(other)
        size += extra
    leaves = checkpoints.read_leaves(self.path, group)
    buffers.release_freed_memory()  # Orbax's decode buffers
    self._unread = [k for k in self._unread if k not in leaves]
    self._prefetched.update({k: v for k, v in leaves.items() if k != key})
    return leaves[key]

  def read_layer(self, key: str, layer: int) -> np.ndarray:
    first, block = self._blocks.pop(key, (0, None))
    if block is None or not first <= layer < first + len(block):
      first, block = self._read_block(key, layer)
    if layer < first + len(block) - 1:  # writers go 0..L-1: kept until its last layer
      self._blocks[key] = (first, block)
    elif first + len(block) == self._specs[key].shape[0]:
      self._stores.pop(key, None)
    return block[layer - first]

  def _read_block(self, key: str, layer: int) -> tuple[int, np.ndarray]:
    """The layers sharing `layer`'s chunks: `layer` alone for per-layer chunks."""
    if key in self._prefetched:  # a small leaf that rode along with an earlier `read`
      return 0, self._prefetched.pop(key)
    if key not in self._stores:
      self._unread = [k for k in self._unread if k != key]
      buffers.release_freed_memory()  # per leaf (a collection costs ~50 ms): decode buffers
      self._stores[key] = checkpoints.open_leaf(self.path, key)
    store = self._stores[key]
    per_chunk = store.chunk_layout.read_chunk.shape[0]
    first = layer - layer % per_chunk
    part = store[first:min(first + per_chunk, store.shape[0])]
    out = buffers.empty(part.shape, self._specs[key].dtype)
    # Decoded straight into our (aligned) array: no second copy of the block.
    ts.array(out, copy=False, write=True).write(part).result()
    return first, out


def write_orbax(source: Source, path: str, *, overwrite: bool = False,
                batch_bytes: int = BATCH_BYTES) -> list[str]:
  """Writes `source` as an Orbax params checkpoint at `path`.

  `ParamsWriter` is atomic itself: nothing appears at `path` unless every leaf was written.
  """
  specs = source.specs()
  layered = [k for k in specs if stacked(k) and nbytes(specs[k]) > batch_bytes]
  with checkpoints.ParamsWriter(path, source.config, overwrite=overwrite) as writer:
    batch, size = {}, 0
    whole = sorted((k for k in specs if k not in layered), key=lambda k: nbytes(specs[k]))
    for key in whole:  # small ones first, together
      leaf_size = nbytes(specs[key])
      if batch and size + leaf_size > batch_bytes:
        writer.write(batch)
        batch, size = {}, 0
        buffers.release_freed_memory()  # before the next leaf is read
      batch[key] = source.read(key)
      size += leaf_size
    writer.write(batch)
    del batch
    for key in layered:  # read as the checkpoint commits, one layer at a time
      writer.write_layers(key, specs[key].shape, specs[key].dtype,
                          functools.partial(_read_layer, source, key), in_flight_bytes=batch_bytes)
  return []


def _read_layer(source: Source, key: str, layer: int) -> np.ndarray:
  if layer == 0:  # per leaf, not per layer: a collection costs ~50 ms
    buffers.release_freed_memory()  # the previous leaf's buffers, before this one is read
  return source.read_layer(key, layer)
