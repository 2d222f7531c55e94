"""How this CPU multiplies bf16 weights: decided once per process, in this one place.

Two choices depend on the CPU, and both are read when a function is traced:

- `prefill`: how prefill-sized bf16 products (many activation rows) run. "bf16" multiplies
  the bf16 operands as they are (f32 accumulation): XLA's GEMM uses the CPU's bf16 dot-product
  units where there are some (AVX-512 BF16, AMX), where it is the fast path (measured 1.66x f32's
  rate on an AVX-512-BF16 EPYC). "f32" widens the operands first (exact) and runs XLA's f32 GEMM,
  the faster one on CPUs without bf16 units (1.65x bf16's rate on an AVX2-only EPYC).
  "avx512bf16" runs the products over a layer of a stack (decoding's prefill, score mode) through
  `cpu_matmul`'s vdpbf16ps GEMM, which reads the layer where it lies (XLA copied each layer out
  of its stack first) and outran XLA's bf16 GEMM on an AVX-512-BF16 EPYC without AMX; others
  (and any product that is differentiated) run as "bf16". The products are identical on every
  path; only the f32 summation order differs.
- `kernels`: which of `cpu_matmul`'s decode kernels take few-row bf16 products. "avx512bf16"
  (vdpbf16ps: bf16 activations times bf16 weights, f32 sums) on CPUs with AVX-512 BF16,
  "avx2" (f32 FMAs on widened weights) on AVX2 + FMA, "off" where neither runs (XLA's einsum).

Features decide where they settle it; otherwise (e.g. AVX-512 without BF16, or not x86) a short
timing of both GEMMs decides `prefill` at first use and is cached per machine under the kernels'
cache directory. Environment variables force each choice, so every path can be tested on a CPU
that runs it: `PALIGEMMA_JAX_CPU_PREFILL=f32|bf16|avx512bf16` and `PALIGEMMA_JAX_CPU_KERNELS=
off|avx2|avx512bf16` (`0` = off; unset or `auto` = decide). The prefill GEMM reads layers in
place, which the kernels provide: with `KERNELS=off` there are no in-place layers and the
prefill runs as "bf16". Correctness never depends on the choice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

from paligemma_jax.native_build import cache_dirs  # this module's calls read it here (tests patch it)

PREFILL_ENV = "PALIGEMMA_JAX_CPU_PREFILL"
KERNELS_ENV = "PALIGEMMA_JAX_CPU_KERNELS"
PREFILLS = ("f32", "bf16", "avx512bf16")
KERNELS = ("off", "avx2", "avx512bf16")
# What each kernel library needs from the CPU (/proc/cpuinfo flag names).
KERNEL_FLAGS = {"avx2": ("avx2", "fma"),
                "avx512bf16": ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16")}
BF16_UNITS = ("avx512_bf16", "amx_bf16")


@dataclasses.dataclass(frozen=True)
class CpuPath:
  """The CPU's choices (see the module docstring) and why they were made."""

  prefill: str
  kernels: str
  reason: str


@functools.cache
def cpu_flags() -> frozenset[str]:
  """The CPU's feature flags (empty where /proc/cpuinfo is not there)."""
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return frozenset()
  for line in text.splitlines():
    if line.startswith(("flags", "Features")):
      return frozenset(line.split(":", 1)[1].split())
  return frozenset()


def cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return "unknown CPU"


def _env(name: str, valid: tuple[str, ...]) -> str | None:
  value = os.environ.get(name, "auto").strip().lower()
  value = {"0": "off", "1": "auto", "": "auto"}.get(value, value)
  if value == "auto":
    return None
  if value not in valid:
    raise ValueError(f"{name}={value!r} is not one of {', '.join(valid + ('auto',))}")
  return value


def kernels_runnable(kind: str, flags: frozenset[str] | None = None) -> bool:
  """Whether kernel library `kind` can run here: Linux, a C++ compiler, the CPU's features."""
  flags = cpu_flags() if flags is None else flags
  return (kind == "off" or sys.platform == "linux" and shutil.which("g++") is not None
          and all(f in flags for f in KERNEL_FLAGS[kind]))


def _choose_kernels(flags: frozenset[str]) -> tuple[str, str]:
  forced = _env(KERNELS_ENV, KERNELS)
  if forced is not None:
    if not kernels_runnable(forced, flags):
      runnable = [k for k in KERNELS if kernels_runnable(k, flags)]
      raise ValueError(f"{KERNELS_ENV}={forced} cannot run on this CPU or without g++; "
                       f"choose one of {', '.join(runnable)}")
    return forced, f"kernels forced by {KERNELS_ENV}"
  for kind in ("avx512bf16", "avx2"):
    if kernels_runnable(kind, flags):
      return kind, f"kernels {kind}: the CPU has {', '.join(KERNEL_FLAGS[kind])}"
  return "off", "kernels off: no AVX2/FMA or no g++"


def _choose_prefill(flags: frozenset[str]) -> tuple[str, str]:
  forced = _env(PREFILL_ENV, PREFILLS)
  if forced is not None:
    if forced == "avx512bf16" and not kernels_runnable(forced, flags):
      raise ValueError(f"{PREFILL_ENV}={forced} cannot run on this CPU or without g++; "
                       "choose f32 or bf16")
    return forced, f"prefill forced by {PREFILL_ENV}"
  if "amx_bf16" not in flags and kernels_runnable("avx512bf16", flags):
    return "avx512bf16", "prefill avx512bf16: the CPU has avx512_bf16 (no AMX) and g++"
  units = [f for f in BF16_UNITS if f in flags]
  if units:
    return "bf16", f"prefill bf16: the CPU has bf16 units ({', '.join(units)})"
  if "avx2" in flags and "avx512f" not in flags:
    return "f32", "prefill f32: AVX2 without bf16 units"
  return _measured_prefill(flags)


def _measured_prefill(flags: frozenset[str]) -> tuple[str, str]:
  """Times XLA's bf16 and f32 GEMMs once per machine (~0.3 s); the faster one is cached."""
  import jax  # pylint: disable=import-outside-toplevel
  key = hashlib.sha256(" ".join([cpu_name(), *sorted(flags), jax.__version__]).encode())
  name = f"cpu_path-{key.hexdigest()[:16]}.json"
  for cache in cache_dirs():
    try:
      return tuple(json.loads((cache / name).read_text()))
    except (OSError, ValueError):
      continue
  bf16, f32 = _gemm_seconds("bfloat16"), _gemm_seconds("float32")
  choice = ("bf16" if bf16 < f32 else "f32",
            f"prefill measured: bf16 GEMM {bf16 * 1e3:.1f} ms, f32 {f32 * 1e3:.1f} ms")
  for cache in cache_dirs():
    try:
      cache.mkdir(parents=True, exist_ok=True)
      with tempfile.NamedTemporaryFile("w", dir=cache, delete=False) as f:
        json.dump(choice, f)
      os.replace(f.name, cache / name)
      break
    except OSError:
      continue
  return choice


def _gemm_seconds(dtype: str) -> float:
  """Best of 3 of a prefill-sized GEMM in `dtype`. The path is first asked for while a model is
  being traced, so this compiles ahead of time and runs on NumPy inputs: no tracer is involved."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  x = np.ones((256, 2048), jnp.bfloat16)
  w = np.ones((2048, 2048), jnp.bfloat16)
  mm = jax.jit(lambda x, w: jnp.dot(x.astype(dtype), w.astype(dtype),
                                    preferred_element_type=jnp.float32),
               backend="cpu").lower(x, w).compile()
  mm(x, w).block_until_ready()
  best = float("inf")
  for _ in range(3):
    start = time.perf_counter()
    mm(x, w).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return best


@functools.cache
def _decided() -> CpuPath:
  flags = cpu_flags()
  kernels, why_kernels = _choose_kernels(flags)
  prefill, why_prefill = _choose_prefill(flags)
  return CpuPath(prefill, kernels, f"{why_prefill}; {why_kernels}")


_override: CpuPath | None = None


def current() -> CpuPath:
  """This process's CPU path (decided on first call; `forced` overrides it in tests)."""
  return _override if _override is not None else _decided()


@contextlib.contextmanager
def forced(prefill: str | None = None, kernels: str | None = None) -> Iterator[CpuPath]:
  """Runs the block on another CPU path (for tests and benchmarks); clears JAX's caches on
  entry and exit, since the path is read when functions are traced."""
  global _override
  import jax  # pylint: disable=import-outside-toplevel
  base = current()
  if kernels is not None and not kernels_runnable(kernels):
    raise ValueError(f"kernels={kernels} cannot run on this CPU")
  if prefill == "avx512bf16" and not kernels_runnable(prefill):
    raise ValueError(f"prefill={prefill} cannot run on this CPU")
  path = CpuPath(prefill or base.prefill, kernels or base.kernels, "forced")
  if path.prefill not in PREFILLS or path.kernels not in KERNELS:
    raise ValueError(f"unknown CPU path {path}")
  previous, _override = _override, path
  jax.clear_caches()
  try:
    yield path
  finally:
    _override = previous
    jax.clear_caches()
