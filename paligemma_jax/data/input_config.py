"""Typed settings of the training / evaluation input, and the one boundary from plain dicts.

The trainer turns its ml_collections config into these with `input_config_from_dict(
config.input.to_dict())`; an unknown key anywhere fails there, naming the valid ones.

    input = InputConfig(
        members=(MemberConfig(name="coco_captions", split="train+restval", task="caption"),
                 MemberConfig(jsonl="~/data/longcap/train.jsonl", weight=0.5)),
        batch_size=256, text_len=32, seed=0)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from paligemma_jax.config_fields import build
from paligemma_jax.data.tfds_input import IMAGE_DECODERS

JSONL_TASK = "template"
JSONL_TASK_OPTIONS = {"prompt": "{prefix}", "reference_key": "suffix"}


@dataclasses.dataclass(frozen=True)
class MemberConfig:
  """One member of the input: a TFDS split (`name`) or a JSONL file (`jsonl`).

  Attributes:
    name: TFDS dataset name ("coco_captions", optionally ":1.1.0"); "" for a JSONL member.
    config: TFDS builder config ("" = the builder's default).
    split: TFDS split syntax ("train", "train[:95%]", "train+restval").
    data_dir: where the TFDS dataset is built ("" = TFDS's default).
    jsonl: path of a JSONL file of {"image", "prefix", "suffix"} rows (see sources.py).
    image_dir: folder the JSONL image paths are relative to ("" = the JSONL file's folder).
    task: a name of `tasks.TASKS`; "" = "caption" for TFDS, "{prefix}" -> "suffix" for JSONL.
    task_options: the task's options (`make_task(task, task_options)`).
    weight: mixture weight (> 0; normalised over the members).
    image_decoder: "pil" or "tf" (see tfds_input.decode_image).
  """

  name: str = ""
  config: str = ""
  split: str = "train"
  data_dir: str = ""
  jsonl: str = ""
  image_dir: str = ""
  task: str = ""
  task_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  weight: float = 1.0
  image_decoder: str = "pil"

  def __post_init__(self) -> None:
    if bool(self.name) == bool(self.jsonl):
      raise ValueError(f"an input member needs exactly one of name (a TFDS dataset) or jsonl "
                       f"(a JSONL file); got name={self.name!r} jsonl={self.jsonl!r}")
    if self.image_decoder not in IMAGE_DECODERS:
      raise ValueError(f"unknown image_decoder {self.image_decoder!r}; use one of "
                       f"{', '.join(IMAGE_DECODERS)}")
    object.__setattr__(self, "task_options", dict(self.task_options))

  @property
  def label(self) -> str:
    """Short name for messages and metrics: "coco_captions/2014:train" or "train.jsonl"."""
    if self.jsonl:
      return self.jsonl.rsplit("/", 1)[-1]
    return f"{self.name}{'/' + self.config if self.config else ''}:{self.split}"

  def task_spec(self) -> tuple[str, dict[str, Any]]:
    """(task name, options) with the defaults above applied."""
    if self.task:
      return self.task, dict(self.task_options)
    if self.jsonl:
      return JSONL_TASK, {**JSONL_TASK_OPTIONS, **self.task_options}
    return "caption", dict(self.task_options)


@dataclasses.dataclass(frozen=True)
class InputConfig:
  """The whole training input.

  Attributes:
    members: the datasets; one member = no mixing.
    batch_size: GLOBAL batch size; each of P processes makes batch_size / P rows.
    text_len: tokens of prefix + suffix per row (bos, "\\n" and eos included, image tokens not).
    num_images: images per row (every member must give this many).
    seed: the one seed of shuffling, mixing and reference choice.
    shuffle: False reads every member in stored order (still repeated).
    max_skipped: stop the run (one line) once more examples than this were skipped for bad data.
    read_threads: threads that read and preprocess examples (Grain ReadOptions.num_threads);
      0 = `default_read_threads()`, one per CPU this process may run on, at most 16.
    prefetch_buffer: examples read ahead (Grain ReadOptions.prefetch_buffer_size).
    worker_processes: 0 = preprocess in this process's threads; N > 0 = N Grain worker
      processes (`mp_prefetch`) each running the threads.
    mixture_block: positions per mixture block (see mixture.py).
    vqvae: the VQ-VAE params (big_vision's `vae-oid.npz`, or an Orbax dir of them) whose encoder
      makes the 16 `<seg>` codes of `refexp_segment` targets; "" where no member needs them.
  """

  members: tuple[MemberConfig, ...]
  batch_size: int
  text_len: int
  num_images: int = 1
  seed: int = 0
  shuffle: bool = True
  max_skipped: int = 100
  read_threads: int = 0
  prefetch_buffer: int = 64
  worker_processes: int = 0
  mixture_block: int = 1 << 16
  vqvae: str = ""

  def __post_init__(self) -> None:
    object.__setattr__(self, "members", tuple(self.members))
    if not self.members:
      raise ValueError("input.members is empty; name at least one dataset")
    for key in ("batch_size", "text_len", "num_images", "prefetch_buffer", "mixture_block"):
      value = getattr(self, key)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"input.{key} must be a positive int, got {value!r}")
    for key in ("max_skipped", "worker_processes", "seed", "read_threads"):
      value = getattr(self, key)
      if not isinstance(value, int) or value < 0:
        raise ValueError(f"input.{key} must be an int >= 0, got {value!r}")


def default_read_threads() -> int:
  """Reader threads when `read_threads` is 0: one per CPU this process may run on (a TPU host's
  many cores feed large images; on 2 cores, 2 threads beat 4 and 8), at most Grain's default 16."""
  try:
    cpus = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cpus = os.cpu_count() or 1
  return max(1, min(16, cpus))


def input_config_from_dict(values: Mapping[str, Any], where: str = "input") -> InputConfig:
  """`InputConfig` from plain values (e.g. `config.input.to_dict()`); members are dicts.

  Unknown keys fail with the valid names, e.g. "unknown config key input.batchsize; valid keys in
  input: members, batch_size, ..."; `where` names the section in errors ("config.input").
  """
  return build(InputConfig, values, where)
