"""RefCOCO / RefCOCO+ / RefCOCOg segmentation (big_vision `refcoco_seg`): `{referring sentence}`
-> 4 <loc> + 16 <seg> tokens; mIoU and box accuracy, greedy, on each validation split.
Default res 448 (big_vision's default).

Data: TFDS `ref_coco` (catalogue; refcoco_unc, refcocoplus_unc, refcocog_umd). The paper trains
on big_vision's combined set `ref_coco_bv/refcocox_combined:1.4.0` (the three, minus every
val/test image), which a user builds with big_vision's builder:
--config.input.members[0].name=ref_coco_bv/refcocox_combined:1.4.0. The default here is RefCOCO's
own train split (no val/test leakage). Training targets need the VQ-VAE's encoder (each mask's 16
<seg> codes) and the evals its decoder: `--config.input.vqvae=vae-oid.npz` sets both (one
ml_collections FieldReference shared by input.vqvae and every eval's options.vqvae).
"""

import ml_collections

from configs.transfers import common

REFEXP = dict(image_key="image", boxes_key="objects/bbox", sentences_key="objects/refexp/raw",
              ids_key="objects/refexp/refexp_id", image_id_key="image/id", keyword="")
HPARAMS = {
    224: common.Hparams(batch_size=256, lr=3e-5, epochs=100, label_smoothing=0.3,
                        llm_dropout=0.1),
    448: common.Hparams(batch_size=256, lr=1e-5, epochs=100, label_smoothing=0.3),
    896: common.Hparams(batch_size=64, lr=1e-5, epochs=100, label_smoothing=0.3),
}
TRAIN = [common.tfds("ref_coco", "train", "refexp_segment", config="refcoco_unc", **REFEXP)]


def _val(config: str, vqvae: ml_collections.FieldReference) -> dict:
  data = common.tfds("ref_coco", "validation", "refexp_segment", config=config, keep_masks=True,
                     **REFEXP)
  return common.evaluation("refcoco_seg", data, vqvae=vqvae)


def get_config(arg=None):
  vqvae = ml_collections.FieldReference("")  # vae-oid.npz (or its Orbax dir)
  evals = {"refcoco_val": _val("refcoco_unc", vqvae),
           "refcocoplus_val": _val("refcocoplus_unc", vqvae),
           "refcocog_val": _val("refcocog_umd", vqvae)}
  c = common.transfer_config(arg, name="refcoco", hparams=HPARAMS, text_len=48, train=TRAIN,
                             evals=evals, default_res=448)
  c.input.vqvae = vqvae
  return c
