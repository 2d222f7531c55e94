"""The training input as global `jax.Array` batches on the mesh's (data, fsdp) axes.

    batches = device_input(config, processor, mesh)   # this process's share, by jax.process_index()
    batch = next(batches)         # dict of jax.Array [global B, ...], rows split over data x fsdp
    state = batches.get_state()   # store it in the checkpoint; batches.set_state(state) resumes

data/ produces NumPy only (it never imports JAX); this module is the one step from host arrays to
device arrays. Each process hands `jax.make_array_from_process_local_data` its own rows; the
batch's leading axis is laid out as `sharding.batch_sharding` says (the one place that does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from paligemma_jax.data.input_config import InputConfig
from paligemma_jax.data.input_pipeline import TrainInput
from paligemma_jax.data.processor import Processor
from paligemma_jax.sharding import batch_sharding


def global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, process_count: int | None = None
                 ) -> dict[str, jax.Array]:
  """Host-local arrays [B_local, ...] -> global arrays [B_local * process_count, ...]."""
  process_count = jax.process_count() if process_count is None else process_count
  split = mesh.shape["data"] * mesh.shape["fsdp"]
  out = {}
  for name, local in batch.items():
    local = np.asarray(local)
    rows = local.shape[0] * process_count
    if rows % split:
      raise ValueError(f"global batch of {rows} rows does not divide by the mesh's data x fsdp = "
                       f"{split}; set input.batch_size to a multiple of {split}")
    out[name] = jax.make_array_from_process_local_data(
        batch_sharding(mesh, local.ndim), local, (rows, *local.shape[1:]))
  return out


class DeviceInput:
  """`TrainInput` whose batches are global `jax.Array`s on `mesh` (state and stats passed on)."""

  def __init__(self, host: TrainInput, mesh: Mesh) -> None:
    self.host = host
    self.mesh = mesh

  def __iter__(self) -> DeviceInput:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    return global_batch(next(self.host), self.mesh)

  def get_state(self) -> dict[str, Any]:
    return self.host.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.host.set_state(state)

  def stats(self) -> dict[str, float]:
    return self.host.stats()

  def summary(self) -> str:
    return self.host.summary()


def device_input(config: InputConfig, processor: Processor, mesh: Mesh) -> DeviceInput:
  """This process's share of the training input (`jax.process_index()` of
  `jax.process_count()`), as global batches on `mesh`."""
  host = TrainInput(config, processor, process_index=jax.process_index(),
                    process_count=jax.process_count())
  return DeviceInput(host, mesh)
