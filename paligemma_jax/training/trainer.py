"""`train(config, workdir)`: the fine-tuning loop, resumable bit for bit.

Workdir layout:
    model_config.json   the PaliGemmaConfig being trained (written once; resume reads it)
    checkpoints/<step>/ TrainCheckpointer: state (step, params, opt_state, rng) + the input's state
    metrics.jsonl       one JSON object per logged step (process 0), eval results under their step
    tensorboard/        the same records as TensorBoard scalars (`tensorboard --logdir WORKDIR`)
    eval/step_<N>/      the evals' predictions and metrics (config.evals)
    params/             the final params checkpoint (infer.py / convert_checkpoint.py take it)
    loss.png            the training loss curve

A run started on a workdir that holds a finished checkpoint continues from the latest one with its
optimizer state, RNG and data position, so an interrupted run (even kill -9) rerun with the same
command ends with the same params as an uninterrupted one. Checkpoints commit atomically: a
half-written one is never restored.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paligemma_jax import checkpoints, sharding
from paligemma_jax.api import make_processor
from paligemma_jax.data.input_config import InputConfig
from paligemma_jax.data.input_pipeline import TrainInput
from paligemma_jax.data.tasks_boxes import MaskEncoder
from paligemma_jax.data.tokenizer import Tokenizer
from paligemma_jax.device_input import global_batch
from paligemma_jax.evaluation.run_evals import periodic_evaluator
from paligemma_jax.inference.parsers import mask_encoder, segmentation_codes
from paligemma_jax.inference.pipeline import load_vqvae
from paligemma_jax.models import PaliGemmaConfig, lora
from paligemma_jax.training import config as config_lib
from paligemma_jax.training import state as state_lib
from paligemma_jax.training.metrics import (MetricsWriter, peak_flops_per_device, throughput,
                                            train_flops_per_example)
from paligemma_jax.models.quantize import targets as quantize_targets
from paligemma_jax.training.optimizer import (frozen_mask, learning_rate, make_optimizer,
                                              optimizer_step, param_paths)
from paligemma_jax.training.predictor import Predictor
from paligemma_jax.training.step import StepSettings, make_train_step

Evaluate = Callable[[Predictor], dict[str, float]]


class NonFiniteError(FloatingPointError):
  """A non-finite loss or gradient norm with on_nonfinite="stop" (nothing of it was saved)."""


def initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                           process_id: int = -1) -> None:
  """`jax.distributed.initialize` with explicit flags, or auto-detected on TPU pod slices, SLURM
  and JAX_COORDINATOR_ADDRESS; a no-op on a single host. Call before any other JAX work."""
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes or None,
                               None if process_id < 0 else process_id)
  elif (os.environ.get("JAX_COORDINATOR_ADDRESS")
        or int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")):
    jax.distributed.initialize()


def mask_target_encoder(input_config: InputConfig) -> MaskEncoder | None:
  """The `<seg>` codes of `refexp_segment` targets from `input.vqvae`'s encoder (big_vision's
  `refcoco_mask2str`: the mask cropped to its box, resized to 64x64, encoded to 16 codes)."""
  if not input_config.vqvae:
    return None
  return functools.partial(segmentation_codes,
                           encode_fn=mask_encoder(load_vqvae(input_config.vqvae)))


def _model_config(cfg: config_lib.TrainConfig, tokenizer: Tokenizer, workdir: str, mesh: Mesh,
                  resuming: bool) -> tuple[PaliGemmaConfig, dict | None]:
  """(model config, pretrained params or None). A resumed run reads the config it wrote and
  loads nothing (its checkpoint holds the params), except a LoRA run's pretrained base (the
  checkpoints hold the adapters alone), read in the compute dtype."""
  path = os.path.join(workdir, "model_config.json")
  saved = None
  if resuming and os.path.exists(path):
    with open(path) as f:
      saved = PaliGemmaConfig.from_dict(json.load(f))
    if saved.lora is None or not cfg.from_checkpoint:
      return saved, None
  if not cfg.from_checkpoint:
    model = config_lib.model_config(cfg, tokenizer.vocab_size, tokenizer.image_token_id)
    params = None
  else:
    m = cfg.model
    text = {"final_logit_softcap": None, **m.text}  # transfers train without the final softcap
    overrides = {f"vision.{k}": v for k, v in m.vision.items()}
    overrides |= {f"text.{k}": v for k, v in text.items()}
    overrides |= {"dtype": m.dtype, "remat": m.remat, "param_dtype": "float32"}
    try:
      model, params = state_lib.load_pretrained(cfg.init, overrides, mesh,
                                                m.dtype if cfg.lora else "float32",
                                                variant=m.variant or None)
    except ValueError as e:
      raise ValueError(f"config.init / config.model: {str(e).splitlines()[0]}") from None
  if saved is not None:
    return saved, params
  if cfg.lora is not None:
    base = os.path.abspath(cfg.init) if cfg.from_checkpoint else ""
    model = model.replace(lora=cfg.lora.lora_config(base), quantization=cfg.lora.quantization())
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(model.to_dict(), f, indent=1)
    os.replace(path + ".tmp", path)
  return model, params


def _loss_start(batch: dict[str, np.ndarray], image_token_id: int, num_image_tokens: int) -> int:
  """The leading image placeholders every row has (the step drops them before the LM head).

  Every process must compile the same step, so each one's first batch has its say: the smallest
  answer of all processes is taken.
  """
  lead = batch["tokens"][:, :num_image_tokens] == image_token_id
  start = num_image_tokens if lead.all() else 0
  if jax.process_count() > 1:
    start = int(np.min(multihost_utils.process_allgather(np.int32(start))))
  return start


def _check_layout(batch: dict[str, np.ndarray], start: int, image_token_id: int) -> None:
  if start and not (batch["tokens"][:, :start] == image_token_id).all():
    raise ValueError("a batch has text before its images (<image> markers in a prompt) while the "
                     "first batch had the images first; put the markers in every prompt or none")


def _plot_loss(workdir: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if "train_loss" in r]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r["step"] for r in rows], [r["train_loss"] for r in rows])
  ax.set(xlabel="step", ylabel="train loss", yscale="log")
  fig.savefig(os.path.join(workdir, "loss.png"), dpi=100)
  plt.close(fig)


def train(config: Any, workdir: str, *, evaluate: Evaluate | None = None,
          max_steps: int | None = None) -> dict[str, float]:
  """Trains per `config` (a ConfigDict or dict, see training/config.py) in `workdir`.

  `evaluate(predictor) -> {name: value}` runs every `eval_every` steps and at the end (see
  predictor.py); by default it is `evaluation.periodic_evaluator` over `config.evals`, writing
  its files under workdir/eval/. `max_steps` stops after that many steps of this call (the run stays resumable;
  tests use it to interrupt). Returns the last logged metrics.
  """
  cfg = config_lib.parse_train_config(config)
  sizes = config_lib.validate(cfg, jax.device_count(), jax.process_count())
  workdir = os.path.abspath(workdir)
  mesh = sharding.make_mesh(*sizes)
  tokenizer = Tokenizer(cfg.tokenizer)
  ckpt = checkpoints.TrainCheckpointer(os.path.join(workdir, "checkpoints"),
                                       keep=cfg.keep_checkpoints)
  start = ckpt.latest_step()
  model, pretrained = _model_config(cfg, tokenizer, workdir, mesh, start is not None)
  processor = make_processor(model, tokenizer, cfg.image_method, antialias=cfg.image_antialias)
  host = TrainInput(cfg.input, processor, process_index=jax.process_index(),
                    process_count=jax.process_count(), encode_mask=mask_target_encoder(cfg.input))
  total_steps = cfg.num_steps(host.examples_per_epoch)
  abstract_params = state_lib.abstract_state(model, _dummy_tx(), mesh).params
  _check_train_also(model, abstract_params)
  tx = make_optimizer(cfg.optimizer, abstract_params, total_steps)
  trainable = jax.tree.map(lambda f: not f, frozen_mask(cfg.optimizer, abstract_params))
  lr_of = learning_rate(cfg.optimizer, total_steps)

  base, also = None, None  # LoRA: the frozen base, outside the state
  if model.lora is not None:
    if pretrained is not None and start is None and model.lora.train_also:
      also = state_lib.split_lora(model, pretrained)[1]  # trained from their pretrained values
    base = state_lib.frozen_base(model, mesh, pretrained, cfg.seed)
    pretrained = None
  if start is not None:
    _, state, extra = ckpt.restore(state_lib.abstract_state(model, tx, mesh))
    host.set_state(extra["input"])
    if jax.process_index() == 0:
      print(f"resuming from step {start} of {total_steps} ({ckpt.directory})")
  else:
    start = 0
    if pretrained is None:
      state = state_lib.init_state(model, tx, mesh, cfg.seed)
      if also:
        state = state_lib.state_from_params(model, tx, mesh, lora.join(state.params, also),
                                            cfg.seed)
    else:
      state = state_lib.state_from_params(model, tx, mesh, pretrained, cfg.seed)
      del pretrained
  writer = MetricsWriter(os.path.join(workdir, "metrics.jsonl"), start)
  shardings = jax.tree.map(lambda x: x.sharding, state)

  if evaluate is None and cfg.evals:
    evaluate = periodic_evaluator(cfg.evals, output_dir=os.path.join(workdir, "eval"), mesh=mesh)
  loop = _Loop(cfg, model, processor, host, mesh, ckpt, writer, evaluate, total_steps, tx,
               trainable, lambda o: lr_of(optimizer_step(o)), shardings, base)
  end = total_steps if max_steps is None else min(total_steps, start + max_steps)
  try:
    state, last = loop.run(state, start, end)
  finally:
    ckpt.close()  # waits for the saves in flight, also when the run stops on an error
  if end == total_steps:
    _save_final(workdir, model, state.params, base)
    if jax.process_index() == 0:
      _plot_loss(workdir)
  return last


def _check_train_also(model: PaliGemmaConfig, trained: dict) -> None:
  if model.lora is None:
    return
  names = jax.tree.leaves(param_paths(trained))
  for pattern in model.lora.train_also:
    if not any(re.fullmatch(pattern, n) for n in names):
      raise ValueError(f"config.lora.train_also {pattern!r} matches no parameter; paths look like "
                       "llm/embedding, projector/w, vision/layers/norm1/scale")
    if model.quantization is not None and any(
        re.fullmatch(pattern, n) and re.fullmatch(t, n)
        for n in names for t, _ in quantize_targets(model.quantization)):
      raise ValueError(f"config.lora.train_also {pattern!r} names weights that "
                       "config.lora.quantize stores quantized; train them with adapters instead")


def _save_final(workdir: str, model: PaliGemmaConfig, params: dict, base: dict | None) -> None:
  """params/ (infer.py, eval.py and convert_checkpoint.py take it), or for LoRA adapters/: the
  adapters alone, whose config names the base they load onto; with a random base (nothing to
  name) the merged params go to params/ as well."""
  if base is None:
    checkpoints.save_params(os.path.join(workdir, "params"), model, params, overwrite=True)
    return
  checkpoints.save_params(os.path.join(workdir, "adapters"), model, params, overwrite=True)
  if not model.lora.base:
    merged_config, merged = lora.merge(model, lora.join(base, params), jnp.float32)
    checkpoints.save_params(os.path.join(workdir, "params"), merged_config, merged,
                            overwrite=True)


def _dummy_tx():
  import optax
  return optax.identity()


class _Loop:
  """The steps from `start` to `end`: data → step → checks → logs → checkpoints → evals."""

  def __init__(self, cfg, model, processor, host, mesh, ckpt, writer, evaluate, total_steps, tx,
               trainable, lr_fn, shardings, base):
    self.cfg, self.model, self.processor, self.host, self.mesh = cfg, model, processor, host, mesh
    self.ckpt, self.writer, self.evaluate, self.total = ckpt, writer, evaluate, total_steps
    self.tx, self.trainable, self.lr_fn, self.shardings = tx, trainable, lr_fn, shardings
    self.base = base  # LoRA's frozen base, or None
    self.step_fn = None
    self.loss_start = 0
    self.num_image_tokens = cfg.input.num_images * model.vision.num_patches

  def _next_batch(self) -> dict[str, jax.Array]:
    batch = next(self.host)
    if self.step_fn is None:
      self.loss_start = _loss_start(batch, self.model.image_token_id, self.num_image_tokens)
      settings = StepSettings(label_smoothing=self.cfg.label_smoothing,
                              micro_batches=self.cfg.micro_batches, loss_start=self.loss_start)
      self.step_fn = make_train_step(self.model, self.tx, self.lr_fn, self.trainable, settings,
                                     self.mesh, self.shardings, self.base)
    _check_layout(batch, self.loss_start, self.model.image_token_id)
    return global_batch(batch, self.mesh)

  def _fetch(self, step: int, fetched: int, metrics: dict[str, jax.Array], tally: "_Tally"
             ) -> tuple[dict[str, float], float, int]:
    """(this step's metrics, tokens and non-finite steps since step `fetched`) on the host; stops
    the run (on_nonfinite="stop") or warns if any of those steps was non-finite."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    sums = tally.fetch()
    bad = int(sums["nonfinite"])
    if bad:
      message = (f"step {fetched + int(sums['first'])}: non-finite loss {sums['first_loss']} or "
                 f"gradient norm {sums['first_l2_grads']}; the update was dropped")
      if bad > 1:
        message += f" ({bad} non-finite steps up to step {step}, all dropped)"
      if self.cfg.on_nonfinite == "stop":
        raise NonFiniteError(message + " and the run stopped (config.on_nonfinite='skip' "
                             "skips such steps)")
      logging.warning(message)
    return values, float(sums["tokens"]), bad

  def run(self, state, start: int, end: int):
    """Metrics reach the host only at log and checkpoint steps (a device-side tally counts the
    non-finite steps in between, so none of them precedes a checkpoint with "stop"); the host
    waits for step k - 1 after dispatching step k, so at most one step is queued ahead."""
    bar = None
    if jax.process_index() == 0:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      bar = tqdm(total=self.total, initial=start, desc="train", dynamic_ncols=True)
    flops = train_flops_per_example(self.model, self.cfg.input.text_len, self.cfg.input.num_images)
    peak = peak_flops_per_device(jax.devices()[0].device_kind, self.cfg.peak_tflops_per_device)
    tally = _Tally(self.mesh)
    last: dict[str, float] = {}
    mark, mark_step, fetched = time.perf_counter(), start, start
    paused, tokens, nonfinite = 0.0, 0.0, 0  # since the last log: eval seconds, sums
    try:
      for step in range(start + 1, end + 1):
        batch = self._next_batch()  # the first one also builds the step function
        state, metrics = self.step_fn(state, batch)
        jax.block_until_ready(tally.add(metrics))  # the previous step's: bounds the run-ahead
        if bar is not None:
          bar.update(1)
        save = step == end or (self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0)
        log = step % self.cfg.log_every == 0 or step in (start + 1, end)
        if save or log:
          values, new_tokens, new_bad = self._fetch(step, fetched, metrics, tally)
          fetched, tokens, nonfinite = step, tokens + new_tokens, nonfinite + new_bad
        if log:
          now = time.perf_counter()
          took = max(now - mark - paused, 1e-9)
          rate = (step - mark_step) * self.cfg.input.batch_size / took
          last = {"step": step, **values, "nonfinite_steps": nonfinite, "examples_per_s": rate,
                  "tokens_per_s": tokens / took, "step_time": took / (step - mark_step),
                  **throughput(flops, rate, jax.device_count(), peak), **self.host.stats()}
          self.writer.write(last)
          mark, mark_step, paused, tokens, nonfinite = now, step, 0.0, 0.0, 0
          if bar is not None:
            bar.set_postfix(_postfix(last))
        if save:
          self.ckpt.save(step, state, {"input": self.host.get_state()})
        if self.evaluate and (step == end == self.total or (
            self.cfg.eval_every and step % self.cfg.eval_every == 0)):
          began = time.perf_counter()
          params = state.params if self.base is None else lora.join(self.base, state.params)
          results = self.evaluate(Predictor(self.model, params, self.processor, step))
          paused += time.perf_counter() - began  # not training time: kept out of the rates
          record = {"step": step, **{f"eval/{k}": float(v) for k, v in results.items()}}
          self.writer.write(record)
          last.update(record)
    finally:
      if bar is not None:
        bar.close()
      self.writer.close()
    return state, last


def _postfix(record: dict[str, float]) -> dict[str, str]:
  out = {"loss": f"{record['train_loss']:.4f}", "lr": f"{record['lr']:.2e}",
         "ex_s": f"{record['examples_per_s']:.1f}"}
  if "mfu" in record:
    out["mfu"] = f"{record['mfu']:.1%}"
  else:
    out["tflops"] = f"{record['tflops_per_s_per_device']:.3g}"
  return out


def _add_step(sums: dict[str, jax.Array], metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  steps = sums["steps"] + 1
  bad = metrics["finite"] == 0
  first = bad & (sums["nonfinite"] == 0)
  pick = lambda new, old: jnp.where(first, new, old)
  return {"steps": steps, "tokens": sums["tokens"] + metrics["tokens"],
          "nonfinite": sums["nonfinite"] + bad.astype(jnp.int32), "first": pick(steps, sums["first"]),
          "first_loss": pick(metrics["train_loss"], sums["first_loss"]),
          "first_l2_grads": pick(metrics["l2_grads"], sums["first_l2_grads"])}


class _Tally:
  """Device-side sums over the steps since the last fetch: their number and tokens, how many were
  non-finite, and the first of those (its index from 1, loss and gradient norm)."""

  def __init__(self, mesh: Mesh):
    replicated = NamedSharding(mesh, PartitionSpec())
    self._zeros = jax.jit(lambda: {"steps": jnp.int32(0), "tokens": jnp.float32(0),
                                   "nonfinite": jnp.int32(0), "first": jnp.int32(0),
                                   "first_loss": jnp.float32(0), "first_l2_grads": jnp.float32(0)},
                          out_shardings=replicated)
    self._add = jax.jit(_add_step, out_shardings=replicated)
    self.sums = self._zeros()

  def add(self, metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Adds a step's metrics; returns the sums before it (to wait on)."""
    previous, self.sums = self.sums, self._add(self.sums, metrics)
    return previous

  def fetch(self) -> dict[str, Any]:
    """The sums on the host; the tally starts again from zero."""
    sums = jax.device_get(self.sums)
    self.sums = self._zeros()
    return sums
