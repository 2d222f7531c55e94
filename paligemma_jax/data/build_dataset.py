"""Build one of this project's TFDS datasets from a folder of its downloaded raw files.

    python -m paligemma_jax.data.build_dataset --dataset vqav2 --raw_dir ~/raw/vqav2 \
        --data_dir ~/tensorflow_datasets [--config human] [--overwrite]

The dataset is written as array_record (random access for Grain) to
`{data_dir}/{dataset}/[{config}/]{version}` and read back with
`tfds.data_source("vqav2", split="train", data_dir=...)`. Each builder's docstring
(`paligemma_jax.data.builders`) gives the raw folder's layout, which is the release's own.

Nothing half-built is left behind: the annotation files are checked before anything is written,
the dataset is written into a staging folder inside `data_dir`, and only a finished build is moved
into place (replacing an existing one only with `--overwrite`). Errors are one line.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile

import tensorflow_datasets as tfds

from paligemma_jax.data.builders import BUILDERS, BadRawFile, MissingRawFile


class BuildError(ValueError):
  """A build that cannot start or finish; str() is the one-line message."""


def builder_class(dataset: str) -> type:
  try:
    return BUILDERS[dataset]
  except KeyError:
    raise BuildError(f"unknown dataset {dataset!r}; choose one of "
                     f"{', '.join(sorted(BUILDERS))}") from None


def _config_name(cls: type, config: str | None) -> str | None:
  names = [c.name for c in (cls.BUILDER_CONFIGS or [])]
  if not names:
    if config:
      raise BuildError(f"{cls.name} has no configs, got --config {config}")
    return None
  if config is None:
    return cls.DEFAULT_BUILDER_CONFIG_NAME or names[0]
  if config not in names:
    raise BuildError(f"{cls.name} has no config {config!r}; choose one of {', '.join(names)}")
  return config


def build_dataset(dataset: str, raw_dir: os.PathLike | str, data_dir: os.PathLike | str,
                  config: str | None = None, overwrite: bool = False) -> pathlib.Path:
  """Builds `dataset` (a key of BUILDERS) from `raw_dir` into `data_dir`; returns its folder."""
  cls = builder_class(dataset)
  config = _config_name(cls, config)
  raw_dir, data_dir = pathlib.Path(raw_dir).expanduser(), pathlib.Path(data_dir).expanduser()
  if not raw_dir.is_dir():
    raise BuildError(f"raw folder {raw_dir} does not exist; pass the folder holding {dataset}'s "
                     "downloaded files as --raw_dir")
  data_dir.mkdir(parents=True, exist_ok=True)
  staging = pathlib.Path(tempfile.mkdtemp(prefix=f".building-{dataset}-", dir=data_dir))
  try:
    builder = cls(data_dir=os.fspath(staging), config=config)
    relative = pathlib.Path(builder.data_dir).relative_to(staging)
    final = data_dir / relative
    if final.exists() and not overwrite:
      raise BuildError(f"{dataset} is already built in {final}; pass --overwrite to rebuild it")
    try:
      builder.check_raw_files(raw_dir)
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(raw_dir)))
    except (MissingRawFile, BadRawFile) as e:
      raise BuildError(f"{dataset}: {e}") from None
    if final.exists():
      shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(builder.data_dir, final)
    return final
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", required=True, help=f"one of {', '.join(sorted(BUILDERS))}")
  parser.add_argument("--raw_dir", required=True, help="folder of the release's downloaded files")
  parser.add_argument("--data_dir", required=True, help="TFDS data_dir to write the dataset into")
  parser.add_argument("--config", default=None, help="builder config (chartqa: human / augmented; "
                      "gqa: balanced / all); default: the first")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing build")
  args = parser.parse_args(argv)
  try:
    path = build_dataset(args.dataset, args.raw_dir, args.data_dir, args.config, args.overwrite)
  except BuildError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"built {args.dataset} in {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
