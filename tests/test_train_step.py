"""The train step: its loss is big_vision's, micro-batches accumulate to the full batch, frozen
params stay bit-identical, non-finite updates are dropped, and any mesh gives the 1-device step.

conftest.py gives this process 8 simulated CPU devices; single-device runs use a 1x1x1 mesh.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compile_cache
from model_fixtures import PG2, make_batch, random_params
from paligemma_jax import sharding as S
from paligemma_jax.models import PaliGemma
from paligemma_jax.training import state as state_lib
from paligemma_jax.training import step as step_lib

# f32 compute, no final softcap (transfers train without it), a window so both masks are used.
CONFIG = PG2.replace(**{"text.final_logit_softcap": None, "text.sliding_window": 4})
NUM_IMAGE = CONFIG.vision.num_patches


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  # Tests that differ only in data share a compiled step through the persistent cache.
  with compile_cache.compilation_cache(str(tmp_path_factory.mktemp("jax_cache"))):
    yield


def _batch(b=8, seed=0, pad=2):
  batch = make_batch(CONFIG, batch=b, prefix_len=3, suffix_len=5, seed=seed)
  batch["mask_loss"] = batch["mask_ar"].copy()
  # Right padding on odd rows: pads are causal (mask_ar 1), invisible and unsupervised.
  batch["input_mask"][1::2, -pad:] = False
  batch["mask_loss"][1::2, -pad:] = 0
  batch["tokens"][1::2, -pad:] = 0
  return batch


def _tx():
  return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=1e-3))


def _run(mesh, params, batch, settings=step_lib.StepSettings(loss_start=NUM_IMAGE), tx=None,
         trainable=None, steps=1, config=CONFIG):
  tx = tx or _tx()
  trainable = trainable or jax.tree.map(lambda _: True, params)
  params = jax.tree.map(jnp.array, params)  # a copy: state_from_params donates its input
  state = state_lib.state_from_params(config, tx, mesh, params, seed=0)
  shardings = jax.tree.map(lambda x: x.sharding, state)
  step = step_lib.make_train_step(config, tx, lambda opt_state: 1e-2, trainable, settings, mesh,
                                  shardings)
  history = []
  for _ in range(steps):
    state, metrics = step(state, S.shard_batch(batch, mesh))
    history.append(jax.device_get(metrics))
  return state, history[-1] if steps == 1 else history


def _one_device():
  return S.make_mesh(1, 1, 1, devices=jax.devices()[:1])


def test_loss_equals_a_direct_computation_from_full_logits():
  params, batch = random_params(CONFIG), _batch()
  _, metrics = _run(_one_device(), params, batch)

  logits = jax.jit(PaliGemma(CONFIG).apply)(params, batch["tokens"][:, :-1], batch["images"],
                                            batch["input_mask"][:, :-1], batch["mask_ar"][:, :-1])
  logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
  nll = -np.take_along_axis(np.asarray(logp), batch["tokens"][:, 1:, None], -1)[..., 0]
  mask = batch["mask_loss"][:, 1:]
  want = np.mean((nll * mask).sum(1) / mask.sum(1))
  np.testing.assert_allclose(metrics["train_loss"], want, rtol=1e-5)
  assert metrics["finite"] == 1.0
  assert metrics["max_sup_seqlen"] == 5 and metrics["avg_sup_seqlen"] == 4.0
  assert metrics["tokens"] == batch["input_mask"].sum()


def test_scoring_every_position_equals_dropping_the_image_positions():
  params, batch = random_params(CONFIG), _batch(b=2)
  loss = jax.jit(lambda p, b, settings: step_lib.batch_loss(CONFIG, p, b, settings)[0],
                 static_argnums=2)
  full = loss(params, batch, step_lib.StepSettings(loss_start=0))
  text = loss(params, batch, step_lib.StepSettings(loss_start=NUM_IMAGE, vocab_chunk=50))
  np.testing.assert_allclose(full, text, rtol=1e-6)


@pytest.mark.parametrize("k", [4])
def test_micro_batches_accumulate_to_the_full_batch(k):
  params, batch = random_params(CONFIG), _batch()
  grad = jax.jit(lambda p, b, kk: step_lib.loss_and_grads(
      CONFIG, p, b, step_lib.StepSettings(micro_batches=kk, loss_start=NUM_IMAGE)),
      static_argnums=2)
  loss1, _, g1 = grad(params, batch, 1)
  lossk, _, gk = grad(params, batch, k)
  np.testing.assert_allclose(lossk, loss1, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(gk)):
    np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5)


def test_non_finite_update_is_dropped_but_the_step_counts():
  params, batch = random_params(CONFIG), _batch()
  batch["images"][0, 0, 0, 0, 0] = np.nan
  state, metrics = _run(_one_device(), params, batch)
  assert metrics["finite"] == 0.0 and not np.isfinite(metrics["train_loss"])
  assert int(state.step) == 1
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))
  # Adam's count did not move either: the schedule does not advance on a dropped step.
  counts = [x for x in jax.tree.leaves(state.opt_state) if x.dtype == jnp.int32]
  assert counts and all(int(c) == 0 for c in counts)


def test_bf16_compute_keeps_float32_masters_and_learns():
  config = CONFIG.replace(dtype="bfloat16")
  params, batch = random_params(CONFIG), _batch()
  state, history = _run(_one_device(), params, batch, config=config, steps=2)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
  assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_bf16_step_on_a_model_sharded_mesh_equals_one_device():
  # bf16 products differentiate through layers._matmul_bf16 (flattened [M, K] x [K, N] operands,
  # written-out transposes): the same step on a (data, fsdp, model) mesh, up to bf16 rounding.
  config = CONFIG.replace(dtype="bfloat16")
  want_state, want = _run(_one_device(), random_params(CONFIG), _batch(), tx=_sgd(),
                          config=config)
  got_state, got = _run(S.make_mesh(2, 2, 2), random_params(CONFIG), _batch(), tx=_sgd(),
                        config=config)
  np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-2)
  np.testing.assert_allclose(got["l2_grads"], want["l2_grads"], rtol=2e-2)
  start = jax.tree.leaves(random_params(CONFIG))
  for a, b, p0 in zip(jax.tree.leaves(want_state.params), jax.tree.leaves(got_state.params),
                      start):
    a, b, p0 = (np.asarray(v, np.float32) for v in (a, b, p0))
    # Each leaf's update on the mesh matches the 1-device one up to bf16 noise.
    np.testing.assert_allclose(b - p0, a - p0, atol=0.05 * np.abs(a - p0).max() + 1e-8)


def _sgd():
  # SGD keeps the update linear in the gradient; Adam's first step is lr * sign(g), which turns
  # 1e-9 differences in near-zero gradients into lr-sized ones.
  return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9))


@functools.lru_cache(maxsize=1)
def _one_device_step():
  return _run(_one_device(), random_params(CONFIG), _batch(), tx=_sgd())


@pytest.mark.parametrize("shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 4, 2)],
                         ids=["8x1x1", "1x8x1", "2x2x2", "1x4x2"])
def test_one_step_on_a_mesh_equals_one_device(shape):
  want_state, want = _one_device_step()
  mesh = S.make_mesh(*shape)
  got_state, got = _run(mesh, random_params(CONFIG), _batch(), tx=_sgd())
  np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-5)
  np.testing.assert_allclose(got["l2_grads"], want["l2_grads"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(want_state.params), jax.tree.leaves(got_state.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)
  # The optimizer state is sharded like the params it belongs to.
  embedding = got_state.params["params"]["llm"]["embedding"].sharding
  trace = got_state.opt_state[1][0].trace["params"]["llm"]["embedding"].sharding
  assert trace.spec == embedding.spec
  if shape[2] > 1:
    assert "model" in str(embedding.spec)


def test_frozen_params_stay_bit_identical_and_leave_the_gradient_norm():
  from paligemma_jax.training.optimizer import (OptimizerConfig, ScheduleConfig, frozen_mask,
                                                make_optimizer)
  params, batch = random_params(CONFIG), _batch()
  cfg = OptimizerConfig(name="adam", lr=1e-2, freeze=("vision/.*",),
                        schedule=ScheduleConfig(name="constant"))
  trainable = jax.tree.map(lambda f: not f, frozen_mask(cfg, params))
  state, history = _run(_one_device(), params, batch, tx=make_optimizer(cfg, params, 10),
                        trainable=trainable, steps=2)
  for name in params["params"]:
    for a, b in zip(jax.tree.leaves(params["params"][name]),
                    jax.tree.leaves(state.params["params"][name])):
      if name == "vision":
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
      else:
        assert not np.array_equal(np.asarray(b), np.asarray(a)), name
  _, _, grads = jax.jit(lambda p, b: step_lib.loss_and_grads(
      CONFIG, p, b, step_lib.StepSettings(loss_start=NUM_IMAGE)))(params, batch)
  trained = [g for n, g in grads["params"].items() if n != "vision"]
  want = np.sqrt(sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(trained)))
  np.testing.assert_allclose(history[0]["l2_grads"], want, rtol=1e-5)
  # Differentiating the trained params alone gives them the same gradients, the frozen zeros.
  _, _, masked = jax.jit(lambda p, b: step_lib.loss_and_grads(
      CONFIG, p, b, step_lib.StepSettings(loss_start=NUM_IMAGE), trainable=trainable))(
          params, batch)
  for name in params["params"]:
    for got, full in zip(jax.tree.leaves(masked["params"][name]),
                         jax.tree.leaves(grads["params"][name])):
      want = np.zeros_like(full) if name == "vision" else np.asarray(full)
      np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


def test_bf16_step_casts_every_param_but_the_tied_table():
  # The table stays the f32 master: the embedding gathers rows from it and the LM head casts it
  # a vocabulary chunk at a time, so no bf16 copy of all V rows is written per step.
  params = random_params(CONFIG)
  cast = step_lib._cast_but_embedding(params, jnp.bfloat16)
  assert cast["params"]["llm"]["embedding"] is params["params"]["llm"]["embedding"]
  rest = [x for path, x in jax.tree_util.tree_leaves_with_path(cast)
          if "embedding" not in jax.tree_util.keystr(path)]
  assert rest and all(x.dtype == jnp.bfloat16 for x in rest)
  assert params["params"]["llm"]["final_norm"]["scale"].dtype == jnp.float32  # input untouched


def test_bf16_einsum_backward_multiplies_in_bf16_with_the_same_products():
  # The cotangent of a product that is rounded to bf16 is exact in bf16, so `_matmul_bf16`'s
  # bf16 backward equals autodiff through the widened (f32) product up to summation order.
  from paligemma_jax.models import layers
  rng = np.random.default_rng(0)
  x, w, g = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
             for s in ((2, 5, 16), (16, 3, 4), (2, 5, 3, 4)))

  def grads(product):
    loss = lambda x, w: jnp.sum(product(x, w).astype(jnp.bfloat16).astype(jnp.float32) * g)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)

  got = grads(lambda x, w: layers.einsum_f32("BTD,DNH->BTNH", x, w, bf16_cotangent=True))
  want = grads(lambda x, w: jnp.einsum("BTD,DNH->BTNH", x.astype(jnp.float32),
                                       w.astype(jnp.float32)))
  for a, b in zip(got, want):
    assert a.dtype == b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                               rtol=1e-2, atol=1e-2)
  assert layers._matmul_dims("BTNH,NHD->BTD", (2, 5, 3, 4), (3, 4, 7)) == (10, 12, 7, (2, 5, 7))
  assert layers._matmul_dims("BiPjQC,PQCW->BijW", (1, 2, 3, 2, 3, 3), (3, 3, 3, 8)) is None


def test_pretrained_params_load_sharded_with_resampled_pos_embed(tmp_path):
  from paligemma_jax import checkpoints
  params = random_params(PG2)
  checkpoints.save_params(tmp_path / "ckpt", PG2, params)
  mesh = S.make_mesh(2, 2, 2)
  config, loaded = state_lib.load_pretrained(
      str(tmp_path / "ckpt"), {"vision.image_size": 56, "text.final_logit_softcap": None}, mesh)
  assert config.vision.image_size == 56 and config.text.final_logit_softcap is None
  pos = loaded["params"]["vision"]["pos_embed"]
  assert pos.shape == (16, PG2.vision.width)
  want = state_lib.resample_posemb(np.asarray(params["params"]["vision"]["pos_embed"]), 16)
  np.testing.assert_allclose(np.asarray(pos), np.asarray(want), atol=1e-6)
  # The corners of a corner-aligned zoom are the old corners.
  old = params["params"]["vision"]["pos_embed"]
  np.testing.assert_allclose(np.asarray(pos)[0], np.asarray(old)[0], atol=1e-6)
  embedding = loaded["params"]["llm"]["embedding"]
  want_spec = S.param_shardings(config, mesh)["params"]["llm"]["embedding"].spec
  assert embedding.sharding.spec == want_spec
  np.testing.assert_array_equal(np.asarray(embedding),
                                np.asarray(params["params"]["llm"]["embedding"]))


def test_resample_posemb_is_scipy_zoom_order_1():
  ndimage = pytest.importorskip("scipy.ndimage")
  old = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
  for grid in (3, 6, 8):
    want = ndimage.zoom(old.reshape(4, 4, 3), (grid / 4, grid / 4, 1), order=1)
    got = np.asarray(state_lib.resample_posemb(old, grid * grid))
    np.testing.assert_allclose(got, want.reshape(grid * grid, 3), atol=1e-6)


GOLDEN = pathlib.Path(__file__).parent / "golden" / "train_state_sharding.json"


def _state_specs(variant: str) -> dict[str, str]:
  from paligemma_jax.models import get_variant
  from paligemma_jax.training.optimizer import OptimizerConfig, make_optimizer
  config = get_variant(variant)
  mesh = S.make_mesh(2, 2, 2)
  params = state_lib.abstract_state(config, optax.identity(), mesh).params
  tx = make_optimizer(OptimizerConfig(name="adam", freeze=("vision/.*",)), params, 100)
  abstract = state_lib.abstract_state(config, tx, mesh)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): str(tuple(x.sharding.spec))
          for path, x in jax.tree_util.tree_leaves_with_path(abstract)}


def test_train_state_shardings_match_golden_file():
  """Params and optimizer state of PaliGemma 2 3B on a 2x2x2 mesh, the ViT frozen (no state).
  Regenerate with UPDATE_GOLDEN=1 after an intended change and review the diff."""
  got = _state_specs("paligemma2_3b_224")
  if os.environ.get("UPDATE_GOLDEN"):
    GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
  assert got == json.loads(GOLDEN.read_text())
  assert got["opt_state/inner_states/trained/inner_state/1/mu/params/llm/embedding"] == \
      got["params/params/llm/embedding"] == "('model', 'fsdp')"
  assert not any("mu/params/vision" in k for k in got)  # frozen params hold no state


def test_lora_step_differentiates_the_adapters_alone_and_keeps_the_base():
  """The LoRA step's gradients are the full model's gradients of the adapters (the base is
  joined in, not differentiated); after steps on a 2x2x2 mesh the base is bit-identical, the
  adapters moved, and the loss is the 1-device loss."""
  from paligemma_jax.models import lora
  from paligemma_jax.models.config import LORA_DECODER, LORA_VISION, LoraConfig
  config = CONFIG.replace(lora=LoraConfig(rank=4, alpha=8.0, targets=(LORA_DECODER, LORA_VISION)))
  base = random_params(CONFIG)
  adapters = lora.split(random_params(config, seed=3))[1]  # non-zero B: A gets gradients too
  batch = _batch()
  settings = step_lib.StepSettings(loss_start=NUM_IMAGE)
  loss, _, grads = step_lib.loss_and_grads(config, adapters, batch, settings, base=base)
  full_loss, _, full_grads = step_lib.loss_and_grads(config, lora.join(base, adapters), batch,
                                                     settings)
  np.testing.assert_allclose(loss, full_loss, rtol=1e-5)
  assert jax.tree.structure(grads) == jax.tree.structure(adapters)
  # Two differently compiled programs: equal up to summation order, relative to each leaf's scale.
  jax.tree.map(lambda g, f: np.testing.assert_allclose(
      g, f, rtol=1e-5, atol=1e-5 * float(np.abs(f).max())), grads, lora.split(full_grads)[1])

  losses = []
  for mesh in (_one_device(), S.make_mesh(2, 2, 2)):
    tx = _tx()
    placed = state_lib.frozen_base(config, mesh, jax.tree.map(jnp.array, base), seed=0)
    state = state_lib.state_from_params(config, tx, mesh, jax.tree.map(jnp.array, adapters), 0)
    step = step_lib.make_train_step(config, tx, lambda o: 1e-2, jax.tree.map(lambda _: True,
                                    adapters), settings, mesh,
                                    jax.tree.map(lambda x: x.sharding, state), placed)
    for _ in range(2):
      state, metrics = step(state, S.shard_batch(batch, mesh))
    losses.append(float(metrics["train_loss"]))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(placed), base)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                         state.params, adapters)
    assert min(jax.tree.leaves(moved)) > 0
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
