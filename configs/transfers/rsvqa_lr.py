"""RSVQA low-resolution, non-numeric (big_vision `rsvqa_lr`): `answer en {question}` -> answer
(lower-cased); per-question-type accuracy (evaluators.md §6), greedy.

No builder here: JSONL `train.jsonl` / `test.jsonl` in jsonl_dir (default ~/data/rsvqa_lr), the
non-numeric questions (no `count` / `area`), one answer each:
  {"image": "Images_LR/12.tif", "question_id": 1201, "question": "Is there a road?",
   "answers": ["yes"], "question_type": "presence"}
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="answers",
           id_key="question_id", lower_references=True, field_keys=["question_type"])
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=3e-6, epochs=3, label_smoothing=0.2),
    448: common.Hparams(batch_size=256, lr=3e-6, epochs=3, label_smoothing=0.2),
}
TRAIN = [common.jsonl("train.jsonl", "vqa", **VQA)]
TEST = common.jsonl("test.jsonl", "vqa", **VQA)
EVALS = {
    "rsvqa_lr_test": common.evaluation("rsvqa", TEST, image_antialias=False),
    "rsvqa_lr_test_pplx": common.perplexity(TEST),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="rsvqa_lr", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, antialias=True)
