"""Batch evaluation speed: our evaluator loop against HF `generate` + the same metric.

Both sides run through the same `run_eval` loop (rows read from a generated JSONL split, the
same processor batches, the same metric, the same output files): only the predict function
differs. Ours is `make_predict_fn` (prefill + on-device decode loop); HF's calls
`PaliGemmaForConditionalGeneration.generate` (greedy) on the same weights and decodes its ids
with the same tokenizer. The model is real width with reduced depth (SigLIP So400m widths,
Gemma-2B widths, 257,216-row vocab, `--layers` layers each), random weights, bf16 on both sides,
and the stand-in tokenizer (its `<image>` id is the model's image token).

Two evals: captioning (CIDEr, `caption en`, --caption_len new tokens) and VQA (`answer en ...`,
VQA accuracy, --answer_len new tokens), batch --batch_size. Printed: examples/s of each side
(including the first batch's compile for ours unless --warmup), the ratio, the fraction of
identical predictions, and the metric values. Random weights rarely emit eos, so every row
decodes its full length on both sides.

    python benchmarks/eval_speed.py                    # CPU: 2 layers, 16 examples, batch 8
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import PIL.Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from inference_speed import VOCAB, cpu_description, hf_reduced_depth  # noqa: E402



def hf_predict_factory(model, tokenizer):
  """A predict function over HF `generate` (greedy, stops at eos), texts as ours are decoded."""
  import torch

  def factory(decoding):
    def predict(batch):
      ids = torch.as_tensor(np.asarray(batch["tokens"]), dtype=torch.long)
      mask = torch.as_tensor(np.asarray(batch["input_mask"]), dtype=torch.long)
      pixels = torch.as_tensor(np.asarray(batch["images"])[:, 0].transpose(0, 3, 1, 2)).bfloat16()
      with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                             do_sample=False, max_new_tokens=decoding.max_decode_len,
                             eos_token_id=tokenizer.eos_id)
      return [tokenizer.decode(row) for row in out[:, ids.shape[1]:].numpy()]
    return predict
  return factory


def write_split(folder: pathlib.Path, n: int) -> tuple[str, str]:
  """n random 320x240 JPEGs with captions and VQA questions: (captions JSONL, VQA JSONL)."""
  caps, vqa = [], []
  for i in range(n):
    rng = np.random.default_rng(i)
    PIL.Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(
        folder / f"{i}.jpg")
    caps.append({"image": f"{i}.jpg", "prefix": "caption en",
                 "suffix": [f"a photo of thing {i}", "a random picture"]})
    vqa.append({"image": f"{i}.jpg", "prefix": f"answer en what is in picture {i}?",
                "suffix": ["noise"] * 3 + ["nothing"] * 7})
  paths = []
  for name, rows in (("caps", caps), ("vqa", vqa)):
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths.append(str(folder / f"{name}.jsonl"))
  return paths[0], paths[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--examples", type=int, default=16)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--caption_len", type=int, default=16)
  parser.add_argument("--answer_len", type=int, default=8)
  parser.add_argument("--warmup", action="store_true", help="run each eval once before timing")
  args = parser.parse_args()

  from paligemma_jax.api import make_processor
  from paligemma_jax.conversion import load_hf_checkpoint
  from paligemma_jax.data import Tokenizer, train_standin_tokenizer
  from paligemma_jax.evaluation import make_predict_fn, parse_evals, run_eval

  print(f"CPU: {cpu_description()}")
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp)
    tokenizer = Tokenizer(train_standin_tokenizer(folder / "standin"))
    model = hf_reduced_depth(args.layers, tokenizer.image_token_id)
    model.save_pretrained(folder / "hf")
    config, params = load_hf_checkpoint(str(folder / "hf"))
    processor = make_processor(config, tokenizer)
    caps, vqa = write_split(folder, args.examples)
    specs = parse_evals({
        "caption": {"evaluator": "cider", "data": {"jsonl": caps}, "batch_size": args.batch_size,
                    "decoding": {"max_decode_len": args.caption_len}},
        "vqa": {"evaluator": "vqa", "data": {"jsonl": vqa}, "batch_size": args.batch_size,
                "decoding": {"max_decode_len": args.answer_len}}})
    sides = {"ours": lambda d: make_predict_fn(config, params, processor, d),
             "HF": hf_predict_factory(model, tokenizer)}
    print(f"model: real width, {args.layers} layers each, vocab {VOCAB}, bf16 on both sides; "
          f"{args.examples} examples per eval, batch {args.batch_size}, greedy; caption "
          f"{args.caption_len} / answer {args.answer_len} new tokens")
    print("eval | ours ex/s | HF ex/s | ours/HF | same predictions | metric ours / HF")
    for spec in specs:
      results, texts = {}, {}
      for side, factory in sides.items():
        if args.warmup:
          run_eval(spec, factory, processor, progress=False)
        out = folder / side / spec.name
        start = time.perf_counter()
        results[side] = run_eval(spec, factory, processor, folder=str(out), progress=False)
        results[side] = (results[side], time.perf_counter() - start)
        texts[side] = [json.loads(line)["prediction"] for line in
                       (out / "predictions.jsonl").open()]
      (ours, t_ours), (hf, t_hf) = results["ours"], results["HF"]
      same = np.mean([a == b for a, b in zip(texts["ours"], texts["HF"])])
      key = "cider" if spec.evaluator == "cider" else "acc"
      print(f"{spec.name} | {ours.examples / t_ours:.2f} | {hf.examples / t_hf:.2f} | "
            f"{t_hf / t_ours:.2f}x | {100 * same:.0f}% | {ours.metrics.get(key, 0):.4f} / "
            f"{hf.metrics.get(key, 0):.4f}", flush=True)


if __name__ == "__main__":
  main()
