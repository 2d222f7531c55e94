"""JSONL members (big_vision's jsonl convention): training rows, several images per row, bad data
counted with a limit, evaluation rows that carry their references, mixing with a TFDS split."""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest

from input_fixtures import GREEN, PipeCaps, build, example_of, png, write_jsonl
from paligemma_jax.data.eval_input import eval_batch, eval_rows, row_groups
from paligemma_jax.data.input_config import InputConfig, MemberConfig
from paligemma_jax.data.input_pipeline import DataLimitError, TrainInput
from paligemma_jax.data.processor import Processor

TEXT_LEN = 16
GOOD = 10


@pytest.fixture(scope="module")
def processor(standin_tokenizer):
  return Processor(standin_tokenizer, 8, 4)


def good_rows() -> tuple[list[dict], dict[str, bytes]]:
  rows = [{"image": f"img/{i}.png", "prefix": "caption en", "suffix": f"a cat {i}"}
          for i in range(GOOD)]
  return rows, {f"img/{i}.png": png(i, GREEN["jsonl"]) for i in range(GOOD)}


@pytest.fixture(scope="module")
def jsonl_dirty(tmp_path_factory):
  """10 good rows and 4 bad ones: missing image, corrupt image, no suffix, not JSON."""
  rows, images = good_rows()
  rows += [{"image": "img/missing.png", "prefix": "caption en", "suffix": "x"},
           {"image": "img/corrupt.png", "prefix": "caption en", "suffix": "x"},
           {"image": "img/0.png", "prefix": "caption en"},
           '{"image": "img/1.png", "prefix": ']
  images["img/corrupt.png"] = b"\x89PNG not really"
  return write_jsonl(tmp_path_factory.mktemp("jsonl"), rows, images)


def config(path, *, max_skipped=100, batch_size=4, **member) -> InputConfig:
  return InputConfig(members=(MemberConfig(jsonl=str(path), **member),), batch_size=batch_size,
                     text_len=TEXT_LEN, max_skipped=max_skipped, read_threads=2,
                     prefetch_buffer=4)


def decoded(index: int) -> np.ndarray:
  return np.asarray(PIL.Image.open(io.BytesIO(png(index, GREEN["jsonl"]))).convert("RGB"))


def test_rows_are_the_processors_and_bad_rows_are_counted_skips(jsonl_dirty, processor):
  it = TrainInput(config(jsonl_dirty, batch_size=5), processor)
  batches = [next(it) for _ in range(4)]  # two epochs of the 10 good rows
  seen = []
  for batch in batches:
    for r in range(5):
      green, index = example_of(batch["images"][r])
      assert green == GREEN["jsonl"]
      seen.append(index)
      want = processor([decoded(index)], ["caption en"], [f"a cat {index}"],
                       padding_side="right", max_length=4 + TEXT_LEN)
      for key in ("tokens", "mask_ar", "mask_loss", "labels", "input_mask", "images"):
        np.testing.assert_array_equal(batch[key][r], want[key][0], err_msg=key)
  assert sorted(seen[:GOOD]) == list(range(GOOD)) == sorted(seen[GOOD:])
  skipped = it.stats()["input/skipped/data.jsonl"]
  assert 4 <= skipped <= 8  # each bad row once per epoch read so far
  summary = it.summary()
  assert f"{int(skipped)} examples skipped for bad data (data.jsonl {int(skipped)})" in summary
  for reason in ("cannot read image", "cannot decode image", "missing field 'suffix'",
                 "is not JSON"):
    assert reason in summary, summary
  assert "\n" not in summary


def test_more_skips_than_the_limit_stop_the_run_with_one_line(jsonl_dirty, processor):
  it = TrainInput(config(jsonl_dirty, max_skipped=2, batch_size=5), processor)
  with pytest.raises(DataLimitError) as e:
    for _ in range(4):
      next(it)
  message = str(e.value)
  assert "\n" not in message and "input.max_skipped" in message
  assert message.startswith("input stopped: ")


def test_a_split_of_only_bad_rows_stops_instead_of_spinning(tmp_path, processor):
  path = write_jsonl(tmp_path, [{"image": f"nope{i}.png", "prefix": "p", "suffix": "s"}
                                for i in range(5)], {})
  with pytest.raises(DataLimitError, match=r"examples in a row were skipped .*cannot read image"):
    next(TrainInput(config(path, max_skipped=7), processor))


def test_rows_with_several_images(tmp_path, processor):
  rows = [{"image": [f"{i}a.png", f"{i}b.png"], "prefix": "compare", "suffix": f"same {i}"}
          for i in range(4)]
  images = {f"{i}{s}.png": png(i, GREEN["jsonl"]) for i in range(4) for s in "ab"}
  path = write_jsonl(tmp_path, rows, images)
  cfg = InputConfig(members=(MemberConfig(jsonl=str(path)),), batch_size=2, text_len=TEXT_LEN,
                    num_images=2, read_threads=1)
  batch = next(TrainInput(cfg, processor))
  assert batch["images"].shape == (2, 2, 8, 8, 3)
  _, index = example_of(batch["images"][0])
  want = processor([[decoded(index), decoded(index)]], ["compare"], [f"same {index}"],
                   padding_side="right", max_length=2 * 4 + TEXT_LEN)
  np.testing.assert_array_equal(batch["tokens"][0], want["tokens"][0])


def test_eval_rows_keep_every_reference_and_report_bad_rows(tmp_path, processor):
  rows, images = good_rows()
  rows[3]["suffix"] = ["one answer", "another"]
  rows.append({"image": "img/gone.png", "prefix": "caption en", "suffix": "x"})
  path = write_jsonl(tmp_path, rows, images)
  every = list(eval_rows(MemberConfig(jsonl=str(path))))
  assert [r.id for r in every] == list(range(GOOD + 1))
  assert every[3].references == ("one answer", "another")
  assert every[4].references == ("a cat 4",) and every[4].prefix == "caption en"
  assert every[-1].error.startswith("data.jsonl example 10: data.jsonl line 11: cannot read image")
  halves = [[r.id for r in eval_rows(MemberConfig(jsonl=str(path)), process_index=p,
                                     process_count=2)] for p in range(2)]
  assert sorted(halves[0] + halves[1]) == list(range(GOOD + 1))
  groups = list(row_groups(every, batch_size=4))
  assert [([r.id for r in g], [r.error for r in bad]) for g, bad in groups] == [
      ([0, 1, 2, 3], []), ([4, 5, 6, 7], []), ([8, 9], [every[-1].error])]
  # The bad row after the last full group is a group of bad rows only: still handed over.
  assert [(len(g), [r.error for r in bad]) for g, bad in row_groups(every, batch_size=5)] == [
      (5, []), (5, []), (0, [every[-1].error])]
  batches = [eval_batch(g, processor, 4, TEXT_LEN) for g, _ in groups]
  assert [b["valid"].sum() for b in batches] == [4, 4, 2]
  assert batches[0]["references"][3] == ["one answer", "another"]
  want = processor([decoded(0)], ["caption en"], max_length=4 + TEXT_LEN)
  np.testing.assert_array_equal(batches[0]["tokens"][0], want["tokens"][0])


def test_a_jsonl_member_mixes_with_a_tfds_split(tmp_path, processor):
  build(PipeCaps, tmp_path / "tfds")
  rows, images = good_rows()
  path = write_jsonl(tmp_path / "jsonl", rows, images)
  cfg = InputConfig(members=(
      MemberConfig(name="pipe_caps", data_dir=str(tmp_path / "tfds"), weight=1,
                   task_options={"id_key": "image/id"}),
      MemberConfig(jsonl=str(path), weight=1)), batch_size=8, text_len=TEXT_LEN,
      read_threads=2, mixture_block=8)  # small blocks: exactly 4 + 4 per 8 steps
  it = TrainInput(cfg, processor)
  greens = [example_of(im)[0] for _ in range(4) for im in next(it)["images"]]
  assert greens.count(GREEN["jsonl"]) == 16 == greens.count(GREEN["pipe_caps"])
  assert it.examples_per_epoch == 24 + GOOD


def test_jsonl_configuration_errors(tmp_path, processor):
  with pytest.raises(ValueError, match="JSONL file .*nope.jsonl does not exist"):
    TrainInput(config(tmp_path / "nope.jsonl"), processor)
  path = write_jsonl(tmp_path, [{"image": "a.png", "prefix": "p", "suffix": "s"}], {})
  with pytest.raises(ValueError, match="image_dir .* is not a folder"):
    TrainInput(config(path, image_dir=str(tmp_path / "none")), processor)
