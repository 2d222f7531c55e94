"""What every builder here shares: finding the released raw files, reading them, storing images.

Each builder reads a folder of downloaded raw files (TFDS's `manual_dir`) laid out as the
dataset's authors release it. A file that is not where the release puts it stops the build with
one line naming the file and the folder (`MissingRawFile`), before anything is written when the
builder lists it in `required_files`, or at the first example that needs it otherwise. A JSON file
that does not parse or an image PIL cannot open stops it the same way (`BadRawFile`).

Images are stored as the released JPEG/PNG bytes, so Grain can decode them without TensorFlow.
The one exception: an image whose mode is neither RGB nor 8-bit grayscale (palette, RGBA, CMYK,
bilevel, ...) is converted to RGB (bilevel: grayscale) and stored as PNG, because TFDS's NumPy
decoder would otherwise hand back 1 or 4 channels, or 0/1 values, from a 3-channel uint8 feature
(transparent pixels become white).
"""

from __future__ import annotations

import abc
import inspect
import io
import json
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import PIL.Image
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

# Modes TFDS's NumPy decoder turns into [H, W, 3] (grayscale is repeated to three channels).
_KEPT_MODES = ("RGB", "L")


class MissingRawFile(FileNotFoundError):
  """A file the release has is not in the raw folder; str() is the one-line message."""


class BadRawFile(ValueError):
  """A raw file that cannot be read (JSON that does not parse, an unreadable image)."""


def raw_path(raw_dir: os.PathLike | str, *candidates: str) -> pathlib.Path:
  """The first of `candidates` (paths relative to `raw_dir`) that exists.

  Several candidates cover releases whose archives unpack with or without a top folder. When none
  exists the error names the first, which is the layout the builder's docstring describes.
  """
  raw_dir = pathlib.Path(raw_dir)
  for candidate in candidates:
    path = raw_dir / candidate
    if path.exists():
      return path
  alternatives = f" (or {', '.join(candidates[1:])})" if len(candidates) > 1 else ""
  raise MissingRawFile(f"expected {candidates[0]}{alternatives} in {raw_dir}")


def load_json(path: pathlib.Path) -> Any:
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise BadRawFile(f"{path} is not valid JSON ({e})") from None


def image_bytes(path: pathlib.Path, raw_dir: os.PathLike | str) -> bytes:
  """The released encoded bytes of the image at `path` (RGB PNG for non-RGB/grayscale modes)."""
  try:
    data = path.read_bytes()
  except FileNotFoundError:
    rel = os.path.relpath(path, raw_dir)
    raise MissingRawFile(f"expected image {rel} in {raw_dir}") from None
  try:
    image = PIL.Image.open(io.BytesIO(data))  # Reads the header only.
  except PIL.UnidentifiedImageError:
    raise BadRawFile(f"image {os.path.relpath(path, raw_dir)} in {raw_dir} is not an image PIL "
                     "can read") from None
  with image:
    if image.mode in _KEPT_MODES:
      return data
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
      image = image.convert("RGBA")
      background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
      image = PIL.Image.alpha_composite(background, image)  # Transparent = white, as shown.
    # Bilevel scans stay one channel (TFDS would decode mode "1" as 0/1, not 0/255).
    out = io.BytesIO()
    image.convert("L" if image.mode == "1" else "RGB").save(out, format="PNG")
  return out.getvalue()


def image_feature(encoding_format: str) -> tfds.features.Image:
  """An RGB image feature holding pre-encoded bytes (`encoding_format` names the usual format)."""
  return tfds.features.Image(shape=(None, None, 3), encoding_format=encoding_format)


def text(value: Any) -> str:
  """A released string field as str ("" for null); numbers become their decimal text."""
  return "" if value is None else str(value)


def texts(values: Any) -> list[str]:
  return [text(v) for v in (values or [])]


class RawFilesBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder over released raw files in `manual_dir`, written as array_record by default.

  Subclasses set `name`, `VERSION`, `MANUAL_DOWNLOAD_INSTRUCTIONS`, `features()`, `splits()` and
  implement `required_files` and `examples`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release: reads the dataset's own released files."}

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup needs the `importlib_resources` backport for packages on disk; the
    # module's file is what it would find.
    return epath.Path(inspect.getfile(cls))

  def __init__(self, **kwargs: Any) -> None:
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @abc.abstractmethod
  def features(self) -> Mapping[str, Any]:
    """The FeaturesDict contents."""

  @abc.abstractmethod
  def splits(self) -> tuple[str, ...]:
    """The TFDS split names this builder (and its config) writes."""

  @abc.abstractmethod
  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    """The annotation files `split` reads (raises MissingRawFile for the first one missing)."""

  @abc.abstractmethod
  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(unique key, example) pairs of `split`."""

  def check_raw_files(self, raw_dir: os.PathLike | str) -> None:
    """Raises MissingRawFile naming the first annotation file any split needs and lacks."""
    for split in self.splits():
      self.required_files(pathlib.Path(raw_dir), split)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(dict(self.features())),
        homepage=getattr(self, "HOMEPAGE", None))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    raw_dir = pathlib.Path(dl_manager.manual_dir)
    self.check_raw_files(raw_dir)
    return {split: self._generate_examples(raw_dir=raw_dir, split=split) for split in self.splits()}

  def _generate_examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[str, dict]]:
    yield from self.examples(raw_dir, split)
