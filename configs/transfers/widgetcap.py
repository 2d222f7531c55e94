"""WidgetCap (big_vision `widgetcap`): `caption en` -> the widget's description; CIDEr, greedy.

No builder here: JSONL `train.jsonl` / `val.jsonl` in jsonl_dir (default ~/data/widgetcap). As
big_vision does, the widget's bounding box must already be drawn on the screenshot as a red box:
  {"image": "boxed/12345_3.png", "image_id": "12345_3", "captions": ["go to settings", ...]}
"""

from configs.transfers import common

CAPTION = dict(lang="en", image_key="image", id_key="image_id", captions_key="captions")
HPARAMS = {
    224: common.Hparams(batch_size=64, lr=3e-6, epochs=4, wd=3e-7, label_smoothing=0.1,
                        llm_dropout=0.1),
    448: common.Hparams(batch_size=64, lr=3e-6, epochs=4, wd=3e-7, label_smoothing=0.1,
                        llm_dropout=0.1),
}
TRAIN = [common.jsonl("train.jsonl", "caption", **CAPTION)]
VAL = common.jsonl("val.jsonl", "caption", **CAPTION)
EVALS = {
    "widgetcap_val": common.evaluation("cider", VAL),
    "widgetcap_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="widgetcap", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS, antialias=True)
