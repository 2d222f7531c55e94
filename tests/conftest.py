"""Shared fixtures: a stand-in Gemma tokenizer, and the same tokenizer laid out for HF's AutoTokenizer."""

from __future__ import annotations

import gc
import json
import os
import pathlib
import shutil

# Eight simulated CPU devices, so sharded runs can be compared with unsharded ones. This must be
# set before jax is first imported; single-device tests still run on device 0.
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()

import pytest
import sentencepiece as spm

from paligemma_jax.data.standin_tokenizer import standin_sentences, standin_trainer_options, train_standin_tokenizer
from paligemma_jax.data.tokenizer import Tokenizer

# transformers is the parity oracle and must never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def _earlier_modules_frozen_for_gc():
  """Each module starts with what earlier modules left (torch, TF, transformers, models, ...) moved
  out of the garbage collector's reach (`gc.freeze`), so a collection scans only the objects this
  module made. Late in a session a full collection scanned ~1M objects (~0.3-1 s); the converter
  collects once per leaf (`buffers.release_freed_memory`), which made its tests 5-8x slower in the
  suite than alone."""
  gc.collect()
  gc.freeze()
  yield
  gc.unfreeze()


@pytest.fixture(scope="session")
def standin_tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """Path of the stand-in Gemma-like SentencePiece model (trained once per session, ~0.05 s)."""
  return train_standin_tokenizer(tmp_path_factory.mktemp("standin_tokenizer") / "standin")


@pytest.fixture(scope="session")
def standin_tokenizer(standin_tokenizer_path: pathlib.Path) -> Tokenizer:
  return Tokenizer(standin_tokenizer_path)


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, standin_tokenizer_path: pathlib.Path) -> pathlib.Path:
  """A folder that `transformers.AutoTokenizer.from_pretrained` loads as a GemmaTokenizer of the stand-in.

  (`GemmaTokenizer(vocab_file=...)` silently builds a 5-token vocabulary in transformers 5.x; this
  layout is what works offline.)
  """
  folder = tmp_path_factory.mktemp("hf_tokenizer")
  shutil.copy(standin_tokenizer_path, folder / "tokenizer.model")
  (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GemmaTokenizer"}))
  return folder


@pytest.fixture(scope="session")
def tokenizer_without_loc_path(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
  """A Gemma-like model without the <loc>/<seg> pieces (like text-only Gemma): for error paths."""
  options = standin_trainer_options(vocab_size=400)
  options["user_defined_symbols"] = ["\n"]
  prefix = tmp_path_factory.mktemp("plain_tokenizer") / "plain"
  spm.SentencePieceTrainer.train(sentence_iterator=iter(standin_sentences(500)), model_prefix=str(prefix), **options)
  return pathlib.Path(f"{prefix}.model")
