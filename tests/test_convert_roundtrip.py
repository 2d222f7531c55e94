"""Round trips through the converter are bit-identical (dtype and bytes of every tensor).

HF -> Orbax -> HF (f32 / bf16, single file / sharded, lm_head present / absent on input, PG1,
PG2 and 28B-style heads); npz -> Orbax -> npz (f32 and void-bf16); npz -> Orbax -> HF -> Orbax
(only the 64 appended embedding rows are new); HF <-> npz directly; dtypes kept unless `dtype=`.
"""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest

import convert_fixtures as CF
import hf_oracle as O
from paligemma_jax import checkpoints
from paligemma_jax.conversion import convert

EMBED = "language_model.model.embed_tokens.weight"
LM_HEAD = "language_model.lm_head.weight"


def run(src, dst, **kwargs):
  return convert(src, dst, progress=False, log=lambda _: None, **kwargs)


@pytest.mark.parametrize("spec,dtype,shard,legacy_with_head", [
    (O.PG1, "float32", None, False),
    (O.PG1, "bfloat16", "40KB", False),
    (O.PG2, "float32", "60KB", False),
    (O.PG2_28B_HEADS, "bfloat16", None, True),
], ids=["pg1-f32-single", "pg1-bf16-sharded", "pg2-f32-sharded", "pg2_28b-bf16-lm_head"])
def test_hf_orbax_hf_is_bit_identical(tmp_path, spec, dtype, shard, legacy_with_head):
  src = CF.hf_folder(str(tmp_path / "hf"), spec, dtype=dtype, shard=shard,
                     legacy_with_head=legacy_with_head)
  run(src, tmp_path / "orbax")
  config = checkpoints.read_config(tmp_path / "orbax")
  assert config.param_dtype == dtype
  assert {s.dtype for s in checkpoints.leaf_specs(tmp_path / "orbax").values()} == {
      np.dtype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)}
  run(tmp_path / "orbax", tmp_path / "hf2", max_shard_size=shard or "5GB")

  before, after = CF.hf_tensor_bytes(src), CF.hf_tensor_bytes(str(tmp_path / "hf2"))
  assert (LM_HEAD in before) == legacy_with_head and LM_HEAD not in after
  before.pop(LM_HEAD, None)
  assert before.keys() == after.keys()
  for key in before:
    assert before[key] == after[key], key  # dtype tag, shape and every byte
  names = set(os.listdir(tmp_path / "hf2"))
  if shard:
    index = json.loads((tmp_path / "hf2" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and files == sorted(n for n in names if n.endswith(".safetensors"))
    assert files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    assert all(k.startswith(("vision_tower.vision_model.", "multi_modal_projector.linear.",
                             "language_model.model.")) for k in index["weight_map"])
  else:
    assert "model.safetensors" in names and "model.safetensors.index.json" not in names


def test_dtype_is_cast_only_when_asked(tmp_path):
  """(Preservation without `dtype=` is what the bit-identical round trips check.)"""
  src = CF.hf_folder(str(tmp_path / "hf"), O.PG1)
  run(src, tmp_path / "hf16", dst_format="hf", dtype="bfloat16")
  assert json.loads((tmp_path / "hf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
  before, after = CF.hf_tensor_bytes(src), CF.hf_tensor_bytes(str(tmp_path / "hf16"))
  for key, (tag, shape, raw) in before.items():
    assert tag == "F32" and after[key][:2] == ("BF16", shape)
    want = np.frombuffer(raw, np.float32).astype(ml_dtypes.bfloat16)  # round to nearest even
    assert after[key][2] == want.tobytes(), key


@pytest.mark.parametrize("config,dtype", [(CF.BV_PG1, "float32"), (CF.BV_PG2, "bfloat16")],
                         ids=["pg1-f32", "pg2-void_bf16"])
def test_npz_orbax_npz_is_bit_identical(tmp_path, config, dtype):
  src = CF.write_big_vision_npz(str(tmp_path / "in.npz"), config, dtype)
  run(src, tmp_path / "orbax")
  run(tmp_path / "orbax", tmp_path / "out.npz")
  before, after = CF.npz_arrays(src), CF.npz_arrays(str(tmp_path / "out.npz"))
  assert before.keys() == after.keys()
  for key in before:
    assert before[key].dtype == after[key].dtype, key  # |V2 stays |V2
    assert before[key].shape == after[key].shape and before[key].tobytes() == after[key].tobytes()
  if dtype == "bfloat16":
    assert {a.dtype.str for a in after.values()} == {"|V2"}


def test_npz_orbax_hf_orbax_adds_only_the_padding_rows(tmp_path):
  src = CF.write_big_vision_npz(str(tmp_path / "in.npz"), CF.BV_PG2, "bfloat16")
  run(src, tmp_path / "orbax")
  run(tmp_path / "orbax", tmp_path / "hf")
  hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
  assert hf_config["vocab_size"] == hf_config["text_config"]["vocab_size"] == 320  # 256 + 64
  assert hf_config["image_token_index"] == CF.BV_VOCAB
  run(tmp_path / "hf", tmp_path / "orbax2")
  first, second = checkpoints.leaf_specs(tmp_path / "orbax"), checkpoints.leaf_specs(
      tmp_path / "orbax2")
  assert first.keys() == second.keys()
  a = checkpoints.read_leaves(tmp_path / "orbax", list(first))
  b = checkpoints.read_leaves(tmp_path / "orbax2", list(first))
  for key in first:
    if key == "params/llm/embedding":
      assert b[key].shape == (320, a[key].shape[1]) and b[key].dtype == a[key].dtype
      np.testing.assert_array_equal(b[key][:CF.BV_VOCAB].view(np.uint16),
                                    a[key].view(np.uint16))
      mean = a[key].astype(np.float64).mean(0).astype(a[key].dtype)
      np.testing.assert_array_equal(b[key][CF.BV_VOCAB:].view(np.uint16),
                                    np.broadcast_to(mean, (64, mean.size)).view(np.uint16))
    else:
      assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), key


def test_hf_npz_hf_and_npz_hf_npz_without_orbax(tmp_path):
  """Direct HF <-> npz: bit-exact except HF's rows past the image token (checkpoints.md §5)."""
  src = CF.hf_folder(str(tmp_path / "hf"), O.PG2_28B_HEADS, dtype="bfloat16")
  run(src, tmp_path / "bv.npz")
  hf = json.loads((tmp_path / "hf" / "config.json").read_text())
  run(tmp_path / "bv.npz", tmp_path / "hf2", dst_format="hf",
      variant=checkpoints_free_config(src))
  before, after = CF.hf_tensor_bytes(src), CF.hf_tensor_bytes(str(tmp_path / "hf2"))
  assert before.keys() == after.keys()
  for key in before:
    if key == EMBED:
      row_bytes = len(before[key][2]) // before[key][1][0]
      kept = hf["image_token_index"] * row_bytes
      assert before[key][:2] == after[key][:2] and before[key][2][:kept] == after[key][2][:kept]
    else:
      assert before[key] == after[key], key
  # npz -> HF -> npz
  run(tmp_path / "hf2", tmp_path / "bv2.npz")
  one, two = CF.npz_arrays(str(tmp_path / "bv.npz")), CF.npz_arrays(str(tmp_path / "bv2.npz"))
  assert one.keys() == two.keys()
  assert all(one[k].dtype == two[k].dtype and one[k].tobytes() == two[k].tobytes() for k in one)


def checkpoints_free_config(hf_dir):
  """The HF folder's config, read by our HF source (the npz needs it: 28B-style heads)."""
  from paligemma_jax.conversion import HFSource
  with HFSource(hf_dir) as source:
    return source.config
