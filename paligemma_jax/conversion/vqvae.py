"""`vae-oid.npz` (PyTorch state-dict names and layouts) <-> native VQ-VAE params, by one table.

The file holds the AiT mask VQ-VAE as a PyTorch state dict (checkpoints.md §4.1): convs are OIHW,
conv-transposes (I, O, kH, kW), the codebook is the plain buffer `_vq_vae._embedding` [128, 512].
Each row of `TABLE` names an npz key, a native "/"-joined path (models/vqvae.py) and the
transform between them. Loading and saving are strict: a missing, unexpected or mis-shaped key is
a one-line `CheckpointError` naming it. The only keys skipped are the EMA training buffers
`_vq_vae._ema_*` (e.g. `_ema_w`, `_ema_cluster_size`), which inference never reads.

The codebook row appears twice (encoder/codebook and decoder/codebook, see models/vqvae.py);
saving requires the two copies to be identical, so npz -> params -> npz is bit-exact.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
from flax import traverse_util

from paligemma_jax.conversion.hf_table import COPY, CONV, Transform
from paligemma_jax.conversion.safetensors_io import CheckpointError
from paligemma_jax.models.vqvae import vqvae_param_shapes

IGNORED_PREFIX = "_vq_vae._ema_"  # EMA codebook statistics: training-only buffers

# PyTorch ConvTranspose2d (I, O, kH, kW) <-> flax `transpose_kernel=True` (kH, kW, O, I): the same
# axis permutation as a conv's OIHW <-> HWIO, named apart so the table says which layer is which.
CONV_TRANSPOSE = Transform("conv_transpose_iohw_hwoi", CONV.to_native, CONV.to_hf, CONV.hf_shape)


@dataclasses.dataclass(frozen=True)
class NpzRow:
  npz: str  # key in vae-oid.npz
  native: str  # "/"-joined path in the params tree
  transform: Transform


def _conv(npz: str, native: str, transform: Transform = CONV) -> list[NpzRow]:
  return [NpzRow(f"{npz}.weight", f"{native}/kernel", transform),
          NpzRow(f"{npz}.bias", f"{native}/bias", COPY)]


def _res_block(npz: str, native: str) -> list[NpzRow]:
  # AiT's residual block is `net = Sequential(conv3x3, ReLU, conv3x3, ReLU, conv1x1)`.
  return (_conv(f"{npz}.net.0", f"{native}/conv_0") + _conv(f"{npz}.net.2", f"{native}/conv_1")
          + _conv(f"{npz}.net.4", f"{native}/conv_2"))


# Sequential indices skip the parameter-free ReLUs: encoder 0,2,4,6 = convs, 8,9 = residual
# blocks, 10 = conv to code space; decoder 0 = conv, 2,3 = blocks, 4,6,8,10 = conv-transposes,
# 12 = conv to one channel.
TABLE: tuple[NpzRow, ...] = tuple(
    [NpzRow("_vq_vae._embedding", "encoder/codebook", COPY),
     NpzRow("_vq_vae._embedding", "decoder/codebook", COPY)]
    + _conv("encoder.0", "encoder/down_0") + _conv("encoder.2", "encoder/down_1")
    + _conv("encoder.4", "encoder/down_2") + _conv("encoder.6", "encoder/down_3")
    + _res_block("encoder.8", "encoder/res_0") + _res_block("encoder.9", "encoder/res_1")
    + _conv("encoder.10", "encoder/conv_out")
    + _conv("decoder.0", "decoder/conv_in")
    + _res_block("decoder.2", "decoder/res_0") + _res_block("decoder.3", "decoder/res_1")
    + _conv("decoder.4", "decoder/up_0", CONV_TRANSPOSE)
    + _conv("decoder.6", "decoder/up_1", CONV_TRANSPOSE)
    + _conv("decoder.8", "decoder/up_2", CONV_TRANSPOSE)
    + _conv("decoder.10", "decoder/up_3", CONV_TRANSPOSE)
    + _conv("decoder.12", "decoder/conv_out"))


def _native_shapes() -> dict[str, tuple[int, ...]]:
  flat = traverse_util.flatten_dict(vqvae_param_shapes(), sep="/")
  return {path: tuple(s.shape) for path, s in flat.items()}


def _first(names: list[str], what: str) -> str:
  more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
  return f"{what} {names[0]}{more}"


def vqvae_params_from_npz(arrays: Mapping[str, np.ndarray]) -> dict:
  """Native params {"encoder": ..., "decoder": ...} from the arrays of a vae-oid.npz.

  Raises:
    CheckpointError: a table key is missing, a key is neither in the table nor an EMA buffer, or
      an array has the wrong shape or a non-float dtype.
  """
  expected = {row.npz for row in TABLE}
  unexpected = sorted(k for k in arrays if k not in expected and not k.startswith(IGNORED_PREFIX))
  if unexpected:
    raise CheckpointError(_first(unexpected, "unexpected VQ-VAE npz key") +
                          "; is this the segmentation VQ-VAE (vae-oid.npz)?")
  missing = sorted(expected - set(arrays))
  if missing:
    raise CheckpointError(_first(missing, "VQ-VAE npz key") + " is missing")
  shapes = _native_shapes()
  flat = {}
  for row in TABLE:
    array = np.asarray(arrays[row.npz])
    want = row.transform.hf_shape(shapes[row.native])
    if array.shape != want:
      raise CheckpointError(f"VQ-VAE npz key {row.npz} has shape {array.shape}, expected {want} "
                            f"(-> {row.native} {shapes[row.native]})")
    if not np.issubdtype(array.dtype, np.floating):
      raise CheckpointError(f"VQ-VAE npz key {row.npz} has dtype {array.dtype}, expected float")
    flat[row.native] = np.ascontiguousarray(row.transform.to_native(array, shapes[row.native]))
  return traverse_util.unflatten_dict(flat, sep="/")


def vqvae_params_to_npz(params: Mapping) -> dict[str, np.ndarray]:
  """The inverse: native params -> {npz key: array} with vae-oid.npz's names and layouts.

  Raises:
    CheckpointError: a parameter is missing, unexpected or mis-shaped, or the encoder's and
      decoder's codebooks differ (the file stores one).
  """
  flat = {path: np.asarray(leaf) for path, leaf in
          traverse_util.flatten_dict(dict(params), sep="/").items()}
  shapes = _native_shapes()
  unexpected = sorted(set(flat) - set(shapes))
  if unexpected:
    raise CheckpointError(_first(unexpected, "unexpected VQ-VAE parameter"))
  missing = sorted(set(shapes) - set(flat))
  if missing:
    raise CheckpointError(_first(missing, "VQ-VAE parameter") + " is missing")
  arrays: dict[str, np.ndarray] = {}
  for row in TABLE:
    leaf = flat[row.native]
    if leaf.shape != shapes[row.native]:
      raise CheckpointError(f"VQ-VAE parameter {row.native} has shape {leaf.shape}, "
                            f"expected {shapes[row.native]}")
    array = np.ascontiguousarray(row.transform.to_hf(leaf))
    if row.npz in arrays and not np.array_equal(arrays[row.npz], array):
      raise CheckpointError(f"{row.native} differs from the other copy of {row.npz}; "
                            "the encoder and decoder must share one codebook")
    arrays.setdefault(row.npz, array)
  return arrays


def load_vqvae_npz(path: str | os.PathLike) -> dict:
  """Reads vae-oid.npz (or a file written by `save_vqvae_npz`) into native params."""
  try:
    loaded = np.load(path)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
      raise ValueError("it holds a single array, not a named archive")
    with loaded as f:
      arrays = {key: f[key] for key in f.files}
  except FileNotFoundError:
    raise CheckpointError(f"VQ-VAE checkpoint {path} does not exist") from None
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path} is not a readable .npz file ({e})") from None
  return vqvae_params_from_npz(arrays)


def save_vqvae_npz(params: Mapping, path: str | os.PathLike) -> None:
  """Writes native params as an npz with vae-oid.npz's keys, at exactly `path`."""
  arrays = vqvae_params_to_npz(params)
  with open(path, "wb") as f:  # A file object: np.savez would append ".npz" to a bare path.
    np.savez(f, **arrays)


def convert_vqvae(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False
                  ) -> str:
  """vae-oid.npz -> Orbax params (or Orbax -> npz when `dst` ends in .npz); returns a summary.

  The Orbax side is a plain tree `{"encoder": ..., "decoder": ...}` (no PaliGemma config);
  `paligemma_jax.checkpoints.load_tree` reads it back. Outputs are written atomically and an
  existing destination is replaced only with `overwrite`.
  """
  from paligemma_jax import checkpoints  # only this direction needs Orbax
  src, dst = os.fspath(src), os.fspath(dst)
  if os.path.exists(dst) and not overwrite:
    raise CheckpointError(f"{dst} already exists; pass --overwrite to replace it")
  if dst.endswith(".npz"):
    params = checkpoints.load_tree(src)
    tmp = dst + ".incomplete"
    try:
      save_vqvae_npz(params, tmp)
      os.replace(tmp, dst)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  else:
    params = load_vqvae_npz(src)
    checkpoints.save_tree(dst, params, overwrite=overwrite)
  count = sum(np.asarray(a).size for part in params.values() for a in _leaves(part))
  return f"VQ-VAE {src} -> {dst}: {count:,} parameters"


def _leaves(tree: Mapping) -> list:
  out = []
  for value in tree.values():
    out.extend(_leaves(value) if isinstance(value, Mapping) else [value])
  return out
