"""Predict functions: what an evaluator calls instead of the model.

    predict = make_predict_fn(config, params, processor, Decoding("beam", num_beams=2,
                                                                  max_decode_len=32))
    texts = predict(batch)          # batch: data.eval_input.eval_batch's dict, B rows

A predict function maps a prompt batch (left-padded, B rows, padding rows included) to B
decoded texts: the generated ids cut at the first eos and detokenised (SentencePiece drops
control pieces; <loc>/<seg> stay), **not** stripped (evaluators.md §0). A score function maps a
batch with suffixes (`mask_loss`) to (log-likelihood [B], scored tokens [B]) for perplexity.

Both split the batch over the mesh's data x fsdp devices, padding it with copies of its last
row to a multiple of the device count (`inference.mesh_decode`, which `Pipeline` uses too), and
compile once per batch shape.
The trainer builds them over its live params: `predict_fn_factory = lambda decoding:
make_predict_fn(model_config, state.params, processor, decoding, mesh=mesh)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from paligemma_jax import sharding
from paligemma_jax.data.processor import Processor
from paligemma_jax.data.tokenizer import Tokenizer
from paligemma_jax.evaluation.eval_config import Decoding
from paligemma_jax.inference.beam import BeamSearch
from paligemma_jax.inference.decode import check_prompt_batch
from paligemma_jax.inference.mesh_decode import PROMPT_KEYS, generate_on_mesh, shard_rows
from paligemma_jax.inference.score import score_tokens
from paligemma_jax.models import PaliGemmaConfig

PredictFn = Callable[[Mapping[str, Any]], list[str]]
ScoreFn = Callable[[Mapping[str, Any]], tuple[np.ndarray, np.ndarray]]
PredictFnFactory = Callable[[Decoding], "PredictFn | ScoreFn"]


def decode_texts(tokenizer: Tokenizer, ids_BxN: np.ndarray) -> list[str]:
  """Each row's text: ids up to the first eos, detokenised (pad / bos / <image> dropped)."""
  return [tokenizer.decode(row) for row in np.asarray(ids_BxN)]


def make_predict_fn(config: PaliGemmaConfig, params: Any, processor: Processor,
                    decoding: Decoding, *, mesh: jax.sharding.Mesh | None = None
                    ) -> PredictFn | ScoreFn:
  """A predict function (greedy / beam) or, for `decoding.sampler == "score"`, a score function.

  Args:
    config: the model's config.
    params: {"params": ...}; placed on `mesh` with the model's parameter shardings (a no-op for
      params already laid out so, such as the trainer's).
    processor: gives the tokenizer (eos, detokenisation).
    decoding: a resolved `Decoding` (sampler set, max_decode_len > 0), e.g. `EvalSpec.decoding`.
    mesh: default `sharding.make_mesh()` (data parallel over every device).
  """
  mesh = mesh or sharding.make_mesh()
  params = jax.device_put(params, sharding.param_shardings(config, mesh))
  tokenizer = processor.tokenizer
  if decoding.sampler not in ("greedy", "beam", "score") or decoding.max_decode_len < 1:
    raise ValueError(f"make_predict_fn needs a resolved decoding (greedy, beam or score, "
                     f"max_decode_len >= 1), got {decoding}")
  beam = (BeamSearch(num_beams=decoding.num_beams, length_penalty=decoding.length_penalty)
          if decoding.sampler == "beam" else None)

  def predict(batch: Mapping[str, Any]) -> list[str]:
    check_prompt_batch(batch, decoding.max_decode_len)
    ids, _ = generate_on_mesh(params, batch, mesh, config=config,
                              max_new_tokens=decoding.max_decode_len, eos_id=tokenizer.eos_id,
                              pad_id=tokenizer.pad_id, beam=beam)
    return decode_texts(tokenizer, ids)

  def score(batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    if "mask_loss" not in batch:
      raise ValueError("a score function needs a batch with suffixes (mask_loss)")
    with sharding.activate(mesh):
      arrays, n = shard_rows(batch, PROMPT_KEYS + ("mask_loss",), mesh)
      out = score_tokens(params, *(arrays[k] for k in PROMPT_KEYS), arrays["tokens"],
                         arrays["mask_loss"], config=config)
      return np.asarray(out.total)[:n], np.asarray(out.count)[:n]

  return score if decoding.sampler == "score" else predict
