"""Small building blocks shared by SigLIP and Gemma: an einsum weight, norms, RoPE, remat policies.

Every parameter is created with logical axis names (see `paligemma_jax.sharding` for the table that
maps them to mesh axes). Matmuls accumulate in float32 (`preferred_element_type`): this is what
TPUs and GPUs do anyway, and on CPU it is what makes bf16 matmuls fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from paligemma_jax.models import cpu_matmul, cpu_path, lora, quantize
from paligemma_jax.models.config import LoraConfig

Initializer = Callable[..., jax.Array]


def cpu_upcast(x: jax.Array) -> jax.Array:
  """A bf16 matmul operand as the CPU's prefill GEMM takes it; elsewhere `x` unchanged.

  On CPUs without bf16 units XLA:CPU's f32 GEMM outruns its bf16 one (measured 1.65x on an AVX2
  EPYC), and bf16 -> f32 is exact: the products are the same and are summed in f32 either way,
  so only the summation order can differ. Where the CPU has bf16 units the bf16 GEMM is the fast
  one and `x` stays bf16. `cpu_path` makes the choice.
  """
  if (x.dtype == jnp.bfloat16 and jax.default_backend() == "cpu"
      and cpu_path.current().prefill == "f32"):
    return x.astype(jnp.float32)
  return x


def take_rows(table_VxD: jax.Array, ids: jax.Array) -> jax.Array:
  """`jnp.take(table, ids, axis=0)`: out-of-range ids give NaN rows. On CPU a bf16 table is read
  through `cpu_matmul.take_rows`, so XLA does not widen the whole table (see there)."""
  rows = cpu_matmul.take_rows(table_VxD, ids)
  return jnp.take(table_VxD, ids, axis=0) if rows is None else rows


def einsum_f32(spec: str, x: jax.Array, w: jax.Array, bf16_cotangent: bool = False
               ) -> jax.Array:
  """`jnp.einsum` accumulating in float32; `x`'s leading axes are batch-like (B, T, ...).

  On CPU, bf16 products with at most `cpu_matmul.MAX_ROWS` activation rows (decode steps) run
  through `cpu_matmul`'s bandwidth-bound kernels when they are available, and the others
  through XLA's GEMM in the dtype `cpu_upcast` picks for this CPU. Other backends run the plain
  einsum. `w` may be a `cpu_matmul.LayerSlice` (one layer of a stack, from `unstack_layers` on
  CPU).

  `bf16_cotangent`: the caller rounds the product to bf16 (so its cotangent is exact in bf16).
  bf16 products of the form "AC,CN->AN" then differentiate through `_matmul_bf16`, whose
  backward multiplies in bf16 too.
  """
  y = cpu_matmul.einsum(spec, x, w)
  if y is not None:
    return y
  if isinstance(w, cpu_matmul.LayerSlice):  # a decode prefill's layer: read in place, in turn
    w = w.gemm_operand(after=x)
  x, w = cpu_upcast(x), cpu_upcast(w)
  if bf16_cotangent and x.dtype == w.dtype == jnp.bfloat16:
    dims = _matmul_dims(spec, x.shape, w.shape)
    if dims is not None:
      m, k, n, out_shape = dims
      return _matmul_bf16(x.reshape(m, k), w.reshape(k, n)).reshape(out_shape)
  return jnp.einsum(spec, x, w, preferred_element_type=jnp.float32)


def _matmul_dims(spec: str, x_shape: tuple, w_shape: tuple
                 ) -> tuple[int, int, int, tuple[int, ...]] | None:
  """(M, K, N, output shape) when `spec` is a plain matrix product "AC,CN->AN" over groups of
  letters (e.g. "BTD,DNH->BTNH": A = BT, C = D, N = NH), else None."""
  ins, out = spec.replace(" ", "").split("->")
  lhs, rhs = ins.split(",")
  contracted = "".join(c for c in lhs if c in rhs and c not in out)
  rows, cols = lhs[:len(lhs) - len(contracted)], rhs[len(contracted):]
  if not contracted or lhs != rows + contracted or rhs != contracted + cols or out != rows + cols:
    return None
  m, k = math.prod(x_shape[:len(rows)]), math.prod(x_shape[len(rows):])
  return m, k, math.prod(w_shape[len(contracted):]), (*x_shape[:len(rows)],
                                                      *w_shape[len(contracted):])


def _transposed(a_2d: jax.Array) -> jax.Array:
  """aᵀ written out. On CPU XLA would fold the transpose into the dot's dimension numbers, and
  its bf16 GEMM runs a transposed operand at 1/3-1/2 of its plain rate (measured on an AVX-512
  BF16 EPYC: x·wᵀ 112, xᵀ·y 90 vs x·w 297 GFLOP/s at [2296, 2048] x [2048, 16384])."""
  if jax.default_backend() != "cpu":
    return a_2d.T
  # A 2-D transpose gets a column-major layout, which XLA:CPU's dot takes only in f32 (it widens
  # both operands); transposing the last two axes of a [1, ...] view and dropping the 1 gives a
  # row-major value, and the barrier keeps XLA from folding the copy back into the dot.
  return jax.lax.optimization_barrier(jnp.transpose(a_2d[None], (0, 2, 1))[0])


@jax.custom_vjp
def _matmul_bf16(x_MxK: jax.Array, w_KxN: jax.Array) -> jax.Array:
  return jax.lax.dot(x_MxK, w_KxN, preferred_element_type=jnp.float32)


def _matmul_bf16_fwd(x, w):
  # `symbolic_zeros`: each primal says whether it is differentiated; a frozen weight (a LoRA or
  # QLoRA base) gets no weight product at all.
  return _matmul_bf16(x.value, w.value), (x.value, w.value, x.perturbed, w.perturbed)


def _matmul_bf16_bwd(residuals, g_MxN):
  """Both gradient products with bf16 operands and f32 sums. The cotangent is exact in bf16
  (the caller casts the f32 product to bf16 right after it, see `einsum_f32`), so this only
  changes how XLA multiplies: autodiff's own transpose multiplies it in f32, against an f32
  copy of the weight (XLA:CPU's f32 GEMM runs at 1/3-1/2 of its bf16 rate here)."""
  x_MxK, w_KxN, x_grad, w_grad = residuals
  g_MxN = g_MxN.astype(jnp.bfloat16)
  dx_MxK = dw_KxN = None
  if x_grad:
    dx_MxK = jax.lax.dot(g_MxN, _transposed(w_KxN),
                         preferred_element_type=jnp.float32).astype(x_MxK.dtype)
  if w_grad:
    dw_KxN = jax.lax.dot(_transposed(x_MxK), g_MxN,
                         preferred_element_type=jnp.float32).astype(w_KxN.dtype)
  return dx_MxK, dw_KxN


_matmul_bf16.defvjp(_matmul_bf16_fwd, _matmul_bf16_bwd, symbolic_zeros=True)


def fan_in_init(in_axes: Sequence[int], out_axes: Sequence[int]) -> Initializer:
  """Truncated-normal init scaled by 1/sqrt(fan_in), for kernels with several in/out axes."""
  return nn.initializers.variance_scaling(
      1.0, "fan_in", "truncated_normal", in_axis=tuple(in_axes), out_axis=tuple(out_axes))


class Einsum(nn.Module):
  """A weight `w` (and optional bias `b`) applied with an einsum spec given at call time.

  The first `n_in` axes of `shape` are contracted with the input (they set the init's fan-in);
  the bias has the shape of the remaining, output axes. Params quantized by
  `quantize.quantize_params` (`w_int8` or `w_int4` and `w_scale` instead of `w`) are dequantized
  to the compute dtype inside the einsum, except int8 decode steps on CPU, which
  `cpu_matmul.einsum_int8` runs on the int8 values (see there). With `lora`, the LoRA adapters
  (`lora.py`) the params hold are added (and init creates them where `lora.targets` names this
  weight).
  """

  shape: tuple[int, ...]
  axes: tuple[str | None, ...]
  n_in: int = 1
  use_bias: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, spec: str, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    q = quantize.quantized_params(self)  # int8 / int4 params, or None
    y = None
    if q is not None and "w_int8" in q:  # few rows on CPU: the fused int8 kernel
      y = cpu_matmul.einsum_int8(spec, x, q["w_int8"], q["w_scale"])
    if y is None:
      if q is not None:
        w = quantize.quantized_weight(q, self.n_in, self.dtype, after=x)
      else:
        init = fan_in_init(range(self.n_in), range(self.n_in, len(self.shape)))
        w = self.param("w", nn.with_logical_partitioning(init, self.axes), self.shape,
                       self.param_dtype).astype(self.dtype)
      y = einsum_f32(spec, x, w, bf16_cotangent=self.dtype == jnp.bfloat16)
    if self.lora is not None:
      delta = lora.adapter_delta(self, self.lora, spec, x, self.shape, self.axes, self.n_in)
      y = y if delta is None else y + delta
    if self.use_bias:
      b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                       self.axes[self.n_in:]),
                     self.shape[self.n_in:], self.param_dtype)
      y = y + b.astype(jnp.float32)
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """Gemma RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + scale), computed in float32.

  The scale is stored as an offset from 1 and zero-initialised, as in both references.
  """

  eps: float = 1e-6
  axis_name: str = "embed"
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)),
        (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)


def layer_norm(eps: float, axis_name: str, dtype: jnp.dtype, param_dtype: jnp.dtype,
               name: str) -> nn.LayerNorm:
  """A standard LayerNorm (scale + bias) with two-pass variance, as PyTorch computes it."""
  return nn.LayerNorm(
      epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), (axis_name,)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axis_name,)),
      name=name)


def apply_rope(x_BxTxNxH: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding in the split-halves layout shared by big_vision and HF (no permutation).

  Angles are computed in float32 from float32 positions; the rotation runs in float32 and the
  result is cast back to the input dtype.
  """
  head_dim = x_BxTxNxH.shape[-1]
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq = 1.0 / (theta**exponents)
  angles_BxTxh = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  sin = jnp.sin(angles_BxTxh)[:, :, None, :]
  cos = jnp.cos(angles_BxTxh)[:, :, None, :]
  x1, x2 = jnp.split(x_BxTxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxH.dtype)


def remat_policy(name: str) -> Callable[..., bool] | None:
  """Maps a config remat name to a jax.checkpoint policy ("full" saves nothing)."""
  return {
      "full": None,
      "dots": jax.checkpoint_policies.checkpoint_dots,
      "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
  }[name]


def scan_layers(block: type[nn.Module], depth: int, remat: str, in_axes: tuple,
                **kwargs) -> nn.Module:
  """Wraps a block in (optional) remat and `nn.scan` over `depth` stacked layers.

  Scanning keeps compile time flat in depth; the stacked params get the logical axis "layers".
  """
  if remat != "none":
    block = nn.remat(block, policy=remat_policy(remat), prevent_cse=False)
  scanned = nn.scan(
      block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
      in_axes=in_axes,
      length=depth, metadata_params={nn.PARTITION_NAME: "layers"})
  return scanned(**kwargs)  # `name` goes in kwargs for compact parents; setup names by attribute
