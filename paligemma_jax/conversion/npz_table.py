"""The big_vision npz <-> native parameter table: one row per native leaf, with a named transform.

npz keys are relative to the `params/` prefix of the release files. Layer parameters are stacked
on a leading axis on both sides, so a transform maps one layer's slice (`layer_to_npz` /
`layer_to_native`) and is applied per layer; unstacked leaves use `whole_*`.

Two npz arrays hold two native leaves each, stacked on axis 1 (after the layer axis):
`llm/layers/attn/kv_einsum/w` [L, 2, K, D, H] (part 0 = k, 1 = v) and `llm/layers/mlp/
gating_einsum` [L, 2, D, F] (0 = gate, 1 = up). Their rows carry `part`; a writer groups rows by
npz key (`groups`) and a reader slices `[:, part]`.

Native vs big_vision (per layer): q (D, N, H) vs q_einsum (N, D, H); k, v (D, K, H) vs kv_einsum
parts (K, D, H); everything else has the same layout (SigLIP kernels, attn out (N, H, D), MLP
(D, F) / (F, D), the patch conv HWIO), except pos_embed (N_img, W) vs (1, N_img, W).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from paligemma_jax.conversion import buffers

# -- transforms --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NpzTransform:
  """Invertible maps between a native array and its npz array, with the shape map."""

  name: str
  to_npz: Callable[[np.ndarray], np.ndarray]
  to_native: Callable[[np.ndarray], np.ndarray]
  npz_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


COPY = NpzTransform("copy", lambda a: a, lambda a: a, lambda s: tuple(s))
# (X, Y, Z) <-> (Y, X, Z): native q/k/v (D, heads, H) <-> big_vision (heads, D, H).
SWAP01 = NpzTransform("swap_01", lambda a: a.transpose(1, 0, 2), lambda a: a.transpose(1, 0, 2),
                      lambda s: (s[1], s[0], s[2]))
# (N, W) <-> (1, N, W): big_vision keeps a batch axis on the position embedding.
LEADING_ONE = NpzTransform("leading_one", lambda a: a[None], lambda a: a[0],
                           lambda s: (1,) + tuple(s))


@dataclasses.dataclass(frozen=True)
class NpzRow:
  native: str  # "/"-joined path under "params/"
  npz: str  # key under "params/" in the npz
  transform: NpzTransform  # per layer when `stacked`
  stacked: bool = False  # leading layer axis on both sides
  part: int | None = None  # index on axis 1 of a shared npz array (kv_einsum, gating_einsum)

  def npz_shape(self, native_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The npz shape of this row's own data (one part, if shared)."""
    if self.stacked:
      return (native_shape[0],) + self.transform.npz_shape(native_shape[1:])
    return self.transform.npz_shape(native_shape)

  def to_npz(self, native: np.ndarray, layer: int | None = None) -> np.ndarray:
    return self.transform.to_npz(native if layer is None else native[layer])

  def to_native(self, npz: np.ndarray) -> np.ndarray:
    """The native leaf from this row's npz data ([:, part] already taken if shared)."""
    if not self.stacked:
      return self.transform.to_native(npz)
    if self.transform is COPY:
      return npz
    out = buffers.empty((npz.shape[0],) + self.transform.to_native(npz[0]).shape, npz.dtype)
    for i in range(npz.shape[0]):
      out[i] = self.transform.to_native(npz[i])
    return out


# -- the table ---------------------------------------------------------------------------------

_IMG = "img/Transformer/encoderblock/"
_ATT = _IMG + "MultiHeadDotProductAttention_0/"
_VISION_ROWS = [
    NpzRow("vision/patch_embed/w", "img/embedding/kernel", COPY),
    NpzRow("vision/patch_embed/b", "img/embedding/bias", COPY),
    NpzRow("vision/pos_embed", "img/pos_embedding", LEADING_ONE),
    NpzRow("vision/layers/norm1/scale", _IMG + "LayerNorm_0/scale", COPY, True),
    NpzRow("vision/layers/norm1/bias", _IMG + "LayerNorm_0/bias", COPY, True),
    NpzRow("vision/layers/norm2/scale", _IMG + "LayerNorm_1/scale", COPY, True),
    NpzRow("vision/layers/norm2/bias", _IMG + "LayerNorm_1/bias", COPY, True),
    NpzRow("vision/layers/mlp/fc1/w", _IMG + "MlpBlock_0/Dense_0/kernel", COPY, True),
    NpzRow("vision/layers/mlp/fc1/b", _IMG + "MlpBlock_0/Dense_0/bias", COPY, True),
    NpzRow("vision/layers/mlp/fc2/w", _IMG + "MlpBlock_0/Dense_1/kernel", COPY, True),
    NpzRow("vision/layers/mlp/fc2/b", _IMG + "MlpBlock_0/Dense_1/bias", COPY, True),
]
for _ours, _theirs in (("q", "query"), ("k", "key"), ("v", "value"), ("out", "out")):
  _VISION_ROWS += [NpzRow(f"vision/layers/attn/{_ours}/w", f"{_ATT}{_theirs}/kernel", COPY, True),
                   NpzRow(f"vision/layers/attn/{_ours}/b", f"{_ATT}{_theirs}/bias", COPY, True)]
_VISION_ROWS += [
    NpzRow("vision/final_norm/scale", "img/Transformer/encoder_norm/scale", COPY),
    NpzRow("vision/final_norm/bias", "img/Transformer/encoder_norm/bias", COPY),
    NpzRow("projector/w", "img/head/kernel", COPY),
    NpzRow("projector/b", "img/head/bias", COPY),
]

EMBEDDING_ROW = NpzRow("llm/embedding", "llm/embedder/input_embedding", COPY)
_L = "llm/layers/"
_TEXT_ROWS = [
    EMBEDDING_ROW,
    NpzRow("llm/final_norm/scale", "llm/final_norm/scale", COPY),
    NpzRow(_L + "attn/q/w", _L + "attn/q_einsum/w", SWAP01, True),
    NpzRow(_L + "attn/k/w", _L + "attn/kv_einsum/w", SWAP01, True, part=0),
    NpzRow(_L + "attn/v/w", _L + "attn/kv_einsum/w", SWAP01, True, part=1),
    NpzRow(_L + "attn/out/w", _L + "attn/attn_vec_einsum/w", COPY, True),
    NpzRow(_L + "mlp/gate/w", _L + "mlp/gating_einsum", COPY, True, part=0),  # no "/w" in bv
    NpzRow(_L + "mlp/up/w", _L + "mlp/gating_einsum", COPY, True, part=1),
    NpzRow(_L + "mlp/down/w", _L + "mlp/linear", COPY, True),
    NpzRow(_L + "pre_attn_norm/scale", _L + "pre_attention_norm/scale", COPY, True),
    NpzRow(_L + "pre_mlp_norm/scale", _L + "pre_ffw_norm/scale", COPY, True),
]
# Gemma 2 only. (No name trap here: big_vision names its norms by position in both families.)
_GEMMA2_ROWS = [
    NpzRow(_L + "post_attn_norm/scale", _L + "post_attention_norm/scale", COPY, True),
    NpzRow(_L + "post_mlp_norm/scale", _L + "post_ffw_norm/scale", COPY, True),
]


def table(gemma_version: int) -> list[NpzRow]:
  """Every leaf of a PaliGemma with Gemma `gemma_version` (1 or 2)."""
  return _VISION_ROWS + _TEXT_ROWS + (_GEMMA2_ROWS if gemma_version == 2 else [])


def groups(rows: list[NpzRow]) -> dict[str, list[NpzRow]]:
  """npz key -> the rows stored in it (two, ordered by part, for the shared arrays)."""
  out: dict[str, list[NpzRow]] = {}
  for row in rows:
    out.setdefault(row.npz, []).append(row)
  for key, members in out.items():
    parts = [r.part for r in members]
    if len(members) > 1 and sorted(parts) != list(range(len(members))):
      raise AssertionError(f"npz table: {key} has parts {parts}")
    members.sort(key=lambda r: r.part or 0)
  return out


def npz_array_shape(members: list[NpzRow], native_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape of an npz array from one member's native shape (parts add axis 1)."""
  shape = members[0].npz_shape(native_shape)
  if members[0].part is None:
    return shape
  return (shape[0], len(members)) + shape[1:]
