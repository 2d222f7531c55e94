"""The public API end to end against HF: processor -> model -> logits, on the stand-in tokenizer."""

from __future__ import annotations

import dataclasses

import numpy as np
import PIL.Image
import pytest

import hf_oracle as O
import paligemma_jax as pg


@pytest.fixture(scope="module")
def setup(tmp_path_factory, standin_tokenizer):
  spec = dataclasses.replace(O.PG2, vocab=standin_tokenizer.vocab_size + 63,
                             image_token=standin_tokenizer.image_token_id)
  model = O.build_model(spec)
  folder = tmp_path_factory.mktemp("api")
  model.save_pretrained(folder)
  return model, str(folder)


def images(n, seed=0):
  rng = np.random.default_rng(seed)
  return [PIL.Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 41, 3), dtype=np.uint8))
          for i in range(n)]


def test_processor_and_logits_match_hf(setup, standin_tokenizer_path, hf_tokenizer_dir):
  import torch
  import transformers
  model, folder = setup
  config, params = pg.load_checkpoint(folder)
  processor = pg.make_processor(config, standin_tokenizer_path)
  prompts = ["caption en", "answer en what is in the picture?", "detect cat"]
  suffixes = ["a small cat", "two dogs", "<loc0012><loc0100><loc0500><loc0900> cat"]
  batch = processor(images(3), prompts, suffixes)

  transformers.logging.set_verbosity_error()  # its "no <image> in the text" warning is expected
  image_processor = transformers.SiglipImageProcessorPil(size={"height": 28, "width": 28})
  image_processor.image_seq_length = config.vision.num_patches
  hf_processor = transformers.PaliGemmaProcessor(
      image_processor=image_processor,
      tokenizer=transformers.AutoTokenizer.from_pretrained(hf_tokenizer_dir))
  hf_batch = hf_processor(text=prompts, images=images(3), suffix=suffixes, return_tensors="pt",
                          padding="longest")
  np.testing.assert_array_equal(batch["tokens"], hf_batch["input_ids"].numpy())
  with torch.no_grad():
    ref = model(input_ids=hf_batch["input_ids"], pixel_values=hf_batch["pixel_values"],
                attention_mask=hf_batch["attention_mask"],
                token_type_ids=hf_batch["token_type_ids"], use_cache=False).logits.numpy()

  ours = pg.compute_logits(config, params, batch)
  valid = batch["input_mask"].astype(bool)
  # Positions: HF's forward counts from 1 over the whole row, ours from 1 over valid tokens;
  # RoPE is relative, so logits agree to float32 rounding.
  assert ref[valid].std() > 0.3
  assert np.abs(ref[valid] - ours[valid]).max() < 1e-4


def test_tokenizer_must_fit_the_model(setup, tokenizer_without_loc_path, standin_tokenizer_path):
  _, folder = setup
  config, _ = pg.load_checkpoint(folder)
  with pytest.raises(ValueError, match="embedding has 8 rows"):
    pg.make_processor(config.replace(**{"text.vocab_size": 8}), standin_tokenizer_path)
  with pytest.raises(ValueError, match="<image> id"):
    pg.make_processor(config.replace(image_token_id=5), standin_tokenizer_path)


def test_compute_logits_rejects_mismatched_images(setup, standin_tokenizer_path):
  _, folder = setup
  config, params = pg.load_checkpoint(folder)
  processor = pg.make_processor(config, standin_tokenizer_path)
  batch = processor([images(2)], ["two images"])  # 2 images -> 2 * 4 placeholders
  batch["images"] = batch["images"][:, :1]
  with pytest.raises(ValueError, match="image placeholder tokens"):
    pg.compute_logits(config, params, batch)
  with pytest.raises(ValueError, match="batch lacks mask_ar"):
    pg.compute_logits(config, params, {k: v for k, v in batch.items() if k != "mask_ar"})
