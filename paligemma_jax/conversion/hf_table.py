"""The HF <-> native parameter table: one row per tensor, each with a named, invertible transform.

Keys are in the hub's legacy layout (`vision_tower.vision_model.*`, `language_model.model.*`);
`canonical_key` maps the other layouts onto it. `{i}` in a key is the layer index; the native path
of such a row lies under `.../layers/...`, stacked on a leading layer axis.

Shapes (PyTorch Linear weights are (out, in)): vision q/k/v (N*H, W) <-> (W, N, H); out_proj
(W, N*H) <-> (N, H, W); text q/k/v (N*H, D) <-> (D, N, H); o_proj (D, N*H) <-> (N, H, D); the patch
conv OIHW <-> HWIO. No RoPE permutation: both sides use the split-halves layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

VISION = "vision_tower.vision_model."
TEXT = "language_model.model."
LM_HEAD = "language_model.lm_head.weight"

# (prefix as found, prefix in the legacy layout); the longest match wins.
_PREFIXES = (
    ("model.vision_tower.vision_model.", VISION),
    ("model.vision_tower.", VISION),
    ("vision_tower.vision_model.", VISION),
    ("vision_tower.", VISION),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("multi_modal_projector.", "multi_modal_projector."),
    ("model.language_model.", TEXT),
    ("language_model.model.", TEXT),
    ("language_model.lm_head.", "language_model.lm_head."),
    ("lm_head.", "language_model.lm_head."),
)


def canonical_key(key: str) -> str:
  """Maps a key of any known HF layout (legacy hub, transformers 4.5x, 5.x) to the legacy one."""
  for found, legacy in _PREFIXES:
    if key.startswith(found):
      return legacy + key[len(found):]
  return key


@dataclasses.dataclass(frozen=True)
class Transform:
  """`to_native(hf_array, native_shape)`; `to_hf(native_array)`; `hf_shape(native_shape)`."""

  name: str
  to_native: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]
  hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


def _prod(xs) -> int:
  return int(np.prod(xs))


COPY = Transform("copy", lambda a, s: a, lambda a: a, lambda s: s)
TRANSPOSE = Transform("transpose", lambda a, s: a.T, lambda a: a.T, lambda s: s[::-1])
RESHAPE = Transform("flatten_heads", lambda a, s: a.reshape(s), lambda a: a.reshape(-1),
                    lambda s: (_prod(s),))
CONV = Transform("conv_oihw_hwio", lambda a, s: a.transpose(2, 3, 1, 0),
                 lambda a: a.transpose(3, 2, 0, 1), lambda s: (s[3], s[2], s[0], s[1]))
# (N*H, D) <-> (D, N, H): rows of the torch weight are head-major (row = head * H + d).
HEADS_IN = Transform(
    "heads_in", lambda a, s: a.reshape(s[1], s[2], s[0]).transpose(2, 0, 1),
    lambda a: a.transpose(1, 2, 0).reshape(a.shape[1] * a.shape[2], a.shape[0]),
    lambda s: (s[1] * s[2], s[0]))
# (D, N*H) <-> (N, H, D)
HEADS_OUT = Transform(
    "heads_out", lambda a, s: a.reshape(s[2], s[0], s[1]).transpose(1, 2, 0),
    lambda a: a.transpose(2, 0, 1).reshape(a.shape[2], a.shape[0] * a.shape[1]),
    lambda s: (s[2], s[0] * s[1]))


@dataclasses.dataclass(frozen=True)
class Row:
  hf: str  # legacy-layout key; "{i}" = layer index
  native: str  # "/"-joined path in the params tree
  transform: Transform

  @property
  def per_layer(self) -> bool:
    return "{i}" in self.hf


_VISION_ROWS = [
    Row(VISION + "embeddings.patch_embedding.weight", "vision/patch_embed/w", CONV),
    Row(VISION + "embeddings.patch_embedding.bias", "vision/patch_embed/b", COPY),
    Row(VISION + "embeddings.position_embedding.weight", "vision/pos_embed", COPY),
    Row(VISION + "post_layernorm.weight", "vision/final_norm/scale", COPY),
    Row(VISION + "post_layernorm.bias", "vision/final_norm/bias", COPY),
]
_V = VISION + "encoder.layers.{i}."
for _n in "12":
  _VISION_ROWS += [Row(f"{_V}layer_norm{_n}.weight", f"vision/layers/norm{_n}/scale", COPY),
                   Row(f"{_V}layer_norm{_n}.bias", f"vision/layers/norm{_n}/bias", COPY)]
for _p in "qkv":
  _VISION_ROWS += [Row(f"{_V}self_attn.{_p}_proj.weight", f"vision/layers/attn/{_p}/w", HEADS_IN),
                   Row(f"{_V}self_attn.{_p}_proj.bias", f"vision/layers/attn/{_p}/b", RESHAPE)]
_VISION_ROWS += [
    Row(_V + "self_attn.out_proj.weight", "vision/layers/attn/out/w", HEADS_OUT),
    Row(_V + "self_attn.out_proj.bias", "vision/layers/attn/out/b", COPY),
    Row(_V + "mlp.fc1.weight", "vision/layers/mlp/fc1/w", TRANSPOSE),
    Row(_V + "mlp.fc1.bias", "vision/layers/mlp/fc1/b", COPY),
    Row(_V + "mlp.fc2.weight", "vision/layers/mlp/fc2/w", TRANSPOSE),
    Row(_V + "mlp.fc2.bias", "vision/layers/mlp/fc2/b", COPY),
]

_PROJECTOR_ROWS = [
    Row("multi_modal_projector.linear.weight", "projector/w", TRANSPOSE),
    Row("multi_modal_projector.linear.bias", "projector/b", COPY),
]

_T = TEXT + "layers.{i}."
_TEXT_ROWS = [
    Row(TEXT + "embed_tokens.weight", "llm/embedding", COPY),
    Row(TEXT + "norm.weight", "llm/final_norm/scale", COPY),
    Row(_T + "self_attn.q_proj.weight", "llm/layers/attn/q/w", HEADS_IN),
    Row(_T + "self_attn.k_proj.weight", "llm/layers/attn/k/w", HEADS_IN),
    Row(_T + "self_attn.v_proj.weight", "llm/layers/attn/v/w", HEADS_IN),
    Row(_T + "self_attn.o_proj.weight", "llm/layers/attn/out/w", HEADS_OUT),
    Row(_T + "mlp.gate_proj.weight", "llm/layers/mlp/gate/w", TRANSPOSE),
    Row(_T + "mlp.up_proj.weight", "llm/layers/mlp/up/w", TRANSPOSE),
    Row(_T + "mlp.down_proj.weight", "llm/layers/mlp/down/w", TRANSPOSE),
    Row(_T + "input_layernorm.weight", "llm/layers/pre_attn_norm/scale", COPY),
]
# The norm-name trap: in HF Gemma 1 `post_attention_layernorm` is the norm *before* the MLP;
# in Gemma 2 the same name is the real post-attention norm. Dispatch on the family, never the name.
_GEMMA1_NORMS = [Row(_T + "post_attention_layernorm.weight", "llm/layers/pre_mlp_norm/scale", COPY)]
_GEMMA2_NORMS = [
    Row(_T + "post_attention_layernorm.weight", "llm/layers/post_attn_norm/scale", COPY),
    Row(_T + "pre_feedforward_layernorm.weight", "llm/layers/pre_mlp_norm/scale", COPY),
    Row(_T + "post_feedforward_layernorm.weight", "llm/layers/post_mlp_norm/scale", COPY),
]


def table(gemma_version: int) -> list[Row]:
  """Every tensor of a PaliGemma checkpoint with Gemma `gemma_version` (1 or 2)."""
  norms = _GEMMA1_NORMS if gemma_version == 1 else _GEMMA2_NORMS
  return _VISION_ROWS + _PROJECTOR_ROWS + _TEXT_ROWS + norms
