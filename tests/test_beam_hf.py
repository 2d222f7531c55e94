"""Beam search (prefill once, B*K cache, on-device loop) against HF `generate(num_beams=...)`."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import hf_oracle as O
from paligemma_jax.conversion import load_hf_checkpoint
from paligemma_jax.inference import BeamSearch, beam_generate
from test_generate_hf import prompt_batch

NEW_TOKENS = 10


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  """spec -> (HF model, our config, our params), built once per module."""
  saved, cache = O.saved_models(tmp_path_factory), {}

  def get(spec):
    if spec not in cache:
      model, folder = saved(spec)
      cache[spec] = (model, *load_hf_checkpoint(folder))
    return cache[spec]

  return get


def hf_beams(model, batch, beam: BeamSearch, eos_id: int | None):
  """HF's K best hypotheses [B, K, <= N] (new tokens only) and their scores [B, K]."""
  import torch
  pixels = torch.as_tensor(batch["images"][:, 0].transpose(0, 3, 1, 2))
  with torch.no_grad():
    ref = model.generate(
        input_ids=torch.as_tensor(batch["tokens"], dtype=torch.long), pixel_values=pixels,
        attention_mask=torch.as_tensor(batch["input_mask"], dtype=torch.long),
        token_type_ids=torch.zeros(batch["tokens"].shape, dtype=torch.long),
        max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=beam.num_beams,
        num_return_sequences=beam.num_beams, length_penalty=beam.length_penalty,
        early_stopping=beam.early_stopping, eos_token_id=eos_id, pad_token_id=0,
        output_scores=True, return_dict_in_generate=True)
  b, k = len(batch["tokens"]), beam.num_beams
  tokens = ref.sequences[:, batch["tokens"].shape[1]:].numpy().reshape(b, k, -1)
  return tokens, ref.sequences_scores.numpy().reshape(b, k)


def until_eos(row: np.ndarray, eos_id: int) -> list[int]:
  hits = np.flatnonzero(row == eos_id)
  return row[:hits[0] + 1 if hits.size else len(row)].tolist()


def mid_token(hypotheses_HxN: np.ndarray) -> int:
  """The token that the most hypotheses first emit mid-way (not first, not last): as eos it ends
  hypotheses early. Found from a run of the model, as a tokenizer-free eos must be."""
  counts = collections.Counter()
  for row in hypotheses_HxN.tolist():
    firsts = {t: row.index(t) for t in set(row)}
    counts.update(t for t, i in firsts.items() if 1 <= i <= len(row) - 2)
  assert counts, f"every hypothesis repeats one token {hypotheses_HxN}; pick another seed"
  return counts.most_common(1)[0][0]


def assert_same_beams(ours, ref_tokens, ref_scores, eos_id: int) -> list[int]:
  """All K hypotheses token-identical up to their eos (pad after it), the same scores; returns
  their lengths."""
  b, k, _ = ours.tokens.shape
  lengths = []
  for i in range(b):
    for j in range(k):
      mine = until_eos(ours.tokens[i, j], eos_id)
      assert mine == until_eos(ref_tokens[i, j], eos_id), (i, j)
      assert (ours.tokens[i, j, len(mine):] == 0).all()
      lengths.append(len(mine))
  np.testing.assert_allclose(ours.scores, ref_scores, rtol=1e-5, atol=1e-5)
  assert (np.diff(ours.scores, axis=1) <= 0).all()  # best first
  return lengths


CASES = {  # spec, settings, whether eos (picked from the run without eos) ends some beams early
    # (one num_beams per spec: eos, length penalty and early stopping do not recompile)
    "pg1_k4_lp0.5": (O.PG1, BeamSearch(4, 0.5, False), True),
    "pg1_k4_never": (O.PG1, BeamSearch(4, 1.0, "never"), False),
    "pg2_window_k3_early": (O.PG2_WINDOW, BeamSearch(3, 1.0, True), True),
    "pg2_window_k3_lp-1": (O.PG2_WINDOW, BeamSearch(3, -1.0, False), True),
    # with "never" (and length_penalty 2) the long hypotheses beat every one that ended in eos
    "pg2_window_k3_lp2_never": (O.PG2_WINDOW, BeamSearch(3, 2.0, "never"), False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_beams_match_hf(loaded, name):
  """On prompts of lengths 6, 3 and 9 (left-padded): without eos, then with an eos the model
  emits mid-way, all K hypotheses and scores equal HF's."""
  spec, beam, ends_early = CASES[name]
  model, config, params = loaded(spec)
  batch = prompt_batch(spec)
  free = beam_generate(config, params, batch, NEW_TOKENS, -1, beam=beam)
  assert free.tokens.shape == (3, beam.num_beams, NEW_TOKENS)
  assert_same_beams(free, *hf_beams(model, batch, beam, None), eos_id=-1)

  eos = mid_token(free.tokens.reshape(-1, NEW_TOKENS))
  ours = beam_generate(config, params, batch, NEW_TOKENS, eos, beam=beam)
  lengths = assert_same_beams(ours, *hf_beams(model, batch, beam, eos), eos_id=eos)
  if ends_early:  # eos really ended hypotheses, at different lengths
    assert min(lengths) < NEW_TOKENS and len(set(lengths)) > 1, lengths


def test_every_emitted_token_as_eos(loaded):
  """Each token the hypotheses emit mid-way, tried as eos (a traced argument: no recompiles).
  With length_penalty > 0 and early_stopping=False, HF's stop rule is a heuristic that can end
  the search before a better hypothesis appears; one of these eos choices (13 on these weights)
  gives a different result when our copy of the rule is removed."""
  spec, beam = O.PG2_WINDOW, BeamSearch(3, 1.0, False)
  model, config, params = loaded(spec)
  batch = prompt_batch(spec)
  free = beam_generate(config, params, batch, NEW_TOKENS, -1, beam=beam)
  candidates = np.unique(free.tokens[:, :, 1:-1])
  assert len(candidates) >= 5
  for eos in candidates.tolist():
    ours = beam_generate(config, params, batch, NEW_TOKENS, eos, beam=beam)
    assert_same_beams(ours, *hf_beams(model, batch, beam, eos), eos_id=eos)


def test_one_beam_without_eos_is_greedy(loaded):
  """K = 1 with no eos is HF's greedy decoding; its score is the mean log-prob (length_penalty 1)."""
  import torch
  model, config, params = loaded(O.PG1)
  batch = prompt_batch(O.PG1)
  beams = beam_generate(config, params, batch, NEW_TOKENS, -1, beam=BeamSearch(1))
  with torch.no_grad():
    ref = model.generate(
        input_ids=torch.as_tensor(batch["tokens"], dtype=torch.long),
        pixel_values=torch.as_tensor(batch["images"][:, 0].transpose(0, 3, 1, 2)),
        attention_mask=torch.as_tensor(batch["input_mask"], dtype=torch.long),
        token_type_ids=torch.zeros(batch["tokens"].shape, dtype=torch.long),
        max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0,
        output_logits=True, return_dict_in_generate=True)
  greedy = ref.sequences[:, batch["tokens"].shape[1]:].numpy()
  np.testing.assert_array_equal(beams.tokens[:, 0], greedy)
  logprobs = torch.stack(ref.logits, 1).log_softmax(-1).numpy()
  chosen = np.take_along_axis(logprobs, greedy[..., None], -1)[..., 0]
  np.testing.assert_allclose(beams.scores[:, 0], chosen.mean(1), atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_beams=0), "num_beams must be an int >= 1"),
    (dict(num_beams=2.0), "num_beams must be an int >= 1"),
    (dict(length_penalty=float("nan")), "length_penalty must be a finite float"),
    (dict(early_stopping="sometimes"), "early_stopping must be one of"),
    (dict(early_stopping=1), "early_stopping must be one of"),
])
def test_bad_beam_settings(kwargs, message):
  with pytest.raises(ValueError, match=message):
    BeamSearch(**kwargs)
