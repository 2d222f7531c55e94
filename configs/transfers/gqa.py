"""GQA (big_vision `gqa`): `answer en {question}` -> the answer; exact match on test-dev
(balanced), greedy. At 448 the ViT (and projector) are frozen, as published.

Data: the project's `gqa` builder, config `balanced`.
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="answer",
           id_key="question_id")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=1),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=1, freeze_vit=True),
}
TRAIN = [common.tfds("gqa", "train_balanced", "vqa", config="balanced", **VQA)]
TESTDEV = common.tfds("gqa", "testdev_balanced", "vqa", config="balanced", **VQA)
EVALS = {
    "gqa_testdev": common.evaluation("vqa", TESTDEV, single_answer=True),
    "gqa_testdev_pplx": common.perplexity(TESTDEV),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="gqa", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS)
