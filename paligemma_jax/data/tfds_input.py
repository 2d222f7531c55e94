"""Rows from a TFDS split: read in stored order, decode to NumPy, map through a task.

    source = TfdsSource("coco_captions", "val[:100]", data_dir="~/tensorflow_datasets")
    for row in tfds_rows(source, make_task("caption")):
      row.id, row.prefix, row.images[0].shape, row.references

- The split takes TFDS's syntax ("val", "validation[:500]", "test[10%:]", "train+val").
- Reading is deterministic: files in order, one at a time, no shuffling. With several processes,
  each reads its own contiguous part (`tfds.split_for_jax_process`, process index and count
  passed in, so this module needs no JAX).
- Nothing is downloaded: the dataset must already be built in `data_dir`.
- Images are read as their encoded bytes and decoded here, one example at a time, so a corrupt
  image fails only its own row: "pil" (HF's decoder, the default) or "tf" (`tf.io.decode_image`,
  big_vision's). Images the task does not read stay encoded. Ragged fields become lists.

TensorFlow and tensorflow_datasets are imported inside the functions: the rest of the package
(and the accelerator image, which lacks them) never needs them.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import PIL.Image

from paligemma_jax.data.tasks import TASKS, Row, Task, check_fields, lookup, rows_or_error

IMAGE_DECODERS = ("pil", "tf")


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """A TFDS split: `name` ("coco_captions", "ref_coco/refcoco_unc", optionally ":1.1.0"),
  `split` in TFDS syntax, `data_dir` ("" = TFDS's default) and the image decoder."""

  name: str
  split: str
  data_dir: str = ""
  image_decoder: str = "pil"

  def __post_init__(self) -> None:
    if not self.name or not self.split:
      raise ValueError(f"a TFDS source needs a dataset name and a split, got name={self.name!r} "
                       f"split={self.split!r}; set infer.data.name and infer.data.split")
    if self.image_decoder not in IMAGE_DECODERS:
      raise ValueError(f"unknown image_decoder {self.image_decoder!r}; use one of "
                       f"{', '.join(IMAGE_DECODERS)}")


@functools.cache
def _tfds() -> tuple[Any, Any]:
  """(tensorflow, tensorflow_datasets), imported on first use; TF is kept off the GPUs."""
  import tensorflow as tf  # Lazy: only TFDS input needs TensorFlow.
  import tensorflow_datasets as tfds

  try:
    tf.config.set_visible_devices([], "GPU")  # TF must not take accelerator memory from JAX
  except RuntimeError:  # TF's devices were already initialised by the caller
    pass
  return tf, tfds


def open_builder(source: TfdsSource, config_path: str = "infer.data") -> Any:
  """The prepared TFDS builder of `source`; one-line errors for unknown or unbuilt datasets
  (naming what `data_dir` holds, and the `config_path` settings to fix)."""
  _, tfds = _tfds()
  where = f" in data_dir {source.data_dir}" if source.data_dir else ""
  try:
    builder = tfds.builder(source.name, data_dir=source.data_dir or None)
  except ValueError as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"TFDS dataset {source.name!r} not found{where} ({first}){_built_here(source)}; "
                     f"fix {config_path}.name or {config_path}.data_dir") from None
  if not builder.is_prepared():
    raise ValueError(f"TFDS dataset {source.name!r} is not built in {builder.data_dir}"
                     f"{_built_here(source)}; build it first (tfds build {source.name} "
                     "--data_dir=...): nothing is downloaded here")
  return builder


def _built_here(source: TfdsSource) -> str:
  """ "; data_dir holds: a, b/c, ..." listing the built datasets (and configs) of the data_dir."""
  root = pathlib.Path(source.data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))
  root = root.expanduser()
  if not root.is_dir():
    return f"; data_dir {root} does not exist"
  # name/version/ or name/config/version/ only: a recursive glob would walk downloads/.
  infos = [*root.glob("*/*/dataset_info.json"), *root.glob("*/*/*/dataset_info.json")]
  built = sorted({str(info.parent.parent.relative_to(root)) for info in infos})
  return f"; data_dir {root} holds {', '.join(built) or 'no built dataset'}"


def process_split(builder: Any, split: str, process_index: int = 0, process_count: int = 1
                  ) -> tuple[Any, int, int]:
  """(this process's part of `split`, its first example's index in `split`, its size)."""
  _, tfds = _tfds()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  try:
    builder.info.splits[split]
  except (ValueError, KeyError) as e:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"bad split {split!r} for {builder.name}: {first}; its splits are "
                     f"{', '.join(builder.info.splits)}") from None
  if process_count == 1:
    return split, 0, builder.info.splits[split].num_examples
  parts = [tfds.split_for_jax_process(split, process_index=i, process_count=process_count)
           for i in range(process_index + 1)]
  sizes = [builder.info.splits[p].num_examples for p in parts]
  return parts[-1], sum(sizes[:-1]), sizes[-1]


def feature_tree(features: Any) -> dict[str, Any]:
  """A FeaturesDict as nested dicts of its leaf features (a sequence of dicts counts as the
  dict, as decoded examples have it), for `check_fields` and `lookup`."""
  _, tfds = _tfds()
  tree = {}
  for key, feature in features.items():
    inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
    tree[key] = feature_tree(inner) if isinstance(inner, tfds.features.FeaturesDict) else feature
  return tree


@functools.cache
def _keep_encoded() -> type:
  """`tfds.decode.SkipDecoding` that also leaves images inside sequences encoded (ref_coco's
  `objects/mask`, a sequence of images): TFDS's NumPy decoding asks a sequence's decoder for
  `decode_batch_example_np`, which SkipDecoding lacks (an AttributeError on every example)."""
  _, tfds = _tfds()

  class KeepEncoded(tfds.decode.SkipDecoding):
    def decode_batch_example_np(self, serialized):  # [n] encoded images, as stored
      return serialized

    def decode_ragged_example_np(self, serialized):
      return serialized

  return KeepEncoded


def skip_image_decoding(features: Any) -> dict[str, Any]:
  """Decoders that leave every Image feature (and sequence of images) encoded."""
  _, tfds = _tfds()
  decoders = {}
  for key, feature in features.items():
    inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
    if isinstance(inner, tfds.features.Image):
      decoders[key] = _keep_encoded()()
    elif isinstance(inner, tfds.features.FeaturesDict) and (sub := skip_image_decoding(inner)):
      decoders[key] = sub
  return decoders


def check_image_fields(builder: Any, tree: dict[str, Any], task: Task) -> None:
  _, tfds = _tfds()
  for key in task.image_fields():
    feature = lookup(tree, key)
    inner = feature.feature if isinstance(feature, tfds.features.Sequence) else feature
    if not isinstance(inner, tfds.features.Image):
      kind = "group of fields" if isinstance(inner, dict) else type(inner).__name__
      raise ValueError(f"field {key!r} of {builder.name} is a {kind}, not an "
                       "image; point the task's image key at an Image feature")


def decode_image(data: bytes, decoder: str = "pil") -> np.ndarray:
  """uint8 [H, W, 3] (or [H, W, 4] when the image has transparency, for the processor to
  composite) of encoded image bytes; a one-line ValueError when they are not an image."""
  if decoder == "tf":
    tf, _ = _tfds()
    try:
      return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    except tf.errors.OpError as e:
      raise ValueError(f"cannot decode image: {e.message.splitlines()[0]}") from None
  try:
    with PIL.Image.open(io.BytesIO(data)) as image:
      alpha = "A" in image.getbands() or "transparency" in image.info
      mode = "RGBA" if alpha else "RGB"
      # convert() to the image's own mode would only copy it (most JPEGs are RGB already).
      return np.asarray(image if image.mode == mode else image.convert(mode))
  except (OSError, PIL.UnidentifiedImageError, ValueError) as e:
    raise ValueError(f"cannot decode image: {e}") from None


def _to_numpy(value: Any) -> Any:
  """Ragged tensors (which tfds.as_numpy leaves as they are) -> nested lists, recursively."""
  if isinstance(value, Mapping):
    return {k: _to_numpy(v) for k, v in value.items()}
  if hasattr(value, "to_list") and not isinstance(value, np.ndarray):
    return value.to_list()
  return value


def with_decoded_images(example: dict[str, Any], keys: tuple[str, ...], decoder: str
                         ) -> dict[str, Any]:
  out = dict(example)
  for key in keys:
    encoded = lookup(out, key)
    if isinstance(encoded, (bytes, np.bytes_)):
      decoded = decode_image(encoded, decoder)
    else:  # a sequence of images
      decoded = [decode_image(e, decoder) for e in encoded]
    _assign(out, key, decoded)
  return out


def _assign(example: dict[str, Any], key: str, value: Any) -> None:
  """example[key] = value, where "a/b" may address example["a"]["b"] (as `lookup` reads it)."""
  if key in example:
    example[key] = value
    return
  parts = key.split("/")
  for cut in range(len(parts) - 1, 0, -1):
    head = "/".join(parts[:cut])
    if isinstance(example.get(head), Mapping):
      example[head] = dict(example[head])
      _assign(example[head], "/".join(parts[cut:]), value)
      return
  raise KeyError(key)


def task_name(task: Task) -> str:
  return next((name for name, cls in TASKS.items() if cls is type(task)), type(task).__name__)


def tfds_rows(source: TfdsSource, task: Task, *, process_index: int = 0,
              process_count: int = 1) -> Iterator[Row]:
  """Every row of `task` over this process's part of the split, in stored order.

  Checks the dataset, split and task fields now (one-line errors, before any reading); the
  returned iterator then reads lazily. An example that cannot be read (corrupt image, malformed
  fields) yields one `Row` with `error` set and the example's id (or its index in the split).
  """
  tf, tfds = _tfds()
  builder = open_builder(source)
  tree = feature_tree(builder.info.features)
  check_fields(task, task_name(task), tree, builder.name)
  check_image_fields(builder, tree, task)
  split, offset, _ = process_split(builder, source.split, process_index, process_count)
  dataset = builder.as_dataset(split=split, shuffle_files=False,
                               decoders=skip_image_decoding(builder.info.features),
                               read_config=tfds.ReadConfig(interleave_cycle_length=1))
  options = tf.data.Options()
  options.deterministic = True
  return _rows(tfds.as_numpy(dataset.with_options(options)), task, offset, source.image_decoder)


def _rows(examples: Iterator[dict[str, Any]], task: Task, offset: int, decoder: str
          ) -> Iterator[Row]:
  decode = functools.partial(with_decoded_images, keys=task.image_fields(), decoder=decoder)
  for i, example in enumerate(examples):
    yield from rows_or_error(task, _to_numpy(example), offset + i, decode=decode)


def count_examples(source: TfdsSource, *, process_index: int = 0, process_count: int = 1) -> int:
  """Examples in this process's part of the split (from the dataset's metadata, no reading)."""
  builder = open_builder(source)
  return process_split(builder, source.split, process_index, process_count)[2]
