"""Samplers: logit warpers against HF's, sampling frequencies, seeds, and decoding invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_fixtures as F
from paligemma_jax.inference import (Sampler, choose_tokens, generate, top_k_filter, top_p_filter,
                                     warp_logits)

NEW_TOKENS = 8


def random_logits(ties: bool, seed: int = 0) -> np.ndarray:
  """[64, 50] float32 logits; with `ties`, rounded to halves so most values repeat in a row."""
  logits = np.random.default_rng(seed).normal(0, 2, (64, 50)).astype(np.float32)
  return np.round(logits * 2) / 2 if ties else logits


def hf_warp(warpers, logits: np.ndarray) -> np.ndarray:
  import torch
  scores = torch.as_tensor(logits)
  for warper in warpers:
    scores = warper(None, scores)
  return scores.numpy()


def kept(logits) -> np.ndarray:
  return np.isfinite(np.asarray(logits))


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("k", [1, 5, 49, 50, 80])
def test_top_k_keeps_what_hf_keeps(ties, k):
  from transformers import TopKLogitsWarper
  logits = random_logits(ties)
  ours = kept(top_k_filter(jnp.asarray(logits), k))
  np.testing.assert_array_equal(ours, kept(hf_warp([TopKLogitsWarper(k)], logits)))
  assert (ours.sum(-1) >= min(k, 50)).all()
  if ties and k == 5:  # HF (and we) keep every token tied with the k-th: more than k here
    assert (ours.sum(-1) > k).any()


@pytest.mark.parametrize("p", [1e-6, 0.05, 0.3, 0.9, 0.999])
def test_top_p_keeps_what_hf_keeps(p):
  from transformers import TopPLogitsWarper
  logits = random_logits(ties=False)
  ours = kept(top_p_filter(jnp.asarray(logits), p))
  np.testing.assert_array_equal(ours, kept(hf_warp([TopPLogitsWarper(p)], logits)))
  if p == 1e-6:
    assert (ours.sum(-1) == 1).all()


@pytest.mark.parametrize("p", [0.05, 0.3, 0.9])
def test_top_p_keeps_ties_together(p):
  """HF cuts a group of tied tokens wherever its sort put them; we keep the whole group: our set
  is HF's plus the tokens tied with its least likely member, and every tie group is all in or out."""
  from transformers import TopPLogitsWarper
  logits = random_logits(ties=True)
  ours = kept(top_p_filter(jnp.asarray(logits), p))
  hf = kept(hf_warp([TopPLogitsWarper(p)], logits))
  least_kept_by_hf = np.where(hf, logits, np.inf).min(-1, keepdims=True)
  np.testing.assert_array_equal(ours, logits >= least_kept_by_hf)
  for row, mask in zip(logits, ours):
    for value in np.unique(row):
      assert len(set(mask[row == value])) == 1


def test_warp_chain_matches_hf_order():
  """temperature -> top-k -> top-p, as HF's processors are built for do_sample=True."""
  from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper
  logits = random_logits(ties=False, seed=1)
  sampler = Sampler("sample", temperature=0.7, top_k=12, top_p=0.8)
  ref = hf_warp([TemperatureLogitsWarper(0.7), TopKLogitsWarper(12), TopPLogitsWarper(0.8)],
                logits)
  ours = np.asarray(warp_logits(jnp.asarray(logits), sampler))
  np.testing.assert_array_equal(kept(ours), kept(ref))
  np.testing.assert_allclose(ours[kept(ours)], ref[kept(ref)], rtol=1e-6)
  # The order matters: top-p before top-k keeps a different set somewhere.
  assert (kept(top_k_filter(top_p_filter(jnp.asarray(logits) / 0.7, 0.8), 12)) != kept(ours)).any()


def reference_distribution(logits_V: np.ndarray, temperature: float, top_k: int, top_p: float
                           ) -> np.ndarray:
  """softmax(logits / T) restricted to the top-k tokens, then to the smallest most likely set of
  mass >= top_p, renormalised (written independently of the warpers, in float64)."""
  z = logits_V.astype(np.float64) / temperature
  z = np.where(z >= np.sort(z)[-top_k], z, -np.inf)
  p = np.exp(z - z.max())
  p /= p.sum()
  order = np.argsort(-p)
  mass_before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
  keep = np.zeros_like(p, bool)
  keep[order[mass_before < top_p]] = True
  p = np.where(keep, p, 0.0)
  return p / p.sum()


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
  expected = counts.sum() * probs
  support = probs > 0
  return float((((counts - expected) ** 2)[support] / expected[support]).sum())


def test_sampling_frequencies_follow_the_warped_softmax():
  from scipy.stats import chi2
  logits = np.random.default_rng(1).normal(0, 1.0, 12).astype(np.float32)
  sampler = Sampler("sample", temperature=0.8, top_k=6, top_p=0.8)
  expected = reference_distribution(logits, 0.8, 6, 0.8)
  support = expected > 0
  # Both filters bite: top-p alone would keep more, and so would top-k alone.
  assert support.sum() == 5 and (reference_distribution(logits, 0.8, 12, 0.8) > 0).sum() > 5
  draws = 40_000
  tokens = jax.jit(choose_tokens, static_argnums=1)(
      jnp.broadcast_to(logits, (draws, 12)), sampler, jax.random.key(0))
  counts = np.bincount(np.asarray(tokens), minlength=12)
  assert counts[~support].sum() == 0
  critical = chi2.ppf(0.999, support.sum() - 1)
  assert chi_square(counts, expected) < critical
  # The test can tell temperature 1 from 0.8 on the same kept set:
  at_t1 = np.where(support, np.exp(logits - logits.max()), 0.0)
  assert chi_square(counts, at_t1 / at_t1.sum()) > 3 * critical


@pytest.fixture(scope="module")
def model():
  """Random PG1 parameters and a left-padded prompt batch whose row 0 is the longest.

  The image placeholder id is moved out of the vocabulary (big_vision's layout), so no sampled
  token is one: the full forward of the log-prob check would read it as a placeholder.
  """
  config = F.PG1.replace(image_token_id=F.VOCAB)
  rng = np.random.default_rng(0)
  m, lengths = config.vision.num_patches, (7, 3, 5)
  width = m + max(lengths)
  tokens = np.zeros((3, width), np.int32)
  mask = np.zeros((3, width), bool)
  for row, n in enumerate(lengths):
    tokens[row, width - n - m:width - n] = config.image_token_id
    tokens[row, width - n:] = rng.integers(3, 100, n)
    mask[row, width - n - m:] = True
  images = rng.uniform(-1, 1, (3, 1, 28, 28, 3)).astype(np.float32)
  batch = dict(tokens=tokens, images=images, input_mask=mask, mask_ar=np.zeros_like(tokens))
  # The fixtures' tied embedding makes logits ~ N(0, 8^2): one token takes all the mass and every
  # sampler would agree. A smaller embedding gives logits of std ~1, so sampling really varies.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x * 0.15 if path[-1].key == "embedding" else x, F.random_params(config))
  return config, params, batch


def test_top_k_1_and_tiny_temperature_are_greedy(model):
  config, params, batch = model
  greedy = generate(config, params, batch, NEW_TOKENS, eos_id=-1)
  plain = Sampler("sample", temperature=1.5)  # without the limit, sampling leaves greedy's path
  assert (generate(config, params, batch, NEW_TOKENS, eos_id=-1, sampler=plain) != greedy).any()
  for sampler in (Sampler("sample", temperature=1.3, top_k=1), Sampler("sample", temperature=1e-4)):
    for seed in (0, 1):
      out = generate(config, params, batch, NEW_TOKENS, eos_id=-1, sampler=sampler, seed=seed)
      np.testing.assert_array_equal(out, greedy, err_msg=f"{sampler}, seed {seed}")


def test_seeds_and_logprobs(model):
  """Same seed, same tokens; another seed, other tokens; a row's draw does not depend on the
  rest of the batch; the log-probs are the model's, as a full forward over the result gives."""
  config, params, batch = model
  sampler = Sampler("sample", temperature=1.5)
  run = lambda seed, b=batch: generate(config, params, b, NEW_TOKENS, eos_id=-1, sampler=sampler,
                                       seed=seed, return_logprobs=True)
  tokens, logprobs = run(0)
  np.testing.assert_array_equal(run(0)[0], tokens)
  np.testing.assert_array_equal(run(jax.random.key(0))[0], tokens)
  assert (run(1)[0] != tokens).mean() > 0.3
  assert (tokens != generate(config, params, batch, NEW_TOKENS, eos_id=-1)).any()
  alone = {k: v[:1] for k, v in batch.items()}
  np.testing.assert_array_equal(run(0, alone)[0], tokens[:1])

  s = batch["tokens"].shape[1]
  full = dict(tokens=np.concatenate([batch["tokens"], tokens], 1), images=batch["images"],
              input_mask=np.concatenate([batch["input_mask"], np.ones_like(tokens, bool)], 1),
              mask_ar=np.concatenate([batch["mask_ar"], np.ones_like(tokens)], 1))
  logits = F.forward(config, params, full)[:, s - 1:-1]
  expected = np.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(logprobs, expected, atol=1e-4)
  assert (logprobs < 0).all() and logprobs.std() > 0.1


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="beam"), r"unknown sampler kind 'beam'; use one of \('greedy', 'sample'\)"),
    (dict(kind="sample", temperature=0.0), "temperature must be a finite float > 0"),
    (dict(kind="sample", temperature=-1.0), "temperature must be a finite float > 0"),
    (dict(kind="sample", temperature=float("nan")), "temperature must be a finite float > 0"),
    (dict(kind="sample", top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(kind="sample", top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(kind="sample", top_k=-1), "top_k must be an int >= 0"),
    (dict(kind="sample", top_k=2.5), "top_k must be an int >= 0"),
    (dict(temperature=0.7), "greedy decoding ignores temperature/top_k/top_p"),
    (dict(top_k=5), "greedy decoding ignores temperature/top_k/top_p"),
])
def test_bad_sampler_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    Sampler(**kwargs)


def test_sampling_needs_a_key():
  with pytest.raises(ValueError, match="sampling needs a jax.random key"):
    choose_tokens(jnp.zeros((2, 5)), Sampler("sample"), None)
