"""Convert PaliGemma checkpoints between HF safetensors, big_vision npz and Orbax params.

  python convert_checkpoint.py --src paligemma2-3b-pt-224/ --dst pg2_3b_224_orbax/
  python convert_checkpoint.py --src pt_3b_224.bf16.npz --dst pg2_hf/ --dst_format hf --verify
  python convert_checkpoint.py --src pg_orbax/ --dst pg.npz --dtype bfloat16 --overwrite

Formats are detected from the paths (a folder with *.safetensors is HF, *.npz is big_vision,
another folder is Orbax; a destination not ending in .npz becomes the other folder format).
Errors are printed as one line (exit code 1; 2 for bad flags), never as a traceback.
A LoRA adapters checkpoint (train.py's WORKDIR/adapters) converts with --merge_lora: the
adapters are merged into the base their config names, and the merged model is written:

  python convert_checkpoint.py --merge_lora --src workdir/adapters --dst merged/
  python convert_checkpoint.py --merge_lora --src workdir/adapters --dst merged_hf/ --dst_format hf

With --vqvae the source is the segmentation VQ-VAE (vae-oid.npz), written as its own Orbax params
(or an Orbax VQ-VAE back to npz when --dst ends in .npz):

  python convert_checkpoint.py --vqvae --src vae-oid.npz --dst vae-oid/

An npz carries no config: its shapes give the sizes and a published variant (--variant, found by
shape when not given) the rest. For a custom Gemma 2 size that no variant matches, give the
attention scale (--query_pre_attn_scalar=144) or config fields as JSON (--variant_json=cfg.json).
"""

from __future__ import annotations

import math
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("src", None, "Source checkpoint: HF folder, big_vision .npz or Orbax folder.")
flags.DEFINE_string("dst", None, "Destination path (must not exist unless --overwrite).")
flags.DEFINE_enum("src_format", None, ["hf", "npz", "orbax"], "Source format (default: detect).")
flags.DEFINE_enum("dst_format", None, ["hf", "npz", "orbax"],
                  "Destination format (default: npz for *.npz, else hf<->orbax, npz->orbax).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                  "Cast floating tensors to this dtype (default: keep dtypes bit-exactly).")
flags.DEFINE_bool("overwrite", False, "Replace an existing destination (atomically, at the end).")
flags.DEFINE_string("max_shard_size", "5GB", "HF output: largest shard, e.g. 500MB, 5GB, 2GiB.")
flags.DEFINE_string("variant", None, "npz source: the variant, e.g. paligemma2_28b_448 (needed "
                    "when shapes cannot tell the attention scale).")
flags.DEFINE_string("variant_json", None, "npz source: a JSON file of PaliGemmaConfig fields "
                    "(the to_dict() layout, any subset, e.g. {\"text\": {\"sliding_window\": "
                    "4096}}) set over --variant or the config the shapes give: for custom sizes.")
flags.DEFINE_float("query_pre_attn_scalar", None, "npz source, Gemma 2: the attention scale "
                   "(queries times its -0.5 power) when shapes cannot tell it (head_dim != "
                   "width / heads) and no published variant matches.")
flags.register_validator(
    "query_pre_attn_scalar", lambda v: v is None or (math.isfinite(v) and v > 0),
    "must be a positive number (queries are scaled by its -0.5 power, e.g. 144)")
flags.DEFINE_bool("verify", False, "Afterwards, compare logits of both sides on a random input.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool("merge_lora", False, "The source is a LoRA adapters checkpoint (train.py's "
                  "WORKDIR/adapters): merge the adapters into the base its config names and write "
                  "the merged model (w + alpha/r A B; a QLoRA base is dequantized).")
flags.DEFINE_bool("vqvae", False, "The source is the segmentation VQ-VAE (vae-oid.npz or its "
                  "Orbax conversion), not a PaliGemma checkpoint.")


def _fail(message: str, code: int) -> None:
  print(f"convert_checkpoint: error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(code)


def main(argv: list[str]) -> None:
  from paligemma_jax.quiet_startup import quiet_startup
  quiet_startup()
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; every option is a --flag", 2)
  if not FLAGS.src or not FLAGS.dst:
    _fail("both --src and --dst are required", 2)
  from paligemma_jax.conversion import convert  # after flag parsing: `--help` stays fast
  try:
    if FLAGS.vqvae:
      from paligemma_jax.conversion.vqvae import convert_vqvae
      print(convert_vqvae(FLAGS.src, FLAGS.dst, overwrite=FLAGS.overwrite))
      return
    if FLAGS.merge_lora:
      _merge_lora()
      return
    adapters = _adapters_of(FLAGS.src)
    if adapters is not None:
      _fail(f"{FLAGS.src} holds LoRA adapters, not a whole model; pass --merge_lora to merge "
            f"them into their base ({adapters.base or 'none recorded'}) and write the merged "
            "model", 2)
    from paligemma_jax.conversion.npz_variant import npz_variant
    variant = npz_variant(FLAGS.src, FLAGS.src_format, variant=FLAGS.variant,
                          variant_json=FLAGS.variant_json,
                          query_pre_attn_scalar=FLAGS.query_pre_attn_scalar)
    convert(FLAGS.src, FLAGS.dst, src_format=FLAGS.src_format, dst_format=FLAGS.dst_format,
            dtype=FLAGS.dtype, overwrite=FLAGS.overwrite, max_shard_size=FLAGS.max_shard_size,
            variant=variant, verify=FLAGS.verify, progress=FLAGS.progress)
  except KeyboardInterrupt:
    _fail("interrupted; the destination was left as it was", 1)
  except Exception as e:  # noqa: BLE001 -- a CLI prints one line, never a traceback
    # Expected failures (bad input, existing destination, disk full, failed verification) carry
    # a one-line message; anything else is reported with its type so it can be looked up.
    _fail(str(e) if _expected(e) else f"{type(e).__name__}: {e}", 1)


def _adapters_of(src: str):
  """The LoRA config of an Orbax checkpoint of adapters (it converts only with --merge_lora), or
  None for anything else."""
  from paligemma_jax.conversion import detect_format
  if detect_format(src) != "orbax":
    return None
  from paligemma_jax import checkpoints
  try:
    return checkpoints.read_config(src).lora
  except checkpoints.CheckpointError:
    return None


def _merge_lora() -> None:
  """--merge_lora: merged into an Orbax checkpoint, then converted from it for --dst_format."""
  import os
  import tempfile
  from paligemma_jax.api import merge_lora_checkpoint
  from paligemma_jax.conversion import convert
  from paligemma_jax.conversion.convert import destination_format
  fmt = FLAGS.dst_format or destination_format(FLAGS.dst, "orbax")
  if fmt == "orbax":
    merge_lora_checkpoint(FLAGS.src, FLAGS.dst, dtype=FLAGS.dtype, overwrite=FLAGS.overwrite)
    print(f"merged the LoRA adapters of {FLAGS.src} into their base -> {FLAGS.dst}")
    return
  if os.path.exists(FLAGS.dst) and not FLAGS.overwrite:
    _fail(f"{FLAGS.dst} already exists; pass --overwrite to replace it", 1)
  with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(FLAGS.dst))) as tmp:
    merged = os.path.join(tmp, "merged")
    merge_lora_checkpoint(FLAGS.src, merged, dtype=FLAGS.dtype)
    convert(merged, FLAGS.dst, src_format="orbax", dst_format=fmt, overwrite=FLAGS.overwrite,
            max_shard_size=FLAGS.max_shard_size, verify=FLAGS.verify, progress=FLAGS.progress)


def _expected(e: Exception) -> bool:
  from paligemma_jax.conversion import CheckpointError
  known = [CheckpointError]
  orbax_side = sys.modules.get("paligemma_jax.checkpoints")  # only if it was imported at all
  if orbax_side is not None:
    known.append(orbax_side.CheckpointError)
  return isinstance(e, tuple(known))


def run() -> None:
  app.define_help_flags()  # --help / --helpshort, as app.run would
  try:
    argv = FLAGS(sys.argv)
  except flags.Error as e:
    _fail(str(e), 2)
  main(argv)


if __name__ == "__main__":
  run()
