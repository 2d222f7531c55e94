"""training/metrics.py: the FLOP count behind the MFU (hand count and performance.md's table), the
peak table, and MetricsWriter's metrics.jsonl + TensorBoard files across a resume."""

from __future__ import annotations

import json

import pytest

from paligemma_jax.models import GemmaConfig, PaliGemmaConfig, SigLIPConfig, get_variant
from paligemma_jax.training import metrics


def test_flops_of_a_tiny_config_match_a_hand_count():
  model = PaliGemmaConfig(
      vision=SigLIPConfig(width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=14,
                          image_size=28),  # 2 x 2 = 4 patches
      text=GemmaConfig(width=32, depth=1, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16,
                       vocab_size=100))
  # SigLIP, per image token: q k v o 4*32*32 + mlp 2*32*64 + patch embedding 14*14*3*32 = 27,008
  # weights, 2 FLOPs each, 4 tokens; attention 4 * 4^2 * 32 * 1 layer.
  vision = 2 * 27_008 * 4 + 4 * 4**2 * 32
  projector = 2 * 32 * 32 * 4
  # Gemma, per position (S = 4 + 20): q, o 2 * (2*16*32) + k, v 2 * (1*16*32) + mlp 3*32*64 =
  # 9,216 weights; attention 4 * 24^2 * 2 heads * 16 * 1 layer, in full.
  llm = 2 * 9_216 * 24 + 4 * 24**2 * 2 * 16
  head = 2 * 100 * 32 * 20  # the 20 text positions
  flops = metrics.train_flops_per_example(model, text_len=20)
  assert flops == 3 * (vision + projector + llm + head)
  # A second image adds its SigLIP and projector FLOPs and 4 positions to the LLM's sequence.
  llm2 = 2 * 9_216 * 28 + 4 * 28**2 * 2 * 16
  assert metrics.train_flops_per_example(model, text_len=20, num_images=2) == 3 * (
      2 * vision + 2 * projector + llm2 + head)


@pytest.mark.parametrize("variant, text_len, teraflops", [
    ("paligemma_3b_224", 128, 5.70), ("paligemma_3b_448", 512, 23.86),
    ("paligemma_3b_896", 512, 82.24), ("paligemma2_3b_224", 128, 5.87),
    ("paligemma2_10b_448", 512, 87.36), ("paligemma2_28b_896", 512, 788.3),
    ("paligemma2_10b_224", 32, 15.39),
])
def test_flops_of_the_variants_match_the_reference_table(variant, text_len, teraflops):
  """shared/reference/performance.md §1, 'Training FLOPs per example'."""
  flops = metrics.train_flops_per_example(get_variant(variant), text_len)
  assert flops / 1e12 == pytest.approx(teraflops, abs=0.006 * max(1, teraflops / 100))


@pytest.mark.parametrize("kind, tflops", [
    ("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5e", 197), ("TPU v5", 459), ("TPU v5p", 459),
    ("TPU v6 lite", 918), ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756),
    ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312), ("cpu", 0), ("TFRT_CPU_0", 0),
])
def test_peak_by_device_kind(kind, tflops):
  assert metrics.peak_flops_per_device(kind) == tflops * 1e12
  assert metrics.peak_flops_per_device(kind, override_tflops=100.0) == 100e12


def test_throughput_reports_mfu_only_with_a_known_peak():
  # 8 devices, 4e12 FLOPs per example, 20 examples/s: 1e13 FLOP/s per device.
  assert metrics.throughput(4e12, 20.0, 8, 0.0) == {"tflops_per_s_per_device": 10.0}
  assert metrics.throughput(4e12, 20.0, 8, 40e12) == pytest.approx(
      {"tflops_per_s_per_device": 10.0, "mfu": 0.25})


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.util import tensor_util
  events = event_accumulator.EventAccumulator(str(folder))
  events.Reload()
  return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
                for e in events.Tensors(tag)] for tag in events.Tags()["tensors"]}


def test_metrics_writer_truncates_jsonl_on_resume_and_appends_event_files(tmp_path):
  path = tmp_path / "metrics.jsonl"
  writer = metrics.MetricsWriter(str(path), 0)
  for step in (1, 2, 3):
    writer.write({"step": step, "train_loss": 1.0 / step, "input/drawn/a": 8 * step})
  writer.write({"step": 3, "eval/acc": 0.5})
  writer.close()
  writer = metrics.MetricsWriter(str(path), 2)  # resumed from the checkpoint at step 2
  writer.write({"step": 3, "train_loss": 0.25})
  writer.close()
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  assert rows == [{"step": 1, "train_loss": 1.0, "input/drawn/a": 8},
                  {"step": 2, "train_loss": 0.5, "input/drawn/a": 16},
                  {"step": 3, "train_loss": 0.25}]
  scalars = _scalars(tmp_path / "tensorboard")
  # Both event files are read (TensorBoard orders them by name: time, host, pid, a per-process
  # counter, which in one process may sort "10" before "9", so the order is not asserted).
  train_loss = scalars["train_loss"]
  assert len(train_loss) == 4 and {(s, round(v, 6)) for s, v in train_loss} == {
      (1, 1.0), (2, 0.5), (3, round(1 / 3, 6)), (3, 0.25)}
  assert scalars["eval/acc"] == [(3, 0.5)] and scalars["input/drawn/a"][-1] == (3, 24.0)
