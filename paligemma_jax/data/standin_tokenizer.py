"""A tiny Gemma-like SentencePiece tokenizer, trained in a fraction of a second, for tests and demos.

The real PaliGemma tokenizer (257,152 pieces) cannot be downloaded here, and tests must not hard-code
its ids. This module trains a small BPE model that behaves like it wherever the processor depends
on the behaviour:

- ids: pad 0, eos 1, bos 2, unk 3, then "<mask>" as a control piece at 4 (Gemma has it there too;
  without it HF's GemmaTokenizer appends "<mask>" and `<image>` lands one id later);
- user-defined pieces, matched whole before BPE as in Gemma: newline runs ("\\n" .. "\\n\\n\\n\\n"),
  whitespace runs ("▁▁" .. "▁▁▁▁"), the 1024 `<locNNNN>` and the 128 `<segNNN>` strings;
- Gemma's normaliser: identity (no NFKC), no dummy-prefix space, whitespace kept as it is
  (`remove_extra_whitespaces=False`), digits split, byte fallback for characters it never saw.

Under both sentencepiece and HF's GemmaTokenizer (built from the same file) it gives the same ids
(tests/test_tokenizer.py checks that). The loc/seg ids sit low in the vocabulary (not at 256000+),
so code must look ids up rather than hard-code them.
"""

from __future__ import annotations

import io
import os
import pathlib
import random

import sentencepiece as spm

from paligemma_jax.data.tokenizer import LOC_TOKENS, SEG_TOKENS

DEFAULT_VOCAB_SIZE = 2048

# Words in the style of PaliGemma prompts and answers, with some accented and non-Latin words so
# that multi-byte characters get pieces of their own (others fall back to bytes).
_WORDS = (
  "caption describe answer detect segment ocr question en fr de es where is what how many which "
  "the a an of in on with and or to at by from this that there are it its cow dog cat bird horse "
  "person man woman child people car bus truck bike street road sign building house tree grass "
  "water sky beach sea mountain snow table chair book text picture image photo left right top "
  "bottom front behind color red green blue white black yellow brown standing sitting walking "
  "holding wearing looking large small two three four yes no "
  "vache plage où est le la les und der die das auf ist una vaca en la playa qué café naïve "
  "über straße mañana façade élève 日本 東京 牛 猫 сорока корова"
).split()
_PUNCTUATION = (".", ",", "?", "!", ":", ";", "'s", " -", " (x)")


def standin_sentences(num_sentences: int = 3000, seed: int = 0) -> list[str]:
  """Deterministic pseudo-sentences used as the stand-in's training text."""
  rng = random.Random(seed)
  sentences = []
  for _ in range(num_sentences):
    words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 12))]
    if rng.random() < 0.3:
      words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 2025)))
    text = " ".join(words)
    if rng.random() < 0.2:
      text = text.capitalize()
    if rng.random() < 0.5:
      text += rng.choice(_PUNCTUATION)
    sentences.append(text)
  return sentences


def standin_trainer_options(vocab_size: int = DEFAULT_VOCAB_SIZE) -> dict[str, object]:
  """SentencePieceTrainer options of the stand-in (everything except the input text)."""
  return dict(
    model_type="bpe",
    vocab_size=vocab_size,
    character_coverage=1.0,
    byte_fallback=True,
    pad_id=0,
    eos_id=1,
    bos_id=2,
    unk_id=3,
    pad_piece="<pad>",
    eos_piece="<eos>",
    bos_piece="<bos>",
    unk_piece="<unk>",
    control_symbols=["<mask>"],
    user_defined_symbols=(
      ["\n" * n for n in range(1, 5)] + ["\u2581" * n for n in range(2, 5)] + list(LOC_TOKENS + SEG_TOKENS)
    ),
    normalization_rule_name="identity",
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    # One thread and no sampling of the input: the same inputs give the same model bytes.
    num_threads=1,
    shuffle_input_sentence=False,
    minloglevel=2,
  )


def train_standin_tokenizer(model_prefix_path: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB_SIZE) -> pathlib.Path:
  """Trains the stand-in tokenizer and writes `<model_prefix_path>.model`; returns that path.

  Args:
    model_prefix_path: output path without the `.model` suffix; parent folders are created.
    vocab_size: number of pieces, at least about 1,520 (the 1,152 loc/seg pieces, 256 byte
      pieces and the characters of the training text must fit) and at most about 2,530 (the
      training text has no more merges to learn).

  Returns:
    The path of the written `.model` file; the same arguments always give the same bytes.
  """
  model_path = pathlib.Path(f"{os.fspath(model_prefix_path)}.model")
  model_path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()  # Not model_prefix: it would store the output path inside the model.
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=iter(standin_sentences()), model_writer=buffer, **standin_trainer_options(vocab_size)
    )
  except RuntimeError as e:
    first_line = str(e).splitlines()[0] if str(e) else "training failed"
    raise ValueError(f"cannot train a stand-in tokenizer with vocab_size={vocab_size}: {first_line}") from None
  model_path.write_bytes(buffer.getvalue())
  return model_path
