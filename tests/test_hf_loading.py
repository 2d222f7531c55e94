"""Loading HF checkpoints: every key layout, sharding, storage dtypes, and bad checkpoints."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util
from safetensors.torch import load_file, save_file

import hf_oracle as O
from paligemma_jax.conversion import CheckpointError, load_hf_checkpoint


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  model = O.build_model(O.PG1)
  folder = tmp_path_factory.mktemp("v5")
  model.save_pretrained(folder)
  return str(folder)


@pytest.fixture(scope="module")
def reference(hf_folder):
  return load_hf_checkpoint(hf_folder)


def flat(params):
  return traverse_util.flatten_dict(jax.tree.map(np.asarray, params["params"]), sep="/")


def rewrite(src, dst, edit):
  """Copies a single-file checkpoint folder, passing its tensors through `edit(dict)`."""
  os.makedirs(dst, exist_ok=True)
  shutil.copy(os.path.join(src, "config.json"), dst)
  tensors = load_file(os.path.join(src, "model.safetensors"))
  save_file(edit(dict(tensors)), os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
  return dst


def to_legacy(tensors):
  """The hub's legacy names (`vision_tower.vision_model.`), with an explicit tied lm_head."""
  out = {}
  for key, value in tensors.items():
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
      key = "vision_tower.vision_model." + key.removeprefix("vision_tower.")
    out[key] = value
  out["language_model.lm_head.weight"] = out["language_model.model.embed_tokens.weight"].clone()
  return out


def test_v5_save_has_no_vision_model_segment(hf_folder):
  keys = load_file(os.path.join(hf_folder, "model.safetensors")).keys()
  assert any(k.startswith("vision_tower.") for k in keys)
  assert not any(k.startswith("vision_tower.vision_model.") for k in keys)


def test_legacy_layout_with_tied_head_loads_identically(hf_folder, reference, tmp_path):
  config, params = load_hf_checkpoint(rewrite(hf_folder, tmp_path / "legacy", to_legacy))
  assert config == reference[0]
  for key, value in flat(reference[1]).items():
    np.testing.assert_array_equal(flat(params)[key], value, err_msg=key)


def test_sharded_with_index_loads_identically(hf_folder, reference, tmp_path):
  model = O.build_model(O.PG1)
  model.save_pretrained(tmp_path, max_shard_size="40KB")
  assert os.path.exists(tmp_path / "model.safetensors.index.json")
  assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
  _, params = load_hf_checkpoint(str(tmp_path))
  for key, value in flat(reference[1]).items():
    np.testing.assert_array_equal(flat(params)[key], value, err_msg=key)


@pytest.mark.parametrize("torch_dtype,ours", [("bfloat16", "bfloat16"), ("float16", "float16")])
def test_storage_dtype_is_kept(reference, tmp_path, torch_dtype, ours):
  import torch
  model = O.build_model(O.PG1).to(getattr(torch, torch_dtype))
  model.save_pretrained(tmp_path)
  config, params = load_hf_checkpoint(str(tmp_path))
  assert config.param_dtype == ours and config.dtype == ours
  got = flat(params)["llm/embedding"]
  assert got.dtype == np.dtype(jax.numpy.dtype(ours))
  want = model.model.language_model.embed_tokens.weight.detach().float().numpy()
  np.testing.assert_array_equal(got.astype(np.float32), want)


def test_overrides_follow_user(hf_folder):
  config, _ = load_hf_checkpoint(hf_folder, param_dtype="float32", dtype="bfloat16",
                                 **{"text.final_logit_softcap": 7.0})
  assert (config.param_dtype, config.dtype, config.text.final_logit_softcap) == (
      "float32", "bfloat16", 7.0)


def test_config_follows_checkpoint(tmp_path):
  model = O.build_model(O.PG2_28B_HEADS)
  model.save_pretrained(tmp_path)
  config, _ = load_hf_checkpoint(str(tmp_path))
  text = config.text
  assert (text.version, text.num_heads, text.num_kv_heads, text.head_dim) == (2, 4, 2, 128)
  assert text.attn_scale == pytest.approx(1 / 12)
  assert (text.attn_logit_softcap, text.final_logit_softcap) == (5.0, 3.0)
  assert text.sliding_window == 4096 and config.image_token_id == O.IMAGE_TOKEN


EMBED = "language_model.model.embed_tokens.weight"
Q0 = "language_model.model.layers.0.self_attn.q_proj.weight"


def _drop(key):
  return lambda t: {k: v for k, v in t.items() if k != key}


def _add_extra(t):
  import torch
  return {**t, "language_model.model.layers.0.self_attn.q_norm.weight": torch.zeros(4)}


def _misshape(t):
  return {**t, Q0: t[Q0][:-1].clone()}


def _untie(t):
  return {**t, "lm_head.weight": t[EMBED] + 1}


@pytest.mark.parametrize("edit,needle", [
    (_drop("language_model.model.layers.1.mlp.up_proj.weight"), "layers.1.mlp.up_proj.weight"),
    (_add_extra, "q_norm.weight"),
    (_misshape, "q_proj.weight has shape (63, 48), expected (64, 48)"),
    (_untie, "untied"),
])
def test_bad_tensors_name_the_problem(hf_folder, tmp_path, edit, needle):
  folder = rewrite(hf_folder, tmp_path / "bad", edit)
  with pytest.raises(CheckpointError, match=None) as info:
    load_hf_checkpoint(folder)
  message = str(info.value)
  assert needle in message and "\n" not in message


def test_missing_shard_and_truncated_file(hf_folder, tmp_path):
  model = O.build_model(O.PG1)
  model.save_pretrained(tmp_path, max_shard_size="40KB")
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  shard = sorted(set(index["weight_map"].values()))[1]
  data = (tmp_path / shard).read_bytes()
  (tmp_path / shard).write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated|not a readable"):
    load_hf_checkpoint(str(tmp_path))
  os.remove(tmp_path / shard)
  with pytest.raises(CheckpointError, match=f"names shard {shard} which is not in"):
    load_hf_checkpoint(str(tmp_path))


def test_missing_folder_and_config(hf_folder, tmp_path):
  with pytest.raises(CheckpointError, match="does not exist"):
    load_hf_checkpoint(str(tmp_path / "nope"))
  shutil.copy(os.path.join(hf_folder, "model.safetensors"), tmp_path)
  with pytest.raises(CheckpointError, match="config.json is missing"):
    load_hf_checkpoint(str(tmp_path))
