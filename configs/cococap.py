"""COCO captions (TFDS coco_captions, Karpathy splits): `caption en`, beam 2 (big_vision cococap).

  python infer.py --config=configs/cococap.py --config.checkpoint=ckpt/ \
      --config.tokenizer=tokenizer.model --config.infer.output=cococap_val.jsonl

Any field can be overridden on the command line, e.g. --config.infer.data.split='val[:500]',
--config.infer.data.data_dir=/data/tfds, --config.infer.sampler=greedy.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg  # one variant only
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # Orbax params dir or HF folder (required)
  c.tokenizer = ""  # the checkpoint's tokenizer.model (required)
  c.vqvae = ""  # not used by captioning
  c.image_method = "hf"  # or "big_vision" (bilinear resize, as the paper's evaluations)
  c.max_length = 8192

  # The task: shared by inference and (later) training configs.
  c.task = dict(name="caption", lang="en", image_key="image", id_key="image/id",
                captions_key="captions/text")

  c.infer = dict(
      data=dict(name="coco_captions", split="val", data_dir="", image_decoder="pil"),
      output="",  # predictions JSONL (required)
      batch_size=32,
      max_decode_len=32,  # the task's text_len
      sampler="beam", num_beams=2, length_penalty=0.0,  # big_vision: beam 2, no length penalty
      temperature=1.0, top_k=0, top_p=1.0, seed=0,
      overwrite=False,
  )
  return c
