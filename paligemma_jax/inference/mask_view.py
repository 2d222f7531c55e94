"""Prints who attends to whom for a prompt (and optional suffix): the prefix-LM mask as text,
like HF's `AttentionMaskVisualizer`.

    <image>×256 ■ ■ ■ ■ ⬚ ⬚
    <bos>       ■ ■ ■ ■ ⬚ ⬚
    ▁caption    ■ ■ ■ ■ ⬚ ⬚
    ...

A row is a query token, a column a key token; ■ = attends, ⬚ = masked. The image placeholders
are collapsed into one row and one column (they all behave alike). With a sliding window the
window mask is printed too (it applies to every other layer).
"""

from __future__ import annotations

import numpy as np

from paligemma_jax.data import Processor
from paligemma_jax.models import PaliGemmaConfig, attention_masks

ATTENDS, MASKED = "■", "⬚"


def mask_rows(processor: Processor, config: PaliGemmaConfig, prompt: str,
              suffix: str | None = None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
  """(labels, mask [T, T] bool, sliding mask or None) with the image tokens collapsed."""
  size = config.vision.image_size
  batch = processor(None, [prompt], None if suffix is None else [suffix],
                    pixel_values=np.zeros((1, 1, size, size, 3), np.float32))
  mask, sliding = attention_masks(config, batch["input_mask"], batch["mask_ar"])
  tokens = batch["tokens"][0]
  image = tokens == config.image_token_id
  # keep the first image token as the group's representative, drop the rest
  keep = ~image | (np.cumsum(image) == 1)
  labels = [f"<image>×{int(image.sum())}" if t == config.image_token_id
            else processor.tokenizer.id_to_piece(int(t)) for t in tokens[keep]]
  pick = lambda m: None if m is None else np.asarray(m)[0][np.ix_(keep, keep)]
  return labels, pick(mask), pick(sliding)


def format_mask(labels: list[str], mask: np.ndarray) -> str:
  width = max(len(label) for label in labels)
  rows = [f"{label:<{width}} " + " ".join(ATTENDS if a else MASKED for a in row)
          for label, row in zip(labels, mask)]
  return "\n".join(rows)


def attention_mask_text(processor: Processor, config: PaliGemmaConfig, prompt: str,
                        suffix: str | None = None) -> str:
  """The mask of `prompt` (+ `suffix`) as printable text, with a one-line legend."""
  labels, mask, sliding = mask_rows(processor, config, prompt, suffix)
  text = (f"{ATTENDS} attends, {MASKED} masked; rows are queries, columns keys "
          f"(prefix: bidirectional, suffix: causal)\n" + format_mask(labels, mask))
  if sliding is not None:
    text += (f"\n\nsliding window of {config.text.sliding_window} (every other layer):\n"
             + format_mask(labels, sliding))
  return text
