"""Adds array_record shards to a TFDS dataset built as tfrecord, so that Grain can read it.

    python -m paligemma_jax.data.to_array_record --dataset coco_captions --data_dir ~/tensorflow_datasets

Every split's tfrecord shards are copied record by record (the serialized examples are not
touched) into array_record shards next to them, named as TFDS names them; `dataset_info.json`
then lists array_record as an alternative file format. The tfrecord files stay, so tf.data
readers (`infer.py --config`) keep working, and `tfds.data_source` finds the new shards. Running it
again skips a dataset that already has array_record shards.

(`tfds convert_format` does the same but imports apache_beam, which this project does not need.)
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

from paligemma_jax.data.tfds_input import TfdsSource, _tfds, open_builder


def convert(dataset: str, data_dir: str = "") -> list[pathlib.Path]:
  """Writes array_record shards for every split of a built TFDS dataset; returns their paths.

  Args:
    dataset: TFDS name with optional config and version ("ref_coco/refcoco_unc:1.1.0").
    data_dir: where it is built ("" = TFDS's default).
  """
  tf, tfds = _tfds()
  builder = open_builder(TfdsSource(dataset, "train", data_dir), "--dataset / --data_dir: the dataset")
  info_path = pathlib.Path(builder.data_dir) / "dataset_info.json"
  if "array_record" in _formats(info_path):
    return []
  if builder.info.file_format.value != "tfrecord":
    raise ValueError(f"{dataset} is stored as {builder.info.file_format.value}; only tfrecord "
                     "datasets are converted")
  adapter = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[tfds.core.FileFormat.ARRAY_RECORD]
  written = []
  for split in builder.info.splits.values():
    template = split.filename_template.replace(filetype_suffix="array_record")
    for source, target in zip(split.filepaths, template.sharded_filepaths(split.num_shards)):
      partial = target.parent / f"{target.name}.incomplete"
      adapter.write_examples(partial, _records(tf, source))
      partial.rename(target)
      written.append(pathlib.Path(target))
  _add_format(info_path, "array_record")
  return written


def _records(tf: Any, path: Any) -> Iterator[tuple[None, bytes]]:
  """(key, serialized example) of every record of a tfrecord shard, in order."""
  for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
    yield None, record


def _formats(info_path: pathlib.Path) -> set[str]:
  """The file formats a built dataset's `dataset_info.json` declares (read from disk: a builder
  class registered in this process may not restore the alternative formats)."""
  info = json.loads(info_path.read_text())
  return {info.get("fileFormat", "tfrecord"), *info.get("alternativeFileFormats", [])}


def _add_format(info_path: pathlib.Path, file_format: str) -> None:
  """Lists `file_format` among the dataset's alternative file formats (written atomically)."""
  info = json.loads(info_path.read_text())
  formats = info.setdefault("alternativeFileFormats", [])
  if file_format not in formats:
    formats.append(file_format)
  partial = info_path.with_name(info_path.name + ".incomplete")
  partial.write_text(json.dumps(info, indent=2))
  partial.rename(info_path)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, help="TFDS name[/config][:version]")
  parser.add_argument("--data_dir", default="", help="where the dataset is built")
  args = parser.parse_args(argv)
  try:
    written = convert(args.dataset, args.data_dir)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{args.dataset}: wrote {len(written)} array_record shards" if written
        else f"{args.dataset}: already has array_record shards")
  return 0


if __name__ == "__main__":
  sys.exit(main())
