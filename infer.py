"""Run PaliGemma on images and prompts: one prompt, or a JSONL file of them.

  python infer.py --checkpoint=ckpt/ --tokenizer=tokenizer.model --image=cat.jpg \
      --prompt="detect cat" --overlay=out.png
  python infer.py --checkpoint=ckpt/ --tokenizer=tokenizer.model \
      --input_jsonl=rows.jsonl --output_jsonl=predictions.jsonl --batch_size=16

The checkpoint is an Orbax params directory or an HF safetensors folder. Decoding is greedy by
default (`--sampler=sample` with --temperature/--top_k/--top_p, or `--sampler=beam`).
"""

import sys

from absl import app, flags

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
flags.DEFINE_bool("show_mask", False, "Also print the prompt's attention mask.")
flags.mark_flags_as_required(["checkpoint", "tokenizer"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from paligemma_jax.inference.cli import main as run  # after flag parsing: jax imports are slow
  try:
    print(run(checkpoint=FLAGS.checkpoint, tokenizer=FLAGS.tokenizer, images=FLAGS.image,
              prompt=FLAGS.prompt, input_jsonl=FLAGS.input_jsonl, output_jsonl=FLAGS.output_jsonl,
              max_new_tokens=FLAGS.max_new_tokens, batch_size=FLAGS.batch_size,
              as_json=FLAGS.json, overlay=FLAGS.overlay, vqvae=FLAGS.vqvae,
              overwrite=FLAGS.overwrite, show_mask=FLAGS.show_mask, max_length=FLAGS.max_length,
              sampler=FLAGS.sampler, temperature=FLAGS.temperature, top_k=FLAGS.top_k,
              top_p=FLAGS.top_p, num_beams=FLAGS.num_beams, length_penalty=FLAGS.length_penalty,
              seed=FLAGS.seed))
  except (ValueError, OSError) as e:  # bad input: one line, no traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
