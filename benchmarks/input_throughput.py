"""Examples/s of the training input (JPEG decode -> resize -> tokens -> batch), ours vs tf.data.

    python benchmarks/input_throughput.py                       # 224, 448, 896; 4096 records
    python benchmarks/input_throughput.py --image_method hf --sizes 224 --repeats 5

Both sides read the same 640x480 JPEGs (noisy gradients, ~100 KB each, like photos) from one
TFDS dataset built in a temporary folder: ours (Grain, `TrainInput`) from its array_record
shards, tf.data from its tfrecord shards (`tfds.load`), and both do the same work per example:

- decode: `--decoder pil` (the transfer configs' `image_decoder`) is libjpeg's accurate integer
  DCT; tf.data decodes with `tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")`, which gives
  the same pixels (checked here at start-up). `--decoder tf` is `tf.io.decode_image` on both
  sides (TF's default, faster and less exact DCT, as big_vision's `decode`).
- resize and scale: `--image_method big_vision` (what configs/transfers/ train with) is
  `tf.image.resize` bilinear with half-pixel centres (`--antialias` as the task config says,
  default off), clipped and truncated to uint8, then `x / 255 * 2 - 1`: ours computes exactly
  the same floats (data/images.py's C++ kernel, or its NumPy / TF fallback with
  PALIGEMMA_JAX_RESIZE_KERNEL=off; checked here); tf.data runs those TF ops. `--image_method hf`
  (the processor's default) is PIL bicubic, antialiased, rounded to uint8; tf.data then runs
  `tf.image.resize(..., "bicubic", antialias=True)` and rounds: the same filter and the same
  amount of work, not the same pixels (PIL and TF weight the taps differently).
- text: the prompt "caption en" and a caption through the same `Processor.text_arrays` at a fixed
  `text_len` with right padding, all six token arrays (tf.data through `tf.numpy_function`,
  since tensorflow-text, big_vision's tokenizer op, is not a dependency here). The tokenizer is a
  stand-in trained on the spot (its speed is what matters, not its vocabulary).
- batching: float32 images [B, 1, S, S, 3] and int32 tokens, `--batch` rows.

Ours additionally shuffles and mixes through `TrainInput` (per example: a seeded choice of
caption, skip bookkeeping), which is part of what it costs.

Each side runs `--batches` batches after one warm-up batch, `--repeats` times alternating
sides, and the best rate of each is printed. On a shared machine the figures move by tens of
percent between runs: compare ratios from the same run only.
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import tempfile
import time

import numpy as np
import PIL.Image

IMAGE_TOKENS = {224: 256, 448: 1024, 896: 4096}
PROMPT = "caption en"


def cpu_description() -> str:
  """CPU model, core count and the vector flags that matter for decode/resize speed."""
  model, flags = "unknown CPU", set()
  for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
    key, _, value = line.partition(":")
    if key.strip() == "model name":
      model = value.strip()
    elif key.strip() == "flags":
      flags = set(value.split())
  wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
  return f"{model}, {os.cpu_count()} cores visible, flags: {' '.join(wanted) or 'none'}"


def photo_jpeg(seed: int) -> bytes:
  """A 640x480 JPEG of a noisy gradient (compresses like a photo, not like a flat image)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:480, 0:640]
  base = np.stack([x / 640 * 255, y / 480 * 255, (x + y) / 1120 * 255], -1)
  image = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
  out = io.BytesIO()
  PIL.Image.fromarray(image).save(out, format="JPEG", quality=90)
  return out.getvalue()


def build_dataset(data_dir: pathlib.Path, examples: int) -> None:
  """`bench_photos` with `examples` photos, written as array_record AND tfrecord."""
  import tensorflow_datasets as tfds

  jpegs = [photo_jpeg(i) for i in range(min(examples, 64))]

  class BenchPhotos(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "image/id": tfds.features.Scalar(np.int64),
          "captions": tfds.features.Sequence({"text": tfds.features.Text()})}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(examples):
        yield i, {"image": jpegs[i % len(jpegs)], "image/id": i,
                  "captions": {"text": [f"a photo number {i} of a gradient with some noise",
                                        f"picture {i}"]}}

  for file_format in ("array_record", "tfrecord"):
    BenchPhotos(data_dir=str(data_dir / file_format), file_format=file_format
                ).download_and_prepare()


def ours(data_dir: pathlib.Path, processor, args: argparse.Namespace):
  from paligemma_jax.data.input_config import InputConfig, MemberConfig
  from paligemma_jax.data.input_pipeline import TrainInput

  member = MemberConfig(name="bench_photos", data_dir=str(data_dir), image_decoder=args.decoder)
  config = InputConfig(members=(member,), batch_size=args.batch, text_len=args.text_len,
                       read_threads=args.threads, prefetch_buffer=2 * args.batch,
                       worker_processes=args.workers)
  return TrainInput(config, processor)


def tf_decode(data, decoder: str):
  """tf.data's decode doing what ours does for `decoder` (see the module docstring)."""
  import tensorflow as tf

  if decoder == "pil":
    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
  return tf.io.decode_image(data, channels=3, expand_animations=False)


def tf_resize(image, size: int, method: str, antialias: bool):
  """float32 [size, size, 3] in [-1, 1]: the TF ops of the module docstring."""
  import tensorflow as tf

  if method == "big_vision":
    image = tf.image.resize(image, (size, size), method="bilinear", antialias=antialias)
    image = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)  # truncation, as big_vision
    return tf.cast(image, tf.float32) / 255 * 2 - 1
  image = tf.image.resize(image, (size, size), method="bicubic", antialias=True)
  image = tf.cast(tf.round(tf.clip_by_value(image, 0, 255)), tf.uint8)  # PIL rounds
  return tf.cast(image, tf.float32) / 255 * 2 - 1


def tf_data(data_dir: pathlib.Path, processor, args: argparse.Namespace):
  import tensorflow as tf
  import tensorflow_datasets as tfds

  size = processor.image_size
  length = processor.num_image_tokens + args.text_len
  keys = ("tokens", "input_mask", "token_type_ids", "mask_ar", "mask_loss", "labels")

  def text_arrays(caption: bytes) -> list[np.ndarray]:
    out = processor.text_arrays([PROMPT], [caption.decode()], 1, padding_side="right",
                                max_length=length)
    return [out[k][0] for k in keys]

  def prepare(example):
    image = tf_resize(tf_decode(example["image"], args.decoder), size, args.image_method,
                      args.antialias)
    caption = example["captions"]["text"][0]
    arrays = tf.numpy_function(text_arrays, [caption],
                               [tf.bool if k == "input_mask" else tf.int32 for k in keys])
    out = {"images": image[None]}
    for key, array in zip(keys, arrays):
      array.set_shape([length])
      out[key] = array
    return out

  ds = tfds.load("bench_photos", split="train", data_dir=str(data_dir), shuffle_files=True,
                 decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.repeat().shuffle(1000).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.batch(args.batch, drop_remainder=True).prefetch(2)))


def check_same_work(jpeg: bytes, processor, args: argparse.Namespace) -> str:
  """Asserts ours and the TF ops give the same decoded pixels (and, for big_vision, the same
  floats); returns a short note on the pixels."""
  from paligemma_jax.data.tfds_input import decode_image

  decoded = decode_image(jpeg, args.decoder)
  np.testing.assert_array_equal(decoded, tf_decode(jpeg, args.decoder).numpy())
  ours_pixels = processor([decoded], [PROMPT])["images"][0, 0]
  theirs = tf_resize(decoded, processor.image_size, args.image_method, args.antialias).numpy()
  if args.image_method == "big_vision":
    np.testing.assert_array_equal(ours_pixels, theirs)
    return "same decoded pixels, same floats"
  steps = np.abs(ours_pixels - theirs).max() * 127.5
  return f"same decoded pixels; PIL vs TF bicubic differ by up to {steps:.0f} uint8 steps"


def rate(iterator, batches: int, batch: int) -> tuple[float, float]:
  """(examples/s, CPU ms per example): the process's user + system time over the same window,
  a figure that other work on a shared machine moves less than the rate."""
  next(iterator)  # warm-up: threads started, first files opened
  start, cpu = time.perf_counter(), os.times()
  for _ in range(batches):
    next(iterator)
  wall, end = time.perf_counter() - start, os.times()
  used = (end.user - cpu.user) + (end.system - cpu.system)
  return batches * batch / wall, used / (batches * batch) * 1e3


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
  parser.add_argument("--examples", type=int, default=4096,
                      help="records in the dataset (64 distinct JPEGs repeated); Grain's shuffle "
                           "costs ~3 us per example on large datasets but ~28,000 / N us on N "
                           "examples (110 us at 256), so small N charges ours what real data "
                           "does not")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per side")
  parser.add_argument("--text_len", type=int, default=32)
  parser.add_argument("--threads", type=int, default=0,
                      help="our reader threads (0: input.read_threads' default, one per CPU)")
  parser.add_argument("--workers", type=int, default=0, help="our worker processes (0: threads)")
  parser.add_argument("--decoder", choices=("pil", "tf"), default="pil")
  parser.add_argument("--image_method", choices=("big_vision", "hf"), default="big_vision")
  parser.add_argument("--antialias", action="store_true", help="big_vision resize's antialias")
  args = parser.parse_args()
  if args.workers:
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags

  from paligemma_jax.data.input_config import default_read_threads
  from paligemma_jax.data.processor import Processor
  from paligemma_jax.data.standin_tokenizer import train_standin_tokenizer
  from paligemma_jax.data.tokenizer import Tokenizer

  print(cpu_description())
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    build_dataset(tmp, args.examples)
    tokenizer = Tokenizer(train_standin_tokenizer(tmp / "standin"))
    work = (f"decoder {args.decoder}, image_method {args.image_method}"
            f"{', antialias' if args.antialias else ''}, text_len {args.text_len}, "
            f"batch {args.batch}, our threads {args.threads or default_read_threads()} x "
            f"processes {max(args.workers, 1)}, best of {args.repeats}, {args.examples} examples")
    print(f"{work}\n{'size':>5} {'ours ex/s':>10} {'tf.data ex/s':>13} {'ratio':>6} "
          f"{'CPU ms/ex ours / tf.data':>25}  check")
    for size in args.sizes:
      processor = Processor(tokenizer, size, IMAGE_TOKENS[size], args.image_method,
                            antialias=args.antialias)
      note = check_same_work(photo_jpeg(0), processor, args)
      rates, cpus = {"ours": 0.0, "tf": 0.0}, {"ours": float("inf"), "tf": float("inf")}
      for _ in range(args.repeats):  # best of each: the highest rate, the lowest CPU time
        for side, make in (("ours", lambda: ours(tmp / "array_record", processor, args)),
                           ("tf", lambda: tf_data(tmp / "tfrecord", processor, args))):
          examples_per_s, cpu_ms = rate(make(), args.batches, args.batch)
          rates[side], cpus[side] = max(rates[side], examples_per_s), min(cpus[side], cpu_ms)
      cpu = f"{cpus['ours']:.2f} / {cpus['tf']:.2f}"
      print(f"{size:>5} {rates['ours']:>10.1f} {rates['tf']:>13.1f} "
            f"{rates['ours'] / rates['tf']:>6.2f} {cpu:>25}  {note}")


if __name__ == "__main__":
  main()
