"""VizWiz-VQA (big_vision `vizwizvqa`): `answer en {question}` -> an answer; VQA accuracy
min(1, #/3), greedy, on val.

No builder here: JSONL `train.jsonl` / `val.jsonl` in jsonl_dir (default ~/data/vizwizvqa), the
release's rows with their 10 answers as texts:
  {"image": "train/VizWiz_train_00000000.jpg", "question_id": "VizWiz_train_00000000",
   "question": "What's the name of this product?", "answers": ["basil leaves", ...]}
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="answers",
           id_key="question_id")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=10),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=10),
}
TRAIN = [common.jsonl("train.jsonl", "vqa", **VQA)]
VAL = common.jsonl("val.jsonl", "vqa", **VQA)
EVALS = {
    "vizwizvqa_val": common.evaluation("vqa", VAL, image_antialias=False),
    "vizwizvqa_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="vizwizvqa", hparams=HPARAMS, text_len=48,
                                train=TRAIN, evals=EVALS, antialias=True)
