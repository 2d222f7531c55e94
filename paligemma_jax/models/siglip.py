"""SigLIP ViT image encoder as PaliGemma uses it: all patch tokens, no pooling head.

Letters: B images, R resolution, P patch size, g = R / P grid side, M = g*g patches, W width,
N heads, H head dim, F MLP dim.

Parameters (scanned layers carry a leading "layers" axis of size depth):
  patch_embed/{w [P, P, 3, W], b [W]}, pos_embed [M, W],
  layers/{norm1, norm2}/{scale, bias}, layers/attn/{q,k,v}/{w [W, N, H], b [N, H]},
  layers/attn/out/{w [N, H, W], b [W]}, layers/mlp/fc1/{w [W, F], b [F]},
  layers/mlp/fc2/{w [F, W], b [W]}, final_norm/{scale, bias}.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from paligemma_jax.models.attention import dot_product_attention
from paligemma_jax.models.config import LoraConfig, SigLIPConfig
from paligemma_jax.models.layers import Einsum, layer_norm, scan_layers


class SigLIPAttention(nn.Module):
  """Multi-head self-attention with biases, no mask, scale head_dim^-0.5."""

  config: SigLIPConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x_BxMxW: jax.Array) -> jax.Array:
    w, n, h = self.config.width, self.config.num_heads, self.config.head_dim
    proj = lambda shape, axes, n_in, name: Einsum(shape, axes, n_in, True, self.dtype,
                                                  self.param_dtype, self.lora, name=name)
    qkv_axes = ("vit_embed", "vit_heads", "vit_head_dim")
    q = proj((w, n, h), qkv_axes, 1, "q")("BMW,WNH->BMNH", x_BxMxW)
    k = proj((w, n, h), qkv_axes, 1, "k")("BMW,WNH->BMNH", x_BxMxW)
    v = proj((w, n, h), qkv_axes, 1, "v")("BMW,WNH->BMNH", x_BxMxW)
    y = dot_product_attention(q, k, v, None, scale=h**-0.5)
    return proj((n, h, w), ("vit_heads", "vit_head_dim", "vit_embed"), 2, "out")(
        "BMNH,NHW->BMW", y)


class SigLIPMLP(nn.Module):
  """fc2(gelu_tanh(fc1(x))), both with biases."""

  config: SigLIPConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x_BxMxW: jax.Array) -> jax.Array:
    w, f = self.config.width, self.config.mlp_dim
    proj = lambda shape, axes, name: Einsum(shape, axes, 1, True, self.dtype, self.param_dtype,
                                            self.lora, name=name)
    y = proj((w, f), ("vit_embed", "vit_mlp"), "fc1")("BMW,WF->BMF", x_BxMxW)
    y = nn.gelu(y, approximate=True)
    return proj((f, w), ("vit_mlp", "vit_embed"), "fc2")("BMF,FW->BMW", y)


class SigLIPBlock(nn.Module):
  """Pre-LN encoder block: x += Attn(LN1(x)); x += MLP(LN2(x))."""

  config: SigLIPConfig
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, x_BxMxW: jax.Array) -> tuple[jax.Array, None]:
    cfg, dt, pdt = self.config, self.dtype, self.param_dtype
    norm = lambda name: layer_norm(cfg.layer_norm_eps, "vit_embed", dt, pdt, name)
    x_BxMxW = x_BxMxW + SigLIPAttention(cfg, dt, pdt, self.lora, name="attn")(norm("norm1")(x_BxMxW))
    x_BxMxW = x_BxMxW + SigLIPMLP(cfg, dt, pdt, self.lora, name="mlp")(norm("norm2")(x_BxMxW))
    x_BxMxW = nn.with_logical_constraint(x_BxMxW, ("activation_batch", None, "activation_embed"))
    return x_BxMxW, None


class SigLIP(nn.Module):
  """Images [B, R, R, 3] in [-1, 1] -> patch features [B, M, W] (after the final LayerNorm)."""

  config: SigLIPConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: str = "none"
  lora: LoraConfig | None = None

  @nn.compact
  def __call__(self, images_BxRxRx3: jax.Array, layers: Sequence[dict] | None = None
               ) -> jax.Array:
    """`layers` (per-layer params from `unstack_layers(params, "vision")`) runs the blocks
    unrolled over them instead of scanning the stacked ones: the same math."""
    cfg, dt, pdt = self.config, self.dtype, self.param_dtype
    r, p, g, w = cfg.image_size, cfg.patch_size, cfg.grid_size, cfg.width
    if images_BxRxRx3.ndim != 4 or images_BxRxRx3.shape[1:] != (r, r, 3):
      raise ValueError(
          f"images must have shape [batch, {r}, {r}, 3] for this model, got "
          f"{tuple(images_BxRxRx3.shape)}; resize them to {r}x{r} RGB with the processor")
    b = images_BxRxRx3.shape[0]

    # A stride-P, PxP, VALID conv is an einsum over non-overlapping patches, in row-major order.
    patches = images_BxRxRx3.reshape(b, g, p, g, p, 3)
    x = Einsum((p, p, 3, w), (None, None, None, "vit_embed"), 3, True, dt, pdt, self.lora,
               name="patch_embed")("BiPjQC,PQCW->BijW", patches)
    x_BxMxW = x.reshape(b, g * g, w)
    pos_embed = self.param(
        "pos_embed",
        nn.with_logical_partitioning(nn.initializers.normal(stddev=w**-0.5), (None, "vit_embed")),
        (g * g, w), pdt)
    x_BxMxW = (x_BxMxW + pos_embed.astype(dt)).astype(dt)

    if layers is None:
      scanned = scan_layers(SigLIPBlock, cfg.depth, self.remat, in_axes=(), name="layers",
                            config=cfg, dtype=dt, param_dtype=pdt, lora=self.lora)
      x_BxMxW, _ = scanned(x_BxMxW)
    else:
      block = SigLIPBlock(cfg, dt, pdt, self.lora, parent=None)  # applied functionally
      for layer in layers:
        x_BxMxW, _ = block.apply({"params": layer}, x_BxMxW)
    return layer_norm(cfg.layer_norm_eps, "vit_embed", dt, pdt, "final_norm")(x_BxMxW)
