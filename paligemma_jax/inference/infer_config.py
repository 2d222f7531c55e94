"""The one boundary where a config (an ml_collections ConfigDict or a plain dict) becomes typed
dataclasses: `parse_infer_config(config) -> InferConfig`.

A config file (configs/*.py, `get_config(arg=None)`) has this shape:

    checkpoint: str        Orbax params dir or HF folder (required)
    tokenizer: str         the checkpoint's tokenizer.model (required)
    vqvae: str             VQ-VAE for segment masks ("" = boxes only)
    image_method: str      "hf" or "big_vision" image preprocessing
    max_length: int        prompt + new tokens at most
    quantize: str          "none", "int8" or "int4" weight-only quantization at load time
    quantize_group_size: int  int4: contraction elements per scale (default 128)
    task: {name, ...}      a task of paligemma_jax.data.TASKS and its options (shared with training)
    infer: {data: {name, split, data_dir, image_decoder}, output, batch_size, max_decode_len,
            sampler, num_beams, length_penalty, temperature, top_k, top_p, seed, overwrite}

Unknown keys, missing required values and values of the wrong type fail here with one line that
names the key and the valid ones. Nothing here imports ml_collections: a ConfigDict is read
through its `to_dict()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from paligemma_jax.config_fields import build
from paligemma_jax.data.images import IMAGE_METHODS
from paligemma_jax.data.tasks import Task, make_task
from paligemma_jax.data.tfds_input import TfdsSource

SAMPLERS = ("greedy", "sample", "beam")


@dataclasses.dataclass(frozen=True)
class InferSettings:
  """The `infer` section: which split, where to write, how to decode."""

  data: TfdsSource
  output: str
  batch_size: int = 8
  max_decode_len: int = 32  # new tokens at most (big_vision: the task's text_len)
  sampler: str = "greedy"  # greedy | sample | beam
  num_beams: int = 4
  length_penalty: float = 0.0  # beam score = logprob / length ** length_penalty; 0 = big_vision
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  seed: int = 0
  overwrite: bool = False

  def __post_init__(self) -> None:
    if not self.output:
      raise ValueError("config.infer.output is not set; pass --config.infer.output=preds.jsonl")
    for name in ("batch_size", "max_decode_len", "num_beams"):
      if getattr(self, name) < 1:
        raise ValueError(f"config.infer.{name} must be >= 1, got {getattr(self, name)}")
    if self.sampler not in SAMPLERS:
      raise ValueError(f"config.infer.sampler {self.sampler!r} is unknown; use one of "
                       f"{', '.join(SAMPLERS)}")


QUANTIZE_CHOICES = ("none", "int8", "int4")


@dataclasses.dataclass(frozen=True)
class InferConfig:
  """A whole inference config, typed; `task` is already built."""

  checkpoint: str
  tokenizer: str
  task: Task
  infer: InferSettings
  vqvae: str = ""
  image_method: str = "hf"
  max_length: int = 8192
  quantize: str = "none"
  quantize_group_size: int = 128

  def __post_init__(self) -> None:
    if self.quantize not in QUANTIZE_CHOICES:
      raise ValueError(f"config.quantize {self.quantize!r} is unknown; use one of "
                       f"{', '.join(QUANTIZE_CHOICES)}")
    for name in ("checkpoint", "tokenizer"):
      if not getattr(self, name):
        raise ValueError(f"config.{name} is not set; pass --config.{name}=PATH")
    if self.image_method not in IMAGE_METHODS:
      raise ValueError(f"config.image_method {self.image_method!r} is unknown; use one of "
                       f"{', '.join(IMAGE_METHODS)}")
    if self.max_length < 1:
      raise ValueError(f"config.max_length must be >= 1, got {self.max_length}")


def parse_infer_config(config: Any) -> InferConfig:
  """Validates `config` (a ConfigDict or a nested dict) and returns it as `InferConfig`."""
  values = config.to_dict() if hasattr(config, "to_dict") else config
  if not isinstance(values, Mapping):
    raise ValueError(f"a config must be a dict or ConfigDict, got {type(config).__name__}")
  values = dict(values)
  task = values.pop("task", None)
  if not isinstance(task, Mapping) or "name" not in task:
    raise ValueError("config.task must be a section with a 'name' (a task of "
                     "paligemma_jax.data.TASKS), e.g. task=dict(name='caption')")
  task = dict(task)
  name = task.pop("name")
  try:
    built = make_task(name, task)
  except ValueError as e:
    raise ValueError(f"config.task: {e}") from None
  return build(InferConfig, values, "config", given={"task": built})
