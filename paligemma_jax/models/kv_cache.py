"""The decoder's KV cache: an explicit pytree passed into the model and returned updated.

Letters: L layers, B batch, S cache length (prompt + generated tokens), K kv heads, H head dim.
All rows write at the same index (`length`): decoders align prompts so that this holds.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from paligemma_jax.models.config import GemmaConfig


@flax.struct.dataclass
class KVCache:
  k: jax.Array  # [L, B, S, K, H]
  v: jax.Array  # [L, B, S, K, H]
  length: jax.Array  # int32 scalar: positions written so far (the next write index)

  @classmethod
  def zeros(cls, config: GemmaConfig, batch: int, max_len: int,
            dtype: jnp.dtype = jnp.bfloat16) -> "KVCache":
    shape = (config.depth, batch, max_len, config.num_kv_heads, config.head_dim)
    return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
               length=jnp.zeros((), jnp.int32))

  @property
  def max_len(self) -> int:
    return self.k.shape[2]
