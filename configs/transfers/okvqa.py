"""OK-VQA (big_vision `okvqa`): `answer en {question}` -> an answer; VQA accuracy min(1, #/3),
greedy, on validation.

Data: the project's `okvqa` builder.
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="answers",
           id_key="question_id")
HPARAMS = {
    224: common.Hparams(batch_size=128, lr=5e-6, epochs=10),
    448: common.Hparams(batch_size=128, lr=5e-6, epochs=10),
}
TRAIN = [common.tfds("okvqa", "train", "vqa", **VQA)]
VAL = common.tfds("okvqa", "validation", "vqa", **VQA)
EVALS = {
    "okvqa_val": common.evaluation("vqa", VAL),
    "okvqa_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="okvqa", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, antialias=True)
