"""The memory model (training/memory_model.py) against XLA's compiled step, and its TPU table.

(a) `--check`: compiles `training.step.train_step` on abstract state (nothing materialised) for
    reduced-depth PaliGemma 2 3B (real widths, 2 / 4 layers per tower, vocab 257,152) and
    prints the model's bytes per device beside `.lower(...).compile().memory_analysis()`:
    compiled peak = arguments + outputs - aliased (donated state) + temporaries. Optimizer:
    big_vision's adam (f32 moments), f32 masters, bf16 compute. Rows with fsdp > 1 run on
    simulated CPU devices (this script sets --xla_force_host_platform_device_count=8).
(b) `--table`: bytes per chip of PG2 3B / 10B / 28B at 224 / 448 / 896 on TPU v5e (16 GB HBM)
    and v5p (95 GB) slices, every chip in one FSDP group, remat "full", adam, at a per-chip
    batch (default: the global batch 256 of the transfers split over the chips, at least 1),
    and whether it fits.

    python benchmarks/memory_model.py --check
    python benchmarks/memory_model.py --table
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from inference_speed import cpu_description  # noqa: E402

from paligemma_jax.models import PaliGemmaConfig, get_variant  # noqa: E402
from paligemma_jax.training import memory_model  # noqa: E402
from paligemma_jax.training import step as step_lib  # noqa: E402
from paligemma_jax.training.memory_model import step_memory  # noqa: E402

GB = 1e9
CHIPS = {"v5e": 16e9, "v5p": 95e9}
TEXT = {224: 128, 448: 512, 896: 512}  # the pretraining stages' text lengths (performance.md §1)


def reduced(variant: str, layers: int) -> PaliGemmaConfig:
  return get_variant(variant).replace(**{"vision.depth": layers, "text.depth": layers})


def compiled_memory(config: PaliGemmaConfig, batch: int, text: int, remat: str, fsdp: int = 1
                    ) -> dict[str, int]:
  """memory_analysis() of one device's step; `batch` per device, the params over `fsdp`."""
  compiled = memory_model.compiled_step(config, batch, text, remat, fsdp)
  a = compiled.memory_analysis()
  return {"args": a.argument_size_in_bytes, "temp": a.temp_size_in_bytes,
          "peak": step_lib.peak_bytes(compiled)}


# (variant, layers per tower, per-device batch, text, remat, fsdp)
CHECKS = [
    ("paligemma2_3b_224", 2, 2, 128, "none", 1),    # state-bound: the update phase
    ("paligemma2_3b_224", 4, 2, 128, "full", 1),
    ("paligemma2_3b_224", 2, 32, 128, "none", 1),   # activation-bound
    ("paligemma2_3b_224", 4, 32, 128, "none", 1),
    ("paligemma2_3b_224", 2, 128, 128, "full", 1),
    ("paligemma2_3b_224", 4, 128, 128, "full", 1),
    ("paligemma2_3b_224", 2, 128, 128, "dots", 1),
    ("paligemma2_3b_448", 2, 8, 128, "none", 1),
    ("paligemma2_3b_448", 2, 32, 128, "full", 1),
    # not used to fit the constants:
    ("paligemma2_3b_224", 3, 16, 128, "none", 1),
    ("paligemma2_3b_448", 3, 16, 256, "full", 1),
    ("paligemma2_3b_448", 2, 8, 64, "dots", 1),
    # 8 simulated devices, params and optimizer state over fsdp = 8
    ("paligemma2_3b_224", 2, 4, 128, "full", 8),
    ("paligemma2_3b_224", 2, 16, 128, "none", 8),
    ("paligemma2_3b_224", 2, 64, 128, "full", 8),
]


def check(rows=CHECKS) -> None:
  print(f"CPU: {cpu_description()}; jax {jax.__version__}")
  print("model vs compiled bytes per device (GB = 1e9 B); adam, f32 masters, bf16 compute")
  print("variant | layers | batch/dev | text | remat | fsdp | model: params + opt + grads | "
        "activations | model peak | compiled peak | model / compiled | compile s")
  for variant, layers, batch, text, remat, fsdp in rows:
    config = reduced(variant, layers)
    start = time.perf_counter()
    got = compiled_memory(config, batch, text, remat, fsdp)
    m = step_memory(config, batch, text, fsdp, remat, "adam", backend="cpu")
    print(f"{variant} | {layers} + {layers} | {batch} | {text} | {remat} | {fsdp} | "
          f"{m.params / GB:.2f} + {m.opt_state / GB:.2f} + {m.grads / GB:.2f} | "
          f"{m.activations / GB:.2f} | {m.total / GB:.2f} | {got['peak'] / GB:.2f} | "
          f"{m.total / got['peak']:.3f} | {time.perf_counter() - start:.0f}", flush=True)


def per_chip_batch(chips: int, global_batch: int) -> int:
  return max(1, global_batch // chips)


def table(global_batch: int = 256, slices=(16, 64, 256)) -> None:
  print(f"bytes per chip, GB; full FSDP over the slice, remat full, adam (f32 masters + "
        f"moments), bf16 compute; global batch {global_batch} (per-chip = global / chips, at "
        f"least 1); text 128 at 224, 512 at 448 / 896")
  print("model | res | chips | batch/chip | params | opt state | grads | activations | "
        "copies, gathers, scratch | total | "
        + " | ".join(f"fits {chip} ({hbm / GB:.0f} GB)" for chip, hbm in CHIPS.items()))
  for size in ("3b", "10b", "28b"):
    for res in (224, 448, 896):
      config = get_variant(f"paligemma2_{size}_{res}")
      for chips in slices:
        b = per_chip_batch(chips, global_batch)
        m = step_memory(config, b, TEXT[res], chips, "full", "adam")
        other = m.total - m.params - m.opt_state - m.grads - m.activations
        fits = " | ".join("yes" if m.total <= hbm else "no" for hbm in CHIPS.values())
        print(f"PG2-{size.upper()} | {res} | {chips} | {b} | {m.params / GB:.2f} | "
              f"{m.opt_state / GB:.2f} | {m.grads / GB:.2f} | {m.activations / GB:.2f} | "
              f"{other / GB:.2f} | {m.total / GB:.2f} | {fits}", flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true", help="model vs compiled (CPU)")
  parser.add_argument("--table", action="store_true", help="the v5e / v5p table")
  parser.add_argument("--global_batch", type=int, default=256)
  args = parser.parse_args()
  if args.table or not args.check:
    table(args.global_batch)
  if args.check:
    check()


if __name__ == "__main__":
  main()
