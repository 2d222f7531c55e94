"""RefCOCO referring expressions (TFDS ref_coco): `detect {sentence}` or `segment {sentence}`.

  python infer.py --config=configs/refcoco.py:detect --config.checkpoint=ckpt/ \
      --config.tokenizer=tokenizer.model --config.infer.output=refcoco_val_detect.jsonl
  python infer.py --config=configs/refcoco.py:segment ... --config.vqvae=vae-oid.npz

One row per referring sentence, id = its refexp_id; rows carry the ground-truth `box_yxyx`
(normalised) and, for detect, the reference `<loc>x4 {sentence}`. Greedy, as big_vision's
segmentation evaluator. Choose the variant with --config.infer.data.name=ref_coco/refcocog_umd.
"""

import ml_collections

MODES = ("detect", "segment")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  mode = arg or "detect"
  if mode not in MODES:
    raise ValueError(f"unknown refcoco mode {mode!r}; use configs/refcoco.py:detect or :segment")
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # Orbax params dir or HF folder (required)
  c.tokenizer = ""  # the checkpoint's tokenizer.model (required)
  c.vqvae = ""  # segment: vae-oid.npz (or its Orbax dir) to decode masks; "" = boxes only
  c.image_method = "hf"
  c.max_length = 8192

  c.task = dict(name=f"refexp_{mode}", image_key="image", boxes_key="objects/bbox",
                sentences_key="objects/refexp/raw", ids_key="objects/refexp/refexp_id",
                image_id_key="image/id")

  c.infer = dict(
      data=dict(name="ref_coco/refcoco_unc", split="validation", data_dir="",
                image_decoder="pil"),
      output="",  # predictions JSONL (required)
      batch_size=32,
      max_decode_len=48,  # 4 loc (+ 16 seg) tokens and the label
      sampler="greedy", num_beams=1, length_penalty=0.0,
      temperature=1.0, top_k=0, top_p=1.0, seed=0,
      overwrite=False,
  )
  return c
