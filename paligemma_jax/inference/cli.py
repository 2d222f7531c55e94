"""What `infer.py` does, as a function of plain arguments (the flags) or of a config."""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax

from paligemma_jax import sharding
from paligemma_jax.data import Tokenizer
from paligemma_jax.inference.batch_infer import (check_output, load_image, predict_rows,
                                                 run_jsonl, tfds_job)
from paligemma_jax.inference.beam import BeamSearch
from paligemma_jax.inference.infer_config import SAMPLERS, parse_infer_config
from paligemma_jax.inference.mask_view import attention_mask_text
from paligemma_jax.inference.overlay import save_overlay
from paligemma_jax.inference.pipeline import Pipeline, Result
from paligemma_jax.inference.sampling import GREEDY, Sampler


def decoding_options(sampler: str, temperature: float, top_k: int, top_p: float,
                     num_beams: int, length_penalty: float, seed: int) -> dict[str, Any]:
  """Keyword arguments for `Pipeline.__call__` from the sampler flags (one-line errors)."""
  if sampler not in SAMPLERS:
    raise ValueError(f"unknown sampler {sampler!r}; use one of {SAMPLERS}")
  if sampler == "beam":
    return {"beam": BeamSearch(num_beams=num_beams, length_penalty=length_penalty)}
  if sampler == "sample":
    return {"sampler": Sampler("sample", temperature=temperature, top_k=top_k, top_p=top_p),
            "seed": seed}
  return {"sampler": GREEDY}


def describe(result: Result, tokenizer: Tokenizer) -> str:
  """The text, a note on ids the tokenizer has no piece for (they decode to nothing), and one
  line per detected object."""
  lines = [result.text]
  unknown = [t for t in result.tokens if not tokenizer.knows(t)]
  if unknown:
    shown = ", ".join(map(str, unknown[:8])) + (", ..." if len(unknown) > 8 else "")
    lines.append(f"  ({len(unknown)} of {len(result.tokens)} generated ids have no piece in the "
                 f"tokenizer [0, {tokenizer.vocab_size}) and decode to nothing: {shown}; "
                 "--json lists every id)")
  for o in result.objects or []:
    mask = "" if o.mask is None else f", mask {int(o.mask.sum())} px"
    lines.append(f"  {o.label or '(no label)'}: box y0={o.box[0]} x0={o.box[1]} "
                 f"y1={o.box[2]} x1={o.box[3]}{mask}")
  return "\n".join(lines)


def main(*, checkpoint: str, tokenizer: str, images: Sequence[str], prompt: str | None,
         input_jsonl: str | None, output_jsonl: str | None, max_new_tokens: int,
         batch_size: int, as_json: bool, overlay: str | None, vqvae: str | None,
         overwrite: bool, show_mask: bool, max_length: int, quantize: str = "none",
         quantize_group_size: int = 128, **sampler_flags: Any) -> str:
  """Runs one prompt (returns the text to print) or a JSONL batch (returns the summary).

  `quantize` ("int8" / "int4") loads the weights quantized (`models/quantize.py`).
  """
  options = decoding_options(**sampler_flags)
  if max_new_tokens < 1:
    raise ValueError(f"--max_new_tokens must be >= 1, got {max_new_tokens}")
  if input_jsonl is None and (prompt is None or not images):
    raise ValueError("give --image and --prompt, or --input_jsonl and --output_jsonl")
  if input_jsonl is not None and output_jsonl is None:
    raise ValueError("--input_jsonl needs --output_jsonl")
  if overlay and os.path.exists(overlay) and not overwrite:
    raise FileExistsError(f"{overlay} exists; pass --overwrite to replace it")
  pipe = Pipeline.load(checkpoint, tokenizer, vqvae=vqvae, max_length=max_length,
                       quantize=quantize, quantize_group_size=quantize_group_size)
  if input_jsonl is not None:
    summary = run_jsonl(pipe, input_jsonl, output_jsonl, batch_size=batch_size,
                        overwrite=overwrite, max_new_tokens=max_new_tokens, **options)
    return f"wrote {output_jsonl}: {summary}"
  loaded = [load_image(path) for path in images]
  row = loaded if len(loaded) > 1 else loaded[0]
  [result] = pipe([row], [prompt], max_new_tokens=max_new_tokens, **options)
  if overlay:
    save_overlay(loaded[0], result.objects or [], overlay)
  out = json.dumps(result.to_json()) if as_json else describe(result, pipe.tokenizer)
  if show_mask:
    out = attention_mask_text(pipe.processor, pipe.config, prompt) + "\n\n" + out
  return out


def run_config(config: Any, *, overwrite: bool = False) -> str:
  """Batch inference over the TFDS split a config names (`infer.py --config=...`); returns the
  summary line. `config` is a ConfigDict or dict (see infer_config.py); `overwrite` adds to
  `config.infer.overwrite`. Everything is checked before the model loads.

  With several JAX processes each reads its own part of the split, runs the model on its local
  devices and writes `<output>-<index>-of-<count>`.
  """
  cfg = parse_infer_config(config)
  settings = cfg.infer
  index, count = jax.process_index(), jax.process_count()
  output = settings.output if count == 1 else f"{settings.output}-{index:05d}-of-{count:05d}"
  check_output(output, overwrite or settings.overwrite)
  options = decoding_options(settings.sampler, settings.temperature, settings.top_k,
                             settings.top_p, settings.num_beams, settings.length_penalty,
                             settings.seed)
  # The split and the task's fields are checked here, before the model loads.
  rows, total = tfds_job(settings.data, cfg.task, process_index=index, process_count=count)
  mesh = None if count == 1 else sharding.make_mesh(devices=jax.local_devices())
  pipe = Pipeline.load(cfg.checkpoint, cfg.tokenizer, vqvae=cfg.vqvae or None,
                       image_method=cfg.image_method, max_length=cfg.max_length, mesh=mesh,
                       quantize=cfg.quantize, quantize_group_size=cfg.quantize_group_size)
  summary = predict_rows(pipe, rows, output, batch_size=settings.batch_size,
                         overwrite=overwrite or settings.overwrite,
                         max_new_tokens=settings.max_decode_len, total=total, **options)
  return f"wrote {output}: {summary}"
