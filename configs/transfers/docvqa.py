"""DocVQA (big_vision `docvqa`): `{question}` -> an answer; ANLS (lower-cased; accuracy logged
too), greedy, on validation. Trains on train[:-5%] (big_vision's minival hold-out); default res
896 (big_vision's default).

Data: the project's `docvqa` builder.
"""

from configs.transfers import common

QA = dict(image_key="image", question_key="question", answers_key="answers", id_key="question_id")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=10, wd=1e-6),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=10, wd=1e-6),
    896: common.Hparams(batch_size=256, lr=1e-5, epochs=10, wd=1e-6),
}
TRAIN = [common.tfds("docvqa", "train[:-5%]", "question_only", **QA)]
VAL = common.tfds("docvqa", "validation", "question_only", **QA)
EVALS = {
    "docvqa_val": common.evaluation("vqa", VAL, to_lower=True),  # acc, acc_any and anls
    "docvqa_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="docvqa", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, default_res=896, antialias=True)
