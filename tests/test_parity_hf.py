"""Logit parity with HF transformers' PaliGemmaForConditionalGeneration on the same random weights.

The HF model is saved with `save_pretrained` and loaded by our loader, so these tests also cover
the checkpoint mapping. Logits are compared at valid (non-padding) positions only; every case
first asserts the logits are O(1) so agreement is not agreement between two near-constant outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

import hf_oracle as O
from paligemma_jax.conversion import load_hf_checkpoint
from paligemma_jax.models import PaliGemma

F32_TOL = 1e-4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """spec -> (hf model, checkpoint folder), built once per module."""
  return O.saved_models(tmp_path_factory)


def make_batch(spec, *, batch=3, images=1, prompt_len=5, suffix_len=6, left_pad=(0, 2, 0),
               seed=0):
  """HF-layout rows: [pad][image x images*M][prompt][suffix]; token_type_ids 1 on the suffix."""
  rng = np.random.default_rng(seed)
  m = (spec.image_size // 14) ** 2 * images
  body = m + prompt_len + suffix_len
  width = body + max(left_pad)
  tokens = np.zeros((batch, width), np.int64)
  mask = np.zeros((batch, width), np.int64)
  tt = np.zeros((batch, width), np.int64)
  for row in range(batch):
    # Row r has `left_pad[r]` pads first (HF pads on the left), then its tokens; shorter rows
    # lose tokens from the end of their body so every row fills the same width.
    start = left_pad[row % len(left_pad)]
    tokens[row, start:start + m] = O.IMAGE_TOKEN
    tokens[row, start + m:] = rng.integers(4, 250, width - start - m)
    mask[row, start:] = 1
    tt[row, start + m + prompt_len:] = 1 if suffix_len else 0
  pixels = rng.uniform(-1, 1, (batch, images, spec.image_size, spec.image_size, 3))
  return tokens, pixels.astype(np.float32), mask, tt


def hf_logits(model, tokens, pixels, mask, tt):
  b, i = pixels.shape[:2]
  positions = np.where(mask > 0, np.cumsum(mask, 1) - 1, 0) + 1  # HF generation's positions
  nchw = pixels.reshape(b * i, *pixels.shape[2:]).transpose(0, 3, 1, 2)
  return O.forward(model, tokens, nchw, mask, tt, positions)


def our_logits(config, params, tokens, pixels, mask, tt):
  return np.asarray(PaliGemma(config).apply(params, tokens, pixels, mask.astype(bool), tt))


def assert_parity(ref, ours, mask, tol=F32_TOL):
  valid = mask.astype(bool)
  assert ref[valid].std() > 0.3, "logits are near-constant: the comparison would be vacuous"
  err = np.abs(ref[valid] - ours[valid]).max()
  assert err <= tol, f"max |dlogit| {err:.3g} > {tol}"
  return err


CASES = {
    "pg1": O.PG1,
    "pg2": O.PG2,
    "pg2_window": O.PG2_WINDOW,
    "pg2_28b_heads": O.PG2_28B_HEADS,
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("suffix_len", [0, 6])
def test_f32_parity(saved, name, suffix_len):
  model, folder = saved(CASES[name])
  config, params = load_hf_checkpoint(folder)
  batch = make_batch(CASES[name], suffix_len=suffix_len, prompt_len=5 if suffix_len else 9,
                     left_pad=(0, 0, 0))
  assert_parity(hf_logits(model, *batch), our_logits(config, params, *batch), batch[2])


@pytest.mark.parametrize("name", ["pg1", "pg2"])
def test_left_padding_parity(saved, name):
  """Rows of different lengths, left-padded before the image tokens as HF's processor pads."""
  model, folder = saved(CASES[name])
  config, params = load_hf_checkpoint(folder)
  tokens, pixels, mask, tt = make_batch(CASES[name], left_pad=(0, 3, 1))
  assert (mask == 0).any()
  assert_parity(hf_logits(model, tokens, pixels, mask, tt),
                our_logits(config, params, tokens, pixels, mask, tt), mask)


@pytest.mark.parametrize("name", ["pg1", "pg2"])
def test_several_images_parity(saved, name):
  model, folder = saved(CASES[name])
  config, params = load_hf_checkpoint(folder)
  batch = make_batch(CASES[name], images=3)
  assert_parity(hf_logits(model, *batch), our_logits(config, params, *batch), batch[2])


def test_sliding_window_is_exercised(saved):
  """The window (5) is shorter than the sequence: turning it off must change our logits, and
  only the windowed version matches HF."""
  model, folder = saved(O.PG2_WINDOW)
  config, params = load_hf_checkpoint(folder)
  no_window, _ = load_hf_checkpoint(folder, **{"text.sliding_window": None})
  batch = make_batch(O.PG2_WINDOW, prompt_len=3, suffix_len=12)
  ref = hf_logits(model, *batch)
  assert_parity(ref, our_logits(config, params, *batch), batch[2])
  assert np.abs(ref - our_logits(no_window, params, *batch))[batch[2].astype(bool)].max() > 0.1


@pytest.mark.parametrize("name", ["pg1", "pg2"])
def test_bf16_top1_agreement(saved, name):
  """bf16 against HF bf16, with the f32 logits as the referee.

  bf16 rounding alone moves logits by ~0.01 here, so positions whose f32 top-2 margin is within
  that noise flip on both sides (HF bf16 itself disagrees with HF f32 there). We require >= 99%
  top-1 agreement with HF bf16 where the f32 margin exceeds 0.1, and a bf16 error (against f32)
  no larger than HF's own bf16 error.
  """
  import torch
  model, folder = saved(CASES[name])
  config, params = load_hf_checkpoint(folder, param_dtype="bfloat16")
  assert config.dtype == "bfloat16"
  batch = make_batch(CASES[name], batch=8, prompt_len=10, suffix_len=20, left_pad=(0,))
  valid = batch[2].astype(bool)
  ref32 = hf_logits(model, *batch)[valid]
  try:
    ref16 = hf_logits(model.to(torch.bfloat16), *batch)[valid]
  finally:
    model.to(torch.float32)
  ours16 = our_logits(config, params, *batch)[valid]
  top2 = np.sort(ref32, -1)[:, -2:]
  decisive = (top2[:, 1] - top2[:, 0]) > 0.1
  assert decisive.mean() > 0.5
  agreement = (ref16.argmax(-1) == ours16.argmax(-1))[decisive].mean()
  assert agreement >= 0.99, f"top-1 agreement {agreement:.3f} on decisive positions"
  ours_err, hf_err = np.abs(ours16 - ref32).mean(), np.abs(ref16 - ref32).mean()
  assert ours_err <= 1.25 * hf_err, f"our bf16 error {ours_err:.3g} vs HF's {hf_err:.3g}"
