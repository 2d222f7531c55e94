"""The one boundary where a training config (ml_collections ConfigDict or plain dict) becomes typed
frozen dataclasses: `parse_train_config(config) -> TrainConfig`, then `validate(cfg, devices)`.

A config file (configs/*.py, `get_config(arg=None)`) has this shape:

    model: {variant, vision: {...}, text: {...}, image_token_id, dtype, remat, llm_dropout}
        variant: a name of models.VARIANTS, or "" for a custom size given by vision/text
        vision / text: SigLIPConfig / GemmaConfig fields that override the variant's (or the
            defaults'); text.vocab_size / image_token_id of 0 / -1 = "from the tokenizer"
        dtype: compute dtype ("bfloat16"); params are always float32 masters
        llm_dropout: big_vision's `model.llm.dropout`, the Gemma blocks' dropout rate during
            training (becomes `text.dropout`; inference never applies it)
    init: "random" or a checkpoint (Orbax params dir, HF folder or big_vision .npz; an npz
        takes model.variant, or else the published variant its shapes match)
    tokenizer: the tokenizer.model (required)
    image_method: "hf" or "big_vision" image preprocessing
    image_antialias: big_vision's per-task `resize(..., antialias=True)` (image_method
        "big_vision" only; the transfer configs set it where big_vision's configs do)
    input: {members: [...], batch_size, text_len, ...}  (data.InputConfig, global batch)
    optimizer: {name, lr, wd, ..., schedule: {...}}   (training.OptimizerConfig)
    total_steps | epochs: exactly one > 0
    mesh: {data, fsdp, model}   (-1 = the devices left over)
    micro_batches, label_smoothing, log_every, checkpoint_every, eval_every, keep_checkpoints,
    seed, on_nonfinite ("skip" | "stop"), peak_tflops_per_device (for the MFU; 0 = by device)
    evals: {name: {evaluator, data, decoding, ...}}  (evaluation.parse_evals; run every
        eval_every steps and at the end)
    lora: {rank, alpha, dropout, targets, quantize, group_size}  (optional: LoRA / QLoRA on a
        frozen base, see LoraSettings)

Unknown keys, missing required values, wrong types and impossible combinations (a mesh that does
not fit the devices, a batch that does not split) fail here with one line naming the fix, before
any device work.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from paligemma_jax.config_fields import build
from paligemma_jax.data.images import IMAGE_METHODS
from paligemma_jax.data.input_config import InputConfig, input_config_from_dict
from paligemma_jax.evaluation.eval_config import EvalSpec, check_eval_antialias, parse_evals
from paligemma_jax.models import PaliGemmaConfig, get_variant
from paligemma_jax.models.config import (LORA_DECODER, QUANTIZATION_KINDS, LoraConfig,
                                         QuantizationConfig)
from paligemma_jax.models.quantize import as_quantization
from paligemma_jax.training.optimizer import OptimizerConfig

ON_NONFINITE = ("skip", "stop")


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """The `model` section: which architecture, in which compute dtype.

  `llm_dropout` becomes `text["dropout"]` here (unless `text` sets it), so every path that builds
  the model config from `text` (random init, a pretrained checkpoint's overrides) trains with it."""

  variant: str = ""
  vision: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  text: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  image_token_id: int = -1  # -1: the tokenizer's <image> id
  dtype: str = "bfloat16"
  remat: str = "none"
  llm_dropout: float = 0.0

  def __post_init__(self) -> None:
    object.__setattr__(self, "vision", dict(self.vision))
    text = dict(self.text)
    if not 0.0 <= self.llm_dropout < 1.0:
      raise ValueError(f"config.model.llm_dropout must be in [0, 1), got {self.llm_dropout}")
    if self.llm_dropout and text.get("dropout", self.llm_dropout) != self.llm_dropout:
      raise ValueError(f"config.model.llm_dropout={self.llm_dropout} and config.model.text."
                       f"dropout={text['dropout']} disagree; set only llm_dropout")
    # Always set: a checkpoint fine-tuned with dropout stores its rate, which must not carry over.
    text.setdefault("dropout", self.llm_dropout)
    object.__setattr__(self, "text", text)


@dataclasses.dataclass(frozen=True)
class LoraSettings:
  """The `lora` section: train low-rank adapters (models/lora.py) on a frozen base.

  rank, alpha, dropout, targets: `LoraConfig`'s (targets are regexes over weight paths such as
    "llm/layers/attn/q/w"; by default the decoder's attention and MLP).
  quantize: "none" (the base in the compute dtype) or "int8" / "int4" (QLoRA: the base stored
    quantized, int4 in groups of `group_size`).
  train_also: regexes of base params trained in full with the adapters (peft's
    `modules_to_save`, e.g. "llm/embedding" or "projector/.*"), from their pretrained values.
  The base holds no optimizer state and gets no gradient; checkpoints hold the adapters (and the
  `train_also` params) alone.
  """

  rank: int = 8
  alpha: float = 8.0
  dropout: float = 0.0
  targets: tuple[str, ...] = (LORA_DECODER,)
  quantize: str = "none"
  group_size: int = 128
  train_also: tuple[str, ...] = ()

  def __post_init__(self) -> None:
    if self.quantize not in ("none", *QUANTIZATION_KINDS):
      raise ValueError(f"config.lora.quantize {self.quantize!r} is unknown; use none, "
                       f"{', '.join(QUANTIZATION_KINDS)}")
    self.lora_config("")  # checks rank, alpha, dropout and targets

  def lora_config(self, base: str) -> LoraConfig:
    try:
      return LoraConfig(self.rank, self.alpha, self.dropout, self.targets, base, self.train_also)
    except ValueError as e:
      raise ValueError(f"config.lora: {e}") from None

  def quantization(self) -> QuantizationConfig | None:
    return as_quantization(self.quantize, self.group_size)


@dataclasses.dataclass(frozen=True)
class MeshSettings:
  """The `mesh` section: (data, fsdp, model) sizes; one of them may be -1 (the rest)."""

  data: int = -1
  fsdp: int = 1
  model: int = 1


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A whole training config, typed. `model` is resolved into `model_config` by `model_config()`."""

  tokenizer: str
  input: InputConfig
  optimizer: OptimizerConfig
  model: ModelSettings = ModelSettings()
  init: str = "random"
  image_method: str = "hf"
  image_antialias: bool = False
  total_steps: int = 0
  epochs: float = 0.0
  mesh: MeshSettings = MeshSettings()
  micro_batches: int = 1
  label_smoothing: float = 0.0
  log_every: int = 10
  # Dense bf16 peak TFLOP/s of one device, for the logged MFU; 0 = the table of known devices
  # (training/metrics.py PEAK_TFLOPS); devices it does not know (CPUs) log no MFU.
  peak_tflops_per_device: float = 0.0
  checkpoint_every: int = 1000
  eval_every: int = 0
  keep_checkpoints: int = 3
  seed: int = 0
  on_nonfinite: str = "stop"
  evals: tuple[EvalSpec, ...] = ()
  lora: LoraSettings | None = None

  def __post_init__(self) -> None:
    if not self.tokenizer:
      raise ValueError("config.tokenizer is not set; pass --config.tokenizer=PATH/tokenizer.model")
    if (self.total_steps > 0) == (self.epochs > 0):
      raise ValueError(f"set exactly one of config.total_steps and config.epochs (> 0), got "
                       f"total_steps={self.total_steps} epochs={self.epochs}")
    if self.image_method not in IMAGE_METHODS:
      raise ValueError(f"config.image_method {self.image_method!r} is unknown; use one of "
                       f"{', '.join(IMAGE_METHODS)}")
    if self.image_antialias and self.image_method != "big_vision":
      raise ValueError(f"config.image_antialias applies to image_method 'big_vision' only (got "
                       f"{self.image_method!r}, whose PIL bicubic always antialiases); set "
                       "--config.image_method=big_vision or drop image_antialias")
    check_eval_antialias(self.evals, self.image_method)
    if self.on_nonfinite not in ON_NONFINITE:
      raise ValueError(f"config.on_nonfinite {self.on_nonfinite!r} is unknown; use one of "
                       f"{', '.join(ON_NONFINITE)}")
    for name in ("micro_batches", "log_every", "keep_checkpoints"):
      if getattr(self, name) < 1:
        raise ValueError(f"config.{name} must be >= 1, got {getattr(self, name)}")
    for name in ("checkpoint_every", "eval_every"):
      if getattr(self, name) < 0:
        raise ValueError(f"config.{name} must be >= 0 (0 = never), got {getattr(self, name)}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"config.label_smoothing must be in [0, 1), got {self.label_smoothing}")
    if self.input.batch_size % self.micro_batches:
      raise ValueError(f"config.input.batch_size {self.input.batch_size} does not divide into "
                       f"config.micro_batches={self.micro_batches}; use a divisor of the batch")

  @property
  def from_checkpoint(self) -> bool:
    return self.init != "random"

  def num_steps(self, examples_per_epoch: int) -> int:
    """total_steps, or round(epochs * examples / batch) as big_vision's `steps`."""
    if self.total_steps:
      return self.total_steps
    return max(1, round(self.epochs * examples_per_epoch / self.input.batch_size))


def parse_train_config(config: Any) -> TrainConfig:
  """Validates `config` (a ConfigDict or a nested dict) and returns it as `TrainConfig`.

  Checks that need no devices and no data run here; `validate` adds the device checks.
  """
  values = config.to_dict() if hasattr(config, "to_dict") else config
  if not isinstance(values, Mapping):
    raise ValueError(f"a config must be a dict or ConfigDict, got {type(config).__name__}")
  values = dict(values)
  given: dict[str, Any] = {}
  if "input" not in values:
    raise ValueError("config.input is missing; add an input section (see data.InputConfig)")
  given["input"] = input_config_from_dict(values.pop("input"), "config.input")
  if "evals" in values:
    given["evals"] = parse_evals(values.pop("evals"))
  return build(TrainConfig, values, "config", given)


def model_config(cfg: TrainConfig, vocab_size: int, image_token_id: int) -> PaliGemmaConfig:
  """The model's config: variant + overrides, float32 params, the config's compute dtype.

  `vocab_size` / `image_token_id` (the tokenizer's) fill `text.vocab_size` / `image_token_id`
  left at 0 / -1. A checkpoint's own config is merged in by `state.py`, not here.
  """
  m = cfg.model
  base = get_variant(m.variant) if m.variant else PaliGemmaConfig()
  text = dict(m.text)
  if not m.variant and not text.get("vocab_size"):
    text["vocab_size"] = vocab_size + (-vocab_size % 64)  # padded as HF pads its rows
  elif text.get("vocab_size") == 0:
    text.pop("vocab_size")
  overrides = {f"vision.{k}": v for k, v in m.vision.items()}
  overrides |= {f"text.{k}": v for k, v in text.items()}
  token_id = m.image_token_id if m.image_token_id >= 0 else image_token_id
  if not m.variant or m.image_token_id >= 0:
    overrides["image_token_id"] = token_id
  try:
    return base.replace(dtype=m.dtype, param_dtype="float32", remat=m.remat, **overrides)
  except (TypeError, ValueError) as e:
    raise ValueError(f"config.model: {e}") from None


def validate(cfg: TrainConfig, num_devices: int, process_count: int = 1) -> tuple[int, int, int]:
  """Checks paths, the mesh against the devices and the batch against the mesh; returns the
  mesh sizes (data, fsdp, model) with -1 resolved."""
  if not os.path.isfile(cfg.tokenizer):
    raise ValueError(f"config.tokenizer {cfg.tokenizer} is not a file; pass the tokenizer.model")
  if cfg.from_checkpoint and not (os.path.isdir(cfg.init) or (os.path.isfile(cfg.init)
                                                             and cfg.init.endswith(".npz"))):
    raise ValueError(f"config.init {cfg.init} is neither 'random' nor a checkpoint (an Orbax "
                     "params or HF folder, or a big_vision .npz file)")
  for i, member in enumerate(cfg.input.members):
    if member.jsonl and not os.path.isfile(os.path.expanduser(member.jsonl)):
      raise ValueError(f"config.input.members[{i}].jsonl {member.jsonl} does not exist")
    if member.task_spec()[0] == "refexp_segment" and not cfg.input.vqvae:
      raise ValueError(f"config.input.members[{i}]: task refexp_segment trains on the <seg> codes "
                       "of each mask, made by the VQ-VAE encoder; pass "
                       "--config.input.vqvae=vae-oid.npz (or its Orbax dir)")
  vqvae = cfg.input.vqvae
  if vqvae and not (os.path.isdir(vqvae) or (os.path.isfile(vqvae) and vqvae.endswith(".npz"))):
    raise ValueError(f"config.input.vqvae {vqvae} is neither a .npz file (big_vision's "
                     "vae-oid.npz) nor an Orbax dir of VQ-VAE params")
  sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.model]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh {tuple(sizes)}: sizes must be >= 1 with at most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes and num_devices % known == 0:
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh data={cfg.mesh.data} fsdp={cfg.mesh.fsdp} "
                     f"model={cfg.mesh.model} does not fit the {num_devices} devices; make the "
                     f"product {num_devices} (or set one size to -1)")
  split = sizes[0] * sizes[1]
  micro = cfg.input.batch_size // cfg.micro_batches
  if micro % split:
    raise ValueError(f"a micro-batch of {micro} rows (input.batch_size {cfg.input.batch_size} / "
                     f"micro_batches {cfg.micro_batches}) does not divide by the mesh's data x "
                     f"fsdp = {split}; use a batch size that is a multiple of "
                     f"{split * cfg.micro_batches}")
  if cfg.input.batch_size % process_count:
    raise ValueError(f"config.input.batch_size {cfg.input.batch_size} does not divide by the "
                     f"{process_count} processes")
  return sizes[0], sizes[1], sizes[2]


__all__ = ["ModelSettings", "LoraSettings", "MeshSettings", "TrainConfig", "parse_train_config", "model_config",
           "validate"]
