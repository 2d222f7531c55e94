"""Decoding a prompt batch split over a mesh: the one pad / shard / decode path that `Pipeline`
and the evaluators' predict functions share.

    ids_BxN, logprob_B = generate_on_mesh(params, batch, mesh, config=config, max_new_tokens=32,
                                          eos_id=tok.eos_id, pad_id=tok.pad_id)

The batch (the processor's prompt arrays, B rows, left-padded) is padded with copies of its last
row to a multiple of the mesh's data x fsdp devices, sharded along its rows, decoded (greedy,
sampled or beam search) and cut back to its B rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from paligemma_jax import sharding
from paligemma_jax.inference.beam import BeamSearch, beam_search
from paligemma_jax.inference.decode import decode_tokens
from paligemma_jax.inference.sampling import GREEDY, Sampler
from paligemma_jax.models import PaliGemmaConfig

PROMPT_KEYS = ("tokens", "images", "input_mask", "mask_ar")


def pad_to_devices(batch: Mapping[str, Any], keys: tuple[str, ...], split: int
                   ) -> tuple[dict[str, np.ndarray], int]:
  """The arrays under `keys`, padded with copies of the last row to a multiple of `split`;
  and the original row count."""
  n = len(batch["tokens"])
  extra = -n % split
  out = {}
  for key in keys:
    value = np.asarray(batch[key])
    out[key] = np.concatenate([value, np.repeat(value[-1:], extra, 0)]) if extra else value
  return out, n


def shard_rows(batch: Mapping[str, Any], keys: tuple[str, ...], mesh: jax.sharding.Mesh
               ) -> tuple[dict[str, jax.Array], int]:
  """The arrays under `keys` padded to the mesh's data x fsdp devices and sharded along their
  rows (call inside `sharding.activate(mesh)`); and the original row count."""
  arrays, n = pad_to_devices(batch, keys, mesh.shape["data"] * mesh.shape["fsdp"])
  return sharding.shard_batch(arrays, mesh), n


def generate_on_mesh(params: Any, batch: Mapping[str, Any], mesh: jax.sharding.Mesh, *,
                     config: PaliGemmaConfig, max_new_tokens: int, eos_id: int, pad_id: int,
                     sampler: Sampler = GREEDY, rng: jax.Array | None = None,
                     beam: BeamSearch | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Each row's new ids int32 [B, max_new_tokens] (pads after its eos) and log-probability [B]
  (the sum of its tokens'; with `beam`, the best beam's ids and score).

  `params` are already placed on `mesh` (`sharding.param_shardings`); `rng` only for sampling.
  """
  with sharding.activate(mesh):
    arrays, n = shard_rows(batch, PROMPT_KEYS, mesh)
    args = (params,) + tuple(arrays[k] for k in PROMPT_KEYS)
    if beam is not None:
      out = beam_search(*args, config=config, max_new_tokens=max_new_tokens, eos_id=eos_id,
                        beam=beam)
      return np.asarray(out.tokens[:n, 0]), np.asarray(out.scores[:n, 0])
    out = decode_tokens(*args, rng, config=config, max_new_tokens=max_new_tokens, eos_id=eos_id,
                        pad_id=pad_id, sampler=sampler)
    return np.asarray(out.tokens[:n]), np.asarray(out.logprobs[:n]).sum(-1)
