"""LoRA / QLoRA fine-tuning through the trainer: only the adapters train, checkpoints hold them
alone, an interrupted run resumes bit for bit, and the adapters load (and merge) onto their base."""

from __future__ import annotations

import pathlib

import jax
import numpy as np
import pytest

from paligemma_jax import api, checkpoints
from paligemma_jax.data.tokenizer import Tokenizer
from paligemma_jax.models import init_params, lora
from paligemma_jax.training import config as config_lib
from paligemma_jax.training import trainer
from test_trainer import _records, compilation_cache, shapes, tiny_config  # noqa: F401


@pytest.fixture(scope="module")
def base(shapes, tmp_path_factory) -> str:
  """A params checkpoint of the tiny model (random weights) to fine-tune with adapters."""
  cfg = config_lib.parse_train_config(tiny_config(shapes))
  tokenizer = Tokenizer(shapes["tokenizer"])
  model = config_lib.model_config(cfg, tokenizer.vocab_size, tokenizer.image_token_id)
  model = model.replace(**{"text.final_logit_softcap": None})
  path = str(tmp_path_factory.mktemp("base") / "params")
  checkpoints.save_params(path, model, init_params(model, jax.random.key(7)))
  return path


def _lora_config(shapes, base, **changes):
  # 18 steps of 8: two epochs of the 72-row split, every step logged.
  return tiny_config(shapes, init=base, lora=dict(rank=4, alpha=8.0), **{
      "optimizer.lr": 3e-2, "total_steps": 18, "log_every": 1, **changes})


def _leaves(path) -> dict[str, np.ndarray]:
  return {name: np.asarray(x) for name, x in checkpoints.read_leaves(
      path, list(checkpoints.leaf_specs(path))).items()}


@pytest.fixture(scope="module")
def lora_run(shapes, base, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lora")
  last = trainer.train(_lora_config(shapes, base), str(workdir))
  return workdir, last


def test_lora_trains_the_adapters_alone_and_saves_them_with_their_base(lora_run, base):
  workdir, _ = lora_run
  losses = [r["train_loss"] for r in _records(workdir) if "train_loss" in r]
  assert len(losses) == 18
  # The second epoch's mean loss is below the first's, over the same 72 rows (single batches
  # mix captions, answers and boxes differently, so one batch against another depends on order).
  assert np.mean(losses[9:]) < np.mean(losses[:9])
  adapters = _leaves(workdir / "adapters")
  assert adapters and all(name.rsplit("/", 1)[1] in lora.NAMES for name in adapters)
  assert any(np.abs(a).max() > 0 for name, a in adapters.items() if name.endswith("lora_b"))
  assert not (workdir / "params").exists()  # the base is a checkpoint: only the adapters
  config = checkpoints.read_config(workdir / "adapters")
  assert config.lora.base == base and config.lora.rank == 4
  # A step's checkpoint holds the adapters and their optimizer state, not the base: with the base
  # it would be larger than the base's own checkpoint (~95% of which is the base's array bytes).
  # Not a tighter bound: Orbax's files for the same step vary (130 KB alone, 236 KB once in a
  # full suite run, against the base's 414 KB).
  size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
  assert size(workdir / "checkpoints" / "6") < size(pathlib.Path(base))
  # Loading the adapters brings their base back unchanged (bit-identical) under them.
  loaded_config, params = api.load_checkpoint(workdir / "adapters")
  assert loaded_config.lora is not None
  base_params, got_adapters = lora.split(params)
  want = _leaves(base)
  for name, value in checkpoints._flat(base_params).items():
    np.testing.assert_array_equal(np.asarray(value), want[name], err_msg=name)
  assert len(checkpoints._flat(got_adapters)) == len(adapters)


def test_interrupted_lora_run_resumes_bit_for_bit(shapes, base, lora_run, tmp_path):
  c = _lora_config(shapes, base)
  trainer.train(c, str(tmp_path), max_steps=3)
  assert not (tmp_path / "adapters").exists()
  trainer.train(c, str(tmp_path))
  want = _leaves(lora_run[0] / "adapters")
  got = _leaves(tmp_path / "adapters")
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_qlora_int8_trains_over_a_quantized_base(shapes, base, tmp_path):
  c = _lora_config(shapes, base, total_steps=4, **{"lora.quantize": "int8"})
  trainer.train(c, str(tmp_path))
  config, params = api.load_checkpoint(tmp_path / "adapters")
  assert config.quantization.kind == "int8"
  up = params["params"]["llm"]["layers"]["mlp"]["up"]
  assert up["w_int8"].dtype == np.int8 and up["lora_a"].dtype == np.float32
  merged_config, merged = lora.merge(config, params)
  assert merged_config.quantization is None and "w" in merged["params"]["llm"]["layers"]["mlp"]["up"]


def test_lora_config_errors_are_one_line(shapes, base):
  for change, message in (({"lora.rank": 0}, "config.lora: lora rank must be >= 1"),
                          ({"lora.quantize": "int2"}, "config.lora.quantize 'int2' is unknown"),
                          ({"lora.ranks": 4}, "unknown config key config.lora.ranks")):
    with pytest.raises(ValueError, match=message) as e:
      config_lib.parse_train_config(_lora_config(shapes, base, **change))
    assert "\n" not in str(e.value)


def test_convert_checkpoint_merges_adapters_into_their_base(lora_run, tmp_path):
  import subprocess
  import sys
  from model_fixtures import make_batch
  from paligemma_jax.models import PaliGemma
  adapters = str(lora_run[0] / "adapters")
  script = str(pathlib.Path(__file__).resolve().parents[1] / "convert_checkpoint.py")
  refused = subprocess.run([sys.executable, script, "--src", adapters, "--dst",
                            str(tmp_path / "no")], capture_output=True, text=True)
  assert refused.returncode == 2 and "pass --merge_lora" in refused.stderr
  assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "no").exists()
  done = subprocess.run([sys.executable, script, "--merge_lora", "--src", adapters, "--dst",
                         str(tmp_path / "merged")], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  config, params = api.load_checkpoint(adapters)
  merged_config, merged = api.load_checkpoint(tmp_path / "merged")
  assert merged_config.lora is None and not lora.has_adapters(merged)
  batch = make_batch(merged_config)
  args = (batch["tokens"], batch["images"], batch["input_mask"], batch["mask_ar"])
  want = np.asarray(jax.jit(PaliGemma(config).apply)(params, *args))
  got = np.asarray(jax.jit(PaliGemma(merged_config).apply)(merged, *args))
  assert np.abs(want - np.asarray(jax.jit(PaliGemma(merged_config).apply)(
      lora.split(params)[0], *args))).max() > 1e-3  # the adapters matter
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_train_also_trains_base_params_in_full_from_their_pretrained_values(shapes, base,
                                                                            tmp_path):
  c = _lora_config(shapes, base, total_steps=2, **{"lora.train_also": ["projector/.*"]})
  trainer.train(c, str(tmp_path))
  saved = _leaves(tmp_path / "adapters")
  assert {"params/projector/w", "params/projector/b"} <= set(saved)
  assert not any("embedding" in name or name.endswith("/w") and "projector" not in name
                 for name in saved)
  pretrained = _leaves(base)
  moved = np.abs(saved["params/projector/w"] - pretrained["params/projector/w"]).max()
  assert 0 < moved < 0.5  # trained from the pretrained values, not from a random init
  _, params = api.load_checkpoint(tmp_path / "adapters")
  np.testing.assert_array_equal(params["params"]["projector"]["w"], saved["params/projector/w"])
  with pytest.raises(ValueError, match="train_also 'img/.*' matches no parameter"):
    trainer.train(_lora_config(shapes, base, **{"lora.train_also": ["img/.*"]}),
                  str(tmp_path / "typo"))
