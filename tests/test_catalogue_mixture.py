"""The catalogue's coco_captions builder (on fake COCO files) and this project's vqav2 builder (on
fake VQA files), both built as array_record, streamed through one mixture."""

from __future__ import annotations

import numpy as np
import pytest

from input_fixtures import COCO_SPLITS, build_coco_captions, coco_caption
from paligemma_jax.data.build_dataset import build_dataset
from paligemma_jax.data.input_config import InputConfig, MemberConfig
from paligemma_jax.data.input_pipeline import TrainInput
from paligemma_jax.data.processor import Processor
from test_builders import write_vqav2


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("catalogue")
  build_coco_captions(root / "coco_raw", root / "tfds")
  write_vqav2(root / "vqa_raw")
  build_dataset("vqav2", root / "vqa_raw", root / "tfds")
  return root / "tfds"


def test_coco_captions_and_vqav2_stream_through_one_mixture(data_dir, standin_tokenizer):
  processor = Processor(standin_tokenizer, 8, 4)
  config = InputConfig(members=(
      MemberConfig(name="coco_captions", split="train+restval", data_dir=str(data_dir)),
      MemberConfig(name="vqav2", split="train", data_dir=str(data_dir), task="vqa")),
      batch_size=4, text_len=20, read_threads=2, mixture_block=4)
  it = TrainInput(config, processor)
  assert it.examples_per_epoch == COCO_SPLITS["train"] + COCO_SPLITS["restval"] + 3
  captions = {coco_caption(i, k) for i in range(1, 10) for k in range(2)}
  kinds = []
  for _ in range(4):
    batch = next(it)
    for r in range(4):
      prefix_end = np.flatnonzero(batch["mask_loss"][r])[0]
      prompt = standin_tokenizer.decode(
          [t for t in batch["tokens"][r][:prefix_end] if t != standin_tokenizer.image_token_id])
      suffix_ids = batch["tokens"][r][batch["mask_loss"][r] == 1]
      assert suffix_ids[-1] == standin_tokenizer.eos_id
      suffix = standin_tokenizer.decode(suffix_ids[:-1])
      if prompt.startswith("caption en"):
        assert suffix in captions
        kinds.append("coco")
      else:
        assert prompt.startswith("answer en what color ") and suffix.startswith("red")
        kinds.append("vqa")
  assert kinds.count("coco") == kinds.count("vqa") == 8  # blocks of 4: exactly 2 + 2 each
  stats = it.stats()
  assert stats["input/drawn/coco_captions:train+restval"] == 8
  assert stats["input/drawn/vqav2:train"] == 8
