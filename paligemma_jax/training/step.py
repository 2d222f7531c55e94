"""One jitted train step: big_vision's loss, optional gradient accumulation, an optax update.

    step = make_train_step(model_cfg, tx, learning_rate, trainable, settings, mesh,
                           state_shardings, base)
    state, metrics = step(state, batch)      # state donated; metrics are replicated scalars

LoRA (`model_cfg.lora`): `state.params` are the adapters and `base` the frozen rest (compute
dtype or quantized); the forward joins them, and only the adapters are differentiated, so the
base gets no gradient at all (not a zeroed one).

Loss (shared/reference/training_and_tasks.md §1): the model reads tokens[:, :-1] under the
prefix-LM mask of mask_ar[:, :-1]; the final hidden states of the text positions (the leading
image positions are dropped before the LM head) are scored against tokens[:, 1:] by the
vocab-chunked cross-entropy, then reduced per example over mask_loss[:, 1:] (suffix + eos) and
averaged over the batch. The final-logit softcap is not applied (big_vision's training loss).

Numerics: params are float32 masters; the step casts them to the model's compute dtype (bf16)
before the forward, so the gradients arrive in float32 through the cast and FSDP gathers move
half the bytes. The tied embedding is the exception: it stays float32 (see
`_cast_but_embedding`). Only the trainable params are differentiated: frozen ones (`trainable`
False) get zero gradients and no backward work.

Gradient accumulation: the batch [B] is split into k micro-batches of B / k rows (row i goes to
micro-batch i mod k, which keeps every micro-batch evenly spread over the data shards); a
`lax.scan` sums their gradients, and sum / k equals the full batch's gradient because every
micro-batch has the same number of examples and the loss is a mean over examples.

LLM dropout (`config.text.dropout` > 0) and LoRA dropout are on in the step's forward only: the step's dropout key
is `fold_in(state.rng, state.step)` (a pure function of the seed and the step, so a resumed run
draws the same masks), and micro-batch j uses `fold_in(that key, j)`.

A non-finite loss or gradient norm never reaches the params: the update is dropped (state
unchanged except `step`) and `metrics["finite"]` is 0; the trainer skips or stops on it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paligemma_jax import sharding
from paligemma_jax.models import (PaliGemma, PaliGemmaConfig, attention_masks, default_positions,
                                  lora)
from paligemma_jax.training.loss import bv_loss, shift_for_loss, token_losses
from paligemma_jax.training.state import TrainState

BATCH_KEYS = ("tokens", "input_mask", "mask_ar", "mask_loss", "images")


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static settings of the step.

  loss_start: the first input position scored (the number of leading image placeholders; 0 scores
    every position, which is right for any layout and slower).
  """

  label_smoothing: float = 0.0
  micro_batches: int = 1
  loss_start: int = 0
  vocab_chunk: int = 8192


def _cast(params: Any, dtype: jnp.dtype) -> Any:
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def _cast_but_embedding(params: Any, dtype: jnp.dtype) -> Any:
  """`_cast`, except the tied [V, D] table, which stays as it is (the f32 master): the input
  embedding gathers its few rows from it (rows times sqrt(D) in f32, then the compute dtype, as
  HF under autocast) and the loss's LM head casts it a vocabulary chunk at a time, so no
  compute-dtype copy of the whole table is written each step."""
  table = params["params"].get("llm", {}).get("embedding")
  params = _cast(params, dtype)
  if table is None:
    return params
  llm = {**params["params"]["llm"], "embedding": table}
  return {**params, "params": {**params["params"], "llm": llm}}


def batch_loss(config: PaliGemmaConfig, params: dict, batch: Mapping[str, jax.Array],
               settings: StepSettings, dropout_rng: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(big_vision loss, {per_example [B], sup_len [B]}) of a batch; params in any dtype.

  `dropout_rng` turns the LLM's dropout on (a no-op when `config.text.dropout` is 0)."""
  text = shift_for_loss(batch["tokens"], batch["mask_ar"], batch["mask_loss"])
  input_mask_BxS = batch["input_mask"][:, :-1]
  start = settings.loss_start

  def forward(model: PaliGemma) -> jax.Array:
    image_tokens = model.encode_images(batch["images"])
    x_BxSxD = model.embed_inputs(text.inputs, image_tokens)
    positions_BxS = default_positions(input_mask_BxS, config.position_offset)
    mask, sliding = attention_masks(config, input_mask_BxS, text.mask_ar)
    h_BxSxD, _ = model.llm(x_BxSxD, positions_BxS, mask, sliding,
                           deterministic=dropout_rng is None)
    return h_BxSxD[:, start:]

  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  h_BxTxD = nn.apply(forward, PaliGemma(config))(params, rngs=rngs)
  embedding_VxD = params["params"]["llm"]["embedding"]
  losses_BxT = token_losses(h_BxTxD, embedding_VxD, text.targets[:, start:],
                            label_smoothing=settings.label_smoothing, chunk=settings.vocab_chunk)
  mask_BxT = text.mask_loss[:, start:]
  loss, per_example_B = bv_loss(losses_BxT, mask_BxT)
  return loss, {"per_example": per_example_B, "sup_len": mask_BxT.sum(-1)}


def _micro_batches(batch: Mapping[str, jax.Array], k: int) -> dict[str, jax.Array]:
  """[B, ...] -> [k, B / k, ...], micro-batch j = rows j, j + k, j + 2k, ..."""
  out = {}
  for name, x in batch.items():
    x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    # The logical name maps to (data, fsdp) under `sharding.activate`; a no-op without a mesh.
    out[name] = nn.with_logical_constraint(x, (None, "activation_batch", *[None] * (x.ndim - 2)))
  return out


def loss_and_grads(config: PaliGemmaConfig, params: dict, batch: Mapping[str, jax.Array],
                   settings: StepSettings, dropout_rng: jax.Array | None = None,
                   base: dict | None = None, trainable: Any = None
                   ) -> tuple[jax.Array, jax.Array, dict]:
  """(loss, sup_len [B or k x B/k], float32 grads of `params`), accumulated over
  `settings.micro_batches`. `base`: the frozen params joined to `params` (LoRA), not
  differentiated. `trainable` (bools shaped like `params`, None = all): the params that are
  differentiated; the others get zero gradients without any backward work (a frozen
  embedding's would be a [V, D] scatter and the LM head's weight product).

  `dropout_rng`: None (no dropout) or this step's key; micro-batch j gets `fold_in(key, j)`."""
  compute = config.compute_dtype
  leaves, treedef = jax.tree.flatten(params)
  keep = [True] * len(leaves) if trainable is None else jax.tree.leaves(trainable)
  frozen = [None if k else x for x, k in zip(leaves, keep)]

  def loss_fn(trained, b, rng):
    it = iter(trained)
    p = _cast_but_embedding(treedef.unflatten([next(it) if f is None else f for f in frozen]),
                            compute)
    loss, aux = batch_loss(config, p if base is None else lora.join(base, p), b, settings, rng)
    return loss, aux["sup_len"]

  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)

  def grad_fn(p, b, rng):
    (loss, sup_len), trained_grads = value_and_grad(
        [x for x, k in zip(jax.tree.leaves(p), keep) if k], b, rng)
    it = iter(trained_grads)
    grads = [next(it) if k else jnp.zeros(x.shape, x.dtype) for x, k in zip(leaves, keep)]
    return (loss, sup_len), treedef.unflatten(grads)

  k = settings.micro_batches
  if k == 1:
    (loss, sup_len), grads = grad_fn(params, batch, dropout_rng)
    return loss, sup_len, grads

  def body(grads_sum, micro_and_index):
    micro, j = micro_and_index
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, j)
    (loss, sup_len), grads = grad_fn(params, micro, rng)
    return jax.tree.map(jnp.add, grads_sum, grads), (loss, sup_len)

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  grads_sum, (losses, sup_len) = jax.lax.scan(body, zeros, (_micro_batches(batch, k),
                                                            jnp.arange(k)))
  return losses.mean(), sup_len, jax.tree.map(lambda g: g / k, grads_sum)


def _l2(tree: Any, keep: Any = None) -> jax.Array:
  leaves = jax.tree.leaves(tree if keep is None else jax.tree.map(
      lambda x, k: x if k else jnp.zeros((), x.dtype), tree, keep))
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def uses_dropout(config: PaliGemmaConfig) -> bool:
  return config.text.dropout > 0.0 or (config.lora is not None and config.lora.dropout > 0.0)


def train_step(config: PaliGemmaConfig, tx: optax.GradientTransformation,
               learning_rate: Callable[[Any], jax.Array], trainable: Any,
               settings: StepSettings, state: TrainState, batch: Mapping[str, jax.Array],
               base: dict | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """The un-jitted step (see the module docstring). `trainable`: bools shaped like the params
  (False = frozen, left out of the gradient norm). `learning_rate(opt_state)`: the lr that this
  update applies, for the metrics. `base`: a LoRA run's frozen base (else None)."""
  dropout_rng = None
  if uses_dropout(config):
    dropout_rng = jax.random.fold_in(state.rng, state.step)
  loss, sup_len, grads = loss_and_grads(config, state.params, batch, settings, dropout_rng, base,
                                       trainable)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = _l2(grads, trainable)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  new_state = TrainState(step=state.step + 1, params=keep(params, state.params),
                         opt_state=keep(opt_state, state.opt_state), rng=state.rng)
  sup_len = sup_len.astype(jnp.float32)
  metrics = {
      "train_loss": loss, "l2_grads": grad_norm, "l2_params": _l2(state.params),
      "l2_updates": _l2(updates), "lr": jnp.asarray(learning_rate(state.opt_state), jnp.float32),
      "avg_sup_seqlen": sup_len.mean(), "max_sup_seqlen": sup_len.max(),
      "tokens": batch["input_mask"].sum().astype(jnp.float32),
      "finite": finite.astype(jnp.float32),
  }
  return new_state, metrics


def make_train_step(config: PaliGemmaConfig, tx: optax.GradientTransformation,
                    learning_rate: Callable[[Any], jax.Array], trainable: Any,
                    settings: StepSettings, mesh: Mesh, state_shardings: TrainState,
                    base: dict | None = None
                    ) -> Callable[[TrainState, Mapping[str, jax.Array]],
                                  tuple[TrainState, dict[str, jax.Array]]]:
  """`train_step` jitted with explicit shardings, donating the state; runs under `mesh`.
  `base` (LoRA's frozen params, already placed) is passed to every step as it is."""
  batch_shardings = {"images": sharding.batch_sharding(mesh, 5),
                     **{k: sharding.batch_sharding(mesh, 2) for k in BATCH_KEYS if k != "images"}}
  replicated = NamedSharding(mesh, PartitionSpec())
  base_shardings = None if base is None else jax.tree.map(lambda x: x.sharding, base)
  jitted = jax.jit(
      lambda state, batch, base: train_step(config, tx, learning_rate, trainable, settings,
                                            state, batch, base),
      in_shardings=(state_shardings, batch_shardings, base_shardings),
      out_shardings=(state_shardings, replicated), donate_argnums=0)

  def step(state: TrainState, batch: Mapping[str, jax.Array]):
    with sharding.activate(mesh):
      return jitted(state, {k: batch[k] for k in BATCH_KEYS}, base)

  return step


# -- the step compiled on shapes alone (memory analyses) ---------------------------------------

def abstract_batch(config: PaliGemmaConfig, batch: int, text_len: int, mesh: Mesh | None = None
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of a batch of `batch` rows of one image and `text_len` text tokens after its image
  placeholders; on `mesh`'s (data, fsdp) axes when given."""
  s, r = config.vision.num_patches + text_len, config.vision.image_size
  shapes = {"tokens": ((batch, s), jnp.int32), "input_mask": ((batch, s), jnp.bool_),
            "mask_ar": ((batch, s), jnp.int32), "mask_loss": ((batch, s), jnp.int32),
            "images": ((batch, 1, r, r, 3), jnp.float32)}
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=None if mesh is None else
                                  sharding.batch_sharding(mesh, len(shape)))
          for k, (shape, dtype) in shapes.items()}


def compile_on_shapes(config: PaliGemmaConfig, tx: optax.GradientTransformation, trainable: Any,
                      mesh: Mesh, state: TrainState, batch: Mapping[str, jax.ShapeDtypeStruct],
                      base: dict | None = None) -> jax.stages.Compiled:
  """`train_step` (state donated, images-first loss start) compiled on abstract state, batch and
  LoRA base: nothing is allocated; `.memory_analysis()` gives what one device needs."""
  settings = StepSettings(loss_start=config.vision.num_patches)
  fn = functools.partial(train_step, config, tx, lambda _: jnp.float32(0), trainable, settings)
  with sharding.activate(mesh):
    return jax.jit(fn, donate_argnums=0).lower(state, batch, base).compile()


def peak_bytes(compiled: jax.stages.Compiled) -> int:
  """Arguments + outputs - donated (aliased) + temporaries of a compiled program."""
  a = compiled.memory_analysis()
  return (a.argument_size_in_bytes + a.output_size_in_bytes - a.alias_size_in_bytes
          + a.temp_size_in_bytes)
