"""VQAv2 (big_vision `vqav2`): `answer en {question}` -> one of the answers; official VQAv2
accuracy per answer type, greedy, on a 10,240-question minival held out of validation.

Data: the project's `vqav2` builder (python -m paligemma_jax.data.build_dataset --dataset vqav2).
"""

from configs.transfers import common

VQA = dict(lang="en", image_key="image", question_key="question", answers_key="answers",
           id_key="question_id", field_keys=["answer_type"])
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=10, wd=1e-6),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=10, wd=0.0),
}
TRAIN = [common.tfds("vqav2", "train+validation[:-10240]", "vqa", **VQA)]
MINIVAL = common.tfds("vqav2", "validation[-10240:]", "vqa", **VQA)
EVALS = {
    "vqav2_minival": common.evaluation("vqav2", MINIVAL, answer_type_key="answer_type"),
    "vqav2_minival_pplx": common.perplexity(MINIVAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="vqav2", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, antialias=True)
