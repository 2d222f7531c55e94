"""TextCaps (big_vision `textcaps`): `caption en` -> a caption (lower-cased); CIDEr with beam 3.

No builder here: JSONL members `train.jsonl` / `val.jsonl` in jsonl_dir (default ~/data/textcaps),
one row per image, images relative to the file:
  {"image": "train_images/011e7e629fb9ae7b.jpg", "image_id": "011e7e629fb9ae7b",
   "captions": ["Five Listerine Zero mouthwash bottles on a store shelf", ...]}
(TextCaps_0.1_{train,val}.json grouped by image_id.)
"""

from configs.transfers import common

CAPTION = dict(lang="en", image_key="image", id_key="image_id", captions_key="captions")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=5, wd=1e-6),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=5, wd=1e-6),
}
TRAIN = [common.jsonl("train.jsonl", "caption", **CAPTION, lower_references=True)]
VAL = common.jsonl("val.jsonl", "caption", **CAPTION)
EVALS = {
    "textcaps_val": common.evaluation("cider", VAL, sampler="beam", num_beams=3),
    "textcaps_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="textcaps", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS)
