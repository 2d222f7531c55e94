"""PaliGemma: SigLIP image tokens written into the token sequence, one Gemma pass, prefix-LM mask.

Letters: B batch, I images per example, R resolution, M patches per image, W vision width,
S sequence length (image placeholders + text), D text width, V vocab rows.

The sequence is HF's layout: `tokens` hold `image_token_id` placeholders wherever image features go
(by default [image x I*M][bos, prompt, "\\n"][suffix, eos][pad]); the k-th placeholder of a row
receives the k-th image feature of that row. big_vision's layout (images first) is the special
case where all placeholders lead. Parameters: vision/..., projector/{w [W, D], b [D]}, llm/...
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paligemma_jax.models import cpu_matmul, lora
from paligemma_jax.models.config import PaliGemmaConfig
from paligemma_jax.models.gemma import Gemma
from paligemma_jax.models.kv_cache import KVCache
from paligemma_jax.models.layers import Einsum
from paligemma_jax.models.masks import default_positions, prefix_lm_mask, sliding_window_mask
from paligemma_jax.models.siglip import SigLIP


class PaliGemma(nn.Module):
  config: PaliGemmaConfig

  def setup(self):
    cfg = self.config
    dt, pdt = cfg.compute_dtype, cfg.params_dtype
    self.vision = SigLIP(cfg.vision, dt, pdt, cfg.remat, cfg.lora)
    self.projector = Einsum((cfg.vision.width, cfg.text.width), ("vit_embed", "embed"), 1, True,
                            dt, pdt, cfg.lora)
    self.llm = Gemma(cfg.text, dt, pdt, cfg.remat, cfg.lora)

  def encode_images(self, images_BxIxRxRx3: jax.Array, layers: Sequence[dict] | None = None
                    ) -> jax.Array:
    """Images [B, I, R, R, 3] in [-1, 1] -> projected image tokens [B, I*M, D] (not scaled).

    `layers` (from `unstack_layers(params, "vision")`) runs the encoder's blocks unrolled.
    """
    _check_images_rank(images_BxIxRxRx3)
    b, i = images_BxIxRxRx3.shape[:2]
    feats_BIxMxW = self.vision(images_BxIxRxRx3.reshape(b * i, *images_BxIxRxRx3.shape[2:]),
                               layers)
    tokens_BIxMxD = self.projector("BMW,WD->BMD", feats_BIxMxW)
    return tokens_BIxMxD.reshape(b, i * tokens_BIxMxD.shape[1], tokens_BIxMxD.shape[2])

  def embed_inputs(self, tokens_BxS: jax.Array, image_tokens_BxNxD: jax.Array | None
                   ) -> jax.Array:
    """Text embeddings with the image tokens written at the placeholder positions, in order."""
    is_image_BxS = tokens_BxS == self.config.image_token_id
    x_BxSxD = self.llm.embed(jnp.where(is_image_BxS, 0, tokens_BxS))
    if image_tokens_BxNxD is None:
      return x_BxSxD
    slot_BxS = jnp.clip(jnp.cumsum(is_image_BxS, axis=1) - 1, 0, image_tokens_BxNxD.shape[1] - 1)
    gathered_BxSxD = jnp.take_along_axis(image_tokens_BxNxD, slot_BxS[..., None], axis=1)
    return jnp.where(is_image_BxS[..., None], gathered_BxSxD.astype(x_BxSxD.dtype), x_BxSxD)

  def __call__(self, tokens_BxS: jax.Array, images_BxIxRxRx3: jax.Array | None,
               input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array,
               positions_BxS: jax.Array | None = None) -> jax.Array:
    """Full forward under the prefix-LM mask. Returns float32 logits [B, S, V].

    `mask_ar` is big_vision's (0 = bidirectional prefix, 1 = causal); HF's `token_type_ids` can be
    passed as `mask_ar` directly. Positions default to `cumsum(input_mask) - 1 + position_offset`.
    """
    check_image_tokens(tokens_BxS, images_BxIxRxRx3, self.config)
    image_tokens = None if images_BxIxRxRx3 is None else self.encode_images(images_BxIxRxRx3)
    x_BxSxD = self.embed_inputs(tokens_BxS, image_tokens)
    if positions_BxS is None:
      positions_BxS = default_positions(input_mask_BxS, self.config.position_offset)
    mask, sliding = attention_masks(self.config, input_mask_BxS, mask_ar_BxS)
    h_BxSxD, _ = self.llm(x_BxSxD, positions_BxS, mask, sliding)
    return self.llm.logits(h_BxSxD)

  def decode_hidden(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
                    sliding_mask_BxTxS: jax.Array | None, cache: KVCache | None,
                    layers: Sequence[dict] | None = None) -> tuple[jax.Array, KVCache | None]:
    """Decoder pass on ready embeddings with explicit masks -> final hidden states [B, T, D].

    `layers` (from `unstack_layers`, with a cache) runs the layers unrolled over them.
    """
    if layers is not None:
      return self.llm.unrolled(layers, x_BxTxD, positions_BxT, mask_BxTxS, sliding_mask_BxTxS,
                               cache)
    return self.llm(x_BxTxD, positions_BxT, mask_BxTxS, sliding_mask_BxTxS, cache)

  def logits(self, h_BxTxD: jax.Array) -> jax.Array:
    """float32 logits [B, T, V] of hidden states (tied embedding, final softcap)."""
    return self.llm.logits(h_BxTxD)

  def decode(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, mask_BxTxS: jax.Array,
             sliding_mask_BxTxS: jax.Array | None, cache: KVCache | None
             ) -> tuple[jax.Array, KVCache | None]:
    """`decode_hidden` then `logits` at every position: the entry point of a decode step."""
    h_BxTxD, cache = self.decode_hidden(x_BxTxD, positions_BxT, mask_BxTxS, sliding_mask_BxTxS,
                                        cache)
    return self.logits(h_BxTxD), cache

  def decode_unrolled(self, layers: Sequence[dict], x_BxTxD: jax.Array, positions_BxT: jax.Array,
                      mask_BxTxS: jax.Array, sliding_mask_BxTxS: jax.Array | None,
                      cache: KVCache) -> tuple[jax.Array, KVCache]:
    """`decode` over per-layer params from `unstack_layers` (see `Gemma.unrolled`)."""
    h_BxTxD, cache = self.llm.unrolled(layers, x_BxTxD, positions_BxT, mask_BxTxS,
                                       sliding_mask_BxTxS, cache)
    return self.logits(h_BxTxD), cache


def unstack_layers(params: dict, tower: str = "llm") -> list[dict]:
  """A tower's stacked layer params as one dict per layer: the decoder's ("llm", for
  `PaliGemma.decode_unrolled`) or the image encoder's ("vision", for `encode_images`).

  Where the CPU kernels can read a weight in place (bf16 on CPU), its layers are
  `cpu_matmul.LayerSlice`s rather than copies; build them inside the jitted function.
  """
  stacked = params["params"][tower]["layers"]
  depth = jax.tree.leaves(stacked)[0].shape[0]

  def layer(a: jax.Array, i: int):
    return cpu_matmul.LayerSlice(a, i) if cpu_matmul.reads_in_place(a) else a[i]
  return [jax.tree.map(lambda a, i=i: layer(a, i), stacked) for i in range(depth)]


def attention_masks(config: PaliGemmaConfig, input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array
                    ) -> tuple[jax.Array, jax.Array | None]:
  """The [B, S, S] prefix-LM mask, and its sliding-window variant when the config has one."""
  mask = prefix_lm_mask(input_mask_BxS, mask_ar_BxS)
  window = config.text.sliding_window
  sliding = None if window is None else sliding_window_mask(mask, mask_ar_BxS, window)
  return mask, sliding


def check_image_tokens(tokens_BxS, images_BxIxRxRx3, config: PaliGemmaConfig) -> None:
  """Raises a one-line error when the placeholders do not match the images (concrete inputs only).

  Inside `jax.jit` the token values are unknown, so callers check before jitting (the public API
  does); outside jit this catches the mismatch that would otherwise silently misplace features.
  """
  if images_BxIxRxRx3 is not None:
    _check_images_rank(images_BxIxRxRx3)
  if isinstance(tokens_BxS, jax.core.Tracer):
    return
  counts = (np.asarray(tokens_BxS) == config.image_token_id).sum(axis=1)
  if images_BxIxRxRx3 is None:
    expected = 0
  else:
    expected = images_BxIxRxRx3.shape[1] * config.vision.num_patches
  bad = np.flatnonzero(counts != expected)
  if bad.size:
    row = int(bad[0])
    raise ValueError(
        f"row {row} has {int(counts[row])} image placeholder tokens (id {config.image_token_id}) "
        f"but its images give {expected} image features; build tokens with the processor for "
        f"the same number of images and image size")


def _check_images_rank(images) -> None:
  if images.ndim != 5:
    raise ValueError(
        f"images must be [batch, images_per_example, height, width, 3], got shape "
        f"{tuple(images.shape)}; add an images axis with images[:, None]")


def dummy_inputs(config: PaliGemmaConfig, batch: int = 1, text_len: int = 4) -> tuple:
  """Tokens, images, input_mask and mask_ar of the right shapes: one image, a short prompt."""
  m, r = config.vision.num_patches, config.vision.image_size
  tokens = np.zeros((batch, m + text_len), np.int32)
  tokens[:, :m] = config.image_token_id
  images = np.zeros((batch, 1, r, r, 3), np.float32)
  input_mask = np.ones(tokens.shape, bool)
  mask_ar = np.zeros(tokens.shape, np.int32)
  return tokens, images, input_mask, mask_ar


def init_params(config: PaliGemmaConfig, rng: jax.Array) -> dict:
  """Random parameters {"params": ...} as a plain pytree (logical-axis boxes removed)."""
  inputs = dummy_inputs(config)  # closed over: concrete, so the placeholder check still runs
  return jax.jit(lambda key: nn.unbox(PaliGemma(config).init(key, *inputs)))(rng)


def init_adapters(config: PaliGemmaConfig, rng: jax.Array) -> dict:
  """{"params": the LoRA adapters of `config.lora`} alone (the base weights the same init
  makes are never returned, so XLA drops them). Fails when the targets match no weight."""
  if config.lora is None:
    raise ValueError("config.lora is None: set a LoraConfig to create adapters")
  adapters = jax.jit(lambda key: lora.split(init_params(config, key))[1])(rng)
  if not adapters:
    raise ValueError(f"lora targets {list(config.lora.targets)} match no weight; paths look like "
                     "llm/layers/attn/q/w, llm/layers/mlp/up/w, vision/layers/mlp/fc1/w")
  return adapters


def param_shapes(config: PaliGemmaConfig) -> dict:
  """Parameter shapes and dtypes (jax.ShapeDtypeStruct leaves) without allocating anything."""
  return jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))


def param_logical_axes(config: PaliGemmaConfig) -> dict:
  """Logical axis names of every parameter (PartitionSpec leaves), shaped like the params."""
  inputs = dummy_inputs(config)
  boxed = jax.eval_shape(lambda key: PaliGemma(config).init(key, *inputs), jax.random.key(0))
  return nn.get_partition_spec(boxed)


def param_count(config: PaliGemmaConfig) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(config)))
