"""The PaliGemma tokenizer: a Gemma SentencePiece model with <loc>/<seg> pieces, plus HF's <image> id.

PaliGemma's tokenizer is Gemma's (pad 0, eos 1, bos 2, unk 3) with the 1024 `<locNNNN>` and 128
`<segNNN>` strings appended as user-defined pieces, so each of them encodes to one id. HF's
processor appends one more token, `<image>`, at the first free id (= the SentencePiece vocab size);
it is a placeholder that the model overwrites with image embeddings, never text.

Every id here is looked up in the model file, never hard-coded, so the same code serves the real
257,152-piece tokenizer and the small stand-in tokenizer of the tests.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

NUM_LOC_TOKENS = 1024
NUM_SEG_TOKENS = 128
LOC_TOKENS: tuple[str, ...] = tuple(f"<loc{k:04d}>" for k in range(NUM_LOC_TOKENS))
LOC_MAX = NUM_LOC_TOKENS - 1  # 1023: v = bin / 1023, not / 1024 (processor.md §5)


def loc_bins(box_normalized: Sequence[float]) -> tuple[int, int, int, int]:
  """Bins of a normalised (ymin, xmin, ymax, xmax) box: clip(round(v * 1023), 0, 1023).

  float32 and half-to-even rounding, as big_vision's `tf.round(bbox * 1023)` on TFDS's float32
  boxes (0.5 -> 511.5 -> 512).
  """
  v = np.asarray(box_normalized, np.float32)
  if v.shape != (4,) or not np.all(np.isfinite(v)):
    raise ValueError(f"a box is 4 finite numbers (ymin, xmin, ymax, xmax) in [0, 1], got {v}")
  bins = np.clip(np.round(v * np.float32(LOC_MAX)), 0, LOC_MAX).astype(np.int64)
  return tuple(int(b) for b in bins)


def loc_tokens(box_normalized: Sequence[float]) -> str:
  """`<locNNNN>` x 4, no spaces, order ymin xmin ymax xmax."""
  return "".join(LOC_TOKENS[b] for b in loc_bins(box_normalized))
SEG_TOKENS: tuple[str, ...] = tuple(f"<seg{k:03d}>" for k in range(NUM_SEG_TOKENS))
IMAGE_TOKEN = "<image>"


class Tokenizer:
  """Encodes and decodes text with a Gemma/PaliGemma SentencePiece `.model` file.

  Attributes:
    path: the model file.
    bos_id, eos_id, pad_id, unk_id: Gemma's special ids as stored in the model.
    image_token_id: the `<image>` placeholder id (a piece of the model if it has one, else the
      SentencePiece vocab size, which is where HF's PaliGemmaProcessor appends it).
    vocab_size: number of ids the model's embedding must hold (pieces, + 1 if `<image>` was
      appended).
    newline_id: the id of "\\n", the prefix/suffix separator.
  """

  def __init__(self, model_path: str | os.PathLike) -> None:
    self.path = pathlib.Path(model_path)
    if not self.path.is_file():
      raise FileNotFoundError(f"tokenizer model not found: {self.path} (pass a SentencePiece .model file)")
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.Load(str(self.path))
    except (OSError, RuntimeError) as e:
      first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise ValueError(f"cannot read {self.path} as a SentencePiece model: {first_line}") from None

    self.sp_vocab_size: int = self._sp.GetPieceSize()
    self.bos_id: int = self._sp.bos_id()
    self.eos_id: int = self._sp.eos_id()
    self.pad_id: int = self._sp.pad_id()
    self.unk_id: int = self._sp.unk_id()
    for name, value in (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id)):
      if value < 0:
        raise ValueError(f"tokenizer {self.path} defines no {name} piece; PaliGemma needs a Gemma tokenizer")

    image_id = self._piece_id(IMAGE_TOKEN)
    self.image_token_id: int = self.sp_vocab_size if image_id is None else image_id
    self.vocab_size: int = self.sp_vocab_size + (1 if image_id is None else 0)

    newline = self._sp.EncodeAsIds("\n")
    if len(newline) != 1:
      raise ValueError(f"tokenizer {self.path}: '\\n' encodes to {newline}, not one id; use a Gemma tokenizer")
    self.newline_id: int = newline[0]

    # Strings that HF's tokenizer treats as special tokens inside text: the model's control pieces
    # (pad/eos/bos/<mask>/...) and unk. Longest first, so a regex alternation prefers the longest.
    specials = {self._sp.IdToPiece(i): i for i in range(self.sp_vocab_size) if self._sp.IsControl(i)}
    specials[self._sp.IdToPiece(self.unk_id)] = self.unk_id
    self._special_ids: dict[str, int] = specials
    alternation = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    self._special_re = re.compile(f"({alternation})")

  def __repr__(self) -> str:
    return f"Tokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"

  def _piece_id(self, piece: str) -> int | None:
    """Id of `piece` if the model has it as a piece (PieceToId answers unk for unknown pieces)."""
    i = self._sp.PieceToId(piece)
    return None if i == self.unk_id and piece != self._sp.IdToPiece(self.unk_id) else i

  def encode(self, text: str, *, parse_special: bool = False) -> list[int]:
    """Token ids of `text`, without bos or eos.

    Args:
      text: the string to encode.
      parse_special: if True, the model's control-piece strings inside the text ("<bos>",
        "<eos>", "<pad>", "<mask>", ...) and "<unk>" become their ids, as in HF's tokenizer;
        if False (SentencePiece and big_vision behaviour) they are ordinary text.
    """
    if not isinstance(text, str):
      raise ValueError(f"encode expects a str, got {type(text).__name__}; decode bytes or convert first")
    if not parse_special:
      return self._sp.EncodeAsIds(text)
    ids: list[int] = []
    for part in self._special_re.split(text):
      if part in self._special_ids:
        ids.append(self._special_ids[part])
      elif part:
        ids.extend(self._sp.EncodeAsIds(part))
    return ids

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Text of a 1-D id sequence: stops at the first eos and drops pad, bos and `<image>` ids.

    Ids the tokenizer has no piece for (negative, or >= its vocabulary, such as the 64 padding
    rows HF checkpoints have past `<image>`, which a model can still emit) decode to nothing, as
    in HF's tokenizer; the caller keeps the ids themselves.
    """
    flat = np.asarray(ids)
    if flat.ndim != 1:
      raise ValueError(f"decode expects a 1-D id sequence, got shape {flat.shape}; decode rows one by one")
    kept: list[int] = []
    skip = {self.pad_id, self.bos_id, self.image_token_id}
    for i in flat.tolist():
      if i == self.eos_id:
        break
      if i not in skip and self.knows(i):
        kept.append(i)
    return self._sp.DecodeIds(kept)

  def knows(self, token_id: int) -> bool:
    """Whether `token_id` is a piece of the model or the appended `<image>` id."""
    return 0 <= token_id < self.sp_vocab_size or token_id == self.image_token_id

  def id_to_piece(self, token_id: int) -> str:
    """The SentencePiece piece string of `token_id` (`<image>` for the appended image id)."""
    if token_id == self.image_token_id:
      return IMAGE_TOKEN
    if not 0 <= token_id < self.sp_vocab_size:
      raise ValueError(f"token id {token_id} is outside the tokenizer's vocabulary [0, {self.sp_vocab_size})")
    return self._sp.IdToPiece(token_id)

  def loc_id(self, k: int) -> int:
    """Id of `<loc{k:04d}>`, k in [0, 1024)."""
    if not 0 <= k < NUM_LOC_TOKENS:
      raise ValueError(f"loc index {k} out of range [0, {NUM_LOC_TOKENS})")
    return self._required_piece(LOC_TOKENS[k])

  def seg_id(self, k: int) -> int:
    """Id of `<seg{k:03d}>`, k in [0, 128)."""
    if not 0 <= k < NUM_SEG_TOKENS:
      raise ValueError(f"seg index {k} out of range [0, {NUM_SEG_TOKENS})")
    return self._required_piece(SEG_TOKENS[k])

  def _required_piece(self, piece: str) -> int:
    i = self._piece_id(piece)
    if i is None:
      raise ValueError(f"tokenizer {self.path} has no piece {piece}; use the PaliGemma tokenizer")
    return i

  def check(self) -> None:
    """Raises ValueError unless every `<locNNNN>` and `<segNNN>` string encodes to one id.

    Early HF fast tokenizers split these into characters (transformers #30918); a model whose
    detection or segmentation output is spread over character pieces cannot be parsed back.
    """
    strings = list(LOC_TOKENS + SEG_TOKENS)
    for s, ids in zip(strings, self._sp.EncodeAsIds(strings)):
      if len(ids) != 1:
        raise ValueError(
          f"tokenizer {self.path}: {s} encodes to {len(ids)} ids {ids[:4]}, not one; use the PaliGemma "
          "tokenizer (Gemma + 1024 <locNNNN> + 128 <segNNN> user-defined pieces)"
        )
