"""Peak memory and time of checkpoint conversion at real size (random weights, real shapes).

  python benchmarks/convert_memory.py                       # paligemma_3b_224, bf16 (~5.9 GB)
  python benchmarks/convert_memory.py --variant paligemma2_3b_448 --dtype float32 --workdir /big
  python benchmarks/convert_memory.py --variant paligemma2_28b_224 --layers 4   # 28B width, ~7 GB

Writes a random HF checkpoint of the variant's shapes (257,216 embedding rows, as the hub's),
then converts HF -> Orbax -> HF -> npz -> Orbax -> npz, each step in a fresh Python process, and
reports each child's peak resident memory (`ru_maxrss`, which counts mapped file pages too)
against the target: peak <= 0.5 x checkpoint size + 1 GiB for the interpreter and its libraries
(jax, orbax). `--layers` keeps the real widths with fewer layers: the converter holds at most a
layer or two of a stacked tensor, so its peak should not grow with depth, and a few layers at
28B width stand for the full model on a small disk (the full 28B is 55 GB). Also printed: the
largest stacked tensor (which the Orbax side held twice before it streamed by layer) and the
largest unstacked one (the embedding, which every direction holds once).
Inputs are deleted as it goes (about 2x the checkpoint size of disk at the peak).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GiB = 1 << 30
# A child: the conversion alone, timed, then its own peak RSS (kB on Linux) as JSON.
# An npz source is told its model (it has no config, and a reduced-depth 28B matches no variant).
CHILD = """
import json, resource, sys, time
from paligemma_jax.conversion import convert
from paligemma_jax.models import get_variant
import paligemma_jax.checkpoints  # import everything first: the baseline is imports only
src, dst, dst_format, variant, dtype, depth = sys.argv[1:]
depths = {"text.depth": int(depth), "vision.depth": int(depth)} if int(depth) else {}
config = get_variant(variant, **depths).replace(param_dtype=dtype, dtype=dtype)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
convert(src, dst, dst_format=dst_format, progress=False, log=lambda _: None,
        variant=config if src.endswith(".npz") else None)
seconds = time.perf_counter() - start
print(json.dumps({"base_kb": base, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "seconds": seconds}))
"""


# Generating the inputs, in a child too: the parent must stay small, because Linux records the
# parent's peak RSS into a vfork()ed child's ru_maxrss at exec (subprocess uses vfork).
GENERATE = """
import sys
from paligemma_jax.conversion import write_hf, write_npz
from paligemma_jax.conversion.streaming import RandomSource
from paligemma_jax.models import get_variant

fmt, path, variant, dtype, depth = sys.argv[1:]
depths = {"text.depth": int(depth), "vision.depth": int(depth)} if int(depth) else {}
config = get_variant(variant, **depths).replace(param_dtype=dtype, dtype=dtype)
(write_hf if fmt == "hf" else write_npz)(RandomSource(config), path)
"""


def describe(args: argparse.Namespace) -> dict:
  """Sizes of the model's largest tensors, from shapes only (in a child, like everything)."""
  code = """
import json, sys
from paligemma_jax.conversion.streaming import native_specs, nbytes, stacked
from paligemma_jax.models import get_variant
variant, dtype, depth = sys.argv[1:]
depths = {"text.depth": int(depth), "vision.depth": int(depth)} if int(depth) else {}
specs = native_specs(get_variant(variant, **depths).replace(param_dtype=dtype, dtype=dtype))
key = max((k for k in specs if stacked(k)), key=lambda k: nbytes(specs[k]))
print(json.dumps({"stacked": key, "stacked_bytes": nbytes(specs[key]),
                  "layer_bytes": nbytes(specs[key]) // specs[key].shape[0],
                  "unstacked_bytes": max(nbytes(s) for k, s in specs.items() if not stacked(k)),
                  "model_bytes": sum(nbytes(s) for s in specs.values())}))
"""
  out = subprocess.run([sys.executable, "-c", code, args.variant, args.dtype,
                        str(args.depth or 0)], check=True, capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return json.loads(out.stdout.strip().splitlines()[-1])


def generate(fmt: str, path: str, args: argparse.Namespace) -> None:
  start = time.perf_counter()
  subprocess.run([sys.executable, "-c", GENERATE, fmt, path, args.variant, args.dtype,
                  str(args.depth or 0)], check=True, cwd=REPO)
  print(f"generated {fmt} ({size_on_disk(path) / 1e9:.2f} GB) in "
        f"{time.perf_counter() - start:.0f} s", flush=True)


def size_on_disk(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def measure(src: str, dst: str, dst_format: str, args: argparse.Namespace) -> dict:
  out = subprocess.run([sys.executable, "-c", CHILD, src, dst, dst_format, args.variant,
                        args.dtype, str(args.depth or 0)], capture_output=True, text=True,
                       cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if out.returncode:
    sys.exit(f"{src} -> {dst} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def report(name: str, size: int, m: dict) -> dict:
  peak, base = m["peak_kb"] * 1024, m["base_kb"] * 1024
  target = 0.5 * size + GiB
  row = dict(direction=name, checkpoint_gb=size / 1e9, peak_rss_gb=peak / 1e9,
             imports_rss_gb=base / 1e9, peak_over_size=peak / size,
             conversion_over_size=(peak - base) / size, seconds=m["seconds"],
             meets_target=peak <= target)
  print(f"{name:14s} checkpoint {size / 1e9:6.2f} GB  peak RSS {peak / 1e9:5.2f} GB "
        f"(imports {base / 1e9:4.2f} GB)  peak/size {peak / size:4.2f}  "
        f"(peak - imports)/size {(peak - base) / size:4.2f}  {m['seconds']:6.1f} s  "
        f"target <= 0.5 x size + 1 GiB = {target / 1e9:.2f} GB: "
        f"{'ok' if row['meets_target'] else 'MISSED'}", flush=True)
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="paligemma_3b_224")
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
  parser.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
  parser.add_argument("--json", default=None, help="also write the results here")
  parser.add_argument("--layers", "--depth", dest="depth", type=int, default=None,
                      help="override both towers' depth: real widths, fewer layers")
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="convert_memory_", dir=args.workdir)
  sizes = describe(args)
  print(f"{args.variant} {args.dtype}" + (f", {args.depth} layers" if args.depth else "")
        + f": {sizes['model_bytes'] / 1e9:.2f} GB; largest stacked tensor {sizes['stacked']} "
        f"{sizes['stacked_bytes'] / 1e9:.2f} GB ({sizes['layer_bytes'] / 1e9:.3f} GB a layer), "
        f"largest unstacked {sizes['unstacked_bytes'] / 1e9:.2f} GB; random checkpoints in {work}",
        flush=True)
  rows = []
  try:
    hf, orbax, hf2, npz, npz2 = (os.path.join(work, n)
                                 for n in ("hf", "orbax", "hf2", "bv.npz", "bv2.npz"))
    generate("hf", hf, args)
    rows.append(report("hf -> orbax", size_on_disk(hf), measure(hf, orbax, "orbax", args)))
    shutil.rmtree(hf)
    rows.append(report("orbax -> hf", size_on_disk(orbax), measure(orbax, hf2, "hf", args)))
    shutil.rmtree(orbax)
    rows.append(report("hf -> npz", size_on_disk(hf2), measure(hf2, npz, "npz", args)))
    shutil.rmtree(hf2)
    rows.append(report("npz -> orbax", size_on_disk(npz), measure(npz, orbax, "orbax", args)))
    os.remove(npz)
    rows.append(report("orbax -> npz", size_on_disk(orbax), measure(orbax, npz2, "npz", args)))
  finally:
    shutil.rmtree(work, ignore_errors=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(dict(variant=args.variant, dtype=args.dtype, layers=args.depth, **sizes,
                     results=rows), f, indent=2)


if __name__ == "__main__":
  main()
