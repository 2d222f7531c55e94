"""HF checkpoints written by the converter load in transformers with no missing or unexpected
keys, with a complete config, and give the source model's logits (f32, within 1e-4)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import convert_fixtures as CF
import hf_oracle as O
from paligemma_jax.conversion import VerificationError, convert, open_source, read_params
from paligemma_jax.conversion.verify import verify_conversion
from paligemma_jax.models import PaliGemma

F32_TOL = 1e-4


def run(src, dst, **kwargs):
  return convert(src, dst, progress=False, log=lambda _: None, **kwargs)


def load_exported(folder):
  import torch
  import transformers
  model, info = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
      str(folder), dtype=torch.float32, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"] and not info["error_msgs"], info
  return model.eval()


def batch(image_size: int, image_token: int, vocab: int, seed: int = 0):
  """Two rows: [image tokens][bos + 5 prompt tokens][6 suffix tokens], no padding."""
  rng = np.random.default_rng(seed)
  m = (image_size // 14) ** 2
  text = rng.integers(3, min(vocab, image_token), (2, 12))
  text[:, 0] = 2
  tokens = np.concatenate([np.full((2, m), image_token), text], 1)
  mask_ar = np.zeros_like(tokens)
  mask_ar[:, m + 6:] = 1
  images = rng.uniform(-1, 1, (2, 1, image_size, image_size, 3)).astype(np.float32)
  return tokens, images, mask_ar


def transformers_logits(model, tokens, images, mask_ar):
  positions = np.cumsum(np.ones_like(tokens), 1)  # HF's 1-based positions
  return O.forward(model, tokens, images[:, 0].transpose(0, 3, 1, 2), np.ones_like(tokens),
                   mask_ar, positions)


def assert_close(ref, got, tol=F32_TOL):
  assert ref.std() > 0.3, "near-constant logits would make the comparison vacuous"
  v = min(ref.shape[-1], got.shape[-1])
  err = np.abs(ref[..., :v] - got[..., :v]).max()
  assert err <= tol, f"max |dlogit| {err:.3g} > {tol}"


@pytest.mark.parametrize("spec", [O.PG1, O.PG2_WINDOW, O.PG2_28B_HEADS],
                         ids=["pg1", "pg2_window", "pg2_28b_heads"])
def test_hf_orbax_hf_export_matches_the_original_model(tmp_path, spec):
  src = CF.hf_folder(str(tmp_path / "hf"), spec)
  original = O.build_model(spec)  # the same seed: the same weights
  run(src, tmp_path / "orbax")
  run(tmp_path / "orbax", tmp_path / "export")
  exported = load_exported(tmp_path / "export")
  config = json.loads((tmp_path / "export" / "config.json").read_text())
  if spec.gemma_version == 2:
    assert config["text_config"]["sliding_window"] == spec.sliding_window
    assert config["text_config"]["query_pre_attn_scalar"] == (spec.query_pre_attn_scalar
                                                              or spec.head_dim)
  inputs = batch(spec.image_size, O.IMAGE_TOKEN, O.VOCAB)
  assert_close(transformers_logits(original, *inputs), transformers_logits(exported, *inputs))


def test_npz_export_loads_and_matches_our_model(tmp_path):
  src = CF.write_big_vision_npz(str(tmp_path / "bv.npz"), CF.BV_PG2)
  run(src, tmp_path / "export", dst_format="hf")
  config = json.loads((tmp_path / "export" / "config.json").read_text())
  # Everything explicit: HF's class defaults are wrong for PaliGemma (checkpoints.md §1.1).
  assert config["vision_config"]["intermediate_size"] == CF.BV_PG2.vision.mlp_dim
  assert config["vision_config"]["vision_use_head"] is False
  assert config["image_token_index"] == CF.BV_VOCAB
  assert config["vocab_size"] == config["text_config"]["vocab_size"] == CF.BV_VOCAB + 64
  assert config["projection_dim"] == CF.BV_PG2.text.width and "hidden_size" not in config
  assert config["text_config"]["model_type"] == "gemma2"
  assert config["text_config"]["num_attention_heads"] == CF.BV_PG2.text.num_heads
  exported = load_exported(tmp_path / "export")
  assert exported.config.text_config.final_logit_softcapping == 30.0

  with open_source(src, "npz") as source:
    config = source.config.replace(dtype="float32")
    params = read_params(source)
  tokens, images, mask_ar = inputs = batch(config.vision.image_size, CF.BV_VOCAB, CF.BV_VOCAB)
  ours = np.asarray(PaliGemma(config).apply(params, tokens, images, np.ones_like(tokens, bool),
                                            mask_ar))
  assert_close(ours, transformers_logits(exported, *inputs))


def test_verify_reports_and_catches_a_corrupted_destination(tmp_path):
  src = CF.hf_folder(str(tmp_path / "hf"), O.PG1)
  lines = []
  summary = convert(src, tmp_path / "bv.npz", verify=True, progress=False, log=lines.append)
  # The same weights through our model, but not the same program: an npz lacks HF's 64 padding
  # rows, so the two sides compile with different vocabularies and may sum floats in a different
  # order on some CPUs (AVX-512 gives 9.5e-7). A few ulps, 1e-6 of the logit scale at most.
  clean = summary.verify.max_abs_diff
  assert clean <= summary.verify.tolerance / 100
  assert summary.verify.hf_max_abs_diff <= summary.verify.tolerance
  assert sum("verify: max |dlogit|" in line for line in lines) == 2

  arrays = CF.npz_arrays(str(tmp_path / "bv.npz"))
  arrays["params/img/head/bias"] = arrays["params/img/head/bias"] + 1.0
  np.savez(tmp_path / "bv.npz", **arrays)
  with pytest.raises(VerificationError, match="verification failed: max") as caught:
    verify_conversion(src, "hf", str(tmp_path / "bv.npz"), "npz", variant=None, dtype=None,
                      open_source=open_source, log=lambda _: None)
  corrupted = float(re.search(r"max \|dlogit\| (\S+) >", str(caught.value)).group(1))
  assert corrupted > 100 * max(clean, summary.verify.tolerance / 100)  # far past float noise
