"""A-OKVQA direct answer (big_vision `aokvqa_da`): `answer en {question}` -> a direct answer;
VQA accuracy min(1, #/3), greedy.

No builder here: the JSONL files of aokvqa_mc.py (jsonl_dir default ~/data/aokvqa), read through
their `direct_answers` (10 per question).
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="direct_answers",
           id_key="question_id")
HPARAMS = {
    224: common.Hparams(batch_size=128, lr=5e-6, epochs=10),
    448: common.Hparams(batch_size=128, lr=5e-6, epochs=10),
}
TRAIN = [common.jsonl("train.jsonl", "vqa", **VQA)]
VAL = common.jsonl("val.jsonl", "vqa", **VQA)
EVALS = {
    "aokvqa_da_val": common.evaluation("vqa", VAL),
    "aokvqa_da_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="aokvqa", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, antialias=True)
