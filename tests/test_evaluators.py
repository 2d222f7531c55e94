"""Evaluators end to end: a tiny random PaliGemma on tiny generated JSONL splits -> predict
functions -> stats -> gathered metrics -> predictions.jsonl / metrics.json; metrics recomputed
by hand from the written predictions; two simulated processes equal one; one-line bad input."""

from __future__ import annotations

import json
import pathlib
import threading

import jax
import numpy as np
import PIL.Image
import pytest

from model_fixtures import random_params
from paligemma_jax import sharding
from paligemma_jax.api import make_processor
from paligemma_jax.data.images import preprocess_image
from paligemma_jax.evaluation import (EVALUATORS, Decoding, cider, exact_match, get_evaluator,
                                      make_predict_fn, parse_evals, perplexity_from_stats,
                                      perplexity_stats, vqav2_accuracy)
from paligemma_jax.evaluation.run_evals import evaluate, run_eval
from paligemma_jax.inference import BeamSearch, beam_generate, score
from test_pipeline import tiny_config

CAPTIONS = [["a dog on grass", "a brown dog"], ["a cat on a sofa", "a sleeping cat"],
            ["two birds", "birds in a tree"], ["a red car", "a car on a road"],
            ["a bowl of soup", "soup in a bowl"]]
VQA = [("what is it?", ["dog"] * 3 + ["cat"] * 7, "other"),
       ("how many?", ["2"] * 4 + ["two"] * 6, "number"),
       ("is it red?", ["yes"] * 10, "yes/no")]
SHAPE = dict(batch_size=2, text_len=16, decoding=dict(max_decode_len=4))  # one compile for all


def write_image(folder: pathlib.Path, i: int) -> str:
  rng = np.random.default_rng(i)
  PIL.Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
  return f"{i}.png"


def write_jsonl(path: pathlib.Path, rows: list[dict]) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
  folder = tmp_path_factory.mktemp("eval_data")
  images = [write_image(folder, i) for i in range(5)]
  caps = [{"image": images[i], "prefix": "caption en", "suffix": c, "id": f"img{i}"}
          for i, c in enumerate(CAPTIONS)]
  vqa = [{"image": images[i], "question": q, "answers": a, "answer_type": t, "question_id": i}
         for i, (q, a, t) in enumerate(VQA)]
  return {"caption": write_jsonl(folder / "cap.jsonl", caps),
          "vqa": write_jsonl(folder / "vqa.jsonl", vqa), "folder": str(folder)}


def caption_eval(data, name="cap", evaluator="cider", **extra) -> dict:
  return {"name": name, "evaluator": evaluator, **SHAPE, **extra,
          "data": {"jsonl": data["caption"], "task_options": {"id_key": "id"}}}


def vqa_eval(data, name="vqa") -> dict:
  task_options = {"question_key": "question", "answers_key": "answers", "id_key": "question_id",
                  "field_keys": ["answer_type"]}
  return {"name": name, "evaluator": "vqav2", **SHAPE,
          "data": {"jsonl": data["vqa"], "task": "vqa", "task_options": task_options}}


@pytest.fixture(scope="module")
def model(standin_tokenizer):
  config = tiny_config(standin_tokenizer)
  return config, random_params(config, seed=3), make_processor(config, standin_tokenizer)


@pytest.fixture(scope="module")
def factory(model):
  config, params, processor = model
  mesh = sharding.make_mesh(devices=jax.devices()[:1])
  return lambda decoding: make_predict_fn(config, params, processor, decoding, mesh=mesh)


def read_rows(folder) -> list[dict]:
  return [json.loads(line) for line in (pathlib.Path(folder) / "predictions.jsonl").open()]


def test_table_names_and_unknown_evaluator():
  assert {"vqa", "vqav2", "anls", "chartqa", "exact_match", "tallyqa", "scienceqa", "rsvqa",
          "pope", "cider", "bleu", "refcoco_box", "refcoco_seg", "detection_map",
          "perplexity"} <= set(EVALUATORS)
  with pytest.raises(ValueError) as e:
    get_evaluator("cidr")
  message = str(e.value)
  assert "\n" not in message and "unknown evaluator 'cidr'; valid evaluators: vqa, " in message


def test_caption_and_vqa_end_to_end(data, model, factory, tmp_path):
  _, _, processor = model
  specs = parse_evals([caption_eval(data), caption_eval(data, "cap_em", "exact_match"),
                       vqa_eval(data)])
  metrics = evaluate(specs, factory, processor, output_dir=str(tmp_path), progress=False)
  # Captions: the written rows, CIDEr recomputed from them by hand.
  rows = read_rows(tmp_path / "cap")
  assert [r["id"] for r in rows] == [f"img{i}" for i in range(5)]
  assert [r["references"] for r in rows] == CAPTIONS
  assert {r["prompt"] for r in rows} == {"caption en"}
  preds = [r["prediction"] for r in rows]
  want = cider(preds, [r["references"] for r in rows])
  assert metrics["cap/cider"] == pytest.approx(want["cider"]) and metrics["cap/num"] == 5
  assert metrics["cap/skipped"] == 0
  assert json.loads((tmp_path / "cap/metrics.json").read_text()) == pytest.approx(
      {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("cap/")})
  em_rows = read_rows(tmp_path / "cap_em")
  assert [r["prediction"] for r in em_rows] == preds  # same decoding, same texts
  assert metrics["cap_em/exact_match"] == exact_match(preds, CAPTIONS)["exact_match"]
  # VQAv2: fields flow from the data into the rows and into the per-type metrics.
  rows = read_rows(tmp_path / "vqa")
  assert [r["answer_type"] for r in rows] == [t for _, _, t in VQA]
  assert rows[0]["prompt"] == "answer en what is it?"
  want = vqav2_accuracy([r["prediction"] for r in rows], [r["references"] for r in rows],
                        [r["answer_type"] for r in rows])
  assert {k[4:]: v for k, v in metrics.items() if k.startswith("vqa/") and k != "vqa/skipped"} \
      == pytest.approx(want)
  assert {"vqa/acc/yesno", "vqa/acc/number", "vqa/acc/other"} <= set(metrics)
  assert not list(tmp_path.rglob("*.incomplete"))


def test_predictions_are_the_model_greedy_decoding(data, model, factory):
  """A predict function's texts equal `generate` (and `beam_generate`) decoded, and over 8
  devices equal one."""
  from paligemma_jax.data.eval_input import eval_batch, eval_rows
  from paligemma_jax.inference import generate
  config, params, processor = model
  [spec] = parse_evals([caption_eval(data)])
  rows = list(eval_rows(spec.data))[:3]
  batch = eval_batch(rows, processor, 3, spec.text_len)
  ids = generate(config, params, batch, 4, processor.tokenizer.eos_id)
  want = [processor.tokenizer.decode(row) for row in ids]
  assert factory(spec.decoding)(batch) == want
  # 3 rows padded to 8 and sharded: another program, so a row is compared only where no step is
  # a near-tie (whose pick may differ with the CPU's summation order)
  from paligemma_jax.inference import decode_tokens
  logits = decode_tokens(params, batch["tokens"], batch["images"], batch["input_mask"],
                         batch["mask_ar"], config=config, max_new_tokens=4,
                         eos_id=processor.tokenizer.eos_id, keep_logits=True).logits
  top2 = np.sort(np.asarray(logits), axis=-1)[..., -2:]
  clear = ((top2[..., 1] - top2[..., 0]) > 1e-4).all(axis=-1)
  assert clear.any()
  eight = make_predict_fn(config, params, processor, spec.decoding)(batch)
  assert [e for e, c in zip(eight, clear) if c] == [w for w, c in zip(want, clear) if c]
  beams = beam_generate(config, params, batch, 4, processor.tokenizer.eos_id,
                        beam=BeamSearch(num_beams=2, length_penalty=0.0))
  beam_fn = factory(Decoding("beam", num_beams=2, length_penalty=0.0, max_decode_len=4))
  assert beam_fn(batch) == [processor.tokenizer.decode(row) for row in beams.tokens[:, 0]]


def test_perplexity_equals_score_of_the_first_reference(data, model, factory, tmp_path):
  config, params, processor = model
  specs = parse_evals([caption_eval(data, "pplx", "perplexity")])
  metrics = evaluate(specs, factory, processor, output_dir=str(tmp_path), progress=False)
  rows = read_rows(tmp_path / "pplx")
  want = perplexity_from_stats(perplexity_stats([r["log_likelihood"] for r in rows],
                                                [r["num_tokens"] for r in rows]))
  assert {k[5:]: v for k, v in metrics.items() if k != "pplx/skipped"} == pytest.approx(want)
  image = PIL.Image.open(pathlib.Path(data["folder"]) / "1.png")
  one = score(config, params, processor([image], ["caption en"], [CAPTIONS[1][0]],
                                        padding_side="right"))
  assert rows[1]["log_likelihood"] == pytest.approx(float(one.total[0]), abs=1e-4)
  assert rows[1]["num_tokens"] == int(one.count[0])


# --- several processes ---------------------------------------------------------------------------


def fake_predict_factory(decoding):
  """No model: row i of a batch predicts its first reference when the id ends in an even digit."""
  def predict(batch):
    return [refs[0] if str(i)[-1] in "02468" else "nothing"
            for i, refs in zip(batch["ids"], batch["references"])]
  return predict


def test_metrics_of_known_predictions(data, model, tmp_path):
  """With predictions known in advance (the random model's are all wrong, so its metrics are 0 on
  any wiring): the evaluator scores exactly those rows against the split's references."""
  _, _, processor = model
  specs = parse_evals([caption_eval(data, "cap_em", "exact_match"), caption_eval(data)])
  metrics = evaluate(specs, fake_predict_factory, processor, output_dir=str(tmp_path),
                     progress=False)
  want = [refs[0] if i % 2 == 0 else "nothing" for i, refs in enumerate(CAPTIONS)]  # img0..img4
  assert [r["prediction"] for r in read_rows(tmp_path / "cap_em")] == want
  assert metrics["cap_em/exact_match"] == pytest.approx(3 / 5)
  assert metrics["cap/cider"] == pytest.approx(cider(want, CAPTIONS)["cider"])
  assert metrics["cap/cider"] > 1.0  # three exact captions


@pytest.mark.parametrize("own", [None, False])
def test_an_eval_resizes_with_its_own_antialias(data, model, tmp_path, own):
  """big_vision trains ai2d, rsvqa and vizwiz with an antialiased resize and evaluates them
  without: an eval's `image_antialias` replaces the run's for its images, absent keeps it."""
  config, _, _ = model
  processor = make_processor(config, model[2].tokenizer, "big_vision", antialias=True)
  extra = {} if own is None else {"image_antialias": own}
  [spec] = parse_evals([caption_eval(data, "cap_em", "exact_match", **extra)])
  seen = {}

  def factory(decoding):
    def predict(batch):
      seen.update(zip(batch["ids"], np.asarray(batch["images"])[:, 0]))
      return fake_predict_factory(decoding)(batch)
    return predict

  run_eval(spec, factory, processor, progress=False)
  size = config.vision.image_size
  for i in range(5):
    image = np.asarray(PIL.Image.open(pathlib.Path(data["folder"]) / f"{i}.png"))
    want = preprocess_image(image, size, "big_vision", antialias=own is None)
    other = preprocess_image(image, size, "big_vision", antialias=own is not None)
    np.testing.assert_array_equal(seen[f"img{i}"], want)
    assert np.abs(want - other).max() > 0.05  # 40 px -> a few: antialiasing shows


def threaded_gather(count: int):
  """A gather for `count` threads standing in for processes: each contributes, all get all."""
  barrier, slots = threading.Barrier(count), {}

  def for_process(index: int):
    def gather(data: bytes) -> list[bytes]:
      slots[index] = data
      barrier.wait()
      out = [slots[i] for i in range(count)]
      barrier.wait()  # nobody overwrites a slot before everyone has read it
      return out
    return gather
  return for_process


@pytest.mark.parametrize("evaluator", ["cider", "exact_match", "bleu"])
def test_two_processes_give_the_metrics_of_one(data, model, tmp_path, evaluator):
  _, _, processor = model
  [spec] = parse_evals([caption_eval(data, evaluator=evaluator)])
  one = run_eval(spec, fake_predict_factory, processor, folder=str(tmp_path / "one"),
                 progress=False)
  gathers, results = threaded_gather(2), {}

  def run(index):
    results[index] = run_eval(spec, fake_predict_factory, processor,
                              folder=str(tmp_path / "two"), process_index=index,
                              process_count=2, gather=gathers(index), progress=False)
  threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert results[0].metrics == pytest.approx(one.metrics)
  assert results[1].metrics == results[0].metrics  # every process gets the same
  assert results[0].examples == 5
  two_rows = sorted(read_rows(tmp_path / "two"), key=lambda r: r["id"])
  assert two_rows == read_rows(tmp_path / "one")
  if evaluator == "cider":
    assert one.metrics["cider"] > 0


def test_bad_data_on_one_process_fails_every_process(data, model, tmp_path):
  """A row without references on process 1 stops both processes with its one line (none is
  left waiting in the gather)."""
  _, _, processor = model
  rows = [{"image": "0.png", "prefix": "caption en", "suffix": ["a"]},
          {"image": "1.png", "prefix": "caption en", "suffix": []}]
  path = write_jsonl(pathlib.Path(data["folder"]) / "half.jsonl", rows)
  [spec] = parse_evals([{**caption_eval(data), "data": {"jsonl": path}}])
  gathers, raised = threaded_gather(2), {}

  def run(index):
    try:
      run_eval(spec, fake_predict_factory, processor, folder=str(tmp_path), process_index=index,
               process_count=2, gather=gathers(index), progress=False)
    except ValueError as e:
      raised[index] = str(e)
  threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=60)
  assert raised == {0: "eval 'cap': row 1 has no references (evaluator 'cider' needs "
                       "prediction, references)"} | {1: raised.get(0)}
  assert not list(tmp_path.iterdir())


def counting_factory(calls: list[int]):
  """`fake_predict_factory` (a fake score for perplexity) that records each batch's valid rows."""
  def factory(decoding):
    predict = fake_predict_factory(decoding)

    def counted(batch):
      calls.append(int(np.sum(batch["valid"])))
      if decoding.sampler == "score":
        return np.full(len(batch["valid"]), -2.0), np.full(len(batch["valid"]), 4)
      return predict(batch)
    return counted
  return factory


@pytest.mark.parametrize("evaluator", ["exact_match", "perplexity"])
def test_processes_with_unequal_shares_predict_in_step(data, model, tmp_path, evaluator):
  """The predict function spans every process's devices, so each must call it equally often:
  5 rows in batches of 2 give process 0 two groups and process 1 one, and a split whose odd rows
  cannot be read gives process 1 none. A process out of groups predicts padding (no valid row)
  and drops it; the metrics are one process's over all rows."""
  _, _, processor = model
  rows = [{"image": "0.png" if i % 2 == 0 else "nope.png", "prefix": "caption en",
           "suffix": CAPTIONS[i], "id": f"img{i}"} for i in range(4)]
  odd_bad = write_jsonl(pathlib.Path(data["folder"]) / "odd_bad.jsonl", rows)
  for split, want_calls in ((data["caption"], [[2, 1], [2, 0]]), (odd_bad, [[2], [0]])):
    [spec] = parse_evals([{**caption_eval(data, evaluator=evaluator),
                           "data": {"jsonl": split, "task_options": {"id_key": "id"}}}])
    one = run_eval(spec, counting_factory([]), processor, progress=False)
    gathers, results, calls = threaded_gather(2), {}, {0: [], 1: []}

    def run(index):
      results[index] = run_eval(spec, counting_factory(calls[index]), processor,
                                process_index=index, process_count=2, gather=gathers(index),
                                progress=False)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join(timeout=60)
    assert [calls[0], calls[1]] == want_calls
    assert results[0].metrics == results[1].metrics == pytest.approx(one.metrics)
    assert results[0].examples == one.examples and results[0].skipped == one.skipped


# --- bad input -----------------------------------------------------------------------------------


def one_line_error(excinfo) -> str:
  message = str(excinfo.value)
  assert "\n" not in message
  return message


def test_empty_split_and_unreadable_rows(data, model, tmp_path):
  _, _, processor = model
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  [spec] = parse_evals([{**caption_eval(data), "data": {"jsonl": str(empty)}}])
  with pytest.raises(ValueError) as e:
    run_eval(spec, fake_predict_factory, processor, folder=str(tmp_path / "out"), progress=False)
  assert "eval 'cap':" in one_line_error(e) and "has no rows" in str(e.value)
  missing = write_jsonl(tmp_path / "missing.jsonl", [{"image": "nope.png", "prefix": "caption en",
                                                      "suffix": ["x"]}] * 2)
  [spec] = parse_evals([{**caption_eval(data), "data": {"jsonl": missing}}])
  with pytest.raises(ValueError) as e:
    run_eval(spec, fake_predict_factory, processor, folder=str(tmp_path / "out"), progress=False)
  assert "no examples to evaluate (all 2 rows could not be read" in one_line_error(e)
  assert not (tmp_path / "out").exists()


def test_row_without_references_and_skipped_rows(data, model, tmp_path):
  _, _, processor = model
  rows = [{"image": "0.png", "prefix": "caption en", "suffix": ["a dog"]},
          {"image": "nope.png", "prefix": "caption en", "suffix": ["x"]},
          {"image": "1.png", "prefix": "caption en", "suffix": []}]
  path = write_jsonl(pathlib.Path(data["folder"]) / "noref.jsonl", rows)
  [spec] = parse_evals([{**caption_eval(data), "data": {"jsonl": path}}])
  with pytest.raises(ValueError) as e:
    run_eval(spec, fake_predict_factory, processor, folder=str(tmp_path), progress=False)
  assert "eval 'cap': row 2 has no references" in one_line_error(e)
  path = write_jsonl(pathlib.Path(data["folder"]) / "skip.jsonl", rows[:2])
  [spec] = parse_evals([{**caption_eval(data, evaluator="exact_match"), "data": {"jsonl": path}}])
  result = run_eval(spec, fake_predict_factory, processor, folder=str(tmp_path), progress=False)
  assert result.metrics == {"exact_match": 1.0, "num": 1.0, "skipped": 1.0}
  written = read_rows(tmp_path)
  assert written[0]["prediction"] == "a dog" and "nope.png" in written[1]["error"]


def test_length_mismatch_overwrite_and_nothing_half_written(data, model, tmp_path):
  _, _, processor = model
  [spec] = parse_evals([caption_eval(data, evaluator="exact_match")])
  short = lambda decoding: (lambda batch: ["x"])  # noqa: E731
  with pytest.raises(ValueError) as e:
    run_eval(spec, short, processor, folder=str(tmp_path / "a"), progress=False)
  assert "returned 1 texts for a batch of 2" in one_line_error(e)
  # A metric that fails after decoding (POPE wants one yes/no reference) leaves no file.
  [pope] = parse_evals([caption_eval(data, evaluator="pope")])
  with pytest.raises(ValueError) as e:
    run_eval(pope, fake_predict_factory, processor, folder=str(tmp_path / "a"), progress=False)
  assert "eval 'cap': pope: example 0 has 2 references, expected one" in one_line_error(e)
  assert not (tmp_path / "a").exists() or not list((tmp_path / "a").iterdir())
  # The overwrite rule: an existing output stops the run before any work.
  run_eval(spec, fake_predict_factory, processor, folder=str(tmp_path / "b"), progress=False)
  before = (tmp_path / "b/predictions.jsonl").read_text()
  with pytest.raises(FileExistsError) as e:
    run_eval(spec, short, processor, folder=str(tmp_path / "b"), progress=False)
  assert "pass --overwrite" in one_line_error(e)
  assert (tmp_path / "b/predictions.jsonl").read_text() == before
  run_eval(spec, fake_predict_factory, processor, folder=str(tmp_path / "b"), overwrite=True,
           progress=False)
  assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["metrics.json",
                                                                "predictions.jsonl"]


@pytest.mark.parametrize("bad, message", [
    ([{"name": "x", "evaluator": "cidr", "data": {"jsonl": "a.jsonl"}}],
     "config.evals[0]: unknown evaluator 'cidr'; valid evaluators: vqa, vqav2,"),
    ([{"name": "x", "evaluator": "cider", "data": {"jsonl": "a"}, "batchsize": 3}],
     "unknown config key config.evals[0].batchsize; valid keys in config.evals[0]: name,"),
    ([{"name": "x", "evaluator": "cider", "data": {"jsonl": "a"}, "options": {"to_lower": True}}],
     "unknown option 'to_lower' for evaluator 'cider'; valid options: tokenize"),
    ([{"name": "x", "evaluator": "perplexity", "data": {"jsonl": "a"},
       "decoding": {"sampler": "beam"}}], "needs sampler score, got 'beam'"),
    ({"x": {"evaluator": "cider", "data": {"jsonl": "a", "name": "coco"}}},
     "config.evals[0].data: an input member needs exactly one of name"),
    ([{"name": "x", "evaluator": "cider", "data": {"jsonl": "a"}}] * 2, "two evals are named 'x'"),
    ([], "config.evals is empty"),
])
def test_config_errors_are_one_line(bad, message):
  with pytest.raises(ValueError) as e:
    parse_evals(bad)
  assert message in one_line_error(e)


def test_decoding_resolution():
  [pplx, cap] = parse_evals({"p": {"evaluator": "perplexity", "data": {"jsonl": "a"}},
                             "c": {"evaluator": "cider", "data": {"jsonl": "a"}, "text_len": 20}})
  assert pplx.name == "p" and pplx.decoding.sampler == "score"
  assert cap.decoding == Decoding("greedy", 2, 0.0, 20)  # max_decode_len = text_len


# --- the trainer's hook, a TFDS split, referring segmentation ------------------------------------


def test_periodic_evaluator_is_the_trainers_hook(data, model, tmp_path):
  """The trainer calls `evaluate(predictor)` with its Predictor (config, params, processor,
  step): the hook returns prefixed metrics and writes under step_<step>/, replacing on resume."""
  import types
  from paligemma_jax.evaluation import periodic_evaluator
  config, params, processor = model
  hook = periodic_evaluator(parse_evals([caption_eval(data, evaluator="exact_match")]),
                            output_dir=str(tmp_path), mesh=sharding.make_mesh(
                                devices=jax.devices()[:1]), progress=False)
  predictor = types.SimpleNamespace(config=config, params=params, processor=processor, step=10)
  first = hook(predictor)
  assert set(first) == {"cap/exact_match", "cap/num", "cap/skipped"} and first["cap/num"] == 5
  assert (tmp_path / "step_00000010/cap/predictions.jsonl").exists()
  assert hook(predictor) == first  # a repeated step replaces its files


def test_tfds_split(tmp_path, model):
  from input_fixtures import PipeCaps, build, caps_captions
  _, _, processor = model
  build(PipeCaps, tmp_path / "tfds")
  [spec] = parse_evals([{"name": "caps", "evaluator": "cider", **SHAPE,
                         "data": {"name": "pipe_caps", "split": "val",
                                  "data_dir": str(tmp_path / "tfds")}}])
  result = run_eval(spec, fake_predict_factory, processor, folder=str(tmp_path / "out"),
                    progress=False)
  rows = read_rows(tmp_path / "out")
  assert sorted(r["references"] for r in rows) == sorted(caps_captions(i) for i in range(6))
  want = cider([r["prediction"] for r in rows], [r["references"] for r in rows])
  assert result.metrics == pytest.approx({**want, "skipped": 0.0})


def test_refcoco_seg_rows_with_masks(monkeypatch):
  """refcoco_seg scores rows carrying the GT mask (task option keep_masks) with the VQ-VAE
  decoder named by its `vqvae` option (a stub here: +1 everywhere, evaluators.md §11)."""
  from paligemma_jax.evaluation import evaluators
  monkeypatch.setattr(evaluators, "_mask_decoder",
                      lambda path: lambda codes: np.ones((len(codes), 64, 64), np.float32))
  gt = np.zeros((100, 100), np.uint8)
  gt[10:50, 10:50] = 255
  seg = "".join(f"<seg{0:03d}>" for _ in range(16))
  rows = [{"prediction": f"<loc0102><loc0102><loc0512><loc0512>{seg}", "mask": gt,
           "box_yxyx": [0.1, 0.1, 0.5, 0.5]},
          {"prediction": f"<loc0205><loc0205><loc0614><loc0614>{seg}", "mask": gt,
           "box_yxyx": [0.1, 0.1, 0.5, 0.5]},
          {"prediction": f"<loc0512><loc0102><loc0102><loc0512>{seg}", "mask": gt,
           "box_yxyx": [0.1, 0.1, 0.5, 0.5]}]
  evaluator = get_evaluator("refcoco_seg")
  options = evaluator.check_options("refcoco_seg", {"vqvae": "vae-oid.npz"})
  out = evaluator.from_stats(evaluator.stats(rows, **options))
  assert out["miou"] == pytest.approx(0.447706, abs=1e-6)
  assert out["boxacc/0.5"] == pytest.approx(1 / 3) and out["invalid"] == 1
  with pytest.raises(ValueError, match="set the evaluator option vqvae"):
    evaluator.stats(rows, **evaluator.check_options("refcoco_seg", {}))


# --- two real JAX processes (jax.distributed on 127.0.0.1): the default gather -----------------

WORKER = """
import json, sys
import jax
process, port, split, tokenizer, out = sys.argv[1:]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process))
from paligemma_jax.data.processor import Processor
from paligemma_jax.data.tokenizer import Tokenizer
from paligemma_jax.evaluation import evaluate, parse_evals
def factory(decoding):
  return lambda b: [r[0] if str(i)[-1] in "02468" else "nothing"
                    for i, r in zip(b["ids"], b["references"])]
specs = parse_evals({e: {"evaluator": e, "batch_size": 2,
                         "data": {"jsonl": split, "task_options": {"id_key": "id"}}}
                     for e in ("cider", "exact_match")})
metrics = evaluate(specs, factory, Processor(Tokenizer(tokenizer), 28, 4), output_dir=out,
                   progress=False)
json.dump(metrics, open(f"{out}/metrics-{process}.json", "w"))
"""


@pytest.mark.slow  # ~20 s: two fresh Python processes import jax and grain
def test_two_real_processes_gather_with_process_allgather(data, model, standin_tokenizer_path,
                                                          tmp_path):
  import os
  import socket
  import subprocess
  import sys
  _, _, processor = model
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(p), str(port), data["caption"],
                             str(standin_tokenizer_path), str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for p in range(2)]
  for proc in procs:
    output = proc.communicate(timeout=240)[0].decode()
    assert proc.returncode == 0, output[-3000:]
  got = [json.loads((tmp_path / f"metrics-{p}.json").read_text()) for p in range(2)]
  assert got[0] == got[1]
  specs = parse_evals({e: {"evaluator": e, "batch_size": 2,
                           "data": {"jsonl": data["caption"], "task_options": {"id_key": "id"}}}
                       for e in ("cider", "exact_match")})
  want = evaluate(specs, fake_predict_factory, processor, progress=False)
  assert got[0] == pytest.approx(want) and want["cider/num"] == 5
  assert len(read_rows(tmp_path / "cider")) == 5
