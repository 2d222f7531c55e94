"""The one boundary where an eval config (ml_collections ConfigDict or plain dict) becomes typed
frozen dataclasses: `parse_eval_config(config) -> EvalConfig` for eval.py, and
`parse_evals(config.evals) -> tuple[EvalSpec, ...]` for a training config's `evals` section.

    evals: a list of evals, or a dict {name: eval} (then each eval's name is its key, and its
        settings can be overridden as --config.evals.NAME.KEY=...); an eval has
        name: str              metric prefix and output sub-folder ("cococap_val")
        evaluator: str         a name of evaluation.EVALUATORS ("cider", "vqav2", ...)
        data: {...}            a data.MemberConfig: TFDS name/config/split/data_dir or
                               jsonl/image_dir, plus task and task_options (the rows it makes)
        decoding: {sampler, num_beams, length_penalty, max_decode_len}
                               sampler "greedy" | "beam" | "score" ("" = greedy; score for
                               perplexity); max_decode_len 0 = text_len
        batch_size: int        rows per predict call (padded to it and to the device count)
        text_len: int          prompt tokens (prompt + suffix for perplexity), as big_vision
        num_images: int        images per row
        image_antialias: bool  this eval's big_vision resize antialias, where it differs from
                               the run's (big_vision trains ai2d, rsvqa and vizwiz with it and
                               evaluates them without); absent or None = the run's
        options: {...}         the evaluator's options (to_lower, tokenize, vqvae, field keys)
    checkpoint, tokenizer      eval.py only: Orbax params dir or HF folder; tokenizer.model
    image_method               "hf" or "big_vision"
    image_antialias            big_vision's resize(..., antialias=True) (big_vision method only)
    output_dir                 predictions.jsonl and metrics.json go to <output_dir>/<name>/
    overwrite                  replace existing outputs (otherwise an existing one is an error)

Unknown keys, missing values and wrong types fail here with one line naming the key and the
valid ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from paligemma_jax.config_fields import build
from paligemma_jax.data.images import IMAGE_METHODS
from paligemma_jax.data.input_config import MemberConfig
from paligemma_jax.evaluation.evaluators import GENERATE, SCORE, get_evaluator

SAMPLERS = ("greedy", "beam", "score")


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How predictions are made: greedy, beam search, or scoring the reference (perplexity)."""

  sampler: str = ""  # "" = "score" for a SCORE evaluator, else "greedy"
  num_beams: int = 2
  length_penalty: float = 0.0  # big_vision: none
  max_decode_len: int = 0  # new tokens at most; 0 = the eval's text_len (big_vision)

  def __post_init__(self) -> None:
    if self.sampler and self.sampler not in SAMPLERS:
      raise ValueError(f"decoding.sampler {self.sampler!r} is unknown; use one of "
                       f"{', '.join(SAMPLERS)}")
    for key, least in (("num_beams", 1), ("max_decode_len", 0)):
      if getattr(self, key) < least:
        raise ValueError(f"decoding.{key} must be >= {least}, got {getattr(self, key)}")


@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """One evaluation: an evaluator over a split, with its decoding (resolved at construction)."""

  name: str
  evaluator: str
  data: MemberConfig
  decoding: Decoding = Decoding()
  batch_size: int = 32
  text_len: int = 32
  num_images: int = 1
  image_antialias: bool | None = None  # None: the run's config.image_antialias
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self) -> None:
    if not self.name or "/" in self.name:
      raise ValueError(f"an eval needs a name without '/' (it prefixes the metrics), got "
                       f"{self.name!r}")
    evaluator = get_evaluator(self.evaluator)
    object.__setattr__(self, "options", evaluator.check_options(self.evaluator, self.options))
    for key in ("batch_size", "text_len", "num_images"):
      if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
        raise ValueError(f"eval {self.name!r}: {key} must be an int >= 1, got "
                         f"{getattr(self, key)!r}")
    sampler = self.decoding.sampler or ("score" if evaluator.mode == SCORE else "greedy")
    if (sampler == "score") != (evaluator.mode == SCORE):
      want = "score" if evaluator.mode == SCORE else "greedy or beam"
      raise ValueError(f"eval {self.name!r}: evaluator {self.evaluator!r} needs sampler {want}, "
                       f"got {sampler!r}")
    object.__setattr__(self, "decoding", dataclasses.replace(
        self.decoding, sampler=sampler,
        max_decode_len=self.decoding.max_decode_len or self.text_len))

  @property
  def generates(self) -> bool:
    return get_evaluator(self.evaluator).mode == GENERATE


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """eval.py's whole config."""

  checkpoint: str
  tokenizer: str
  evals: tuple[EvalSpec, ...]
  output_dir: str
  overwrite: bool = False
  image_method: str = "hf"
  image_antialias: bool = False

  def __post_init__(self) -> None:
    for key in ("checkpoint", "tokenizer", "output_dir"):
      if not getattr(self, key):
        raise ValueError(f"config.{key} is not set; pass --config.{key}=...")
    if self.image_method not in IMAGE_METHODS:
      raise ValueError(f"config.image_method {self.image_method!r} is unknown; use one of "
                       f"{', '.join(IMAGE_METHODS)}")
    if self.image_antialias and self.image_method != "big_vision":
      raise ValueError(f"config.image_antialias applies to image_method 'big_vision' only (got "
                       f"{self.image_method!r}, whose PIL bicubic always antialiases); set "
                       "--config.image_method=big_vision or drop image_antialias")
    check_eval_antialias(self.evals, self.image_method)


def check_eval_antialias(evals: Sequence[EvalSpec], image_method: str) -> None:
  """One line if an eval asks for an antialiased resize that `image_method` does not have."""
  for spec in evals:
    if spec.image_antialias and image_method != "big_vision":
      raise ValueError(f"config.evals.{spec.name}.image_antialias applies to image_method "
                       f"'big_vision' only (got {image_method!r}); set "
                       "--config.image_method=big_vision or drop the eval's image_antialias")


def parse_evals(values: Any, where: str = "config.evals") -> tuple[EvalSpec, ...]:
  """A list of eval dicts (a config's `evals` section) as `EvalSpec`s; names must be unique."""
  if hasattr(values, "to_dict"):
    values = values.to_dict()
  if isinstance(values, Mapping):  # {name: eval}: overridable as --config.evals.NAME.KEY=...
    values = [{**_section(v, f"{where}.{k}"), "name": k} for k, v in values.items()]
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
    raise ValueError(f"{where} must be a list of evals (dicts) or a dict of them by name, got "
                     f"{type(values).__name__}")
  if not values:
    raise ValueError(f"{where} is empty; name at least one eval")
  specs = []
  for i, item in enumerate(values):
    path = f"{where}[{i}]"
    try:
      specs.append(build(EvalSpec, {"data": {}, **_section(item, path)}, path))
    except ValueError as e:
      message = str(e)
      raise ValueError(message if path in message else f"{path}: {message}") from None
  names = [s.name for s in specs]
  for name in names:
    if names.count(name) > 1:
      raise ValueError(f"{where}: two evals are named {name!r}; names must be unique")
  return tuple(specs)


def parse_eval_config(config: Any) -> EvalConfig:
  """Validates eval.py's config (ConfigDict or dict) and returns it typed."""
  values = _section(config.to_dict() if hasattr(config, "to_dict") else config, "config")
  evals = parse_evals(values.pop("evals", ()))
  return build(EvalConfig, values, "config", given={"evals": evals})


def _section(values: Any, where: str) -> dict[str, Any]:
  if hasattr(values, "to_dict"):
    values = values.to_dict()
  if not isinstance(values, Mapping):
    raise ValueError(f"{where} must be a section (a dict), got {values!r}")
  return dict(values)
