"""Stacked leaves of an Orbax params checkpoint, one layer at a time (for `checkpoints`).

A stacked leaf is [L, ...] (31 GB for PaliGemma2-28B's MLP), so neither side of a conversion
should hold it whole. Orbax 0.12 has no public way to save an array it is not handed whole: its
leaf handlers take materialised arrays, and a custom handler cannot be given to the partial saves
`ParamsWriter` is built on. So Orbax writes the checkpoint as usual (tree, metadata, every other
leaf) with a one-element stand-in for each stacked leaf, and after Orbax's finalize
`write_layers` replaces the stand-in's array in the checkpoint's own store (OCDBT + zarr3),
through tensorstore, with the spec Orbax's public helper builds for that array
(`ocp.type_handlers.get_json_tspec_write`) and chunks that hold one layer or part of one: what an
Orbax save gets from `StorageOptions(shard_axes=(0,), chunk_byte_size=CHUNK_BYTES)`. The result
is a plain Orbax checkpoint (same tree, metadata, codecs and store) that any Orbax restore reads.
Orbax's default chunks span every layer (it splits the largest dimension first), so one layer
could not be written or read alone; with chunks inside a layer, `open_leaf(path, name)[i].read()`
decodes layer i only.

The stand-in is checked before it is replaced, so an Orbax that stores arrays elsewhere fails
loudly instead of leaving two arrays behind.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from typing import Iterable

import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

ITEM = "state"  # the pytree's subdirectory: Orbax's name for a partially saved pytree
# Chunks of at most 32 MiB: tensorstore compresses and decodes a layer's chunks in parallel (one
# 340 MB chunk per 28B MLP layer would be one thread), and holds a few chunks, not a leaf, in
# flight. `ParamsWriter` asks Orbax for the same limit on the leaves it writes itself.
CHUNK_BYTES = 32 << 20


def _leaf_info(path: str | os.PathLike, name: str
               ) -> tuple[ocp.type_handlers.ParamInfo, bool, ts.Context]:
  """How Orbax finds leaf `name` ("params/llm/embedding") of the checkpoint at `path`; raises
  FileNotFoundError (or ValueError) when `path` has no readable pytree metadata."""
  item = os.path.join(os.path.abspath(os.fspath(path)), ITEM)
  with open(os.path.join(item, "_METADATA")) as f:
    meta = json.load(f)
  use_ocdbt = bool(meta.get("use_ocdbt"))
  context = ocp.type_handlers.get_ts_context(use_ocdbt=use_ocdbt)
  info = ocp.type_handlers.ParamInfo(  # Orbax names an array by its tree path joined with "."
      name=name.replace("/", "."), parent_dir=epath.Path(item), is_ocdbt_checkpoint=use_ocdbt,
      use_zarr3=bool(meta.get("use_zarr3")), ts_context=context)
  return info, use_ocdbt, context


def open_leaf(path: str | os.PathLike, name: str) -> ts.TensorStore:
  """Leaf `name` as a read-only tensorstore; raises ValueError if there is none."""
  info, use_ocdbt, context = _leaf_info(path, name)
  return ts.open(ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=use_ocdbt),
                 context=context, read=True).result()


def write_layers(path: str, name: str, shape: tuple[int, ...], dtype: np.dtype,
                 layers: Iterable[np.ndarray], in_flight_bytes: int = 0) -> None:
  """Replaces the one-element stand-in of `name` in the finalized checkpoint at `path` by the
  [L, ...] array whose layers `layers` yields, in order.

  The next layer is produced while earlier ones are written; a layer's write starts once those
  still in flight hold at most `in_flight_bytes` besides it. With layers larger than that, one
  is written while the next is produced: two alive at most. Smaller layers share the budget, so
  a thin leaf is not written one OCDBT commit at a time.
  """
  if open_leaf(path, name).shape != (1,) * len(shape):
    raise ValueError(f"{path}: Orbax did not store {name} where its reader looks; this Orbax "
                     "version is not supported by ParamsWriter.write_layers")
  info, use_ocdbt, context = _leaf_info(path, name)
  spec = ocp.type_handlers.get_json_tspec_write(
      info, use_ocdbt=use_ocdbt, global_shape=shape, local_shape=shape, dtype=dtype,
      arg=ocp.SaveArgs(shard_axes=(0,), chunk_byte_size=CHUNK_BYTES))
  store = ts.open(spec, create=True, delete_existing=True, context=context).result()
  pending: collections.deque = collections.deque()  # (write, bytes), oldest first
  try:
    for i, layer in enumerate(layers):
      while pending and sum(n for _, n in pending) + layer.nbytes > max(in_flight_bytes,
                                                                         layer.nbytes):
        pending.popleft()[0].result()  # written, and released
      pending.append((store[i].write(layer, can_reference_source_data_indefinitely=True),
                      layer.nbytes))
      del layer
    while pending:
      pending[0][0].result()
      pending.popleft()
  finally:
    for write, _ in pending:  # failing: let writes in flight settle before files are removed
      with contextlib.suppress(Exception):
        write.result()
