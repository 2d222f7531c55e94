"""Scaled dot-product attention with grouped kv heads, optional logit softcap and a boolean mask.

Letters: B batch, T query length, S key length, N query heads, K kv heads, G = N // K query heads
per kv head, H head dim. Query head n uses kv head n // G (HF `repeat_kv` order, big_vision's
`B T (K G) H` rearrange).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from paligemma_jax.models.layers import cpu_upcast

# big_vision's fill value: large and finite, so a fully masked row (a padding query) softmaxes to a
# uniform, finite distribution instead of NaN.
MASK_VALUE = -2.3819763e38


def dot_product_attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array,
                          mask_BxTxS: jax.Array | None, *, scale: float,
                          softcap: float | None = None) -> jax.Array:
  """Returns attention outputs [B, T, N, H] in the dtype of `v`.

  Logits, softcap (`softcap * tanh(logits / softcap)`, after scaling and before masking) and the
  softmax are computed in float32.
  """
  b, t, n, h = q_BxTxNxH.shape
  k = k_BxSxKxH.shape[2]
  q_BxTxKxGxH = q_BxTxNxH.reshape(b, t, k, n // k, h)
  # Prefill on CPU multiplies in f32 (see `cpu_upcast`); a decode step (T = 1) reads the cache as
  # stored instead of widening all of it.
  up = cpu_upcast if t > 1 else (lambda a: a)
  logits_BxKxGxTxS = jnp.einsum("BTKGH,BSKH->BKGTS", up(q_BxTxKxGxH), up(k_BxSxKxH),
                                preferred_element_type=jnp.float32) * scale
  if softcap:
    logits_BxKxGxTxS = softcap * jnp.tanh(logits_BxKxGxTxS / softcap)
  if mask_BxTxS is not None:
    logits_BxKxGxTxS = jnp.where(mask_BxTxS[:, None, None], logits_BxKxGxTxS, MASK_VALUE)
  probs = jax.nn.softmax(logits_BxKxGxTxS, axis=-1).astype(v_BxSxKxH.dtype)
  out_BxTxKxGxH = jnp.einsum("BKGTS,BSKH->BTKGH", up(probs), up(v_BxSxKxH),
                             preferred_element_type=jnp.float32)
  return out_BxTxKxGxH.reshape(b, t, n, h).astype(v_BxSxKxH.dtype)
