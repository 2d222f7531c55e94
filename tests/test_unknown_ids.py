"""Decoding never crashes on what a model emits: ids past the tokenizer (an HF checkpoint's 64
padding rows after `<image>`) come back as ids, decode to nothing, and every path succeeds.

The model is a tiny random PaliGemma 1 saved by transformers with the stand-in tokenizer's
vocabulary padded to a multiple of 64, as HF checkpoints are; its tied embedding rows past the
tokenizer are scaled up, so greedy decoding picks them.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

import hf_oracle as O
from paligemma_jax.inference.beam import BeamSearch
from paligemma_jax.inference.cli import main as cli_main
from paligemma_jax.inference.cli import run_config
from paligemma_jax.inference.pipeline import Pipeline
from paligemma_jax.inference.sampling import Sampler

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = ["caption en", "detect cat", "segment cat"]
SCALE = 4.0  # x2 already makes every greedy step pick a padding row; x4 leaves a wide margin


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, standin_tokenizer) -> pathlib.Path:
  import torch
  tok = standin_tokenizer
  spec = O.TinySpec(vocab=tok.vocab_size + (-tok.vocab_size % 64), image_token=tok.image_token_id)
  assert spec.vocab > tok.vocab_size  # rows the tokenizer has no piece for
  model = O.build_model(spec)
  with torch.no_grad():  # tied: the same rows are the output head
    model.get_input_embeddings().weight[tok.vocab_size:] *= SCALE
  path = tmp_path_factory.mktemp("unknown_ids") / "ckpt"
  model.save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def pipe(hf_checkpoint, standin_tokenizer_path) -> Pipeline:
  return Pipeline.load(hf_checkpoint, standin_tokenizer_path)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("unknown_ids_image") / "image0.png"
  rng = np.random.default_rng(0)
  PIL.Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(path)
  return path


def unknown(ids, tok) -> list[int]:
  return [t for t in ids if t >= tok.vocab_size]


def test_pipeline_returns_ids_past_the_tokenizer(pipe, image_path):
  tok = pipe.tokenizer
  image = PIL.Image.open(image_path)
  for options in ({}, {"sampler": Sampler("sample", temperature=1.0), "seed": 1},
                  {"beam": BeamSearch(num_beams=2)}):
    results = pipe([image] * 3, PROMPTS, max_new_tokens=4, **options)
    for result in results:
      assert unknown(result.tokens, tok), (options, result.tokens)
      assert result.text == tok.decode(result.tokens).strip()
      assert np.isfinite(result.logprob)
    assert results[0].objects is None
    assert results[1].objects == [] and results[2].objects == []  # nothing to parse, no crash
  [greedy] = pipe([image], ["caption en"], max_new_tokens=4)
  assert greedy.text == "" and len(unknown(greedy.tokens, tok)) == 4


def test_detection_parses_around_unknown_ids(pipe):
  tok = pipe.tokenizer
  past = tok.vocab_size + 5
  ids = (tok.encode("<loc0256><loc0512>") + [past] + tok.encode("<loc0768><loc1023> cat") +
         [past, tok.eos_id])
  result = pipe._result("detect cat", PIL.Image.new("RGB", (200, 100)), np.asarray(ids), 0.0)
  assert result.tokens == ids and result.text == "<loc0256><loc0512><loc0768><loc1023> cat"
  [obj] = result.objects
  assert obj.label == "cat" and obj.box[:2] == (25, 100)


def test_infer_cli_single_prompt_and_jsonl(hf_checkpoint, standin_tokenizer_path, image_path,
                                           tmp_path):
  from paligemma_jax.data import Tokenizer
  tok = Tokenizer(standin_tokenizer_path)
  common = dict(checkpoint=str(hf_checkpoint), tokenizer=str(standin_tokenizer_path),
                max_new_tokens=4, batch_size=2, overlay=None, vqvae=None, overwrite=False,
                show_mask=False, max_length=8192, sampler="greedy", temperature=1.0, top_k=0,
                top_p=1.0, num_beams=2, length_penalty=1.0, seed=0)
  out = json.loads(cli_main(images=[str(image_path)], prompt="detect cat", input_jsonl=None,
                            output_jsonl=None, as_json=True, **common))
  assert unknown(out["tokens"], tok) and out["text"] == "" and out["objects"] == []

  rows = tmp_path / "in.jsonl"
  rows.write_text("".join(json.dumps({"id": i, "image": str(image_path), "prompt": p}) + "\n"
                          for i, p in enumerate(PROMPTS)))
  message = cli_main(images=[], prompt=None, input_jsonl=str(rows),
                     output_jsonl=str(tmp_path / "out.jsonl"), as_json=False, **common)
  assert "3 rows: 3 predicted, 0 errors" in message
  got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [g["id"] for g in got] == [0, 1, 2]
  assert all(unknown(g["tokens"], tok) and g["text"] == "" for g in got)


def test_infer_py_prints_a_note_and_exits_zero(hf_checkpoint, standin_tokenizer_path, image_path):
  """The issue's command, as a user runs it."""
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  run = subprocess.run(
      [sys.executable, str(REPO / "infer.py"), "--checkpoint", str(hf_checkpoint), "--tokenizer",
       str(standin_tokenizer_path), "--image", str(image_path), "--prompt", "caption en",
       "--max_new_tokens", "4"], capture_output=True, text=True, env=env, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "error" not in run.stderr and "Unable to initialize backend" not in run.stderr
  note = run.stdout.strip().splitlines()[-1]
  assert note.startswith("(4 of 4 generated ids have no piece in the tokenizer"), run.stdout


def test_tfds_batch_mode(pipe, hf_checkpoint, standin_tokenizer_path, tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from test_infer_tfds import CORRUPT, NUM, TinyVl, cococap
  data_dir = tmp_path / "tfds"
  TinyVl(data_dir=str(data_dir)).download_and_prepare()
  out = tmp_path / "cap.jsonl"
  message = run_config(cococap(hf_checkpoint, standin_tokenizer_path, str(data_dir), out))
  assert f"{NUM} rows: {NUM - 1} predicted, 1 errors" in message
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  for i, row in enumerate(rows):
    if i != CORRUPT:
      assert unknown(row["tokens"], pipe.tokenizer) and row["text"] == "", row
