"""The trainer end to end on the toy shapes task: config errors, resume bit for bit, non-finite
handling, the eval hook, metrics.jsonl and the final params checkpoint."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

import compile_cache
from paligemma_jax import checkpoints
from paligemma_jax.training import config as config_lib
from paligemma_jax.training import metrics
from paligemma_jax.training import trainer
from paligemma_jax.training.demo_data import ensure_demo_data

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Each train() call builds its step anew: compile the same HLO once (subprocesses too)."""
  with compile_cache.compilation_cache(str(tmp_path_factory.mktemp("jax_cache"))) as directory:
    yield directory


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, str]:
  return ensure_demo_data(tmp_path_factory.mktemp("shapes"), num_train=24, num_test=4)


def tiny_config(shapes: dict[str, str], **changes) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      init="random", tokenizer=shapes["tokenizer"],
      model=dict(variant="", vision=dict(width=32, depth=1, mlp_dim=64, num_heads=2,
                                         patch_size=14, image_size=28),
                 text=dict(version=1, width=32, depth=1, mlp_dim=64, num_heads=2,
                           num_kv_heads=1, head_dim=16),
                 dtype="float32"),
      input=dict(members=[dict(jsonl=shapes["train"])], batch_size=8, text_len=20,
                 read_threads=1),
      optimizer=dict(name="adam", lr=1e-2, schedule=dict(name="cosine", warmup_steps=1)),
      total_steps=6, mesh=dict(data=-1), log_every=2, checkpoint_every=2, keep_checkpoints=5,
      seed=0))
  for key, value in changes.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _params(workdir) -> list[np.ndarray]:
  _, params = checkpoints.load_params(os.path.join(workdir, "params"))
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def _records(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# -- config errors: one line, before any device work -------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"learning_rate": 1.0}, r"unknown config key config.learning_rate; valid keys in config: "
                             r"tokenizer, input, optimizer, model"),
    ({"optimizer.beta1": 0.9}, r"unknown config key config.optimizer.beta1; valid keys"),
    ({"input.batchsize": 8}, r"unknown config key config.input.batchsize; valid keys"),
    ({"model.vision.widht": 8}, r"config.model: unknown SigLIPConfig field"),
    ({"total_steps": 0}, r"set exactly one of config.total_steps and config.epochs"),
    ({"micro_batches": 3}, r"batch_size 8 does not divide into config.micro_batches=3"),
    ({"on_nonfinite": "ignore"}, r"on_nonfinite 'ignore' is unknown; use one of skip, stop"),
    ({"optimizer.name": "lion"}, r"name 'lion' is not one of"),
    ({"log_every": "10"}, r"config.log_every must be int, got '10'"),
])
def test_config_errors_are_one_line(shapes, change, message):
  c = tiny_config(shapes).to_dict()
  for key, value in change.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(ValueError, match=message) as e:
    cfg = config_lib.parse_train_config(c)
    config_lib.model_config(cfg, 2048, 2048)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("change, devices, message", [
    ({"mesh.data": 3}, 8, r"mesh data=3 fsdp=1 model=1 does not fit the 8 devices"),
    ({"mesh.data": 2, "mesh.fsdp": 2, "mesh.model": 2, "micro_batches": 4}, 8,
     r"a micro-batch of 2 rows .* does not divide by the mesh's data x fsdp = 4; use a batch "
     r"size that is a multiple of 16"),
    ({"tokenizer": "/nonexistent/tokenizer.model"}, 1, r"config.tokenizer .* is not a file"),
    ({"init": "/nonexistent/ckpt"}, 1, r"config.init /nonexistent/ckpt is neither 'random' nor"),
    ({"input.members": [{"jsonl": "/nope.jsonl"}]}, 1, r"members\[0\].jsonl /nope.jsonl does not"),
])
def test_validation_against_devices_and_paths(shapes, change, devices, message):
  cfg = config_lib.parse_train_config(tiny_config(shapes, **change))
  with pytest.raises(ValueError, match=message) as e:
    config_lib.validate(cfg, devices)
  assert "\n" not in str(e.value)


def test_demo_config_parses(shapes):
  sys.path.insert(0, str(REPO / "configs"))
  try:
    import demo
  finally:
    sys.path.pop(0)
  c = demo.get_config(str(pathlib.Path(shapes["train"]).parent))
  cfg = config_lib.parse_train_config(c)
  model = config_lib.model_config(cfg, 2049, 2048)
  assert model.text.vocab_size == 2112 and model.image_token_id == 2048
  assert config_lib.validate(cfg, 1) == (1, 1, 1)


# -- training ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(shapes, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  calls = []

  def evaluate(predict):
    texts = predict.generate([np.zeros((28, 28, 3), np.uint8)], ["caption en"], 3)
    calls.append((predict.step, texts))
    return {"fake": float(predict.step)}

  last = trainer.train(tiny_config(shapes, eval_every=4), str(workdir), evaluate=evaluate)
  return workdir, last, calls


def _tensorboard(workdir) -> dict[str, list[tuple[int, float]]]:
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
  events.Reload()
  return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]}


def test_run_writes_metrics_params_and_checkpoints(uninterrupted, shapes):
  workdir, last, calls = uninterrupted
  records = _records(workdir)
  train = [r for r in records if "train_loss" in r]
  assert [r["step"] for r in train] == [1, 2, 4, 6]
  for key in ("lr", "l2_grads", "l2_params", "l2_updates", "examples_per_s", "tokens_per_s",
              "step_time", "avg_sup_seqlen", "max_sup_seqlen"):
    assert np.isfinite(train[-1][key]), key
  assert train[-1]["input/drawn/train.jsonl"] == 48.0
  assert train[-1]["train_loss"] < train[0]["train_loss"]
  assert [r["nonfinite_steps"] for r in train] == [0, 0, 0, 0]
  # A CPU's peak is unknown: the achieved model TFLOP/s is logged, the MFU is not.
  flops = metrics.train_flops_per_example(config_lib.model_config(
      config_lib.parse_train_config(tiny_config(shapes)), 2049, 2048), 20)
  assert "mfu" not in train[-1]
  assert train[-1]["tflops_per_s_per_device"] == pytest.approx(
      flops * train[-1]["examples_per_s"] / jax.device_count() / 1e12)
  # TensorBoard holds the same records (train and eval) at the same steps.
  assert _tensorboard(workdir)["train_loss"] == [(r["step"], pytest.approx(r["train_loss"]))
                                                 for r in train]
  assert _tensorboard(workdir)["eval/fake"] == [(4, 4.0), (6, 6.0)]
  assert (workdir / "loss.png").stat().st_size > 0
  # The eval hook ran every eval_every steps and at the end, its results under the same step.
  assert [c[0] for c in calls] == [4, 6] and all(isinstance(c[1][0], str) for c in calls)
  assert [(r["step"], r["eval/fake"]) for r in records if "eval/fake" in r] == [(4, 4.0),
                                                                                 (6, 6.0)]
  assert last["step"] == 6 and last["eval/fake"] == 6.0
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "6"]
  config, _ = checkpoints.load_params(workdir / "params")
  assert config.text.width == 32 and config.param_dtype == "float32"


def test_interrupted_runs_resume_bit_for_bit(shapes, uninterrupted, tmp_path):
  workdir = tmp_path / "resumed"
  trainer.train(tiny_config(shapes), str(workdir), max_steps=3)  # checkpoint at 2 and 3
  assert not (workdir / "params").exists()
  trainer.train(tiny_config(shapes), str(workdir), max_steps=1)  # 3 -> 4
  trainer.train(tiny_config(shapes), str(workdir))  # 4 -> 6
  for a, b in zip(_params(uninterrupted[0]), _params(workdir)):
    np.testing.assert_array_equal(a, b)
  train = [r["step"] for r in _records(workdir) if "train_loss" in r]
  assert train == [1, 2, 3, 4, 5, 6]  # each call logs its first and last step
  # The three calls' records all land in tensorboard/ (its event files are appended to).
  assert [s for s, _ in _tensorboard(workdir)["train_loss"]] == [1, 2, 3, 4, 5, 6]


def test_kill_9_mid_run_then_rerun_matches(shapes, uninterrupted, tmp_path, compilation_cache):
  workdir = tmp_path / "killed"
  config = tmp_path / "config.py"
  config.write_text(
      "import ml_collections\n"
      f"def get_config():\n  return ml_collections.ConfigDict({tiny_config(shapes).to_dict()!r})\n")
  command = [sys.executable, str(REPO / "train.py"), f"--config={config}",
             f"--workdir={workdir}", "--config.checkpoint_every=1"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **compile_cache.env(compilation_cache)}
  proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  deadline = time.time() + 120
  while time.time() < deadline and not (workdir / "checkpoints" / "3").exists():
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (workdir / "params").exists(), "the run finished before it was killed"
  rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "resuming from step" in rerun.stdout + rerun.stderr
  for a, b in zip(_params(uninterrupted[0]), _params(workdir)):
    np.testing.assert_array_equal(a, b)


def _exploding(shapes, **changes):
  # A constant lr of 1e15: Adam's first update is lr-sized (params ~1e15, still finite, their
  # norm too); the second forward overflows.
  return tiny_config(shapes, **{"optimizer.lr": 1e15, "optimizer.schedule.name": "constant",
                                "optimizer.schedule.warmup_steps": 0, "total_steps": 4,
                                **changes})


def test_non_finite_stop_raises_and_saves_nothing_past_it(shapes, tmp_path):
  with pytest.raises(trainer.NonFiniteError, match=r"^step 2: non-finite loss .* stopped"):
    trainer.train(_exploding(shapes, checkpoint_every=1), str(tmp_path / "stop"))
  assert sorted(os.listdir(tmp_path / "stop" / "checkpoints")) == ["1"]
  assert not (tmp_path / "stop" / "params").exists()


def test_non_finite_stop_between_fetches_names_the_first_step(shapes, tmp_path):
  """Metrics reach the host at log / checkpoint steps only: step 2's non-finite loss is found at
  step 3 (the first of those), before that step's checkpoint is written."""
  with pytest.raises(trainer.NonFiniteError,
                     match=r"^step 2: non-finite loss .* \(2 non-finite steps up to step 3, all "
                           r"dropped\) and the run stopped"):
    trainer.train(_exploding(shapes, checkpoint_every=3, log_every=3), str(tmp_path / "stop"))
  assert not os.path.exists(tmp_path / "stop" / "checkpoints") or not os.listdir(
      tmp_path / "stop" / "checkpoints")
  assert [r["step"] for r in _records(tmp_path / "stop")] == [1]


def test_non_finite_skip_drops_updates_and_finishes(shapes, tmp_path):
  trainer.train(_exploding(shapes, on_nonfinite="skip", log_every=1), str(tmp_path / "skip"))
  records = [r for r in _records(tmp_path / "skip") if "train_loss" in r]
  assert [r["finite"] for r in records] == [1.0, 0.0, 0.0, 0.0]
  # l2_params is measured before each update: steps 2 and 3 changed nothing.
  assert np.isfinite(records[1]["l2_params"]) and records[1]["l2_params"] > 1e15
  assert records[1]["l2_params"] == records[2]["l2_params"] == records[3]["l2_params"]
  assert all(np.isfinite(x).all() for x in _params(tmp_path / "skip"))
  # Logged at steps 1 and 4 only, the count since the last log says how many were dropped.
  trainer.train(_exploding(shapes, on_nonfinite="skip", log_every=4), str(tmp_path / "skip4"))
  assert [(r["step"], r["nonfinite_steps"]) for r in _records(tmp_path / "skip4")] == [(1, 0),
                                                                                       (4, 3)]


def test_demo_scoring_matches_boxes_by_iou_and_texts_exactly():
  from paligemma_jax.training.demo_data import correct
  target = "<loc0020><loc0072><loc0389><loc0440> red circle"
  assert correct("detect red circle", "<loc0030><loc0080><loc0400><loc0430> red circle", target)
  assert not correct("detect red circle", "<loc0030><loc0080><loc0400><loc0430> red square",
                     target)
  assert not correct("detect red circle", "<loc0500><loc0500><loc0900><loc0900> red circle",
                     target)
  assert not correct("detect red circle", "<loc0030> red circle", target)
  assert correct("caption en", "a red circle on the left ", "a red circle on the left")
  assert not correct("answer en what colour is the circle?", "blue", "red")


def test_fine_tune_from_a_params_checkpoint_at_a_new_resolution(shapes, uninterrupted, tmp_path):
  c = tiny_config(shapes, init=str(uninterrupted[0] / "params"), total_steps=2,
                  **{"model.vision.image_size": 56})
  trainer.train(c, str(tmp_path / "ft"))
  config, params = checkpoints.load_params(tmp_path / "ft" / "params")
  assert config.vision.image_size == 56 and config.text.final_logit_softcap is None
  assert params["params"]["vision"]["pos_embed"].shape == (16, 32)  # 2x2 grid resampled to 4x4
  records = [r for r in _records(tmp_path / "ft") if "train_loss" in r]
  # It starts from the trained weights: its first loss (~24.5) is below the random init's (~30.4).
  assert records[0]["train_loss"] < 0.9 * [r for r in _records(uninterrupted[0])
                                           if "train_loss" in r][0]["train_loss"]


def test_train_py_reports_bad_config_in_one_line(shapes, tmp_path):
  config = tmp_path / "config.py"
  config.write_text(
      "import ml_collections\n"
      f"def get_config():\n  return ml_collections.ConfigDict({tiny_config(shapes).to_dict()!r})\n")
  for flag, message in (("--config.mesh.data=3", "error: config.mesh data=3 fsdp=1 model=1 does "
                         "not fit the 1 devices"),
                        ("--config.learning_rate=3", "error: unknown config key 'learning_rate'")):
    done = subprocess.run([sys.executable, str(REPO / "train.py"), f"--config={config}",
                           f"--workdir={tmp_path / 'w'}", flag], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "XLA_FLAGS": ""})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr[-500:]
    assert len([l for l in done.stderr.splitlines() if l.startswith("error")]) == 1


def test_config_evals_run_through_the_evaluation_hook(shapes, tmp_path):
  evals = {"shapes": dict(evaluator="exact_match", data=dict(jsonl=shapes["test"]), batch_size=4,
                          text_len=20, decoding=dict(max_decode_len=8))}
  bad = tiny_config(shapes).to_dict() | {"evals": {"shapes": {**evals["shapes"],
                                                               "evaluator": "nope"}}}
  with pytest.raises(ValueError, match="nope") as e:
    config_lib.parse_train_config(bad)
  assert "\n" not in str(e.value)
  c = tiny_config(shapes, total_steps=2)
  c.evals = evals
  last = trainer.train(c, str(tmp_path / "evals"))
  scores = {k: v for k, v in last.items() if k.startswith("eval/shapes")}
  assert scores and all(0.0 <= v <= 1.0 or k.endswith("num") for k, v in scores.items()), last
  assert list((tmp_path / "evals" / "eval").glob("step_*2/shapes/metrics.json"))


def test_every_process_compiles_the_same_loss_start(monkeypatch):
  """The leading-image count is decided from each process's first batch; a process whose rows
  are not all image-first makes every process score from position 0 (else their steps differ)."""
  from paligemma_jax.training import trainer as trainer_lib
  images_first = {"tokens": np.array([[9, 9, 5], [9, 9, 6]])}
  assert trainer_lib._loss_start(images_first, 9, 2) == 2
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(trainer_lib.multihost_utils, "process_allgather",
                      lambda x: np.stack([x, np.int32(0)]))  # the other process: text first
  assert trainer_lib._loss_start(images_first, 9, 2) == 0


# -- two real JAX processes (jax.distributed on 127.0.0.1), 4 CPU devices each ------------------

TRAIN_WORKER = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
import jax
process, port, config, workdir = sys.argv[1:]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process))
from paligemma_jax.training import trainer
trainer.train(json.loads(config), workdir)
"""


@pytest.mark.slow
@pytest.mark.ci  # the one check that the trainer's cross-process wiring computes the same step
def test_two_processes_of_four_devices_train_like_one_of_eight(shapes, tmp_path):
  """2 processes x 4 CPU devices and 1 process x 8 devices: the same losses, f32, within 1e-5.

  Unshuffled, process p reads examples p, p + 2, ...: the two processes' rows of a global batch are
  the one process's rows, in another order (which only changes the order of sums). Both write the
  final params checkpoint (in the two-process run, each process its shards of one directory).
  """
  import socket
  c = tiny_config(shapes, total_steps=3, log_every=1, checkpoint_every=0,
                  **{"input.shuffle": False})
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, "-c", TRAIN_WORKER, str(p), str(port),
                             json.dumps(c.to_dict()), str(tmp_path / "two")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for p in range(2)]
  trainer.train(c, str(tmp_path / "one"))  # meanwhile: this process has 8 devices
  for proc in procs:
    output = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, output[-3000:]
  runs = [[r for r in _records(tmp_path / name) if "train_loss" in r] for name in ("one", "two")]
  assert [r["step"] for r in runs[1]] == [1, 2, 3]
  for key in ("train_loss", "l2_grads", "l2_params"):  # l2_params: before each step's update
    np.testing.assert_allclose([r[key] for r in runs[1]], [r[key] for r in runs[0]], rtol=1e-5,
                               err_msg=key)
  assert runs[1][-1]["train_loss"] < runs[1][0]["train_loss"]  # it trained
  # Adam divides by the gradients' scale, so near-zero gradients turn summation-order noise into
  # visible steps: params agree to 1% of one update (lr 1e-2), not to float precision.
  for a, b in zip(_params(tmp_path / "one"), _params(tmp_path / "two")):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  assert not list(tmp_path.glob("two/params.incomplete*"))
