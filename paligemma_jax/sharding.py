"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters carry logical names where they are created (`models/layers.py`); activations are
constrained at block boundaries with the same vocabulary. This file is the only place that says
which mesh axis each name lands on.

Mesh axes:
  data   pure data parallelism: the batch is split, parameters are replicated.
  fsdp   the batch is split and parameters are sharded along their embedding axis (ZeRO-3 style);
         XLA all-gathers a layer's weights just before it is used.
  model  tensor parallelism: attention heads, MLP hidden units and vocabulary rows are split.

Letters in shapes follow STYLE.md (B batch, D width, F mlp, N/K heads, H head dim, V vocab).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from paligemma_jax.models import PaliGemmaConfig, param_logical_axes, param_shapes
from paligemma_jax.models.quantize import quantized_shardings

MESH_AXES = ("data", "fsdp", "model")

# logical name -> mesh axis (or axes, or None = replicated). First match wins (flax semantics).
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # -- activations --------------------------------------------------------------------------
    ("activation_batch", ("data", "fsdp")),
    ("activation_embed", None),
    # -- Gemma --------------------------------------------------------------------------------
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("q_heads", "model"),
    ("kv_heads", "model"),
    ("head_dim", None),
    ("mlp", "model"),  # also the MLP hidden activation
    # -- SigLIP -------------------------------------------------------------------------------
    ("vit_embed", "fsdp"),
    ("vit_heads", "model"),
    ("vit_head_dim", None),
    ("vit_mlp", "model"),
    # -- scan ---------------------------------------------------------------------------------
    ("layers", None),
)


def make_mesh(data: int | None = None, fsdp: int = 1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, model) mesh over `devices` (default: all); one size may be -1 (the rest).

  `data` defaults to the devices left over (-1), or 1 when another axis is -1.

  Axes are `Auto` so that `with_sharding_constraint` inside the model is a hint XLA may refine;
  `jax.make_mesh` alone would default to Explicit axes, under which the constraints fail.
  """
  devices = list(jax.devices() if devices is None else devices)
  if data is None:
    data = 1 if -1 in (fsdp, model) else -1
  sizes = [data, fsdp, model]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} model={model}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into data={data} fsdp={fsdp} "
                       f"model={model}; choose sizes whose product divides {len(devices)}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x model={sizes[2]} needs "
                     f"{math.prod(sizes)} devices, {len(devices)} are available")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def _mesh_spec(logical: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Logical names -> mesh axes by RULES; an axis that does not divide its dim is dropped.

  Dropping keeps awkward sizes loadable (PG1's single kv head, a vocab not divisible by the
  model axis) at the cost of replicating that dimension.
  """
  mesh_axes = nn.logical_to_mesh_axes(tuple(logical), RULES)
  spec = []
  for dim, axes in zip(shape, mesh_axes):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    names = tuple(a for a in names if mesh.shape[a] > 1)
    if not names or dim % math.prod(mesh.shape[a] for a in names):
      spec.append(None)
    else:
      spec.append(names[0] if len(names) == 1 else names)
  return PartitionSpec(*spec)


def param_shardings(config: PaliGemmaConfig, mesh: Mesh) -> dict:
  """NamedSharding for every parameter of `config`, as a pytree shaped like the params.

  Quantized params (`config.quantization`, models/quantize.py) take their weight's sharding for
  the integer values; their scales drop the contraction axes' sharding.
  """
  plain = config.replace(quantization=None) if config.quantization is not None else config
  shapes = param_shapes(plain)
  shardings = jax.tree.map(
      lambda spec, shape: NamedSharding(mesh, _mesh_spec(spec, shape.shape, mesh)),
      param_logical_axes(plain), shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))
  if config.quantization is None:
    return shardings
  return quantized_shardings(shardings, shapes, config.quantization)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Leading (batch) axis over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Puts every array of a host batch on the mesh, split along the batch axis.

  The batch size must divide by data x fsdp; the error says by how much to pad.
  """
  split = mesh.shape["data"] * mesh.shape["fsdp"]
  out = {}
  for name, value in batch.items():
    if value is None:
      out[name] = None
      continue
    value = np.asarray(value)
    if value.shape[0] % split:
      raise ValueError(f"batch size {value.shape[0]} of '{name}' does not divide by the mesh's "
                       f"data x fsdp = {split}; pad the batch to a multiple of {split}")
    out[name] = jax.device_put(value, batch_sharding(mesh, value.ndim))
  return out


@contextlib.contextmanager
def activate(mesh: Mesh) -> Iterator[Mesh]:
  """Within the block, jit traces see `mesh` and the model's activation constraints use RULES."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
    yield mesh
