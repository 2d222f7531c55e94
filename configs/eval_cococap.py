"""Evaluate a checkpoint on COCO captions (Karpathy val): CIDEr with beam 2, as big_vision cococap.

  python eval.py --config=configs/eval_cococap.py --config.checkpoint=ckpt/ \
      --config.tokenizer=tokenizer.model --config.output_dir=evals/

writes evals/cococap_val/predictions.jsonl and metrics.json. Override any field per eval, e.g.
--config.evals.cococap_val.data.split='val[:500]', --config.evals.cococap_val.data.data_dir=...,
--config.evals.cococap_val.decoding.sampler=greedy. To evaluate a JSONL file in coco_captions'
layout instead, {"image": path, "image/id": 1, "captions": {"text": [...]}} per line:
--config.evals.cococap_val.data.name= --config.evals.cococap_val.data.jsonl=val.jsonl
(image paths relative to the file's folder, or to --config.evals.cococap_val.data.image_dir).

A training config can carry the same `evals` section (the trainer passes it to
`paligemma_jax.evaluation.parse_evals` and `evaluate`).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg  # one variant only
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # Orbax params dir or HF folder (required)
  c.tokenizer = ""  # the checkpoint's tokenizer.model (required)
  c.image_method = "hf"  # or "big_vision" (bilinear resize, as the paper's evaluations)
  c.output_dir = ""  # <output_dir>/<eval name>/{predictions.jsonl, metrics.json} (required)
  c.overwrite = False

  c.evals = dict(
      cococap_val=dict(
          evaluator="cider",
          # Every key is present so that each can be overridden from the command line.
          data=dict(name="coco_captions", config="", split="val", data_dir="", jsonl="",
                    image_dir="", image_decoder="pil", task="caption",
                    task_options=dict(lang="en", image_key="image", id_key="image/id",
                                      captions_key="captions/text")),
          decoding=dict(sampler="beam", num_beams=2, length_penalty=0.0, max_decode_len=32),
          batch_size=32,
          text_len=32,
          options=dict(tokenize=True),
      ),
  )
  return c
