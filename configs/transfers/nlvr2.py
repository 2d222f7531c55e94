"""NLVR2 (big_vision `nlvr2`): `answer en {sentence}` -> "True" / "False" about two images;
exact match, greedy.

big_vision stacks the two images into one; here each row gives the model both images
(`num_images=2`), so the prompt has 2 x 256 image tokens at 224. A JSONL row's images are one
list-valued `image` field, read by the `template` task (the `multi_image_vqa` task wants two
image fields, as a TFDS builder would give).
No builder here: JSONL `train.jsonl` / `dev.jsonl` in jsonl_dir (default ~/data/nlvr2), the
release's rows with both image paths:
  {"image": ["train/img/0/train-10171-0-img0.png", "train/img/0/train-10171-0-img1.png"],
   "identifier": "train-10171-0-0", "sentence": "...", "label": "True"}
"""

from configs.transfers import common

NLVR2 = dict(prompt="answer en {sentence}", image_keys=["image"], reference_key="label",
             id_key="identifier")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=3, wd=1e-6),
    448: common.Hparams(batch_size=256, lr=3e-6, epochs=10, wd=3e-7),
}
TRAIN = [common.jsonl("train.jsonl", "template", **NLVR2)]
DEV = common.jsonl("dev.jsonl", "template", **NLVR2)
EVALS = {
    "nlvr2_dev": common.evaluation("vqa", DEV, single_answer=True),
    "nlvr2_dev_pplx": common.perplexity(DEV),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="nlvr2", hparams=HPARAMS, text_len=64, train=TRAIN,
                                evals=EVALS, num_images=2)
