"""Screen2Words (big_vision `screen2words`): `caption en` -> a screen summary; CIDEr, greedy.

No builder here: JSONL `train.jsonl` / `val.jsonl` in jsonl_dir (default ~/data/screen2words),
one row per screenshot (RICO), images relative to the file:
  {"image": "rico/12345.jpg", "image_id": "12345", "captions": ["page displaying ...", ...]}
"""

from configs.transfers import common

CAPTION = dict(lang="en", image_key="image", id_key="image_id", captions_key="captions")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=10, label_smoothing=0.2,
                        llm_dropout=0.3),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=10, label_smoothing=0.2,
                        llm_dropout=0.3),
}
TRAIN = [common.jsonl("train.jsonl", "caption", **CAPTION)]
VAL = common.jsonl("val.jsonl", "caption", **CAPTION)
EVALS = {
    "screen2words_val": common.evaluation("cider", VAL),
    "screen2words_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="screen2words", hparams=HPARAMS, text_len=24,
                                train=TRAIN, evals=EVALS)
