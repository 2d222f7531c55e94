"""Beam search on device with HF transformers' semantics (v5 `GenerationMixin._beam_search`).

The prompt is prefilled once for B rows, then the state is repeated to B*K rows (K beams). Each
step, per example:
  1. accumulated log-probs of all K*V continuations; the top M = 2K are candidates (2K so that K
     remain that did not just end, even if K of them chose eos);
  2. the best K candidates that did not end (eos, or the N-th token) run on;
  3. the candidates among the first K that ended join the finished hypotheses with the score
     `sum log p / length ** length_penalty` (length: new tokens, eos included); the best K stay;
  4. HF's stop rule: an example takes no more hypotheses once all K slots are filled and the
     best running beam, scored as if it ended now (at N tokens for early_stopping="never" with
     length_penalty > 0), cannot beat the worst of them; with early_stopping=True, as soon as
     the K slots are filled. The loop ends when no example takes any more, or at token N.
As in HF, masked entries get -1e9 added (not -inf), so the arithmetic matches HF's exactly.
Letters: B batch, K beams, M = 2K candidates, S prompt, N new tokens, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from paligemma_jax.inference.decode import (DecodeState, check_prompt_batch, decode_layers, feed,
                                            prefill)
from paligemma_jax.models import PaliGemma, PaliGemmaConfig

EARLY_STOPPING = (False, True, "never")
NEG = -1.0e9  # HF's "impossible" score


@dataclasses.dataclass(frozen=True)
class BeamSearch:
  """Beam-search settings, as in HF `generate` (frozen; only num_beams is compiled in).

  num_beams: K >= 1. length_penalty: finished scores are divided by length ** length_penalty
  (> 0 favours longer outputs). early_stopping: False, True or "never" (see the module docstring).
  """

  num_beams: int = 4
  length_penalty: float = 1.0
  early_stopping: bool | str = False

  def __post_init__(self):
    if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) \
        or self.num_beams < 1:
      raise ValueError(f"num_beams must be an int >= 1, got {self.num_beams!r}")
    if not math.isfinite(self.length_penalty):
      raise ValueError(f"length_penalty must be a finite float, got {self.length_penalty!r}")
    if not (self.early_stopping is True or self.early_stopping is False
            or self.early_stopping == "never"):
      raise ValueError(f"early_stopping must be one of {EARLY_STOPPING}, "
                       f"got {self.early_stopping!r}")


class Beams(NamedTuple):
  """The K best finished hypotheses per example, best first."""
  tokens: jax.Array  # int32 [B, K, N]; pad_id after a hypothesis' eos
  scores: jax.Array  # float32 [B, K]: sum of log-probs / length ** length_penalty (HF's
                     # `sequences_scores`)


@flax.struct.dataclass
class _Search:
  """Beam-search bookkeeping, HF's names in comments."""
  running_BxKxN: jax.Array  # running_sequences (new tokens only)
  running_scores_BxK: jax.Array  # running_beam_scores: accumulated log-probs
  finished_BxKxN: jax.Array  # sequences
  finished_scores_BxK: jax.Array  # beam_scores: length-normalised
  is_finished_BxK: jax.Array  # is_sent_finished: the slot holds a real hypothesis
  improvable_B: jax.Array  # is_early_stop_heuristic_unsatisfied
  parents_BxK: jax.Array  # the beam each running beam continues (cache reorder)
  going: jax.Array  # bool scalar: not this_peer_finished


@flax.struct.dataclass
class _Rule:
  """The traced part of the settings, so that a new eos or length penalty does not recompile."""
  eos_id: jax.Array  # int32 scalar; -1: none
  denominators_N: jax.Array  # float32 [N]: length ** length_penalty for lengths 1 .. N
  stop_when_full: jax.Array  # bool: early_stopping is True
  judge_at_max: jax.Array  # bool: early_stopping == "never" and length_penalty > 0

  @classmethod
  def of(cls, beam: BeamSearch, eos_id: int | jax.Array, max_new_tokens: int) -> "_Rule":
    # HF divides by a Python float (length ** penalty in double): the same numbers, as a table.
    lengths = np.arange(1, max_new_tokens + 1, dtype=np.float64)
    return cls(jnp.asarray(eos_id, jnp.int32),
               jnp.asarray(lengths ** beam.length_penalty, jnp.float32),
               jnp.bool_(beam.early_stopping is True),
               jnp.bool_(beam.early_stopping == "never" and beam.length_penalty > 0.0))


def _gather(x_BxMx: jax.Array, index_BxK: jax.Array) -> jax.Array:
  """x[b, index[b, k], ...]: HF's `_gather_beams`."""
  index = index_BxK.reshape(index_BxK.shape + (1,) * (x_BxMx.ndim - 2))
  return jnp.take_along_axis(x_BxMx, index, axis=1)


def _select(step: jax.Array, logits_BKxV: jax.Array, st: _Search, rule: _Rule) -> _Search:
  """One step of HF's loop (b-g) on the logits of new token `step` (0-based)."""
  b, k, n = st.running_BxKxN.shape
  v = logits_BKxV.shape[-1]
  # b. accumulated log-probs, c. top-M continuations over all beams
  logprobs_BxKxV = jax.nn.log_softmax(logits_BKxV.astype(jnp.float32), axis=-1).reshape(b, k, v)
  accumulated_BxKV = (logprobs_BxKxV + st.running_scores_BxK[:, :, None]).reshape(b, k * v)
  top_BxM, index_BxM = jax.lax.top_k(accumulated_BxKV, 2 * k)
  parent_BxM, token_BxM = index_BxM // v, (index_BxM % v).astype(jnp.int32)
  candidates_BxMxN = _gather(st.running_BxKxN, parent_BxM).at[:, :, step].set(token_BxM)
  # d. which candidates ended: eos, or the last allowed token
  ended_BxM = (token_BxM == rule.eos_id) | (step + 1 >= n)
  # e. the best K candidates that did not end run on
  run_BxM = top_BxM + ended_BxM * NEG
  keep_BxK = jax.lax.top_k(run_BxM, k)[1]
  # f. candidates among the first K that ended join the finished hypotheses
  just_ended_BxM = ended_BxM & (jnp.arange(2 * k) < k)[None]
  normalised_BxM = top_BxM / rule.denominators_N[step]
  full_Bx1 = jnp.all(st.is_finished_BxK, axis=-1, keepdims=True) & rule.stop_when_full
  normalised_BxM = normalised_BxM + full_Bx1 * NEG
  normalised_BxM = normalised_BxM + ~st.improvable_B[:, None] * NEG
  normalised_BxM = normalised_BxM + ~just_ended_BxM * NEG
  merged_scores = jnp.concatenate([st.finished_scores_BxK, normalised_BxM], axis=1)
  best_BxK = jax.lax.top_k(merged_scores, k)[1]
  finished_BxKxN = _gather(jnp.concatenate([st.finished_BxKxN, candidates_BxMxN], 1), best_BxK)
  is_finished_BxK = _gather(jnp.concatenate([st.is_finished_BxK, just_ended_BxM], 1), best_BxK)
  finished_scores_BxK = _gather(merged_scores, best_BxK)
  # g. can a running beam still beat the worst finished hypothesis (HF's heuristic)?
  running_scores_BxK = _gather(run_BxM, keep_BxK)
  # Lengths index the denominators from 0: `step` is the length after this step, minus one.
  best_length = jnp.where(rule.judge_at_max, n - 1, step)
  best_running_B = running_scores_BxK[:, 0] / rule.denominators_N[best_length]
  worst_BxK = jnp.where(is_finished_BxK, jnp.min(finished_scores_BxK, -1, keepdims=True), NEG)
  improvable_B = st.improvable_B & jnp.any(best_running_B[:, None] > worst_BxK, axis=-1)
  going = (jnp.any(improvable_B)
           & ~(jnp.all(is_finished_BxK) & rule.stop_when_full)
           & ~jnp.all(ended_BxM))
  return _Search(_gather(candidates_BxMxN, keep_BxK), running_scores_BxK, finished_BxKxN,
                 finished_scores_BxK, is_finished_BxK, improvable_B, _gather(parent_BxM, keep_BxK),
                 going)


def beam_search(params: dict, tokens_BxS: jax.Array, images: jax.Array | None,
                input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array, *, config: PaliGemmaConfig,
                max_new_tokens: int, eos_id: int | jax.Array, beam: BeamSearch = BeamSearch(),
                pad_id: int = 0) -> Beams:
  """The K best hypotheses of up to N new tokens per row of a left-padded prompt batch.

  `eos_id` -1 means none: every hypothesis is then N tokens long. Only `num_beams` (and the
  shapes) compile anew: eos, length penalty and early stopping are traced.
  """
  return _beam_search(params, tokens_BxS, images, input_mask_BxS, mask_ar_BxS,
                      _Rule.of(beam, eos_id, max_new_tokens), config=config,
                      max_new_tokens=max_new_tokens, num_beams=beam.num_beams, pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "num_beams", "pad_id"))
def _beam_search(params: dict, tokens_BxS: jax.Array, images: jax.Array | None,
                 input_mask_BxS: jax.Array, mask_ar_BxS: jax.Array, rule: _Rule, *,
                 config: PaliGemmaConfig, max_new_tokens: int, num_beams: int, pad_id: int
                 ) -> Beams:
  model = PaliGemma(config)
  b, k, n = tokens_BxS.shape[0], num_beams, max_new_tokens
  layers = decode_layers(params, None)
  logits_BxV, decode_state = prefill(model, params, tokens_BxS, images, input_mask_BxS,
                                     mask_ar_BxS, n, layers)
  rows_BK = jnp.repeat(jnp.arange(b), k)  # example b's beams are rows b*K .. b*K + K-1
  logits_BKxV, decode_state = logits_BxV[rows_BK], decode_state.take(rows_BK)
  select = functools.partial(_select, rule=rule)
  empty_BxKxN = jnp.full((b, k, n), pad_id, jnp.int32)
  # Only beam 0 starts alive, so the first step does not pick the same token K times.
  start_BxK = jnp.where(jnp.arange(k) == 0, 0.0, NEG) * jnp.ones((b, 1), jnp.float32)
  search = _Search(empty_BxKxN, start_BxK, empty_BxKxN, jnp.full((b, k), NEG, jnp.float32),
                   jnp.zeros((b, k), bool), jnp.ones((b,), bool), jnp.zeros((b, k), jnp.int32),
                   jnp.bool_(True))
  search = select(jnp.int32(0), logits_BKxV, search)

  def body(carry: tuple[jax.Array, _Search, DecodeState]):
    """Reorders the cache to the surviving beams, feeds their tokens, selects the next."""
    step, search, decode_state = carry
    # Every beam continues some beam of the same example: gather the cache rows (as HF's
    # `reorder_cache`), a copy of the cache per step.
    rows_BK = (jnp.arange(b)[:, None] * k + search.parents_BxK).reshape(b * k)
    tokens_BK = search.running_BxKxN[:, :, step].reshape(b * k)
    logits_BKxV, decode_state = feed(model, params, tokens_BK, decode_state.take(rows_BK), layers)
    return step + 1, select(step + 1, logits_BKxV, search), decode_state

  _, search, _ = jax.lax.while_loop(lambda carry: carry[1].going, body,
                                    (jnp.int32(0), search, decode_state))
  return Beams(search.finished_BxKxN, search.finished_scores_BxK)


def beam_generate(config: PaliGemmaConfig, params: dict, batch: dict, max_new_tokens: int,
                  eos_id: int, *, beam: BeamSearch = BeamSearch()) -> Beams:
  """`beam_search` on a left-padded, prompt-only processor batch; numpy `Beams` out.

  `tokens[:, 0]` is the best continuation [B, N] (HF `generate(num_beams=K)`'s output).
  """
  check_prompt_batch(batch, max_new_tokens)
  out = beam_search(params, batch["tokens"], batch["images"], batch["input_mask"],
                    batch["mask_ar"], config=config, max_new_tokens=max_new_tokens,
                    eos_id=eos_id, beam=beam)
  return Beams(np.asarray(out.tokens), np.asarray(out.scores))
