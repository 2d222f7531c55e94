"""Score mode: suffix log-likelihoods of processor batches against HF's `loss` with `labels=`."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import hf_oracle as O
from paligemma_jax.conversion import load_hf_checkpoint
from paligemma_jax.data import Processor
from paligemma_jax.inference import score

PROMPTS = ["caption en", "answer en what is in the picture?", "detect cat"]
SUFFIXES = ["a small cat on a mat", "two", "<loc0012><loc0100><loc0500><loc0900> cat"]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, standin_tokenizer):
  """name -> (HF model, our config, our params, processor), sized for the stand-in tokenizer."""
  cache = {}

  def get(name):
    if name not in cache:
      spec = dataclasses.replace({"pg1": O.PG1, "pg2": O.PG2}[name],
                                 vocab=standin_tokenizer.vocab_size + 63,
                                 image_token=standin_tokenizer.image_token_id)
      model = O.build_model(spec)
      folder = tmp_path_factory.mktemp(name)
      model.save_pretrained(folder)
      config, params = load_hf_checkpoint(str(folder))
      processor = Processor(standin_tokenizer, config.vision.image_size,
                            config.vision.num_patches)
      cache[name] = (model, config, params, processor)
    return cache[name]

  return get


def images(n, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (30 + 7 * i, 41, 3), dtype=np.uint8) for i in range(n)]


def hf_loss(model, batch) -> float:
  """HF's mean cross-entropy over every label != -100 of the batch (one image per row)."""
  import torch
  mask = batch["input_mask"].astype(np.int64)
  positions = np.where(mask > 0, np.cumsum(mask, 1) - 1, 0) + 1  # HF generation's positions
  as_long = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.long)
  with torch.no_grad():
    out = model(input_ids=as_long(batch["tokens"]),
                pixel_values=torch.as_tensor(batch["images"][:, 0].transpose(0, 3, 1, 2)),
                attention_mask=as_long(mask), token_type_ids=as_long(batch["token_type_ids"]),
                position_ids=as_long(positions), labels=as_long(batch["labels"]), use_cache=False)
  return float(out.loss)


@pytest.mark.parametrize("name", ["pg1", "pg2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_nll_is_hf_loss(loaded, name, side):
  """Per example (scored in a padded batch) -mean == HF's loss on that example alone; over the
  batch, -sum(total) / sum(count) == HF's loss on the padded batch."""
  model, config, params, processor = loaded(name)
  batch = processor(images(3), PROMPTS, SUFFIXES, padding_side=side)
  assert not batch["input_mask"].all()  # rows of different lengths: padding is exercised
  ours = score(config, params, batch)

  assert ours.count.tolist() == batch["mask_loss"].sum(1).tolist()
  np.testing.assert_allclose(-ours.total.sum() / ours.count.sum(), hf_loss(model, batch),
                             rtol=0, atol=1e-5)
  alone = [hf_loss(model, processor(images(3)[i], PROMPTS[i], SUFFIXES[i])) for i in range(3)]
  np.testing.assert_allclose(-ours.mean, alone, rtol=0, atol=1e-5)
  assert min(alone) > 1.0 and np.ptp(alone) > 0.1  # real, distinct losses
  np.testing.assert_allclose(ours.total / ours.count, ours.mean, rtol=1e-6)
  assert (ours.token_logprobs[batch["mask_loss"] == 0] == 0).all()
  assert (ours.token_logprobs[batch["mask_loss"] == 1] < 0).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_equals_each_example_alone(loaded, side):
  _, config, params, processor = loaded("pg2")
  batch = processor(images(3), PROMPTS, SUFFIXES, padding_side=side)
  ours = score(config, params, batch)
  for i in range(3):
    one = score(config, params, processor(images(3)[i], PROMPTS[i], SUFFIXES[i]))
    valid = batch["input_mask"][i]
    np.testing.assert_allclose(ours.token_logprobs[i, valid], one.token_logprobs[0], atol=1e-5)
    np.testing.assert_allclose(ours.total[i], one.total[0], atol=1e-5)
    np.testing.assert_allclose(ours.mean[i], one.mean[0], atol=1e-5)
    assert ours.count[i] == one.count[0]


def test_labels_score_like_mask_loss(loaded):
  """A batch with only HF's `labels` scores the same tokens as big_vision's `mask_loss`."""
  _, config, params, processor = loaded("pg2")
  batch = processor(images(3), PROMPTS, SUFFIXES)
  hf_only = {k: v for k, v in batch.items() if k != "mask_loss"}
  for a, b in zip(score(config, params, batch), score(config, params, hf_only)):
    np.testing.assert_array_equal(a, b)


def test_bad_score_batches(loaded):
  _, config, params, processor = loaded("pg2")
  batch = processor(images(3), PROMPTS, SUFFIXES)
  targetless = {k: v for k, v in batch.items() if k not in ("mask_loss", "labels")}
  with pytest.raises(ValueError, match="neither mask_loss nor labels"):
    score(config, params, targetless)
  with pytest.raises(ValueError, match="batch lacks mask_ar"):
    score(config, params, {k: v for k, v in batch.items() if k != "mask_ar"})
  first = dict(batch, mask_loss=np.ones_like(batch["mask_loss"]))
  with pytest.raises(ValueError, match="scores its first token"):
    score(config, params, first)
