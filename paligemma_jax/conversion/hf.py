"""Load an HF PaliGemma checkpoint folder (config.json + safetensors) into native params.

Sizes come from the tensor shapes; what shapes cannot tell (Gemma family, head counts, softcaps,
sliding window, query_pre_attn_scalar, image token id) comes from config.json, with HF's class
defaults where a field is absent. The model follows the checkpoint's config unless overridden,
e.g. `load_hf_checkpoint(path, **{"text.sliding_window": None})`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from paligemma_jax.conversion.hf_table import LM_HEAD, TEXT, VISION, Row, canonical_key, table
from paligemma_jax.conversion.safetensors_io import CheckpointError, SafetensorsReader
from paligemma_jax.models import GemmaConfig, PaliGemmaConfig, SigLIPConfig, param_shapes

_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
_FAMILIES = {"gemma": 1, "gemma2": 2}


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


def _read_row(reader: SafetensorsReader, present: dict[str, str], row: Row, key: str,
              native_shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
  if key not in present:
    raise CheckpointError(f"the checkpoint lacks {key} (needed for {row.native}); "
                          "it is not a complete PaliGemma checkpoint")
  original = present.pop(key)
  want = tuple(row.transform.hf_shape(native_shape))
  got = reader.shape(original)
  if got != want:
    raise CheckpointError(f"{original} has shape {got}, expected {want} for {row.native} "
                          f"{native_shape} (transform {row.transform.name})")
  return row.transform.to_native(reader.read(original), native_shape).astype(dtype)


def load_hf_checkpoint(folder: str, *, param_dtype: str | None = None, dtype: str | None = None,
                       **overrides: Any) -> tuple[PaliGemmaConfig, dict]:
  """Returns (config, {"params": ...}) from an HF checkpoint folder.

  param_dtype defaults to the checkpoint's storage dtype, dtype (compute) to param_dtype.
  `overrides` are `PaliGemmaConfig.replace` fields such as `text.final_logit_softcap=None`.
  Every tensor's shape is checked; a missing or unused tensor is an error naming it.
  """
  with SafetensorsReader(folder) as reader:
    present = {canonical_key(k): k for k in reader.keys()}
    shapes = {k: reader.shape(orig) for k, orig in present.items()}  # headers only
    _require(shapes, present)
    config = config_from_hf(read_hf_config(folder), shapes)
    stored = _DTYPES.get(reader.dtype(present[TEXT + "embed_tokens.weight"]), "float32")
    param_dtype = param_dtype or stored
    config = config.replace(param_dtype=param_dtype, dtype=dtype or param_dtype, **overrides)

    np_dtype = jnp.dtype(config.param_dtype)
    expected = traverse_util.flatten_dict(param_shapes(config)["params"], sep="/")
    flat = {}
    for row in table(config.text.version):
      shape = expected[row.native].shape
      if row.per_layer:
        stacked = np.empty(shape, np_dtype)
        for i in range(shape[0]):
          stacked[i] = _read_row(reader, present, row, row.hf.format(i=i), shape[1:], np_dtype)
        flat[row.native] = stacked
      else:
        flat[row.native] = _read_row(reader, present, row, row.hf, shape, np_dtype)
    _check_tied_head(reader, present, flat["llm/embedding"])
    if present:
      first = sorted(present.values())[0]
      raise CheckpointError(f"the checkpoint has {len(present)} tensor(s) this model does not use, "
                            f"e.g. {first}; is it a PaliGemma checkpoint of a supported layout?")
  params = traverse_util.unflatten_dict(flat, sep="/")
  return config, {"params": jax.device_put(params)}


def _require(shapes: dict[str, tuple[int, ...]], present: dict[str, str]) -> None:
  """The tensors the config is inferred from must exist before anything else is read."""
  for key in (VISION + "embeddings.patch_embedding.weight",
              VISION + "embeddings.position_embedding.weight",
              VISION + "encoder.layers.0.mlp.fc1.weight", TEXT + "embed_tokens.weight",
              TEXT + "layers.0.self_attn.q_proj.weight", TEXT + "layers.0.self_attn.k_proj.weight",
              TEXT + "layers.0.mlp.gate_proj.weight"):
    if key not in shapes:
      raise CheckpointError(f"the checkpoint lacks {key}; it is not a PaliGemma checkpoint "
                            f"(found e.g. {sorted(present.values())[:1]})")


def _check_tied_head(reader: SafetensorsReader, present: dict[str, str],
                     embedding: np.ndarray) -> None:
  """An lm_head is accepted only when it equals the (tied) embedding."""
  if LM_HEAD not in present:
    return
  head = reader.read(present.pop(LM_HEAD))
  if head.shape != embedding.shape or not np.array_equal(head.astype(embedding.dtype), embedding):
    raise CheckpointError("lm_head.weight differs from the token embedding; untied output heads "
                          "are not supported (PaliGemma ties them)")
