"""Run PaliGemma on images and prompts: one prompt, a JSONL file of them, or a TFDS split.

  python infer.py --checkpoint=ckpt/ --tokenizer=tokenizer.model --image=cat.jpg \
      --prompt="detect cat" --overlay=out.png
  python infer.py --checkpoint=ckpt/ --tokenizer=tokenizer.model \
      --input_jsonl=rows.jsonl --output_jsonl=predictions.jsonl --batch_size=16
  python infer.py --config=configs/cococap.py --config.checkpoint=ckpt/ \
      --config.tokenizer=tokenizer.model --config.infer.output=predictions.jsonl

The checkpoint is an Orbax params directory or an HF safetensors folder. Decoding is greedy by
default (`--sampler=sample` with --temperature/--top_k/--top_p, or `--sampler=beam`). With
--config every setting comes from the config file (configs/*.py), overridable as --config.KEY=...;
only --overwrite applies besides.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

flags.DEFINE_string("checkpoint", None, "Orbax params dir or HF safetensors folder.")
flags.DEFINE_string("tokenizer", None, "SentencePiece tokenizer.model of the checkpoint.")
flags.DEFINE_multi_string("image", [], "Image file(s) for --prompt (several = one multi-image example).")
flags.DEFINE_string("prompt", None, "Prompt, e.g. 'caption en', 'detect cat', 'segment dog'.")
flags.DEFINE_string("input_jsonl", None, "Batch mode: JSONL rows {\"image\": path, \"prompt\": text}.")
flags.DEFINE_string("output_jsonl", None, "Batch mode: where predictions are written.")
flags.DEFINE_integer("batch_size", 8, "Rows per batch in batch mode.")
flags.DEFINE_integer("max_new_tokens", 32, "Tokens to generate at most.")
flags.DEFINE_integer("max_length", 8192, "Prompt + new tokens at most.")
flags.DEFINE_enum("sampler", "greedy", ["greedy", "sample", "beam"], "Decoding method.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0 = off).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1 = off).")
flags.DEFINE_integer("num_beams", 4, "Beams for --sampler=beam.")
flags.DEFINE_float("length_penalty", 1.0, "Beam score = logprob / length ** length_penalty.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_bool("json", False, "Print machine-readable JSON (text, token ids, scores, boxes).")
flags.DEFINE_string("overlay", None, "Write boxes / masks over the image to this PNG.")
flags.DEFINE_string("vqvae", None, "Segmentation VQ-VAE (vae-oid.npz or converted Orbax dir).")
flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
flags.DEFINE_enum("quantize", "none", ["none", "int8", "int4"],
                  "Weight-only quantization of the decoder's matmul weights at load time "
                  "(a checkpoint saved quantized loads quantized without it).")
flags.DEFINE_integer("quantize_group_size", 128, "int4: contraction elements per scale.")
flags.DEFINE_bool("show_mask", False, "Also print the prompt's attention mask.")
config_flags.DEFINE_config_file("config", None, "Batch inference over a TFDS split: a config "
                                 "file (configs/*.py[:arg]); override fields as --config.KEY=...")
FLAGS = flags.FLAGS
# Flags that the config replaces (everything but --config and --overwrite).
_NOT_WITH_CONFIG = ("checkpoint", "tokenizer", "image", "prompt", "input_jsonl", "output_jsonl",
                    "batch_size", "max_new_tokens", "max_length", "sampler", "temperature",
                    "top_k", "top_p", "num_beams", "length_penalty", "seed", "json", "overlay",
                    "vqvae", "show_mask", "quantize", "quantize_group_size")


def _run_config():
  clash = [name for name in _NOT_WITH_CONFIG if FLAGS[name].present]
  if clash:
    raise ValueError(f"--{clash[0]} does not apply with --config; set it in the config instead "
                     "(e.g. --config.checkpoint=..., --config.infer.batch_size=...)")
  from paligemma_jax.inference.cli import run_config  # after the checks: jax imports are slow
  return run_config(FLAGS.config, overwrite=FLAGS.overwrite)


def _parse_flags(argv):
  """absl's parsing, with a one-line error for a --config.KEY that names no config field."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # how ml_collections reports an unknown override
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    key, _, hint = str(e.args[0] if e.args else e).partition("\n")
    flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
                 and a.split("=")[0].endswith("." + key.strip("'\""))), "--config.*")
    print(f"error: unknown config key {key} in {flag}" + (f" ({hint})" if hint else ""),
          file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  from paligemma_jax.quiet_startup import quiet_startup
  quiet_startup()
  try:
    if FLAGS.config is not None:
      print(_run_config())
      return
    if FLAGS.checkpoint is None or FLAGS.tokenizer is None:
      raise ValueError("give --checkpoint and --tokenizer (or --config=configs/...)")
    from paligemma_jax.inference.cli import main as run  # after flag parsing: jax is slow
    print(run(checkpoint=FLAGS.checkpoint, tokenizer=FLAGS.tokenizer, images=FLAGS.image,
              prompt=FLAGS.prompt, input_jsonl=FLAGS.input_jsonl, output_jsonl=FLAGS.output_jsonl,
              max_new_tokens=FLAGS.max_new_tokens, batch_size=FLAGS.batch_size,
              as_json=FLAGS.json, overlay=FLAGS.overlay, vqvae=FLAGS.vqvae,
              overwrite=FLAGS.overwrite, show_mask=FLAGS.show_mask, max_length=FLAGS.max_length,
              sampler=FLAGS.sampler, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
              top_p=FLAGS.top_p, num_beams=FLAGS.num_beams, length_penalty=FLAGS.length_penalty,
              seed=FLAGS.seed, quantize=FLAGS.quantize,
              quantize_group_size=FLAGS.quantize_group_size))
  except (ValueError, OSError) as e:  # bad input: one line, no traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
