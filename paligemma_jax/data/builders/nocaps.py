"""nocaps: novel-object captioning on Open Images, 10 captions per validation image.

Raw folder (https://nocaps.org/download; the Open Images v4 validation and test tarballs
unpacked, which gives `validation/` and `test/`; `val/` is read where `validation/` is absent):

    nocaps_val_4500_captions.json    validation/{file_name}
    nocaps_test_image_info.json      test/{file_name}

Both files are COCO-style: `images: [{id, file_name, open_images_id, domain, coco_url, height,
width}]`; the validation file adds `annotations: [{image_id, id, caption}]`. Test has no released
captions, so its `captions` are empty. Features follow TFDS `coco_captions` (`image/id`,
`captions/text`), so the captioning task reads them with its defaults.
"""

from __future__ import annotations

import collections
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from paligemma_jax.data.builders.raw_files import (
    RawFilesBuilder, image_bytes, image_feature, load_json, raw_path, text)


class NoCaps(RawFilesBuilder):
  """nocaps: splits validation (with captions) and test (without)."""

  name = "nocaps"
  HOMEPAGE = "https://nocaps.org/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__
  # split -> (annotation file, image folder candidates)
  _SPLITS = {"validation": ("nocaps_val_4500_captions.json", ("validation", "val")),
             "test": ("nocaps_test_image_info.json", ("test",))}

  def features(self) -> dict[str, Any]:
    return {
        "image": image_feature("jpeg"),
        "image/id": np.int64,
        "image/filename": tfds.features.Text(),
        "image/open_images_id": tfds.features.Text(),
        "domain": tfds.features.Text(),  # "in-domain", "near-domain" or "out-domain".
        "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()}),
    }

  def splits(self) -> tuple[str, ...]:
    return tuple(self._SPLITS)

  def required_files(self, raw_dir: pathlib.Path, split: str) -> list[pathlib.Path]:
    """[annotation file, image folder]."""
    annotations, folders = self._SPLITS[split]
    return [raw_path(raw_dir, annotations), raw_path(raw_dir, *folders)]

  def examples(self, raw_dir: pathlib.Path, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    annotations, folder = self.required_files(raw_dir, split)
    info = load_json(annotations)
    captions = collections.defaultdict(list)
    for a in info.get("annotations", []):
      captions[a["image_id"]].append({"id": a["id"], "text": a["caption"]})
    for image in info["images"]:
      yield image["id"], {
          "image": image_bytes(folder / image["file_name"], raw_dir),
          "image/id": image["id"],
          "image/filename": image["file_name"],
          "image/open_images_id": text(image.get("open_images_id")),
          "domain": text(image.get("domain")),
          "captions": captions[image["id"]],
      }
