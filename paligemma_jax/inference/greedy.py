"""Greedy decoding on device: prefill the prompt into an explicit KV cache, then one token per
step inside `lax.while_loop`, stopping when every row has emitted eos.

Prompts are left-padded (the processor's default), so every row's last prompt token sits in the
last column and all rows write the cache at the same index. Letters: B batch, S prompt length,
N new tokens, C = S + N cache length, V vocab.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from paligemma_jax.models import (KVCache, PaliGemma, PaliGemmaConfig, attention_masks,
                                  default_positions)


def _window(mask_BxTxC: jax.Array, query_index_T: jax.Array, window: int | None):
  """The sliding-window variant of a decode-step mask (decoded tokens are never in the prefix)."""
  if window is None:
    return None
  keys_C = jnp.arange(mask_BxTxC.shape[-1])
  return mask_BxTxC & ((query_index_T[:, None] - keys_C[None, :]) < window)[None]


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "eos_id", "pad_id"))
def greedy_generate(params: dict, tokens_BxS: jax.Array, images: jax.Array | None,
                    input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array, *,
                    config: PaliGemmaConfig, max_new_tokens: int, eos_id: int, pad_id: int = 0
                    ) -> tuple[jax.Array, jax.Array]:
  """Returns (new tokens [B, N], their logits [B, N, V]); after eos a row holds `pad_id`."""
  model = PaliGemma(config)
  b, s = tokens_BxS.shape
  c = s + max_new_tokens
  window = config.text.sliding_window

  image_tokens = None if images is None else model.apply(
      params, images, method=PaliGemma.encode_images)
  x_BxSxD = model.apply(params, tokens_BxS, image_tokens, method=PaliGemma.embed_inputs)
  positions_BxS = default_positions(input_mask_BxS, config.position_offset)
  mask_BxSxS, sliding = attention_masks(config, input_mask_BxS, mask_ar_BxS)
  future = lambda m: None if m is None else jnp.pad(m, ((0, 0), (0, 0), (0, max_new_tokens)))
  cache = KVCache.zeros(config.text, b, c, config.compute_dtype)
  h_BxSxD, cache = model.apply(params, x_BxSxD, positions_BxS, future(mask_BxSxS),
                               future(sliding), cache, method=PaliGemma.decode_hidden)
  # Only the last prompt position's logits are needed (prompts are left-padded).
  logits_Bx1xV = model.apply(params, h_BxSxD[:, -1:], method=PaliGemma.logits)

  def record(state):
    """Picks the token of this step from the logits and writes it out."""
    step, logits_BxV, out_BxN, out_logits, done, *rest = state
    token_B = jnp.where(done, pad_id, jnp.argmax(logits_BxV, axis=-1))
    out_BxN = out_BxN.at[:, step].set(token_B)
    out_logits = out_logits.at[:, step].set(logits_BxV)
    return (step, logits_BxV, out_BxN, out_logits, done | (token_B == eos_id), *rest)

  def advance(state):
    """Feeds this step's token through the decoder: the logits of the next step."""
    step, _, out_BxN, out_logits, done, cache, keys_BxC, pos_B = state
    index = s + step
    keys_BxC = keys_BxC.at[:, index].set(True)
    pos_B = pos_B + 1
    x_Bx1xD = model.apply(params, out_BxN[:, step, None], None, method=PaliGemma.embed_inputs)
    mask_Bx1xC = keys_BxC[:, None, :]
    logits_Bx1xV, cache = model.apply(
        params, x_Bx1xD, pos_B[:, None], mask_Bx1xC, _window(mask_Bx1xC, index[None], window),
        cache, method=PaliGemma.decode)
    return step + 1, logits_Bx1xV[:, 0], out_BxN, out_logits, done, cache, keys_BxC, pos_B

  # N tokens need N - 1 decoder steps after the prefill: the last token is recorded, not fed.
  def cond(state):
    step, _, _, _, done, *_ = state
    return (step < max_new_tokens - 1) & ~jnp.all(done)

  v = logits_Bx1xV.shape[-1]
  keys_BxC = jnp.pad(input_mask_BxS.astype(bool), ((0, 0), (0, max_new_tokens)))
  state = (jnp.int32(0), logits_Bx1xV[:, 0], jnp.full((b, max_new_tokens), pad_id, jnp.int32),
           jnp.zeros((b, max_new_tokens, v), jnp.float32), jnp.zeros((b,), bool), cache,
           keys_BxC, positions_BxS[:, -1])
  state = jax.lax.while_loop(cond, lambda st: advance(record(st)), state)
  _, _, out_BxN, out_logits, *_ = record(state)
  return out_BxN, out_logits


def generate(config: PaliGemmaConfig, params: dict, batch: dict, max_new_tokens: int,
             eos_id: int) -> np.ndarray:
  """Greedy continuation [B, max_new_tokens] of a left-padded, prompt-only processor batch."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if not np.asarray(batch["input_mask"])[:, -1].all():
    raise ValueError("prompts must be left-padded for decoding: build the batch with "
                     "padding_side='left'")
  tokens, _ = greedy_generate(params, batch["tokens"], batch["images"], batch["input_mask"],
                              batch["mask_ar"], config=config, max_new_tokens=max_new_tokens,
                              eos_id=eos_id)
  return np.asarray(tokens)
