"""LoRA / QLoRA against full fine-tuning: held-out accuracy on the demo task, and training memory.

`--accuracy` (default): the demo's toy task (training/demo_data.py) as a transfer. A base is
trained from scratch for `--base_steps` (a "pretrained" checkpoint that is right on part of the
held-out rows), then fine-tuned from it for `--steps` twice, with the same data order: every
weight trained (configs/demo.py's recipe, lr `--full_lr`), and LoRA adapters alone (rank
`--rank` on every matrix of both towers and the projector, lr `--lora_lr`; `--train_also`
regexes of base params trained in full with them, e.g. the tied embedding), optionally QLoRA
(`--qlora int8`). Printed: held-out accuracy per kind of row, trained parameters, checkpoint bytes
and time. Runs already finished in `--workdir` are read back, not trained again. Target (issue 15): LoRA within 5 points of full fine-tuning.

`--memory`: peak bytes of one device's compiled train step (`.lower(...).compile()
.memory_analysis()` on abstract params, nothing materialised) for PaliGemma 2 3B at 224 px,
batch 8, text 128: full fine-tuning (f32 masters + AdamW) against LoRA over a bf16 base and
QLoRA over an int8 / int4 base, with and without remat. Target: QLoRA-int8 and LoRA over bf16
with remat fit one 16 GB device.

    python benchmarks/lora.py --accuracy
    python benchmarks/lora.py --memory
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import runpy
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import cpu_description  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
EVERY_MATRIX = [r"llm/layers/(attn/(q|k|v|out)|mlp/(gate|up|down))/w",
                r"vision/layers/(attn/(q|k|v|out)|mlp/(fc1|fc2))/w", "projector/w"]


# -- --accuracy: the demo task as a transfer ------------------------------------------------------

def _size(path: pathlib.Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def accuracy_benchmark(args) -> None:
  from paligemma_jax.quiet_startup import quiet_startup
  quiet_startup()
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  from paligemma_jax.training import train
  from paligemma_jax.training.demo_data import ensure_demo_data, evaluator

  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="lora_bench_"))
  data = ensure_demo_data(workdir / "data")
  evaluate = evaluator(data["test"])
  demo = runpy.run_path(str(REPO / "configs" / "demo.py"))["get_config"]

  def run(name: str, steps: int, lr: float, init: str = "random", lora: dict | None = None):
    config = demo(str(workdir / "data"))
    config.total_steps, config.optimizer.lr = steps, lr
    config.log_every = 50
    if init != "random":  # the base checkpoint's config has the sizes
      config.init = init
      config.model.vision, config.model.text = {}, {}
    if lora:
      config.lora = lora
    trained = workdir / name / ("adapters" if lora else "params")
    t0 = time.perf_counter()
    if trained.exists():  # a finished run of an earlier call (same --workdir): its records
      records = [json.loads(line) for line in open(workdir / name / "metrics.jsonl")]
      last = {k: v for r in records if r["step"] == steps for k, v in r.items()}
    else:
      last = train(config, str(workdir / name), evaluate=evaluate)
    took = time.perf_counter() - t0
    print(json.dumps({"run": name, "steps": steps, "lr": lr, "seconds": round(took),
                      "loss": round(last["train_loss"], 4),
                      **{k: round(v, 4) for k, v in last.items() if k.startswith("eval/")},
                      "saved_bytes": _size(trained)}), flush=True)
    return last

  print(f"CPU: {cpu_description()}")
  run("base", args.base_steps, args.full_lr)
  base = str(workdir / "base" / "params")
  runs = {"full": run("full", args.steps, args.full_lr, base)}
  lora = dict(rank=args.rank, alpha=2.0 * args.rank, targets=EVERY_MATRIX,
              train_also=args.train_also)
  runs["lora"] = run(args.lora_name, args.steps, args.lora_lr, base, lora)
  if args.qlora:
    runs[f"qlora_{args.qlora}"] = run(f"qlora_{args.qlora}", args.steps, args.lora_lr, base,
                                      {**lora, "quantize": args.qlora, "group_size": 32})
  print("run | held-out acc | caption | answer | detect | final loss")
  for name, last in runs.items():
    acc = lambda k: f"{last.get(f'eval/{k}', float('nan')):.1%}"
    print(f"{name} | {acc('acc')} | {acc('acc/caption')} | {acc('acc/answer')} | "
          f"{acc('acc/detect')} | {last['train_loss']:.4f}")
  gap = runs["full"]["eval/acc"] - runs["lora"]["eval/acc"]
  print(f"LoRA is {gap * 100:+.1f} points below full fine-tuning (target: within 5)")


# -- --memory: compiled train steps on abstract params ------------------------------------------

def step_memory(config, batch: int, text: int) -> dict[str, float]:
  """GB of one device's compiled step: the trained state and frozen base from shapes, the rest
  (gradients, activations, optimizer temporaries) from XLA's memory analysis."""
  import optax
  from paligemma_jax import sharding
  from paligemma_jax.models import lora
  from paligemma_jax.training import optimizer as optimizer_lib
  from paligemma_jax.training import state as state_lib
  from paligemma_jax.training import step as step_lib
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  trained = state_lib.abstract_state(config, optax.identity(), mesh).params
  opt = optimizer_lib.OptimizerConfig(name="adamw", lr=1e-5, wd=0.01, grad_clip_norm=1.0)
  tx = optimizer_lib.make_optimizer(opt, trained, total_steps=1000)
  state = state_lib.abstract_state(config, tx, mesh)
  base = None
  if config.lora is not None:
    from paligemma_jax.models import param_shapes, quantize
    plain = lora.split(param_shapes(config.replace(quantization=None)))[0]
    cast = lambda x: jax.ShapeDtypeStruct(x.shape, config.compute_dtype)
    base = jax.tree.map(cast, plain)
    if config.quantization is not None:
      base = quantize.quantized_shapes(jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), plain), config.quantization)
      base = jax.tree_util.tree_map_with_path(
          lambda p, x: x if str(p[-1].key) == "w_scale" or not jnp.issubdtype(x.dtype, jnp.floating)
          else jax.ShapeDtypeStruct(x.shape, config.compute_dtype), base)
  trainable = jax.tree.map(lambda _: True, trained)
  compiled = step_lib.compile_on_shapes(config, tx, trainable, mesh, state,
                                        step_lib.abstract_batch(config, batch, text), base)
  a = compiled.memory_analysis()
  nbytes = lambda tree: sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
  peak = step_lib.peak_bytes(compiled)
  return {"trained": nbytes(state.params) / 1e9, "opt": nbytes(state.opt_state) / 1e9,
          "base": nbytes(base) / 1e9 if base is not None else 0.0,
          "temp": a.temp_size_in_bytes / 1e9, "peak": peak / 1e9}


def memory_benchmark(args) -> None:
  from paligemma_jax.models import get_variant
  from paligemma_jax.models.config import LoraConfig, QuantizationConfig
  print(f"CPU: {cpu_description()}")
  print(f"compiled train step of PaliGemma 2 3B at {args.res} px, batch {args.batch}, text "
        f"{args.text}, one device (XLA CPU), bf16 compute; AdamW f32 moments; LoRA rank "
        f"{args.rank} on the decoder's attention and MLP. GB = 1e9 bytes; peak = arguments + "
        "outputs - donated + temporaries")
  base = get_variant(f"paligemma2_3b_{args.res}").replace(
      dtype="bfloat16", param_dtype="float32", **{"text.final_logit_softcap": None})
  adapters = LoraConfig(rank=args.rank, alpha=float(args.rank))
  rows = [("full fine-tuning", base, "none"), ("full fine-tuning", base, "full"),
          ("LoRA, bf16 base", base.replace(lora=adapters), "none"),
          ("LoRA, bf16 base", base.replace(lora=adapters), "full"),
          ("QLoRA, int8 base", base.replace(lora=adapters, quantization=QuantizationConfig("int8")),
           "full"),
          ("QLoRA, int4 base", base.replace(lora=adapters, quantization=QuantizationConfig(
              "int4", 64)), "full")]
  print("setup | remat | trained params | optimizer state | frozen base | temporaries | peak | "
        "fits 16 GB | compile s")
  for name, config, remat in rows:
    t0 = time.perf_counter()
    mem = step_memory(config.replace(remat=remat), args.batch, args.text)
    print(f"{name} | {remat} | {mem['trained']:.2f} | {mem['opt']:.2f} | {mem['base']:.2f} | "
          f"{mem['temp']:.2f} | {mem['peak']:.2f} | {'yes' if mem['peak'] < 16 else 'no'} | "
          f"{time.perf_counter() - t0:.0f}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--memory", action="store_true", help="the memory table instead")
  parser.add_argument("--accuracy", action="store_true", help="the demo-task runs (default)")
  parser.add_argument("--workdir", help="where the runs go (default: a new temp folder)")
  parser.add_argument("--base_steps", type=int, default=300)
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--full_lr", type=float, default=3e-3)
  parser.add_argument("--lora_lr", type=float, default=3e-3)
  parser.add_argument("--rank", type=int, default=32)
  parser.add_argument("--qlora", choices=("int8", "int4"), help="also a QLoRA run")
  parser.add_argument("--lora_name", default="lora", help="the LoRA run's folder in --workdir")
  parser.add_argument("--train_also", nargs="*", default=[],
                      help="base params trained in full next to the adapters (regexes)")
  parser.add_argument("--res", type=int, default=224)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--text", type=int, default=128)
  args = parser.parse_args()
  (memory_benchmark if args.memory else accuracy_benchmark)(args)


if __name__ == "__main__":
  main()
