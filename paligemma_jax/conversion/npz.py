"""big_vision `.npz` checkpoints as native leaves (`NpzSource`) and from them (`write_npz`).

An npz carries no config. Sizes come from the shapes; the rest comes from the variant, given by
name (`paligemma2_28b_448`) or as a `PaliGemmaConfig`, or else found by matching the shapes
against the published variants. A file that matches none gets PaliGemma's defaults (Gemma 2:
softcaps 50 / 30, no sliding window), unless the attention scale is ambiguous: big_vision scales
queries by head_dim^-0.5 or, in the 28B, (width / heads)^-0.5 = 144^-0.5, and shapes cannot tell
which; such a file needs the variant.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from paligemma_jax.conversion import buffers
from paligemma_jax.conversion.npz_io import NpyMember, NpzReader, NpzWriter
from paligemma_jax.conversion.npz_table import (COPY, EMBEDDING_ROW, NpzRow, groups,
                                                npz_array_shape, table)
from paligemma_jax.conversion.safetensors_io import CheckpointError
from paligemma_jax.conversion.streaming import (DTYPE_NAMES, ConversionError, Source, Specs,
                                                native_specs)
from paligemma_jax.conversion.vocab import big_vision_rows
from paligemma_jax.models import VARIANTS, GemmaConfig, PaliGemmaConfig, SigLIPConfig, get_variant

PREFIX = "params/"
_IMG = "img/Transformer/encoderblock/"
_SHAPE_FIELDS = {"vision": ("width", "depth", "mlp_dim", "num_heads", "patch_size", "image_size"),
                 "text": ("version", "width", "depth", "mlp_dim", "num_heads", "num_kv_heads",
                          "head_dim")}


def _shape_of(shapes: dict[str, tuple[int, ...]], key: str, path: str) -> tuple[int, ...]:
  if key not in shapes:
    raise CheckpointError(f"{path} lacks {PREFIX}{key}; it is not a big_vision PaliGemma "
                          f"checkpoint (found e.g. {sorted(shapes)[:1]})")
  return shapes[key]


def config_from_shapes(shapes: dict[str, tuple[int, ...]], path: str) -> PaliGemmaConfig:
  """The config the shapes determine, with PaliGemma's defaults for everything else."""
  get = lambda key: _shape_of(shapes, key, path)
  patch, _, _, width = get("img/embedding/kernel")
  _, tokens, _ = get("img/pos_embedding")
  vision_depth, _, vision_heads, _ = get(_IMG + "MultiHeadDotProductAttention_0/query/kernel")
  grid = math.isqrt(tokens)
  if grid * grid != tokens:
    raise CheckpointError(f"{path}: img/pos_embedding has {tokens} positions, not a square grid")
  vision = SigLIPConfig(width=width, depth=vision_depth, num_heads=vision_heads,
                        mlp_dim=get(_IMG + "MlpBlock_0/Dense_0/kernel")[2], patch_size=patch,
                        image_size=grid * patch)
  vocab, d = get("llm/embedder/input_embedding")
  depth, heads, _, head_dim = get("llm/layers/attn/q_einsum/w")
  version = 2 if "llm/layers/post_ffw_norm/scale" in shapes else 1
  gemma2 = dict(attn_logit_softcap=50.0, final_logit_softcap=30.0) if version == 2 else {}
  text = GemmaConfig(version=version, width=d, depth=depth, num_heads=heads,
                     num_kv_heads=get("llm/layers/attn/kv_einsum/w")[2], head_dim=head_dim,
                     mlp_dim=get("llm/layers/mlp/gating_einsum")[3], vocab_size=vocab, **gemma2)
  # big_vision's image placeholder is the first id past its vocabulary (vocab.py).
  return PaliGemmaConfig(vision=vision, text=text, image_token_id=vocab)


def _shape_difference(expected: PaliGemmaConfig, found: PaliGemmaConfig) -> str | None:
  for sub, fields in _SHAPE_FIELDS.items():
    for field in fields:
      x, y = getattr(getattr(expected, sub), field), getattr(getattr(found, sub), field)
      if x != y:
        return f"{sub}.{field} is {y} in the file, {x} in the config"
  return None


def resolve_config(inferred: PaliGemmaConfig, variant: str | PaliGemmaConfig | None,
                   path: str) -> tuple[PaliGemmaConfig, str]:
  """(config, how it was chosen) from the shapes and the optional variant."""
  if variant is None:
    matches = [name for name, c in VARIANTS.items() if _shape_difference(c, inferred) is None]
    if matches:
      variant = matches[0]
    else:
      t = inferred.text
      if t.version == 2 and t.width != t.num_heads * t.head_dim:
        raise ConversionError(
            f"{path}: this Gemma 2 has head_dim {t.head_dim} != width / heads "
            f"{t.width / t.num_heads:g}, so its attention scale (query_pre_attn_scalar) cannot "
            "be told from shapes and it matches no published variant; pass the variant "
            "(--variant, e.g. paligemma2_28b_224), the scale (--query_pre_attn_scalar) or a "
            "config (--variant_json)")
      return inferred, "inferred from shapes"
  if isinstance(variant, str):
    try:
      base, how = get_variant(variant), f"variant {variant}"
    except ValueError as e:
      raise ConversionError(str(e)) from None
  else:
    base, how = variant, "the given config"
  difference = _shape_difference(base, inferred)
  if difference:
    raise ConversionError(f"{path} does not have the shapes of {how}: {difference}")
  return base.replace(**{"text.vocab_size": inferred.text.vocab_size}), how


def _params_members(reader: NpzReader) -> dict[str, NpyMember]:
  """The members under `params/`, keys without the prefix (big_vision's params subtree)."""
  members = reader.members
  if any(k.startswith(PREFIX) for k in members):
    members = {k[len(PREFIX):]: m for k, m in members.items() if k.startswith(PREFIX)}
  return members


def shapes_config(path: str) -> PaliGemmaConfig:
  """The config an npz's shapes give, with PaliGemma's defaults for the rest (no variant
  matching, no check that the attention scale can be told): the base for a config the user
  completes."""
  reader = NpzReader(path)
  try:
    shapes = {k: m.shape for k, m in _params_members(reader).items()}
  finally:
    reader.close()
  return config_from_shapes(shapes, path)


class NpzSource(Source):
  """Native leaves of a big_vision npz (with or without the `params/` prefix)."""

  def __init__(self, path: str, variant: str | PaliGemmaConfig | None = None):
    self.path = path
    self.reader = NpzReader(path)
    members = _params_members(self.reader)
    shapes = {k: m.shape for k, m in members.items()}
    config, self.how = resolve_config(config_from_shapes(shapes, path), variant, path)
    stored = members["llm/embedder/input_embedding"].dtype.name
    stored = stored if stored in DTYPE_NAMES else "float32"
    self.config = config.replace(param_dtype=stored, dtype=stored)
    self._rows: dict[str, tuple[NpzRow, NpyMember]] = {}
    self._specs: Specs = {}
    rows = table(self.config.text.version)
    by_key, by_native = groups(rows), {PREFIX + r.native: r for r in rows}
    for key, spec in native_specs(self.config).items():
      row = by_native[key]
      if row.npz not in members:
        raise CheckpointError(f"{path} lacks {PREFIX}{row.npz} (needed for {key})")
      member = members[row.npz]
      want = npz_array_shape(by_key[row.npz], spec.shape)
      if member.shape != want:
        raise CheckpointError(f"{path}: {PREFIX}{row.npz} has shape {member.shape}, expected "
                              f"{want} for {key} {tuple(spec.shape)} ({self.how})")
      self._rows[key] = (row, member)
      self._specs[key] = jax.ShapeDtypeStruct(spec.shape, member.dtype)
    unused = sorted(set(members) - set(by_key))
    if unused:
      raise CheckpointError(f"{path} has {len(unused)} array(s) this model does not use, e.g. "
                            f"{PREFIX}{unused[0]}; is it a PaliGemma checkpoint?")

  def specs(self) -> Specs:
    return dict(self._specs)

  def read(self, key: str) -> np.ndarray:
    row, member = self._rows[key]
    if row.stacked and row.transform is not COPY:  # transform layer by layer into the output
      spec = self._specs[key]
      out = buffers.empty(spec.shape, spec.dtype)
      for i in range(spec.shape[0]):
        out[i] = row.transform.to_native(member.read(row.part, layer=i))
      return out
    return buffers.aligned(row.to_native(member.read(row.part)))

  def read_layer(self, key: str, layer: int) -> np.ndarray:
    row, member = self._rows[key]
    if not row.stacked:
      raise ValueError(f"{key} is not a stacked leaf")
    return row.transform.to_native(member.read(row.part, layer=layer))

  def close(self) -> None:
    self.reader.close()


def write_npz(source: Source, path: str) -> list[str]:
  """Writes `source` as a big_vision npz at `path` (a new file); returns notes for the user.

  Keys carry the `params/` prefix, layers are stacked, bf16 is stored as `|V2`; a shared array
  (kv_einsum, gating_einsum) is written layer by layer from its two native leaves.
  """
  config, specs = source.config, source.specs()
  notes = []
  rows_kept = big_vision_rows(config)
  if rows_kept < config.text.vocab_size:
    notes.append(f"embedding rows {rows_kept}..{config.text.vocab_size - 1} (HF's <image>, "
                 "spare and padding rows) are not part of the big_vision format; dropped")
  writer = NpzWriter(path)
  try:
    for npz_key, members in groups(table(config.text.version)).items():
      natives = [specs[PREFIX + m.native] for m in members]
      dtypes = {np.dtype(s.dtype) for s in natives}
      if len(dtypes) > 1:
        raise ConversionError(f"{', '.join(PREFIX + m.native for m in members)} have different "
                              f"dtypes {sorted(d.name for d in dtypes)} but share one npz array "
                              f"({npz_key}); pass a dtype to convert to")
      native_shape = tuple(natives[0].shape)
      if members[0] is EMBEDDING_ROW:
        native_shape = (rows_kept,) + native_shape[1:]
      shape = npz_array_shape(members, native_shape)
      if members[0].stacked:
        chunks = _layer_chunks(source, members, native_shape[0])
      else:
        chunks = [members[0].to_npz(source.read(PREFIX + members[0].native)[:native_shape[0]])]
      writer.write(PREFIX + npz_key, shape, dtypes.pop(), chunks)
      del chunks  # before the next array is read: one array's data alive at a time
  finally:
    writer.close()
  return notes


def _layer_chunks(source: Source, members: list[NpzRow], depth: int):
  """A stacked npz array one layer at a time (two parts stacked on axis 1 for shared arrays)."""
  for i in range(depth):
    layers = [m.transform.to_npz(source.read_layer(PREFIX + m.native, i)) for m in members]
    yield layers[0][None] if members[0].part is None else np.stack(layers)[None]
