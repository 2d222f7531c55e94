"""RSVQA high-resolution, non-numeric (big_vision `rsvqa_hr`): `answer en {question}` -> answer
(lower-cased); per-question-type accuracy, greedy, on test and test2.

No builder here: JSONL `train.jsonl` / `test.jsonl` / `test2.jsonl` in jsonl_dir (default
~/data/rsvqa_hr), laid out as rsvqa_lr.py's.
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="answers",
           id_key="question_id", lower_references=True, field_keys=["question_type"])
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=1),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=1),
}
TRAIN = [common.jsonl("train.jsonl", "vqa", **VQA)]
TEST = common.jsonl("test.jsonl", "vqa", **VQA)
EVALS = {
    "rsvqa_hr_test": common.evaluation("rsvqa", TEST, image_antialias=False),
    "rsvqa_hr_test2": common.evaluation("rsvqa", common.jsonl("test2.jsonl", "vqa", **VQA),
                                        image_antialias=False),
    "rsvqa_hr_test_pplx": common.perplexity(TEST),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="rsvqa_hr", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, antialias=True)
