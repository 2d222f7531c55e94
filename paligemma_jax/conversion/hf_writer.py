"""Writing native leaves as an HF checkpoint folder, in the hub's legacy key layout.

Layout: `vision_tower.vision_model.*`, `multi_modal_projector.linear.*`, `language_model.model.*`
(which transformers 4.4x-5.x all read; 4.57 cannot read 5.x's own save layout), no lm_head (tied),
`config.json` with every field explicit. One `model.safetensors` when everything fits in
`max_shard_size` bytes, else `model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`.

Streaming: every shard's header is known before its data (shapes and dtypes come from the
specs), so a file is written front to back, one tensor at a time: a layer of a stacked leaf comes
from `source.read_layer` (one HF tensor or npz slice, or a whole leaf read once by sources that
cannot slice), an unstacked leaf from `source.read`. Tensors are laid out leaf-major (all layers
of one native leaf, then the next), so such a leaf is read once; it may straddle two shards.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from paligemma_jax.conversion.hf_config import to_hf_config
from paligemma_jax.conversion.hf_table import TEXT, Row, table
from paligemma_jax.conversion.safetensors_io import INDEX_FILE, SINGLE_FILE, SafetensorsWriter
from paligemma_jax.conversion.streaming import ConversionError, Source, dtype_name
from paligemma_jax.conversion.vocab import hf_rows, mean_rows

DEFAULT_MAX_SHARD_SIZE = 5 * 10**9  # transformers' "5GB"
EMBED_KEY = TEXT + "embed_tokens.weight"


@dataclasses.dataclass(frozen=True)
class _Tensor:
  key: str  # legacy HF key
  native: str  # "params/..." leaf it comes from
  layer: int | None  # index into the stacked leaf
  shape: tuple[int, ...]
  dtype: np.dtype
  row: Row

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def plan_tensors(source: Source) -> list[_Tensor]:
  """Every HF tensor, leaf-major, with its shape and dtype, from the specs alone."""
  config, specs = source.config, source.specs()
  out = []
  for row in table(config.text.version):
    native = "params/" + row.native
    if native not in specs:
      raise ConversionError(f"the source lacks the leaf {native}")
    spec = specs[native]
    dtype = np.dtype(spec.dtype)
    if row.per_layer:
      hf_shape = tuple(row.transform.hf_shape(tuple(spec.shape[1:])))
      out += [_Tensor(row.hf.format(i=i), native, i, hf_shape, dtype, row)
              for i in range(spec.shape[0])]
    else:
      hf_shape = tuple(row.transform.hf_shape(tuple(spec.shape)))
      if row.hf == EMBED_KEY:
        hf_shape = (hf_rows(config),) + hf_shape[1:]
      out.append(_Tensor(row.hf, native, None, hf_shape, dtype, row))
  return out


def plan_shards(tensors: list[_Tensor], max_shard_size: int) -> list[list[_Tensor]]:
  """Greedy, in order: a shard closes when the next tensor would push it past the limit (a
  tensor larger than the limit gets a shard of its own, as transformers does)."""
  shards: list[list[_Tensor]] = [[]]
  size = 0
  for t in tensors:
    if shards[-1] and size + t.nbytes > max_shard_size:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += t.nbytes
  return shards


def shard_names(count: int) -> list[str]:
  if count == 1:
    return [SINGLE_FILE]
  return [f"model-{k:05d}-of-{count:05d}.safetensors" for k in range(1, count + 1)]


def write_hf(source: Source, folder: str, *, max_shard_size: int = DEFAULT_MAX_SHARD_SIZE
             ) -> list[str]:
  """Writes `source` as an HF checkpoint into the new directory `folder`; returns notes."""
  if max_shard_size <= 0:
    raise ConversionError(f"max_shard_size must be positive, got {max_shard_size}")
  config = source.config
  tensors = plan_tensors(source)
  shards = plan_shards(tensors, max_shard_size)
  names = shard_names(len(shards))
  notes = []
  rows = hf_rows(config)
  if rows != config.text.vocab_size:
    notes.append(f"appended {rows - config.text.vocab_size} embedding rows (ids "
                 f"{config.text.vocab_size}..{rows - 1}: HF's <image>, a spare and padding) "
                 "filled with the mean embedding; a hub file has random rows there")
  os.makedirs(folder)
  for name, shard in zip(names, shards):
    entries = [(t.key, t.shape, t.dtype) for t in shard]
    with SafetensorsWriter(os.path.join(folder, name), entries) as writer:
      for t in shard:
        writer.write_parts(t.key, _hf_parts(t, source))
  if len(shards) > 1:
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
             "weight_map": {t.key: n for n, shard in zip(names, shards) for t in shard}}
    with open(os.path.join(folder, INDEX_FILE), "w") as f:
      json.dump(index, f, indent=2, sort_keys=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(to_hf_config(config, rows, dtype_name(_embedding_dtype(tensors))), f, indent=2)
  return notes


def _embedding_dtype(tensors: list[_Tensor]) -> np.dtype:
  return next(t.dtype for t in tensors if t.key == EMBED_KEY)


def _hf_parts(t: _Tensor, source: Source) -> list[np.ndarray]:
  """The HF tensor as consecutive row blocks (the embedding gains its padding rows here)."""
  if t.layer is not None:
    native = source.read_layer(t.native, t.layer)
  else:
    native = source.read(t.native)
  if native.dtype != t.dtype:
    raise ConversionError(f"{t.native} was declared {t.dtype} but read as {native.dtype}")
  array = t.row.transform.to_hf(native)
  if t.key == EMBED_KEY and t.shape[0] > array.shape[0]:
    return [array, mean_rows(array, t.shape[0] - array.shape[0])]
  return [array]
