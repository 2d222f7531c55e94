"""The segmentation-mask VQ-VAE behind PaliGemma's `<seg>` tokens (AiT, retrained on OpenImages).

A 64x64 mask crop is 16 codes (a 4x4 grid, row-major) out of a 128 x 512 codebook. The encoder
makes training targets; the decoder turns generated `<seg>` codes back into masks. Architecture
as big_vision's `pp/proj/paligemma/segmentation.py` (encoder) and
`evaluators/proj/paligemma/transfers/segmentation.py` (decoder), i.e. checkpoints.md §4:

  encoder: 2(x - 0.5) -> 4 x [conv 4x4 s2 + ReLU] (16, 32, 64, 128 ch, 64 -> 4 px)
           -> 2 residual blocks (128) -> conv 1x1 -> [B, 4, 4, 512] -> nearest code (squared L2)
  decoder: codebook rows [B, 4, 4, 512] -> conv 1x1 (128) + ReLU -> 2 residual blocks (128)
           -> 4 x [conv-transpose 4x4 s2 + ReLU] (128, 64, 32, 16 ch, 4 -> 64 px) -> conv 1x1 (1)
  residual block: x + conv1x1(relu(conv3x3(relu(conv3x3(x)))))

The decoder output is a logit-like mask, nominally in [-1, 1] (no final tanh); inside is `> 0`.

Parameters (flax layouts; `{kernel [kH, kW, I, O], bias [O]}` per conv, conv-transposes store
`kernel [4, 4, O, I]` as flax's `transpose_kernel=True` expects, which is PyTorch's (I, O, kH, kW)
transposed (2, 3, 1, 0)):
  encoder/{codebook [128, 512], down_{0..3}, res_{0,1}/conv_{0,1,2}, conv_out}
  decoder/{codebook [128, 512], conv_in, res_{0,1}/conv_{0,1,2}, up_{0..3}, conv_out}
Both halves carry the codebook so that each module is usable on its own; vae-oid.npz stores one.

The widths are those of the released `vae-oid.npz` and fixed: there are no variants, and the
converter's key table (conversion/vqvae.py) follows the layer count. No logical axis names: the
model has 2.1M parameters and runs on the host (big_vision jits it with backend="cpu").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NUM_CODES = 128  # codebook rows = number of <seg> tokens
CODE_DIM = 512
MASK_SIZE = 64  # masks are encoded / decoded at 64x64
GRID = 4  # 64 / 2^4: 4x4 codes per mask
NUM_TOKENS = GRID * GRID  # 16 <seg> tokens per object
ENCODER_CHANNELS = (16, 32, 64, 128)
DECODER_CHANNELS = (128, 64, 32, 16)
RES_WIDTH = 128
NUM_RES_BLOCKS = 2

_HIGHEST = jax.lax.Precision.HIGHEST


def _codebook(module: nn.Module) -> jax.Array:
  return module.param("codebook", nn.initializers.normal(stddev=1.0), (NUM_CODES, CODE_DIM),
                      jnp.float32)


class ResBlock(nn.Module):
  """x + conv1x1(relu(conv3x3(relu(conv3x3(x))))); [B, h, w, C] -> [B, h, w, C]."""

  features: int

  @nn.compact
  def __call__(self, x_BxhxwxC: jax.Array) -> jax.Array:
    conv = lambda k, name: nn.Conv(self.features, (k, k), padding=k // 2, precision=_HIGHEST,
                                   name=name)
    y = nn.relu(conv(3, "conv_0")(x_BxhxwxC))
    y = nn.relu(conv(3, "conv_1")(y))
    return x_BxhxwxC + conv(1, "conv_2")(y)


class VQVAEEncoder(nn.Module):
  """Masks [B, 64, 64, 1] in [0, 1] -> codes [B, 16] int32 (row-major 4x4 grid)."""

  def setup(self) -> None:
    self.codebook = _codebook(self)
    # Conv 4x4 stride 2 with padding 1 = TF "SAME" here (total pad 2, split 1/1), as big_vision.
    self.down = [nn.Conv(c, (4, 4), strides=(2, 2), padding=1, precision=_HIGHEST)
                 for c in ENCODER_CHANNELS]
    self.res = [ResBlock(RES_WIDTH) for _ in range(NUM_RES_BLOCKS)]
    self.conv_out = nn.Conv(CODE_DIM, (1, 1), precision=_HIGHEST)

  def latents(self, masks_Bx64x64x1: jax.Array) -> jax.Array:
    """Continuous encoder output [B, 4, 4, 512] (before quantisation)."""
    if masks_Bx64x64x1.ndim != 4 or masks_Bx64x64x1.shape[1:] != (MASK_SIZE, MASK_SIZE, 1):
      raise ValueError(f"masks must have shape [batch, {MASK_SIZE}, {MASK_SIZE}, 1], got "
                       f"{tuple(masks_Bx64x64x1.shape)}; crop and resize them to 64x64 first")
    x = 2.0 * (masks_Bx64x64x1.astype(jnp.float32) - 0.5)  # [0, 1] -> [-1, 1]
    for conv in self.down:
      x = nn.relu(conv(x))
    for block in self.res:  # No ReLU after the residual blocks (big_vision, AiT).
      x = block(x)
    return self.conv_out(x)

  def __call__(self, masks_Bx64x64x1: jax.Array) -> jax.Array:
    z_Bx4x4xE = self.latents(masks_Bx64x64x1)
    z_NxE = z_Bx4x4xE.reshape(-1, CODE_DIM)
    # |z|^2 + |e|^2 - 2 z.e, the expansion big_vision and AiT use; argmin takes the first minimum.
    dist_NxC = (jnp.sum(z_NxE**2, axis=1, keepdims=True) + jnp.sum(self.codebook**2, axis=1)
                - 2.0 * jnp.matmul(z_NxE, self.codebook.T, precision=_HIGHEST))
    return jnp.argmin(dist_NxC, axis=1).astype(jnp.int32).reshape(-1, NUM_TOKENS)


class VQVAEDecoder(nn.Module):
  """Codes [B, 16] ints in [0, 128) -> mask logits [B, 64, 64, 1] (inside = `> 0`).

  Codes outside [0, 128) gather NaN rows (jnp.take's "fill" mode): callers validate first.
  """

  @nn.compact
  def __call__(self, codes_Bx16: jax.Array) -> jax.Array:
    if codes_Bx16.ndim != 2 or codes_Bx16.shape[1] != NUM_TOKENS:
      raise ValueError(f"codes must have shape [batch, {NUM_TOKENS}], got "
                       f"{tuple(codes_Bx16.shape)}")
    b = codes_Bx16.shape[0]
    codebook = _codebook(self)
    x = jnp.take(codebook, codes_Bx16.reshape(-1), axis=0, mode="fill", fill_value=jnp.nan)
    x = x.reshape(b, GRID, GRID, CODE_DIM)
    x = nn.relu(nn.Conv(RES_WIDTH, (1, 1), precision=_HIGHEST, name="conv_in")(x))
    for i in range(NUM_RES_BLOCKS):
      x = ResBlock(RES_WIDTH, name=f"res_{i}")(x)
    for i, c in enumerate(DECODER_CHANNELS):
      # flax padding 2 pads the stride-dilated input by k - 1 - p = 2: PyTorch ConvTranspose2d
      # (k=4, s=2, p=1), which doubles the size. transpose_kernel=True flips the kernel
      # spatially and swaps I/O, matching PyTorch's (I, O, kH, kW) weight read as (kH, kW, O, I).
      x = nn.ConvTranspose(c, (4, 4), strides=(2, 2), padding=2, transpose_kernel=True,
                           precision=_HIGHEST, name=f"up_{i}")(x)
      x = nn.relu(x)
    return nn.Conv(1, (1, 1), precision=_HIGHEST, name="conv_out")(x)


def vqvae_param_shapes() -> dict:
  """jax.ShapeDtypeStruct of every VQ-VAE parameter, {"encoder": ..., "decoder": ...}."""
  masks = jnp.zeros((1, MASK_SIZE, MASK_SIZE, 1), jnp.float32)
  codes = jnp.zeros((1, NUM_TOKENS), jnp.int32)
  init = lambda rng: {"encoder": VQVAEEncoder().init(rng, masks)["params"],
                      "decoder": VQVAEDecoder().init(rng, codes)["params"]}
  return jax.eval_shape(init, jax.random.key(0))


def init_vqvae_params(seed: int = 0) -> dict:
  """Random VQ-VAE params for tests and demos (the real weights come from vae-oid.npz).

  Kernels are He-normal (variance 2 / fan-in, so activations neither vanish nor explode through
  the ReLU stack), biases N(0, 0.1^2), the codebook N(0, 1); both halves get the same codebook.
  NumPy, not flax's `init`: XLA takes 10+ s on CPU to compile the random initialisers.
  """
  rng = np.random.default_rng(seed)

  def leaf(path: tuple, shape: jax.ShapeDtypeStruct) -> np.ndarray:
    name = path[-1].key
    if name == "kernel":  # [kH, kW, I, O], or [kH, kW, O, I] for conv-transposes
      is_transpose = path[-2].key.startswith("up_")
      fan_in = shape.shape[0] * shape.shape[1] * shape.shape[3 if is_transpose else 2]
      if is_transpose:
        fan_in //= 4  # Stride 2: each output sums a quarter of the kernel taps.
      std = (2.0 / fan_in) ** 0.5
    else:
      std = 0.1 if name == "bias" else 1.0
    return (std * rng.standard_normal(shape.shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(leaf, vqvae_param_shapes())
  params["decoder"]["codebook"] = params["encoder"]["codebook"]
  return params


# Plain functions over jitted ones: a partial of them pickles (Grain's worker processes get the
# training input's mask encoder pickled); a jitted function does not.
_decode = jax.jit(lambda params, codes: VQVAEDecoder().apply({"params": params}, codes))
_encode = jax.jit(lambda params, masks: VQVAEEncoder().apply({"params": params}, masks))


def decode_codes(decoder_params: dict, codes_Bx16: jax.Array) -> jax.Array:
  """Mask logits [B, 64, 64, 1] of codes [B, 16] (see `VQVAEDecoder`)."""
  return _decode(decoder_params, codes_Bx16)


def encode_masks(encoder_params: dict, masks_Bx64x64x1: jax.Array) -> jax.Array:
  """Codes [B, 16] int32 of masks [B, 64, 64, 1] in [0, 1] (see `VQVAEEncoder`)."""
  return _encode(encoder_params, masks_Bx64x64x1)
