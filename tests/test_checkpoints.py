"""Orbax params checkpoints (atomic, streamed, config inside, any mesh) and the trainer's manager."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_fixtures import PG1, PG2, random_params
from paligemma_jax import checkpoints as C
from paligemma_jax import sharding as S


def _leaves(tree) -> dict:
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_identical(a, b) -> None:
  a, b = _leaves(a), _leaves(b)
  assert a.keys() == b.keys()
  for key in a:
    assert a[key].dtype == b[key].dtype, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("config", [PG1, PG2.replace(param_dtype="bfloat16")], ids=["pg1_f32", "pg2_bf16"])
def test_params_round_trip_is_bit_identical_and_carries_config(tmp_path, config):
  params = jax.tree.map(lambda x: np.asarray(x, config.params_dtype), random_params(config))
  C.save_params(tmp_path / "ckpt", config, params)
  assert C.read_config(tmp_path / "ckpt") == config
  loaded_config, loaded = C.load_params(tmp_path / "ckpt")
  assert loaded_config == config
  _assert_identical(params, loaded)


def test_dtype_cast_on_restore(tmp_path):
  params = random_params(PG2)
  C.save_params(tmp_path / "ckpt", PG2, params)
  config, loaded = C.load_params(tmp_path / "ckpt", dtype="bfloat16")
  assert config.param_dtype == "bfloat16"
  for want, got in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want).astype(jnp.bfloat16))


def test_streamed_writer_equals_whole_save_and_reads_single_leaves(tmp_path):
  params = random_params(PG2)
  flat = C._flat(params)
  with C.ParamsWriter(tmp_path / "streamed", PG2) as writer:
    for name, value in flat.items():  # one leaf per partial save
      writer.write({name: value})
  _, loaded = C.load_params(tmp_path / "streamed")
  _assert_identical(params, loaded)
  specs = C.leaf_specs(tmp_path / "streamed")
  assert specs.keys() == flat.keys()
  assert specs["params/llm/embedding"].shape == flat["params/llm/embedding"].shape
  one = C.read_leaves(tmp_path / "streamed", ["params/llm/layers/attn/q/w"])
  assert list(one) == ["params/llm/layers/attn/q/w"]
  assert isinstance(one["params/llm/layers/attn/q/w"], np.ndarray)
  np.testing.assert_array_equal(one["params/llm/layers/attn/q/w"], flat["params/llm/layers/attn/q/w"])
  with pytest.raises(C.CheckpointError, match="no leaf params/nope"):
    C.read_leaves(tmp_path / "streamed", ["params/nope"])


def test_layer_streamed_leaves_are_plain_orbax_leaves_chunked_by_layer(tmp_path):
  """`write_layers` pulls layers one at a time; the leaf restores like any other (onto a mesh
  too) and one layer reads alone. A wrong layer fails the write and leaves nothing behind."""
  params = jax.tree.map(np.asarray, random_params(PG2))
  flat = C._flat(params)
  with C.ParamsWriter(tmp_path / "ckpt", PG2) as writer:
    for name, value in flat.items():
      if "/layers/" in name:
        writer.write_layers(name, value.shape, value.dtype, value.__getitem__)
      else:
        writer.write({name: value})
  mesh = S.make_mesh(data=2, fsdp=2, model=2)
  _, loaded = C.load_params(tmp_path / "ckpt", shardings=S.param_shardings(PG2, mesh))
  _assert_identical(params, loaded)
  q = C.open_leaf(tmp_path / "ckpt", "params/llm/layers/attn/q/w")
  assert q.chunk_layout.read_chunk.shape[0] == 1
  np.testing.assert_array_equal(q[1].read().result(), flat["params/llm/layers/attn/q/w"][1])
  with pytest.raises(C.CheckpointError, match="no leaf params/nope"):
    C.open_leaf(tmp_path / "ckpt", "params/nope")
  w = flat["params/llm/layers/attn/q/w"]
  with pytest.raises(C.CheckpointError, match="layer 1 of params/x is"):
    with C.ParamsWriter(tmp_path / "bad", PG2) as writer:
      writer.write_layers("params/x", w.shape, w.dtype, lambda i: w[i] if i == 0 else w[i, :1])
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_any_tree_round_trips_without_a_config(tmp_path):
  tree = {"decoder": {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
          "codebook": np.ones((4, 2), np.float32)}
  C.save_tree(tmp_path / "vq", tree)
  _assert_identical(tree, C.load_tree(tmp_path / "vq"))
  with pytest.raises(C.CheckpointError, match="no PaliGemma config"):
    C.read_config(tmp_path / "vq")


def test_failed_write_leaves_nothing_behind(tmp_path):
  flat = C._flat(random_params(PG2))
  with pytest.raises(RuntimeError, match="disk on fire"):
    with C.ParamsWriter(tmp_path / "ckpt", PG2) as writer:
      writer.write(dict(list(flat.items())[:3]))
      raise RuntimeError("disk on fire")
  assert os.listdir(tmp_path) == []
  with pytest.raises(C.CheckpointError, match="already written"):
    with C.ParamsWriter(tmp_path / "twice", PG2) as writer:
      writer.write({"params/x": np.ones(2)})
      writer.write({"params/x": np.ones(2)})
  assert os.listdir(tmp_path) == []


def test_existing_destination_needs_overwrite(tmp_path):
  params = random_params(PG2)
  C.save_params(tmp_path / "ckpt", PG2, params)
  other = jax.tree.map(lambda x: np.asarray(x) + 1, params)
  with pytest.raises(C.CheckpointExistsError, match="overwrite"):
    C.save_params(tmp_path / "ckpt", PG2, other)
  _assert_identical(params, C.load_params(tmp_path / "ckpt")[1])  # untouched
  C.save_params(tmp_path / "ckpt", PG2, other, overwrite=True)
  _assert_identical(other, C.load_params(tmp_path / "ckpt")[1])
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_unreadable_checkpoints_get_one_line_errors(tmp_path):
  with pytest.raises(C.CheckpointError, match="does not exist"):
    C.load_params(tmp_path / "missing")
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "model.safetensors").write_bytes(b"x")
  with pytest.raises(C.CheckpointError, match="not a finished Orbax checkpoint"):
    C.read_config(tmp_path / "junk")


def test_sharded_save_restores_onto_other_meshes(tmp_path):
  assert jax.device_count() == 8, "conftest sets 8 simulated CPU devices"
  params = random_params(PG2)
  mesh8 = S.make_mesh(data=2, fsdp=2, model=2)
  sharded = jax.device_put(params, S.param_shardings(PG2, mesh8))
  q = sharded["params"]["llm"]["layers"]["attn"]["q"]["w"]
  assert len(q.sharding.device_set) == 8 and q.addressable_shards[0].data.shape != q.shape
  C.save_params(tmp_path / "ckpt", PG2, sharded)

  for mesh in (S.make_mesh(fsdp=4, devices=jax.devices()[:4]), S.make_mesh(devices=jax.devices()[:1])):
    config, restored = C.load_params(tmp_path / "ckpt", shardings=S.param_shardings(PG2, mesh))
    got = restored["params"]["llm"]["layers"]["mlp"]["gate"]["w"]
    assert got.sharding.mesh.shape == mesh.shape
    _assert_identical(params, restored)


# -- trainer state -----------------------------------------------------------------------------

def _state(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {"params": {"w": rng.standard_normal((8, 4)).astype(np.float32)},
          "opt": {"mu": rng.standard_normal((8, 4)).astype(np.float32)},
          "step": np.int32(seed), "rng": np.asarray(jax.random.key_data(jax.random.key(seed)))}


def _abstract(state, sharding=None):
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                     sharding=sharding), state)


def test_train_checkpointer_keeps_last_n_and_restores(tmp_path):
  with C.TrainCheckpointer(tmp_path, keep=2) as ckpt:
    for step in range(1, 6):
      assert ckpt.save(step, _state(step), {"examples_seen": 10 * step})
    ckpt.wait()
    assert ckpt.all_steps() == [4, 5]
    assert not ckpt.save(5, _state(0))  # existing step, no force
    step, state, extra = ckpt.restore(_abstract(_state(0)))
    assert step == 5 and extra == {"examples_seen": 50}
    _assert_identical(_state(5), state)
    step, state, _ = ckpt.restore(_abstract(_state(0)), step=4)
    _assert_identical(_state(4), state)
    with pytest.raises(C.CheckpointError, match="available: \\[4, 5\\]"):
      ckpt.restore(_abstract(_state(0)), step=1)


def test_train_checkpointer_restores_onto_a_sharded_layout(tmp_path):
  with C.TrainCheckpointer(tmp_path, keep=1) as ckpt:
    ckpt.save(7, _state(7))
  mesh = S.make_mesh(fsdp=4, devices=jax.devices()[:4])
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  target = _abstract(_state(0))
  target["params"]["w"] = jax.ShapeDtypeStruct((8, 4), np.float32, sharding=rows)
  with C.TrainCheckpointer(tmp_path, keep=1) as ckpt:
    _, state, _ = ckpt.restore(target)
  assert state["params"]["w"].sharding == rows
  _assert_identical(_state(7), state)


def test_interrupted_train_save_is_never_restored(tmp_path):
  """A process killed while an async save is being written leaves the previous step latest."""
  script = textwrap.dedent(f"""
      import os, numpy as np
      from paligemma_jax.checkpoints import TrainCheckpointer
      ckpt = TrainCheckpointer({str(tmp_path)!r}, keep=3)
      ckpt.save(1, {{"w": np.ones((4,), np.float32)}})
      ckpt.wait()
      ckpt.save(2, {{"w": np.ones((64, 1024, 1024), np.float32)}})  # 256 MB, async
      os._exit(0)  # dies before the write commits
      """)
  subprocess.run([sys.executable, "-c", script], check=True, timeout=120,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"})
  leftovers = [n for n in os.listdir(tmp_path) if n != "1"]
  assert any(n.startswith("2.") for n in leftovers), leftovers  # step 2 was started, not committed
  with C.TrainCheckpointer(tmp_path, keep=3) as ckpt:
    assert ckpt.latest_step() == 1, (ckpt.all_steps(), leftovers)
    step, state, _ = ckpt.restore({"w": jax.ShapeDtypeStruct((4,), np.float32, sharding=(
        jax.sharding.SingleDeviceSharding(jax.devices()[0])))})
  assert step == 1 and np.array_equal(state["w"], np.ones(4))


def test_public_loader_reads_orbax_checkpoints(tmp_path):
  import paligemma_jax as pg
  params = random_params(PG2)
  C.save_params(tmp_path / "ckpt", PG2, params)
  config, loaded = pg.load_checkpoint(tmp_path / "ckpt")
  assert config == PG2
  _assert_identical(params, loaded)
  config, _ = pg.load_checkpoint(tmp_path / "ckpt", param_dtype="bfloat16",
                                 **{"text.final_logit_softcap": None})
  assert config.param_dtype == "bfloat16" and config.text.final_logit_softcap is None
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    pg.load_checkpoint(tmp_path / "nope")
