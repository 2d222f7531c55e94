"""Each dataset builder on small fake raw files in its release's layout, built as array_record and
read back through `tfds.data_source` (random access, as Grain reads it); and the build command.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from paligemma_jax.data.build_dataset import BuildError, build_dataset, main
from paligemma_jax.data.builders import BUILDERS
from paligemma_jax.data.task_base import check_fields
from paligemma_jax.data.tasks import make_task
from paligemma_jax.data.tfds_input import feature_tree

H, W = 6, 8  # Every fake image is W x H.


def write_image(path: pathlib.Path, fmt: str = "JPEG", mode: str = "RGB", color=(200, 30, 10)) -> bytes:
  path.parent.mkdir(parents=True, exist_ok=True)
  if mode in ("L", "P", "1"):
    color = 1 if mode == "1" else 7
  elif len(color) != len(mode):
    color = (*color, 128)
  PIL.Image.new(mode, (W, H), color).save(path, fmt)
  return path.read_bytes()


def write_json(path: pathlib.Path, value) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(value))


def build_and_read(name: str, raw: pathlib.Path, tmp_path: pathlib.Path, config: str | None = None,
                   **decoders) -> dict[str, list[dict]]:
  """Builds `name` from `raw`; returns every split's examples, read back and sorted by id (TFDS
  stores them in the order of their keys' hashes)."""
  data_dir = tmp_path / "tfds"
  build_dataset(name, raw, data_dir, config=config)
  full = f"{name}/{config}" if config else name
  builder = tfds.builder(full, data_dir=data_dir)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  out = {}
  for split in builder.info.splits:
    source = tfds.data_source(full, split=split, data_dir=data_dir, decoders=decoders or None)
    examples = [source[i] for i in range(len(source))]
    out[split] = sorted(examples, key=lambda ex: ex["question_id"] if "question_id" in ex else ex["image/id"])
  return out


def default_task_rows(task: str, name: str, tmp_path: pathlib.Path, example: dict) -> list:
  """`task`'s rows of a built example with no options: its defaults must read what the builder
  writes (the transfer configs name no fields)."""
  built = make_task(task)
  check_fields(built, task, feature_tree(tfds.builder(name, data_dir=tmp_path / "tfds").info.features),
               name)
  return built.rows(example, 0)


def assert_image(example: dict) -> None:
  assert example["image"].shape == (H, W, 3) and example["image"].dtype == np.uint8


def decode(values) -> list[str]:
  return [v.decode() for v in values]


def test_every_dataset_the_issue_names_has_a_builder():
  assert set(BUILDERS) >= {"vqav2", "textvqa", "docvqa", "gqa", "chartqa", "okvqa", "ai2d",
                           "science_qa", "tallyqa", "nocaps"}


def _vqa_annotations(questions: list[dict]) -> dict:
  return {"annotations": [
      {"question_id": q["question_id"], "image_id": q["image_id"], "question_type": "what color",
       "answer_type": "other", "multiple_choice_answer": "red",
       "answers": [{"answer": f"red{i}", "raw_answer": f"Red{i}", "answer_confidence": "yes", "answer_id": i + 1}
                   for i in range(10)]} for q in questions]}


def write_vqav2(raw: pathlib.Path) -> dict[str, bytes]:
  images = {}
  for stem, folder, n in [("train2014", "train2014", 3), ("val2014", "val2014", 2),
                          ("test2015", "test2015", 2), ("test-dev2015", "test2015", 1)]:
    questions = [{"image_id": 7 + i // 2, "question": f"what color {i}?", "question_id": 700 + i}
                 for i in range(n)]
    write_json(raw / f"v2_OpenEnded_mscoco_{stem}_questions.json", {"questions": questions})
    if not stem.startswith("test"):
      write_json(raw / f"v2_mscoco_{stem}_annotations.json", _vqa_annotations(questions))
    for q in questions:
      name = f"{folder}/COCO_{folder}_{q['image_id']:012d}.jpg"
      images[name] = write_image(raw / name)
  return images


def test_vqav2(tmp_path):
  images = write_vqav2(tmp_path / "raw")
  splits = build_and_read("vqav2", tmp_path / "raw", tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 3, "validation": 2, "test": 2, "test_dev": 1}
  ex = splits["train"][2]
  assert_image(ex)
  assert ex["question_id"] == 702 and ex["image_id"] == 8 and ex["question"] == b"what color 2?"
  assert decode(ex["answers"]) == [f"red{i}" for i in range(10)]
  assert decode(ex["answer_confidences"]) == ["yes"] * 10
  assert (ex["answer_type"], ex["question_type"], ex["multiple_choice_answer"]) == (b"other", b"what color", b"red")
  assert ex["image_filename"] == b"train2014/COCO_train2014_000000000008.jpg"
  test = splits["test_dev"][0]
  assert len(test["answers"]) == 0 and test["answer_type"] == b""
  assert_image(test)
  # The stored image is the released JPEG, byte for byte.
  raw_bytes = build_and_read("vqav2", tmp_path / "raw", tmp_path / "again", image=tfds.decode.SkipDecoding())
  assert raw_bytes["validation"][1]["image"] == images["val2014/COCO_val2014_000000000007.jpg"]


def test_okvqa(tmp_path):
  raw = tmp_path / "raw"
  for stem in ("train2014", "val2014"):
    questions = [{"image_id": 3, "question": "what sport?", "question_id": 31},
                 {"image_id": 4, "question": "who made it?", "question_id": 41}]
    write_json(raw / f"OpenEnded_mscoco_{stem}_questions.json", {"questions": questions})
    write_json(raw / f"mscoco_{stem}_annotations.json", _vqa_annotations(questions))
    for q in questions:
      write_image(raw / stem / f"COCO_{stem}_{q['image_id']:012d}.jpg")
  splits = build_and_read("okvqa", raw, tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 2, "validation": 2}
  ex = splits["validation"][1]
  assert ex["question_id"] == 41 and ex["image_id"] == 4 and len(ex["answers"]) == 10
  assert decode(ex["raw_answers"]) == [f"Red{i}" for i in range(10)]
  assert_image(ex)


def test_textvqa(tmp_path):
  raw = tmp_path / "raw"
  for split, folder in [("train", "train_images"), ("val", "train_images"), ("test", "test_images")]:
    rows = [{"question": f"what brand {split}?", "question_id": 10 + i, "image_id": f"ab{split}{i}",
             "image_classes": ["Bottle"], "set_name": split,
             **({} if split == "test" else {"answers": ["coke"] * 9 + ["pepsi"]})} for i in range(2)]
    write_json(raw / f"TextVQA_0.5.1_{split}.json", {"dataset_name": "textvqa", "data": rows})
    for row in rows:
      write_image(raw / folder / f"{row['image_id']}.jpg")
  splits = build_and_read("textvqa", raw, tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 2, "validation": 2, "test": 2}
  ex = splits["validation"][1]
  assert ex["question"] == b"what brand val?" and ex["question_id"] == 11 and ex["image_id"] == b"abval1"
  assert decode(ex["answers"]) == ["coke"] * 9 + ["pepsi"] and decode(ex["image_classes"]) == ["Bottle"]
  assert len(splits["test"][0]["answers"]) == 0
  assert_image(splits["test"][0])


def test_docvqa_keeps_every_answer_and_gives_grayscale_bilevel_and_palette_pngs_three_channels(tmp_path):
  raw = tmp_path / "raw"
  for folder, qt in [("train", "_withQT"), ("val", "_withQT"), ("test", "")]:
    rows = [{"questionId": 50 + i, "question": f"what date {i}?", "image": f"documents/d{folder}{i}.png",
             "docId": 5, "ucsf_document_id": "xnbl0037", "ucsf_document_page_no": "1",
             **({} if folder == "test" else {"answers": ["1/2/93", "Jan 2 1993"], "question_types": ["form"]})}
            for i in range(2)]
    write_json(raw / folder / f"{folder}_v1.0{qt}.json", {"dataset_split": folder, "data": rows})
    for i, row in enumerate(rows):
      write_image(raw / folder / row["image"], "PNG", mode=("L", "P", "1")[i % 3 if folder == "test" else 2])
  splits = build_and_read("docvqa", raw, tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 2, "validation": 2, "test": 2}
  ex = splits["train"][0]
  assert decode(ex["answers"]) == ["1/2/93", "Jan 2 1993"] and decode(ex["question_types"]) == ["form"]
  assert ex["question_id"] == 50 and ex["doc_id"] == 5 and ex["image_filename"] == b"documents/dtrain0.png"
  for ex in splits["test"]:
    assert_image(ex)
    assert len(ex["answers"]) == 0
  assert (splits["test"][0]["image"] == 7).all()  # Grayscale is repeated over three channels.
  assert (splits["train"][0]["image"] == 255).all()  # Bilevel white is 255, not 1.


def _gqa_questions(prefix: str, n: int, balanced: bool = True) -> dict:
  return {f"0{prefix}{i}": {"imageId": f"n{i % 2}", "question": "is it red?", "answer": "no",
                            "fullAnswer": "No, it is blue.", "isBalanced": balanced,
                            "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
                            "groups": {"global": None, "local": "10c-red"}} for i in range(n)}


def test_gqa_balanced(tmp_path):
  raw = tmp_path / "raw"
  for split in ("train", "val", "testdev"):
    write_json(raw / "questions1.2" / f"{split}_balanced_questions.json", _gqa_questions(split, 2))
  for i in range(2):
    write_image(raw / "images" / f"n{i}.jpg")
  splits = build_and_read("gqa", raw, tmp_path, config="balanced")
  assert {k: len(v) for k, v in splits.items()} == {"train_balanced": 2, "val_balanced": 2, "testdev_balanced": 2}
  ex = splits["val_balanced"][1]
  assert ex["question_id"] == b"0val1" and ex["image_id"] == b"n1" and decode(ex["answers"]) == ["no"]
  assert ex["full_answer"] == b"No, it is blue." and ex["is_balanced"]
  assert ex["types"]["detailed"] == b"verifyAttr" and ex["groups"]["global"] == b""
  assert_image(ex)


def test_gqa_all_reads_the_ten_train_files(tmp_path):
  raw = tmp_path / "raw"
  for k in range(2):  # The release has train_all_questions_0.json ... _9.json.
    write_json(raw / "train_all_questions" / f"train_all_questions_{k}.json", _gqa_questions(f"t{k}-", 3, False))
  for split in ("val", "testdev"):
    write_json(raw / f"{split}_all_questions.json", _gqa_questions(split, 4, False))
  for i in range(2):
    write_image(raw / "images" / f"n{i}.jpg")
  splits = build_and_read("gqa", raw, tmp_path, config="all")
  assert {k: len(v) for k, v in splits.items()} == {"train_all": 6, "val_all": 4, "testdev_all": 4}
  assert {ex["question_id"] for ex in splits["train_all"]} >= {b"0t0-0", b"0t1-2"}
  assert not splits["train_all"][0]["is_balanced"]


@pytest.mark.parametrize("config", ["human", "augmented"])
def test_chartqa_configs_under_the_release_top_folder(tmp_path, config):
  raw = tmp_path / "raw"
  top = raw / "ChartQA Dataset"
  for folder in ("train", "val", "test"):
    rows = [{"imgname": f"{folder}{i}.png", "query": f"{config} value in {2000 + i}?", "label": f"{i}.5"}
            for i in range(folder == "test" and 3 or 2)]
    write_json(top / folder / f"{folder}_{config}.json", rows)
    for row in rows:
      write_image(top / folder / "png" / row["imgname"], "PNG", mode="RGBA")
  splits = build_and_read("chartqa", raw, tmp_path, config=config)
  assert {k: len(v) for k, v in splits.items()} == {"train": 2, "validation": 2, "test": 3}
  ex = splits["test"][2]
  assert ex["question"] == f"{config} value in 2002?".encode() and ex["answer"] == b"2.5"
  assert decode(ex["answers"]) == ["2.5"] and ex["question_id"] == 2 and ex["image_filename"] == b"test2.png"
  assert_image(ex)  # RGBA composited over white.


def test_ai2d_splits_by_test_ids_and_letters_abc_questions(tmp_path):
  raw = tmp_path / "raw"
  (raw / "ai2d_test_ids.csv").parent.mkdir(parents=True)
  (raw / "ai2d_test_ids.csv").write_text("1\n")
  for image_id in ("0", "1"):
    name = f"{image_id}.png"
    write_image(raw / "images" / name, "PNG", color=(90, 90, 90))
    write_json(raw / "questions" / f"{name}.json", {"imageName": name, "questions": {
        "which stage is the egg?": {"abcLabel": False, "answerTexts": ["egg", "larva", "pupa", "adult"],
                                    "correctAnswer": 0, "questionId": f"{name}-0"},
        "which label shows the larva?": {"abcLabel": True, "answerTexts": ["A", "B", "C", "D"],
                                         "correctAnswer": 2, "questionId": f"{name}-1"}}})
    write_json(raw / "annotations" / f"{name}.json", {"text": {
        "T1": {"id": "T1", "rectangle": [[1, 1], [7, 5]], "replacementText": "C", "value": "larva"}}})
  splits = build_and_read("ai2d", raw, tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 2, "test": 2}
  plain, abc = splits["test"]
  assert plain["image_id"] == b"1" and plain["question_id"] == b"1.png-0" and not plain["abc_label"]
  assert decode(plain["choices"]) == ["egg", "larva", "pupa", "adult"] and plain["answer_index"] == 0
  assert plain["answer"] == b"egg" and decode(plain["answers"]) == ["egg"]
  assert abc["abc_label"] and abc["answer"] == b"C" and abc["answer_index"] == 2
  assert_image(plain), assert_image(abc)
  assert (plain["image"] == 90).all()  # The released diagram.
  assert (abc["image"][1:6, 1:8] != 90).all(axis=-1).all()  # Its text box blanked and lettered.
  assert (abc["image"][0] == 90).all()
  [row] = default_task_rows("multiple_choice", "ai2d", tmp_path, abc)
  assert row.prefix == "answer en  which label shows the larva? choose from: A \t B \t C \t D"
  assert (row.id, row.references, row.fields["correct_index"]) == ("1.png-1", ("C",), 2)


def test_science_qa_keeps_problems_with_images(tmp_path):
  raw = tmp_path / "raw"
  problems = {}
  for pid, split, image in [(1, "train", "image.png"), (2, "train", None), (3, "val", "image.png"),
                            (4, "test", "image.png"), (5, "test", "image.png")]:
    problems[str(pid)] = {"question": f"Which is a magnet {pid}?", "choices": ["iron", "wood", "glass"],
                          "answer": pid % 3, "hint": "" if pid == 4 else "Look at the picture.",
                          "image": image, "task": "closed choice", "grade": "grade3",
                          "subject": "natural science", "topic": "physics", "category": "Magnets",
                          "skill": "Identify magnets", "lecture": "Magnets attract iron.",
                          "solution": "Iron is attracted.", "split": split}
    if image:
      write_image(raw / "images" / split / str(pid) / image, "PNG")
  write_json(raw / "problems.json", problems)
  splits = build_and_read("science_qa", raw, tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 1, "validation": 1, "test": 2}
  ex = splits["test"][1]
  assert ex["question_id"] == 5 and decode(ex["choices"]) == ["iron", "wood", "glass"]
  assert ex["answer_index"] == 2 and ex["answer"] == b"glass" and decode(ex["answers"]) == ["glass"]
  assert ex["hint"] == b"Look at the picture." and splits["test"][0]["hint"] == b""
  assert ex["lecture"] == b"Magnets attract iron." and ex["solution"] == b"Iron is attracted."
  assert ex["subject"] == b"natural science" and ex["skill"] == b"Identify magnets"
  assert_image(ex)
  [row] = default_task_rows("science_qa", "science_qa", tmp_path, ex)
  assert row.prefix == ("Question: Which is a magnet 5?\nContext: Look at the picture.\n"
                        "Options: (A) iron, (B) wood, (C) glass\nAnswer:")
  assert (row.id, row.references) == (5, ("The answer is C.",))


def test_tallyqa_counts_and_issimple(tmp_path):
  raw = tmp_path / "raw"
  write_image(raw / "VG_100K" / "2.jpg")
  write_image(raw / "train2014" / "COCO_train2014_000000000009.jpg")
  write_json(raw / "train.json", [
      {"image": "VG_100K/2.jpg", "answer": 3, "data_source": "imported_genome", "question": "How many dogs?",
       "image_id": 2, "question_id": 20},
      {"image": "train2014/COCO_train2014_000000000009.jpg", "answer": 0, "data_source": "imported_vqa",
       "question": "How many cats?", "image_id": 9, "question_id": 90}])
  write_json(raw / "test.json", [
      {"image": "VG_100K/2.jpg", "answer": 1, "data_source": "amt", "question": "How many red cars?",
       "image_id": 2, "question_id": 21, "issimple": False},
      {"image": "VG_100K/2.jpg", "answer": 2, "data_source": "amt", "question": "How many cars?",
       "image_id": 2, "question_id": 22, "issimple": True}])
  splits = build_and_read("tallyqa", raw, tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"train": 2, "test": 2}
  train, test = splits["train"], splits["test"]
  assert [ex["answer"] for ex in train] == [3, 0] and [ex["issimple"] for ex in train] == [-1, -1]
  assert [ex["issimple"] for ex in test] == [0, 1] and decode(test[1]["answers"]) == ["2"]
  assert train[1]["image_id"] == 9 and train[1]["question_id"] == 90 and train[1]["data_source"] == b"imported_vqa"
  assert_image(train[1])


def test_nocaps_captions_and_domain(tmp_path):
  raw = tmp_path / "raw"
  images = [{"id": i, "file_name": f"oi{i}.jpg", "open_images_id": f"oi{i}", "height": H, "width": W,
             "domain": ("in-domain", "out-domain")[i], "coco_url": f"https://x/oi{i}.jpg"} for i in range(2)]
  write_json(raw / "nocaps_val_4500_captions.json", {"images": images, "annotations": [
      {"image_id": i, "id": 10 * i + k, "caption": f"a photo {i} {k}"} for i in range(2) for k in range(10)]})
  write_json(raw / "nocaps_test_image_info.json", {"images": images[:1]})
  for image in images:
    write_image(raw / "validation" / image["file_name"])
  write_image(raw / "test" / "oi0.jpg")
  splits = build_and_read("nocaps", raw, tmp_path)
  assert {k: len(v) for k, v in splits.items()} == {"validation": 2, "test": 1}
  ex = splits["validation"][1]
  assert ex["image/id"] == 1 and ex["domain"] == b"out-domain" and ex["image/open_images_id"] == b"oi1"
  assert decode(ex["captions"]["text"]) == [f"a photo 1 {k}" for k in range(10)]
  assert list(ex["captions"]["id"]) == list(range(10, 20))
  assert len(splits["test"][0]["captions"]["text"]) == 0
  assert_image(ex)


# --- the build command ---------------------------------------------------------------------------


def test_missing_annotation_file_is_one_line_and_writes_nothing(tmp_path, capsys):
  raw = tmp_path / "raw"
  write_vqav2(raw)
  (raw / "v2_mscoco_val2014_annotations.json").unlink()
  code = main(["--dataset", "vqav2", "--raw_dir", str(raw), "--data_dir", str(tmp_path / "tfds")])
  err = capsys.readouterr().err
  assert code == 2 and err.count("\n") == 1
  assert err == f"error: vqav2: expected v2_mscoco_val2014_annotations.json in {raw}\n"
  assert os.listdir(tmp_path / "tfds") == []


def test_missing_image_mid_build_leaves_no_half_built_dataset(tmp_path):
  raw = tmp_path / "raw"
  write_vqav2(raw)
  (raw / "train2014" / "COCO_train2014_000000000008.jpg").unlink()
  with pytest.raises(BuildError, match=r"^vqav2: expected image train2014/COCO_train2014_000000000008.jpg in "):
    build_dataset("vqav2", raw, tmp_path / "tfds")
  assert os.listdir(tmp_path / "tfds") == []


def test_unreadable_image_or_json_is_one_line_and_writes_nothing(tmp_path):
  raw = tmp_path / "raw"
  write_vqav2(raw)
  (raw / "val2014" / "COCO_val2014_000000000007.jpg").write_bytes(b"not a jpeg")
  with pytest.raises(BuildError, match=r"^vqav2: image val2014/COCO_val2014_000000000007.jpg in .* is not an image"):
    build_dataset("vqav2", raw, tmp_path / "tfds")
  (raw / "v2_mscoco_train2014_annotations.json").write_text('{"annotations": [')
  with pytest.raises(BuildError, match=r"^vqav2: .*v2_mscoco_train2014_annotations.json is not valid JSON"):
    build_dataset("vqav2", raw, tmp_path / "tfds")
  assert os.listdir(tmp_path / "tfds") == []


def test_vqav2_test_questions_without_their_image_are_skipped_and_counted(tmp_path, caplog):
  raw = tmp_path / "raw"
  write_vqav2(raw)
  questions = [{"image_id": 7, "question": "kept?", "question_id": 1},
               {"image_id": 404, "question": "no image?", "question_id": 2}]
  write_json(raw / "v2_OpenEnded_mscoco_test2015_questions.json", {"questions": questions})
  splits = build_and_read("vqav2", raw, tmp_path)
  assert [ex["question"] for ex in splits["test"]] == [b"kept?"]
  assert "skipped 1 questions whose image is missing (first: test2015/COCO_test2015_000000000404.jpg" in caplog.text


def test_existing_build_needs_overwrite(tmp_path):
  raw = tmp_path / "raw"
  write_vqav2(raw)
  first = build_dataset("vqav2", raw, tmp_path / "tfds")
  with pytest.raises(BuildError, match="already built.*--overwrite"):
    build_dataset("vqav2", raw, tmp_path / "tfds")
  write_json(raw / "v2_OpenEnded_mscoco_test-dev2015_questions.json",
             {"questions": [{"image_id": 7, "question": "rebuilt?", "question_id": 1}]})
  assert build_dataset("vqav2", raw, tmp_path / "tfds", overwrite=True) == first
  rebuilt = tfds.data_source("vqav2", split="test_dev", data_dir=tmp_path / "tfds")
  assert len(rebuilt) == 1 and rebuilt[0]["question"] == b"rebuilt?"
  assert sorted(os.listdir(tmp_path / "tfds")) == ["vqav2"]  # No staging folder left.


def test_unknown_dataset_or_config_lists_the_choices(tmp_path):
  with pytest.raises(BuildError, match="unknown dataset 'vqa3'; choose one of ai2d, chartqa"):
    build_dataset("vqa3", tmp_path, tmp_path / "tfds")
  with pytest.raises(BuildError, match="no config 'robots'; choose one of human, augmented"):
    build_dataset("chartqa", tmp_path, tmp_path / "tfds", config="robots")
  with pytest.raises(BuildError, match="raw folder .* does not exist"):
    build_dataset("tallyqa", tmp_path / "nowhere", tmp_path / "tfds")


def test_command_line_missing_file(tmp_path):
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  result = subprocess.run(
      [sys.executable, "-m", "paligemma_jax.data.build_dataset", "--dataset", "tallyqa",
       "--raw_dir", str(tmp_path), "--data_dir", str(tmp_path / "tfds")],
      capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == f"error: tallyqa: expected train.json in {tmp_path}"


def test_grain_reads_a_built_split_without_tensorflow(tmp_path):
  pytest.importorskip("grain")
  raw = tmp_path / "raw"
  write_vqav2(raw)
  build_dataset("vqav2", raw, tmp_path / "tfds")
  script = f"""
import sys
import grain
import tensorflow_datasets as tfds
source = tfds.data_source("vqav2", split="train", data_dir={str(tmp_path / "tfds")!r})
batches = list(grain.MapDataset.source(source).shuffle(seed=0)
               .map(lambda ex: {{"image": ex["image"], "question_id": ex["question_id"]}}).batch(3))
assert len(batches) == 1 and sorted(batches[0]["question_id"]) == [700, 701, 702], batches
assert batches[0]["image"].shape == (3, {H}, {W}, 3), batches[0]["image"].shape
assert "tensorflow" not in sys.modules, "TensorFlow was imported"
print("ok")
"""
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
  assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
