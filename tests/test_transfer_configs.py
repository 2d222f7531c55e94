"""configs/transfers/: every config crosses the trainer's and the evaluator's config boundaries,
publishes exactly the reference's resolutions, carries the reference's numbers, and takes
--config.KEY overrides. Fast: no data is read and nothing is trained.

The trainer's boundary is `parse_train_config` + `validate` (tokenizer file, init folder and JSONL
files must exist: pointed at tmp dummies here; TFDS datasets are not checked there); it parses the
`evals` section with `evaluation.parse_evals` and `model.llm_dropout` into the Gemma config.
"""

from __future__ import annotations

import copy
import pathlib
import runpy
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from paligemma_jax.data.tasks import make_task
from paligemma_jax.evaluation.eval_config import parse_eval_config
from paligemma_jax.evaluation.evaluators import get_evaluator
from paligemma_jax.training import config as train_config

REPO = pathlib.Path(__file__).resolve().parents[1]
TRANSFERS = REPO / "configs" / "transfers"
if str(REPO) not in sys.path:  # the configs import configs.transfers.common, as train.py does
  sys.path.insert(0, str(REPO))

# Published resolutions (training_and_tasks.md §3, "res" column) and the default res (its "cfg",
# where published).
PUBLISHED = {
    "cococap": (224, 448), "textcaps": (224, 448), "screen2words": (224, 448),
    "scicap": (224, 448), "widgetcap": (224, 448), "vqav2": (224, 448), "okvqa": (224, 448),
    "aokvqa_mc": (224, 448), "aokvqa_da": (224, 448), "gqa": (224, 448), "nlvr2": (224, 448),
    "ai2d": (224, 448), "scienceqa": (224, 448), "rsvqa_lr": (224, 448), "rsvqa_hr": (224, 448),
    "chartqa": (224, 448), "vizwizvqa": (224, 448), "tallyqa": (224, 448),
    "ocrvqa": (224, 448, 896), "textvqa": (224, 448, 896), "docvqa": (224, 448, 896),
    "infovqa": (224, 448, 896), "stvqa": (224, 448, 896), "refcoco_seg": (224, 448, 896),
    "forkme": (224,),
}
DEFAULT_RES = {"scienceqa": 448, "docvqa": 896, "infovqa": 896, "stvqa": 896, "refcoco_seg": 448}
EVAL_ONLY = {"pope": (224, 448)}
HELPERS = {"common"}
LORA_EXAMPLES = {"vqav2_lora": "vqav2"}  # a published task trained with adapters instead

# (config, res) -> the reference's §3 numbers: batch, epochs, lr, wd, text_len, label smoothing,
# LLM dropout, frozen ViT.
EXPECTED = [
    ("cococap", 224, 256, 5, 1e-5, 1e-6, 32, 0.0, 0.0, False),
    ("cococap", 448, 256, 5, 1e-5, 1e-6, 32, 0.0, 0.0, False),
    ("screen2words", 224, 256, 10, 1e-5, 0.0, 24, 0.2, 0.3, False),
    ("scicap", 448, 256, 80, 3e-5, 0.0, 96, 0.1, 0.1, False),
    ("widgetcap", 224, 64, 4, 3e-6, 3e-7, 32, 0.1, 0.1, False),
    ("vqav2", 224, 256, 10, 1e-5, 1e-6, 32, 0.0, 0.0, False),
    ("vqav2", 448, 256, 10, 1e-5, 0.0, 32, 0.0, 0.0, False),
    ("okvqa", 224, 128, 10, 5e-6, 0.0, 32, 0.0, 0.0, False),
    ("aokvqa_mc", 448, 128, 15, 5e-6, 0.0, 128, 0.0, 0.0, False),
    ("gqa", 224, 256, 1, 1e-5, 0.0, 32, 0.0, 0.0, False),
    ("gqa", 448, 256, 1, 1e-5, 0.0, 32, 0.0, 0.0, True),
    ("nlvr2", 224, 256, 3, 1e-5, 1e-6, 64, 0.0, 0.0, False),
    ("nlvr2", 448, 256, 10, 3e-6, 3e-7, 64, 0.0, 0.0, False),
    ("scienceqa", 448, 128, 20, 1e-5, 0.0, 512, 0.0, 0.0, True),
    ("rsvqa_lr", 224, 256, 3, 3e-6, 0.0, 32, 0.2, 0.0, False),
    ("chartqa", 448, 256, 30, 1e-5, 1e-6, 48, 0.2, 0.1, False),
    ("tallyqa", 224, 256, 2, 1e-5, 0.0, 32, 0.0, 0.0, False),
    ("tallyqa", 448, 256, 2, 1e-5, 1e-6, 32, 0.0, 0.0, False),
    ("ocrvqa", 448, 128, 3, 3e-6, 0.0, 32, 0.0, 0.0, False),
    ("ocrvqa", 896, 128, 3, 1e-5, 0.0, 32, 0.0, 0.0, False),
    ("textvqa", 224, 256, 5, 3e-6, 0.0, 32, 0.0, 0.0, False),
    ("textvqa", 448, 256, 10, 3e-6, 3e-7, 32, 0.0, 0.0, False),
    ("textvqa", 896, 256, 10, 3e-6, 0.0, 32, 0.0, 0.0, False),
    ("docvqa", 896, 256, 10, 1e-5, 1e-6, 32, 0.0, 0.0, False),
    ("infovqa", 224, 256, 3, 1e-5, 1e-6, 48, 0.4, 0.0, False),
    ("infovqa", 896, 32, 3, 3e-6, 3e-7, 48, 0.4, 0.0, False),
    ("stvqa", 448, 128, 3, 1e-5, 1e-6, 48, 0.1, 0.0, False),
    ("refcoco_seg", 224, 256, 100, 3e-5, 0.0, 48, 0.3, 0.1, False),
    ("refcoco_seg", 896, 64, 100, 1e-5, 0.0, 48, 0.3, 0.0, False),
    ("forkme", 224, 32, 15, 1e-5, 3e-7, 128, 0.0, 0.0, False),
]

# config -> {eval name: (evaluator, sampler, num_beams)} (evaluators.md §12; beam only where the
# reference says so).
EXPECTED_EVALS = {
    "cococap": {"cococap_val": ("cider", "beam", 2), "nocaps_val": ("cider", "beam", 2)},
    "textcaps": {"textcaps_val": ("cider", "beam", 3)},
    "scicap": {"scicap_val": ("cider", "greedy", 1), "scicap_val_bleu": ("bleu", "greedy", 1)},
    "vqav2": {"vqav2_minival": ("vqav2", "greedy", 1)},
    "textvqa": {"textvqa_val": ("vqav2", "greedy", 1)},
    "chartqa": {"chartqa_human_test": ("chartqa", "greedy", 1),
                "chartqa_augmented_test": ("chartqa", "greedy", 1)},
    "docvqa": {"docvqa_val": ("vqa", "greedy", 1)},
    "tallyqa": {"tallyqa_test": ("tallyqa", "greedy", 1)},
    "scienceqa": {"scienceqa_test": ("scienceqa", "greedy", 1)},
    "rsvqa_hr": {"rsvqa_hr_test": ("rsvqa", "greedy", 1), "rsvqa_hr_test2": ("rsvqa", "greedy", 1)},
    "refcoco_seg": {"refcoco_val": ("refcoco_seg", "greedy", 1),
                    "refcocoplus_val": ("refcoco_seg", "greedy", 1),
                    "refcocog_val": ("refcoco_seg", "greedy", 1)},
}


def get_config(name: str, arg: str | None = None):
  return runpy.run_path(str(TRANSFERS / f"{name}.py"))["get_config"](arg)


def load_with_flags(argv: list[str]):
  """The config as train.py's `--config` flag builds it (config_flags, overrides included)."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


def parse_train(config, tmp_path: pathlib.Path, num_devices: int = 8):
  """(TrainConfig, EvalSpecs) through the trainer's boundary, with dummy files for its checks."""
  values = copy.deepcopy(config.to_dict())
  tokenizer = tmp_path / "tokenizer.model"
  tokenizer.write_bytes(b"")
  (tmp_path / "pt").mkdir(exist_ok=True)
  values.update(tokenizer=str(tokenizer), init=str(tmp_path / "pt"))
  if "vqvae" in values["input"]:  # refexp_segment's mask encoder (validate() checks the file)
    (tmp_path / "vae.npz").write_bytes(b"")
    values["input"]["vqvae"] = str(tmp_path / "vae.npz")
  for member in values["input"]["members"]:
    if member["jsonl"]:  # validate() checks that JSONL members exist
      member["jsonl"] = str(tmp_path / pathlib.Path(member["jsonl"]).name)
      pathlib.Path(member["jsonl"]).write_text("")
  cfg = train_config.parse_train_config(values)
  train_config.validate(cfg, num_devices)
  return cfg, cfg.evals


def test_the_table_covers_every_file():
  names = {p.stem for p in TRANSFERS.glob("*.py")} - HELPERS
  assert names == set(PUBLISHED) | set(EVAL_ONLY) | set(LORA_EXAMPLES)
  assert len(set(PUBLISHED) - {"forkme"}) >= 20


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_every_published_res_parses(name, tmp_path):
  for res in PUBLISHED[name]:
    config = get_config(name, f"res={res}")
    cfg, evals = parse_train(config, tmp_path)
    assert cfg.model.vision["image_size"] == res
    assert cfg.from_checkpoint and cfg.epochs > 0 and cfg.total_steps == 0
    assert cfg.optimizer.name == "adam" and cfg.optimizer.b2 == 0.999
    assert cfg.optimizer.grad_clip_norm == 1.0
    assert (cfg.optimizer.schedule.name, cfg.optimizer.schedule.warmup_percent) == ("cosine",
                                                                                   0.05)
    assert evals and all(e.text_len == cfg.input.text_len for e in evals)
    assert all(e.decoding.max_decode_len == cfg.input.text_len for e in evals)
    for member in [*cfg.input.members, *(e.data for e in evals)]:
      make_task(*member.task_spec())  # the task options are the task's
    for spec in evals:
      fields = set(spec.data.task_options.get("field_keys", ())) | {"box_yxyx", "mask"}
      for option in get_evaluator(spec.evaluator).field_options:
        assert spec.options[option] in fields, (name, spec.name, option)
  default = get_config(name)
  assert default.model.vision.image_size == DEFAULT_RES.get(name, 224)


@pytest.mark.parametrize("name", sorted(LORA_EXAMPLES))
def test_lora_examples_parse_with_their_task_and_adapters(name, tmp_path):
  task = LORA_EXAMPLES[name]
  for res in PUBLISHED[task]:
    cfg, evals = parse_train(get_config(name, f"res={res}"), tmp_path)
    full, full_evals = parse_train(get_config(task, f"res={res}"), tmp_path)
    assert cfg.lora is not None and cfg.lora.quantize == "none" and cfg.lora.rank > 0
    assert cfg.lora.lora_config("").targets_path("llm/layers/attn/q/w")
    assert cfg.input == full.input and evals == full_evals
    assert cfg.optimizer.lr > full.optimizer.lr
  qlora = get_config(name)
  qlora.lora.quantize = "int4"
  assert parse_train(qlora, tmp_path)[0].lora.quantization().kind == "int4"


@pytest.mark.parametrize("name", sorted(PUBLISHED) + sorted(EVAL_ONLY))
def test_unpublished_res_fails_with_one_line(name):
  published = PUBLISHED.get(name) or EVAL_ONLY[name]
  for res in sorted({224, 448, 896, 512} - set(published)):
    with pytest.raises(ValueError, match=f"{res} has no published setting") as e:
      get_config(name, f"res={res}")
    assert "\n" not in str(e.value)
    assert all(f"res={r}" in str(e.value) for r in published)
  with pytest.raises(ValueError, match="bad config argument") as e:
    get_config(name, "resolution=224")
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("row", EXPECTED, ids=lambda r: f"{r[0]}-{r[1]}")
def test_reference_numbers(row, tmp_path):
  name, res, batch, epochs, lr, wd, text_len, ls, dropout, frozen = row
  config = get_config(name, f"res={res}")
  assert config.model.llm_dropout == dropout
  cfg, _ = parse_train(config, tmp_path)
  assert (cfg.input.batch_size, cfg.epochs, cfg.optimizer.lr, cfg.optimizer.wd) == (
      batch, epochs, lr, wd)
  assert (cfg.input.text_len, cfg.label_smoothing) == (text_len, ls)
  assert bool(cfg.optimizer.freeze) == frozen
  if frozen:  # big_vision's "img/.*": the SigLIP tower and its head (our projector)
    assert cfg.optimizer.freeze == ("vision/.*", "projector/.*")


@pytest.mark.parametrize("name", sorted(EXPECTED_EVALS))
def test_evaluators_and_decoding(name, tmp_path):
  _, evals = parse_train(get_config(name), tmp_path)
  got = {e.name: (e.evaluator, e.decoding.sampler, e.decoding.num_beams) for e in evals
         if e.evaluator != "perplexity"}
  assert got == EXPECTED_EVALS[name]


def test_lower_casing_where_the_reference_lower_cases(tmp_path):
  for name in ("docvqa", "infovqa", "stvqa", "ocrvqa"):
    _, evals = parse_train(get_config(name), tmp_path)
    assert evals[0].options["to_lower"] is True, name
  for name in ("infovqa", "stvqa", "rsvqa_lr"):
    cfg, _ = parse_train(get_config(name), tmp_path)
    assert cfg.input.members[0].task_options["lower_references"] is True, name


# Splits of the TFDS catalogue's datasets the transfers read (the project's builders list theirs).
CATALOGUE_SPLITS = {
    ("coco_captions", ""): ("train", "val", "test", "restval"),
    ("ref_coco", "refcoco_unc"): ("train", "validation", "testA", "testB"),
    ("ref_coco", "refcocoplus_unc"): ("train", "validation", "testA", "testB"),
    ("ref_coco", "refcocog_umd"): ("train", "validation", "test"),
}


def test_tfds_members_name_real_splits_and_fields(tmp_path):
  """Every TFDS member's dataset, config and split exist (builders constructed, nothing read)
  and has every field its task reads (the builder's declared features)."""
  import tensorflow_datasets as tfds
  from paligemma_jax.data.builders import BUILDERS
  from paligemma_jax.data.task_base import check_fields
  from paligemma_jax.data.tfds_input import feature_tree

  members = {}
  for name in PUBLISHED:
    config = get_config(name)
    for m in [*config.input.members, *(e["data"] for e in config.evals.values())]:
      if m["name"]:
        members[(m["name"], m["config"], m["split"], m["task"], repr(m["task_options"]))] = m
  checked = set()
  for (dataset, config_name, split, *_), m in sorted(members.items()):
    data_dir = str(tmp_path / "tfds")
    if dataset in BUILDERS:
      builder = BUILDERS[dataset](data_dir=data_dir, **({"config": config_name} if config_name
                                                         else {}))
      splits = builder.splits()
    else:
      builder = tfds.builder(f"{dataset}/{config_name}" if config_name else dataset,
                             data_dir=data_dir)
      splits = CATALOGUE_SPLITS[(dataset, config_name)]
    for part in split.split("+"):
      assert part.split("[")[0] in splits, (dataset, config_name, split, splits)
    task = make_task(m["task"], m["task_options"])
    check_fields(task, m["task"], feature_tree(builder.info.features), dataset)
    checked.add(dataset)
  assert checked == {"coco_captions", "nocaps", "vqav2", "okvqa", "gqa", "ai2d", "science_qa",
                     "chartqa", "tallyqa", "textvqa", "docvqa", "ref_coco"}


# One JSONL row per config in the layout its docstring documents (image already decoded), and the
# prompt / first reference it must give.
_CAPTION_ROW = {"image_id": "x1", "captions": ["A Caption.", "another"]}
JSONL_ROWS = {
    "textcaps": (_CAPTION_ROW, "caption en", "a caption."),  # lower-cased for training
    "screen2words": (_CAPTION_ROW, "caption en", "A Caption."),
    "scicap": (_CAPTION_ROW, "caption en", "A Caption."),
    "widgetcap": (_CAPTION_ROW, "caption en", "A Caption."),
    "aokvqa_mc": ({"question_id": "q", "question": "What?", "choices": ["a", "b"],
                   "correct_choice_idx": 1, "direct_answers": ["b"] * 10},
                  "answer en  What? choose from: a \t b", "b"),
    "aokvqa_da": ({"question_id": "q", "question": "What?", "choices": ["a", "b"],
                   "correct_choice_idx": 1, "direct_answers": ["b"] * 10}, "answer en What?", "b"),
    "rsvqa_lr": ({"question_id": 1, "question": "Is there a road?", "answers": ["Yes"],
                  "question_type": "presence"}, "answer en Is there a road?", "yes"),
    "rsvqa_hr": ({"question_id": 1, "question": "Is there a road?", "answers": ["Yes"],
                  "question_type": "presence"}, "answer en Is there a road?", "yes"),
    "vizwizvqa": ({"question_id": "v", "question": "What is it?", "answers": ["basil"] * 10},
                  "answer en What is it?", "basil"),
    "ocrvqa": ({"question_id": "o", "question": "Who wrote this book?", "answer": "Jane Doe"},
               "answer en Who wrote this book?", "Jane Doe"),
    "infovqa": ({"questionId": 6, "question": "How many?", "answers": ["Six"]},
                "answer en How many?", "six"),
    "stvqa": ({"question_id": 6, "question": "What brand?", "answers": ["Nike"]},
              "answer en What brand?", "nike"),
}


@pytest.mark.parametrize("name", sorted(JSONL_ROWS))
def test_jsonl_layouts_make_rows(name, tmp_path):
  example, prefix, reference = JSONL_ROWS[name]
  config = get_config(name)
  image = np.zeros((4, 4, 3), np.uint8)
  for member in [*config.input.members, *(e["data"] for e in config.evals.values())]:
    assert member["jsonl"] and not member["name"]
    task = make_task(member["task"], member["task_options"])
    (row,) = task.rows({"image": image, **example}, 0)
    assert row.prefix == prefix and row.error is None
  train_task = make_task(config.input.members[0]["task"], config.input.members[0]["task_options"])
  (row,) = train_task.rows({"image": image, **example}, 0)
  assert row.references[0] == reference
  for spec in parse_train(config, tmp_path)[1]:  # the evaluator can score the eval rows
    task = make_task(*spec.data.task_spec())
    (row,) = task.rows({"image": image, **example}, 0)
    probe = {**row.fields, "references": list(row.references), "prediction": "",
             "log_likelihood": 0.0, "num_tokens": 1}
    assert get_evaluator(spec.evaluator).check_row(probe, spec.options) is None, spec.name


def test_chartqa_is_the_sized_mixture(tmp_path):
  cfg, _ = parse_train(get_config("chartqa"), tmp_path)
  members = {m.config: m for m in cfg.input.members}
  assert {k: m.weight for k, m in members.items()} == {"human": 7398.0, "augmented": 20901.0}
  assert all(m.name == "chartqa" and m.split == "train" for m in members.values())
  assert members["human"].task == "question_only"


def test_pope_is_an_eval_config():
  config = get_config("pope", "res=448")
  config.checkpoint, config.tokenizer, config.output_dir = "ckpt", "tok.model", "out"
  cfg = parse_eval_config(config)
  assert sorted(e.name for e in cfg.evals) == ["pope_adversarial", "pope_popular", "pope_random"]
  assert {(e.evaluator, e.decoding.sampler, e.text_len) for e in cfg.evals} == {
      ("pope", "greedy", 48)}
  task = make_task(*cfg.evals[0].data.task_spec())
  (row,) = task.rows({"image": np.zeros((4, 4, 3), np.uint8), "question_id": 1,
                      "question": "Is there a snowboard in the image?", "answer": "yes"}, 0)
  assert (row.prefix, row.references) == ("Is there a snowboard in the image?", ("yes",))


def test_forkme_reads_prefix_and_suffix_jsonl(tmp_path):
  config = get_config("forkme", f"jsonl_dir={tmp_path}")
  assert config.input.members[0]["jsonl"] == f"{tmp_path}/train.jsonl"
  cfg, evals = parse_train(config, tmp_path)
  task = make_task(*cfg.input.members[0].task_spec())
  image = np.zeros((4, 4, 3), np.uint8)
  (row,) = task.rows({"image": image, "prefix": "caption en", "suffix": "a bus"}, 0)
  assert (row.prefix, row.references, len(row.images)) == ("caption en", ("a bus",), 1)
  assert {e.evaluator for e in evals} == {"perplexity", "exact_match"}


def test_nlvr2_rows_carry_both_images(tmp_path):
  cfg, _ = parse_train(get_config("nlvr2"), tmp_path)
  assert cfg.input.num_images == 2
  task = make_task(*cfg.input.members[0].task_spec())
  image = np.zeros((4, 4, 3), np.uint8)
  (row,) = task.rows({"image": [image, image], "identifier": "dev-1", "sentence": "Two dogs.",
                      "label": "True"}, 0)
  assert (row.prefix, row.references, len(row.images)) == ("answer en Two dogs.", ("True",), 2)


def test_data_dir_argument_reaches_every_tfds_member():
  config = get_config("vqav2", "res=448,data_dir=/data/tfds")
  members = [*config.input.members, *(e.data for e in config.evals.values())]
  assert {m["data_dir"] for m in members} == {"/data/tfds"}
  assert {m["data_dir"] for m in get_config("vqav2").input.members} == {""}  # TFDS's default


def test_config_flag_overrides(tmp_path):
  argv = ["train.py", f"--config={TRANSFERS / 'vqav2.py'}:res=448",
          "--config.optimizer.lr=3e-6", "--config.epochs=2",
          "--config.input.members[0].data_dir=/data/tfds",
          "--config.evals.vqav2_minival.batch_size=64", "--config.model.remat=full"]
  config = load_with_flags(argv)
  cfg, evals = parse_train(config, tmp_path)
  assert (cfg.optimizer.lr, cfg.epochs, cfg.model.remat) == (3e-6, 2.0, "full")
  assert cfg.model.vision["image_size"] == 448
  assert cfg.input.members[0].data_dir == "/data/tfds"
  assert {e.name: e.batch_size for e in evals}["vqav2_minival"] == 64


def test_unknown_override_and_unpublished_res_through_the_flag():
  with pytest.raises((flags.Error, AttributeError, KeyError), match="learning_rate"):
    load_with_flags(["train.py", f"--config={TRANSFERS / 'vqav2.py'}",
                     "--config.optimizer.learning_rate=3e-6"])
  with pytest.raises(flags.IllegalFlagValueError) as e:
    load_with_flags(["train.py", f"--config={TRANSFERS / 'vqav2.py'}:res=896"])
  # config_flags wraps get_config's error in its traceback; its last line is the message.
  assert str(e.value).strip().splitlines()[-1] == (
      "ValueError: vqav2: res=896 has no published setting; use one of res=224, res=448")


# big_vision's training pp resizes with antialias=True for these (processor.md §3).
ANTIALIASED = {"ai2d", "aokvqa_da", "aokvqa_mc", "chartqa", "docvqa", "infovqa", "ocrvqa", "okvqa",
               "rsvqa_hr", "rsvqa_lr", "stvqa", "tallyqa", "textvqa", "vizwizvqa", "vqav2",
               "widgetcap", "forkme"}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_antialias_where_big_vision_trains_with_it(name, tmp_path):
  cfg, _ = parse_train(get_config(name), tmp_path)
  assert cfg.image_method == "big_vision"
  assert cfg.image_antialias == (name in ANTIALIASED)


def test_antialias_needs_the_big_vision_method(tmp_path):
  config = get_config("vqav2")
  config.image_method = "hf"
  with pytest.raises(ValueError, match=r"^config.image_antialias applies to image_method "
                                       r"'big_vision' only .*--config.image_method=big_vision"):
    parse_train(config, tmp_path)


# big_vision's eval pps for these resize without antialias (their pplx evals use the training pp).
EVAL_WITHOUT_ANTIALIAS = {"ai2d", "rsvqa_hr", "rsvqa_lr", "vizwizvqa"}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_evals_resize_as_big_vision_evaluates(name, tmp_path):
  cfg, _ = parse_train(get_config(name), tmp_path)
  for spec in cfg.evals:
    own = False if name in EVAL_WITHOUT_ANTIALIAS and spec.evaluator != "perplexity" else None
    assert spec.image_antialias is own, spec.name


def test_eval_antialias_needs_the_big_vision_method(tmp_path):
  config = get_config("vqav2")
  config.image_method, config.image_antialias = "hf", False
  config.evals.vqav2_minival.image_antialias = True
  with pytest.raises(ValueError, match=r"^config.evals.vqav2_minival.image_antialias applies to "
                                       r"image_method 'big_vision' only \(got 'hf'\)"):
    parse_train(config, tmp_path)
