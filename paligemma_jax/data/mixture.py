"""Index streams: which (member, example, epoch) a process reads at each step of training.

Every step is a pure function of (seed, step), so any position can be read directly and a
resumed iterator needs only its step number (Grain's `next_index`).

Per member (a split of `n` examples), for process `p` of `P`:

    range(n)[p::P]  -> shuffle(seed_m), a fresh permutation each epoch -> repeat
    step i -> (member m, example index, epoch i // len)

Shares of at most 2**16 examples are shuffled by `EpochShuffle` (a NumPy permutation per epoch);
larger ones by Grain's `MapDataset.shuffle` (whose per-element cost grows as 1/n on small shares).

The members are then interleaved by `MixtureMap`: steps come in blocks of `block` positions; each
block holds exactly `round(w_m * block)` positions of member m (largest remainders) in a random
order drawn from (seed, process, block). Proportions are therefore exact per block and random within it,
and the number of examples member m has given before step i is known in closed form
(`drawn_before`). big_vision samples each step independently (`sample_from_datasets`); the
proportions are the same in expectation.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence

import grain
import numpy as np

Element = tuple[int, int, int]  # (member, example index in its split, epoch of that member)


def normalise_weights(weights: Sequence[float], names: Sequence[str]) -> tuple[float, ...]:
  """Weights divided by their sum; a weight <= 0 (or not finite) is a one-line error."""
  for weight, name in zip(weights, names):
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
      raise ValueError(f"mixture member {name} has weight {weight!r}; weights must be > 0 "
                       "(drop the member instead of giving it weight 0)")
  total = float(sum(weights))
  return tuple(float(w) / total for w in weights)


def block_counts(weights: Sequence[float], block: int) -> np.ndarray:
  """int64 [M]: positions per block for each member, summing to `block` (largest remainders)."""
  exact = np.asarray(weights, np.float64) * block
  counts = np.floor(exact).astype(np.int64)
  order = np.argsort(-(exact - counts), kind="stable")
  counts[order[:block - counts.sum()]] += 1
  return counts


class MixtureMap(grain.transforms.DatasetSelectionMap):
  """Step -> (member, position in that member's stream); infinite; see the module docstring."""

  def __init__(self, weights: Sequence[float], seed: int, block: int, process_index: int = 0
               ) -> None:
    if block <= 0:
      raise ValueError(f"mixture block must be > 0, got {block}")
    self.counts = block_counts(weights, block)
    if (self.counts == 0).any():
      small = int(np.argmin(self.counts))
      raise ValueError(f"member {small} gets 0 of {block} positions per mixture block; raise "
                       "the block size or the member's weight")
    self.block = block
    self.seed = seed
    self.process_index = process_index  # each process its own order: global batches average
    self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._lock = threading.Lock()  # Grain's reader threads look steps up concurrently

  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_lock")}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state, _cache={}, _lock=threading.Lock())

  def __len__(self) -> int:
    return sys.maxsize

  def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(member of each position, rank of the position within its member) for block b."""
    with self._lock:
      if b not in self._cache:
        labels = np.repeat(np.arange(len(self.counts), dtype=np.int32), self.counts)
        rng = np.random.default_rng([self.seed, self.process_index, b])
        labels = rng.permutation(labels)
        rank = np.empty(self.block, np.int64)
        for m in range(len(self.counts)):
          rank[labels == m] = np.arange(self.counts[m])
        if len(self._cache) > 2:  # readers span at most a block boundary
          self._cache.pop(next(iter(self._cache)))
        self._cache[b] = (labels, rank)
      return self._cache[b]

  def __getitem__(self, step: int) -> tuple[int, int]:
    b, offset = divmod(step, self.block)
    labels, rank = self._block(b)
    member = int(labels[offset])
    return member, int(b * self.counts[member] + rank[offset])

  def drawn_before(self, step: int) -> np.ndarray:
    """int64 [M]: steps before `step` that went to each member."""
    b, offset = divmod(step, self.block)
    labels, _ = self._block(b)
    return b * self.counts + np.bincount(labels[:offset], minlength=len(self.counts))


def member_stream(size: int, member: int, seed: int, shuffle: bool, process_index: int,
                  process_count: int) -> grain.MapDataset:
  """Infinite stream of `Element`s over this process's share of one member's split."""
  if size < process_count:
    raise ValueError(f"member {member} has {size} examples, fewer than the {process_count} "
                     "processes that each need a share")
  ds = grain.MapDataset.range(size)[process_index::process_count]
  share = len(ds)
  if shuffle and share <= SMALL_SPLIT:
    ds = EpochShuffle(ds, seed=_member_seed(seed, member))
  elif shuffle:
    ds = ds.shuffle(seed=_member_seed(seed, member))
  return ds.repeat().map_with_index(lambda i, index: (member, int(index), i // share))


def _member_seed(seed: int, member: int) -> int:
  return int(np.random.default_rng([seed, member, 0x5EED]).integers(2**32))


def mixed_stream(sizes: Sequence[int], weights: Sequence[float], seed: int, shuffle: bool,
                 process_index: int, process_count: int, block: int
                 ) -> tuple[grain.MapDataset, MixtureMap]:
  """The interleaved `Element` stream of all members, and the map that interleaves them."""
  streams = [member_stream(n, m, seed, shuffle, process_index, process_count)
             for m, n in enumerate(sizes)]
  selection = MixtureMap(weights, seed, block, process_index)
  return grain.MapDataset.select_from_datasets(streams, selection), selection


# Grain's `MapDataset.shuffle` permutes by cycle-walking a block cipher whose block is at least 16
# bits, so on a share of n <= 2**16 examples each element costs ~2**16 / n encryptions (~28,000 / n
# us per example: 1.7 ms at n = 16, 110 us at n = 256). Such shares are shuffled by
# `EpochShuffle` instead: one NumPy permutation per epoch (microseconds), looked up per element.

SMALL_SPLIT = 1 << 16  # shares up to this size are shuffled by EpochShuffle


class EpochShuffle(grain.MapDataset):
  """A fresh permutation of `parent` each epoch, drawn from (seed, epoch) by NumPy and computed
  once per epoch: index i of epoch e reads parent[perm_e(i)]. For parents of at most SMALL_SPLIT
  elements (a permutation is held per epoch being read)."""

  def __init__(self, parent: grain.MapDataset, seed: int) -> None:
    super().__init__(parent)
    if len(parent) > SMALL_SPLIT:
      raise ValueError(f"EpochShuffle takes at most {SMALL_SPLIT} elements, got {len(parent)}")
    self.seed = seed
    self._orders: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()  # Grain's reader threads read concurrently

  def __getstate__(self) -> dict:
    return {k: v for k, v in self.__dict__.items() if k not in ("_orders", "_lock")}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state, _orders={}, _lock=threading.Lock())

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f"EpochShuffle(seed={self.seed})"

  def order(self, epoch: int) -> np.ndarray:
    """int64 [len(self)]: the permutation of `epoch` (read-only)."""
    with self._lock:
      if epoch not in self._orders:
        if len(self._orders) > 2:  # readers span at most an epoch boundary
          self._orders.pop(next(iter(self._orders)))
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self))
        order.flags.writeable = False
        self._orders[epoch] = order
      return self._orders[epoch]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, len(self))
    return self._parent[int(self.order(epoch)[position])]
