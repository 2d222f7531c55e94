"""The project's Orbax params checkpoints (`paligemma_jax.checkpoints`) as a source and a writer.

Both go leaf by leaf: `read_leaves` restores named leaves to host numpy, `ParamsWriter` adds
leaves by partial saves and commits atomically when the with-block exits cleanly. Each Orbax call
costs ~50 ms whatever its size, so leaves smaller than `batch_bytes` travel together (norms,
biases: a few MB in all); a large leaf always goes alone, so memory stays about one leaf.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from paligemma_jax import checkpoints
from paligemma_jax.conversion import buffers
from paligemma_jax.conversion.streaming import Source, Specs, check_specs, nbytes

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


def write_orbax(source: Source, path: str, *, overwrite: bool = False,
                batch_bytes: int = BATCH_BYTES) -> list[str]:
  """Writes `source` as an Orbax params checkpoint at `path`.

  `ParamsWriter` is atomic itself: nothing appears at `path` unless every leaf was written.
  """
  specs = source.specs()
  with checkpoints.ParamsWriter(path, source.config, overwrite=overwrite) as writer:
    batch, size = {}, 0
    for key in sorted(specs, key=lambda k: nbytes(specs[k])):  # small ones first, together
      leaf_size = nbytes(specs[key])
      if batch and size + leaf_size > batch_bytes:
        writer.write(batch)
        batch, size = {}, 0
        buffers.release_freed_memory()  # before the next leaf is read
      batch[key] = _on_host_device(source.read(key))
      size += leaf_size
    writer.write(batch)
  return []


def _on_host_device(array: np.ndarray) -> jax.Array:
  """A CPU jax.Array over the same (64-byte aligned) memory: Orbax saves a numpy array through
  a copy of its own, a jax.Array without one (measured on a 1 GB leaf: +1 leaf vs +0)."""
  return jax.device_put(buffers.aligned(array), jax.local_devices(backend="cpu")[0])
