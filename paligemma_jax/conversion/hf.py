"""Reading HF PaliGemma checkpoint folders (config.json + safetensors) as native leaves.

`HFSource` checks the whole checkpoint from its headers before any data is read: every tensor of
the table present with its shape, no unused tensor, an lm_head only if tied. A stacked native
leaf is assembled from its L per-layer tensors, one at a time. `load_hf_checkpoint` reads every
leaf into a params tree.

The model follows the checkpoint's config unless overridden, e.g.
`load_hf_checkpoint(path, **{"text.sliding_window": None})`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from paligemma_jax.conversion import buffers
from paligemma_jax.conversion.hf_config import config_from_hf, read_hf_config
from paligemma_jax.conversion.hf_table import LM_HEAD, TEXT, VISION, Row, canonical_key, table
from paligemma_jax.conversion.safetensors_io import CheckpointError, SafetensorsReader
from paligemma_jax.conversion.streaming import (DTYPE_NAMES, Source, Specs, check_specs,
                                                native_specs)
from paligemma_jax.models import PaliGemmaConfig

__all__ = ["HFSource", "config_from_hf", "load_hf_checkpoint", "read_hf_config"]

EMBEDDING = "params/llm/embedding"


class HFSource(Source):
  """Native leaves of an HF checkpoint folder, in the checkpoint's storage dtypes."""

  def __init__(self, folder: str):
    self.folder = folder
    self.reader = SafetensorsReader(folder)
    present: dict[str, str] = {}
    for original in self.reader.keys():
      key = canonical_key(original)
      if key in present:
        raise CheckpointError(f"{folder} holds {present[key]} and {original}, the same tensor "
                              "under two key layouts; keep one")
      present[key] = original
    shapes = {k: self.reader.shape(orig) for k, orig in present.items()}  # headers only
    _require(shapes, present)
    config = config_from_hf(read_hf_config(folder), shapes)
    stored = self.reader.np_dtype(present[TEXT + "embed_tokens.weight"]).name
    stored = stored if stored in DTYPE_NAMES else "float32"
    self.config = config.replace(param_dtype=stored, dtype=stored)
    self._present = present
    self._rows: dict[str, Row] = {}
    self._specs: Specs = {}
    unused = dict(present)
    for key, spec in native_specs(self.config).items():
      row = _ROWS[self.config.text.version][key.removeprefix("params/")]
      dtypes = {self._check(unused, row, hf_key, shape)
                for hf_key, shape in _hf_tensors(row, spec.shape)}
      if len(dtypes) > 1:
        raise CheckpointError(f"the layers of {row.hf} are stored in mixed dtypes "
                              f"{sorted(d.name for d in dtypes)}; re-export the checkpoint")
      self._rows[key] = row
      self._specs[key] = jax.ShapeDtypeStruct(spec.shape, dtypes.pop())
    self._head = unused.pop(LM_HEAD, None)
    if unused:
      first = sorted(unused.values())[0]
      raise CheckpointError(f"the checkpoint has {len(unused)} tensor(s) this model does not use, "
                            f"e.g. {first}; is it a PaliGemma checkpoint of a supported layout?")

  def _check(self, unused: dict[str, str], row: Row, key: str, native_shape: tuple[int, ...]
             ) -> np.dtype:
    if key not in self._present:
      raise CheckpointError(f"the checkpoint lacks {key} (needed for {row.native}); "
                            "it is not a complete PaliGemma checkpoint")
    original = unused.pop(key)
    want = tuple(row.transform.hf_shape(native_shape))
    got = self.reader.shape(original)
    if got != want:
      raise CheckpointError(f"{original} has shape {got}, expected {want} for {row.native} "
                            f"{native_shape} (transform {row.transform.name})")
    return self.reader.np_dtype(original)

  def specs(self) -> Specs:
    return dict(self._specs)

  def read(self, key: str) -> np.ndarray:
    row, spec = self._rows[key], self._specs[key]
    if row.per_layer:
      out = buffers.empty(spec.shape, spec.dtype)
      for i in range(spec.shape[0]):
        out[i] = self._read_hf(row, row.hf.format(i=i), spec.shape[1:])
    else:
      out = buffers.aligned(self._read_hf(row, row.hf, spec.shape))
    if key == EMBEDDING:
      self._check_tied_head(out)
    return out

  def read_layer(self, key: str, layer: int) -> np.ndarray:
    row, spec = self._rows[key], self._specs[key]
    if not row.per_layer:
      raise ValueError(f"{key} is not a stacked leaf")
    return self._read_hf(row, row.hf.format(i=layer), spec.shape[1:])

  def _read_hf(self, row: Row, key: str, native_shape: tuple[int, ...]) -> np.ndarray:
    return row.transform.to_native(self.reader.read(self._present[key]), native_shape)

  def _check_tied_head(self, embedding: np.ndarray) -> None:
    """An lm_head is accepted only when it equals the (tied) embedding."""
    if self._head is None:
      return
    head = self.reader.read(self._head)
    if head.shape != embedding.shape or not np.array_equal(head.astype(embedding.dtype),
                                                           embedding):
      raise CheckpointError("lm_head.weight differs from the token embedding; untied output "
                            "heads are not supported (PaliGemma ties them)")

  def close(self) -> None:
    self.reader.__exit__()


_ROWS = {v: {row.native: row for row in table(v)} for v in (1, 2)}


def _hf_tensors(row: Row, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
  """(HF key, native shape of what it holds) for each tensor behind a native leaf."""
  if row.per_layer:
    return [(row.hf.format(i=i), tuple(shape[1:])) for i in range(shape[0])]
  return [(row.hf, tuple(shape))]


def _require(shapes: dict[str, tuple[int, ...]], present: dict[str, str]) -> None:
  """The tensors the config is inferred from must exist before anything else is read."""
  for key in (VISION + "embeddings.patch_embedding.weight",
              VISION + "embeddings.position_embedding.weight",
              VISION + "encoder.layers.0.mlp.fc1.weight", TEXT + "embed_tokens.weight",
              TEXT + "layers.0.self_attn.q_proj.weight", TEXT + "layers.0.self_attn.k_proj.weight",
              TEXT + "layers.0.mlp.gate_proj.weight"):
    if key not in shapes:
      raise CheckpointError(f"the checkpoint lacks {key}; it is not a PaliGemma checkpoint "
                            f"(found e.g. {sorted(present.values())[:1]})")


def load_hf_checkpoint(folder: str, *, param_dtype: str | None = None, dtype: str | None = None,
                       **overrides: Any) -> tuple[PaliGemmaConfig, dict]:
  """Returns (config, {"params": ...}) from an HF checkpoint folder.

  param_dtype defaults to the checkpoint's storage dtype, dtype (compute) to param_dtype.
  `overrides` are `PaliGemmaConfig.replace` fields such as `text.final_logit_softcap=None`.
  Every tensor's shape is checked; a missing or unused tensor is an error naming it.
  """
  with HFSource(folder) as source:
    param_dtype = param_dtype or source.config.param_dtype
    config = source.config.replace(param_dtype=param_dtype, dtype=dtype or param_dtype,
                                   **overrides)
    check_specs(source.specs(), config, folder)  # an override may have changed a shape
    np_dtype = jnp.dtype(config.param_dtype)
    flat = {key: source.read(key).astype(np_dtype, copy=False) for key in source.specs()}
  params = traverse_util.unflatten_dict(flat, sep="/")
  return config, jax.device_put(params)
