"""Training batches as global jax.Arrays on 8 simulated CPU devices (conftest sets the flag), and
across two real JAX processes."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from input_fixtures import PipeCaps, build
from paligemma_jax import sharding
from paligemma_jax.data.input_config import InputConfig, MemberConfig
from paligemma_jax.data.input_pipeline import TrainInput
from paligemma_jax.data.processor import Processor
from paligemma_jax.data.tokenizer import Tokenizer
from paligemma_jax.device_input import device_input, global_batch


@pytest.fixture(scope="module")
def input_config(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tfds_device")
  build(PipeCaps, folder)
  return InputConfig(members=(MemberConfig(name="pipe_caps", data_dir=str(folder),
                                           task_options={"id_key": "image/id"}),),
                     batch_size=8, text_len=12, read_threads=2)


def test_batches_are_global_arrays_split_over_data_and_fsdp(input_config, standin_tokenizer):
  assert jax.device_count() == 8
  processor = Processor(standin_tokenizer, 8, 4)
  mesh = sharding.make_mesh(data=4, fsdp=2)
  batches = device_input(input_config, processor, mesh)
  host = TrainInput(input_config, processor)  # the same stream, kept on the host
  for _ in range(2):
    batch, want = next(batches), next(host)
    assert set(batch) == set(want)
    for name, array in batch.items():
      assert isinstance(array, jax.Array) and array.shape == want[name].shape
      assert array.sharding.spec == PartitionSpec(("data", "fsdp"), *[None] * (array.ndim - 1))
      np.testing.assert_array_equal(np.asarray(array), want[name])
      for shard in array.addressable_shards:  # each device holds one row of the 8
        assert shard.data.shape[0] == 1
        np.testing.assert_array_equal(np.asarray(shard.data), want[name][shard.index])
  state = batches.get_state()
  assert state == host.get_state()


def test_device_batches_survive_the_hosts_reuse_of_batch_arrays(input_config, standin_tokenizer):
  # The host reuses a batch's arrays once nothing refers to them; device arrays made from them
  # (CPU arrays may alias host memory) must keep their values.
  processor = Processor(standin_tokenizer, 8, 4)
  mesh = sharding.make_mesh(data=8)
  batches = device_input(input_config, processor, mesh)
  first = next(batches)
  want = {name: np.asarray(array).copy() for name, array in first.items()}
  for _ in range(5):
    next(batches)
  for name, array in first.items():
    np.testing.assert_array_equal(np.asarray(array), want[name], err_msg=name)


def test_a_batch_that_does_not_split_over_the_mesh_is_a_one_line_error():
  mesh = sharding.make_mesh(data=8)
  with pytest.raises(ValueError, match="global batch of 6 rows does not divide by the mesh's "
                                       "data x fsdp = 8; set input.batch_size to a multiple of 8"):
    global_batch({"tokens": np.zeros((6, 3), np.int32)}, mesh)


# --- two real JAX processes (jax.distributed on 127.0.0.1), 4 CPU devices each -----------------

WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax, numpy as np
process, port, data_dir, tokenizer, out = sys.argv[1:]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process))
from jax.experimental import multihost_utils
from paligemma_jax import sharding
from paligemma_jax.data.input_config import InputConfig, MemberConfig
from paligemma_jax.data.processor import Processor
from paligemma_jax.data.tokenizer import Tokenizer
from paligemma_jax.device_input import device_input
config = InputConfig(members=(MemberConfig(name="pipe_caps", data_dir=data_dir,
                                           task_options={"id_key": "image/id"}),),
                     batch_size=8, text_len=12, read_threads=2)
batches = device_input(config, Processor(Tokenizer(tokenizer), 8, 4), sharding.make_mesh(data=4, fsdp=2))
tokens = [next(batches)["tokens"] for _ in range(2)]
assert tokens[0].shape == (8, 16) and len(tokens[0].addressable_shards) == 4
gathered = [multihost_utils.process_allgather(t, tiled=True) for t in tokens]
np.save(out, np.stack(gathered))
"""


@pytest.mark.slow  # ~17 s: two fresh Python processes import jax + tensorflow_datasets
def test_two_processes_make_one_global_batch_from_their_own_rows(input_config,
                                                                 standin_tokenizer_path, tmp_path):
  import socket
  import subprocess
  import sys
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  data_dir = input_config.members[0].data_dir
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(p), str(port), data_dir,
                             str(standin_tokenizer_path), str(tmp_path / f"p{p}.npy")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for p in range(2)]
  for proc in procs:
    output = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, output[-3000:]
  got = [np.load(tmp_path / f"p{p}.npy") for p in range(2)]
  np.testing.assert_array_equal(got[0], got[1])  # both processes see the same global array
  processor = Processor(Tokenizer(standin_tokenizer_path), 8, 4)
  hosts = [TrainInput(input_config, processor, process_index=p, process_count=2) for p in range(2)]
  for step in range(2):
    want = np.concatenate([next(h)["tokens"] for h in hosts])  # process 0's rows, then 1's
    np.testing.assert_array_equal(got[0][step], want)
