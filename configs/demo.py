"""The demo: a tiny PaliGemma trained from random init on generated coloured shapes, on a CPU.

  python train.py --config configs/demo.py --workdir /tmp/demo_run
  python train.py --config configs/demo.py:/tmp/shapes --workdir /tmp/run --config.total_steps=50

The argument is the folder of the toy task (default /tmp/paligemma_demo_data); it is generated
there on first use (paligemma_jax/training/demo_data.py: images, train/test JSONL and the stand-in
tokenizer). Rows: `caption en` -> "a red circle on the left", `answer en what colour is the
circle?` -> "red", `detect red circle` -> four <loc> tokens + "red circle".
"""

import ml_collections

from paligemma_jax.training.demo_data import ensure_demo_data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  paths = ensure_demo_data(arg or "/tmp/paligemma_demo_data")
  c = ml_collections.ConfigDict()
  c.init = "random"
  c.tokenizer = paths["tokenizer"]
  c.image_method = "hf"
  c.model = dict(
      variant="",  # a custom size: ~1M parameters
      vision=dict(width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=14, image_size=56),
      text=dict(version=1, width=128, depth=2, mlp_dim=256, num_heads=4, num_kv_heads=1,
                head_dim=32, vocab_size=0),  # 0: the tokenizer's size, padded to 64
      image_token_id=-1,  # -1: the tokenizer's <image> id
      dtype="float32", remat="none", llm_dropout=0.0)
  c.input = dict(members=[dict(jsonl=paths["train"])], batch_size=32, text_len=24, seed=0,
                 read_threads=2, prefetch_buffer=64)
  c.optimizer = dict(name="adam", lr=3e-3, wd=0.0, grad_clip_norm=1.0,
                     schedule=dict(name="cosine", warmup_percent=0.05))
  c.total_steps = 1500
  c.epochs = 0.0
  c.mesh = dict(data=-1, fsdp=1, model=1)
  c.micro_batches = 1
  c.label_smoothing = 0.0
  c.log_every = 10
  c.checkpoint_every = 500
  c.eval_every = 0
  c.keep_checkpoints = 2
  c.seed = 0
  c.on_nonfinite = "stop"
  return c
