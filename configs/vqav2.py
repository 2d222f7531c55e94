"""VQAv2-style question answering: `answer en {question}`, greedy (big_vision vqav2).

  python infer.py --config=configs/vqav2.py --config.checkpoint=ckpt/ \
      --config.tokenizer=tokenizer.model --config.infer.data.data_dir=/data/tfds \
      --config.infer.output=vqav2_minival.jsonl

TFDS has no public VQAv2 builder (big_vision reads its own `vqa` dataset): build one into
`data_dir` with features image, question, answers (a sequence of texts) and question_id, or point
the task at your dataset's fields (--config.task.question_key=..., answers_key, id_key). The
same config serves OK-VQA, VizWiz, TextVQA, GQA, ... with their own dataset name and split.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg  # one variant only
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # Orbax params dir or HF folder (required)
  c.tokenizer = ""  # the checkpoint's tokenizer.model (required)
  c.vqvae = ""
  c.image_method = "hf"
  c.max_length = 8192

  c.task = dict(name="vqa", lang="en", image_key="image", question_key="question",
                answers_key="answers", id_key="question_id")

  c.infer = dict(
      data=dict(name="vqa", split="validation[-10240:]", data_dir="", image_decoder="pil"),
      output="",  # predictions JSONL (required)
      batch_size=32,
      max_decode_len=32,
      sampler="greedy", num_beams=1, length_penalty=0.0,
      temperature=1.0, top_k=0, top_p=1.0, seed=0,
      overwrite=False,
  )
  return c
