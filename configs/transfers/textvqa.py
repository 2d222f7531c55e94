"""TextVQA (big_vision `textvqa`): `answer en {question}` -> an answer; official VQAv2 accuracy
(TextVQA has no answer types: all count as "other"), greedy, on validation.

Data: the project's `textvqa` builder.
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="answers",
           id_key="question_id")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=3e-6, epochs=5),
    448: common.Hparams(batch_size=256, lr=3e-6, epochs=10, wd=3e-7),
    896: common.Hparams(batch_size=256, lr=3e-6, epochs=10),
}
TRAIN = [common.tfds("textvqa", "train", "vqa", **VQA)]
VAL = common.tfds("textvqa", "validation", "vqa", **VQA)
EVALS = {
    "textvqa_val": common.evaluation("vqav2", VAL),
    "textvqa_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="textvqa", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, antialias=True)
