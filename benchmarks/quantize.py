"""Weight-only int8 / int4 quantization (models/quantize.py): memory, quality and decode speed.

1. Parameter bytes of PaliGemma 2 3B / 10B / 28B (224) at bf16, int8 and int4, decoder only and
   decoder + SigLIP quantized, from `jax.eval_shape` (nothing is allocated).
2. On the real-width, reduced-depth PaliGemma 1 of benchmarks/inference_speed.py (SigLIP So400m
   and Gemma-2B widths, `--layers` layers each, vocab 257,216, random fan-in-scaled bf16 weights,
   the embedding scaled so logits have std ~3): top-1 agreement and max / mean |dlogit| of int8
   and int4 against bf16 over the image positions of a fixed batch (one forward pass, so every
   variant sees the same context), and prefill ms and decode ms/token of each at batch 1 (best
   of `--repeats`, variants taking turns). Image positions, because in a random-weight model a
   text position's residual stream is dominated by its own token's embedding: the tied head's
   top-1 there is the input token itself, by margins of ~D x std^2, whatever the quantization.

Random weights have no outlier channels, so real checkpoints may quantize somewhat worse; the
timings are of a shared CPU and rough. The CPU's name and flags are printed with the figures.

    python benchmarks/quantize.py
    python benchmarks/quantize.py --skip_model        # the byte table only
    python benchmarks/quantize.py --skip_quality --int4_groups   # int8 vs bf16 decode speed only
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from inference_speed import M, cpu_description, ours_runner, phases, prompts  # noqa: E402

from paligemma_jax.models import (PaliGemma, attention_masks, default_positions,  # noqa: E402
                                  get_variant, init_params, param_shapes, quantize)
from paligemma_jax.models.config import QuantizationConfig  # noqa: E402

VOCAB = 257_216
GB = 1e9


def byte_table(group_size: int) -> None:
  print(f"parameter bytes (GB = 1e9 bytes; int4 groups of {group_size}, float32 scales; the "
        "embedding, norms, biases and projector stay bf16)")
  print("model | bf16 | int8 | int4 | int8 +SigLIP | int4 +SigLIP")
  for name in ("paligemma2_3b_224", "paligemma2_10b_224", "paligemma2_28b_224"):
    config = get_variant(name, dtype="bfloat16", param_dtype="bfloat16")
    shapes = param_shapes(config)
    row = [quantize.param_bytes(shapes)]
    for vision in (False, True):
      for kind in ("int8", "int4"):
        quant = QuantizationConfig(kind, group_size, vision)
        row.append(quantize.param_bytes(quantize.quantized_shapes(shapes, quant)))
    print(f"{name} | " + " | ".join(f"{b / GB:.2f}" for b in row))


def reduced_depth(layers: int):
  config = get_variant("paligemma_3b_224").replace(**{
      "dtype": "bfloat16", "param_dtype": "bfloat16", "text.depth": layers,
      "vision.depth": layers, "text.vocab_size": VOCAB})
  params = init_params(config, jax.random.key(0, impl="rbg"))
  # The init's N(0, 1) embedding gives tied-head logits of std ~sqrt(D) (~45) and top-2 margins
  # in the hundreds, where any quantization agrees; std 3 / sqrt(D) gives logits of std ~3 over
  # 257k rows (top-2 margins ~0.5, trained checkpoints' logits are O(10)), so top-1 can move.
  llm = params["params"]["llm"]
  llm["embedding"] = (llm["embedding"] * (3 / config.text.width ** 0.5)).astype(jnp.bfloat16)
  return config, params


def image_logits_fn(config):
  """Logits [B, M, V] at the M image positions of a prefix-LM forward pass."""
  model = PaliGemma(config)

  def run(params, batch):
    image_tokens = model.apply(params, batch["images"], method=PaliGemma.encode_images)
    x = model.apply(params, batch["tokens"], image_tokens, method=PaliGemma.embed_inputs)
    positions = default_positions(batch["input_mask"], config.position_offset)
    mask, sliding = attention_masks(config, batch["input_mask"], batch["mask_ar"])
    h, _ = model.apply(params, x, positions, mask, sliding, None, method=PaliGemma.decode_hidden)
    return model.apply(params, h[:, :M], method=PaliGemma.logits)
  return jax.jit(run)


def quality(config, variants: dict, batch_size: int, text: int) -> None:
  batch = prompts(batch_size, text, seed=1)
  ref = np.asarray(image_logits_fn(config)(variants["bf16"][1], batch))
  top2 = np.sort(ref, axis=-1)[..., -2:]
  margin = top2[..., 1] - top2[..., 0]
  print(f"quality: {ref.shape[0] * ref.shape[1]} image positions (batch {batch_size} x {M}), "
        f"bf16 logits |max| {np.abs(ref).max():.1f}, median top-2 margin {np.median(margin):.2f}")
  print("variant | top-1 = bf16 | top-1 where margin > 0.5 | max |dlogit| | mean |dlogit|")
  clear = margin > 0.5
  for name, (cfg, params) in variants.items():
    if name == "bf16":
      continue
    out = np.asarray(image_logits_fn(cfg)(params, batch))
    agree = np.argmax(out, -1) == np.argmax(ref, -1)
    d = np.abs(out - ref)
    print(f"{name} | {100 * agree.mean():.1f}% | {100 * agree[clear].mean():.1f}% "
          f"({clear.sum()}) | {d.max():.3f} | {d.mean():.4f}")
    del out


def speed(variants: dict, text: int, new_tokens: int, repeats: int) -> None:
  batch = prompts(1, text)
  runners = {name: ours_runner(cfg, params, batch) for name, (cfg, params) in variants.items()}
  times = phases(runners, new_tokens, repeats)
  base = times["bf16"][1]
  print(f"speed: batch 1, prompt 256 image + {text} text tokens, {new_tokens} new tokens, best "
        f"of {repeats} (rough: a shared machine)")
  print("variant | params GB | prefill ms | decode ms/token | decode vs bf16")
  for name, (pre, dec) in times.items():
    gb = quantize.param_bytes(variants[name][1]) / GB
    print(f"{name} | {gb:.2f} | {pre * 1e3:.0f} | {dec * 1e3:.1f} | {base / dec:.2f}x")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--group_size", type=int, default=128, help="int4 group of the byte table")
  parser.add_argument("--int4_groups", type=int, nargs="*", default=[128, 32],
                      help="int4 group sizes measured on the reduced-depth model (none: int8 only)")
  parser.add_argument("--quality_batch", type=int, default=2)
  parser.add_argument("--quality_text", type=int, default=16)
  parser.add_argument("--text", type=int, default=16)
  parser.add_argument("--new_tokens", type=int, default=16)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_model", action="store_true")
  parser.add_argument("--skip_quality", action="store_true", help="timings only")
  args = parser.parse_args()
  print(f"CPU: {cpu_description()}")
  byte_table(args.group_size)
  if args.skip_model:
    return
  config, params = reduced_depth(args.layers)
  variants = {"bf16": (config, params)}
  quants = [QuantizationConfig("int8")] + [QuantizationConfig("int4", g) for g in args.int4_groups]
  for quant in quants:
    name = quant.kind if quant.kind == "int8" else f"int4/g{quant.group_size}"
    variants[name] = (config.replace(quantization=quant), quantize.quantize_params(params, quant))
  print(f"model: PaliGemma 1 widths, {args.layers} layers each, vocab {VOCAB}, random bf16 "
        "weights (fan-in init); only the decoder's matmul weights quantized")
  if not args.skip_quality:
    quality(config, variants, args.quality_batch, args.quality_text)
  speed(variants, args.text, args.new_tokens, args.repeats)


if __name__ == "__main__":
  main()
