"""Decoding on device: prefill the prompt into an explicit KV cache, then one token per step
inside `lax.while_loop`, the token chosen by a `Sampler` (greedy, temperature, top-k, top-p).

Prompts are left-padded (the processor's default), so every row's last prompt token sits in the
last column and all rows write the cache at the same index. Letters: B batch, S prompt length,
N new tokens, C = S + N cache length, V vocab.

`prefill`, `feed` and `DecodeState` are the steps that beam search (beam.py) shares.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from paligemma_jax.inference.sampling import GREEDY, Sampler, choose_tokens, token_logprobs
from paligemma_jax.models import (KVCache, PaliGemma, PaliGemmaConfig, attention_masks,
                                  default_positions, unstack_layers)


@flax.struct.dataclass
class DecodeState:
  """What a decode step needs besides the token: the cache and where each row may look."""
  cache: KVCache  # written up to cache.length (the next write index, the same for all rows)
  keys_BxC: jax.Array  # bool: the cache slots each row attends (its prompt + tokens fed so far)
  positions_B: jax.Array  # int32: position id of the last token written to the cache

  def take(self, rows_R: jax.Array) -> "DecodeState":
    """The state of rows `rows_R` (int [R]): beam expansion and reordering."""
    cache = KVCache(k=self.cache.k[:, rows_R], v=self.cache.v[:, rows_R],
                    length=self.cache.length)
    return DecodeState(cache, self.keys_BxC[rows_R], self.positions_B[rows_R])


def prefill(model: PaliGemma, params: dict, tokens_BxS: jax.Array, images: jax.Array | None,
            input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array, max_new_tokens: int,
            layers: list[dict] | None = None) -> tuple[jax.Array, DecodeState]:
  """Runs the prompt through the model into a cache of S + N slots.

  Returns the float32 logits [B, V] that predict the first new token, and the state. `layers`:
  see `prompt_hidden`.
  """
  h_BxSxD, state = prompt_hidden(model, params, tokens_BxS, images, input_mask_BxS, mask_ar_BxS,
                                 max_new_tokens, layers)
  # Only the last prompt position's logits are needed (prompts are left-padded).
  logits_Bx1xV = model.apply(params, h_BxSxD[:, -1:], method=PaliGemma.logits)
  return logits_Bx1xV[:, 0], state


def prompt_hidden(model: PaliGemma, params: dict, tokens_BxS: jax.Array,
                  images: jax.Array | None, input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array,
                  max_new_tokens: int, layers: list[dict] | None = None
                  ) -> tuple[jax.Array, DecodeState]:
  """The final hidden states [B, S, D] of a prompt, and the decode state of its cache.

  `layers` (from `decode_layers`) runs the decoder layers unrolled over per-layer params, and
  then the image encoder's layers too (on CPU its stacks would otherwise be widened to f32 all
  at once).
  """
  config = model.config
  b, s = tokens_BxS.shape
  image_tokens = None
  if images is not None:
    vision_layers = None if layers is None else unstack_layers(params, "vision")
    image_tokens = model.apply(params, images, vision_layers, method=PaliGemma.encode_images)
  x_BxSxD = model.apply(params, tokens_BxS, image_tokens, method=PaliGemma.embed_inputs)
  positions_BxS = default_positions(input_mask_BxS, config.position_offset)
  mask_BxSxS, sliding = attention_masks(config, input_mask_BxS, mask_ar_BxS)
  future = lambda m: None if m is None else jnp.pad(m, ((0, 0), (0, 0), (0, max_new_tokens)))
  cache = KVCache.zeros(config.text, b, s + max_new_tokens, config.compute_dtype)
  h_BxSxD, cache = model.apply(params, x_BxSxD, positions_BxS, future(mask_BxSxS),
                               future(sliding), cache, layers, method=PaliGemma.decode_hidden)
  keys_BxC = jnp.pad(input_mask_BxS.astype(bool), ((0, 0), (0, max_new_tokens)))
  return h_BxSxD, DecodeState(cache, keys_BxC, positions_BxS[:, -1])


def _embed_text(model: PaliGemma, tokens_BxT: jax.Array) -> jax.Array:
  """Embeddings of generated tokens. They are text: a generated `<image>` id (HF checkpoints have
  a row for it) is embedded as its own row, as HF's decode steps do, not as a placeholder."""
  return model.llm.embed(tokens_BxT)


def decode_layers(params: dict, unroll: bool | None) -> list[dict] | None:
  """Per-layer params for the decode steps, or None to run the scanned layers.

  Scanned steps make XLA:CPU copy every layer's weights out of the stack on each step. None
  picks unrolled on CPU, where that copy is most of a step (measured ~5x), and scanned elsewhere
  (compile time does not grow with depth). On CPU the bf16 and int8 weights are
  `cpu_matmul.LayerSlice`s, which the kernels read where they lie in the stack (plain slices
  taken by the decode loop were copied once per call). The prefill uses them too, widening a layer's weights to f32 when the
  layer runs: a scanned prefill widened every layer at once, and so did an unrolled one over
  plain slices (XLA scheduled all the converts first); see `LayerSlice.widen`.
  """
  if unroll is None:
    unroll = jax.default_backend() == "cpu"
  return unstack_layers(params) if unroll else None


def feed(model: PaliGemma, params: dict, tokens_B: jax.Array, state: DecodeState,
         layers: list[dict] | None = None) -> tuple[jax.Array, DecodeState]:
  """Writes one token per row into the cache; returns the logits [B, V] of the next token.

  `layers` (from `decode_layers`) runs the layers unrolled over per-layer params.
  """
  index = state.cache.length
  keys_BxC = state.keys_BxC.at[:, index].set(True)
  positions_B = state.positions_B + 1
  x_Bx1xD = model.apply(params, tokens_B[:, None], method=_embed_text)
  mask_Bx1xC = keys_BxC[:, None, :]
  window = model.config.text.sliding_window
  sliding = None
  if window is not None:  # decoded tokens are never in the prefix block: a plain window
    sliding = mask_Bx1xC & ((index - jnp.arange(keys_BxC.shape[1])) < window)[None, None]
  args = (x_Bx1xD, positions_B[:, None], mask_Bx1xC, sliding, state.cache)
  if layers is None:
    logits_Bx1xV, cache = model.apply(params, *args, method=PaliGemma.decode)
  else:
    logits_Bx1xV, cache = model.apply(params, layers, *args, method=PaliGemma.decode_unrolled)
  return logits_Bx1xV[:, 0], DecodeState(cache, keys_BxC, positions_B)


class Generation(NamedTuple):
  """Output of `decode_tokens`; after a row's eos its tokens are `pad_id` and log-probs 0."""
  tokens: jax.Array  # int32 [B, N]
  logprobs: jax.Array  # float32 [B, N]: log p(token) under the model (before any warping)
  logits: jax.Array | None  # float32 [B, N, V] when keep_logits, else None


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "pad_id", "sampler",
                                             "keep_logits", "unroll_layers"))
def decode_tokens(params: dict, tokens_BxS: jax.Array, images: jax.Array | None,
                  input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array, rng: jax.Array | None = None,
                  *, config: PaliGemmaConfig, max_new_tokens: int, eos_id: int, pad_id: int = 0,
                  sampler: Sampler = GREEDY, keep_logits: bool = False,
                  unroll_layers: bool | None = None) -> Generation:
  """N new tokens per row of a left-padded prompt batch, stopping when every row has hit eos.

  `eos_id` is traced (a new eos does not recompile); -1 means none. Step n draws with
  `fold_in(rng, n)` (rows: see `choose_tokens`); greedy needs no `rng`. `unroll_layers`: see
  `decode_layers` (None: unrolled on CPU).
  """
  model = PaliGemma(config)
  b, n = tokens_BxS.shape[0], max_new_tokens
  layers = decode_layers(params, unroll_layers)
  logits_BxV, decode_state = prefill(model, params, tokens_BxS, images, input_mask_BxS,
                                     mask_ar_BxS, n, layers)

  def record(step, logits_BxV, out: Generation, done_B):
    """Chooses the tokens of `step` from its logits and writes them out."""
    key = None if rng is None else jax.random.fold_in(rng, step)
    chosen_B = choose_tokens(logits_BxV, sampler, key)
    token_B = jnp.where(done_B, pad_id, chosen_B)
    logprob_B = jnp.where(done_B, 0.0, token_logprobs(logits_BxV, token_B))
    out = Generation(out.tokens.at[:, step].set(token_B), out.logprobs.at[:, step].set(logprob_B),
                     None if out.logits is None else out.logits.at[:, step].set(logits_BxV))
    return out, done_B | (token_B == eos_id)

  def body(carry):
    """Feeds the last token through the decoder and records the next one."""
    step, out, done_B, decode_state = carry
    logits_BxV, decode_state = feed(model, params, out.tokens[:, step], decode_state, layers)
    out, done_B = record(step + 1, logits_BxV, out, done_B)
    return step + 1, out, done_B, decode_state

  # N tokens need N - 1 decoder steps after the prefill: the last token is recorded, not fed.
  def cond(carry):
    step, _, done_B, _ = carry
    return (step < n - 1) & ~jnp.all(done_B)

  empty = Generation(jnp.full((b, n), pad_id, jnp.int32), jnp.zeros((b, n), jnp.float32),
                     jnp.zeros((b, n, logits_BxV.shape[-1]), jnp.float32) if keep_logits else None)
  out, done_B = record(jnp.int32(0), logits_BxV, empty, jnp.zeros((b,), bool))
  _, out, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), out, done_B, decode_state))
  return out


def greedy_generate(params: dict, tokens_BxS: jax.Array, images: jax.Array | None,
                    input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array, *,
                    config: PaliGemmaConfig, max_new_tokens: int, eos_id: int, pad_id: int = 0
                    ) -> tuple[jax.Array, jax.Array]:
  """Returns (new tokens [B, N], their logits [B, N, V]); after eos a row holds `pad_id`."""
  out = decode_tokens(params, tokens_BxS, images, input_mask_BxS, mask_ar_BxS, config=config,
                      max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                      keep_logits=True)
  return out.tokens, out.logits


def check_prompt_batch(batch: dict, max_new_tokens: int) -> None:
  """One-line errors for what decoding cannot take: no new tokens, right-padded prompts."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  if not np.asarray(batch["input_mask"])[:, -1].all():
    raise ValueError("prompts must be left-padded for decoding: build the batch with "
                     "padding_side='left'")


def as_key(seed: int | jax.Array) -> jax.Array:
  """A jax.random key from an int seed (or a key, returned as is)."""
  return jax.random.key(seed) if isinstance(seed, (int, np.integer)) else seed


def generate(config: PaliGemmaConfig, params: dict, batch: dict, max_new_tokens: int,
             eos_id: int, *, sampler: Sampler = GREEDY, seed: int | jax.Array = 0,
             return_logprobs: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """Continuation [B, max_new_tokens] of a left-padded, prompt-only processor batch.

  Greedy by default; `sampler=Sampler("sample", temperature=..., top_k=..., top_p=...)` samples,
  reproducibly for a given `seed` (an int or a jax.random key). After a row's eos it holds pad
  (0). With `return_logprobs`, also returns each token's model log-probability [B, N] (0 after
  eos): their sum over a row is the sequence's log-likelihood.
  """
  check_prompt_batch(batch, max_new_tokens)
  rng = None if sampler.kind == "greedy" else as_key(seed)
  out = decode_tokens(params, batch["tokens"], batch["images"], batch["input_mask"],
                      batch["mask_ar"], rng, config=config, max_new_tokens=max_new_tokens,
                      eos_id=eos_id, sampler=sampler)
  if return_logprobs:
    return np.asarray(out.tokens), np.asarray(out.logprobs)
  return np.asarray(out.tokens)
