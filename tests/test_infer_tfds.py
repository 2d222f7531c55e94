"""Config-driven batch inference over a TFDS split: tasks, the TFDS reader, the config boundary,
the shared JSONL loop and `infer.py --config`, on a tiny dataset written by a custom
GeneratorBasedBuilder and the tiny random model of test_pipeline.py."""

from __future__ import annotations

import io
import json
import os
import pathlib
import runpy
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from paligemma_jax import checkpoints
from paligemma_jax.data import TfdsSource, make_task, tfds_rows
from paligemma_jax.inference.batch_infer import run_tfds
from paligemma_jax.inference.cli import run_config
from paligemma_jax.inference.infer_config import parse_infer_config
from paligemma_jax.inference.pipeline import Pipeline
from model_fixtures import random_params
from test_pipeline import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM = 6
CORRUPT, LONG = 2, 4  # example 2's image is not an image; example 4's question is too long
BOX = (0.1, 0.2, 0.5, 0.6)  # ymin, xmin, ymax, xmax


def pixels(i: int) -> np.ndarray:
  return np.random.default_rng(i).integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)


def question(i: int) -> str:
  return "x " * 9000 if i == LONG else f"what is in picture {i}?"


class TinyVl(tfds.core.GeneratorBasedBuilder):
  """Six examples in the layouts of coco_captions, a VQA set and ref_coco, in one dataset."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "image/id": np.int64,
        "captions": tfds.features.Sequence({"text": tfds.features.Text(), "id": np.int64}),
        "question": tfds.features.Text(),
        "question_id": np.int64,
        "answers": tfds.features.Sequence(tfds.features.Text()),
        "objects": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(),
            "refexp": tfds.features.Sequence({"raw": tfds.features.Text(), "refexp_id": np.int64}),
        }),
    }))

  def _split_generators(self, dl_manager):
    return {"validation": self._generate_examples()}

  def _generate_examples(self):
    for i in range(NUM):
      image = io.BytesIO()
      PIL.Image.fromarray(pixels(i)).save(image, format="png")
      objects = [{"bbox": tfds.features.BBox(*BOX),
                  "refexp": [{"raw": f" the thing {i} ", "refexp_id": 10 * i}]}]
      if i == 1:  # two objects, the second with two sentences
        objects.append({"bbox": tfds.features.BBox(0.0, 0.0, 1.0, 1.0),
                        "refexp": [{"raw": "all", "refexp_id": 11}, {"raw": "whole", "refexp_id": 12}]})
      yield i, {
          "image": io.BytesIO(b"not an image") if i == CORRUPT else io.BytesIO(image.getvalue()),
          "image/id": 100 + i,
          "captions": {"text": [f"cap {i} a", f"cap {i} b"], "id": [1, 2]},
          "question": question(i), "question_id": 1000 + i, "answers": [f"ans {i}"],
          "objects": objects,
      }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  path = tmp_path_factory.mktemp("tfds")
  TinyVl(data_dir=str(path)).download_and_prepare()
  return str(path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, standin_tokenizer):
  path = tmp_path_factory.mktemp("infer_tfds") / "ckpt"
  checkpoints.save_params(path, tiny_config(standin_tokenizer),
                          random_params(tiny_config(standin_tokenizer), seed=3))
  return path


@pytest.fixture(scope="module")
def pipe(model_dir, standin_tokenizer_path):
  return Pipeline.load(model_dir, standin_tokenizer_path)


def cococap(model_dir, tokenizer, data_dir, output, **infer):
  """configs/cococap.py pointed at the tiny dataset, greedy and short."""
  config = runpy.run_path(str(REPO / "configs/cococap.py"))["get_config"]()
  config.checkpoint, config.tokenizer = str(model_dir), str(tokenizer)
  config.infer.data.name, config.infer.data.data_dir = "tiny_vl", data_dir
  config.infer.data.split = "validation"
  config.infer.update(dict(output=str(output), sampler="greedy", max_decode_len=4, batch_size=4,
                           **infer))
  return config


def read(path) -> list[dict]:
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def caption_run(model_dir, standin_tokenizer_path, data_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("caption") / "preds.jsonl"
  message = run_config(cococap(model_dir, standin_tokenizer_path, data_dir, out))
  return out, message


# --- tasks and the reader (no model) -------------------------------------------------------------


def test_caption_rows_in_stored_order_with_decoded_images(data_dir):
  rows = list(tfds_rows(TfdsSource("tiny_vl", "validation", data_dir), make_task("caption")))
  assert [r.id for r in rows] == [100 + i for i in range(NUM)]
  for i, row in enumerate(rows):
    if i == CORRUPT:
      assert row.images == () and row.error.startswith("example 2: cannot decode image")
      continue
    assert row.error is None and row.prefix == "caption en"
    assert row.references == (f"cap {i} a", f"cap {i} b")
    [image] = row.images
    np.testing.assert_array_equal(image, pixels(i))  # PNG bytes decoded back exactly
  tf_rows = list(tfds_rows(TfdsSource("tiny_vl", "validation[:3]", data_dir, image_decoder="tf"),
                           make_task("caption")))
  np.testing.assert_array_equal(tf_rows[0].images[0], pixels(0))
  assert tf_rows[CORRUPT].error.startswith("example 2: cannot decode image")


def test_vqa_refexp_and_template_rows(data_dir):
  source = TfdsSource("tiny_vl", "validation[:2]", data_dir)
  vqa = list(tfds_rows(source, make_task("vqa")))
  assert [(r.id, r.prefix, r.references) for r in vqa] == [
      (1000, "answer en what is in picture 0?", ("ans 0",)),
      (1001, "answer en what is in picture 1?", ("ans 1",))]
  detect = list(tfds_rows(source, make_task("refexp_detect")))
  assert [(r.id, r.prefix) for r in detect] == [
      (0, "detect the thing 0"), (10, "detect the thing 1"), (11, "detect all"),
      (12, "detect whole")]
  # round(v * 1023), half to even: 102.3 -> 102, 204.6 -> 205, 511.5 -> 512, 613.8 -> 614
  assert detect[0].references == ("<loc0102><loc0205><loc0512><loc0614> the thing 0",)
  assert detect[2].references == ("<loc0000><loc0000><loc1023><loc1023> all",)
  assert detect[2].fields["box_yxyx"] == [0.0, 0.0, 1.0, 1.0]
  segment = list(tfds_rows(source, make_task("refexp_segment")))
  assert [r.prefix for r in segment][:2] == ["segment the thing 0", "segment the thing 1"]
  assert all(r.references == () and r.fields["box_yxyx"] for r in segment)
  template = make_task("template", {"prompt": "Q{question_id}: {question} {{x}}",
                                    "reference_key": "captions/text"})
  rows = list(tfds_rows(source, template))
  assert [(r.id, r.prefix, r.references) for r in rows] == [
      (0, "Q1000: what is in picture 0? {x}", ("cap 0 a", "cap 0 b")),
      (1, "Q1001: what is in picture 1? {x}", ("cap 1 a", "cap 1 b"))]


def test_processes_read_disjoint_parts_in_order(data_dir):
  source, task = TfdsSource("tiny_vl", "validation[1:]", data_dir), make_task("vqa")
  every = [r.id for r in tfds_rows(source, task)]
  parts = [[r.id for r in tfds_rows(source, task, process_index=i, process_count=2)]
           for i in range(2)]
  assert every == [1001, 1002, 1003, 1004, 1005] and parts[0] + parts[1] == every
  assert parts[0] and parts[1]
  template = make_task("template", {"prompt": "{question}"})  # ids are indices in the split
  assert [r.id for r in tfds_rows(source, template, process_index=1, process_count=2)] == [3, 4]


@pytest.mark.parametrize("source, task, message", [
    (("nope_ds", "validation"), ("caption", {}), "TFDS dataset 'nope_ds' not found in data_dir"),
    (("tiny_vl", "train"), ("caption", {}), "bad split 'train' for tiny_vl: "),
    (("tiny_vl", "validation"), ("vqa", {"question_key": "prompt"}),
     "task 'vqa' reads field 'prompt' (question_key) but tiny_vl has only answers, captions,"),
    (("tiny_vl", "validation"), ("caption", {"image_key": "question"}),
     "field 'question' of tiny_vl is a Text, not an image"),
])
def test_reader_errors_are_one_line_and_early(data_dir, source, task, message):
  with pytest.raises(ValueError) as e:
    tfds_rows(TfdsSource(*source, data_dir), make_task(*task))  # raises before iterating
  assert message in str(e.value) and "\n" not in str(e.value)


# --- the config boundary -------------------------------------------------------------------------


def test_config_errors_are_one_line(model_dir, standin_tokenizer_path, data_dir, tmp_path):
  def error(**edits) -> str:
    config = cococap(model_dir, standin_tokenizer_path, data_dir, tmp_path / "o.jsonl").to_dict()
    for path, value in edits.items():
      section, key = path.rsplit("__", 1) if "__" in path else ("", path)
      target = config if not section else config[section]
      target[key] = value
    with pytest.raises(ValueError) as e:
      parse_infer_config(config)
    assert "\n" not in str(e.value)
    return str(e.value)

  assert error(infer__batchsize=3) == (
      "unknown config key config.infer.batchsize; valid keys in config.infer: data, output, "
      "batch_size, max_decode_len, sampler, num_beams, length_penalty, temperature, top_k, "
      "top_p, seed, overwrite")
  assert error(modle="x").startswith("unknown config key config.modle; valid keys in config: "
                                     "checkpoint, tokenizer, task, infer, vqvae")
  assert error(task={"name": "captioning"}).startswith(
      "config.task: unknown task 'captioning'; use one of caption, vqa, refexp_detect, "
      "refexp_segment, template, ")  # and the task families added since
  assert error(task={"name": "caption", "language": "en"}).startswith(
      "config.task: unknown option 'language' for task 'caption'; valid options: lang,")
  assert error(task={"name": "template"}) == (
      "config.task: task 'template' needs option 'prompt' (e.g. --config.task.prompt=...)")
  assert error(checkpoint="") == "config.checkpoint is not set; pass --config.checkpoint=PATH"
  assert error(infer__sampler="nucleus").startswith("config.infer.sampler 'nucleus' is unknown")
  assert error(infer__batch_size="8") == "config.infer.batch_size must be int, got '8'"


# --- end to end ----------------------------------------------------------------------------------


def test_caption_config_run_equals_pipeline(caption_run, pipe):
  out, message = caption_run
  assert message == f"wrote {out}: 6 rows: 5 predicted, 1 errors, " + message.rsplit(", ", 1)[1]
  rows = read(out)
  assert [r["id"] for r in rows] == [100 + i for i in range(NUM)]
  assert rows[CORRUPT].keys() == {"id", "error"}
  for i, row in enumerate(rows):
    if i == CORRUPT:
      continue
    assert row["prompt"] == "caption en" and row["references"] == [f"cap {i} a", f"cap {i} b"]
    [want] = pipe([pixels(i)], ["caption en"], max_new_tokens=4)
    assert row["tokens"] == want.tokens and row["text"] == want.text
    assert row["logprob"] == pytest.approx(want.logprob, abs=2e-5)
  # the random model's tokens may repeat; its log-probs tell the images apart
  assert len({round(r["logprob"], 4) for r in rows if "logprob" in r}) == NUM - 1
  assert not any(p.name.endswith(".incomplete") for p in out.parent.iterdir())


def test_overwrite_rule(caption_run, model_dir, standin_tokenizer_path, data_dir, tmp_path):
  out = tmp_path / "preds.jsonl"
  out.write_text(before := caption_run[0].read_text())
  config = cococap(model_dir, standin_tokenizer_path, data_dir, out)
  with pytest.raises(FileExistsError, match="exists; pass --overwrite to replace it"):
    run_config(config)
  assert out.read_text() == before
  config.infer.data.split = "validation[:2]"
  run_config(config, overwrite=True)
  assert [r["id"] for r in read(out)] == [100, 101]
  config.infer.data.split, config.infer.overwrite = "validation[:1]", True  # the config's flag
  run_config(config)
  assert [r["id"] for r in read(out)] == [100]


def test_vqa_rows_with_errors_batched_like_the_pipeline(pipe, data_dir, tmp_path):
  out = tmp_path / "vqa.jsonl"
  summary = run_tfds(pipe, TfdsSource("tiny_vl", "validation", data_dir), make_task("vqa"),
                     str(out), batch_size=8, max_new_tokens=3)
  assert (summary.rows, summary.ok, summary.errors) == (6, 4, 2)
  rows = read(out)
  assert [r["id"] for r in rows] == [1000 + i for i in range(NUM)]
  assert "cannot decode image" in rows[CORRUPT]["error"]
  assert "exceeds max_length 8192" in rows[LONG]["error"]
  assert rows[LONG]["prompt"] == f"answer en {question(LONG).strip()}"
  good = [i for i in range(NUM) if i not in (CORRUPT, LONG)]
  want = pipe([pixels(i) for i in good], [f"answer en {question(i)}" for i in good],
              max_new_tokens=3)
  for i, result in zip(good, want):
    assert rows[i]["prompt"] == result.prompt and rows[i]["references"] == [f"ans {i}"]
    assert rows[i]["tokens"] == result.tokens
    assert rows[i]["logprob"] == pytest.approx(result.logprob, abs=2e-5)


# --- infer.py and import hygiene -----------------------------------------------------------------


def test_infer_py_config_flag(caption_run, model_dir, standin_tokenizer_path, data_dir, tmp_path):
  out = tmp_path / "cli.jsonl"
  args = [sys.executable, str(REPO / "infer.py"), f"--config={REPO / 'configs/cococap.py'}",
          f"--config.checkpoint={model_dir}", f"--config.tokenizer={standin_tokenizer_path}",
          f"--config.infer.output={out}", "--config.infer.data.name=tiny_vl",
          f"--config.infer.data.data_dir={data_dir}", "--config.infer.data.split=validation[:3]",
          "--config.infer.sampler=greedy", "--config.infer.max_decode_len=4"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.strip().splitlines()[-1].startswith(f"wrote {out}: 3 rows: 2 predicted, 1 errors")
  in_process = read(caption_run[0])[:3]
  for got, want in zip(read(out), in_process, strict=True):  # 1 device here, 8 in process
    assert got.keys() == want.keys() and got.get("tokens") == want.get("tokens")
    assert got.get("logprob", 0) == pytest.approx(want.get("logprob", 0), abs=2e-5)
  again = subprocess.run(args + ["--json"], capture_output=True, text=True, env=env, timeout=300)
  assert again.returncode == 2
  assert again.stderr.strip().splitlines()[-1] == (
      "error: --json does not apply with --config; set it in the config instead "
      "(e.g. --config.checkpoint=..., --config.infer.batch_size=...)")
  typo = subprocess.run(args + ["--config.infer.batchsize=3"], capture_output=True, text=True,
                        env=env, timeout=300)
  assert typo.returncode == 2 and typo.stderr.strip() == (
      "error: unknown config key 'batchsize' in --config.infer.batchsize "
      "(Did you mean \"batch_size\" instead of \"batchsize\"?)")


def test_library_imports_without_tensorflow_or_ml_collections():
  code = """
import sys
for name in ("tensorflow", "tensorflow_datasets", "ml_collections"):
  sys.modules[name] = None  # any import of them now fails
import paligemma_jax, paligemma_jax.data, paligemma_jax.inference
from paligemma_jax.inference import cli, batch_infer, infer_config
config = infer_config.parse_infer_config({
    "checkpoint": "c", "tokenizer": "t", "task": {"name": "vqa"},
    "infer": {"data": {"name": "vqa", "split": "validation"}, "output": "o.jsonl"}})
assert config.infer.data.split == "validation" and config.task.question_key == "question"
print("ok")
"""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
  assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
