"""LLM dropout (big_vision's `model.llm.dropout`, GemmaConfig.dropout): where it acts, that it is
off unless asked for (rate 0, or a deterministic forward, is the model as before), that inference
never sees it, and that training with it is deterministic in (seed, step), resume included."""

from __future__ import annotations

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compile_cache
from model_fixtures import PG1, PG2, make_batch, random_params
from paligemma_jax.models import PaliGemma, PaliGemmaConfig, attention_masks, default_positions
from paligemma_jax.training import config as config_lib
from paligemma_jax.training import step as step_lib
from paligemma_jax.training import trainer
from paligemma_jax.training.demo_data import ensure_demo_data
from test_trainer import _params, tiny_config
from test_train_step import _batch, _one_device, _run
from test_train_step import CONFIG as STEP_CONFIG
from test_transfer_configs import get_config, parse_train


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
  with compile_cache.compilation_cache(str(tmp_path_factory.mktemp("jax_cache"))):
    yield


def _with_dropout(config: PaliGemmaConfig, rate: float) -> PaliGemmaConfig:
  return config.replace(**{"text.dropout": rate})


def _forward(config: PaliGemmaConfig, params: dict, batch: dict, *, deterministic: bool,
             rng: jax.Array | None = None) -> np.ndarray:
  """Logits [B, S, V] of the full prefix-LM forward, with the decoder's dropout flag."""
  def fn(model: PaliGemma) -> jax.Array:
    x = model.embed_inputs(batch["tokens"], model.encode_images(batch["images"]))
    positions = default_positions(batch["input_mask"], config.position_offset)
    mask, sliding = attention_masks(config, batch["input_mask"], batch["mask_ar"])
    h, _ = model.llm(x, positions, mask, sliding, deterministic=deterministic)
    return model.logits(h)

  rngs = None if rng is None else {"dropout": rng}
  return np.asarray(jax.jit(lambda p, r: nn.apply(fn, PaliGemma(config))(p, rngs=r))(params,
                                                                                     rngs))


# --- the model ---------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [PG1, PG2], ids=["gemma1", "gemma2"])
def test_rate_zero_or_deterministic_is_the_model_as_before(config):
  params, batch = random_params(config), make_batch(config, batch=2)
  stored = _forward(config, params, batch, deterministic=True)  # no dropout anywhere
  # Rate 0 with dropout asked for, and rate > 0 in a deterministic forward: the same bits.
  np.testing.assert_array_equal(
      _forward(config, params, batch, deterministic=False, rng=jax.random.key(0)), stored)
  dropped = _with_dropout(config, 0.3)
  np.testing.assert_array_equal(_forward(dropped, params, batch, deterministic=True), stored)
  # The model's own forward (parity's entry point) with a rate is the one without.
  args = (batch["tokens"], batch["images"], batch["input_mask"], batch["mask_ar"])
  np.testing.assert_array_equal(np.asarray(jax.jit(PaliGemma(dropped).apply)(params, *args)),
                                np.asarray(jax.jit(PaliGemma(config).apply)(params, *args)))


def test_dropout_changes_the_forward_as_a_function_of_the_rng():
  config = _with_dropout(PG2, 0.3)
  params, batch = random_params(config), make_batch(config, batch=2)
  plain = _forward(config, params, batch, deterministic=True)
  a = _forward(config, params, batch, deterministic=False, rng=jax.random.key(1))
  again = _forward(config, params, batch, deterministic=False, rng=jax.random.key(1))
  b = _forward(config, params, batch, deterministic=False, rng=jax.random.key(2))
  assert np.isfinite(a).all()
  assert np.abs(a - plain).max() > 1e-2 and np.abs(a - b).max() > 1e-2
  np.testing.assert_array_equal(a, again)
  # Rematerialised layers redraw the same masks (the keys are inputs of the block).
  remat = _forward(config.replace(remat="full"), params, batch, deterministic=False,
                   rng=jax.random.key(1))
  np.testing.assert_allclose(remat, a, atol=1e-5)
  with pytest.raises(Exception, match="dropout"):  # asked for, but no "dropout" rng given
    _forward(config, params, batch, deterministic=False)


def _zero_weights(params: dict, *branches: str) -> dict:
  """A copy of params with the last matmul of the given decoder branches ("attn", "mlp") zeroed."""
  out = jax.tree.map(lambda x: x, params)
  layers = dict(out["params"]["llm"]["layers"])
  for branch in branches:
    last = "out" if branch == "attn" else "down"
    sub = dict(layers[branch])
    sub[last] = {"w": jnp.zeros_like(sub[last]["w"])}
    layers[branch] = sub
  out["params"] = {**out["params"], "llm": {**out["params"]["llm"], "layers": layers}}
  return out


@pytest.mark.parametrize("config", [PG1, PG2], ids=["gemma1", "gemma2"])
def test_dropout_acts_on_both_residual_branches_only(config):
  """A branch whose output is zero gives dropout nothing to drop: with both branches zeroed the
  forward is the deterministic one (no dropout on the embeddings, the image tokens or the final
  norm), and with either one left the other's dropout alone changes it."""
  config = _with_dropout(config, 0.5)
  params, batch = random_params(config), make_batch(config, batch=2)
  key = jax.random.key(3)

  def change(p) -> float:  # two programs (with and without the dropout ops): not bit-compared
    det = _forward(config, p, batch, deterministic=True)
    drop = _forward(config, p, batch, deterministic=False, rng=key)
    return float(np.abs(det - drop).max() / np.abs(det).max())

  assert change(_zero_weights(params, "attn", "mlp")) < 1e-5
  assert change(_zero_weights(params, "attn")) > 1e-2  # only the MLP branch is left
  assert change(_zero_weights(params, "mlp")) > 1e-2  # only the attention branch is left


def test_inference_with_a_dropout_config_is_unaffected():
  """decode_tokens (prefill + KV-cache steps, scanned and unrolled) ignores the rate."""
  from paligemma_jax.inference import decode_tokens
  config = PG1
  params = random_params(config)
  rng = np.random.default_rng(1)
  m, r = config.vision.num_patches, config.vision.image_size
  tokens = rng.integers(3, 100, (2, m + 4)).astype(np.int32)
  tokens[:, :m] = config.image_token_id
  args = (params, tokens, rng.uniform(-1, 1, (2, 1, r, r, 3)).astype(np.float32),
          np.ones(tokens.shape, bool), np.zeros(tokens.shape, np.int32))
  for unroll in (False, True):
    run = lambda c: decode_tokens(*args, config=c, max_new_tokens=4, eos_id=-1,
                                  keep_logits=True, unroll_layers=unroll)
    plain, dropped = run(config), run(_with_dropout(config, 0.3))
    np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(dropped.tokens))
    np.testing.assert_array_equal(np.asarray(plain.logits), np.asarray(dropped.logits))


def test_gemma_config_rejects_a_bad_rate():
  with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
    _with_dropout(PG1, 1.0)
  assert PaliGemmaConfig.from_dict(json.loads(json.dumps(_with_dropout(PG1, 0.1).to_dict()))
                                   ).text.dropout == 0.1


# --- the train step ----------------------------------------------------------------------------

def test_train_step_with_dropout_is_deterministic_in_seed_and_step():
  config = _with_dropout(STEP_CONFIG, 0.3)
  params, batch = random_params(config), _batch()
  mesh = _one_device()
  _, plain = _run(mesh, params, batch)
  state, history = _run(mesh, params, batch, config=config, steps=2)
  _, history_again = _run(mesh, params, batch, config=config, steps=2)
  assert all(np.isfinite(h["train_loss"]) and h["finite"] == 1.0 for h in history)
  assert history[0]["train_loss"] != plain["train_loss"]
  assert [h["train_loss"] for h in history] == [h["train_loss"] for h in history_again]
  # Micro-batches draw their own masks and run.
  settings = step_lib.StepSettings(loss_start=STEP_CONFIG.vision.num_patches, micro_batches=2)
  _, micro = _run(mesh, params, batch, config=config, settings=settings)
  assert np.isfinite(micro["train_loss"]) and micro["train_loss"] != history[0]["train_loss"]


def test_step_keys_depend_on_the_step_and_micro_batch():
  """Step s draws with fold_in(rng, s); two steps of the same batch and params differ."""
  config = _with_dropout(STEP_CONFIG, 0.3)
  params, batch = random_params(config), _batch()
  settings = step_lib.StepSettings(loss_start=STEP_CONFIG.vision.num_patches)
  loss = jax.jit(lambda p, b, r: step_lib.batch_loss(config, p, b, settings, r)[0])
  rng = jax.random.PRNGKey(7)
  at = lambda s: float(loss(params, batch, jax.random.fold_in(rng, s)))
  assert at(0) != at(1)
  no_rate = jax.jit(lambda p, b: step_lib.batch_loss(STEP_CONFIG, p, b, settings)[0])
  # a rate without a key drops nothing
  np.testing.assert_allclose(float(loss(params, batch, None)), float(no_rate(params, batch)),
                             rtol=1e-5)


# --- the config boundary and the trainer -------------------------------------------------------

def test_llm_dropout_reaches_the_model_config():
  values = {"llm_dropout": 0.3, "text": {"width": 32}}
  settings = config_lib.ModelSettings(**values)
  assert settings.text == {"width": 32, "dropout": 0.3}
  assert config_lib.ModelSettings().text == {"dropout": 0.0}  # a checkpoint's rate is reset
  with pytest.raises(ValueError, match=r"llm_dropout must be in \[0, 1\), got 1.5"):
    config_lib.ModelSettings(llm_dropout=1.5)
  with pytest.raises(ValueError, match="disagree") as e:
    config_lib.ModelSettings(llm_dropout=0.3, text={"dropout": 0.1})
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, res, rate", [
    ("screen2words", 224, 0.3), ("screen2words", 448, 0.3), ("scicap", 448, 0.1),
    ("widgetcap", 224, 0.1), ("chartqa", 448, 0.1), ("refcoco_seg", 224, 0.1)])
def test_transfer_configs_with_dropout_parse(name, res, rate, tmp_path):
  config = get_config(name, f"res={res}")
  assert config.model.llm_dropout == rate
  cfg, _ = parse_train(config, tmp_path)
  assert cfg.model.llm_dropout == rate
  assert config_lib.model_config(cfg, 257_152, 257_152).text.dropout == rate


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, str]:
  return ensure_demo_data(tmp_path_factory.mktemp("shapes"), num_train=24, num_test=4)


def test_resume_with_dropout_is_bit_identical(shapes, tmp_path):
  config = lambda: tiny_config(shapes, total_steps=4, **{"model.llm_dropout": 0.3})
  trainer.train(config(), str(tmp_path / "whole"))
  trainer.train(config(), str(tmp_path / "resumed"), max_steps=3)  # checkpoints at 2 and 3
  trainer.train(config(), str(tmp_path / "resumed"))  # 3 -> 4
  for a, b in zip(_params(tmp_path / "whole"), _params(tmp_path / "resumed")):
    np.testing.assert_array_equal(a, b)
  with open(os.path.join(tmp_path / "whole", "model_config.json")) as f:
    assert json.load(f)["text"]["dropout"] == 0.3
  # Dropout was on: the same run without it ends elsewhere.
  trainer.train(tiny_config(shapes, total_steps=4), str(tmp_path / "plain"))
  assert any(not np.array_equal(a, b) for a, b in zip(_params(tmp_path / "whole"),
                                                      _params(tmp_path / "plain")))
