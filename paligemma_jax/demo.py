"""CPU demo: a small random PaliGemma 2, a stand-in tokenizer and a generated image, run end to end.

Prefill + greedy decoding through the same code paths as real checkpoints (processor -> SigLIP ->
projector -> Gemma 2 with KV cache). The weights are random, so the text is gibberish; what the
demo shows is the pipeline, its shapes and its speed. Until the trainer exists this is the job the
README's first command runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
import PIL.Image

from paligemma_jax.api import make_processor
from paligemma_jax.data import Tokenizer, train_standin_tokenizer
from paligemma_jax.inference import generate
from paligemma_jax.models import GemmaConfig, PaliGemmaConfig, SigLIPConfig, init_params, param_count
from paligemma_jax.quiet_startup import quiet_startup

DEMO_IMAGE_SIZE = 112


def demo_config(vocab_size: int, image_token_id: int) -> PaliGemmaConfig:
  """A PaliGemma-2-shaped model small enough for a laptop CPU (about 10M parameters)."""
  return PaliGemmaConfig(
      vision=SigLIPConfig(width=128, depth=2, mlp_dim=256, num_heads=4, patch_size=14,
                          image_size=DEMO_IMAGE_SIZE),
      text=GemmaConfig(version=2, width=256, depth=4, mlp_dim=512, num_heads=4, num_kv_heads=2,
                       head_dim=64, vocab_size=vocab_size, attn_logit_softcap=50.0,
                       final_logit_softcap=30.0, sliding_window=None),
      image_token_id=image_token_id)


def demo_image(size: int = 160) -> PIL.Image.Image:
  """A generated picture: a colour gradient with a disc in it."""
  y, x = np.mgrid[0:size, 0:size] / size
  rgb = np.stack([x, y, 1 - x], -1)
  rgb[(x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.04] = (1.0, 0.8, 0.1)
  return PIL.Image.fromarray((rgb * 255).astype(np.uint8))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--prompt", action="append", help="prompt(s); default: two VQA prompts")
  parser.add_argument("--max-new-tokens", type=int, default=8)
  args = parser.parse_args(argv)
  quiet_startup()
  prompts = args.prompt or ["caption en", "answer en what colour is the disc?"]

  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    tokenizer_path = train_standin_tokenizer(f"{tmp}/standin")
    print(f"[1/4] trained a stand-in Gemma tokenizer ({time.perf_counter() - t0:.2f}s)")
    tokenizer = Tokenizer(tokenizer_path)
    config = demo_config(tokenizer.vocab_size + 64 - tokenizer.vocab_size % 64,
                         tokenizer.image_token_id)
    t0 = time.perf_counter()
    params = init_params(config, jax.random.key(0, impl="rbg"))  # rbg compiles faster
    print(f"[2/4] random PaliGemma 2 model: {param_count(config):,} params, "
          f"{config.vision.num_patches} image tokens at {DEMO_IMAGE_SIZE}px, "
          f"{config.text.depth} Gemma 2 layers ({time.perf_counter() - t0:.2f}s)")

    processor = make_processor(config, tokenizer)
    batch = processor([demo_image()] * len(prompts), prompts)
    print(f"[3/4] processed {len(prompts)} prompt(s) + image: tokens {batch['tokens'].shape}, "
          f"images {batch['images'].shape}")

    t0 = time.perf_counter()
    out = generate(config, params, batch, args.max_new_tokens, tokenizer.eos_id)
    compile_and_run = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = generate(config, params, batch, args.max_new_tokens, tokenizer.eos_id)
    run = time.perf_counter() - t0
    print(f"[4/4] prefill + {args.max_new_tokens} greedy steps: {compile_and_run:.2f}s with "
          f"compilation, {run * 1000:.0f} ms after")
    for prompt, ids in zip(prompts, out):
      print(f"  {prompt!r} -> ids {ids.tolist()} -> {tokenizer.decode(ids)!r}")
    print("(random weights: the text is meaningless; load a checkpoint with "
          "paligemma_jax.load_checkpoint for real output)")


if __name__ == "__main__":
  main()
