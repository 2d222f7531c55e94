"""COCO captions (big_vision `cococap`): `caption en` -> one caption; CIDEr with beam 2, and
NoCaps validation 0-shot (the project's `nocaps` builder).

  python train.py --config configs/transfers/cococap.py:res=224 --workdir DIR \
      --config.init=pt_224/ --config.tokenizer=tokenizer.model

Data: TFDS `coco_captions` (Karpathy splits: train+restval to train, val to evaluate).
"""

from configs.transfers import common

CAPTION = dict(lang="en", image_key="image", id_key="image/id", captions_key="captions/text")
HPARAMS = {  # res: batch, lr, epochs, wd (the reference's §3)
    224: common.Hparams(batch_size=256, lr=1e-5, epochs=5, wd=1e-6),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=5, wd=1e-6),
}
TRAIN = [common.tfds("coco_captions", "train+restval", "caption", **CAPTION)]
VAL = common.tfds("coco_captions", "val", "caption", **CAPTION)
EVALS = {
    "cococap_val": common.evaluation("cider", VAL, sampler="beam", num_beams=2),
    "nocaps_val": common.evaluation("cider", common.tfds("nocaps", "validation", "caption",
                                                         **CAPTION), sampler="beam", num_beams=2),
    "cococap_val_pplx": common.perplexity(VAL),
}


def get_config(arg=None):
  return common.transfer_config(arg, name="cococap", hparams=HPARAMS, text_len=32, train=TRAIN,
                                evals=EVALS)
