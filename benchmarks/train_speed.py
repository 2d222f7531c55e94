"""Train-step speed and memory: paligemma_jax's step against HF transformers + torch AdamW.

Default (CPU, what issue 12 asks): the real-width, reduced-depth PaliGemma 1 of
benchmarks/inference_speed.py (SigLIP So400m widths, Gemma-2B widths, vocab 257,216, `--layers`
layers each, 224 px) on the same random weights on both sides. One step = forward + backward +
global-norm clipping (1.0) + AdamW, bf16 compute over f32 master params:

- ours: `training.step.train_step` (jitted by `make_train_step`, state donated), big_vision's loss
  over the suffix with the vocab-chunked cross-entropy, `OptimizerConfig(name="adamw")`;
- HF: `PaliGemmaForConditionalGeneration` in train mode under `torch.autocast("cpu", bfloat16)`,
  `labels` = the suffix tokens (-100 elsewhere), `token_type_ids` for the prefix-LM mask,
  `clip_grad_norm_`, `torch.optim.AdamW(fused=True)` (the HF Trainer's default optimizer).
  `--hf_logits suffix` (default) asks HF for logits at the text positions only
  (`logits_to_keep`), as ours computes them; `all` is HF's default (logits at every position).

Both sides' f32 state (params, grads, two moments) is ~12.5 GB at the default sizes, so the sides
are never resident together: each turn rebuilds its side from the same saved checkpoint, runs
one untimed step (torch creates AdamW's state lazily) and one timed step, then frees it. Sides
take turns within each round; each figure is the best of `--repeats` rounds. Training the
257,216-row embedding too needs ~22 GB for our step alone (see `--memory`): on a smaller machine
run with `--freeze_embedding` (both sides: no gradient and no AdamW state for the tied table).

Printed with the figures: the CPU and its flags, our CPU path, the bf16 / f32 matmul peaks of
XLA (inference_speed.matmul_peak) and of torch measured in the same run, and the FLOP count.

`--memory`: the compiled memory analysis of our step (`.lower(...).compile().memory_analysis()`
on abstract params from `jax.eval_shape`, nothing materialised) for PaliGemma 2 3B at 224 / 448
and a reduced-depth model, on one device (the CPU).

    python benchmarks/train_speed.py                   # CPU, batch 8, text 32
    python benchmarks/train_speed.py --repeats 2 --freeze_embedding   # fits ~16 GB
    python benchmarks/train_speed.py --memory
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import (IMAGE_TOKEN, M, RES, VOCAB, cpu_description,  # noqa: E402
                             hf_reduced_depth, matmul_peak, prefill_flops)

from paligemma_jax import sharding  # noqa: E402
from paligemma_jax.conversion import load_hf_checkpoint  # noqa: E402
from paligemma_jax.models import cpu_path, get_variant  # noqa: E402


# The training package imports its trainer (Grain, TFDS) only on first use: these need neither.
from paligemma_jax.training import optimizer as optimizer_lib  # noqa: E402
from paligemma_jax.training import state as state_lib  # noqa: E402
from paligemma_jax.training import step as step_lib  # noqa: E402

LR, WD, CLIP = 1e-5, 0.01, 1.0


EMBEDDING = "llm/embedding"  # also the LM head (tied), 257,216 x D of the ~0.78B params


def optimizer_config(freeze_embedding: bool = False):
  """AdamW as torch's: lr-scaled decay on every parameter, global-norm clipping, constant lr."""
  return optimizer_lib.OptimizerConfig(
      name="adamw", lr=LR, wd=WD, grad_clip_norm=CLIP, wd_mults=((".*", 1.0),),
      schedule=optimizer_lib.ScheduleConfig(name="constant"),
      freeze=(EMBEDDING,) if freeze_embedding else ())


def train_batch(batch: int, text: int, seed: int = 0) -> dict[str, np.ndarray]:
  """[image placeholders M] + text // 2 prefix tokens + the rest as the supervised suffix."""
  rng = np.random.default_rng(seed)
  tokens = np.concatenate([np.full((batch, M), IMAGE_TOKEN),
                           rng.integers(4, 256_000, (batch, text))], 1).astype(np.int32)
  mask_ar = np.zeros(tokens.shape, np.int32)
  mask_ar[:, M + text // 2:] = 1
  return {"tokens": tokens, "input_mask": np.ones(tokens.shape, bool), "mask_ar": mask_ar,
          "mask_loss": mask_ar.copy(),
          "images": rng.uniform(-1, 1, (batch, 1, RES, RES, 3)).astype(np.float32)}


# -- the two sides: each `turn()` builds its state, runs an untimed and a timed step, frees it -----

class Ours:
  def __init__(self, folder: str, batch: dict, freeze_embedding: bool):
    self.folder, self.freeze = folder, freeze_embedding
    self.config, _ = self._params()
    self.mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    self.batch = sharding.shard_batch(batch, self.mesh)
    self.settings = step_lib.StepSettings(loss_start=M)
    self.step = None

  def _params(self):
    config, params = load_hf_checkpoint(self.folder, param_dtype="float32", dtype="bfloat16")
    return config, params

  def turn(self) -> tuple[float, float]:
    config, params = self._params()
    opt_config = optimizer_config(self.freeze)
    tx = optimizer_lib.make_optimizer(opt_config, params, total_steps=1000)
    trainable = jax.tree.map(lambda f: not f, optimizer_lib.frozen_mask(opt_config, params))
    state = state_lib.state_from_params(config, tx, self.mesh, params, seed=0)
    del params
    if self.step is None:  # compiled once; every turn's state has the same shardings
      shardings = jax.tree.map(lambda x: x.sharding, state)
      self.step = step_lib.make_train_step(config, tx, lambda _: jnp.float32(LR), trainable,
                                           self.settings, self.mesh, shardings)
    state, metrics = self.step(state, self.batch)
    loss = float(metrics["train_loss"])
    start = time.perf_counter()
    state, metrics = self.step(state, self.batch)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    del state
    gc.collect()
    return seconds, loss


class HF:
  def __init__(self, folder: str, batch: dict, logits: str, freeze_embedding: bool):
    import torch
    self.folder, self.freeze = folder, freeze_embedding
    ids = torch.as_tensor(batch["tokens"], dtype=torch.long)
    suffix = torch.as_tensor(batch["mask_loss"]).bool()
    labels = torch.where(suffix, ids, torch.full_like(ids, -100))
    text = batch["tokens"].shape[1] - M
    keep = text if logits == "suffix" else 0  # 0 = every position (HF's default)
    self.inputs = dict(
        input_ids=ids, attention_mask=torch.as_tensor(batch["input_mask"], dtype=torch.long),
        token_type_ids=torch.as_tensor(batch["mask_ar"], dtype=torch.long),
        pixel_values=torch.as_tensor(batch["images"][:, 0].transpose(0, 3, 1, 2)),
        labels=labels[:, -keep:] if keep else labels, logits_to_keep=keep, use_cache=False)

  def turn(self) -> tuple[float, float]:
    import torch
    import transformers as tr
    model = tr.PaliGemmaForConditionalGeneration.from_pretrained(
        self.folder, torch_dtype=torch.float32).train()
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as ours
    if self.freeze:
      model.get_input_embeddings().weight.requires_grad_(False)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trained, lr=LR, weight_decay=WD, fused=True)

    def step() -> float:
      with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**self.inputs).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(trained, CLIP)
      opt.step()
      opt.zero_grad(set_to_none=True)
      return float(loss.detach())

    loss = step()
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    del model, opt
    gc.collect()
    return seconds, loss


def torch_matmul_peak(dtype_name: str, repeats: int = 5) -> float:
  """FLOP/s of torch's (oneDNN's) matmul on the shape of `inference_speed.matmul_peak`: HF's side
  multiplies with it, so the fastest peak of the run must include it."""
  import torch
  dtype = getattr(torch, dtype_name)
  s, d, f = 512, 2048, 16384
  x, w = torch.ones(s, d, dtype=dtype), torch.ones(d, f, dtype=dtype)
  torch.matmul(x, w)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    torch.matmul(x, w)
    best = min(best, time.perf_counter() - start)
  return 2 * s * d * f / best


def measure_peaks(peaks: dict[str, float]) -> dict[str, float]:
  """The best of `peaks` and a new measurement: other tenants of a shared machine slow any one
  measurement down, and a low peak would flatter every % figure."""
  new = {"XLA bf16": matmul_peak(), "XLA f32": matmul_peak(jnp.float32),
         "torch bf16": torch_matmul_peak("bfloat16"), "torch f32": torch_matmul_peak("float32")}
  return {name: max(rate, peaks.get(name, 0.0)) for name, rate in new.items()}


def train_flops(config, batch: int, text: int) -> float:
  """3 x the forward FLOPs of a step (shared/reference/performance.md §1): SigLIP + projector
  matmuls on the M image tokens, the LLM's matmuls on S = M + text tokens, full (unhalved)
  attention QK^T and AV in both towers, the LM head 2·V·D on the `text` positions."""
  s = M + text
  head_at_one = batch * 2 * config.text.vocab_size * config.text.width
  return 3 * (prefill_flops(config, batch, s) + (text - 1) * head_at_one)


def speed_benchmark(args) -> None:
  import torch
  print(f"CPU: {cpu_description()}; torch threads {torch.get_num_threads()}")
  print(f"this CPU's path (ours): {cpu_path.current()}")
  peaks = measure_peaks({})
  print("measured matmul peaks ([512, 2048] x [2048, 16384], f32 accumulation; XLA's from "
        "benchmarks/inference_speed.py): " + ", ".join(f"{name} {rate / 1e9:.1f}"
                                                       for name, rate in peaks.items())
        + f" GFLOP/s (measured again after each round; the best is kept)")
  batch = train_batch(args.batch, args.text)
  with tempfile.TemporaryDirectory() as folder:
    hf_reduced_depth(args.layers).save_pretrained(folder)  # bf16-rounded random weights
    gc.collect()
    ours = Ours(folder, batch, args.freeze_embedding)
    hf = HF(folder, batch, args.hf_logits, args.freeze_embedding)
    config = ours.config
    flops = train_flops(config, args.batch, args.text)
    tokens = args.batch * (M + args.text)
    print(f"model: real width, {args.layers} + {args.layers} layers, vocab {VOCAB}, {RES} px; "
          f"batch {args.batch} x ({M} image + {args.text} text tokens, the last "
          f"{args.text - args.text // 2} supervised); f32 masters, bf16 compute, clip {CLIP}, "
          f"AdamW lr {LR} wd {WD}; HF logits at {args.hf_logits} positions; "
          + ("embedding / LM head FROZEN on both sides (no weight gradient, no AdamW state)"
             if args.freeze_embedding else "every parameter trained"))
    print(f"FLOPs per step (project convention, 3 x forward, no remat): {flops / 1e12:.3f} TFLOP "
          f"= 3 x [SigLIP + projector matmuls x {M} image tokens + LLM matmuls x {M + args.text} "
          f"tokens + attention 4·S²·N·H·L in both towers (full, not halved) + LM head 2·V·D x "
          f"{args.text} text positions] x batch; norms, softmax, elementwise and AdamW not counted")
    best = {"ours": (float("inf"), 0.0), "HF": (float("inf"), 0.0)}
    rss = {}
    for round_ in range(args.repeats):
      for name, side in (("ours", ours), ("HF", hf)):
        seconds, loss = side.turn()
        rss[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        print(f"  round {round_ + 1} {name}: {seconds:.2f} s (first-step loss {loss:.4f}, "
              f"process peak RSS so far {rss[name]:.1f} GiB)", flush=True)
        best[name] = (min(best[name][0], seconds), loss)
      peaks = measure_peaks(peaks)
  fastest = max(peaks.values())
  print("best matmul peaks: " + ", ".join(f"{name} {rate / 1e9:.1f}" for name, rate in
                                          peaks.items()) + " GFLOP/s")
  print("side | step s | tokens/s | examples/s | TFLOP/s | % fastest peak")
  for name, (seconds, _) in best.items():
    print(f"{name} | {seconds:.2f} | {tokens / seconds:.0f} | {args.batch / seconds:.2f} | "
          f"{flops / seconds / 1e12:.3f} | {100 * flops / seconds / fastest:.0f}%")
  print(f"ours / HF tokens/s: {best['HF'][0] / best['ours'][0]:.2f}x (targets: >= 2x, and >= 50% "
        f"of the fastest matmul peak, {fastest / 1e9:.1f} GFLOP/s; % of XLA's bf16 peak: ours "
        f"{100 * flops / best['ours'][0] / peaks['XLA bf16']:.0f}%)")
  print(f"first-step losses (same weights and batch): ours {best['ours'][1]:.4f}, "
        f"HF {best['HF'][1]:.4f}")


# -- --memory: the compiled step's memory analysis on abstract params -----------------------------

def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def step_memory(config, batch: int, text: int, remat: str, freeze_embedding: bool = False
                ) -> dict:
  """Bytes of one device's compiled step: state parts from shapes, the rest from XLA."""
  config = config.replace(dtype="bfloat16", param_dtype="float32", remat=remat,
                          **{"text.final_logit_softcap": None})
  mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  import optax
  params = state_lib.abstract_state(config, optax.identity(), mesh).params
  opt_config = optimizer_config(freeze_embedding)
  tx = optimizer_lib.make_optimizer(opt_config, params, total_steps=1000)
  trainable = jax.tree.map(lambda f: not f, optimizer_lib.frozen_mask(opt_config, params))
  state = state_lib.abstract_state(config, tx, mesh)
  compiled = step_lib.compile_on_shapes(config, tx, trainable, mesh, state,
                                        step_lib.abstract_batch(config, batch, text))
  analysis = compiled.memory_analysis()
  return {"params": _nbytes(state.params), "opt": _nbytes(state.opt_state),
          "args": analysis.argument_size_in_bytes, "out": analysis.output_size_in_bytes,
          "alias": analysis.alias_size_in_bytes, "temp": analysis.temp_size_in_bytes}


def memory_benchmark(args) -> None:
  print("compiled memory of our train step (one device, XLA CPU; AdamW f32 moments, f32 "
        "masters, bf16 compute; params and optimizer state from jax.eval_shape, the rest from "
        "memory_analysis(); gradients and activations are inside 'temporaries'; peak = "
        "arguments + outputs - aliased (donated) + temporaries). GB = 1e9 bytes")
  # (variant, res, layers or None = all, remat, embedding frozen); the last two are this
  # benchmark's speed model (PaliGemma 1 widths), trained in full and with the embedding frozen.
  rows = [("paligemma2_3b", 224, None, "none", False), ("paligemma2_3b", 224, None, "full", False),
          ("paligemma2_3b", 448, None, "full", False),
          ("paligemma2_3b", 224, args.layers, "none", False),
          ("paligemma_3b", 224, args.layers, "none", False),
          ("paligemma_3b", 224, args.layers, "none", True)]
  print("model | res | layers | remat | embedding | batch x text | params | opt state | "
        "temporaries | arguments | outputs | aliased | peak | compile s")
  for variant, res, layers, remat, frozen in rows:
    config = get_variant(f"{variant}_{res}")
    if layers:
      config = config.replace(**{"vision.depth": layers, "text.depth": layers})
    start = time.perf_counter()
    mem = step_memory(config, args.batch, args.text, remat, frozen)
    gb = {k: v / 1e9 for k, v in mem.items()}
    peak = gb["args"] + gb["out"] - gb["alias"] + gb["temp"]
    print(f"{variant} | {res} | {config.vision.depth} + {config.text.depth} | {remat} | "
          f"{'frozen' if frozen else 'trained'} | {args.batch} x {args.text} | {gb['params']:.2f} | {gb['opt']:.2f} | "
          f"{gb['temp']:.2f} | {gb['args']:.2f} | {gb['out']:.2f} | {gb['alias']:.2f} | "
          f"{peak:.2f} | {time.perf_counter() - start:.0f}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=2, help="SigLIP and Gemma layers each")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--text", type=int, default=32, help="text tokens (half prefix, half suffix)")
  parser.add_argument("--repeats", type=int, default=3, help="rounds; each side's best is kept")
  parser.add_argument("--hf_logits", choices=("suffix", "all"), default="suffix",
                      help="HF's LM head on the text positions (as ours) or on every position")
  parser.add_argument("--freeze_embedding", action="store_true",
                      help="train all but the tied embedding / LM head, on both sides (full "
                      "fine-tuning of the 257,216-row table needs ~22 GB for our step alone)")
  parser.add_argument("--memory", action="store_true", help="compiled memory analysis instead")
  args = parser.parse_args()
  (memory_benchmark if args.memory else speed_benchmark)(args)


if __name__ == "__main__":
  main()
