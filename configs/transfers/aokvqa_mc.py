"""A-OKVQA multiple choice (big_vision `aokvqa_mc`):
`answer en  {question} choose from: {c1} \\t {c2} ...` -> the correct choice; exact match.

No builder here: JSONL `train.jsonl` / `val.jsonl` in jsonl_dir (default ~/data/aokvqa), the
release's aokvqa_v1p0_{train,val}.json rows one per line with the COCO 2017 image path added:
  {"image": "train2017/000000299207.jpg", "question_id": "22MexNkBPpdZGX6sxbxVBH",
   "question": "...", "choices": ["a", "b", "c", "d"], "correct_choice_idx": 2,
   "direct_answers": [...]}
"""

from configs.transfers import common

MC = dict(correct_index_key="correct_choice_idx")  # The release's name; the rest are defaults.
HPARAMS = {
    224: common.Hparams(batch_size=128, lr=5e-6, epochs=15),
    448: common.Hparams(batch_size=128, lr=5e-6, epochs=15),
}
TRAIN = [common.jsonl("train.jsonl", "multiple_choice", **MC)]
VAL = common.jsonl("val.jsonl", "multiple_choice", **MC)
EVALS = {
    "aokvqa_mc_val": common.evaluation("vqa", VAL, single_answer=True),  # exact match
    "aokvqa_mc_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="aokvqa", hparams=HPARAMS, text_len=128, train=TRAIN,
                                evals=EVALS, antialias=True)
