"""Training on referring segmentation: the `<seg>` codes of each target come from the VQ-VAE
encoder named by `input.vqvae` (big_vision's `refcoco_mask2str`), through the Grain input; a
refexp_segment member without it stops at start-up with one line."""

from __future__ import annotations

import functools
import io
import json
import pickle

import numpy as np
import PIL.Image
import pytest
from absl import flags
from ml_collections import config_flags

tfds = pytest.importorskip("tensorflow_datasets")

from input_fixtures import build
from paligemma_jax.conversion.vqvae import save_vqvae_npz
from paligemma_jax.data.input_config import InputConfig, MemberConfig
from paligemma_jax.data.input_pipeline import TrainInput, open_member
from paligemma_jax.data.processor import Processor
from paligemma_jax.inference.parsers import encode_segmentations, mask_encoder, segmentation_codes
from paligemma_jax.models.vqvae import init_vqvae_params
from paligemma_jax.training import config as config_lib
from paligemma_jax.training import trainer
from paligemma_jax.training.trainer import mask_target_encoder

NUM, IMAGE_SIZE, IMAGE_TOKENS, TEXT_LEN = 4, 8, 4, 40
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def box(i: int) -> tuple[float, float, float, float]:
  return (0.1 * i / NUM, 0.2, 0.5 + 0.1 * i, 0.9)  # ymin, xmin, ymax, xmax


def mask(i: int) -> np.ndarray:
  """uint8 [24, 32, 1] (0 / 255): a different blob per example."""
  yy, xx = np.mgrid[:24, :32]
  inside = (yy - 6 - 3 * i) ** 2 + (xx - 10 - 4 * i) ** 2 < (5 + i) ** 2
  return (255 * inside).astype(np.uint8)[..., None]


def png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  PIL.Image.fromarray(array).save(out, "png")
  return out.getvalue()


def mask_png(i: int) -> bytes:
  """As TFDS's ref_coco builder writes masks: a 1-bit PNG of a bool array."""
  return png(mask(i)[..., 0] > 0)


class SegRefs(tfds.core.GeneratorBasedBuilder):
  """ref_coco's layout and mask encoding (one object per image here): image,
  objects/{bbox, mask, refexp}."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "image/id": np.int64,
        "objects": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(),
            "mask": tfds.features.Image(encoding_format="png"),  # as ref_coco declares it
            "refexp": tfds.features.Sequence({"raw": tfds.features.Text(),
                                              "refexp_id": np.int64}),
        }),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(NUM):
      image = np.full((24, 32, 3), 40 * i, np.uint8)
      yield i, {"image": png(image), "image/id": i, "objects": [{
          "bbox": tfds.features.BBox(*box(i)), "mask": mask_png(i),
          "refexp": [{"raw": f"blob {i}", "refexp_id": i}]}]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("segrefs")
  build(SegRefs, folder)
  return str(folder)


@pytest.fixture(scope="module")
def vqvae():
  return init_vqvae_params(seed=1)


def input_config(data_dir, **kw) -> InputConfig:
  member = MemberConfig(name="seg_refs", data_dir=data_dir, task="refexp_segment",
                        task_options={"keyword": "", "image_id_key": "image/id"})
  return InputConfig(members=(member,), batch_size=NUM, text_len=TEXT_LEN, shuffle=False,
                     read_threads=1, prefetch_buffer=2, **kw)


def test_targets_are_the_boxes_and_the_encoders_codes(data_dir, vqvae, standin_tokenizer):
  processor = Processor(standin_tokenizer, IMAGE_SIZE, IMAGE_TOKENS)
  encode = functools.partial(segmentation_codes, encode_fn=mask_encoder(vqvae))
  batch = next(TrainInput(input_config(data_dir), processor, encode_mask=encode))
  targets = []
  rows = [int(round((batch["images"][r].mean() + 1) * 127.5 / 40)) for r in range(NUM)]
  assert sorted(rows) == list(range(NUM))  # one epoch, every example once (image value 40 i)
  for r, i in enumerate(rows):
    target = encode_segmentations([mask(i)[..., 0]], [box(i)], mask_encoder(vqvae))
    want = processor([np.zeros((4, 4, 3), np.uint8)], [f"blob {i}"], [target],
                     padding_side="right", max_length=IMAGE_TOKENS + TEXT_LEN)
    for key in ("tokens", "labels", "mask_loss", "mask_ar"):
      np.testing.assert_array_equal(batch[key][r], want[key][0], err_msg=f"{key} example {i}")
    assert target.count("<seg") == 16 and target.count("<loc") == 4
    targets.append(target)
  assert len(set(targets)) == NUM  # each mask and box gives its own target


def test_without_an_encoder_the_input_stops_at_start_up(data_dir, standin_tokenizer):
  processor = Processor(standin_tokenizer, IMAGE_SIZE, IMAGE_TOKENS)
  with pytest.raises(ValueError, match=r"input.members\[0\].*refexp_segment.*input.vqvae"):
    TrainInput(input_config(data_dir), processor)


def test_the_encoder_from_input_vqvae_reads_the_npz_and_survives_pickling(vqvae, tmp_path,
                                                                          data_dir):
  path = tmp_path / "vae.npz"
  save_vqvae_npz(vqvae, path)
  encode = mask_target_encoder(input_config(data_dir, vqvae=str(path)))
  assert mask_target_encoder(input_config(data_dir)) is None
  again = pickle.loads(pickle.dumps(encode))  # Grain worker processes get it pickled
  want = segmentation_codes(mask(2)[..., 0], box(2), mask_encoder(vqvae))
  assert tuple(encode(mask(2)[..., 0], box(2))) == want
  assert tuple(again(mask(2)[..., 0], box(2))) == want


def test_refcoco_config_sets_encoder_and_evals_with_one_flag_and_checks_it(tmp_path,
                                                                          standin_tokenizer_path):
  argv = ["train.py", f"--config={REPO / 'configs/transfers/refcoco_seg.py'}:res=224",
          f"--config.input.vqvae={tmp_path / 'vae.npz'}"]
  flag_values = flags.FlagValues()  # train.py's --config flag, with the override
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  config = flag_values.config
  config.tokenizer = str(standin_tokenizer_path)
  config.init = "random"
  values = config.to_dict()
  assert {e["options"]["vqvae"] for e in values["evals"].values()} == {config.input.vqvae}
  cfg = config_lib.parse_train_config(values)
  with pytest.raises(ValueError, match=r"^config.input.vqvae .*vae.npz is neither a .npz file"):
    config_lib.validate(cfg, 1)
  config.input.vqvae = ""
  with pytest.raises(ValueError, match=r"members\[0\]: task refexp_segment .*--config.input.vqvae"):
    config_lib.validate(config_lib.parse_train_config(config.to_dict()), 1)


def test_evaluation_rows_keep_each_objects_mask_from_the_tfds_sequence(data_dir):
  """ref_coco stores masks as a sequence of images inside `objects`; an eval member with
  keep_masks reads them (TFDS's NumPy decoding of such sequences used to fail on every row)."""
  member = open_member(MemberConfig(name="seg_refs", data_dir=data_dir, task="refexp_segment",
                                    task_options={"keep_masks": True}))
  seen = set()
  for index in range(NUM):
    (row,) = member.rows(index)
    assert not row.error, row.error
    i = int(row.prefix.rsplit(" ", 1)[-1])  # "segment blob {i}"
    np.testing.assert_array_equal(row.fields["mask"], mask(i)[..., 0])
    seen.add(i)
  assert seen == set(range(NUM))


def test_train_runs_on_referring_segmentation_with_input_vqvae(data_dir, vqvae, tmp_path,
                                                               standin_tokenizer_path):
  """train() end to end on the tiny model: the targets' codes come from input.vqvae's file."""
  from test_trainer import tiny_config  # the trainer tests' tiny model and settings

  save_vqvae_npz(vqvae, tmp_path / "vae.npz")
  config = tiny_config({"tokenizer": str(standin_tokenizer_path), "train": ""}, total_steps=2,
                       checkpoint_every=2, log_every=1)
  config.input = dict(members=[dict(name="seg_refs", data_dir=data_dir, task="refexp_segment",
                                    task_options={"keyword": ""})],
                      batch_size=8, text_len=TEXT_LEN, read_threads=1,  # 8 devices
                      vqvae=str(tmp_path / "vae.npz"))
  trainer.train(config, str(tmp_path / "work"))
  records = [json.loads(line) for line in (tmp_path / "work/metrics.jsonl").read_text().splitlines()]
  losses = [r["train_loss"] for r in records if "train_loss" in r]
  assert len(losses) == 2 and all(np.isfinite(losses))
  assert records[-1]["input/drawn/seg_refs:train"] == 2 * 8
  assert records[-1]["input/skipped/seg_refs:train"] == 0
