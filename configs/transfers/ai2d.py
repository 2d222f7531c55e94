"""AI2D (big_vision `ai2d`): `answer en  {question} choose from: {c1} \\t {c2} ...` -> the correct
choice; exact match on test, greedy.

Data: the project's `ai2d` builder (train / test).
"""

from configs.transfers import common

MC = dict(lang="en", image_key="image", question_key="question", choices_key="choices",
          correct_index_key="answer_index", id_key="question_id")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=10, wd=1e-6),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=10, wd=1e-6),
}
TRAIN = [common.tfds("ai2d", "train", "multiple_choice", **MC)]
TEST = common.tfds("ai2d", "test", "multiple_choice", **MC)
EVALS = {
    "ai2d_test": common.evaluation("vqa", TEST, single_answer=True),
    "ai2d_test_pplx": common.perplexity(TEST),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="ai2d", hparams=HPARAMS, text_len=128, train=TRAIN,
                                evals=EVALS)
