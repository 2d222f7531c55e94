"""What a periodic evaluation sees of the run: a predict function over the current params.

The trainer calls its `evaluate` hook as `evaluate(predictor) -> dict[str, float]` every
`eval_every` steps and at the end; the results go to metrics.jsonl under the same step. An
evaluator needs nothing else from the trainer (STYLE.md: evaluators get a predict function and
data, never the trainer):

    def evaluate(predict: Predictor) -> dict[str, float]:
      texts = predict.generate(images, ["caption en"] * len(images), max_new_tokens=16)
      return exact_match(texts, references)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from paligemma_jax.data.processor import Processor
from paligemma_jax.inference.decode import generate
from paligemma_jax.models import PaliGemmaConfig


@dataclasses.dataclass(frozen=True)
class Predictor:
  """The model at one training step. `params` are the live float32 params: do not modify them."""

  config: PaliGemmaConfig
  params: Any
  processor: Processor
  step: int

  def generate_ids(self, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: int
                   ) -> np.ndarray:
    """Greedy continuations [B, max_new_tokens] (pad after eos) of one image per prompt."""
    batch = self.processor(list(images), list(prompts), padding_side="left")
    return generate(self.config, self.params, batch, max_new_tokens,
                    self.processor.tokenizer.eos_id)

  def generate(self, images: Sequence[Any], prompts: Sequence[str], max_new_tokens: int = 32
               ) -> list[str]:
    """Greedy decoded texts, one per prompt (special pieces such as <loc> kept)."""
    ids = self.generate_ids(images, prompts, max_new_tokens)
    return [self.processor.tokenizer.decode(row) for row in ids]  # cut at eos, pads dropped
