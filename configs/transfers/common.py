"""The skeleton every transfer config shares; each task file is a table of its own numbers.

    python train.py --config configs/transfers/vqav2.py:res=448 --workdir /tmp/vqav2_448 \
        --config.init=/ckpt/paligemma-3b-pt-448 --config.tokenizer=/ckpt/tokenizer.model

The argument is `res=224|448|896` (only the resolutions the reference publishes for the task; the
default is big_vision's config default where that is published, else 224), plus `data_dir=DIR`
(every TFDS member's and eval's data_dir; "" = TFDS's default, $TFDS_DATA_DIR or
~/tensorflow_datasets) and `jsonl_dir=DIR` (the folder of JSONL members, default
~/data/<name>, e.g. ~/data/textcaps).
Anything else is a `--config.KEY=...` override, e.g. --config.optimizer.lr=3e-6,
--config.input.members[0].split='train[:10%]', --config.evals.vqav2_minival.batch_size=64.

What every transfer gets (shared/reference/training_and_tasks.md §2-3): init from the pretrained
checkpoint of the same resolution (`config.init`; `model.vision.image_size` = res, so another
resolution's checkpoint is resampled), Adam b2 0.999, grad clip 1.0, cosine schedule with 5%
warm-up, big_vision's weight-decay pattern (SigLIP and projector matrices only), FSDP over all
devices, big_vision image preprocessing, and an `evals` section: the task's evaluator and decoding
(evaluators.md §12; eval decode length = text_len) plus the answers' perplexity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

EVAL_BATCH_SIZE = 256  # the reference: eval batches of 256 or 1024


@dataclasses.dataclass(frozen=True)
class Hparams:
  """One resolution's column of the reference's §3 table (PaliGemma paper App. J)."""

  batch_size: int
  lr: float
  epochs: float
  wd: float = 0.0
  label_smoothing: float = 0.0
  llm_dropout: float = 0.0
  freeze_vit: bool = False


def parse_arg(arg: str | None, published: Sequence[int], default_res: int, name: str
              ) -> dict[str, Any]:
  """`"res=448,data_dir=/data"` -> {"res": 448, "data_dir": "/data", "jsonl_dir": ""}; a bad
  argument or a resolution without a published setting is a one-line ValueError."""
  values = {"res": str(default_res), "data_dir": "", "jsonl_dir": ""}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in values:
      raise ValueError(f"{name}: bad config argument {item!r}; use res=N, data_dir=DIR, "
                       "jsonl_dir=DIR (e.g. configs/transfers/x.py:res=448)")
    values[key] = value
  if not values["res"].isdigit() or int(values["res"]) not in published:
    raise ValueError(f"{name}: res={values['res']} has no published setting; use one of "
                     f"{', '.join(f'res={r}' for r in published)}")
  return {**values, "res": int(values["res"])}


def tfds(name: str, split: str, task: str, config: str = "", weight: float = 1.0,
         **task_options: Any) -> dict[str, Any]:
  """A TFDS member (data.MemberConfig); every key present so each can be overridden."""
  return dict(name=name, config=config, split=split, data_dir="", jsonl="", image_dir="",
              image_decoder="pil", task=task, task_options=task_options, weight=weight)


def jsonl(filename: str, task: str, weight: float = 1.0, **task_options: Any) -> dict[str, Any]:
  """A JSONL member: `filename` in the config's jsonl_dir; images relative to the file."""
  return dict(name="", config="", split="", data_dir="", jsonl=filename, image_dir="",
              image_decoder="pil", task=task, task_options=task_options, weight=weight)


def evaluation(evaluator: str, data: Mapping[str, Any], *, sampler: str = "greedy",
               num_beams: int = 1, image_antialias: bool | None = None,
               **options: Any) -> dict[str, Any]:
  """An eval (evaluation.EvalSpec without name / text_len, which transfer_config fills in).
  `image_antialias` where big_vision's eval pp resizes otherwise than its training pp does."""
  spec = dict(evaluator=evaluator, data=dict(data),
              decoding=dict(sampler=sampler, num_beams=num_beams, length_penalty=0.0,
                            max_decode_len=0),  # 0 = text_len, as big_vision
              batch_size=EVAL_BATCH_SIZE, options=options)
  if image_antialias is not None:
    spec["image_antialias"] = image_antialias
  return spec


def perplexity(data: Mapping[str, Any]) -> dict[str, Any]:
  """big_vision's `pplx` eval of every config: per-token NLL of the first reference."""
  return dict(evaluator="perplexity", data=dict(data), decoding=dict(sampler="score"),
              batch_size=EVAL_BATCH_SIZE, options={})


def _located(member: Mapping[str, Any], where: Mapping[str, Any], name: str) -> dict[str, Any]:
  member = dict(member, task_options=dict(member["task_options"]))
  if member["jsonl"]:
    folder = where["jsonl_dir"] or f"~/data/{name}"
    member["jsonl"] = f"{folder.rstrip('/')}/{member['jsonl']}"
  else:
    member["data_dir"] = where["data_dir"]
  return member


def transfer_config(arg: str | None, *, name: str, hparams: Mapping[int, Hparams],
                    text_len: int, train: Sequence[Mapping[str, Any]],
                    evals: Mapping[str, Mapping[str, Any]], default_res: int = 224,
                    num_images: int = 1, antialias: bool = False) -> ml_collections.ConfigDict:
  """The training config at the `res` of `arg` (see the module docstring). `name` names the
  config in messages and the default JSONL folder ~/data/<name>."""
  where = parse_arg(arg, sorted(hparams), default_res, name)
  res, h = where["res"], hparams[where["res"]]
  c = ml_collections.ConfigDict()
  c.init = ""  # the pretrained checkpoint pt_{res}: Orbax params dir or HF folder (required)
  c.tokenizer = ""  # its tokenizer.model (required)
  c.image_method = "big_vision"
  c.image_antialias = antialias  # big_vision's resize(res, antialias=True) where its config has it
  c.model = dict(variant="", vision=dict(image_size=res), text={}, image_token_id=-1,
                 dtype="bfloat16", remat="none", llm_dropout=h.llm_dropout)
  c.input = dict(members=[_located(m, where, name) for m in train], batch_size=h.batch_size,
                 text_len=text_len, num_images=num_images, seed=0)
  # big_vision's frozen ViT is "img/.*", which includes the projector (img/head).
  freeze = ("vision/.*", "projector/.*") if h.freeze_vit else ()
  c.optimizer = dict(name="adam", lr=h.lr, wd=h.wd, b1=0.9, b2=0.999, grad_clip_norm=1.0,
                     freeze=freeze, schedule=dict(name="cosine", warmup_percent=0.05))
  c.total_steps = 0
  c.epochs = float(h.epochs)
  c.label_smoothing = h.label_smoothing
  c.mesh = dict(data=1, fsdp=-1, model=1)  # big_vision: FSDP over every device
  c.log_every = 50
  c.checkpoint_every = 1000
  c.eval_every = 0  # 0 = at the end only
  c.seed = 0
  c.on_nonfinite = "stop"
  c.evals = {key: dict(e, text_len=text_len, num_images=num_images,
                       data=_located(e["data"], where, name)) for key, e in evals.items()}
  return c
