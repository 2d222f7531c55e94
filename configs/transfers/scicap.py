"""SciCap (big_vision `scicap`, first sentence, no sub-figures): `caption en` -> the figure's
caption; CIDEr and BLEU-4, greedy.

No builder here: JSONL `train.jsonl` / `val.jsonl` in jsonl_dir (default ~/data/scicap) from
SciCap's First-Sentence / No-Subfig split, images relative to the file:
  {"image": "SciCap-No-Subfig-Img/train/1001.0025v1-Figure1-1.png",
   "image_id": "1001.0025v1-Figure1-1", "captions": ["The first sentence of the caption."]}
"""

from configs.transfers import common

CAPTION = dict(lang="en", image_key="image", id_key="image_id", captions_key="captions")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=3e-5, epochs=80, label_smoothing=0.1,
                        llm_dropout=0.1),
    448: common.Hparams(batch_size=256, lr=3e-5, epochs=80, label_smoothing=0.1,
                        llm_dropout=0.1),
}
TRAIN = [common.jsonl("train.jsonl", "caption", **CAPTION)]
VAL = common.jsonl("val.jsonl", "caption", **CAPTION)
EVALS = {
    "scicap_val": common.evaluation("cider", VAL),
    "scicap_val_bleu": common.evaluation("bleu", VAL),
    "scicap_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="scicap", hparams=HPARAMS, text_len=96, train=TRAIN,
                                evals=EVALS)
