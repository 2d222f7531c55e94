"""Training batches as global jax.Arrays on 8 simulated CPU devices (conftest sets the flag)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from input_fixtures import PipeCaps, build
from paligemma_jax import sharding
from paligemma_jax.data.input_config import InputConfig, MemberConfig
from paligemma_jax.data.input_pipeline import TrainInput
from paligemma_jax.data.processor import Processor
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


def test_a_batch_that_does_not_split_over_the_mesh_is_a_one_line_error():
  mesh = sharding.make_mesh(data=8)
  with pytest.raises(ValueError, match="global batch of 6 rows does not divide by the mesh's "
                                       "data x fsdp = 8; set input.batch_size to a multiple of 8"):
    global_batch({"tokens": np.zeros((6, 3), np.int32)}, mesh)
