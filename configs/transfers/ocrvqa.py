"""OCR-VQA (big_vision `ocrvqa`): `answer en {question}` -> the answer; exact match (lower-cased),
greedy, on test.

No builder here: JSONL `train.jsonl` / `test.jsonl` in jsonl_dir (default ~/data/ocrvqa), one
row per question (the release's dataset.json flattened). As big_vision's train + val[20000:],
train.jsonl holds the train questions and the val questions after the first 20,000:
  {"image": "images/1234567890.jpg", "question_id": "1234567890_0",
   "question": "Who wrote this book?", "answer": "Jane Doe"}
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="answer",
           id_key="question_id")
HPARAMS = {
    224: common.Hparams(batch_size=128, lr=3e-6, epochs=3),
    448: common.Hparams(batch_size=128, lr=3e-6, epochs=3),
    896: common.Hparams(batch_size=128, lr=1e-5, epochs=3),
}
TRAIN = [common.jsonl("train.jsonl", "vqa", **VQA)]
TEST = common.jsonl("test.jsonl", "vqa", **VQA)
EVALS = {
    "ocrvqa_test": common.evaluation("vqa", TEST, single_answer=True, to_lower=True),
    "ocrvqa_test_pplx": common.perplexity(TEST),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="ocrvqa", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, antialias=True)
