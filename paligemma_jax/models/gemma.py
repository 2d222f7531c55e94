"""Gemma 1 / Gemma 2 decoder with scanned layers and an optional explicit KV cache.

Letters: B batch, T query length, S key length (T, or the cache length), D width, N query heads,
K kv heads, H head dim, F MLP dim, V vocab rows, L layers.

Parameters (scanned layers carry a leading "layers" axis of size L):
  embedding [V, D] (tied input / output embedding, stored unscaled),
  layers/pre_attn_norm/scale [D], layers/attn/{q [D, N, H], k [D, K, H], v [D, K, H],
  out [N, H, D]}/w, layers/pre_mlp_norm/scale [D], layers/mlp/{gate, up [D, F], down [F, D]}/w,
  Gemma 2 only: layers/{post_attn_norm, post_mlp_norm}/scale [D]; final_norm/scale [D].

Dropout (`GemmaConfig.dropout`, training only) sits where big_vision's Gemma puts it
(big_vision/models/ppp/gemma.py, `Block`): on each residual branch just before the add, i.e. on
the attention output (after Gemma 2's post-attention norm) and on the MLP output (before Gemma 2's
post-MLP norm); never on the embeddings, never in the image encoder. Every element is dropped
independently (big_vision's default `dropout_bdims=()`; the PaliGemma transfers keep it).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from paligemma_jax.models.attention import dot_product_attention
from paligemma_jax.models.config import GemmaConfig, LoraConfig, embed_scale
from paligemma_jax.models.kv_cache import KVCache
from paligemma_jax.models.layers import (Einsum, RMSNorm, apply_rope, einsum_f32, scan_layers,
                                         take_rows)


def _dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout of independent elements; the identity without a key (deterministic)."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class GemmaAttention(nn.Module):
  """GQA attention with RoPE on q and k, optional logit softcap, optional cache write."""

  config: GemmaConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
               kv: tuple[jax.Array, jax.Array] | None, cache_index: jax.Array | None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    cfg, dt, pdt = self.config, self.dtype, self.param_dtype
    d, n, k, h = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q_BxTxNxH = Einsum((d, n, h), ("embed", "q_heads", "head_dim"), 1, False, dt, pdt,
                       self.lora, name="q")("BTD,DNH->BTNH", x_BxTxD)
    k_BxTxKxH = Einsum((d, k, h), ("embed", "kv_heads", "head_dim"), 1, False, dt, pdt,
                       self.lora, name="k")("BTD,DKH->BTKH", x_BxTxD)
    v_BxTxKxH = Einsum((d, k, h), ("embed", "kv_heads", "head_dim"), 1, False, dt, pdt,
                       self.lora, name="v")("BTD,DKH->BTKH", x_BxTxD)
    q_BxTxNxH = apply_rope(q_BxTxNxH, positions_BxT, cfg.rope_theta)
    k_BxTxKxH = apply_rope(k_BxTxKxH, positions_BxT, cfg.rope_theta)

    if kv is not None:
      cache_k, cache_v = kv
      at = (0, cache_index, 0, 0)
      cache_k = jax.lax.dynamic_update_slice(cache_k, k_BxTxKxH.astype(cache_k.dtype), at)
      cache_v = jax.lax.dynamic_update_slice(cache_v, v_BxTxKxH.astype(cache_v.dtype), at)
      kv = (cache_k, cache_v)
      k_BxSxKxH, v_BxSxKxH = cache_k.astype(dt), cache_v.astype(dt)
    else:
      k_BxSxKxH, v_BxSxKxH = k_BxTxKxH, v_BxTxKxH

    y = dot_product_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask_BxTxS,
                              scale=cfg.attn_scale, softcap=cfg.attn_logit_softcap)
    y = Einsum((n, h, d), ("q_heads", "head_dim", "embed"), 2, False, dt, pdt,
               self.lora, name="out")("BTNH,NHD->BTD", y)
    return y, kv


class GemmaMLP(nn.Module):
  """Gated GELU: down(gelu_tanh(x @ gate) * (x @ up)); no biases."""

  config: GemmaConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    d, f, dt, pdt = self.config.width, self.config.mlp_dim, self.dtype, self.param_dtype
    proj = lambda shape, axes, name: Einsum(shape, axes, 1, False, dt, pdt, self.lora, name=name)
    gate = proj((d, f), ("embed", "mlp"), "gate")("BTD,DF->BTF", x_BxTxD)
    up = proj((d, f), ("embed", "mlp"), "up")("BTD,DF->BTF", x_BxTxD)
    hidden = (nn.gelu(gate.astype(jnp.float32), approximate=True) * up.astype(jnp.float32))
    hidden = nn.with_logical_constraint(hidden.astype(dt), ("activation_batch", None, "mlp"))
    return proj((f, d), ("mlp", "embed"), "down")("BTF,FD->BTD", hidden)


class GemmaBlock(nn.Module):
  """One decoder layer. Gemma 1: pre-norms; Gemma 2: pre- and post-norms around both branches."""

  config: GemmaConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, is_sliding: jax.Array,
               kv: tuple[jax.Array, jax.Array] | None, positions_BxT: jax.Array,
               mask_BxTxS: jax.Array, sliding_mask_BxTxS: jax.Array | None,
               cache_index: jax.Array | None, dropout_key: jax.Array | None = None):
    """`dropout_key` (this layer's, or None = deterministic) drives both branches' dropout."""
    cfg, dt, pdt = self.config, self.dtype, self.param_dtype
    attn_key = mlp_key = None
    if dropout_key is not None:
      attn_key, mlp_key = jax.random.split(dropout_key)
    norm = lambda name: RMSNorm(cfg.rms_norm_eps, "embed", dt, pdt, name=name)
    if sliding_mask_BxTxS is not None:
      mask_BxTxS = jnp.where(is_sliding, sliding_mask_BxTxS, mask_BxTxS)

    y = norm("pre_attn_norm")(x_BxTxD)
    y, kv = GemmaAttention(cfg, dt, pdt, self.lora, name="attn")(y, positions_BxT, mask_BxTxS, kv,
                                                       cache_index)
    if cfg.version == 2:
      y = norm("post_attn_norm")(y)
    x_BxTxD = x_BxTxD + _dropout(y, cfg.dropout, attn_key)

    y = GemmaMLP(cfg, dt, pdt, self.lora, name="mlp")(norm("pre_mlp_norm")(x_BxTxD))
    y = _dropout(y, cfg.dropout, mlp_key)
    if cfg.version == 2:
      y = norm("post_mlp_norm")(y)
    x_BxTxD = x_BxTxD + y
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, ("activation_batch", None, "activation_embed"))
    return x_BxTxD, kv


class Gemma(nn.Module):
  """The decoder: `embed` tokens, run the layers (`__call__`), and project to `logits`."""

  config: GemmaConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: str = "none"
  lora: LoraConfig | None = None

  def setup(self):
    cfg = self.config
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
        (cfg.vocab_size, cfg.width), self.param_dtype)
    broadcast = nn.broadcast
    self.layers = scan_layers(
        GemmaBlock, cfg.depth, self.remat,
        in_axes=(0, 0, broadcast, broadcast, broadcast, broadcast, 0),
        config=cfg, dtype=self.dtype, param_dtype=self.param_dtype, lora=self.lora)
    self.final_norm = RMSNorm(cfg.rms_norm_eps, "embed", self.dtype, self.param_dtype)

  def embed(self, tokens_BxT: jax.Array) -> jax.Array:
    """Embedding rows times sqrt(D) rounded to the parameter dtype, in the compute dtype."""
    rows = take_rows(self.embedding, tokens_BxT)
    return (rows * embed_scale(self.config.width, rows.dtype)).astype(self.dtype)

  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
               sliding_mask_BxTxS: jax.Array | None = None, cache: KVCache | None = None,
               deterministic: bool = True) -> tuple[jax.Array, KVCache | None]:
    """Runs all layers and the final norm. Returns hidden states [B, T, D] and the cache.

    With a cache, the T new keys/values are written at `cache.length` and the masks are
    [B, T, cache.max_len]; without one they are [B, T, T]. `sliding_mask` (the window mask of
    `masks.sliding_window_mask`) replaces `mask` on even layers when the config has a window.
    `deterministic=False` with `config.dropout > 0` applies dropout (training); it draws one key
    from the "dropout" rng and gives each layer its own split of it.
    """
    cfg = self.config
    if cfg.sliding_window is None:
      sliding_mask_BxTxS = None
    elif sliding_mask_BxTxS is None:
      raise ValueError("this Gemma config has a sliding window: pass sliding_mask as well")
    is_sliding_L = (jnp.arange(cfg.depth) % 2 == 0) & (cfg.sliding_window is not None)
    kv = None if cache is None else (cache.k, cache.v)
    index = None if cache is None else cache.length
    keys_L = None
    if not deterministic and cfg.dropout > 0.0:
      keys_L = jax.random.split(self.make_rng("dropout"), cfg.depth)
    x_BxTxD = nn.with_logical_constraint(
        x_BxTxD.astype(self.dtype), ("activation_batch", None, "activation_embed"))
    x_BxTxD, kv = self.layers(x_BxTxD, is_sliding_L, kv, positions_BxT, mask_BxTxS,
                              sliding_mask_BxTxS, index, keys_L)
    if cache is not None:
      cache = KVCache(k=kv[0], v=kv[1], length=cache.length + x_BxTxD.shape[1])
    return self.final_norm(x_BxTxD), cache

  def unrolled(self, layers: Sequence[dict], x_BxTxD: jax.Array, positions_BxT: jax.Array,
               mask_BxTxS: jax.Array, sliding_mask_BxTxS: jax.Array | None, cache: KVCache
               ) -> tuple[jax.Array, KVCache]:
    """`__call__` with a cache, one layer at a time over per-layer params (`unstack_layers`).

    The same math as the scanned layers. Inside a decode loop XLA:CPU copies each layer's slice
    of the stacked weights on every step (a full extra pass over the weights); per-layer params
    made outside the loop are not, which makes CPU decode steps ~5x faster (and on CPU they are
    `cpu_matmul.LayerSlice`s, read in place in the stack).
    """
    cfg = self.config
    block = GemmaBlock(cfg, self.dtype, self.param_dtype, self.lora, parent=None)  # applied functionally
    if cfg.sliding_window is None:
      sliding_mask_BxTxS = None
    k, v = cache.k, cache.v
    for i, layer in enumerate(layers):
      is_sliding = jnp.bool_(i % 2 == 0 and cfg.sliding_window is not None)
      x_BxTxD, (k_i, v_i) = block.apply({"params": layer}, x_BxTxD, is_sliding, (k[i], v[i]),
                                        positions_BxT, mask_BxTxS, sliding_mask_BxTxS,
                                        cache.length)
      k, v = k.at[i].set(k_i), v.at[i].set(v_i)
    cache = KVCache(k=k, v=v, length=cache.length + x_BxTxD.shape[1])
    return self.final_norm(x_BxTxD), cache

  def logits(self, h_BxTxD: jax.Array) -> jax.Array:
    """Tied-embedding logits in float32, with the final softcap when configured."""
    logits_BxTxV = einsum_f32("BTD,VD->BTV", h_BxTxD, self.embedding.astype(self.dtype))
    cap = self.config.final_logit_softcap
    if cap:
      logits_BxTxV = cap * jnp.tanh(logits_BxTxV / cap)
    return logits_BxTxV
