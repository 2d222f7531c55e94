"""Score mode: the log-likelihood of given suffix tokens under the model (one forward pass).

Takes a processor batch with suffixes, [image x M][bos, prompt, "\\n"][suffix, eos] plus padding
on either side, and scores every token marked by `mask_loss` (big_vision) or, without it, every
token whose `labels` (HF) is not -100: log p(tokens[t] | tokens[< t], images), read from the
logits at t - 1. HF's `loss` with `labels=` is `-sum(total) / sum(count)` over the batch.
Letters: B batch, S sequence length, V vocab.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from paligemma_jax.inference.decode import decode_layers, prompt_hidden
from paligemma_jax.models import PaliGemma, PaliGemmaConfig, check_image_tokens

IGNORE_LABEL = -100  # HF's label of unscored positions


class Scores(NamedTuple):
  """Per-token and per-example log-likelihoods (natural log)."""
  token_logprobs: jax.Array  # float32 [B, S]: log p(tokens[:, t] | < t) where scored, else 0
  total: jax.Array  # float32 [B]: sum over the scored tokens
  mean: jax.Array  # float32 [B]: total / count (nan for a row with nothing to score)
  count: jax.Array  # int32 [B]: scored tokens per row


@functools.partial(jax.jit, static_argnames=("config",))
def score_tokens(params: dict, tokens_BxS: jax.Array, images: jax.Array | None,
                 input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array, targets_BxS: jax.Array,
                 scored_BxS: jax.Array, *, config: PaliGemmaConfig) -> Scores:
  """Log-probs of `targets[:, t]` (the next token after t - 1) where `scored[:, t]`.

  On CPU the forward pass is decoding's prefill, over the layers unrolled (`decode_layers`):
  the scanned one widens every bf16 layer stack to f32 at once on XLA:CPU.
  """
  model = PaliGemma(config)
  layers = decode_layers(params, None)
  if layers is None:
    logits_BxSxV = model.apply(params, tokens_BxS, images, input_mask_BxS, mask_ar_BxS)
  else:
    h_BxSxD, _ = prompt_hidden(model, params, tokens_BxS, images, input_mask_BxS, mask_ar_BxS,
                               0, layers)
    logits_BxSxV = model.apply(params, h_BxSxD, method=PaliGemma.logits)
  # Position t - 1 predicts token t; the first token has no prediction and is never scored.
  # log_softmax read at the target only: no second [B, S, V] array (V is 257k in real models).
  logits_BxTxV = logits_BxSxV[:, :-1]  # T = S - 1
  picked_BxT = (jnp.take_along_axis(logits_BxTxV, targets_BxS[:, 1:, None], axis=-1)[..., 0]
                - jax.nn.logsumexp(logits_BxTxV, axis=-1))
  scored_BxT = scored_BxS[:, 1:].astype(bool)
  token_logprobs_BxS = jnp.pad(jnp.where(scored_BxT, picked_BxT, 0.0), ((0, 0), (1, 0)))
  count_B = jnp.sum(scored_BxT, axis=1, dtype=jnp.int32)
  total_B = jnp.sum(token_logprobs_BxS, axis=1)
  return Scores(token_logprobs_BxS, total_B, total_B / count_B, count_B)


def score(config: PaliGemmaConfig, params: dict, batch: Mapping[str, np.ndarray]) -> Scores:
  """`score_tokens` on a processor batch with suffixes (`tokens`, `images`, `input_mask`,
  `mask_ar`, and `mask_loss` or `labels`); numpy `Scores` out."""
  missing = [k for k in ("tokens", "images", "input_mask", "mask_ar") if k not in batch]
  if missing:
    raise ValueError(f"batch lacks {', '.join(missing)}; build it with the processor, "
                     "with suffixes")
  tokens = np.asarray(batch["tokens"])
  if "mask_loss" in batch:
    scored, targets = np.asarray(batch["mask_loss"]).astype(bool), tokens
  elif "labels" in batch:
    labels = np.asarray(batch["labels"])
    scored = labels != IGNORE_LABEL
    targets = np.where(scored, labels, 0).astype(np.int32)
  else:
    raise ValueError("batch has neither mask_loss nor labels: build it with suffixes=[...] to "
                     "say which tokens to score")
  if scored[:, 0].any():
    raise ValueError("a row scores its first token, which nothing predicts; mask_loss/labels "
                     "must cover the suffix only")
  check_image_tokens(tokens, batch["images"], config)
  out = score_tokens(params, tokens, batch["images"], batch["input_mask"], batch["mask_ar"],
                     targets, scored, config=config)
  return Scores(*(np.asarray(x) for x in out))
