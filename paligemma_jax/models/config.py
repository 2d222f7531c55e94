"""Frozen config dataclasses for SigLIP, Gemma 1/2 and PaliGemma.

Architecture numbers and runtime choices (dtypes, remat) live on the same frozen, hashable
dataclasses so a module receives exactly one small object. Dtypes are stored as strings so a
config serialises to JSON unchanged (checkpoints store it beside the arrays).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax.numpy as jnp

DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
QUANTIZATION_KINDS = ("int8", "int4")
# The Gemma decoder's attention and MLP matrices: peft's usual PaliGemma targets.
LORA_DECODER = r"llm/layers/(attn/(q|k|v|out)|mlp/(gate|up|down))/w"
LORA_VISION = r"vision/layers/(attn/(q|k|v|out)|mlp/(fc1|fc2))/w"


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f"{name}={value!r} is not one of {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class SigLIPConfig:
  """SigLIP ViT image encoder (no pooling head). Defaults are So400m/14 at 224px."""

  width: int = 1152
  depth: int = 27
  mlp_dim: int = 4304
  num_heads: int = 16
  patch_size: int = 14
  image_size: int = 224
  layer_norm_eps: float = 1e-6

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(
          f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}; "
          f"use e.g. {self.patch_size * (self.image_size // self.patch_size)}")
    if self.width % self.num_heads:
      raise ValueError(f"vision width {self.width} is not divisible by num_heads {self.num_heads}")

  @property
  def grid_size(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid_size**2

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
  """Gemma 1 / Gemma 2 decoder. `version` selects the block layout (2 adds post-norms).

  `sliding_window` is None (big_vision, which trained the checkpoints, has none) or a window in
  index space applied on even layers with the prefix block exempt (HF transformers v5 semantics).
  `dropout` is big_vision's LLM dropout rate (fine-tuning only): it acts only in a forward called
  with `deterministic=False` and a "dropout" rng, so inference and decoding never see it.
  """

  version: int = 1
  width: int = 2048
  depth: int = 18
  mlp_dim: int = 16384
  num_heads: int = 8
  num_kv_heads: int = 1
  head_dim: int = 256
  vocab_size: int = 257_152
  query_pre_attn_scalar: float | None = None  # None: head_dim (Gemma 1 and PG2 3B/10B)
  attn_logit_softcap: float | None = None
  final_logit_softcap: float | None = None
  sliding_window: int | None = None
  rope_theta: float = 10_000.0
  rms_norm_eps: float = 1e-6
  dropout: float = 0.0

  def __post_init__(self):
    if self.version not in (1, 2):
      raise ValueError(f"Gemma version must be 1 or 2, got {self.version}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
    if self.sliding_window is not None and self.sliding_window < 1:
      raise ValueError(f"sliding_window must be None or >= 1, got {self.sliding_window}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"text dropout must be in [0, 1), got {self.dropout}")

  @property
  def attn_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5


@dataclasses.dataclass(frozen=True)
class QuantizationConfig:
  """Weight-only quantization of the matmul weights (see `models/quantize.py`).

  kind: "int8" (one scale per output channel) or "int4" (one scale per `group_size` elements of
  the last contraction axis, two values packed per int8 byte). vision: the SigLIP blocks too
  (by default only the Gemma decoder's attention and MLP weights; never the embedding).
  """

  kind: str = "int8"
  group_size: int = 128
  vision: bool = False

  def __post_init__(self):
    _check_choice("quantization kind", self.kind, QUANTIZATION_KINDS)
    if self.group_size < 2 or self.group_size % 2:
      raise ValueError(f"int4 group_size must be an even number >= 2, got {self.group_size}")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Low-rank adapters on matmul weights (see `models/lora.py`): y = x W + (alpha / rank) x A B.

  targets: regexes fully matching "/"-joined weight paths ("llm/layers/attn/q/w"); by default
    the decoder's attention and MLP (`LORA_DECODER`; add `LORA_VISION` for the SigLIP tower).
  dropout: on the adapters' input, during training only (a "dropout" rng is given).
  base: the checkpoint the adapters were trained on (an adapters checkpoint loads it).
  train_also: regexes of base params trained in full next to the adapters (peft's
    `modules_to_save`, e.g. "projector/.*"); an adapters checkpoint holds them too.
  """

  rank: int = 8
  alpha: float = 8.0
  dropout: float = 0.0
  targets: tuple[str, ...] = (LORA_DECODER,)
  base: str = ""
  train_also: tuple[str, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "targets", tuple(self.targets))
    object.__setattr__(self, "train_also", tuple(self.train_also))
    if self.rank < 1:
      raise ValueError(f"lora rank must be >= 1, got {self.rank}")
    if not self.alpha > 0:
      raise ValueError(f"lora alpha must be > 0, got {self.alpha}")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
    if not self.targets:
      raise ValueError("lora targets is empty; give regexes of weight paths, e.g. "
                       f"{LORA_DECODER!r}")
    for pattern in (*self.targets, *self.train_also):
      try:
        re.compile(pattern)
      except re.error as e:
        raise ValueError(f"lora pattern {pattern!r} is not a regular expression ({e})") from None

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  def targets_path(self, path: str) -> bool:
    return any(re.fullmatch(p, path) for p in self.targets)


@dataclasses.dataclass(frozen=True)
class PaliGemmaConfig:
  """PaliGemma = SigLIP + linear projector + Gemma, plus runtime numerics.

  dtype: compute dtype of activations; param_dtype: storage dtype of parameters.
  remat: rematerialisation policy of each scanned layer ("none", "full", "dots", "dots_no_batch").
  position_offset: first position id (1 matches HF's bf16 rounding; 0 is big_vision's).
  quantization: None, or how the params' matmul weights are stored (`QuantizationConfig`); the
    modules read it from the params, the config records it for checkpoints and shardings.
  lora: None, or the low-rank adapters the params carry (`LoraConfig`): init creates them on
    the weights it targets, and every forward adds them.
  """

  vision: SigLIPConfig = SigLIPConfig()
  text: GemmaConfig = GemmaConfig()
  image_token_id: int = 257_152
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: str = "none"
  position_offset: int = 1
  quantization: QuantizationConfig | None = None
  lora: LoraConfig | None = None

  def __post_init__(self):
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    _check_choice("remat", self.remat, REMAT_POLICIES)

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes: Any) -> "PaliGemmaConfig":
    """Returns a copy with top-level fields, or `vision.x` / `text.x` fields, replaced."""
    top, vision, text = {}, {}, {}
    for key, value in changes.items():
      if key.startswith("vision."):
        vision[key.removeprefix("vision.")] = value
      elif key.startswith("text."):
        text[key.removeprefix("text.")] = value
      else:
        top[key] = value
    for sub, fields in (("vision", vision), ("text", text)):
      if fields:
        top[sub] = _replace_checked(getattr(self, sub), fields)
    return _replace_checked(self, top)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "PaliGemmaConfig":
    d = dict(d)
    vision = SigLIPConfig(**d.pop("vision", {}))
    text = GemmaConfig(**d.pop("text", {}))
    quant = d.pop("quantization", None)
    quant = None if quant is None else QuantizationConfig(**quant)
    lora = d.pop("lora", None)
    lora = None if lora is None else LoraConfig(**lora)
    return cls(vision=vision, text=text, quantization=quant, lora=lora, **d)


def _replace_checked(obj: Any, changes: dict[str, Any]) -> Any:
  valid = [f.name for f in dataclasses.fields(obj)]
  unknown = sorted(set(changes) - set(valid))
  if unknown:
    raise ValueError(
        f"unknown {type(obj).__name__} field(s) {unknown}; valid fields: {', '.join(valid)}")
  return dataclasses.replace(obj, **changes)


def embed_scale(width: int, dtype: jnp.dtype) -> jnp.ndarray:
  """sqrt(width) rounded to the parameter dtype, as both references scale the text embedding."""
  return jnp.asarray(math.sqrt(width), dtype=dtype)
