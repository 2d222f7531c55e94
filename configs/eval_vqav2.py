"""Evaluate a checkpoint on VQAv2 minival: official VQAv2 accuracy per answer type, greedy, as
big_vision vqav2; plus the answers' perplexity.

  python eval.py --config=configs/eval_vqav2.py --config.checkpoint=ckpt/ \
      --config.tokenizer=tokenizer.model --config.output_dir=evals/ \
      --config.evals.vqav2_minival.data.data_dir=/data/tfds

TFDS has no public VQAv2 builder (see configs/vqav2.py): build one with features image,
question, answers (a sequence of texts), question_id and answer_type, or point the task at your
fields (--config.evals.vqav2_minival.data.task_options.question_key=...). A JSONL file with those
keys works too: --config.evals.vqav2_minival.data.name= --config.evals.vqav2_minival.data.jsonl=...
"""

import ml_collections

_TASK_OPTIONS = dict(lang="en", image_key="image", question_key="question",
                     answers_key="answers", id_key="question_id", field_keys=("answer_type",))


def _data() -> dict:
  # Every key is present so that each can be overridden from the command line.
  return dict(name="vqa", config="", split="validation[-10240:]", data_dir="", jsonl="",
              image_dir="", image_decoder="pil", task="vqa", task_options=dict(_TASK_OPTIONS))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg  # one variant only
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # Orbax params dir or HF folder (required)
  c.tokenizer = ""  # the checkpoint's tokenizer.model (required)
  c.image_method = "hf"
  c.output_dir = ""  # <output_dir>/<eval name>/{predictions.jsonl, metrics.json} (required)
  c.overwrite = False
  c.evals = dict(
      vqav2_minival=dict(
          evaluator="vqav2", data=_data(),
          decoding=dict(sampler="greedy", max_decode_len=32),
          batch_size=32, text_len=32,  # prompt tokens; answers up to 32 new tokens
          options=dict(answer_type_key="answer_type"),
      ),
      vqav2_minival_pplx=dict(
          evaluator="perplexity", data=_data(),
          decoding=dict(sampler="score"),
          batch_size=32, text_len=48,  # prompt + the first answer
      ),
  )
  return c
