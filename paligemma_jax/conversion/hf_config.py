"""HF `config.json` <-> `PaliGemmaConfig`.

Reading: sizes come from the tensor shapes; what shapes cannot tell (Gemma family, head counts,
softcaps, sliding window, query_pre_attn_scalar, image token id) comes from config.json, with HF's
class defaults where a field is absent.

Writing: every field is written explicitly (never left to class defaults, which are wrong for
PaliGemma: vision intermediate_size 4096, image_token_index 256000, top-level vocab_size 257152),
in a form transformers 4.4x-5.x all read: `rope_theta` (4.x; 5.x converts it) beside
`rope_parameters` (5.x), `torch_dtype` beside `dtype`, `hidden_act` beside `hidden_activation`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from paligemma_jax.conversion.hf_table import TEXT, VISION
from paligemma_jax.conversion.safetensors_io import CheckpointError
from paligemma_jax.models import GemmaConfig, PaliGemmaConfig, SigLIPConfig

_FAMILIES = {"gemma": 1, "gemma2": 2}
# HF PaliGemma 2 configs carry Gemma 2's window; the native config's None (big_vision, no window)
# is written as this value, as the hub's files have it. It only matters past 4,096 tokens.
HF_SLIDING_WINDOW = 4096
MAX_POSITIONS = 8192


def read_hf_config(folder: str) -> dict[str, Any]:
  path = os.path.join(folder, "config.json")
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise CheckpointError(f"{path} is missing; an HF checkpoint folder needs its config.json")
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from None


def _num_layers(keys: list[str], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"layers\.(\d+)\.")
  found = [int(m.group(1)) for k in keys if (m := pattern.match(k))]
  if not found:
    raise CheckpointError(f"the checkpoint has no {prefix}layers.* tensors")
  return max(found) + 1


def _rope_theta(text: dict[str, Any]) -> float:
  if "rope_theta" in text:
    return float(text["rope_theta"])
  return float((text.get("rope_parameters") or {}).get("rope_theta", 10_000.0))


def config_from_hf(hf: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> PaliGemmaConfig:
  """Builds our config from an HF config.json dict and the legacy-layout tensor shapes."""
  vision, text = hf.get("vision_config") or {}, hf.get("text_config") or {}
  family = text.get("model_type", "gemma")
  if family not in _FAMILIES:
    raise CheckpointError(f"text model_type {family!r} is not supported; expected one of "
                          f"{', '.join(_FAMILIES)} (PaliGemma 1 or 2)")
  keys = list(shapes)

  width, _, patch, _ = shapes[VISION + "embeddings.patch_embedding.weight"]
  grid = int(round(shapes[VISION + "embeddings.position_embedding.weight"][0] ** 0.5))
  if vision.get("image_size", grid * patch) != grid * patch:
    raise CheckpointError(f"config.json says image_size {vision['image_size']} but the position "
                          f"embedding holds a {grid}x{grid} grid of {patch}px patches")
  vision_config = SigLIPConfig(
      width=width, depth=_num_layers(keys, VISION + "encoder."),
      mlp_dim=shapes[VISION + "encoder.layers.0.mlp.fc1.weight"][0],
      num_heads=vision.get("num_attention_heads", 12), patch_size=patch,
      image_size=grid * patch, layer_norm_eps=vision.get("layer_norm_eps", 1e-6))

  vocab, d = shapes[TEXT + "embed_tokens.weight"]
  head_dim = text.get("head_dim", 256)
  # Head counts from config.json when given (so a mis-shaped tensor is caught, not absorbed);
  # from the shapes otherwise.
  num_heads = text.get("num_attention_heads",
                       shapes[TEXT + "layers.0.self_attn.q_proj.weight"][0] // head_dim)
  num_kv_heads = text.get("num_key_value_heads",
                          shapes[TEXT + "layers.0.self_attn.k_proj.weight"][0] // head_dim)
  version = _FAMILIES[family]
  gemma2 = {}
  if version == 2:
    gemma2 = dict(query_pre_attn_scalar=float(text.get("query_pre_attn_scalar", 256)),
                  attn_logit_softcap=text.get("attn_logit_softcapping", 50.0),
                  final_logit_softcap=text.get("final_logit_softcapping", 30.0),
                  sliding_window=text.get("sliding_window", 4096))
    layer_types = text.get("layer_types")
    expected = ["sliding_attention" if i % 2 == 0 else "full_attention"
                for i in range(len(layer_types or []))]
    if layer_types and layer_types != expected:
      raise CheckpointError("config.json layer_types is not Gemma 2's alternating pattern "
                            "(sliding on even layers); this layout is not supported")
  text_config = GemmaConfig(
      version=version, width=d, depth=_num_layers(keys, TEXT),
      mlp_dim=shapes[TEXT + "layers.0.mlp.gate_proj.weight"][0], num_heads=num_heads,
      num_kv_heads=num_kv_heads, head_dim=head_dim, vocab_size=vocab,
      rope_theta=_rope_theta(text), rms_norm_eps=text.get("rms_norm_eps", 1e-6), **gemma2)
  image_token_id = hf.get("image_token_index", hf.get("image_token_id", 256_000))
  return PaliGemmaConfig(vision=vision_config, text=text_config, image_token_id=image_token_id)


def to_hf_config(config: PaliGemmaConfig, vocab_rows: int, dtype: str) -> dict[str, Any]:
  """A complete `config.json` for `PaliGemmaForConditionalGeneration` (legacy key layout).

  `vocab_rows` is the embedding's row count as written; `dtype` the storage dtype name.
  """
  v, t = config.vision, config.text
  special = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2)
  vision = dict(
      model_type="siglip_vision_model", hidden_size=v.width, intermediate_size=v.mlp_dim,
      num_hidden_layers=v.depth, num_attention_heads=v.num_heads, num_channels=3,
      image_size=v.image_size, patch_size=v.patch_size, num_image_tokens=v.num_patches,
      projection_dim=t.width, hidden_act="gelu_pytorch_tanh", layer_norm_eps=v.layer_norm_eps,
      attention_dropout=0.0, vision_use_head=False)
  text = dict(
      model_type="gemma" if t.version == 1 else "gemma2", hidden_size=t.width,
      intermediate_size=t.mlp_dim, num_hidden_layers=t.depth, num_attention_heads=t.num_heads,
      num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim, vocab_size=vocab_rows,
      hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
      max_position_embeddings=MAX_POSITIONS, rms_norm_eps=t.rms_norm_eps,
      rope_theta=t.rope_theta, rope_parameters=dict(rope_type="default", rope_theta=t.rope_theta),
      attention_bias=False, attention_dropout=0.0, initializer_range=0.02, use_cache=True,
      tie_word_embeddings=True, num_image_tokens=v.num_patches, torch_dtype=dtype, dtype=dtype,
      **special)
  if t.version == 2:
    text.update(
        query_pre_attn_scalar=_number(t.query_pre_attn_scalar or t.head_dim),
        attn_logit_softcapping=t.attn_logit_softcap, final_logit_softcapping=t.final_logit_softcap,
        sliding_window=t.sliding_window or HF_SLIDING_WINDOW, cache_implementation="hybrid",
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention"
                     for i in range(t.depth)])
  return dict(
      architectures=["PaliGemmaForConditionalGeneration"], model_type="paligemma",
      image_token_index=config.image_token_id, vocab_size=vocab_rows, projection_dim=t.width,
      tie_word_embeddings=True, torch_dtype=dtype, dtype=dtype, vision_config=vision,
      text_config=text, **special)


def _number(x: float) -> int | float:
  return int(x) if float(x).is_integer() else float(x)
