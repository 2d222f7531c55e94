"""Bandwidth-bound bf16 matmuls for few-row products on CPU (decoding), as XLA FFI custom calls.

A decode step multiplies a handful of activation rows by every weight, so its speed is how fast
the weights stream from memory. XLA:CPU has no bf16 kernel for that shape: it reaches 2-8 GB/s
where memory gives ~25-50 (measured in `benchmarks/inference_speed.py`). Two kernel libraries
read each bf16 weight once and accumulate in f32: `cpu_matmul.cc` (AVX2 + FMA: widens the
weights in registers, f32 activations) and `cpu_matmul_bf16.cc` (AVX-512 BF16: vdpbf16ps on bf16
activations, 4x the multiply-adds per instruction, so 5-8-row steps stay memory-bound). This module
compiles them on first use (g++, cached under ~/.cache/paligemma_jax), registers them with
`jax.ffi`, and maps an einsum onto them; `cpu_path` decides which run on this CPU.

`cpu_matmul_bf16.cc` also has a GEMM for a prefill's many-row products over a `LayerSlice`, which
`cpu_path`'s prefill "avx512bf16" chooses: it reads the layer in place, where XLA's bf16 GEMM
needed a copy of it.

`einsum(spec, x, w)` returns None whenever the kernels do not apply, and the caller runs its
usual einsum: another backend, f32 weights, more than `MAX_ROWS` activation rows (unless the
GEMM applies), a spec with batch axes, a CPU path without kernels (no AVX2/FMA, no compiler,
`PALIGEMMA_JAX_CPU_KERNELS=off`).
Gradients go through the plain einsum (custom VJP), so training code may call it too.
`einsum_int8` is the same for weight-only int8 weights (`quantize`), which it reads as they are:
half the bytes of bf16. `LayerSlice` hands the kernels one layer of a stacked weight to read in
place, and `take_rows` is the embedding lookup (see their sections).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np

from paligemma_jax import native_build
from paligemma_jax.models import cpu_path

MAX_ROWS = 8  # beyond this XLA's GEMM path is as good (the weights are reused across rows)
_HERE = pathlib.Path(__file__).parent


@dataclasses.dataclass(frozen=True)
class _Library:
  source: str
  flags: tuple[str, ...]
  targets: dict[str, str]  # FFI target suffix -> symbol


# The AVX2 library (f32 activations, plus the layer copies and the row gather every path uses)
# and the AVX-512 BF16 one (bf16 activations); `cpu_path` says which matmuls run.
_LIBRARIES = {
    "avx2": _Library("cpu_matmul.cc", ("-mavx2", "-mfma"),
                     {"nn": "PgMatmulNN", "nt": "PgMatmulNT", "nn_int8": "PgMatmulNNInt8",
                      "widen": "PgWiden",
                      "copy": "PgCopyLayer", "take": "PgTakeRows"}),
    "avx512bf16": _Library("cpu_matmul_bf16.cc",
                           ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl",
                            "-mavx512bf16"),
                           {"nn_bf16": "PgMatmulNNBf16", "nt_bf16": "PgMatmulNTBf16",
                            "gemm_bf16": "PgGemmBf16"}),
}


def _cpu_supported() -> bool:
  """Whether this process's CPU path runs the decode kernels (AVX2 ones at least)."""
  return cpu_path.current().kernels != "off"


def _build(library: _Library) -> pathlib.Path:
  """Compiles a kernel library once per source and jax version (`native_build`, in
  `cpu_path.cache_dirs()`); returns the shared library."""
  return native_build.build_library(
      _HERE / library.source,
      ("-O3", "-std=c++17", *library.flags, "-pthread", f"-I{_HERE}",
       f"-I{jax.ffi.include_dir()}"),
      key=jax.__version__.encode(), headers=(_HERE / "cpu_kernels.h",),
      dirs=cpu_path.cache_dirs())


@functools.cache
def _load(kind: str) -> bool:
  """Compiles and registers library `kind` (tried once per process); whether that worked."""
  if not cpu_path.kernels_runnable(kind):
    return False
  library = _LIBRARIES[kind]
  try:
    lib = ctypes.cdll.LoadLibrary(str(_build(library)))
    for target, symbol in library.targets.items():
      jax.ffi.register_ffi_target(f"paligemma_cpu_{target}",
                                  jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  except (OSError, subprocess.CalledProcessError, AttributeError):
    return False
  return True


def available() -> bool:
  """Whether the decode kernels run on this process's CPU path (compiled and registered)."""
  return _cpu_supported() and _load("avx2")


def _bf16_kernels() -> bool:
  """Whether few-row products with bf16 activations go to the AVX-512 BF16 kernels."""
  return cpu_path.current().kernels == "avx512bf16" and _load("avx512bf16")


def _gemm_kernel() -> bool:
  """Whether prefill products over in-place layers go to the AVX-512 BF16 GEMM (`cpu_path`'s
  prefill "avx512bf16")."""
  return cpu_path.current().prefill == "avx512bf16" and _load("avx512bf16")


def _threads() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _call(kind: str, x_MxC: jax.Array, w: jax.Array, layer: int, out_shape: tuple[int, ...]
          ) -> jax.Array:
  """Runs kernel `kind` on x and layer `layer` of w (whole layers of the matrix `out_shape` says)."""
  call = jax.ffi.ffi_call(f"paligemma_cpu_{kind}",
                          jax.ShapeDtypeStruct(out_shape, jnp.float32),
                          vmap_method="sequential")
  x_MxC = x_MxC if kind.endswith("_bf16") else x_MxC.astype(jnp.float32)
  return call(x_MxC, w, layer=layer, threads=_threads())


class _Plan:
  """How `lhs,rhs->out` maps onto x[M, C] . w[L, C, F] (or w[F, C]^T), or why it cannot."""

  def __init__(self, spec: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...]):
    inputs, self.out = spec.replace(" ", "").split("->")
    self.lhs, self.rhs = inputs.split(",")
    contracted = [a for a in self.rhs if a in self.lhs and a not in self.out]
    self.ok = (len(set(self.lhs)) == len(self.lhs) and len(set(self.rhs)) == len(self.rhs)
               and "." not in spec and bool(contracted)
               and not any(a in self.rhs and a in self.out for a in self.lhs))  # no batch axes
    if not self.ok:
      return
    first = self.rhs.index(contracted[0])
    self.lead, self.trail = self.rhs[:first], self.rhs[first + len(contracted):]
    self.contracted = self.rhs[first:first + len(contracted)]
    self.ok = self.contracted == "".join(contracted)  # contiguous in w
    size = dict(zip(self.lhs, x_shape)) | dict(zip(self.rhs, w_shape))
    self.free = "".join(a for a in self.lhs if a not in self.rhs)
    self.ok = self.ok and set(self.free + self.lead + self.trail) == set(self.out)
    self.rows = math.prod(size[a] for a in self.free)
    self.c = math.prod(size[a] for a in self.contracted)
    self.l = math.prod(size[a] for a in self.lead)
    self.f = math.prod(size[a] for a in self.trail)
    self.size = size

  def run(self, x: jax.Array, w: "jax.Array | LayerSlice") -> jax.Array:
    # The kernels read w in its own shape (the output's shape says how to), and a LayerSlice's
    # layer out of its stack: a plain matrix is a stack of one.
    stack, layer = _stack_and_layer(w)
    x_MxC = self._rows(x)
    # bf16 activations go to the AVX-512 BF16 kernels where the CPU path has them; others (f32
    # activations, AVX2 CPUs) to the f32 kernels.
    suffix = "_bf16" if x.dtype == jnp.bfloat16 and _bf16_kernels() else ""
    if self.rows > MAX_ROWS:  # a prefill's product (`einsum` checked that the GEMM applies)
      y = _call("gemm_bf16", x_MxC, stack, layer, (self.rows, self.l, self.f))
    elif self.trail:
      y = _call("nn" + suffix, x_MxC, stack, layer, (self.rows, self.l, self.f))
    else:  # contraction is w's minor block: rows of w are contiguous dot products
      y = _call("nt" + suffix, x_MxC, stack, layer, (self.rows, self.l))
    return self._out(y)

  def run_int8(self, x: jax.Array, q: "jax.Array | LayerSlice", scale: jax.Array) -> jax.Array:
    """The NN product over int8 `q` times per-output-channel `scale` (q's shape with the
    contracted axes 1: L x F values). f32 activations, as the AVX2 kernels take them."""
    stack, layer = _stack_and_layer(q)
    call = jax.ffi.ffi_call("paligemma_cpu_nn_int8",
                            jax.ShapeDtypeStruct((self.rows, self.l, self.f), jnp.float32),
                            vmap_method="sequential")
    y = call(self._rows(x).astype(jnp.float32), stack, scale.astype(jnp.float32),
             layer=layer, threads=_threads())
    return self._out(y)

  def _rows(self, x: jax.Array) -> jax.Array:
    x_MxC = jnp.transpose(x, [self.lhs.index(a) for a in self.free + self.contracted])
    return x_MxC.reshape(self.rows, self.c)

  def _out(self, y: jax.Array) -> jax.Array:
    got = self.free + self.lead + self.trail
    y = y.reshape([self.size[a] for a in got])
    return jnp.transpose(y, [got.index(a) for a in self.out])


def _stack_and_layer(w: "jax.Array | LayerSlice") -> tuple[jax.Array, int]:
  return (w.stack, w.layer) if isinstance(w, LayerSlice) else (w, 0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _kernel_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
  return _Plan(spec, x.shape, w.shape).run(x, w)


def _forward(spec, x, w):
  return _kernel_einsum(spec, x, w), (x, w)


def _backward(spec, residuals, g):
  x, w = residuals
  _, vjp = jax.vjp(lambda x, w: jnp.einsum(spec, x, w, preferred_element_type=jnp.float32), x, w)
  return vjp(g)


_kernel_einsum.defvjp(_forward, _backward)


def einsum(spec: str, x: jax.Array, w: "jax.Array | LayerSlice") -> jax.Array | None:
  """`jnp.einsum(spec, x, w)` in float32 through the CPU kernels, or None if they do not apply.

  A `LayerSlice` is read in place (no gradient: it is for decoding). Products with more than
  `MAX_ROWS` rows (a prefill's) go to the AVX-512 BF16 GEMM where `cpu_path` chose it, for bf16
  activations times a `LayerSlice` with the contraction first; otherwise they are left to XLA.
  """
  if w.dtype != jnp.bfloat16 or jax.default_backend() != "cpu":
    return None
  plan = _Plan(spec, x.shape, w.shape)
  if not plan.ok or not available():
    return None
  if plan.rows > MAX_ROWS:
    gemm = (isinstance(w, LayerSlice) and x.dtype == jnp.bfloat16 and bool(plan.trail)
            and _gemm_kernel())
    return plan.run(x, w) if gemm else None
  return plan.run(x, w) if isinstance(w, LayerSlice) else _kernel_einsum(spec, x, w)


# -- weight-only int8 -----------------------------------------------------------------------------
#
# `quantize`'s int8 weights were dequantized to the compute dtype inside each einsum, on every
# decode step: XLA wrote a bf16 copy of the weight and the bf16 kernel read it back, so int8
# decoding ran at 0.5-0.7x bf16's speed. One scale per output channel factors out of each dot
# product, y[m, f] = scale[f] * sum_c x[m, c] q[c, f], so the kernel reads the int8 values
# directly and scales the sums: the same result up to f32 summation order (and, for bf16
# activations, x is taken in f32 rather than multiplied against a bf16-rounded weight).

@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _int8_einsum(spec: str, x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
  return _Plan(spec, x.shape, q.shape).run_int8(x, q, scale)


def _int8_forward(spec, x, q, scale):
  return _int8_einsum(spec, x, q, scale), (x, q, scale)


def _int8_backward(spec, residuals, g):
  # Through x only (a frozen QLoRA base): the integers and their scales get no gradient.
  x, q, scale = residuals
  w = (q.astype(jnp.float32) * scale).astype(x.dtype)
  _, vjp = jax.vjp(lambda x: jnp.einsum(spec, x, w, preferred_element_type=jnp.float32), x)
  return vjp(g)[0], np.zeros(q.shape, jax.dtypes.float0), jnp.zeros_like(scale)


_int8_einsum.defvjp(_int8_forward, _int8_backward)


def einsum_int8(spec: str, x: jax.Array, q: "jax.Array | LayerSlice", scale: jax.Array
                ) -> jax.Array | None:
  """`einsum(spec, x, q * scale)` in float32 through the fused int8 kernel, or None where it does
  not apply (as `einsum`, and also: contraction not leading w's output axes).

  `q` is `quantize`'s int8 weight (or a `LayerSlice` of a stack of them, read in place), `scale`
  its per-output-channel scales (q's shape with the contracted axes 1).
  """
  if q.dtype != jnp.int8 or jax.default_backend() != "cpu":
    return None
  plan = _Plan(spec, x.shape, q.shape)
  if (not plan.ok or not plan.trail or plan.rows > MAX_ROWS or scale.size != plan.l * plan.f
      or not available()):
    return None
  if isinstance(q, LayerSlice):
    return plan.run_int8(x, q, scale)
  return _int8_einsum(spec, x, q, scale)


# -- one layer of a stacked weight, in place ----------------------------------------------------
#
# Decoding runs the layers unrolled (see `inference.decode_layers`), each over its own slice of the
# stacked params. XLA materialises a slice that a loop takes as an operand: every layer's weights
# were copied out of the stacks once per generate call (one more copy of the decoder, allocated and
# written each call). A `LayerSlice` stands in for the slice in the flax params instead; the
# kernels above read the layer where it lies, and the prefill's GEMM operand is widened from it.

class LayerSlice:
  """`stack[layer]` of a stacked bf16 (or int8) weight, as a flax param leaf (shape, dtype,
  astype).

  Not a pytree: flax checks a param's leaves against the layer's shape. Build it inside `jit`,
  next to the modules that read it; `einsum_f32` runs a bf16 one through `einsum` or `widen`,
  `einsum_int8` reads an int8 one, and `quantize.quantized_weight` slices it.
  """

  def __init__(self, stack: jax.Array, layer: int):
    self.stack, self.layer = stack, layer

  shape = property(lambda self: tuple(self.stack.shape[1:]))
  dtype = property(lambda self: self.stack.dtype)
  ndim = property(lambda self: self.stack.ndim - 1)

  def astype(self, dtype) -> "jax.Array | LayerSlice":
    return self if jnp.dtype(dtype) == self.dtype else self.stack[self.layer].astype(dtype)

  def gemm_operand(self, after: jax.Array) -> jax.Array:
    """The layer as the prefill GEMM takes it on this CPU path (see `cpu_path`): widened to f32,
    or a bf16 copy, made after `after` is (see `widen`)."""
    if cpu_path.current().prefill == "f32":
      return self.widen(after)
    call = jax.ffi.ffi_call("paligemma_cpu_copy", jax.ShapeDtypeStruct(self.shape, self.dtype),
                            vmap_method="sequential")
    return call(self.stack, after, layer=self.layer, threads=_threads())

  def widen(self, after: jax.Array) -> jax.Array:
    """The layer as f32, computed after `after` is.

    XLA:CPU multiplies a prefill's bf16 weights in f32 (`layers.cpu_upcast`). It schedules the
    converts of the unrolled layers' weights all at the start, so every layer's f32 copy was alive
    at once (2x the decoder's bytes of temporaries, faulted in anew each call); this kernel takes
    the layer's input as an operand, so each copy is made when its layer runs.
    """
    call = jax.ffi.ffi_call("paligemma_cpu_widen", jax.ShapeDtypeStruct(self.shape, jnp.float32),
                            vmap_method="sequential")
    return call(self.stack, after, layer=self.layer, threads=_threads())


def reads_in_place(stack: jax.Array) -> bool:
  """Whether the CPU kernels can take layers of `stack` as `LayerSlice`s (bf16 matrices, and
  int8 ones: `quantize`'s values, read by `einsum_int8` or sliced where they are dequantized)."""
  return (stack.dtype in (jnp.bfloat16, jnp.int8) and stack.ndim >= 3
          and jax.default_backend() == "cpu" and available())


# -- the embedding lookup ---------------------------------------------------------------------
#
# XLA:CPU runs bf16 gathers (and dynamic-slices) in f32: its bf16 float normalization turns
# `gather(table)` into `gather(convert(table))`, and when the table is loop-invariant the convert
# of the whole table is hoisted out of the loop. The decode loop's embedding lookup then widened
# the 257k-row table once per generate call (2 GB and ~0.9 s, measured). This kernel is opaque
# to XLA, so only the rows looked up are read.

@jax.custom_vjp
def _take(table_VxD: jax.Array, ids: jax.Array) -> jax.Array:
  call = jax.ffi.ffi_call("paligemma_cpu_take",
                          jax.ShapeDtypeStruct((ids.size, table_VxD.shape[1]), table_VxD.dtype),
                          vmap_method="sequential")
  return call(table_VxD, ids.reshape(-1).astype(jnp.int32)).reshape(*ids.shape, -1)


def _take_forward(table_VxD, ids):
  return _take(table_VxD, ids), (table_VxD, ids)


def _take_backward(residuals, g):
  table_VxD, ids = residuals
  _, vjp = jax.vjp(lambda t: jnp.take(t, ids, axis=0), table_VxD)
  return vjp(g)[0], None


_take.defvjp(_take_forward, _take_backward)


def take_rows(table_VxD: jax.Array, ids: jax.Array) -> jax.Array | None:
  """`jnp.take(table, ids, axis=0)` of a bf16 table through the CPU kernel (NaN rows for ids out
  of range, as jnp.take's "fill" mode), or None where it does not apply."""
  if (table_VxD.dtype != jnp.bfloat16 or table_VxD.ndim != 2 or jax.default_backend() != "cpu"
      or not available()):
    return None
  return _take(table_VxD, ids)
