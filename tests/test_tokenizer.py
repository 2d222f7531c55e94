"""Tokenizer: special ids, loc/seg pieces, decode rules, errors, and parity with HF's GemmaTokenizer."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from paligemma_jax.data.standin_tokenizer import train_standin_tokenizer
from paligemma_jax.data.tokenizer import LOC_TOKENS, SEG_TOKENS, Tokenizer

# Strings where a SentencePiece port could go wrong: whitespace runs and edges (Gemma keeps them),
# newline runs (user-defined pieces), digits (split), bytes (fallback), loc/seg pieces.
TEXTS = [
    "", " ", "  ", "\n", "\n\n\n", "answer en Where is the cow standing?", "  leading and trailing  ",
    "a  b   c    d", "x \n y\n\nz", "tab\there", "1234567 and 3.14", "où est la vache? über straße",
    "日本 東京 🐄 ☃", "<loc0000><loc1023><seg000><seg127>", "detect cow<loc0102> ; <seg042>dog",
    "<loc12345> <loc0001", "caption en\n",
]


@pytest.fixture(scope="module")
def hf_tokenizer(hf_tokenizer_dir: pathlib.Path):
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(hf_tokenizer_dir)


def test_standin_is_deterministic(standin_tokenizer_path: pathlib.Path, tmp_path: pathlib.Path):
  again = train_standin_tokenizer(tmp_path / "sub" / "again")
  assert again == tmp_path / "sub" / "again.model"
  assert again.read_bytes() == standin_tokenizer_path.read_bytes()


def test_special_ids(standin_tokenizer: Tokenizer):
  tok = standin_tokenizer
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
  assert tok.id_to_piece(4) == "<mask>"  # As in Gemma; HF would otherwise append it before <image>.
  # No <image> piece in the model: it goes at the first free id, as HF's processor puts it.
  assert tok.image_token_id == tok.sp_vocab_size == 2048
  assert tok.vocab_size == 2049
  assert tok.id_to_piece(tok.image_token_id) == "<image>"
  assert tok.encode("\n") == [tok.newline_id]
  assert tok.encode("\n\n") != [tok.newline_id] * 2  # Gemma-like: "\n\n" is one piece.


def test_loc_and_seg_are_single_ids_and_round_trip(standin_tokenizer: Tokenizer):
  tok = standin_tokenizer
  tok.check()
  loc_ids = [tok.loc_id(k) for k in range(1024)]
  seg_ids = [tok.seg_id(k) for k in range(128)]
  assert len(set(loc_ids + seg_ids)) == 1152
  for string, token_id in zip(LOC_TOKENS + SEG_TOKENS, loc_ids + seg_ids):
    assert tok.encode(string) == [token_id]
    assert tok.decode([token_id]) == string
  text = "<loc0051><loc0309><loc0708><loc0646> shoe ; <seg017>"
  ids = tok.encode(text)
  assert ids[:4] == [tok.loc_id(51), tok.loc_id(309), tok.loc_id(708), tok.loc_id(646)]
  assert tok.decode(ids) == text


@pytest.mark.parametrize("bad", [-1, 1024])
def test_loc_index_out_of_range(standin_tokenizer: Tokenizer, bad: int):
  with pytest.raises(ValueError, match=r"loc index .* out of range"):
    standin_tokenizer.loc_id(bad)
  with pytest.raises(ValueError, match=r"seg index .* out of range"):
    standin_tokenizer.seg_id(bad if bad < 0 else 128)


def test_decode_stops_at_eos_and_drops_specials(standin_tokenizer: Tokenizer):
  tok = standin_tokenizer
  cow, beach = tok.encode("cow"), tok.encode(" beach")
  ids = [tok.image_token_id] * 3 + [tok.bos_id] + cow + [tok.pad_id] + beach + [tok.eos_id] + tok.encode("junk")
  assert tok.decode(ids) == "cow beach"
  assert tok.decode(np.asarray(ids, np.int32)) == "cow beach"
  assert tok.decode([]) == ""
  # Ids with no piece (HF checkpoints' padding rows past <image>, a negative id) decode to nothing.
  assert tok.decode(cow + [tok.vocab_size + 5, -1] + beach) == "cow beach"
  with pytest.raises(ValueError, match="1-D"):
    tok.decode(np.zeros((2, 3), np.int32))


def test_parse_special(standin_tokenizer: Tokenizer):
  tok = standin_tokenizer
  assert tok.encode("<bos>hi<eos>", parse_special=True) == [tok.bos_id] + tok.encode("hi") + [tok.eos_id]
  assert tok.bos_id not in tok.encode("<bos>hi")  # SentencePiece reads it as text.
  with pytest.raises(ValueError, match="expects a str"):
    tok.encode(b"bytes")


def test_matches_hf_gemma_tokenizer(standin_tokenizer: Tokenizer, hf_tokenizer):
  for text in TEXTS + ["<bos>x<eos> <pad><unk><mask>"]:
    want = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert standin_tokenizer.encode(text, parse_special=True) == want, repr(text)
  for text in TEXTS:
    assert standin_tokenizer.encode(text) == hf_tokenizer(text, add_special_tokens=False)["input_ids"], repr(text)
    assert standin_tokenizer.decode(standin_tokenizer.encode(text)) == text, repr(text)
  for string in LOC_TOKENS[::97] + SEG_TOKENS[::13]:
    assert hf_tokenizer(string, add_special_tokens=False)["input_ids"] == standin_tokenizer.encode(string)


def test_unknown_ids_decode_to_nothing_as_in_hf(standin_tokenizer: Tokenizer, hf_tokenizer):
  tok = standin_tokenizer
  cow, beach = tok.encode("cow"), tok.encode(" beach")
  past = [tok.vocab_size, tok.vocab_size + 63]  # an HF checkpoint's padding rows past <image>
  want = hf_tokenizer.decode(cow + past + beach, skip_special_tokens=True)
  assert tok.decode(cow + past + beach) == want == "cow beach"


def test_missing_and_unreadable_files(tmp_path: pathlib.Path):
  missing = tmp_path / "nope.model"
  with pytest.raises(FileNotFoundError, match="nope.model"):
    Tokenizer(missing)
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"this is not a protobuf")
  with pytest.raises(ValueError, match=r"cannot read .*garbage.model as a SentencePiece model") as info:
    Tokenizer(garbage)
  assert "\n" not in str(info.value)


def test_check_rejects_tokenizer_without_loc_pieces(tokenizer_without_loc_path: pathlib.Path):
  tok = Tokenizer(tokenizer_without_loc_path)
  with pytest.raises(ValueError, match=r"<loc0000> encodes to \d+ ids") as info:
    tok.check()
  assert "\n" not in str(info.value)
  with pytest.raises(ValueError, match="has no piece <loc0007>"):
    tok.loc_id(7)
