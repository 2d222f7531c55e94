"""Embedding rows across formats: big_vision's vocabulary ends where HF's `<image>` token begins.

big_vision files hold 257,152 rows (256,000 Gemma pieces + 1,024 <loc> + 128 <seg>) and the
image placeholder id is 257,152, one past the last row. HF's conversion appended `<image>` and a
spare row and padded to a multiple of 64: 257,216 rows, with the new rows drawn at random (not
reproducible). So, for any model:

- big_vision layout  <=>  `vocab_size == image_token_id`;
- HF -> big_vision:  keep rows [:image_token_id] (drops HF's `<image>`, spare and padding rows);
- big_vision -> HF:  append rows up to `round_up(image_token_id + 2, 64)` (64 for the real models),
  each equal to the mean embedding (deterministic). Logits for ids >= image_token_id then differ
  from a hub file's; no text token has such an id, and `<image>` positions take image features.

HF -> native keeps all 257,216 rows, so HF -> Orbax -> HF is bit-identical.
"""

from __future__ import annotations

import numpy as np

from paligemma_jax.models import PaliGemmaConfig

ROW_MULTIPLE = 64
_CHUNK_ROWS = 8192


def big_vision_rows(config: PaliGemmaConfig) -> int:
  """Rows a big_vision file keeps: everything before the image token id."""
  return min(config.text.vocab_size, config.image_token_id)


def hf_rows(config: PaliGemmaConfig) -> int:
  """Rows an HF checkpoint holds: a big_vision-layout embedding gains `<image>`, a spare and
  padding to a multiple of 64; any other embedding is written as it is."""
  vocab = config.text.vocab_size
  if vocab != config.image_token_id:
    return vocab
  return -(-(vocab + 2) // ROW_MULTIPLE) * ROW_MULTIPLE


def mean_rows(embedding_VxD: np.ndarray, count: int) -> np.ndarray:
  """`count` copies of the mean row, accumulated in float64 (numpy casts in small buffers, so
  the embedding is never upcast whole)."""
  total = np.zeros(embedding_VxD.shape[1], np.float64)
  for start in range(0, embedding_VxD.shape[0], _CHUNK_ROWS):
    total += embedding_VxD[start:start + _CHUNK_ROWS].sum(axis=0, dtype=np.float64)
  mean = (total / max(1, embedding_VxD.shape[0])).astype(embedding_VxD.dtype)
  return np.broadcast_to(mean, (count, embedding_VxD.shape[1]))
