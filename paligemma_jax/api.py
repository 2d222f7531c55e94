"""The small public API: load a checkpoint, preprocess images + prompts, compute logits.

    import paligemma_jax as pg
    config, params = pg.load_checkpoint("paligemma2-3b-pt-224/")       # HF folder
    processor = pg.make_processor(config, "paligemma2-3b-pt-224/tokenizer.model")
    batch = processor([image], ["caption en"], suffixes=["a cat on a mat"])
    logits = pg.compute_logits(config, params, batch)                  # [B, S, V] float32
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from paligemma_jax.conversion import load_hf_checkpoint
from paligemma_jax.data import Processor, Tokenizer
from paligemma_jax.models import (PaliGemma, PaliGemmaConfig, check_image_tokens, lora,
                                  param_shapes)
from paligemma_jax.models.config import QuantizationConfig
from paligemma_jax.models.quantize import as_quantization, quantize_loaded, quantize_params


def load_checkpoint(path: str | os.PathLike, *,
                    quantize: str | QuantizationConfig | None = None,
                    quantize_group_size: int = 128, quantize_vision: bool = False,
                    **options: Any) -> tuple[PaliGemmaConfig, dict]:
  """(config, {"params": ...}) from an HF folder (config.json + safetensors) or an Orbax params
  checkpoint (`paligemma_jax.checkpoints`, config inside).

  Options: `param_dtype`, `dtype` and `PaliGemmaConfig.replace` overrides such as
  `**{"text.final_logit_softcap": None}`; by default the model follows the checkpoint's config.
  `quantize="int8"` or `"int4"` stores the decoder's matmul weights (and SigLIP's with
  `quantize_vision`) as integers (`models/quantize.py`; int4 groups of `quantize_group_size`); a
  checkpoint saved quantized loads quantized as it is. A LoRA adapters checkpoint (the trainer's
  `adapters/`) loads with its base (the path its config records): the adapters are applied on
  top (merge them with `models.lora.merge` or `convert_checkpoint.py --merge_lora`).
  """
  quant = as_quantization(quantize, quantize_group_size, quantize_vision)
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint not found: {path} is not a directory")
  if any(name.endswith(".safetensors") for name in os.listdir(path)):
    return quantize_loaded(*load_hf_checkpoint(path, **options), quant)
  from paligemma_jax import checkpoints  # Orbax is imported only for Orbax checkpoints
  param_dtype = options.pop("param_dtype", None)
  config, params = checkpoints.load_params(path, dtype=param_dtype)
  if config.lora is not None and config.lora.base:
    config, params = _with_base(path, config, params, param_dtype)
  return quantize_loaded(config.replace(**options) if options else config, params, quant)


def _with_base(path: str, config: PaliGemmaConfig, adapters: dict, param_dtype: Any
               ) -> tuple[PaliGemmaConfig, dict]:
  """An adapters checkpoint's params joined to its base (quantized as the adapters were
  trained on it, for QLoRA)."""
  base_path = config.lora.base
  if not os.path.isdir(base_path):
    raise FileNotFoundError(f"{path} holds LoRA adapters for the base {base_path}, which does not "
                            "exist; put the base checkpoint there")
  _, base = load_checkpoint(base_path, param_dtype=param_dtype)
  want = lora.split(param_shapes(config.replace(quantization=None)))[0]
  got = jax.tree.map(lambda x: x.shape, base)
  if jax.tree.map(lambda x: x.shape, want) != got:
    raise ValueError(f"the base {base_path} does not have the shapes the adapters in {path} were "
                     "trained on (another model, or another image size); merge the adapters on "
                     "the right base")
  if config.quantization is not None:
    base = quantize_params(base, config.quantization)
  return config, lora.join(base, adapters)


def merge_lora_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, *,
                          dtype: str | None = None, overwrite: bool = False) -> PaliGemmaConfig:
  """Writes the Orbax params checkpoint `dst` of an adapters checkpoint `src` merged into its
  base (`lora.merge`: w + (alpha / r) A B; a QLoRA base is dequantized). Returns its config."""
  from paligemma_jax import checkpoints
  config, params = load_checkpoint(src)
  if config.lora is None:
    raise checkpoints.CheckpointError(f"{src} holds no LoRA adapters; there is nothing to merge")
  config, params = lora.merge(config, params, dtype)
  checkpoints.save_params(dst, config, params, overwrite=overwrite)
  return config


def make_processor(config: PaliGemmaConfig, tokenizer: str | os.PathLike | Tokenizer,
                   image_method: str = "hf", **options: Any) -> Processor:
  """A processor whose image size, image-token count and tokenizer fit `config`.

  Raises a one-line ValueError when the tokenizer's vocabulary does not fit the model.
  """
  if not isinstance(tokenizer, Tokenizer):
    tokenizer = Tokenizer(tokenizer)
  if tokenizer.vocab_size > config.text.vocab_size:
    raise ValueError(
        f"the tokenizer has {tokenizer.vocab_size} ids but the model's embedding has "
        f"{config.text.vocab_size} rows; use the tokenizer that belongs to this checkpoint")
  if tokenizer.image_token_id != config.image_token_id:
    raise ValueError(
        f"the tokenizer's <image> id is {tokenizer.image_token_id} but the model expects "
        f"{config.image_token_id}; use the tokenizer that belongs to this checkpoint")
  return Processor(tokenizer, config.vision.image_size, config.vision.num_patches, image_method,
                   **options)


@functools.lru_cache(maxsize=8)
def _jitted_forward(config: PaliGemmaConfig):
  return jax.jit(PaliGemma(config).apply)


def compute_logits(config: PaliGemmaConfig, params: dict, batch: Mapping[str, np.ndarray]
                   ) -> np.ndarray:
  """float32 logits [B, S, V] for a processor batch (its `tokens`, `images`, `input_mask` and
  `mask_ar`); the prefix is bidirectional, the suffix causal. Padding positions are meaningless."""
  missing = [k for k in ("tokens", "images", "input_mask", "mask_ar") if k not in batch]
  if missing:
    raise ValueError(f"batch lacks {', '.join(missing)}; build it with make_processor(...)(...)")
  check_image_tokens(batch["tokens"], batch["images"], config)
  logits = _jitted_forward(config)(params, batch["tokens"], batch["images"],
                                   batch["input_mask"], batch["mask_ar"])
  return np.asarray(logits)
