"""AI2D (big_vision `ai2d`): `answer en  {question} choose from: {c1} \\t {c2} ...` -> the correct
choice; exact match on test, greedy.

Data: the project's `ai2d` builder (train / test; the task's defaults read its fields).
"""

from configs.transfers import common

HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=10, wd=1e-6),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=10, wd=1e-6),
}
TRAIN = [common.tfds("ai2d", "train", "multiple_choice")]
TEST = common.tfds("ai2d", "test", "multiple_choice")
EVALS = {
    "ai2d_test": common.evaluation("vqa", TEST, single_answer=True, image_antialias=False),
    "ai2d_test_pplx": common.perplexity(TEST),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="ai2d", hparams=HPARAMS, text_len=128, train=TRAIN,
                                evals=EVALS, antialias=True)
