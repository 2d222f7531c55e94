"""Pretrained params read straight into their sharded layout, whatever the checkpoint's format.

    stored, params = read_sharded(path, mesh, dtype, variant)   # Orbax params, HF folder, npz
    params = place_source(source, shardings, dtype)             # any conversion `Source`

Orbax params checkpoints are restored by Orbax into their shards. HF folders and big_vision npz
files go through the converter's streaming sources (`conversion.open_source`): one unstacked
leaf, or one layer of a stacked [L, ...] leaf, is read on the host in its stored dtype, each
device in turn takes (and casts) its slice of it, and a stacked leaf's layer is written into its
place in the sharded leaf on the devices (a donated in-place update). So the host holds about
one stored leaf or layer at a time, never the model; the devices hold the model once plus one
layer. Measured (benchmarks/pretrained_init_memory.py; PaliGemma 3B widths, 2 layers, 257,216
rows; bf16 HF -> float32 on 8 CPU devices, whose buffers are host memory too): peak RSS over
imports 3.5 GB for 3.15 GB of placed params on a 1x4x2 mesh (the old host copy + `device_put`:
7.5 GB), 6.7 GB for 6.3 GB on 2x2x2 (old: 9.6 GB).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paligemma_jax import checkpoints, sharding
from paligemma_jax.conversion import ConversionError, Source, detect_format, open_source
from paligemma_jax.conversion import buffers
from paligemma_jax.conversion.streaming import floating, nbytes, stacked
from paligemma_jax.models import PaliGemmaConfig

TRIM_BYTES = 16 << 20  # leaves from this size on give their freed host memory back at once


def read_sharded(path: str, mesh: Mesh, dtype: str = "float32",
                 variant: str | PaliGemmaConfig | None = None) -> tuple[PaliGemmaConfig, dict]:
  """(the checkpoint's config with `param_dtype` = `dtype`, its {"params": ...} in `dtype` on
  `sharding.param_shardings(config, mesh)`).

  `variant` (a name or a config, ignored for HF and Orbax, which carry their config) completes
  an npz: the file's shapes must be the variant's (a 224 file with a 224 variant; the caller
  resamples to another size). Without it the shapes must match a published variant or leave
  nothing ambiguous. Quantized and LoRA adapters checkpoints are refused.
  """
  fmt = detect_format(path)
  if fmt == "orbax":
    return _read_orbax(path, mesh, dtype)
  with _open(path, fmt, variant) as source:
    config = source.config.replace(param_dtype=dtype, dtype=dtype)
    return config, place_source(source, sharding.param_shardings(config, mesh), dtype)


def place_source(source: Source, shardings: dict, dtype: str | None = None) -> dict:
  """{"params": ...} of `source`'s leaves as jax.Arrays on `shardings` (a params-shaped tree
  of NamedShardings), floating leaves cast to `dtype` (None: as stored): unstacked leaves read
  whole, stacked ones ("/layers/" in the key) layer by layer, each dropped from the host once
  placed. The cast is done per device slice, so a bfloat16 leaf loaded as float32 is never
  on the host in float32 as a whole (numpy's cast, round to nearest even, as `CastSource`)."""
  targets = traverse_util.flatten_dict(shardings, sep="/")
  specs = source.specs()
  if set(targets) != set(specs):
    extra = sorted(set(targets) ^ set(specs))
    raise ConversionError(f"the shardings and the checkpoint disagree on {extra[0]}")
  placed = {}
  for key, spec in specs.items():
    want = np.dtype(dtype) if dtype is not None and floating(spec.dtype) else np.dtype(spec.dtype)
    if stacked(key):
      placed[key] = _place_layers(source, key, jax.ShapeDtypeStruct(spec.shape, want),
                                  targets[key])
    else:
      placed[key] = _place(source.read(key), targets[key], want)
    if nbytes(spec) >= TRIM_BYTES:  # a collection costs ~0.2 s with torch loaded: big leaves
      buffers.release_freed_memory()  # give the host copy back before the next leaf is read
  return traverse_util.unflatten_dict(placed, sep="/")


def _place(array: np.ndarray, target: NamedSharding, dtype: np.dtype) -> jax.Array:
  """`array` on `target` in `dtype`: each device receives (and casts) only its slice.

  One device at a time, each transfer finished before the next slice is cut: unlike
  `jax.make_array_from_callback`, which cuts every device's slice first, the host never holds
  more than `array` and one (cast) slice, however many devices hold a replica.
  """
  pieces = []
  for device, index in target.addressable_devices_indices_map(array.shape).items():
    piece = array[index]
    piece = jax.device_put(piece if piece.dtype == dtype else piece.astype(dtype), device)
    pieces.append(piece.block_until_ready())
  return jax.make_array_from_single_device_arrays(array.shape, target, pieces)


def _place_layers(source: Source, key: str, spec: jax.ShapeDtypeStruct,
                  target: NamedSharding) -> jax.Array:
  """A stacked leaf built on the devices from its layers, one layer on the host at a time."""
  layer_target = NamedSharding(target.mesh, PartitionSpec(*tuple(target.spec)[1:]))
  out = jnp.zeros(spec.shape, spec.dtype, device=target)
  for layer in range(spec.shape[0]):
    piece = _place(source.read_layer(key, layer), layer_target, np.dtype(spec.dtype))
    out = _set_layer(out, piece, np.int32(layer))
  if out.sharding != target:
    out = jax.device_put(out, target)
  return out


# Donated: XLA writes the layer into the leaf in place instead of holding two copies of it. One
# function for every leaf, so leaves of one shape and sharding share a compilation.
@functools.partial(jax.jit, donate_argnums=0)
def _set_layer(out_LX: jax.Array, layer_X: jax.Array, i: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_index_in_dim(out_LX, layer_X, i, 0)


def _open(path: str, fmt: str, variant: str | PaliGemmaConfig | None) -> Source:
  if fmt != "npz":
    return open_source(path, fmt)
  try:
    return open_source(path, "npz", variant)
  except ConversionError as e:
    if variant is not None:
      raise
    raise ConversionError(f"config.init {path} is a big_vision npz whose shapes do not tell its "
                          "variant; set config.model.variant (e.g. paligemma2_28b_224)") from e


def _read_orbax(path: str, mesh: Mesh, dtype: str) -> tuple[PaliGemmaConfig, dict]:
  stored = checkpoints.read_config(path)
  if stored.quantization is not None:
    raise ValueError(f"config.init {path} holds {stored.quantization.kind} params; fine-tune "
                     "from the unquantized checkpoint (QLoRA: config.lora.quantize quantizes it)")
  if stored.lora is not None:
    raise ValueError(f"config.init {path} is a LoRA adapters checkpoint; start from its base "
                     f"{stored.lora.base or '(none recorded)'}, or merge it first "
                     "(convert_checkpoint.py --merge_lora)")
  stored = stored.replace(param_dtype=dtype)
  _, params = checkpoints.load_params(path, shardings=sharding.param_shardings(stored, mesh),
                                      dtype=dtype)
  return stored, params
