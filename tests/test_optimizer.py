"""big_vision's optimizer chain: net updates against hand computations, schedules against their
formulas, freezing (no update, no state, no clipping share), lr multipliers, the default
weight-decay pattern on a real (tiny) PaliGemma param tree, and config validation."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paligemma_jax.training import (OptimizerConfig, ScheduleConfig, make_optimizer, make_schedule,
                                    optimizer_step, param_paths)
from tests.model_fixtures import PG2, random_params

B1, B2, EPS = 0.9, 0.999, 1e-8


def small_params() -> dict:
  rng = np.random.default_rng(0)
  draw = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
  return {"vision": {"patch_embed": {"w": draw(3, 2), "b": draw(2)}},
          "projector": {"w": draw(2, 4)},
          "llm": {"embedding": draw(5, 4), "final_norm": {"scale": draw(4)}}}


def grads_at(step: int, params: dict, scale: float = 1.0) -> dict:
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(lambda p: jnp.asarray(scale * rng.standard_normal(p.shape), jnp.float32),
                      params)


def run(cfg: OptimizerConfig, params: dict, steps: int, total: int = 10, grads=grads_at):
  """Applies `steps` updates; returns (per-step updates as numpy trees, final params, state)."""
  tx = make_optimizer(cfg, params, total)
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates = []
  for t in range(steps):
    u, state = update(grads(t, params), state, params)
    updates.append(jax.tree.map(np.asarray, u))
    params = optax.apply_updates(params, u)
  return updates, params, state


def flat(tree) -> dict[str, np.ndarray]:
  paths = jax.tree.leaves(param_paths(tree))
  return dict(zip(paths, (np.asarray(x, np.float64) for x in jax.tree.leaves(tree))))


def cosine(t: int, warmup: int, total: int) -> float:
  p = min(max((t - warmup) / (total - warmup), 0.0), 1.0)
  return 0.5 * (1 + math.cos(math.pi * p)) * (min(1.0, t / warmup) if warmup else 1.0)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_net_update_matches_hand_computation(name):
  """Δθ = −s(t)·(lr·adam(clip(g)) + wd·θ) (adam); −s(t)·lr·(adam(clip(g)) + wd·θ) (adamw)."""
  lr, wd, clip, warmup, total = 0.1, 0.05, 0.5, 2, 10
  cfg = OptimizerConfig(name=name, lr=lr, wd=wd, grad_clip_norm=clip,
                        wd_mults=(("vision/.*/w", 1.0), ("llm/.*", 0.5)),
                        schedule=ScheduleConfig("cosine", warmup_steps=warmup))
  params = small_params()
  updates, _, _ = run(cfg, params, 5, total)
  theta = flat(params)
  wd_mult = {"vision/patch_embed/w": 1.0, "llm/embedding": 0.5, "llm/final_norm/scale": 0.5}
  mu = {k: 0.0 for k in theta}
  nu = {k: 0.0 for k in theta}
  for t in range(5):
    g = flat(grads_at(t, params))
    norm = math.sqrt(sum((x**2).sum() for x in g.values()))
    g = {k: x * min(1.0, clip / norm) for k, x in g.items()}
    s = cosine(t, warmup, total)
    got = flat(updates[t])
    for k in theta:
      mu[k] = B1 * mu[k] + (1 - B1) * g[k]
      nu[k] = B2 * nu[k] + (1 - B2) * g[k] ** 2
      adam = (mu[k] / (1 - B1 ** (t + 1))) / (np.sqrt(nu[k] / (1 - B2 ** (t + 1))) + EPS)
      decay = wd * wd_mult.get(k, 0.0) * theta[k]
      want = -s * (lr * (adam + decay) if name == "adamw" else lr * adam + decay)
      # atol: optax forms Adam's bias correction 1 − b2^t in f32 (relative error ~3e-5 at t = 2).
      np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=3e-6, err_msg=f"{k} step {t}")
      theta[k] = theta[k] + got[k]
  assert all(not np.any(x) for x in flat(updates[0]).values())  # optax counts from 0: s(0) = 0.


def test_sgd_and_sgd_momentum():
  params = small_params()
  const = ScheduleConfig("constant")
  plain, _, _ = run(OptimizerConfig(name="sgd", lr=0.3, grad_clip_norm=None, schedule=const),
                    params, 2)
  for t in range(2):
    for k, g in flat(grads_at(t, params)).items():
      np.testing.assert_allclose(flat(plain[t])[k], -0.3 * g, rtol=1e-6)
  heavy, _, _ = run(OptimizerConfig(name="sgd", lr=0.3, momentum=0.5, grad_clip_norm=None,
                                    schedule=const), params, 2)
  g0, g1 = flat(grads_at(0, params)), flat(grads_at(1, params))
  for k in g0:
    np.testing.assert_allclose(flat(heavy[1])[k], -0.3 * (g1[k] + 0.5 * g0[k]), rtol=1e-6)


def test_adafactor_first_step_and_state():
  """Step 0: the second-moment decay is 0, so an unfactored leaf's direction is g/|g|; the
  momentum EMA (not debiased) takes 0.1 of it and is stored in bf16."""
  params = {"small": {"w": jnp.arange(1.0, 7.0).reshape(2, 3)},
            "big": {"w": jnp.ones((32, 40))}}
  cfg = OptimizerConfig(name="adafactor", lr=0.5, grad_clip_norm=None,
                        schedule=ScheduleConfig("constant"))
  grads = lambda t, p: jax.tree.map(lambda x: -2.0 * jnp.ones_like(x), p)
  updates, _, state = run(cfg, params, 1, grads=grads)
  np.testing.assert_allclose(updates[0]["small"]["w"], 0.5 * 0.1 * np.ones((2, 3)), rtol=1e-2)
  np.testing.assert_allclose(updates[0]["big"]["w"], 0.5 * 0.1 * np.ones((32, 40)), rtol=1e-2)
  shapes = {x.shape for x in jax.tree.leaves(state)}
  assert (32,) in shapes and (40,) in shapes  # factored row / column statistics
  assert (32, 40) in shapes  # only as the momentum, in bf16:
  momentum = [x for x in jax.tree.leaves(state) if x.shape == (32, 40)]
  assert [x.dtype for x in momentum] == [jnp.dtype(jnp.bfloat16)]


@pytest.mark.parametrize("cfg,total,expected", [
    (ScheduleConfig("cosine", warmup_steps=4), 20,
     {0: 0.0, 1: 0.25, 4: 1.0, 12: 0.5, 20: 0.0, 25: 0.0}),
    (ScheduleConfig("cosine", warmup_percent=0.05), 100,
     {0: 0.0, 5: 1.0, 3: 0.6, 100: 0.0}),
    (ScheduleConfig("linear", warmup_steps=2, linear_end=0.1), 12,
     {1: 0.5, 2: 1.0, 7: 0.1 + 0.9 * 0.5, 12: 0.1}),
    (ScheduleConfig("linear", power=2.0), 10, {0: 1.0, 5: 0.25, 10: 0.0}),
    (ScheduleConfig("rsqrt", warmup_steps=10, rsqrt_timescale=100.0), 1000,
     {5: 0.5, 10: 1.0, 110: 1 / math.sqrt(2), 310: 0.5}),
    (ScheduleConfig("rsqrt", rsqrt_timescale=100.0, rsqrt_shift=300.0), 1000,
     {0: 0.5, 500: 1 / 3}),
    (ScheduleConfig("constant", warmup_steps=4, cooldown_steps=5), 20,
     {2: 0.5, 10: 1.0, 15: 1.0, 18: 0.4, 20: 0.0}),
])
def test_schedules(cfg, total, expected):
  schedule = make_schedule(cfg, total)
  for step, value in expected.items():
    np.testing.assert_allclose(schedule(step), value, atol=1e-6, err_msg=f"step {step}")
  assert schedule(0).dtype == jnp.float32


def test_warmup_percent_rounds_like_big_vision():
  # 5% of 30 steps is 1.5 -> 2 (nearest); of 10 steps 0.5 -> at least 1.
  assert float(make_schedule(ScheduleConfig("constant", warmup_percent=0.05), 30)(1)) == 0.5
  assert float(make_schedule(ScheduleConfig("constant", warmup_percent=0.05), 10)(1)) == 1.0


def test_frozen_params_bit_identical_and_stateless():
  params = small_params()
  cfg = OptimizerConfig(lr=0.1, wd=0.1, freeze=("llm/.*",),
                        wd_mults=((".*", 1.0),), lr_mults=(("llm/.*", 3.0),),
                        schedule=ScheduleConfig("constant"))
  _, after, state = run(cfg, params, 3)
  for k, x in flat(after).items():
    if k.startswith("llm/"):
      assert np.array_equal(x, flat(params)[k]), k
    else:
      assert not np.array_equal(x, flat(params)[k]), k
  trained_leaves = len(jax.tree.leaves((params["vision"], params["projector"])))
  arrays = [x for x in jax.tree.leaves(state) if x.ndim]
  assert len(arrays) == 2 * trained_leaves  # Adam's mu and nu, for the trained leaves only.
  assert sum(x.size for x in arrays) == 2 * sum(x.size for x in jax.tree.leaves(
      (params["vision"], params["projector"])))
  assert int(optimizer_step(state)) == 3


def test_clipping_ignores_frozen_gradients():
  params = small_params()
  sgd = dict(name="sgd", lr=1.0, grad_clip_norm=1.0, schedule=ScheduleConfig("constant"))
  huge = lambda t, p: {**grads_at(t, p), "llm": jax.tree.map(lambda x: 1e6 * x,
                                                             grads_at(t, p)["llm"])}
  frozen, _, _ = run(OptimizerConfig(**sgd, freeze=("llm/.*",)), params, 1, grads=huge)
  g = grads_at(0, params)
  trained = {k: v for k, v in flat(g).items() if not k.startswith("llm/")}
  norm = math.sqrt(sum((x**2).sum() for x in trained.values()))
  assert norm > 1.0  # so the clip bites, and only the trained norm decides by how much
  for k, x in trained.items():
    np.testing.assert_allclose(flat(frozen[0])[k], -x / norm, rtol=1e-5)


def test_lr_multipliers_scale_updates_first_match_wins():
  params = small_params()
  base = dict(name="sgd", lr=0.2, grad_clip_norm=None, schedule=ScheduleConfig("constant"))
  plain, _, _ = run(OptimizerConfig(**base), params, 1)
  mults = (("vision/patch_embed/w", 2.0), ("vision/.*", 0.1), ("llm/.*", 0.5))
  scaled, _, _ = run(OptimizerConfig(**base, lr_mults=mults), params, 1)
  want = {"vision/patch_embed/w": 2.0, "vision/patch_embed/b": 0.1, "llm/embedding": 0.5,
          "llm/final_norm/scale": 0.5, "projector/w": 1.0}
  for k, mult in want.items():
    np.testing.assert_allclose(flat(scaled[0])[k], mult * flat(plain[0])[k], rtol=1e-6)


def test_default_weight_decay_pattern_on_paligemma_params():
  """big_vision's `.*/kernel$` decays SigLIP's matrices and img/head only; ours selects the same."""
  params = random_params(PG2)  # {"params": {...}}: paths are read without the collection key.
  cfg = OptimizerConfig(name="sgd", lr=1.0, wd=0.01, grad_clip_norm=None,
                        schedule=ScheduleConfig("constant"))
  zero = lambda t, p: jax.tree.map(jnp.zeros_like, p)
  updates, _, _ = run(cfg, params, 1, grads=zero)
  decayed = {k for k, u in flat(updates[0]).items() if np.any(u)}
  assert decayed == {
      "vision/patch_embed/w", "vision/layers/attn/q/w", "vision/layers/attn/k/w",
      "vision/layers/attn/v/w", "vision/layers/attn/out/w", "vision/layers/mlp/fc1/w",
      "vision/layers/mlp/fc2/w", "projector/w"}
  p = flat(params)
  for k in decayed:
    np.testing.assert_allclose(flat(updates[0])[k], -0.01 * p[k], rtol=1e-6)


def test_param_paths():
  paths = param_paths({"params": {"llm": {"embedding": 1}}, })
  assert paths == {"params": {"llm": {"embedding": "llm/embedding"}}}
  assert param_paths({"a": [1, {"b": 2}]}) == {"a": ["a/0", {"b": "a/1/b"}]}


@pytest.mark.parametrize("kw,message", [
    (dict(name="lamb"), "adam, adamw, sgd, adafactor"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(lr_mults=(("llm/.*", 0.0),)), "use `freeze`"),
    (dict(wd_mults=(("llm/.*", -1.0),)), "multiplier must be >= 0"),
    (dict(freeze=("/llm/.*",)), "never start with '/'"),
    (dict(freeze=("llm/(",)), "not a regular expression"),
    (dict(momentum_dtype="float16"), "float32, bfloat16"),
])
def test_bad_optimizer_config_fails_at_construction(kw, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    OptimizerConfig(**kw)


@pytest.mark.parametrize("kw,message", [
    (dict(name="exponential"), "cosine, linear, rsqrt, constant"),
    (dict(warmup_steps=2, warmup_percent=0.1), "not both"),
    (dict(warmup_percent=1.5), "warmup_percent must be in [0, 1]"),
])
def test_bad_schedule_config_fails_at_construction(kw, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    ScheduleConfig(**kw)


def test_unused_patterns_and_long_warmup_fail():
  params = small_params()
  with pytest.raises(ValueError, match="'img/.*' matches no parameter"):
    make_optimizer(OptimizerConfig(freeze=("img/.*",)), params, 10)
  with pytest.raises(ValueError, match="shorter than the 10 total steps"):
    make_schedule(ScheduleConfig(warmup_steps=10), 10)
  make_schedule(ScheduleConfig(warmup_steps=1), 1)  # 1-step debug runs are allowed.
