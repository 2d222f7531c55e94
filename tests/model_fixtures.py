"""Tiny PaliGemma configs, random parameters and input batches that model tests share.

Configs (vision 32-d / 2 layers / patch 14 / image 28, so M = 4 image tokens; text 2 layers):
  PG1        Gemma 1, MQA (4 query heads, 1 kv head), no softcaps, no window.
  PG2        Gemma 2, GQA (4 / 2), attention and final softcaps, post-norms, no window.
  PG2_WINDOW PG2 with a sliding window of 3, shorter than the tiny sequences, so it bites.
  PG2_28B    PG2 with the 28B quirk: query_pre_attn_scalar (D/N = 16) != head_dim (8).

`random_params` draws parameters straight from `param_shapes` with numpy. The model's own init
costs ~6-8 s of XLA compile per config on a 2-core machine; the invariants tested here hold for
any parameters, and random norm scales / biases exercise more of the math than zeros do. One test
(test_models.py) runs the real `init_params`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from paligemma_jax.models import (GemmaConfig, PaliGemma, PaliGemmaConfig, SigLIPConfig,
                                  param_shapes)

VOCAB = 192
IMAGE_TOKEN = 190  # inside the vocab, as 257152 is inside HF's 257216 rows
PAD, BOS, NEWLINE = 0, 2, 108  # any ids work; these only keep the layouts readable

VISION = SigLIPConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=14, image_size=28)
_GEMMA2 = dict(version=2, attn_logit_softcap=50.0, final_logit_softcap=30.0)

PG1 = PaliGemmaConfig(
    vision=VISION, image_token_id=IMAGE_TOKEN,
    text=GemmaConfig(version=1, width=48, depth=2, mlp_dim=96, num_heads=4, num_kv_heads=1,
                     head_dim=16, vocab_size=VOCAB))
PG2 = PaliGemmaConfig(
    vision=VISION, image_token_id=IMAGE_TOKEN,
    text=GemmaConfig(width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=2, head_dim=16,
                     vocab_size=VOCAB, **_GEMMA2))
PG2_WINDOW = PG2.replace(**{"text.sliding_window": 3})
PG2_28B = PG2.replace(**{"text.head_dim": 8, "text.query_pre_attn_scalar": 16.0})

CONFIGS = {"pg1": PG1, "pg2": PG2, "pg2_window": PG2_WINDOW, "pg2_28b": PG2_28B}


def random_params(config: PaliGemmaConfig, seed: int = 0) -> dict:
  """{"params": ...} of the model's shapes and dtypes, drawn at scales that keep logits O(1-10).

  Embedding ~ N(0, 1) (as the model's init); weights ~ N(0, 1/fan_in); biases, position
  embeddings and RMSNorm scale offsets ~ N(0, 0.1^2); LayerNorm scales ~ 1 + N(0, 0.1^2).
  """
  return _random_params(config.replace(dtype="float32", remat="none"), seed,
                        config.params_dtype)


@functools.lru_cache(maxsize=None)
def _random_params(config: PaliGemmaConfig, seed: int, dtype) -> dict:
  rng = np.random.default_rng(seed)

  def draw(path, leaf: jax.ShapeDtypeStruct) -> jax.Array:
    keys = [p.key for p in path]
    shape = leaf.shape[1:] if "layers" in keys else leaf.shape
    name, parent = keys[-1], keys[-2]
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if name == "embedding":
      value = noise
    elif name == "w":
      n_in = {"out": 2, "patch_embed": 3}.get(parent, 1)
      value = noise / np.sqrt(np.prod(shape[:n_in]))
    elif name == "scale" and "vision" in keys:
      value = 1.0 + 0.1 * noise  # LayerNorm: multiplicative scale
    else:
      value = 0.1 * noise  # biases, pos_embed, RMSNorm offsets
    return jnp.asarray(value, dtype)

  return jax.tree_util.tree_map_with_path(draw, param_shapes(config))


def make_batch(config: PaliGemmaConfig, *, batch: int = 2, images: int = 1, prefix_len: int = 3,
               suffix_len: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
  """Tokens [image x I*M][bos, prompt, "\\n"][suffix], random images, masks of the prefix-LM rule.

  All positions are valid; mask_ar is 0 over image + prefix text and 1 over the suffix.
  """
  rng = np.random.default_rng(seed)
  n_img = images * config.vision.num_patches
  text = rng.integers(3, 100, size=(batch, prefix_len + suffix_len))
  text[:, 0], text[:, prefix_len - 1] = BOS, NEWLINE
  tokens = np.concatenate([np.full((batch, n_img), config.image_token_id), text], axis=1)
  r = config.vision.image_size
  pixels = rng.uniform(-1, 1, size=(batch, images, r, r, 3)).astype(np.float32)
  s = tokens.shape[1]
  mask_ar = np.zeros((batch, s), np.int32)
  mask_ar[:, n_img + prefix_len:] = 1
  return dict(tokens=tokens.astype(np.int32), images=pixels, input_mask=np.ones((batch, s), bool),
              mask_ar=mask_ar)


@functools.lru_cache(maxsize=None)
def jit_forward(config: PaliGemmaConfig):
  """A jitted `PaliGemma(config).apply`, cached so that tests sharing shapes share one compile."""
  return jax.jit(PaliGemma(config).apply)


def forward(config: PaliGemmaConfig, params: dict, batch: dict[str, np.ndarray]) -> np.ndarray:
  return np.asarray(jit_forward(config)(params, batch["tokens"], batch["images"],
                                        batch["input_mask"], batch["mask_ar"]))


def assert_greedy_tokens_agree(got, want, want_logits, margin: float) -> int:
  """Greedy tokens of two differently compiled programs are equal at every step up to a row's
  first near-tie: a step whose top-2 logit margin in `want_logits` [B, N, V] is below `margin`
  may pick either token on another CPU (its summation order differs), and the rows diverge from
  there. Returns how many tokens were compared (callers assert it is not zero)."""
  got, want = np.asarray(got), np.asarray(want)
  top2 = np.sort(np.asarray(want_logits, np.float32), axis=-1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] >= margin  # [B, N]
  compared = 0
  for row in range(got.shape[0]):
    n = clear.shape[1] if clear[row].all() else int(np.argmin(clear[row]))
    np.testing.assert_array_equal(got[row, :n], want[row, :n], err_msg=f"row {row}")
    compared += n
  return compared
