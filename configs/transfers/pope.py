"""POPE (big_vision `pope`): object-hallucination yes/no questions, `{question}` -> yes / no;
accuracy and the share of valid answers, greedy, on random / popular / adversarial. Eval-only
(0 training steps in big_vision), so this is an eval.py config for a fine-tuned checkpoint,
typically the VQAv2 transfer's (224 or 448):

  python eval.py --config configs/transfers/pope.py:res=224 --config.checkpoint=vqav2_224/params \
      --config.tokenizer=tokenizer.model --config.output_dir=evals/

No builder here: JSONL `pope_{random,popular,adversarial}.jsonl` in jsonl_dir (default
~/data/pope), the release's coco_pope_*.json rows with the COCO val2014 image path:
  {"image": "val2014/COCO_val2014_000000310196.jpg", "question_id": 1,
   "question": "Is there a snowboard in the image?", "answer": "yes"}
"""

import ml_collections

from configs.transfers import common

QA = dict(image_key="image", question_key="question", answers_key="answer", id_key="question_id")
PUBLISHED_RES = (224, 448)
TEXT_LEN = 48


def _eval(split: str, where: dict) -> dict:
  data = common.jsonl(f"pope_{split}.jsonl", "question_only", **QA)
  data["jsonl"] = f"{(where['jsonl_dir'] or '~/data/pope').rstrip('/')}/{data['jsonl']}"
  return dict(common.evaluation("pope", data), text_len=TEXT_LEN)


def get_config(arg=None):
  where = common.parse_arg(arg, PUBLISHED_RES, 224, "pope")
  c = ml_collections.ConfigDict()
  c.checkpoint = ""  # the fine-tuned params (required)
  c.tokenizer = ""  # its tokenizer.model (required)
  c.image_method = "big_vision"
  c.output_dir = ""  # <output_dir>/<eval name>/{predictions.jsonl, metrics.json} (required)
  c.overwrite = False
  c.evals = {f"pope_{s}": _eval(s, where) for s in ("random", "popular", "adversarial")}
  return c
