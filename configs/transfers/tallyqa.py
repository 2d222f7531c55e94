"""TallyQA (big_vision `tallyqa`): `answer en {question}` -> the count; TallyQA accuracy overall,
simple and complex (evaluators.md §8), greedy, on test.

Data: the project's `tallyqa` builder (train / test).
"""

from configs.transfers import common

COUNT = dict(lang="en", image_key="image", question_key="question", answers_key="answer",
             id_key="question_id", field_keys=["issimple"])
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=2),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=2, wd=1e-6),
}
TRAIN = [common.tfds("tallyqa", "train", "count", **COUNT)]
TEST = common.tfds("tallyqa", "test", "count", **COUNT)
EVALS = {
    "tallyqa_test": common.evaluation("tallyqa", TEST, issimple_key="issimple"),
    "tallyqa_test_pplx": common.perplexity(TEST),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="tallyqa", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, antialias=True)
