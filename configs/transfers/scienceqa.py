"""ScienceQA-IMG (big_vision `science_qa`):
`Question: {q}\\nContext: {hint}\\nOptions: (A) ..., (B) ...\\nAnswer:` -> `The answer is X.`
(options shuffled in training); the answer letter's accuracy on test, greedy. ViT frozen.
Default res 448 (big_vision's default).

Data: the project's `science_qa` builder (the task's defaults read its fields).
"""

from configs.transfers import common

HPARAMS = {
    224: common.Hparams(batch_size=128, lr=1e-5, epochs=20, freeze_vit=True),
    448: common.Hparams(batch_size=128, lr=1e-5, epochs=20, freeze_vit=True),
}
TRAIN = [common.tfds("science_qa", "train", "science_qa")]
TEST = common.tfds("science_qa", "test", "science_qa")
EVALS = {
    "scienceqa_test": common.evaluation("scienceqa", TEST),
    "scienceqa_test_pplx": common.perplexity(TEST),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="science_qa", hparams=HPARAMS, text_len=512,
                                train=TRAIN, evals=EVALS, default_res=448)
