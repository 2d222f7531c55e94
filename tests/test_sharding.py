"""The mesh and the rules table: golden parameter shardings, and sharded runs equal unsharded ones.

Regenerate the golden file after an intended change to RULES with
`UPDATE_GOLDEN=1 pytest tests/test_sharding.py`, and review its diff.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from model_fixtures import PG1, PG2, PG2_WINDOW, random_params
from paligemma_jax import sharding as S
from paligemma_jax.inference import greedy_generate
from paligemma_jax.models import PaliGemma, get_variant

GOLDEN = pathlib.Path(__file__).parent / "golden" / "param_sharding.json"
GOLDEN_VARIANTS = ("paligemma_3b_224", "paligemma2_3b_224", "paligemma2_28b_448")


def _specs(name: str) -> dict[str, str]:
  mesh = S.make_mesh(data=2, fsdp=2, model=2)
  shardings = S.param_shardings(get_variant(name), mesh)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): str(tuple(s.spec))
          for path, s in jax.tree_util.tree_leaves_with_path(shardings)}


def test_param_shardings_match_golden_file():
  got = {name: _specs(name) for name in GOLDEN_VARIANTS}
  if os.environ.get("UPDATE_GOLDEN"):
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
  assert got == json.loads(GOLDEN.read_text())


def test_rules_shard_the_big_matrices_and_replicate_what_does_not_divide():
  specs = _specs("paligemma_3b_224")
  assert specs["params/llm/embedding"] == "('model', 'fsdp')"
  assert specs["params/llm/layers/mlp/gate/w"] == "(None, 'fsdp', 'model')"
  # PG1 has one kv head: it cannot split over model=2, so that axis is replicated.
  assert specs["params/llm/layers/attn/k/w"] == "(None, 'fsdp', None, None)"


def test_make_mesh_errors_name_the_fix():
  assert S.make_mesh().shape == {"data": 8, "fsdp": 1, "model": 1}
  assert S.make_mesh(fsdp=-1, model=2).shape == {"data": 1, "fsdp": 4, "model": 2}
  with pytest.raises(ValueError, match="needs 12 devices, 8 are available"):
    S.make_mesh(data=3, fsdp=2, model=2)
  with pytest.raises(ValueError, match="at most one mesh axis may be -1"):
    S.make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="pad the batch to a multiple of 4"):
    S.shard_batch({"tokens": np.zeros((6, 3), np.int32)}, S.make_mesh(data=2, fsdp=2, model=2))


def _batch(config, b=8, text=5, seed=0):
  rng = np.random.default_rng(seed)
  m, r = config.vision.num_patches, config.vision.image_size
  tokens = rng.integers(3, 100, (b, m + text)).astype(np.int32)
  tokens[:, :m] = config.image_token_id
  mask_ar = np.zeros_like(tokens)
  mask_ar[:, -2:] = 1  # a two-token suffix, so causal and prefix attention both appear
  return {"tokens": tokens, "images": rng.uniform(-1, 1, (b, 1, r, r, 3)).astype(np.float32),
          "input_mask": np.ones(tokens.shape, bool), "mask_ar": mask_ar}


@pytest.mark.parametrize("config", [PG1, PG2_WINDOW], ids=["pg1", "pg2_window"])
@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 4, 2)], ids=["dp", "dp_fsdp_tp", "fsdp_tp"])
def test_sharded_forward_equals_unsharded(config, shape):
  params, batch = random_params(config), _batch(config)
  forward = jax.jit(lambda p, b: PaliGemma(config).apply(p, b["tokens"], b["images"],
                                                         b["input_mask"], b["mask_ar"]))
  want = np.asarray(forward(params, batch))

  mesh = S.make_mesh(*shape)
  with S.activate(mesh):
    sharded_params = jax.device_put(params, S.param_shardings(config, mesh))
    got = forward(sharded_params, S.shard_batch(batch, mesh))
  assert len(got.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=2e-5)


def test_sharded_greedy_decoding_equals_unsharded():
  config, params = PG2, random_params(PG2)
  batch = _batch(config, text=4)
  batch["mask_ar"][:] = 0
  run = lambda p, b: greedy_generate(p, b["tokens"], b["images"], b["input_mask"], b["mask_ar"],
                                     config=config, max_new_tokens=6, eos_id=-1)
  want_tokens, want_logits = run(params, batch)
  mesh = S.make_mesh(data=4, model=2)
  with S.activate(mesh):
    got_tokens, got_logits = run(jax.device_put(params, S.param_shardings(config, mesh)),
                                 S.shard_batch(batch, mesh))
  np.testing.assert_array_equal(np.asarray(got_tokens), np.asarray(want_tokens))
  np.testing.assert_allclose(np.asarray(got_logits), np.asarray(want_logits), atol=2e-5, rtol=2e-5)
