"""Pretrained init straight into the sharded layout: HF folders and big_vision npz files are read
through the converter's sources leaf by leaf (stacked leaves layer by layer) onto the target
shardings, with the values `load_hf_checkpoint` / the npz source give."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import traverse_util

import convert_fixtures as F
import hf_oracle as O
from paligemma_jax import sharding as S
from paligemma_jax.conversion import HFSource, NpzSource, load_hf_checkpoint, read_params
from paligemma_jax.conversion.streaming import stacked
from paligemma_jax.training import config as config_lib
from paligemma_jax.training import state as state_lib


@pytest.fixture(scope="module")
def mesh():
  return S.make_mesh(2, 2, 2)


@pytest.fixture(scope="module")
def hf_bf16(tmp_path_factory):
  """A Gemma 2 PaliGemma stored in bfloat16, saved in several safetensors files."""
  return F.hf_folder(str(tmp_path_factory.mktemp("hf")), O.PG2, dtype="bfloat16", shard="60KB")


def flat(params) -> dict[str, jax.Array]:
  return traverse_util.flatten_dict(params, sep="/")


def assert_placed(params, want, config, mesh):
  """Every leaf equals `want`'s bit for bit, in its dtype, on `config`'s target sharding."""
  got, want = flat(params), flat(want)
  targets = flat(S.param_shardings(config, mesh))
  assert set(got) == set(want) == set(targets)
  for key, value in got.items():
    assert value.sharding == targets[key], key
    assert value.dtype == want[key].dtype, key
    np.testing.assert_array_equal(np.asarray(value), np.asarray(want[key]), err_msg=key)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_hf_folder_loads_onto_the_mesh_as_load_hf_checkpoint(hf_bf16, mesh, dtype):
  want_config, want = load_hf_checkpoint(hf_bf16, param_dtype=dtype)
  config, params = state_lib.load_pretrained(hf_bf16, {}, mesh, dtype)
  assert config == want_config
  assert_placed(params, want, config, mesh)
  # Not replicated: the embedding is split over the model and fsdp axes.
  embedding = params["params"]["llm"]["embedding"]
  assert tuple(embedding.sharding.spec) == ("model", "fsdp")
  assert embedding.addressable_shards[0].data.shape == (O.VOCAB // 2, O.PG2.width // 2)


def test_hf_folder_is_read_leaf_by_leaf_and_layer_by_layer(hf_bf16, mesh, monkeypatch):
  """No read ever returns more than one leaf, and a stacked leaf is never read whole."""
  reads = []
  real_read, real_layer = HFSource.read, HFSource.read_layer

  def read(self, key):
    out = real_read(self, key)
    reads.append((key, None, out.nbytes))
    return out

  def read_layer(self, key, layer):
    out = real_layer(self, key, layer)
    reads.append((key, layer, out.nbytes))
    return out

  monkeypatch.setattr(HFSource, "read", read)
  monkeypatch.setattr(HFSource, "read_layer", read_layer)
  config, params = state_lib.load_pretrained(hf_bf16, {}, mesh)
  leaves = flat(params)
  whole = [k for k, layer, _ in reads if layer is None]
  assert not [k for k in whole if stacked(k)]
  assert sorted(whole) == sorted(k for k in leaves if not stacked(k))
  for key, leaf in leaves.items():
    if stacked(key):
      assert [layer for k, layer, _ in reads if k == key] == list(range(leaf.shape[0]))
  # The host holds one piece at a time: the biggest read is a small part of the model.
  model_bytes = sum(x.size * 2 for x in leaves.values())  # stored as bfloat16
  assert max(n for *_, n in reads) <= max(x.size * 2 for x in leaves.values())
  assert max(n for *_, n in reads) < model_bytes / 4


def test_new_resolution_resamples_pos_embed_from_an_hf_folder(hf_bf16, mesh):
  _, want = load_hf_checkpoint(hf_bf16, param_dtype="float32")
  config, params = state_lib.load_pretrained(hf_bf16, {"vision.image_size": 56}, mesh)
  pos = params["params"]["vision"]["pos_embed"]
  assert config.vision.image_size == 56 and pos.shape == (16, 32)
  assert pos.sharding == S.param_shardings(config, mesh)["params"]["vision"]["pos_embed"]
  np.testing.assert_allclose(np.asarray(pos), np.asarray(state_lib.resample_posemb(
      np.asarray(want["params"]["vision"]["pos_embed"]), 16)), atol=1e-6)


def test_big_vision_npz_loads_onto_the_mesh(tmp_path, mesh):
  path = F.write_big_vision_npz(str(tmp_path / "pg2.npz"), F.BV_PG2, dtype="bfloat16")
  with NpzSource(path) as source:
    want_config = source.config
    want = read_params(source, np.float32)
  config, params = state_lib.load_pretrained(path, {}, mesh)
  assert config == want_config.replace(param_dtype="float32", dtype="float32")
  assert config.text.version == 2 and config.text.depth == F.BV_PG2.text.depth
  assert_placed(params, want, config, mesh)


def test_npz_needs_the_variant_its_shapes_cannot_tell(tmp_path, mesh):
  path = F.write_big_vision_npz(str(tmp_path / "pg2_28b.npz"), F.BV_PG2_28B)
  with pytest.raises(ValueError, match=r"set config.model.variant") as e:
    state_lib.load_pretrained(path, {}, mesh)
  assert "\n" not in str(e.value)
  config, params = state_lib.load_pretrained(path, {}, mesh, variant=F.BV_PG2_28B)
  assert config.text.query_pre_attn_scalar == 16.0
  with NpzSource(path, F.BV_PG2_28B) as source:
    assert_placed(params, read_params(source, np.float32), config, mesh)
  with pytest.raises(ValueError, match=r"does not have the shapes of variant paligemma_3b_224"):
    state_lib.load_pretrained(path, {}, mesh, variant="paligemma_3b_224")


def _train_config(tmp_path, init: str, variant: str = "") -> config_lib.TrainConfig:
  (tmp_path / "tok.model").write_text("")
  (tmp_path / "train.jsonl").write_text("")
  return config_lib.parse_train_config(dict(
      init=init, tokenizer=str(tmp_path / "tok.model"),
      input=dict(members=[dict(jsonl=str(tmp_path / "train.jsonl"))], batch_size=8,
                 text_len=16),
      optimizer=dict(name="adam"), total_steps=1, model=dict(variant=variant)))


def test_validate_accepts_an_npz_file_and_refuses_other_files(tmp_path):
  path = F.write_big_vision_npz(str(tmp_path / "pg1.npz"), F.BV_PG1)
  assert config_lib.validate(_train_config(tmp_path, path), 1) == (1, 1, 1)
  with pytest.raises(ValueError, match=r"is neither 'random' nor a checkpoint"):
    config_lib.validate(_train_config(tmp_path, str(tmp_path / "tok.model")), 1)


def test_the_trainer_completes_an_npz_with_config_model_variant(tmp_path, monkeypatch):
  from paligemma_jax.training import trainer
  seen = {}

  def load(path, overrides, mesh, dtype="float32", *, variant=None):
    seen.update(path=path, variant=variant)
    raise ValueError("stop here")

  monkeypatch.setattr(state_lib, "load_pretrained", load)
  cfg = _train_config(tmp_path, "/ckpt/pt_224.npz", variant="paligemma_3b_224")
  with pytest.raises(ValueError, match=r"config.init / config.model: stop here"):
    trainer._model_config(cfg, None, str(tmp_path / "w"), None, resuming=False)
  assert seen == {"path": "/ckpt/pt_224.npz", "variant": "paligemma_3b_224"}
