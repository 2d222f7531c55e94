"""Tiny checkpoints on disk for the converter tests: HF folders from the transformers oracle and
big_vision npz files written straight from checkpoints.md §2.2 (not through our npz table, so a
wrong key or layout in the table fails the tests).
"""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

import hf_oracle as O
from paligemma_jax.conversion import SafetensorsReader, canonical_key
from paligemma_jax.models import GemmaConfig, PaliGemmaConfig, SigLIPConfig

BV_VOCAB = 256  # big_vision layout: the image token id is one past the last row
_VISION = SigLIPConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=14, image_size=28)
BV_PG1 = PaliGemmaConfig(
    vision=_VISION, image_token_id=BV_VOCAB,
    text=GemmaConfig(version=1, width=48, depth=2, mlp_dim=96, num_heads=4, num_kv_heads=1,
                     head_dim=16, vocab_size=BV_VOCAB))
BV_PG2 = PaliGemmaConfig(
    vision=_VISION, image_token_id=BV_VOCAB,
    text=GemmaConfig(version=2, width=64, depth=3, mlp_dim=128, num_heads=4, num_kv_heads=2,
                     head_dim=16, vocab_size=BV_VOCAB, attn_logit_softcap=50.0,
                     final_logit_softcap=30.0))
# The 28B quirk: head_dim (8) != width / heads (16), scale from query_pre_attn_scalar.
BV_PG2_28B = BV_PG2.replace(**{"text.head_dim": 8, "text.query_pre_attn_scalar": 16.0})


def big_vision_arrays(config: PaliGemmaConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """float32 arrays under big_vision's keys and shapes (with the `params/` prefix)."""
  rng = np.random.default_rng(seed)
  v, t = config.vision, config.text
  w, lv, p, nv, hv = v.width, v.depth, v.patch_size, v.num_heads, v.head_dim
  d, lt, n, k, h, f = t.width, t.depth, t.num_heads, t.num_kv_heads, t.head_dim, t.mlp_dim
  enc = "img/Transformer/encoderblock/"
  att = enc + "MultiHeadDotProductAttention_0/"
  shapes = {
      "img/embedding/kernel": (p, p, 3, w), "img/embedding/bias": (w,),
      "img/pos_embedding": (1, v.num_patches, w),
      enc + "LayerNorm_0/scale": (lv, w), enc + "LayerNorm_0/bias": (lv, w),
      enc + "LayerNorm_1/scale": (lv, w), enc + "LayerNorm_1/bias": (lv, w),
      enc + "MlpBlock_0/Dense_0/kernel": (lv, w, v.mlp_dim),
      enc + "MlpBlock_0/Dense_0/bias": (lv, v.mlp_dim),
      enc + "MlpBlock_0/Dense_1/kernel": (lv, v.mlp_dim, w),
      enc + "MlpBlock_0/Dense_1/bias": (lv, w),
      att + "out/kernel": (lv, nv, hv, w), att + "out/bias": (lv, w),
      "img/Transformer/encoder_norm/scale": (w,), "img/Transformer/encoder_norm/bias": (w,),
      "img/head/kernel": (w, d), "img/head/bias": (d,),
      "llm/embedder/input_embedding": (t.vocab_size, d),
      "llm/layers/attn/q_einsum/w": (lt, n, d, h),
      "llm/layers/attn/kv_einsum/w": (lt, 2, k, d, h),
      "llm/layers/attn/attn_vec_einsum/w": (lt, n, h, d),
      "llm/layers/mlp/gating_einsum": (lt, 2, d, f),
      "llm/layers/mlp/linear": (lt, f, d),
      "llm/layers/pre_attention_norm/scale": (lt, d),
      "llm/layers/pre_ffw_norm/scale": (lt, d),
      "llm/final_norm/scale": (d,),
  }
  for name in ("query", "key", "value"):
    shapes[att + f"{name}/kernel"] = (lv, w, nv, hv)
    shapes[att + f"{name}/bias"] = (lv, nv, hv)
  if t.version == 2:
    shapes["llm/layers/post_attention_norm/scale"] = (lt, d)
    shapes["llm/layers/post_ffw_norm/scale"] = (lt, d)
  out = {}
  for key, shape in shapes.items():
    # Matrices at ~1/sqrt(fan_in) (axis -2 is an input axis for most), vectors around 0.1, so
    # logits are O(1) and a comparison of two models can fail.
    matrix = key.endswith(("kernel", "/w", "gating_einsum", "linear"))
    scale = 1.0 / np.sqrt(shape[-2]) if matrix else 0.1
    out["params/" + key] = (rng.standard_normal(shape) * scale).astype(np.float32)
  embedding = "params/llm/embedder/input_embedding"
  out[embedding] = rng.standard_normal(out[embedding].shape).astype(np.float32)
  return out


def write_big_vision_npz(path: str, config: PaliGemmaConfig, dtype: str = "float32",
                         seed: int = 0) -> str:
  """An npz as the release files: `params/` keys, bf16 stored as 2-byte void (|V2)."""
  arrays = big_vision_arrays(config, seed)
  if dtype == "bfloat16":
    arrays = {k: a.astype(ml_dtypes.bfloat16).view(np.dtype("V2")) for k, a in arrays.items()}
  np.savez(path, **arrays)
  return path


def hf_folder(folder: str, spec: O.TinySpec, *, dtype: str = "float32", shard: str | None = None,
              legacy_with_head: bool = False, seed: int = 0) -> str:
  """An HF checkpoint from the oracle: transformers 5.x save layout (no lm_head), or the hub's
  legacy layout with a tied `language_model.lm_head.weight` (single file)."""
  import torch
  model = O.build_model(spec, seed).to(getattr(torch, dtype))
  kwargs = {"max_shard_size": shard} if shard else {}
  model.save_pretrained(folder, **kwargs)
  if legacy_with_head:
    path = os.path.join(folder, "model.safetensors")
    tensors = {}
    for key, value in load_file(path).items():
      if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        key = "vision_tower.vision_model." + key.removeprefix("vision_tower.")
      tensors[key] = value
    tensors["language_model.lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
  return folder


def hf_tensor_bytes(folder: str) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
  """Legacy key -> (dtype tag, shape, raw bytes) of every tensor of an HF folder."""
  with SafetensorsReader(folder) as reader:
    return {canonical_key(k): (reader.dtype(k), reader.shape(k), reader.read(k).tobytes())
            for k in reader.keys()}


def npz_arrays(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    return {k: data[k] for k in data.files}
