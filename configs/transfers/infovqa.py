"""InfographicVQA (big_vision `infovqa`): `answer en {question}` -> an answer (lower-cased);
ANLS (lower-cased), greedy, on validation. Default res 896 (big_vision's default).

No builder here: JSONL `train.jsonl` / `val.jsonl` in jsonl_dir (default ~/data/infovqa), the
release's infographicsVQA_{train,val}_v1.0.json `data` rows one per line:
  {"image": "infographicsvqa_images/10002.jpeg", "questionId": 65718,
   "question": "...", "answers": ["..."]}
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="answers",
           id_key="questionId", lower_references=True)
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=3, wd=1e-6, label_smoothing=0.4),
    448: common.Hparams(batch_size=128, lr=1e-5, epochs=3, wd=1e-6, label_smoothing=0.4),
    896: common.Hparams(batch_size=32, lr=3e-6, epochs=3, wd=3e-7, label_smoothing=0.4),
}
TRAIN = [common.jsonl("train.jsonl", "vqa", **VQA)]
VAL = common.jsonl("val.jsonl", "vqa", **VQA)
EVALS = {
    "infovqa_val": common.evaluation("vqa", VAL, to_lower=True),  # anls is the metric
    "infovqa_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="infovqa", hparams=HPARAMS, text_len=48, train=TRAIN,
                                evals=EVALS, default_res=896, antialias=True)
