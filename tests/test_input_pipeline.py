"""The Grain training input over TFDS array_record splits: processor parity, per-process shards,
fresh permutations per epoch, exact resume, truncation counts, start-up errors, conversion."""

from __future__ import annotations

import dataclasses
import io
import json
import weakref

import numpy as np
import PIL.Image
import pytest

from input_fixtures import (CAPS_SIZES, GREEN, PipeCaps, PipeVqa, build, caps_captions, example_of,
                            png)
from paligemma_jax.data.input_config import InputConfig, MemberConfig, input_config_from_dict
from paligemma_jax.data.input_pipeline import TrainInput
from paligemma_jax.data.processor import Processor
from paligemma_jax.data.to_array_record import main as to_array_record

IMAGE_SIZE, IMAGE_TOKENS, TEXT_LEN = 8, 4, 16


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tfds")
  build(PipeCaps, folder)
  build(PipeVqa, folder)
  return folder


@pytest.fixture(scope="session")
def processor(standin_tokenizer):
  return Processor(standin_tokenizer, IMAGE_SIZE, IMAGE_TOKENS)


def caps(data_dir, **kw) -> MemberConfig:
  return MemberConfig(name="pipe_caps", data_dir=str(data_dir),
                      task_options={"id_key": "image/id"}, **kw)


def config(data_dir, batch_size=4, **kw) -> InputConfig:
  return InputConfig(members=(caps(data_dir),), batch_size=batch_size, text_len=TEXT_LEN,
                     read_threads=2, prefetch_buffer=4, **kw)


def decoded(index: int, green: int = GREEN["pipe_caps"]) -> np.ndarray:
  return np.asarray(PIL.Image.open(io.BytesIO(png(index, green))).convert("RGB"))


def take(it, n):
  return [next(it) for _ in range(n)]


def rows_of(batches):
  return [example_of(images) for b in batches for images in b["images"]]


def test_rows_equal_the_processors_for_prompt_and_a_reference(data_dir, processor):
  batch = next(TrainInput(config(data_dir), processor))
  max_length = IMAGE_TOKENS + TEXT_LEN
  for r in range(4):
    green, index = example_of(batch["images"][r])
    assert green == GREEN["pipe_caps"]
    matches = []
    for caption in caps_captions(index):
      want = processor([decoded(index)], ["caption en"], [caption], padding_side="right",
                       max_length=max_length)
      if np.array_equal(want["labels"][0], batch["labels"][r]):
        matches.append(caption)
        for key in ("tokens", "input_mask", "token_type_ids", "mask_ar", "mask_loss"):
          np.testing.assert_array_equal(batch[key][r], want[key][0], err_msg=key)
    assert len(matches) == 1, (index, matches)
  assert batch["tokens"].shape == (4, max_length) and batch["tokens"].dtype == np.int32
  assert batch["images"].shape == (4, 1, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert set(batch) == {"images", "tokens", "input_mask", "token_type_ids", "mask_ar",
                        "mask_loss", "labels"}


def test_pixels_equal_the_processors(data_dir, processor):
  batch = next(TrainInput(config(data_dir), processor))
  _, index = example_of(batch["images"][0])
  want = processor([decoded(index)], ["caption en"], ["x"])["images"][0]
  np.testing.assert_array_equal(batch["images"][0], want)


def test_each_epoch_is_a_fresh_permutation_and_draws_references_afresh(data_dir, processor):
  n = CAPS_SIZES["train"]
  batches = take(TrainInput(config(data_dir, batch_size=6), processor), 3 * n // 6)
  order = [i for _, i in rows_of(batches)]
  epochs = [order[k * n:(k + 1) * n] for k in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(n))
  assert len({tuple(epoch) for epoch in epochs}) == 3  # a fresh permutation each epoch
  # big_vision's choice op: each epoch draws one caption per example, afresh
  suffixes: dict[int, set[bytes]] = {}
  for b in batches:
    for r in range(6):
      suffixes.setdefault(example_of(b["images"][r])[1], set()).add(b["labels"][r].tobytes())
  assert len(suffixes) == n
  assert sum(len(s) > 1 for s in suffixes.values()) >= n // 2  # 3 draws of 2: 75% differ


def test_same_seed_same_batches_other_seed_other_order(data_dir, processor):
  a = rows_of(take(TrainInput(config(data_dir), processor), 3))
  b = rows_of(take(TrainInput(config(data_dir), processor), 3))
  c = rows_of(take(TrainInput(config(data_dir, seed=7), processor), 3))
  assert a == b and a != c


def test_restored_iterator_continues_exactly_across_an_epoch_boundary(data_dir, processor):
  cfg = config(data_dir, batch_size=5)  # 24 examples: the epoch ends inside batch 5
  straight = TrainInput(cfg, processor)
  take(straight, 3)
  state = json.loads(json.dumps(straight.get_state()))  # stored as JSON in a checkpoint
  expected = take(straight, 4)
  resumed = TrainInput(cfg, processor)
  resumed.set_state(state)
  got = take(resumed, 4)
  for want, have in zip(expected, got):
    for key in want:
      np.testing.assert_array_equal(have[key], want[key], err_msg=key)
  assert resumed.get_state() == straight.get_state()
  assert sum(resumed.stats()[k] for k in resumed.stats() if k.startswith("input/drawn")) == 35


def test_two_processes_read_disjoint_shares_that_cover_the_split(data_dir, processor):
  n = CAPS_SIZES["train"]
  seen = []
  for p in range(2):
    it = TrainInput(config(data_dir, batch_size=4), processor, process_index=p, process_count=2)
    assert it.local_batch_size == 2
    seen.append([i for _, i in rows_of(take(it, n // 2 // 2))])
  assert set(seen[0]).isdisjoint(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(n))


def test_long_rows_are_cut_at_text_len_and_counted(data_dir, processor):
  it = TrainInput(config(data_dir, batch_size=6), processor)
  batches = take(it, 4 * CAPS_SIZES["train"] // 6)
  long = [(b, r) for b in batches for r in range(6)
          if example_of(b["images"][r])[1] == 5 and b["labels"][r][-1] != -100]
  assert long, "example 5's long caption was never drawn in four epochs"
  assert it.stats()["input/truncated"] == len(long)
  b, r = long[0]
  want = processor([decoded(5)], ["caption en"], [caps_captions(5)[2]],
                   padding_side="right", max_length=IMAGE_TOKENS + TEXT_LEN)
  np.testing.assert_array_equal(b["tokens"][r], want["tokens"][0])
  assert processor.tokenizer.eos_id not in b["tokens"][r]  # cut rows lose eos, as big_vision
  assert "rows cut at text_len=16" in it.summary()


def test_a_tfrecord_split_fails_at_start_naming_the_conversion_command(tmp_path, processor):
  build(PipeCaps, tmp_path, file_format="tfrecord")
  with pytest.raises(ValueError, match="python -m paligemma_jax.data.to_array_record "
                                       f"--dataset pipe_caps --data_dir {tmp_path}"):
    TrainInput(config(tmp_path), processor)
  assert to_array_record(["--dataset", "pipe_caps", "--data_dir", str(tmp_path)]) == 0
  batch = next(TrainInput(config(tmp_path), processor))
  assert example_of(batch["images"][0])[0] == GREEN["pipe_caps"]
  # tf.data still reads the tfrecord shards
  import tensorflow_datasets as tfds
  assert len(list(tfds.load("pipe_caps", split="val", data_dir=str(tmp_path)))) == 6


@pytest.mark.parametrize("change, message", [
    ({"name": "pipe_capz"}, r"'pipe_capz' not found .* holds pipe_caps, pipe_vqa"),
    ({"split": "test"}, r"bad split 'test' .* its splits are train, val"),
    ({"config": "big"}, r"no built config 'big'"),
    ({"task_options": {"id_key": "nope"}}, r"reads field 'nope' .* has only captions"),
    ({"task": "caption_x"}, r"unknown task 'caption_x'; use one of caption, "),
])
def test_configuration_errors_stop_at_start_with_one_line(data_dir, processor, change, message):
  member = dataclasses.replace(caps(data_dir), **change)
  with pytest.raises(ValueError, match=message) as e:
    TrainInput(dataclasses.replace(config(data_dir), members=(member,)), processor)
  assert "\n" not in str(e.value)


def test_config_from_dict_rejects_unknown_keys_naming_the_valid_ones(data_dir):
  good = {"members": [{"name": "pipe_caps", "data_dir": str(data_dir), "weight": 2}],
          "batch_size": 8, "text_len": 32}
  cfg = input_config_from_dict(good)
  assert cfg.members[0].weight == 2.0 and cfg.batch_size == 8
  with pytest.raises(ValueError,
                     match=r"unknown config key input.batchsize; valid keys in input: .*batch_size"):
    input_config_from_dict({**good, "batchsize": 8})
  with pytest.raises(ValueError, match=r"unknown config key input.members\[0\].wieght; valid keys"):
    input_config_from_dict({**good, "members": [{"name": "pipe_caps", "wieght": 1}]})
  with pytest.raises(ValueError, match="exactly one of name"):
    input_config_from_dict({**good, "members": [{}]})
  with pytest.raises(ValueError, match="batch_size 6 does not divide by the 4 processes"):
    TrainInput(dataclasses.replace(cfg, batch_size=6), None, process_index=0, process_count=4)


def test_worker_processes_need_parsed_absl_flags(data_dir, processor):
  from absl import flags
  if flags.FLAGS.is_parsed():
    pytest.skip("absl flags already parsed in this process")
  with pytest.raises(ValueError, match="input.worker_processes > 0 needs absl flags parsed"):
    TrainInput(config(data_dir, worker_processes=2), processor)


def test_read_threads_default_to_this_processes_cpus(data_dir, processor, monkeypatch):
  import os
  from paligemma_jax.data.input_config import default_read_threads
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(40)))
  assert default_read_threads() == 16  # Grain's own default caps it
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
  assert default_read_threads() == 2
  assert InputConfig(members=(caps(data_dir),), batch_size=4, text_len=TEXT_LEN).read_threads == 0
  auto = next(TrainInput(dataclasses.replace(config(data_dir), read_threads=0), processor))
  fixed = next(TrainInput(config(data_dir), processor))  # 2 threads: the same batches
  for key in fixed:
    np.testing.assert_array_equal(auto[key], fixed[key], err_msg=key)
  with pytest.raises(ValueError, match=r"input.read_threads must be an int >= 0, got -1"):
    dataclasses.replace(config(data_dir), read_threads=-1)


def test_worker_processes_give_the_threads_batches(data_dir, processor):
  # Their batches cross processes with uint8 images, normalised in this process.
  from absl import flags
  was_parsed = flags.FLAGS.is_parsed()
  flags.FLAGS.mark_as_parsed()
  try:
    workers = TrainInput(config(data_dir, worker_processes=1), processor)
    got = take(workers, 2)
  finally:
    if not was_parsed:
      flags.FLAGS.unparse_flags()
  want = take(TrainInput(config(data_dir), processor), 2)
  for g, w in zip(got, want):
    assert g["images"].dtype == np.float32
    for key in w:
      np.testing.assert_array_equal(g[key], w[key], err_msg=key)


def test_a_batch_the_caller_still_holds_is_never_overwritten(data_dir, processor):
  # Batch arrays are reused once nothing refers to them; a held batch, or a view of one, is safe.
  it = TrainInput(config(data_dir), processor)
  held = next(it)
  want = {key: value.copy() for key, value in held.items()}
  view = next(it)["images"][1:3]  # keeps its whole batch alive
  view_want = view.copy()
  dropped = [weakref.ref(next(it)["images"]) for _ in range(6)]  # dropped at once
  assert all(ref() is not None for ref in dropped)  # kept by the pool ...
  assert len({id(ref()) for ref in dropped}) <= 3  # ... and handed out again
  for key in want:
    np.testing.assert_array_equal(held[key], want[key], err_msg=key)
  np.testing.assert_array_equal(view, view_want)


def test_batch_arrays_and_image_buffers_hand_out_only_what_is_free():
  from paligemma_jax.data.input_pipeline import BatchArrays, ImageBuffers
  pool = BatchArrays(keep=2)
  a = pool.empty((2, 3))
  b = pool.empty((2, 3))
  assert b is not a and a.dtype == np.float32
  first = id(a)
  del a
  assert id(pool.empty((2, 3))) == first  # only the pool referred to it
  assert pool.empty((4, 3)).shape == (4, 3)
  buffers = ImageBuffers(limit=1)
  x = buffers.take((1, 2, 2, 3))
  assert x.dtype == np.uint8 and buffers.take((1, 2, 2, 3)) is not x
  buffers.give(x)
  buffers.give(np.empty((1, 2, 2, 3), np.uint8))  # over the limit: dropped
  assert buffers.take((1, 2, 2, 3)) is x
