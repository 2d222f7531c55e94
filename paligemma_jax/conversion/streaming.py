"""The streaming contract between checkpoint readers ("sources") and writers.

A source knows its model (`config`), declares every native leaf up front (`specs()`: flat keys
such as "params/llm/layers/attn/q/w" -> shape and stored dtype, read from headers only) and
materialises one leaf per `read(key)`. A writer pulls leaves from a source in the order its own
format needs and drops each as soon as it is written, so a conversion holds about one leaf (two
where a format stores two native leaves in one array) rather than the model.

Leaves use the native layout (see `paligemma_jax.models.param_shapes`): stacked layers on a
leading axis, kernels (in, ..., out), the patch conv HWIO.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from paligemma_jax.conversion import buffers
from paligemma_jax.conversion.safetensors_io import CheckpointError
from paligemma_jax.models import PaliGemmaConfig, param_shapes

Specs = dict[str, jax.ShapeDtypeStruct]
DTYPE_NAMES = ("float32", "bfloat16", "float16")


class ConversionError(CheckpointError):
  """A conversion that cannot go ahead as asked; the one-line message names the cause and fix."""


class Source:
  """Base class of leaf sources; subclasses set `config` and implement `specs` and `read`.

  `read_layer(key, i)` gives layer i of a stacked leaf ("layers" in its key). Formats that store
  layers separately (HF) or can read one slice (npz) override it, so writers that emit layer by
  layer (HF, npz) hold one layer, not the leaf. The default reads the whole leaf once and serves
  its layers in any order, dropping it after its last layer (writers go layer 0..L-1).
  """

  config: PaliGemmaConfig

  def specs(self) -> Specs:
    raise NotImplementedError

  def read(self, key: str) -> np.ndarray:
    raise NotImplementedError

  def read_layer(self, key: str, layer: int) -> np.ndarray:
    cache = self.__dict__.setdefault("_layer_cache", {})
    if key not in cache:
      cache[key] = self.read(key)
    leaf = cache[key]
    if layer == leaf.shape[0] - 1:
      del cache[key]
    return leaf[layer]

  def close(self) -> None:
    pass

  def __enter__(self) -> "Source":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def stacked(key: str) -> bool:
  """Whether the native leaf `key` holds one entry per layer on its leading axis."""
  return "/layers/" in key


def native_specs(config: PaliGemmaConfig) -> Specs:
  """The model's leaves ("params/..." keys) with the config's parameter dtype; no allocation."""
  return traverse_util.flatten_dict(param_shapes(config), sep="/")


def check_specs(specs: Specs, config: PaliGemmaConfig, where: str) -> None:
  """Every leaf of `config`'s model is present with its shape, and nothing else."""
  expected = native_specs(config)
  missing = sorted(set(expected) - set(specs))
  if missing:
    raise ConversionError(f"{where} lacks the leaf {missing[0]}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
  extra = sorted(set(specs) - set(expected))
  if extra:
    raise ConversionError(f"{where} has the leaf {extra[0]} which this model does not use"
                          + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
  for key, spec in expected.items():
    if tuple(specs[key].shape) != tuple(spec.shape):
      raise ConversionError(f"{where}: {key} has shape {tuple(specs[key].shape)}, expected "
                            f"{tuple(spec.shape)} for this config")


def floating(dtype: Any) -> bool:
  return jnp.issubdtype(np.dtype(dtype), jnp.floating)


def dtype_name(dtype: Any) -> str:
  return np.dtype(dtype).name


class CastSource(Source):
  """Casts every floating leaf of `source` to `dtype` as it is read (round to nearest even)."""

  def __init__(self, source: Source, dtype: str):
    if dtype not in DTYPE_NAMES:
      raise ConversionError(f"dtype {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    self.source, self.dtype = source, jnp.dtype(dtype)
    self.config = source.config.replace(param_dtype=dtype, dtype=dtype)

  def specs(self) -> Specs:
    return {k: jax.ShapeDtypeStruct(s.shape, self.dtype if floating(s.dtype) else s.dtype)
            for k, s in self.source.specs().items()}

  def read(self, key: str) -> np.ndarray:
    return self._cast(self.source.read(key))

  def read_layer(self, key: str, layer: int) -> np.ndarray:
    return self._cast(self.source.read_layer(key, layer))

  def _cast(self, array: np.ndarray) -> np.ndarray:
    if not floating(array.dtype) or array.dtype == self.dtype:
      return array
    out = buffers.empty(array.shape, self.dtype)
    out[...] = array  # numpy's cast: round to nearest even, as astype
    return out

  def close(self) -> None:
    self.source.close()


class MeteredSource(Source):
  """Calls `on_read(key, nbytes)` after each read (the progress bar); counts leaves and bytes."""

  def __init__(self, source: Source, on_read):
    self.source, self.on_read, self.config = source, on_read, source.config
    self.leaves = self.nbytes = 0

  def specs(self) -> Specs:
    return self.source.specs()

  def read(self, key: str) -> np.ndarray:
    array = self.source.read(key)
    self.leaves += 1
    self._count(key, array.nbytes)
    return array

  def read_layer(self, key: str, layer: int) -> np.ndarray:
    array = self.source.read_layer(key, layer)
    self.leaves += layer == 0
    self._count(key, array.nbytes)
    return array

  def _count(self, key: str, nbytes: int) -> None:
    self.nbytes += nbytes
    self.on_read(key, nbytes)

  def close(self) -> None:
    self.source.close()


class MemorySource(Source):
  """Leaves already in memory (a params tree): for tests and for `save` paths of small models."""

  def __init__(self, config: PaliGemmaConfig, params: dict):
    flat = traverse_util.flatten_dict(params, sep="/")
    self.config = config
    self._leaves = {k: np.asarray(v) for k, v in flat.items()}

  def specs(self) -> Specs:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in self._leaves.items()}

  def read(self, key: str) -> np.ndarray:
    return self._leaves[key]

  def read_layer(self, key: str, layer: int) -> np.ndarray:
    return self._leaves[key][layer]


class RandomSource(Source):
  """Leaves of `config`'s shapes and param dtype made from random bits when read (each unstacked
  leaf and each layer of a stacked one from its own seed, so reads repeat and `read_layer` makes
  one layer only): a model-sized checkpoint that never exists in memory, for benchmarks and
  streaming tests. The top exponent bit is cleared, so every value is finite and |x| < 2."""

  def __init__(self, config: PaliGemmaConfig):
    self.config = config
    self._specs = native_specs(config)

  def specs(self) -> Specs:
    return dict(self._specs)

  def read(self, key: str) -> np.ndarray:
    spec = self._specs[key]
    if not stacked(key):
      return self._draw(key, spec.shape, spec.dtype)
    out = buffers.empty(spec.shape, spec.dtype)
    for layer in range(spec.shape[0]):
      out[layer] = self.read_layer(key, layer)
    return out

  def read_layer(self, key: str, layer: int) -> np.ndarray:
    spec = self._specs[key]
    return self._draw(f"{key}[{layer}]", spec.shape[1:], spec.dtype)

  @staticmethod
  def _draw(seed: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    import zlib  # noqa: PLC0415 -- only this generator needs it
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    wide = dtype.itemsize == 4
    bits = rng.integers(0, 1 << (32 if wide else 16), shape,
                        dtype=np.uint32 if wide else np.uint16)
    bits &= bits.dtype.type(0xBFFFFFFF if wide else 0xBFFF)
    return bits.view(dtype)


def read_params(source: Source, dtype: Any = None) -> dict:
  """The whole `{"params": ...}` tree as host numpy (for verification and small models)."""
  flat = {}
  for key in source.specs():
    array = source.read(key)
    flat[key] = array.astype(dtype) if dtype is not None and floating(array.dtype) else array
  return traverse_util.unflatten_dict(flat, sep="/")


def nbytes(spec: jax.ShapeDtypeStruct) -> int:
  return int(np.prod(spec.shape, dtype=np.int64)) * np.dtype(spec.dtype).itemsize
