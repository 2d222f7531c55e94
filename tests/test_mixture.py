"""Weighted mixtures: proportions, determinism per seed, counts per member, errors."""

from __future__ import annotations

import io
import pickle

import numpy as np
import grain
import PIL.Image
import pytest

from input_fixtures import GREEN, PipeCaps, PipeVqa, build, example_of, png
from paligemma_jax.data.input_config import InputConfig, MemberConfig
from paligemma_jax.data.input_pipeline import TrainInput
from paligemma_jax.data.mixture import MixtureMap, block_counts, mixed_stream, normalise_weights
from paligemma_jax.data.processor import Processor

TEXT_LEN = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tfds_mix")
  build(PipeCaps, folder)
  build(PipeVqa, folder)
  return folder


@pytest.fixture(scope="module")
def processor(standin_tokenizer):
  return Processor(standin_tokenizer, 8, 4)


def mixture(data_dir, caps_weight=3.0, vqa_weight=1.0, **kw) -> InputConfig:
  return InputConfig(members=(
      MemberConfig(name="pipe_caps", data_dir=str(data_dir), weight=caps_weight,
                   task_options={"id_key": "image/id"}),
      MemberConfig(name="pipe_vqa", data_dir=str(data_dir), task="vqa", weight=vqa_weight)),
      batch_size=8, text_len=TEXT_LEN, read_threads=2, prefetch_buffer=8, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_member_counts_are_within_binomial_tolerance(seed):
  weights = normalise_weights([7, 2, 1], ["a", "b", "c"])
  selection = MixtureMap(weights, seed, block=1 << 16)
  draws = 3000
  members = np.array([selection[i][0] for i in range(draws)])
  counts = np.bincount(members, minlength=3)
  for count, w in zip(counts, weights):
    assert abs(count - draws * w) < 4 * np.sqrt(draws * w * (1 - w)), (counts, weights)
  np.testing.assert_array_equal(selection.drawn_before(draws), counts)


def test_blocks_hold_exact_proportions_and_positions_count_up_per_member():
  selection = MixtureMap([0.5, 0.3, 0.2], seed=0, block=10)
  assert block_counts([0.5, 0.3, 0.2], 10).tolist() == [5, 3, 2]
  picks = [selection[i] for i in range(40)]
  for block in range(4):
    members = [m for m, _ in picks[block * 10:(block + 1) * 10]]
    assert np.bincount(members).tolist() == [5, 3, 2]
  assert [m for m, _ in picks[:10]] != [m for m, _ in picks[10:20]]  # a fresh order per block
  for m in range(3):  # each member's positions are 0, 1, 2, ... in order of the steps
    assert [p for mm, p in picks if mm == m] == list(range(sum(1 for mm, _ in picks if mm == m)))


def test_mixing_is_deterministic_for_a_seed():
  a, _ = mixed_stream([10, 5], [0.6, 0.4], seed=3, shuffle=True, process_index=0,
                      process_count=1, block=64)
  b, _ = mixed_stream([10, 5], [0.6, 0.4], seed=3, shuffle=True, process_index=0,
                      process_count=1, block=64)
  c, _ = mixed_stream([10, 5], [0.6, 0.4], seed=4, shuffle=True, process_index=0,
                      process_count=1, block=64)
  assert [a[i] for i in range(100)] == [b[i] for i in range(100)] != [c[i] for i in range(100)]


def test_a_mixed_batch_has_both_members_rows_as_the_processor_makes_them(data_dir, processor):
  it = TrainInput(mixture(data_dir), processor)
  assert it.examples_per_epoch == 24 + 10
  assert it.weights == (0.75, 0.25)
  rows = []
  for _ in range(10):
    batch = next(it)
    for r in range(8):
      green, index = example_of(batch["images"][r])
      rows.append(green)
      if green == GREEN["pipe_vqa"]:
        image = np.asarray(PIL.Image.open(io.BytesIO(png(index, green))).convert("RGB"))
        options = [processor([image], [f"answer en what is {index}?"], [answer],
                             padding_side="right", max_length=4 + TEXT_LEN)
                   for answer in (f"ans {index}", f"other {index}")]
        assert any(np.array_equal(o["tokens"][0], batch["tokens"][r]) and
                   np.array_equal(o["mask_loss"][0], batch["mask_loss"][r]) for o in options)
  stats = it.stats()
  assert stats["input/drawn/pipe_caps:train"] == rows.count(GREEN["pipe_caps"])
  assert stats["input/drawn/pipe_vqa:train"] == rows.count(GREEN["pipe_vqa"])
  assert stats["input/drawn/pipe_caps:train"] + stats["input/drawn/pipe_vqa:train"] == 80
  assert abs(stats["input/drawn/pipe_vqa:train"] - 20) < 4 * np.sqrt(80 * 0.25 * 0.75)


def test_member_counts_survive_a_restore(data_dir, processor):
  it = TrainInput(mixture(data_dir), processor)
  [next(it) for _ in range(3)]
  state = it.get_state()
  resumed = TrainInput(mixture(data_dir), processor)
  resumed.set_state(state)
  assert resumed.stats() == it.stats()
  a, b = next(it), next(resumed)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert resumed.stats() == it.stats()


@pytest.mark.parametrize("weight", [0, -1.0, float("nan")])
def test_a_weight_of_zero_or_less_is_an_error(data_dir, processor, weight):
  with pytest.raises(ValueError, match=r"pipe_vqa:train has weight .*; weights must be > 0"):
    TrainInput(mixture(data_dir, vqa_weight=weight), processor)


def test_a_member_smaller_than_the_process_count_is_an_error():
  with pytest.raises(ValueError, match="member 1 has 2 examples, fewer than the 4 processes"):
    mixed_stream([10, 2], [0.5, 0.5], 0, True, 0, 4, 64)


def test_steps_looked_up_from_many_threads_match_a_sequential_walk():
  from concurrent.futures import ThreadPoolExecutor
  steps = np.random.default_rng(0).permutation(2000)
  sequential = [MixtureMap([0.6, 0.3, 0.1], 5, block=64)[int(i)] for i in steps]
  shared = MixtureMap([0.6, 0.3, 0.1], 5, block=64)  # one cache, crossed by every thread
  with ThreadPoolExecutor(8) as pool:
    assert list(pool.map(lambda i: shared[int(i)], steps)) == sequential


@pytest.mark.parametrize("size,process_index,process_count", [(1, 0, 1), (10, 0, 1),
                                                              (300, 1, 3), (140000, 1, 2)])
def test_member_streams_read_a_fresh_permutation_of_their_share_each_epoch(
    size, process_index, process_count):
  # Shares up to 2**16 go through EpochShuffle, the 70,000-example share through Grain's shuffle.
  from paligemma_jax.data.mixture import member_stream
  share = list(range(size))[process_index::process_count]
  n = len(share)
  stream = member_stream(size, 1, 4, True, process_index, process_count)
  again = member_stream(size, 1, 4, True, process_index, process_count)
  positions = range(n) if n < 1000 else range(0, n, 97)
  epochs = []
  for epoch in range(3):
    elements = [stream[epoch * n + i] for i in range(n)] if n < 1000 else None
    if elements is not None:
      assert {e[0] for e in elements} == {1} and {e[2] for e in elements} == {epoch}
      assert sorted(e[1] for e in elements) == share  # each epoch: every example, once
    epochs.append([stream[epoch * n + i][1] for i in positions])
    assert epochs[-1] == [again[epoch * n + i][1] for i in positions]  # a pure function of seed
  if n > 2:
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[0] != sorted(epochs[0])
  other = member_stream(size, 1, 5, True, process_index, process_count)
  if n > 2:
    assert [other[i][1] for i in positions] != epochs[0]  # another seed, another order


def test_epoch_shuffle_from_many_threads_or_pickled_matches_a_sequential_walk():
  from concurrent.futures import ThreadPoolExecutor
  from paligemma_jax.data.mixture import EpochShuffle
  steps = np.random.default_rng(1).permutation(5 * 37)
  sequential = [EpochShuffle(grain.MapDataset.range(37), 3)[int(i)] for i in steps]
  shared = EpochShuffle(grain.MapDataset.range(37), 3)
  with ThreadPoolExecutor(8) as pool:
    assert list(pool.map(lambda i: shared[int(i)], steps)) == sequential
  copy = pickle.loads(pickle.dumps(shared))  # as worker processes get it
  assert [copy[int(i)] for i in steps] == sequential
