"""Invariants of the PaliGemma model on tiny configs (see model_fixtures.py for the configs)."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_fixtures as F
from paligemma_jax.models import (VARIANTS, KVCache, PaliGemma, PaliGemmaConfig, SigLIPConfig,
                                  default_positions, get_variant, init_params,
                                  mask_ar_from_token_type_ids, prefix_lm_mask, sliding_window_mask)
from paligemma_jax.models.paligemma import dummy_inputs

F32_TOL = dict(rtol=1e-5, atol=1e-5)
M = F.VISION.num_patches  # 4 image tokens per image


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-position [B, S] flag: do the logits differ by more than rounding noise?"""
  return np.abs(a - b).max(axis=-1) > 1e-3


# --- shapes, finiteness, dtypes -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(F.CONFIGS))
def test_logits_shape_and_finite_under_jit(name):
  cfg = F.CONFIGS[name]
  batch = F.make_batch(cfg)
  logits = F.forward(cfg, F.random_params(cfg), batch)
  assert logits.shape == (*batch["tokens"].shape, cfg.text.vocab_size)
  assert logits.dtype == np.float32
  assert np.isfinite(logits).all()
  if cfg.text.final_logit_softcap:
    assert np.abs(logits).max() <= cfg.text.final_logit_softcap


def test_real_init_eager_matches_jit():
  """The model's own init gives finite logits, and eager execution equals the jitted forward."""
  cfg = F.PG2
  # An "rbg" key: the same init code, a third of threefry's compile time on CPU.
  params = jax.jit(functools.partial(init_params, cfg))(jax.random.key(0, impl="rbg"))
  batch = F.make_batch(cfg)
  args = (batch["tokens"], batch["images"], batch["input_mask"], batch["mask_ar"])
  eager = np.asarray(PaliGemma(cfg).apply(params, *args))
  jitted = F.forward(cfg, params, batch)
  assert np.isfinite(eager).all() and eager.std() > 0.1  # not a constant distribution
  np.testing.assert_allclose(eager, jitted, **F32_TOL)


def test_bf16_runs_finite_and_close_to_f32():
  cfg = F.PG2.replace(dtype="bfloat16", param_dtype="bfloat16")
  params = F.random_params(cfg)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  batch = F.make_batch(cfg)
  logits = F.forward(cfg, params, batch)
  ref = F.forward(F.PG2, F.random_params(F.PG2), batch)  # the same numbers, before rounding
  assert logits.dtype == np.float32 and np.isfinite(logits).all()
  assert not np.array_equal(logits, ref)  # it really computed in bf16
  np.testing.assert_allclose(logits, ref, atol=0.05 * np.abs(ref).max())
  assert (logits.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


# --- masks ------------------------------------------------------------------------------------


def test_prefix_lm_mask_docstring_example():
  # 2 image tokens, [bos, p1, \n], [s1, eos], 1 pad (masks.py docstring, numerics.md §8.1).
  input_mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0]])
  mask_ar = np.array([[0, 0, 0, 0, 0, 1, 1, 1]])
  prefix, s1, eos, pad = [1, 1, 1, 1, 1, 0, 0, 0], [1] * 6 + [0, 0], [1] * 7 + [0], [0] * 8
  expected = np.array([prefix] * 5 + [s1, eos, pad], bool)
  mask = np.asarray(prefix_lm_mask(input_mask, mask_ar))
  assert mask.dtype == bool
  np.testing.assert_array_equal(mask[0], expected)
  # HF token_type_ids are the same thing.
  np.testing.assert_array_equal(mask_ar_from_token_type_ids(jnp.asarray(mask_ar)), mask_ar)


@pytest.mark.parametrize("window", [1, 2, 3, 5, 100])
def test_sliding_window_mask_keeps_prefix_and_windows_suffix(window):
  prefix_len, s = 5, 10
  mask_ar = np.array([[0] * prefix_len + [1] * (s - prefix_len)])
  input_mask = np.ones((1, s), bool)
  base = np.asarray(prefix_lm_mask(input_mask, mask_ar))[0]
  got = np.asarray(sliding_window_mask(base[None], mask_ar, window))[0]
  for q in range(s):
    for k in range(s):
      in_prefix = q < prefix_len and k < prefix_len
      expected = base[q, k] and (in_prefix or q - k < window or q == k)
      assert got[q, k] == expected, (q, k)
  # The prefix block is never windowed: key 0 stays visible to the last prefix token.
  assert got[prefix_len - 1, 0]
  if window <= s - 1:  # the last suffix token loses key 0, which is `window` or more back
    assert not got[s - 1, 0]


def test_default_positions_ignore_left_padding():
  input_mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
  positions = np.asarray(default_positions(input_mask, offset=1))
  np.testing.assert_array_equal(positions, [[1, 1, 1, 2, 3], [1, 2, 3, 4, 5]])


def test_sliding_window_changes_logits():
  """The tiny window (3) is shorter than the sequence, so the windowed model must differ."""
  batch = F.make_batch(F.PG2)
  params = F.random_params(F.PG2)
  windowed = F.forward(F.PG2_WINDOW, params, batch)
  full = F.forward(F.PG2, params, batch)
  prefix_end = M + 3
  # Prefix tokens never lose keys; suffix tokens >= 3 back from the prefix do.
  np.testing.assert_allclose(windowed[:, :prefix_end], full[:, :prefix_end], **F32_TOL)
  assert _changed(windowed, full)[:, prefix_end + 1:].all()


# --- causality --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pg1", "pg2_window"])
def test_suffix_is_causal_and_prefix_bidirectional(name):
  cfg = F.CONFIGS[name]
  params, batch = F.random_params(cfg), F.make_batch(cfg)
  base = F.forward(cfg, params, batch)
  s = batch["tokens"].shape[1]
  suffix_start = M + 3
  for t in (suffix_start, suffix_start + 2, s - 1):
    edited = dict(batch, tokens=batch["tokens"].copy())
    edited["tokens"][:, t] = (edited["tokens"][:, t] + 7) % 100 + 3
    logits = F.forward(cfg, params, edited)
    np.testing.assert_array_equal(logits[:, :t], base[:, :t])
    assert _changed(logits, base)[:, t].all()
  # A prefix text token (the prompt word after bos) influences every position, earlier ones too.
  edited = dict(batch, tokens=batch["tokens"].copy())
  edited["tokens"][:, M + 1] = (edited["tokens"][:, M + 1] + 7) % 100 + 3
  assert _changed(F.forward(cfg, params, edited), base).all()
  # So does the image, which sits at the very start.
  assert _changed(F.forward(cfg, params, dict(batch, images=-batch["images"])), base).all()


def test_left_padding_gives_unpadded_logits():
  """Pads before the image placeholders (HF layout, tt=0 for pads) with cumsum positions."""
  cfg, pad = F.PG2, 3
  params, batch = F.random_params(cfg), F.make_batch(cfg)
  ref = F.forward(cfg, params, batch)
  b, s = batch["tokens"].shape
  for pad_mask_ar in (0, 1):  # HF's tt=0 and big_vision's mask_ar=1 for pads
    padded = dict(
        tokens=np.concatenate([np.full((b, pad), F.PAD, np.int32), batch["tokens"]], axis=1),
        images=batch["images"],
        input_mask=np.concatenate([np.zeros((b, pad), bool), batch["input_mask"]], axis=1),
        mask_ar=np.concatenate([np.full((b, pad), pad_mask_ar), batch["mask_ar"]], axis=1))
    logits = F.forward(cfg, params, padded)
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(logits[:, pad:], ref, **F32_TOL)


# --- cached decoding --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _jit_method(cfg: PaliGemmaConfig, method):
  return jax.jit(functools.partial(PaliGemma(cfg).apply, method=method))


@pytest.mark.parametrize("name", ["pg1", "pg2", "pg2_window"])
def test_cached_decoding_equals_full_forward(name):
  """Prefill the prompt into a KVCache, then feed the suffix one token at a time."""
  cfg = F.CONFIGS[name]
  params, batch = F.random_params(cfg), F.make_batch(cfg)
  full = F.forward(cfg, params, batch)  # mask_ar = [0..0, 1..1]
  tokens, input_mask, mask_ar = batch["tokens"], batch["input_mask"], batch["mask_ar"]
  b, s = tokens.shape
  prompt_len = int((mask_ar[0] == 0).sum())
  max_len = s + 2  # spare cache slots must stay masked

  image_tokens = _jit_method(cfg, PaliGemma.encode_images)(params, batch["images"])
  x = _jit_method(cfg, PaliGemma.embed_inputs)(params, tokens, image_tokens)
  positions = default_positions(input_mask, cfg.position_offset)
  # Masks of the whole sequence, padded with False columns to the cache length; row t is the
  # mask of query t against every cache slot.
  mask = prefix_lm_mask(input_mask, mask_ar)
  window = cfg.text.sliding_window
  sliding = None if window is None else sliding_window_mask(mask, mask_ar, window)
  widen = lambda m: None if m is None else jnp.pad(m, ((0, 0), (0, 0), (0, max_len - s)))
  mask, sliding = widen(mask), widen(sliding)
  rows = lambda m, lo, hi: None if m is None else m[:, lo:hi]

  decode = _jit_method(cfg, PaliGemma.decode)
  cache = KVCache.zeros(cfg.text, b, max_len, jnp.float32)
  logits, cache = decode(params, x[:, :prompt_len], positions[:, :prompt_len],
                         mask[:, :prompt_len], rows(sliding, 0, prompt_len), cache)
  np.testing.assert_allclose(logits, full[:, :prompt_len], **F32_TOL)
  for t in range(prompt_len, s):
    logits, cache = decode(params, x[:, t:t + 1], positions[:, t:t + 1], mask[:, t:t + 1],
                           rows(sliding, t, t + 1), cache)
    np.testing.assert_allclose(logits[:, 0], full[:, t], **F32_TOL)
  assert int(cache.length) == s
  assert not np.asarray(cache.k[:, :, s:]).any()  # nothing written past the sequence


# --- remat --------------------------------------------------------------------------------------


def _logits_and_grads(cfg: PaliGemmaConfig, params, batch, cotangent):
  """Logits and d(sum(logits * cotangent))/d(params) under jit, plus the traced program's text."""
  def loss(params):
    logits = PaliGemma(cfg).apply(params, batch["tokens"], batch["images"], batch["input_mask"],
                                  batch["mask_ar"])
    return jnp.sum(logits * cotangent), logits
  traced = jax.jit(jax.value_and_grad(loss, has_aux=True)).trace(params)
  (_, logits), grads = traced.lower().compile()(params)
  return logits, grads, str(traced.jaxpr)


@pytest.fixture(scope="module")
def no_remat_reference():
  cfg = F.PG2_WINDOW
  params, batch = F.random_params(cfg), F.make_batch(cfg)
  cotangent = np.random.default_rng(1).standard_normal(
      (*batch["tokens"].shape, cfg.text.vocab_size)).astype(np.float32)
  logits, grads, program = _logits_and_grads(cfg, params, batch, cotangent)
  assert "checkpoint" not in program and "remat" not in program
  return params, batch, cotangent, logits, grads


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_same_logits_and_grads(policy, no_remat_reference):
  params, batch, cotangent, ref_logits, ref_grads = no_remat_reference
  logits, grads, program = _logits_and_grads(F.PG2_WINDOW.replace(remat=policy), params, batch,
                                             cotangent)
  assert "checkpoint" in program or "remat" in program  # the policy really is applied
  np.testing.assert_allclose(logits, ref_logits, **F32_TOL)
  # Gradients are O(100) here, and some are zero up to rounding (SigLIP's key bias cannot change
  # a softmax): the absolute tolerance follows the largest gradient.
  scale = max(np.abs(r).max() for r in jax.tree.leaves(ref_grads))
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6 * scale)


# --- several images per example ------------------------------------------------------------


def _two_image_batch(cfg: PaliGemmaConfig) -> dict[str, np.ndarray]:
  """Row 0: [img x 2M][bos p \\n][s1..s4]. Row 1: [bos p][img x M][q][img x M][\\n][s1..s3]."""
  batch = F.make_batch(cfg, images=2)
  bos, p, nl = batch["tokens"][1, 2 * M:2 * M + 3]
  img = np.full(M, cfg.image_token_id)
  row1 = np.concatenate([[bos, p], img, [41], img, [nl]])
  suffix = batch["tokens"][1, len(row1):]
  batch["tokens"][1] = np.concatenate([row1, suffix])
  batch["mask_ar"][1] = np.arange(batch["tokens"].shape[1]) >= len(row1)
  return batch


def test_two_images_per_example():
  cfg = F.PG2
  params, batch = F.random_params(cfg), _two_image_batch(cfg)
  assert batch["images"].shape[:2] == (2, 2)
  assert ((batch["tokens"] == cfg.image_token_id).sum(1) == 2 * M).all()
  logits = F.forward(cfg, params, batch)
  assert logits.shape == (*batch["tokens"].shape, cfg.text.vocab_size)
  assert np.isfinite(logits).all()
  swapped = F.forward(cfg, params, dict(batch, images=batch["images"][:, ::-1]))
  assert _changed(swapped, logits).any(axis=1).all()  # both rows see the order of their images


def test_image_features_land_on_placeholders_in_order():
  """The k-th placeholder of a row gets the k-th image feature, also after text tokens (row 1).

  Reference: the text embeddings with the image features written in by plain numpy, run through
  the decoder directly; it must equal the model's own forward.
  """
  cfg = F.PG2
  params, batch = F.random_params(cfg), _two_image_batch(cfg)
  tokens = batch["tokens"]
  image_tokens = np.asarray(_jit_method(cfg, PaliGemma.encode_images)(params, batch["images"]))
  assert image_tokens.shape == (2, 2 * M, cfg.text.width)
  is_image = tokens == cfg.image_token_id
  text_only = np.where(is_image, F.PAD, tokens)
  x = np.array(_jit_method(cfg, PaliGemma.embed_inputs)(params, text_only, None))
  for r in range(tokens.shape[0]):
    x[r, np.flatnonzero(is_image[r])] = image_tokens[r]
  placed = np.asarray(_jit_method(cfg, PaliGemma.embed_inputs)(params, tokens, image_tokens))
  np.testing.assert_allclose(placed, x, **F32_TOL)
  mask = prefix_lm_mask(batch["input_mask"], batch["mask_ar"])
  positions = default_positions(batch["input_mask"], cfg.position_offset)
  ref, _ = _jit_method(cfg, PaliGemma.decode)(params, x, positions, mask, None, None)
  np.testing.assert_allclose(F.forward(cfg, params, batch), ref, **F32_TOL)


# --- bad input: one-line ValueErrors ------------------------------------------------------------


def _one_line_error(fn, *match: str) -> str:
  with pytest.raises(ValueError) as info:
    fn()
  message = str(info.value)
  assert "\n" not in message, message
  for m in match:
    assert m in message, (m, message)
  return message


def _apply(cfg, params, batch):
  return PaliGemma(cfg).apply(params, batch["tokens"], batch["images"], batch["input_mask"],
                              batch["mask_ar"])


def test_wrong_image_resolution():
  cfg = F.PG1
  batch = F.make_batch(cfg)
  batch["images"] = np.zeros((2, 1, 56, 56, 3), np.float32)
  _one_line_error(lambda: _apply(cfg, F.random_params(cfg), batch), "28", "56")


def test_placeholders_do_not_match_images():
  cfg = F.PG1
  batch = F.make_batch(cfg)
  batch["images"] = np.concatenate([batch["images"]] * 2, axis=1)  # 2 images, M placeholders
  _one_line_error(lambda: _apply(cfg, F.random_params(cfg), batch), f"has {M} image", str(2 * M))
  batch = F.make_batch(cfg)
  batch["images"] = None  # placeholders but no images
  _one_line_error(lambda: _apply(cfg, F.random_params(cfg), batch), f"has {M} image")


def test_images_without_images_axis_get_the_shape_hint():
  cfg = F.PG1
  batch = F.make_batch(cfg)
  batch["images"] = batch["images"][:, 0]
  _one_line_error(lambda: _apply(cfg, F.random_params(cfg), batch), "images[:, None]")


def test_config_errors():
  msg = _one_line_error(lambda: get_variant("paligemma_7b_224"), "paligemma_7b_224")
  assert all(name in msg for name in VARIANTS)
  _one_line_error(lambda: F.PG1.replace(depth=3), "['depth']", "remat", "text")
  _one_line_error(lambda: F.PG1.replace(**{"text.num_layers": 3}), "num_layers", "depth")
  _one_line_error(lambda: F.PG1.replace(**{"vision.size": 3}), "size", "image_size")
  _one_line_error(lambda: SigLIPConfig(image_size=30, patch_size=14), "30", "14")
  _one_line_error(lambda: F.PG1.replace(**{"vision.image_size": 100}), "100", "98")
  _one_line_error(lambda: F.PG1.replace(dtype="bf16"), "bf16", "bfloat16")
  _one_line_error(lambda: PaliGemmaConfig(param_dtype="fp32"), "fp32", "float32")
  _one_line_error(lambda: F.PG1.replace(remat="some"), "some", "dots")


# --- logical axis names -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pg1", "pg2"])
def test_every_param_has_logical_axis_names(name):
  cfg = F.CONFIGS[name]
  boxed = jax.eval_shape(PaliGemma(cfg).init, jax.random.key(0), *dummy_inputs(cfg))
  is_box = lambda x: isinstance(x, nn.Partitioned)
  leaves = jax.tree_util.tree_leaves_with_path(boxed, is_leaf=is_box)
  assert len(leaves) > 20
  for path, leaf in leaves:
    where = jax.tree_util.keystr(path)
    assert is_box(leaf), f"{where} has no logical axis names"
    assert len(leaf.names) == leaf.value.ndim, where
    assert all(n is None or isinstance(n, str) for n in leaf.names), where
    keys = [p.key for p in path]
    scanned = "layers" in keys
    assert (leaf.names[0] == "layers") == scanned, where
    assert leaf.names.count("layers") == int(scanned), where
    if scanned:
      depth = cfg.vision.depth if keys[1] == "vision" else cfg.text.depth
      assert leaf.value.shape[0] == depth, where


# --- config serialisation -----------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [*F.CONFIGS.values(), *VARIANTS.values(),
                                 F.PG2.replace(dtype="bfloat16", remat="dots", position_offset=0)])
def test_config_dict_round_trip(cfg):
  d = cfg.to_dict()
  assert PaliGemmaConfig.from_dict(d) == cfg
  assert PaliGemmaConfig.from_dict(json.loads(json.dumps(d))) == cfg  # JSON-safe
  assert hash(PaliGemmaConfig.from_dict(d)) == hash(cfg)


@pytest.mark.parametrize("shape", [(1, 1, 48), (1, 48), (1, 3, 48), (2, 1, 48)])
def test_single_row_einsum_equals_plain_einsum(shape):
  """The CPU single-row workaround (the row is duplicated, then sliced) changes no numbers."""
  from paligemma_jax.models.layers import einsum_f32
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((48, 4, 8)), jnp.bfloat16)
  spec = "BTD,DNH->BTNH" if len(shape) == 3 else "BD,DNH->BNH"
  got = jax.jit(lambda x, w: einsum_f32(spec, x, w))(x, w)
  want = jnp.einsum(spec, x.astype(jnp.float32), w.astype(jnp.float32))
  assert got.shape == want.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["pg1", "pg2_window"])
def test_unrolled_decode_steps_equal_scanned_ones(name):
  """Prefill (image encoder included) and decode steps over per-layer params (the CPU default)
  are the scanned math."""
  from paligemma_jax.inference import decode_tokens
  config = F.CONFIGS[name]
  params = F.random_params(config)
  rng = np.random.default_rng(1)
  m, r = config.vision.num_patches, config.vision.image_size
  tokens = rng.integers(3, 100, (2, m + 4)).astype(np.int32)
  tokens[:, :m] = config.image_token_id
  args = (params, tokens, rng.uniform(-1, 1, (2, 1, r, r, 3)).astype(np.float32),
          np.ones(tokens.shape, bool), np.zeros(tokens.shape, np.int32))
  run = lambda unroll: decode_tokens(*args, config=config, max_new_tokens=6, eos_id=-1,
                                     keep_logits=True, unroll_layers=unroll)
  scanned, unrolled = run(False), run(True)
  np.testing.assert_array_equal(np.asarray(scanned.tokens), np.asarray(unrolled.tokens))
  np.testing.assert_allclose(np.asarray(scanned.logits), np.asarray(unrolled.logits), atol=1e-5)


def test_unrolled_image_encoder_equals_scanned_one():
  from paligemma_jax.models import unstack_layers
  config = F.PG2
  params = F.random_params(config)
  r = config.vision.image_size
  images = np.random.default_rng(2).uniform(-1, 1, (2, 1, r, r, 3)).astype(np.float32)
  model = PaliGemma(config)
  encode = jax.jit(lambda p, unroll: model.apply(
      p, images, unstack_layers(p, "vision") if unroll else None,
      method=PaliGemma.encode_images), static_argnums=1)
  np.testing.assert_allclose(encode(params, True), encode(params, False), rtol=1e-6, atol=1e-6)
