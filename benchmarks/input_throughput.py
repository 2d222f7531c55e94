"""Examples/s of the training input (JPEG decode -> resize -> tokens -> batch), ours vs tf.data.

    python benchmarks/input_throughput.py                       # 224, 448, 896; 256 JPEGs
    python benchmarks/input_throughput.py --sizes 224 --examples 512 --threads 4

Both sides read the same 640x480 JPEGs (noisy gradients, ~100 KB each, like photos) from one
TFDS dataset built in a temporary folder: ours (Grain, `TrainInput`) from its array_record
shards, tf.data from its tfrecord shards (`tfds.load`). Per example both decode the JPEG, resize it
to the model's resolution, scale it to [-1, 1], tokenize the prompt and a caption at a fixed
length and batch. Ours resizes as HF does (PIL bicubic, antialiased: the processor's default);
tf.data runs twice: with the same filter (`bicubic`, `antialias=True`: the same work) and with
big_vision's plain bilinear (4 taps per pixel, far cheaper at 224 from 640x480). tf.data tokenizes
through `tf.numpy_function` with the same SentencePiece model, since tensorflow-text (big_vision's
op) is not a dependency here.
The tokenizer is a stand-in trained on the spot (its speed is what matters, not its vocabulary).

Each side runs `--batches` batches after one warm-up batch, sides alternating per resolution.
On a shared machine the figures move by tens of percent between runs: compare ratios from the
same run only.
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


def ours(data_dir: pathlib.Path, processor, batch: int, text_len: int, threads: int):
  from paligemma_jax.data.input_config import InputConfig, MemberConfig
  from paligemma_jax.data.input_pipeline import TrainInput

  config = InputConfig(members=(MemberConfig(name="bench_photos", data_dir=str(data_dir)),),
                       batch_size=batch, text_len=text_len, read_threads=threads,
                       prefetch_buffer=2 * batch)
  return TrainInput(config, processor)


def tf_data(data_dir: pathlib.Path, tokenizer, size: int, tokens: int, batch: int,
            text_len: int, antialiased_bicubic: bool):
  import tensorflow as tf
  import tensorflow_datasets as tfds

  image_id, bos, eos, pad = tokenizer.image_token_id, tokenizer.bos_id, tokenizer.eos_id, 0
  length = tokens + text_len

  def tokenize(caption: bytes) -> tuple[np.ndarray, np.ndarray]:
    prefix = [image_id] * tokens + [bos] + tokenizer.encode("caption en\n")
    ids = (prefix + tokenizer.encode(caption.decode()) + [eos])[:length]
    loss = ([0] * len(prefix) + [1] * (length - len(prefix)))[:len(ids)]
    out = np.full(length, pad, np.int32)
    out[:len(ids)] = ids
    mask = np.zeros(length, np.int32)
    mask[:len(loss)] = loss
    return out, mask

  def prepare(example):
    image = tf.io.decode_jpeg(example["image"], channels=3)
    if antialiased_bicubic:
      image = tf.image.resize(image, (size, size), method="bicubic", antialias=True)
    else:
      image = tf.image.resize(image, (size, size), method="bilinear")
    image = tf.clip_by_value(image, 0, 255) / 127.5 - 1
    caption = example["captions"]["text"][0]
    ids, mask = tf.numpy_function(tokenize, [caption], (tf.int32, tf.int32))
    ids.set_shape([length])
    mask.set_shape([length])
    return {"images": image, "tokens": ids, "mask_loss": mask}

  ds = tfds.load("bench_photos", split="train", data_dir=str(data_dir), shuffle_files=True,
                 decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.repeat().shuffle(1000).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.batch(batch, drop_remainder=True).prefetch(2)))


def rate(iterator, batches: int, batch: int) -> float:
  next(iterator)  # warm-up: threads started, first files opened
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return batches * batch / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[224, 448, 896])
  parser.add_argument("--examples", type=int, default=256)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--batches", type=int, default=8)
  parser.add_argument("--text_len", type=int, default=32)
  parser.add_argument("--threads", type=int, default=4, help="our reader threads")
  args = parser.parse_args()

  from paligemma_jax.data.processor import Processor
  from paligemma_jax.data.standin_tokenizer import train_standin_tokenizer
  from paligemma_jax.data.tokenizer import Tokenizer

  print(cpu_description())
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    build_dataset(tmp, args.examples)
    tokenizer = Tokenizer(train_standin_tokenizer(tmp / "standin"))
    print(f"{'size':>5} {'ours ex/s':>10} {'tf.data same filter':>20} {'ratio':>6} "
          f"{'tf.data bilinear':>17} {'ratio':>6}")
    for size in args.sizes:
      processor = Processor(tokenizer, size, IMAGE_TOKENS[size])
      ours_rate = rate(ours(tmp / "array_record", processor, args.batch, args.text_len,
                            args.threads), args.batches, args.batch)
      tf_rates = [rate(tf_data(tmp / "tfrecord", tokenizer, size, IMAGE_TOKENS[size], args.batch,
                               args.text_len, antialiased_bicubic), args.batches, args.batch)
                  for antialiased_bicubic in (True, False)]
      print(f"{size:>5} {ours_rate:>10.1f} {tf_rates[0]:>20.1f} {ours_rate / tf_rates[0]:>6.2f} "
            f"{tf_rates[1]:>17.1f} {ours_rate / tf_rates[1]:>6.2f}")


if __name__ == "__main__":
  main()
