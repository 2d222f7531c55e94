"""Peak host memory of the trainer's pretrained init from an HF folder: the old way (the whole
model read on the host by `load_hf_checkpoint`, then `jax.device_put` onto the shardings) against
`training.state.load_pretrained` (leaf by leaf, stacked leaves layer by layer, straight onto
the shardings).

  python benchmarks/pretrained_init_memory.py                 # paligemma_3b_224, 2 layers, bf16
  python benchmarks/pretrained_init_memory.py --layers 4 --mesh 1,4,2

Writes a random HF checkpoint of the variant's real widths (257,216 embedding rows, as the hub's)
with `--layers` layers in both towers, then loads it as float32 masters onto a mesh of 8
simulated CPU devices, each way in a fresh Python process, and reports each child's peak
resident memory (`ru_maxrss`) over its RSS after the imports. On CPU the devices' buffers live in
host memory too, so the floor is what the placed params occupy (printed as "on devices").
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

GENERATE = """
import sys
from paligemma_jax.conversion import write_hf
from paligemma_jax.conversion.streaming import RandomSource
from paligemma_jax.models import get_variant
path, variant, dtype, depth = sys.argv[1:]
config = get_variant(variant, **{"text.depth": int(depth), "vision.depth": int(depth)})
write_hf(RandomSource(config.replace(param_dtype=dtype, dtype=dtype)), path)
"""

CHILD = """
import json, resource, sys, time
import jax
from paligemma_jax import sharding
from paligemma_jax.conversion import load_hf_checkpoint
from paligemma_jax.training import state, pretrained  # everything imported: the baseline
path, way, mesh_sizes = sys.argv[1:]
mesh = sharding.make_mesh(*map(int, mesh_sizes.split(",")))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if way == "old":
  stored, params = load_hf_checkpoint(path, param_dtype="float32")
  params = jax.device_put(params, sharding.param_shardings(stored, mesh))
else:
  _, params = state.load_pretrained(path, {}, mesh)
jax.block_until_ready(params)
seconds = time.perf_counter() - start
on_devices = sum(s.data.nbytes for x in jax.tree.leaves(params) for s in x.addressable_shards)
print(json.dumps({"base_kb": base, "peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "on_devices": on_devices, "seconds": seconds}))
"""

ENV = {**os.environ, "JAX_PLATFORMS": "cpu",
       "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}


def run_child(code: str, *args: str) -> str:
  out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       cwd=REPO, env=ENV)
  if out.returncode:
    sys.exit(f"child failed:\n{out.stderr[-3000:]}")
  return out.stdout


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="paligemma_3b_224")
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                      help="the checkpoint's storage dtype (params load as float32)")
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--mesh", default="1,4,2", help="data,fsdp,model over the 8 devices")
  parser.add_argument("--workdir", default=None)
  args = parser.parse_args()
  work = tempfile.mkdtemp(prefix="pretrained_init_", dir=args.workdir)
  try:
    hf = os.path.join(work, "hf")
    start = time.perf_counter()
    run_child(GENERATE, hf, args.variant, args.dtype, str(args.layers))
    size = sum(os.path.getsize(os.path.join(hf, f)) for f in os.listdir(hf))
    print(f"{args.variant}, {args.layers} layers, {args.dtype}: checkpoint {size / 1e9:.2f} GB "
          f"(written in {time.perf_counter() - start:.0f} s); loading as float32 onto mesh "
          f"{args.mesh}", flush=True)
    for way in ("old", "new"):
      m = json.loads(run_child(CHILD, hf, way, args.mesh).strip().splitlines()[-1])
      peak, base = m["peak_kb"] * 1024, m["base_kb"] * 1024
      print(f"{way}: peak RSS {peak / 1e9:5.2f} GB, imports {base / 1e9:4.2f} GB, "
            f"peak - imports {(peak - base) / 1e9:5.2f} GB, params on devices "
            f"{m['on_devices'] / 1e9:4.2f} GB, {m['seconds']:5.1f} s", flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
