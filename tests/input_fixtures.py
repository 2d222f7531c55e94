"""Tiny TFDS datasets and JSONL files for the input-pipeline tests, built in a temporary folder.

Every image is a 6x5 PNG whose red channel is the example's index and whose green channel is
`GREEN[dataset]`, so a test can tell from a batch's pixels which example a row came from (PNG is
lossless and the processor's resize of a constant image keeps the value).
"""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

GREEN = {"pipe_caps": 40, "pipe_vqa": 80, "jsonl": 120}
CAPS_SIZES = {"train": 24, "val": 6}
VQA_SIZES = {"train": 10}


def png(red: int, green: int, size: tuple[int, int] = (6, 5)) -> bytes:
  image = np.zeros((size[1], size[0], 3), np.uint8)
  image[..., 0], image[..., 1] = red, green
  buffer = io.BytesIO()
  PIL.Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def caps_captions(i: int) -> list[str]:
  """Example i's captions; example 5 has a long one (for truncation tests)."""
  long = " ".join(["a very long caption"] * 12)
  return [f"cap {i} one", f"cap {i} two"] + ([long] if i == 5 else [])


class PipeCaps(tfds.core.GeneratorBasedBuilder):
  """coco_captions' layout: image, image/id, captions/text."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "image/id": tfds.features.Scalar(np.int64),
        "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
    }))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(n) for split, n in CAPS_SIZES.items()}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": png(i, GREEN["pipe_caps"]), "image/id": 1000 + i,
                "captions": {"text": caps_captions(i)}}


class PipeVqa(tfds.core.GeneratorBasedBuilder):
  """VQAv2's layout: image, question, answers, question_id."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "question": tfds.features.Text(),
        "answers": tfds.features.Sequence(tfds.features.Text()),
        "question_id": tfds.features.Scalar(np.int64),
    }))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(n) for split, n in VQA_SIZES.items()}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": png(i, GREEN["pipe_vqa"]), "question": f"what is {i}?",
                "answers": [f"ans {i}", f"other {i}"], "question_id": i}


def build(builder_class: type, data_dir: pathlib.Path, file_format: str = "array_record") -> None:
  builder_class(data_dir=str(data_dir), file_format=file_format).download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False))


def write_jsonl(folder: pathlib.Path, rows: list[dict], images: dict[str, bytes],
                name: str = "data.jsonl") -> pathlib.Path:
  """Writes `rows` (dicts, or raw strings for malformed lines) and the image files."""
  folder.mkdir(parents=True, exist_ok=True)
  for relative, data in images.items():
    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
    (folder / relative).write_bytes(data)
  path = folder / name
  path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
  return path


def example_of(pixels: np.ndarray) -> tuple[int, int]:
  """(green, red) = (dataset tag, example index) of a preprocessed image [..., S, S, 3]."""
  values = np.round((np.asarray(pixels)[..., 0, 0, :] + 1) * 127.5).astype(int)
  return int(values[..., 1].ravel()[0]), int(values[..., 0].ravel()[0])


# --- the catalogue's coco_captions, built from fake COCO 2014 + Karpathy files ----------------

COCO_SPLITS = {"train": 5, "val": 2, "test": 1, "restval": 1}  # Karpathy split -> images


def coco_caption(image_id: int, k: int) -> str:
  return f"photo {image_id} number {k}"


def write_fake_coco(raw: pathlib.Path) -> dict[str, str]:
  """COCO 2014 in its release layout (images, instances JSON) plus Karpathy's dataset_coco.json;
  returns what `download_and_extract` would have returned."""
  karpathy, image_id = [], 0
  folders = {"train": "train2014", "val": "val2014", "test": "val2014", "restval": "val2014"}
  instances = {"train2014": [], "val2014": []}
  for split, n in COCO_SPLITS.items():
    for _ in range(n):
      image_id += 1
      folder = folders[split]
      name = f"COCO_{folder}_{image_id:012d}.jpg"
      path = raw / f"{folder}_images" / folder / name
      path.parent.mkdir(parents=True, exist_ok=True)
      PIL.Image.new("RGB", (10, 8), (image_id * 20, 30, 60)).save(path, "JPEG")
      instances[folder].append({"id": image_id, "file_name": name, "height": 8, "width": 10})
      karpathy.append({"filename": name, "split": split, "sentences": [
          {"raw": coco_caption(image_id, k), "sentid": image_id * 10 + k} for k in range(2)]})
  for folder, images in instances.items():
    path = raw / "annotations" / "annotations" / f"instances_{folder}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    annotations = [{"id": 100 + im["id"], "image_id": im["id"], "bbox": [1, 1, 4, 4], "area": 16,
                    "category_id": 1, "iscrowd": 0} for im in images]
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i + 1, "name": f"thing{i}"}
                                               for i in range(80)]}))  # COCO's 80 labels
  (raw / "karpathy").mkdir(parents=True, exist_ok=True)
  (raw / "karpathy" / "dataset_coco.json").write_text(json.dumps({"images": karpathy}))
  paths = {"train_images": "train2014_images", "validation_images": "val2014_images",
           "test_images": "val2014_images", "test2015_images": "val2014_images",
           "karpathy_and_li_splits": "karpathy"}
  paths.update({f"{s}_annotations": "annotations"
                for s in ("train", "validation", "test", "test2015")})
  return {key: str(raw / value) for key, value in paths.items()}


def build_coco_captions(raw: pathlib.Path, data_dir: pathlib.Path) -> None:
  """The catalogue's own coco_captions builder run on `write_fake_coco`'s files (array_record)."""
  from unittest import mock
  extracted = write_fake_coco(raw)
  with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                         lambda self, urls: {k: extracted[k] for k in urls}):
    tfds.builder("coco_captions", data_dir=str(data_dir),
                 file_format="array_record").download_and_prepare()
