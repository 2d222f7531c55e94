"""ChartQA (big_vision `chartqa`), the mixture of human-written and augmented questions weighted
by their sizes (human 7,398 : augmented 20,901, i.e. 0.2614 / 0.7386): `{question}` -> the
answer; relaxed accuracy (lower-cased), greedy, on each test split.

big_vision's default res is 896, which has no published result: the published ones are 224 and
448 (default 224 here). Data: the project's `chartqa` builder, configs `human` and `augmented`.
"""

from configs.transfers import common

QA = dict(image_key="image", question_key="question", answers_key="answers", id_key="question_id")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=30, wd=1e-6, label_smoothing=0.2,
                        llm_dropout=0.1),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=30, wd=1e-6, label_smoothing=0.2,
                        llm_dropout=0.1),
}
TRAIN = [
    common.tfds("chartqa", "train", "question_only", config="human", weight=7398, **QA),
    common.tfds("chartqa", "train", "question_only", config="augmented", weight=20901, **QA),
]
HUMAN = common.tfds("chartqa", "test", "question_only", config="human", **QA)
AUGMENTED = common.tfds("chartqa", "test", "question_only", config="augmented", **QA)
EVALS = {
    "chartqa_human_test": common.evaluation("chartqa", HUMAN, to_lower=True),
    "chartqa_augmented_test": common.evaluation("chartqa", AUGMENTED, to_lower=True),
    "chartqa_human_test_pplx": common.perplexity(HUMAN),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="chartqa", hparams=HPARAMS, text_len=48, train=TRAIN,
                                evals=EVALS, antialias=True)
