"""What the trainer records: metrics.jsonl + TensorBoard event files, and the MFU arithmetic.

    writer = MetricsWriter(workdir / "metrics.jsonl", resume_step)  # process 0 writes, others not
    writer.write({"step": 10, "train_loss": 1.2, ...})
    flops = train_flops_per_example(model_config, text_len, num_images)
    peak = peak_flops_per_device(jax.devices()[0].device_kind)   # 0.0 when unknown

FLOP convention (shared/reference/performance.md §1, the project standard):
  model FLOPs per training example = 3 x forward FLOPs (forward + backward; rematerialisation is
  not counted: this is MFU, not HFU). Forward FLOPs of one example with I images of P patches each
  and T text positions (S = I * P + T, T = config.input.text_len):
    SigLIP    2 * P_vit * I * P + 4 * P^2 * W * L_vit * I,
              P_vit = L_vit * (4 W^2 + 2 W M) + patch^2 * 3 * W   (the weight matmuls)
    projector 2 * W * D * I * P
    LLM       2 * P_llm * S + 4 * S^2 * N * H * L   (attention counted in full, not halved),
              P_llm = L * (2 N H D + 2 K H D + 3 D F)
    LM head   2 * V * D * T
  The embedding gather, norms, softmax, RoPE, biases and elementwise ops count 0. Frozen or LoRA
  weights change nothing here: the count is a property of the architecture and the shapes.

MFU = model FLOPs per step / step time / (devices x dense bf16 peak per device).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax

from paligemma_jax.models import PaliGemmaConfig

# Dense bf16 peak per device in TFLOP/s (vendor figures), matched against the lower-cased
# `jax.Device.device_kind` in this order (the first substring found wins). H100/H200/v5e/v5p are
# those of performance.md; TPU v4, v6e and A100 are their vendors' published figures.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("v6 lite", 918.0), ("v6e", 918.0),   # TPU v6e (Trillium); jax names it "TPU v6 lite"
    ("v5 lite", 197.0), ("v5e", 197.0),   # TPU v5e; jax names it "TPU v5 lite"
    ("v5p", 459.0), ("tpu v5", 459.0),    # TPU v5p; jax names it "TPU v5"
    ("tpu v4", 275.0),
    ("h200", 989.0),
    ("h100 pcie", 756.0),
    ("h100", 989.0),                      # SXM ("NVIDIA H100 80GB HBM3")
    ("a100", 312.0),
)


def peak_flops_per_device(device_kind: str, override_tflops: float = 0.0) -> float:
  """Dense bf16 peak FLOP/s of one device: `override_tflops` * 1e12 when > 0, else the table's
  entry for `device_kind`, else 0.0 (unknown, e.g. a CPU: no MFU is reported)."""
  if override_tflops > 0:
    return override_tflops * 1e12
  kind = device_kind.lower()
  for pattern, tflops in PEAK_TFLOPS:
    if pattern in kind:
      return tflops * 1e12
  return 0.0


def train_flops_per_example(model: PaliGemmaConfig, text_len: int, num_images: int = 1) -> float:
  """Model FLOPs of one training example (3 x forward) in the convention of the module docstring.

  `text_len`: the text positions per row (prefix + suffix, padding included: the step computes
  on them); `num_images`: images per example, each of `model.vision.num_patches` tokens.
  """
  v, t = model.vision, model.text
  patches = v.num_patches
  image_tokens = num_images * patches
  seq = image_tokens + text_len
  vit_params = v.depth * (4 * v.width**2 + 2 * v.width * v.mlp_dim) + v.patch_size**2 * 3 * v.width
  vision = num_images * (2 * vit_params * patches + 4 * patches**2 * v.width * v.depth)
  projector = 2 * v.width * t.width * image_tokens
  llm_params = t.depth * (2 * t.num_heads * t.head_dim * t.width
                          + 2 * t.num_kv_heads * t.head_dim * t.width + 3 * t.width * t.mlp_dim)
  llm = 2 * llm_params * seq + 4 * seq**2 * t.num_heads * t.head_dim * t.depth
  head = 2 * t.vocab_size * t.width * text_len
  return 3.0 * float(vision + projector + llm + head)


def throughput(flops_per_example: float, examples_per_s: float, num_devices: int,
               peak_flops: float) -> dict[str, float]:
  """{"tflops_per_s_per_device", and "mfu" when the peak is known (> 0)}."""
  per_device = flops_per_example * examples_per_s / num_devices
  out = {"tflops_per_s_per_device": per_device / 1e12}
  if peak_flops > 0:
    out["mfu"] = per_device / peak_flops
  return out


class MetricsWriter:
  """Process 0 writes each record to `path` (metrics.jsonl, one JSON object a line) and its numeric
  values as TensorBoard scalars in the folder tensorboard/ beside it (tag = the record's key, at
  the record's "step"); `tensorboard --logdir WORKDIR` shows them.

  On resume, metrics.jsonl keeps only the records up to the restored step; the event files are only
  appended to (TensorBoard shows the latest value written for a re-run step).
  """

  def __init__(self, path: str, resume_step: int):
    self.path = path
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    from tensorboard.summary import Writer  # numpy-only writer: needs no TensorFlow
    self._tb = Writer(os.path.join(os.path.dirname(path), "tensorboard"))

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    step = int(record["step"])
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(key, value, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


__all__ = ["PEAK_TFLOPS", "MetricsWriter", "peak_flops_per_device", "throughput",
           "train_flops_per_example"]
