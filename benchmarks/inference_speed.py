"""Prefill latency and decode speed: paligemma_jax against HF transformers, side by side.

Default (CPU, what the issue asks): the real-width, reduced-depth PaliGemma 1 of the test suite
(SigLIP So400m widths, Gemma-2B widths, 257,216-row vocab, `--layers` layers each), bf16, the
same random weights on both sides. Prints, per batch size, prefill ms and decode ms/token for
both, the ratios, and both against this machine's fastest matmul (XLA's bf16 and f32 GEMMs,
torch's bf16 one, and `cpu_matmul`'s AVX-512 BF16 GEMM where the CPU runs it) and memory read
bandwidth, measured in the same run.

`--full` (an accelerator): the real PaliGemma-3B-224 shapes with random weights, ours only,
batch-1 decode ms/token against the HBM roofline and batch-64 examples/s.

`--paths` also times ours on other CPU paths (`models/cpu_path.py`: how prefill GEMMs multiply
bf16, and which decode kernels run), each compiled on its own and taking turns with the others;
the default is the path this CPU chooses. The CPU's name and flags are printed with the figures.

    python benchmarks/inference_speed.py                 # CPU, batch 1 and 8
    python benchmarks/inference_speed.py --paths auto bf16/avx512bf16 f32/avx2
    python benchmarks/inference_speed.py --full          # GPU/TPU
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from paligemma_jax.conversion import load_hf_checkpoint
from paligemma_jax.inference import decode_tokens
from paligemma_jax.models import cpu_matmul, cpu_path, get_variant, init_params

IMAGE_TOKEN, VOCAB, RES = 257_152, 257_216, 224
M = (RES // 14) ** 2


def best_of(fn, repeats: int) -> float:
  """Minimum wall time of `fn()` over `repeats` runs (after one warm-up), in seconds."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


# -- machine peaks, measured in this run ---------------------------------------------------------

def matmul_peak(dtype=jnp.bfloat16, repeats: int = 5) -> float:
  """FLOP/s of a prefill-shaped matmul in `dtype` (f32 accumulation, as the model does)."""
  s, d, f = 512, 2048, 16384
  x = jnp.ones((s, d), dtype)
  w = jnp.ones((d, f), dtype)
  mm = jax.jit(lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32))
  return 2 * s * d * f / best_of(lambda: mm(x, w).block_until_ready(), repeats)


def kernel_gemm_peak(repeats: int = 5) -> float | None:
  """FLOP/s of `matmul_peak`'s product through `cpu_matmul`'s AVX-512 BF16 GEMM (a layer of a
  stack, as the prefill runs it), or None where this CPU cannot run it."""
  if not cpu_path.kernels_runnable("avx512bf16") or not cpu_matmul.available():
    return None
  s, d, f = 512, 2048, 16384
  x = jnp.ones((s, d), jnp.bfloat16)
  w = jnp.ones((1, d, f), jnp.bfloat16)
  with cpu_path.forced(prefill="avx512bf16"):
    mm = jax.jit(lambda x, w: cpu_matmul.einsum("SD,DF->SF", x, cpu_matmul.LayerSlice(w, 0)))
    mm = mm.lower(x, w).compile()
  return 2 * s * d * f / best_of(lambda: mm(x, w).block_until_ready(), repeats)


def torch_matmul_peak(repeats: int = 5) -> float:
  """FLOP/s of the same product in torch's bf16 matmul (what HF's prefill runs on)."""
  import torch
  s, d, f = 512, 2048, 16384
  x, w = torch.ones((s, d), dtype=torch.bfloat16), torch.ones((d, f), dtype=torch.bfloat16)
  return 2 * s * d * f / best_of(lambda: torch.matmul(x, w), repeats)


def read_bandwidth(repeats: int = 5) -> float:
  """Bytes/s of the fastest of several ways to stream 1 GiB (the roofline's denominator).

  A reduction alone may run on one core; a f32 matrix-vector product uses all of them. Taking
  the best keeps the roofline honest (a low bandwidth would flatter every % figure).
  """
  rates = []
  for dtype in (jnp.bfloat16, jnp.float32):
    x = jnp.ones((1 << 30) // jnp.dtype(dtype).itemsize, dtype)
    total = jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32))
    rates.append(x.nbytes / best_of(lambda: total(x).block_until_ready(), repeats))
  w = jnp.ones((1 << 16, 1 << 12), jnp.float32)
  v = jnp.ones((2, 1 << 12), jnp.float32)
  gemv = jax.jit(lambda w, v: jnp.dot(v, w.T))
  rates.append(w.nbytes / best_of(lambda: gemv(w, v).block_until_ready(), repeats))
  if jax.default_backend() == "cpu" and cpu_matmul.available():  # our decode kernel, one row
    w = jnp.ones((1 << 18, 1 << 11), jnp.bfloat16)
    v = jnp.ones((1, 1 << 11), jnp.float32)
    head = jax.jit(lambda w, v: cpu_matmul.einsum("MC,FC->MF", v, w))
    rates.append(w.nbytes / best_of(lambda: head(w, v).block_until_ready(), repeats))
  return max(rates)


# -- models -----------------------------------------------------------------------------------

def hf_reduced_depth(layers: int, image_token: int = IMAGE_TOKEN):
  import torch
  import transformers as tr
  vision = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                num_hidden_layers=layers, num_attention_heads=16, patch_size=14, image_size=RES,
                vision_use_head=False, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
  text = tr.GemmaConfig(hidden_size=2048, intermediate_size=16384, num_hidden_layers=layers,
                        num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                        vocab_size=VOCAB, hidden_activation="gelu_pytorch_tanh")
  config = tr.PaliGemmaConfig(vision_config=vision, text_config=text.to_dict(),
                              image_token_index=image_token, vocab_size=VOCAB,
                              projection_dim=2048)
  torch.manual_seed(0)
  model = tr.PaliGemmaForConditionalGeneration(config).eval()
  with torch.no_grad():  # fan-in scale, so logits are not flat and decoding is not trivial
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        p.normal_(0, p.shape[-1] ** -0.5 if "embed" not in name else 1.0)
  model.generation_config.pad_token_id = 0
  return model.to(torch.bfloat16)


def prompts(batch: int, text: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  tokens = np.concatenate([np.full((batch, M), IMAGE_TOKEN),
                           rng.integers(4, 256_000, (batch, text))], 1).astype(np.int32)
  return {"tokens": tokens, "input_mask": np.ones(tokens.shape, bool),
          "mask_ar": np.zeros(tokens.shape, np.int32),
          "images": rng.uniform(-1, 1, (batch, 1, RES, RES, 3)).astype(np.float32)}


def ours_runner(config, params, batch: dict, path: str = "auto"):
  """run(n): prefill + n greedy tokens (eos disabled so every row runs n steps), through
  `decode_tokens` as `generate` calls it (no per-step logits kept, as HF's generate by default).

  `path` is "auto" (this CPU's choice) or "PREFILL/KERNELS" (see `cpu_path`): the program is
  compiled ahead of time on that path, so several paths can take turns in one run.
  """
  args = (params, batch["tokens"], batch["images"], batch["input_mask"], batch["mask_ar"])
  prefill, kernels = (None, None) if path == "auto" else path.split("/")
  compiled = {}

  def run(n: int) -> None:
    if n not in compiled:
      with cpu_path.forced(prefill, kernels):
        compiled[n] = decode_tokens.lower(*args, config=config, max_new_tokens=n,
                                          eos_id=-1).compile()
    compiled[n](*args, eos_id=-1).tokens.block_until_ready()
  return run


def cpu_description() -> str:
  """The CPU's model name and the flags that decide its path (figures are only meaningful with
  them: the project's machines differ)."""
  flags = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16")
           if f in cpu_path.cpu_flags()]
  return f"{cpu_path.cpu_name()}, {len(jax.devices())} device(s), flags: {' '.join(flags)}"


def hf_runner(model, batch: dict):
  import torch
  ids = torch.as_tensor(batch["tokens"], dtype=torch.long)
  mask = torch.as_tensor(batch["input_mask"], dtype=torch.long)
  pixels = torch.as_tensor(batch["images"][:, 0].transpose(0, 3, 1, 2)).bfloat16()

  def run(n: int) -> None:
    with torch.no_grad():
      model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, do_sample=False,
                     max_new_tokens=n, min_new_tokens=n, eos_token_id=None)
  return run


def phases(runners: dict, new_tokens: int, repeats: int) -> dict[str, tuple[float, float]]:
  """{name: (prefill s, decode s/token)}: one token is the prefill, the rest are decode steps.

  Each figure is the best of `repeats` runs (after a warm-up), and the runners take turns within
  each round, so a slow drift of the machine (other tenants' memory traffic) reaches every side
  alike instead of whichever happened to run during it.
  """
  lengths = (1, new_tokens + 1)
  best = {(name, n): float("inf") for name in runners for n in lengths}
  for round_ in range(repeats + 1):
    for name, run in runners.items():
      for n in lengths:
        start = time.perf_counter()
        run(n)
        if round_:  # round 0 compiles and warms up
          best[name, n] = min(best[name, n], time.perf_counter() - start)
  return {name: (best[name, 1], (best[name, lengths[1]] - best[name, 1]) / new_tokens)
          for name in runners}


def llm_weights(config) -> int:
  """Decoder weights a decode step reads (the embedding once, as the LM head)."""
  t = config.text
  return t.vocab_size * t.width + t.depth * (2 * t.num_heads * t.head_dim * t.width +
                                             2 * t.num_kv_heads * t.head_dim * t.width +
                                             3 * t.width * t.mlp_dim + 2 * t.width)


def decode_bytes(config, batch: int, context: int) -> float:
  """LLM weights + the KV cache read per decode step."""
  t = config.text
  kv = 2 * t.depth * t.num_kv_heads * t.head_dim * batch * context
  return 2 * (llm_weights(config) + kv)  # bf16


def prefill_flops(config, batch: int, s: int) -> float:
  t, v = config.text, config.vision
  vit = 2 * M * (v.depth * (4 * v.width ** 2 + 2 * v.width * v.mlp_dim) + 14 * 14 * 3 * v.width
                 + v.width * t.width) + 4 * M * M * v.width * v.depth
  llm = 2 * s * t.depth * (2 * t.num_heads * t.head_dim * t.width +
                           2 * t.num_kv_heads * t.head_dim * t.width + 3 * t.width * t.mlp_dim)
  attn = 4 * s * s * t.num_heads * t.head_dim * t.depth
  return batch * (vit + llm + attn + 2 * t.vocab_size * t.width)


def cpu_benchmark(args) -> None:
  print(f"CPU: {cpu_description()}")
  print(f"this CPU's path: {cpu_path.current()}")
  peaks = {"XLA bf16": matmul_peak(), "XLA f32": matmul_peak(jnp.float32),
           "torch bf16": torch_matmul_peak(), "cpu_matmul bf16 GEMM": kernel_gemm_peak()}
  peaks = {name: rate for name, rate in peaks.items() if rate is not None}
  fastest, bw = max(peaks.values()), read_bandwidth()
  print("measured: matmul [512, 2048] x [2048, 16384] " + ", ".join(
      f"{name} {rate / 1e9:.1f}" for name, rate in peaks.items())
      + f" GFLOP/s; read bandwidth {bw / 1e9:.1f} GB/s (measured again after each batch)")
  model = hf_reduced_depth(args.layers)
  with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    config, params = load_hf_checkpoint(folder)
  print(f"model: real width, {args.layers} layers each, vocab {VOCAB}, bf16 weights on both "
        f"sides; prompt {M} image + {args.text} text tokens, {args.new_tokens} new tokens")
  print("'% peak' = prefill FLOPs / time / the fastest of the matmul rates measured above. "
        "'% roofline' = (bf16 LLM weights + KV cache bytes per step) / measured bandwidth / "
        "step time. 'ours PATH' decodes bf16 weights on CPU path PATH (prefill GEMM dtype / "
        "decode kernels, see models/cpu_path.py); 'ours f32' holds the weights in f32, so it "
        "reads 2x the bytes. 'compute floor' = a step's multiply-adds (2 x rows x weights) at "
        "the fastest matmul rate: past a few rows a step is bound by it, not by memory")
  header = ("batch", "prefill ms ours/HF", "ratio", "% peak ours/HF", "decode ms/tok ours/HF",
            "ratio", "% roofline ours/HF", "compute floor ms")
  print(" | ".join(header))
  f32_config = config.replace(dtype="float32", param_dtype="float32")
  f32_params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  for b in args.batch:
    batch = prompts(b, args.text)
    s = batch["tokens"].shape[1]
    flops = prefill_flops(config, b, s)
    compute_floor = 2 * b * llm_weights(config) / fastest
    runners = {"HF": hf_runner(model, batch)}
    for path in args.paths:
      runners[f"ours {path}"] = ours_runner(config, params, batch, path)
    if args.f32:
      runners["ours f32"] = ours_runner(f32_config, f32_params, batch)
    times = phases(runners, args.new_tokens, args.repeats)
    hf_pre, hf_dec = times.pop("HF")
    # The machine drifts over minutes: the roofline uses the best bandwidth seen before or after.
    bw = max(bw, read_bandwidth())
    floor = decode_bytes(config, b, s + args.new_tokens) / bw
    for name, (pre, dec) in times.items():
      print(f"{b} {name} | {pre * 1e3:.0f} / {hf_pre * 1e3:.0f} | {hf_pre / pre:.2f}x | "
            f"{100 * flops / pre / fastest:.0f}% / {100 * flops / hf_pre / fastest:.0f}% | "
            f"{dec * 1e3:.1f} / {hf_dec * 1e3:.1f} | {hf_dec / dec:.2f}x | "
            f"{100 * floor / dec:.0f}% / {100 * floor / hf_dec:.0f}% | "
            f"{compute_floor * 1e3:.1f}", flush=True)


def full_benchmark(args) -> None:
  print(f"devices: {jax.devices()}")
  config = get_variant("paligemma_3b_224").replace(dtype="bfloat16", param_dtype="bfloat16")
  params = init_params(config, jax.random.key(0, impl="rbg"))
  bw = read_bandwidth()
  print(f"measured read bandwidth {bw / 1e9:.0f} GB/s")
  for b in (1, 64):
    batch = prompts(b, args.text)
    batch["tokens"][:, :M] = config.image_token_id
    pre, dec = phases({"ours": ours_runner(config, params, batch)}, args.new_tokens,
                      args.repeats)["ours"]
    floor = decode_bytes(config, b, batch["tokens"].shape[1] + args.new_tokens) / bw
    total = pre + dec * args.new_tokens
    print(f"batch {b}: prefill {pre * 1e3:.1f} ms, decode {dec * 1e3:.2f} ms/token "
          f"(roofline at measured bandwidth {floor * 1e3:.2f} ms, {100 * floor / dec:.0f}%), "
          f"{b / total:.1f} examples/s for {args.new_tokens} tokens")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
  parser.add_argument("--text", type=int, default=16, help="prompt text tokens")
  parser.add_argument("--new_tokens", type=int, default=48,
                      help="decode is timed as t(prefill + n) - t(prefill + 1): more is steadier")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--paths", nargs="+", default=["auto"],
                      help="CPU paths for ours: auto or PREFILL/KERNELS, e.g. f32/avx2")
  parser.add_argument("--f32", action="store_true", help="also time ours with f32 weights")
  parser.add_argument("--full", action="store_true", help="PaliGemma-3B-224 on an accelerator")
  args = parser.parse_args()
  (full_benchmark if args.full else cpu_benchmark)(args)


if __name__ == "__main__":
  main()
