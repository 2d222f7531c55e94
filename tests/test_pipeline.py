"""The one-call pipeline, JSONL batch inference, the attention-mask printer and infer.py, on a tiny
random PaliGemma 2 saved as an Orbax checkpoint with the stand-in tokenizer."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from model_fixtures import random_params
from paligemma_jax import checkpoints, sharding
from paligemma_jax.api import make_processor
from paligemma_jax.inference import Sampler, generate
from paligemma_jax.inference.batch_infer import run_jsonl
from paligemma_jax.inference.beam import BeamSearch
from paligemma_jax.inference.mask_view import ATTENDS, MASKED, attention_mask_text, mask_rows
from paligemma_jax.inference.pipeline import Pipeline, task_of
from paligemma_jax.models import GemmaConfig, PaliGemmaConfig, SigLIPConfig

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(tokenizer) -> PaliGemmaConfig:
  vocab = tokenizer.vocab_size + (-tokenizer.vocab_size % 64)
  return PaliGemmaConfig(
      vision=SigLIPConfig(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=14, image_size=28),
      text=GemmaConfig(version=2, width=64, depth=2, mlp_dim=128, num_heads=4, num_kv_heads=2,
                       head_dim=16, vocab_size=vocab, attn_logit_softcap=50.0,
                       final_logit_softcap=30.0),
      image_token_id=tokenizer.image_token_id)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, standin_tokenizer):
  config = tiny_config(standin_tokenizer)
  path = tmp_path_factory.mktemp("pipeline") / "ckpt"
  checkpoints.save_params(path, config, random_params(config, seed=3))
  return path


@pytest.fixture(scope="module")
def pipe(model_dir, standin_tokenizer_path):
  return Pipeline.load(model_dir, standin_tokenizer_path)


def picture(seed: int, size=(40, 30)) -> PIL.Image.Image:
  rng = np.random.default_rng(seed)
  return PIL.Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


PROMPTS = ["caption en", "answer en what is this?", "ocr"]


def test_pipeline_equals_generate_and_decodes_text(pipe):
  images = [picture(i) for i in range(3)]
  results = pipe(images, PROMPTS, max_new_tokens=6)
  batch = pipe.processor(images, PROMPTS)
  want, logprobs = generate(pipe.config, pipe.params, batch, 6, pipe.tokenizer.eos_id,
                            return_logprobs=True)
  for result, row, lp, prompt in zip(results, want, logprobs, PROMPTS):
    assert result.prompt == prompt
    assert result.tokens == [int(t) for t in row][:len(result.tokens)]
    assert result.text == pipe.tokenizer.decode(np.asarray(result.tokens)).strip()
    assert result.logprob == pytest.approx(float(lp.sum()), abs=1e-4)
    assert result.objects is None


def test_pipeline_over_eight_devices_equals_one(model_dir, standin_tokenizer_path, pipe):
  import jax
  one = Pipeline.load(model_dir, standin_tokenizer_path,
                      mesh=sharding.make_mesh(devices=jax.devices()[:1]))
  assert pipe.mesh.shape["data"] == 8
  images = [picture(i) for i in range(3)]  # 3 rows, padded to 8 for the mesh
  for a, b in zip(pipe(images, PROMPTS, max_new_tokens=5), one(images, PROMPTS, max_new_tokens=5)):
    assert a.tokens == b.tokens
    assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_sampling_is_seeded_and_beam_runs(pipe):
  images = [picture(0), picture(1)]
  sampler = Sampler("sample", temperature=2.0)
  a = pipe(images, PROMPTS[:2], max_new_tokens=8, sampler=sampler, seed=1)
  b = pipe(images, PROMPTS[:2], max_new_tokens=8, sampler=sampler, seed=1)
  c = pipe(images, PROMPTS[:2], max_new_tokens=8, sampler=sampler, seed=2)
  assert [r.tokens for r in a] == [r.tokens for r in b]
  assert [r.tokens for r in a] != [r.tokens for r in c]
  beams = pipe(images, PROMPTS[:2], max_new_tokens=4, beam=BeamSearch(num_beams=3))
  assert all(len(r.tokens) >= 1 and np.isfinite(r.logprob) for r in beams)


def test_detect_prompts_give_pixel_boxes(pipe):
  ids = pipe.tokenizer.encode("<loc0256><loc0512><loc0768><loc1023> cat", parse_special=True)
  ids.append(pipe.tokenizer.eos_id)
  image = picture(0, size=(200, 100))  # width 200, height 100
  result = pipe._result("detect cat", image, np.asarray(ids), 0.0)
  assert task_of("detect cat") == "detect" and task_of("caption en") == "text"
  [obj] = result.objects
  assert obj.label == "cat"
  ymin, xmin, ymax, xmax = obj.box
  assert (ymin, xmin) == (25, 100) and ymax == pytest.approx(75, abs=1) and xmax == 200


def test_bad_inputs_get_one_line_errors(pipe):
  with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
    pipe([picture(0)], ["caption en"], max_new_tokens=0)
  with pytest.raises(ValueError, match="got 2 images for 1 prompts"):
    pipe([picture(0), picture(1)], ["caption en"])
  short = Pipeline(pipe.config, pipe.params, pipe.processor, max_length=12)
  with pytest.raises(ValueError, match="exceeds max_length 12: shorten it"):
    short([picture(0)], ["a b c d e f g h i j k l m n o p"], max_new_tokens=4)


def test_attention_mask_printer(pipe):
  labels, mask, sliding = mask_rows(pipe.processor, pipe.config, "caption en", "a cat")
  m = pipe.config.vision.num_patches
  assert labels[0] == f"<image>×{m}" and sliding is None
  prefix = len(pipe.processor.prefix_ids("caption en", 1)) - m + 1  # image group + text prefix
  assert mask[:prefix, :prefix].all()  # the prefix attends both ways
  assert not mask[:prefix, prefix:].any()  # and never to the suffix
  suffix = mask[prefix:, prefix:]
  assert (suffix == np.tril(np.ones_like(suffix))).all()  # the suffix is causal
  text = attention_mask_text(pipe.processor, pipe.config, "caption en", "a cat")
  assert ATTENDS in text and MASKED in text and f"<image>×{m}" in text


def test_jsonl_batch_mode_keeps_going_past_bad_rows(pipe, tmp_path):
  good = tmp_path / "good.png"
  picture(0).save(good)
  (tmp_path / "broken.png").write_bytes(b"not a png")
  rows = [{"id": 1, "image": str(good), "prompt": "caption en"},
          {"id": 2, "image": str(tmp_path / "missing.png"), "prompt": "caption en"},
          {"id": 3, "image": str(tmp_path / "broken.png"), "prompt": "caption en"},
          {"id": 4, "image": str(good), "prompt": "x " * 9000},
          {"id": 5, "image": str(good), "prompt": "ocr"}]
  lines = [json.dumps(r) for r in rows[:2]] + ["{oops"] + [json.dumps(r) for r in rows[2:]]
  (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
  out = tmp_path / "out.jsonl"
  summary = run_jsonl(pipe, str(tmp_path / "in.jsonl"), str(out), batch_size=2, max_new_tokens=3)
  assert (summary.rows, summary.ok, summary.errors) == (6, 2, 4)
  got = [json.loads(line) for line in out.read_text().splitlines()]
  assert [g.get("id") for g in got] == [1, 2, None, 3, 4, 5]
  assert "text" in got[0] and "text" in got[5]
  assert "image not found" in got[1]["error"] and "not JSON" in got[2]["error"]
  assert "cannot read image" in got[3]["error"] and "exceeds max_length" in got[4]["error"]
  with pytest.raises(FileExistsError, match="--overwrite"):
    run_jsonl(pipe, str(tmp_path / "in.jsonl"), str(out))
  assert not any(p.name.endswith(".incomplete") for p in tmp_path.iterdir())


def _infer(*args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  return subprocess.run([sys.executable, str(REPO / "infer.py"), *args], capture_output=True,
                        text=True, env=env, timeout=300)


def test_infer_cli(model_dir, standin_tokenizer_path, tmp_path):
  image = tmp_path / "img.png"
  picture(0).save(image)
  common = [f"--checkpoint={model_dir}", f"--tokenizer={standin_tokenizer_path}"]
  run = _infer(*common, f"--image={image}", "--prompt=detect cat", "--max_new_tokens=4",
               "--json", f"--overlay={tmp_path / 'o.png'}")
  assert run.returncode == 0, run.stderr[-2000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  assert out["prompt"] == "detect cat" and len(out["tokens"]) >= 1 and "objects" in out
  assert (tmp_path / "o.png").exists()
  bad = _infer(*common, f"--image={tmp_path / 'nope.png'}", "--prompt=caption en")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == f"error: image not found: {tmp_path / 'nope.png'}"
  assert "Traceback" not in bad.stderr
