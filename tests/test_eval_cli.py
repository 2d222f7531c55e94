"""Scoring saved predictions (evaluators.md's worked examples through prediction rows), and
eval.py: --predictions / --metric, and --config on a tiny checkpoint and a JSONL split."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from paligemma_jax.evaluation import cider
from paligemma_jax.evaluation.eval_cli import score_file
from paligemma_jax.evaluation.saved_predictions import score_predictions

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def write_rows(path: pathlib.Path, rows: list) -> str:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def preds(tmp_path, rows, name="p.jsonl") -> str:
  return write_rows(tmp_path / name, rows)


# --- scoring saved predictions: worked examples --------------------------------------------------


def test_cider_worked_example(tmp_path):
  rows = [{"id": 0, "prediction": "a dog running on grass",
           "references": ["a dog runs on the grass", "a brown dog running on grass"]},
          {"id": 1, "prediction": "a cat on a sofa",
           "references": ["a cat sleeps on a sofa", "a cat is sleeping on the couch"]},
          {"id": 2, "error": "cannot read image 2.png"}]
  out = score_predictions(preds(tmp_path, rows), "cider", {"tokenize": False})
  assert out == pytest.approx({"cider": 3.555714, "num": 2.0, "skipped": 1.0}, abs=1e-6)


def test_tallyqa_pope_rsvqa_vqav2_worked_examples(tmp_path):
  tally = [("two", "2", 1), ("3", "3", 1), ("Four", "4", 0), ("2 ", "2", 0)]
  out = score_predictions(preds(tmp_path, [
      {"prediction": p, "references": [r], "issimple": s} for p, r, s in tally], "t.jsonl"),
      "tallyqa")
  assert out["acc"] == 0.75 and out["acc/simple"] == 1.0 and out["acc/complex"] == 0.5
  pope = [("Yes", "yes"), ("no", "no"), ("yes.", "yes"), ("No", "yes")]
  out = score_predictions(preds(tmp_path, [
      {"prediction": p, "references": [r]} for p, r in pope], "pope.jsonl"), "pope")
  assert out["acc"] == 0.5 and out["valid_percent"] == 0.75
  rsvqa = [("comp", "yes", "yes"), ("comp", "no", "yes"), ("presence", "yes", "yes"),
           ("rural_urban", "rural", "urban")]
  out = score_predictions(preds(tmp_path, [
      {"prediction": p, "references": [r], "question_type": t} for t, r, p in rsvqa],
      "rs.jsonl"), "rsvqa")
  assert out["acc"] == pytest.approx(1 / 6) and out["acc_any"] == 0.5
  assert out["acc_avg"] == 0.5 and out["acc_avg_nonum"] == 0.75
  vqav2 = [("2", ["two", "two", "2"] + ["3"] * 7, "number"), ("The dog.", ["dog"] * 10, "other"),
           ("yes\n", ["yes"] * 10, "yes/no")]
  out = score_predictions(preds(tmp_path, [
      {"prediction": p, "references": r, "answer_type": t} for p, r, t in vqav2], "v.jsonl"),
      "vqav2")
  assert out["acc/number"] == pytest.approx(0.9) and out["acc/other"] == 0.0
  assert out["acc/yesno"] == 1.0 and out["acc"] == pytest.approx(1.9 / 3)


def test_box_detection_and_perplexity_rows(tmp_path):
  box = [{"prediction": "<loc0102><loc0102><loc0512><loc0512> cat", "box_yxyx": [.1, .1, .5, .5]},
         {"prediction": "<loc0512><loc0102><loc0102><loc0512>", "box_yxyx": [.1, .1, .5, .5]}]
  out = score_predictions(preds(tmp_path, box, "b.jsonl"), "refcoco_box")
  assert out["boxacc/0.5"] == 0.5 and out["num"] == 2
  det = [{"prediction": "<loc0000><loc0000><loc0512><loc0512> cat ; <loc0512><loc0512><loc1023>"
                        "<loc1023> dog",
          "boxes_yxyx": [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], "labels": ["cat", "dog"],
          "image_hw": [100, 200]}]
  out = score_predictions(preds(tmp_path, det, "d.jsonl"), "detection_map")
  assert out["map_50"] == pytest.approx(1.0) and out["num"] == 1
  pplx = [{"log_likelihood": -3 * np.log(4), "num_tokens": 3}]
  out = score_predictions(preds(tmp_path, pplx, "x.jsonl"), "perplexity")
  assert out["sum"] == pytest.approx(4.158883) and out["avg"] == pytest.approx(1.386294)


# --- bad input -----------------------------------------------------------------------------------


GOOD = {"prediction": "a", "references": ["a"]}


@pytest.mark.parametrize("rows, metric, message", [
    ([GOOD, "{not json"], "cider", "line 2: not JSON"),
    ([GOOD, [1, 2]], "cider", "line 2: a JSON list, not an object"),
    ([GOOD, GOOD, {"prediction": "a"}], "cider", "line 3: no 'references' field (needed: "
                                                  "prediction, references)"),
    ([{"prediction": "a", "references": []}], "vqa", "line 1: no references (an empty list)"),
    ([{"prediction": "a", "references": "a"}], "vqa", "line 1: 'references' is not a list"),
    ([{"prediction": 3, "references": ["a"]}], "vqa", "line 1: 'prediction' is not a string"),
    ([GOOD], "rsvqa", "line 1: no 'question_type' field"),
    ([GOOD], "cidr", "unknown evaluator 'cidr'; valid evaluators: vqa, vqav2, anls,"),
    ([GOOD], "refcoco_seg", "refcoco_seg cannot score a predictions file"),
    ([{"id": 1, "error": "unreadable"}], "vqa", "has no prediction rows to score"),
    ([GOOD, {"prediction": "b", "references": ["a", "b"]}], "pope",
     "pope: example 1 has 2 references, expected one"),
])
def test_bad_predictions_are_one_line_and_write_nothing(tmp_path, rows, metric, message):
  output = tmp_path / "metrics.json"
  with pytest.raises(ValueError) as e:
    score_file(preds(tmp_path, rows), metric, output=str(output))
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not output.exists() and not list(tmp_path.glob("*.incomplete"))


def test_metric_options(tmp_path):
  path = preds(tmp_path, [{"prediction": "Yes", "references": ["yes"]}])
  table = score_file(path, "exact_match", options='{"to_lower": true}').splitlines()
  assert table[0].split() == ["eval", "metric", "value"]
  assert [line.split() for line in table[1:]] == [["exact_match", "exact_match", "1"],
                                                  ["exact_match", "num", "1"],
                                                  ["exact_match", "skipped", "0"]]
  assert score_predictions(path, "exact_match", {"to_lower": True})["exact_match"] == 1.0
  assert score_predictions(path, "exact_match")["exact_match"] == 0.0
  for options, message in [('{"to_lower": 1}', "option 'to_lower' must be bool, got 1"),
                           ('{"lower": true}', "unknown option 'lower' for evaluator"),
                           ("{oops", "--metric_options is not JSON")]:
    with pytest.raises(ValueError, match=message):
      score_file(path, "exact_match", options=options)


# --- eval.py -------------------------------------------------------------------------------------


def eval_py(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO / "eval.py"), *args], capture_output=True,
                        text=True, env=ENV, timeout=timeout, cwd=REPO)


def test_eval_py_predictions(tmp_path):
  rows = [{"prediction": p, "references": [r]} for p, r in [("yes", "yes"), ("no", "yes")]]
  path, output = preds(tmp_path, rows), tmp_path / "m.json"
  run = eval_py(f"--predictions={path}", "--metric=pope", f"--output={output}")
  assert run.returncode == 0, run.stderr[-2000:]
  assert "pope" in run.stdout and "acc" in run.stdout
  assert json.loads(output.read_text())["acc"] == 0.5
  again = eval_py(f"--predictions={path}", "--metric=pope", f"--output={output}")
  assert again.returncode == 2 and again.stderr.strip().splitlines()[-1] == (
      f"error: {output} exists; pass --overwrite to replace it")
  bad = eval_py(f"--predictions={path}", "--metric=nope")
  assert bad.returncode == 2 and "error: unknown evaluator 'nope'; valid evaluators: vqa" in \
      bad.stderr.strip().splitlines()[-1]
  neither = eval_py()
  assert neither.returncode == 2 and "give --config" in neither.stderr


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, standin_tokenizer):
  from model_fixtures import random_params
  from paligemma_jax import checkpoints
  from test_pipeline import tiny_config
  path = tmp_path_factory.mktemp("eval_cli") / "ckpt"
  config = tiny_config(standin_tokenizer)
  checkpoints.save_params(path, config, random_params(config, seed=3))
  return path


def test_eval_py_config_on_a_jsonl_split(tmp_path, tiny_checkpoint, standin_tokenizer_path):
  rows = []
  for i in range(3):
    rng = np.random.default_rng(i)
    pixels = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    rows.append({"image": f"{i}.png", "image/id": 10 + i,
                 "captions": {"text": [f"a photo number {i}", "a small picture"]}})
  split = write_rows(tmp_path / "val.jsonl", rows)
  out = tmp_path / "out"
  key = "--config.evals.cococap_val"
  args = [f"--config={REPO / 'configs/eval_cococap.py'}", f"--config.checkpoint={tiny_checkpoint}",
          f"--config.tokenizer={standin_tokenizer_path}", f"--config.output_dir={out}",
          f"{key}.data.name=", f"{key}.data.jsonl={split}", f"{key}.decoding.sampler=greedy",
          f"{key}.decoding.max_decode_len=4", f"{key}.batch_size=2"]
  run = eval_py(*args)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "cococap_val: 3 examples (0 skipped)" in run.stdout and "examples/s" in run.stdout
  table = [line.split() for line in run.stdout.splitlines()[-4:]]
  assert table[0] == ["eval", "metric", "value"] and table[1][:2] == ["cococap_val", "cider"]
  written = [json.loads(line) for line in (out / "cococap_val/predictions.jsonl").open()]
  assert [r["id"] for r in written] == [10, 11, 12]
  metrics = json.loads((out / "cococap_val/metrics.json").read_text())
  want = cider([r["prediction"] for r in written], [r["references"] for r in written])
  assert metrics["cider"] == pytest.approx(want["cider"]) and metrics["num"] == 3
  again = eval_py(*args)  # outputs exist: refused before the model loads
  assert again.returncode == 2
  assert "exists; pass --overwrite" in again.stderr.strip().splitlines()[-1]
  typo = eval_py(*args, f"{key}.batchsize=3")
  assert typo.returncode == 2 and typo.stderr.strip().splitlines()[-1].startswith(
      "error: unknown config key")


@pytest.mark.parametrize("name", ["eval_cococap", "eval_vqav2"])
def test_example_configs_parse(name):
  import runpy
  from paligemma_jax.evaluation import parse_eval_config
  config = runpy.run_path(str(REPO / f"configs/{name}.py"))["get_config"]()
  config.checkpoint, config.tokenizer, config.output_dir = "ckpt", "tok.model", "out"
  parsed = parse_eval_config(config)
  assert parsed.evals and all(spec.decoding.max_decode_len >= 1 for spec in parsed.evals)
  with pytest.raises(ValueError, match="config.output_dir is not set"):
    config.output_dir = ""
    parse_eval_config(config)


def test_image_antialias_is_big_vision_only():
  import runpy
  from paligemma_jax.evaluation import parse_eval_config
  config = runpy.run_path(str(REPO / "configs/eval_vqav2.py"))["get_config"]()
  config.checkpoint, config.tokenizer, config.output_dir = "ckpt", "tok.model", "out"
  config.image_method, config.image_antialias = "big_vision", True
  assert parse_eval_config(config).image_antialias
  config.image_method = "hf"
  with pytest.raises(ValueError, match=r"^config.image_antialias applies to image_method "
                                       r"'big_vision' only"):
    parse_eval_config(config)


def test_vqa_single_answer_option(tmp_path):
  """GQA-style single `answer`: exact match; an `answers` list of one scores 1/3 (§1)."""
  path = preds(tmp_path, [{"prediction": "yes", "references": ["yes"]},
                          {"prediction": "no", "references": ["yes"]}])
  assert score_predictions(path, "vqa", {"single_answer": True})["acc"] == 0.5
  assert score_predictions(path, "vqa")["acc"] == pytest.approx(1 / 6)
  two = preds(tmp_path, [{"prediction": "yes", "references": ["yes", "no"]}], "two.jsonl")
  with pytest.raises(ValueError, match="example 0 has 2 references but single_answer is set"):
    score_predictions(two, "vqa", {"single_answer": True})
