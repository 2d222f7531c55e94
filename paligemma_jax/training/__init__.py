"""Training: the only layer that composes models, data, sharding and checkpoints.

loss.py: big_vision's loss (vocab-chunked cross-entropy, per-example then batch mean).
optimizer.py: big_vision's optax chain (clip, optimizer, lr, multipliers, decoupled weight decay,
schedule, freezing) from typed configs.
metrics.py: metrics.jsonl + TensorBoard writing, the MFU's FLOP count and peak table.
pretrained.py: pretrained params (Orbax, HF, npz) read straight into their shards.
"""

from paligemma_jax.training.loss import (ShiftedText, bv_loss, hf_loss, shift_for_loss,
                                         token_losses)
from paligemma_jax.training.metrics import (MetricsWriter, peak_flops_per_device, throughput,
                                            train_flops_per_example)
from paligemma_jax.training.optimizer import (WD_PATTERN, OptimizerConfig, ScheduleConfig,
                                              frozen_mask, learning_rate, make_optimizer,
                                              make_schedule, optimizer_step, param_paths)
from paligemma_jax.training.state import (TrainState, abstract_state, init_state,
                                          load_pretrained, resample_posemb, state_from_params,
                                          state_shardings)
from paligemma_jax.training.step import StepSettings, batch_loss, loss_and_grads, make_train_step
from paligemma_jax.training.predictor import Predictor

# The config boundary (through the evaluation configs) and the trainer read data through Grain
# and TFDS: they are imported on first use, so that the step, state, loss and optimizer import
# where those are absent (the accelerator image, the benchmarks).
_CONFIG_NAMES = ("MeshSettings", "ModelSettings", "TrainConfig", "model_config",
                 "parse_train_config", "validate")
_TRAINER_NAMES = ("NonFiniteError", "initialize_distributed", "train")
_PRETRAINED_NAMES = ("place_source", "read_sharded")  # the converter, imported on first use


def __getattr__(name: str):
  # pylint: disable=import-outside-toplevel
  if name in _CONFIG_NAMES:
    from paligemma_jax.training import config
    return getattr(config, name)
  if name in _TRAINER_NAMES:
    from paligemma_jax.training import trainer
    return getattr(trainer, name)
  if name in _PRETRAINED_NAMES:
    from paligemma_jax.training import pretrained
    return getattr(pretrained, name)
  raise AttributeError(f"module 'paligemma_jax.training' has no attribute {name!r}")


__all__ = [
    "MeshSettings", "ModelSettings", "TrainConfig", "model_config", "parse_train_config",
    "validate", "TrainState", "abstract_state", "init_state", "load_pretrained",
    "resample_posemb", "place_source", "read_sharded", "state_from_params", "state_shardings",
    "StepSettings", "batch_loss",
    "loss_and_grads", "make_train_step", "Predictor", "NonFiniteError",
    "initialize_distributed", "train",
    "ShiftedText", "bv_loss", "hf_loss", "shift_for_loss", "token_losses",
    "WD_PATTERN", "OptimizerConfig", "ScheduleConfig", "frozen_mask", "learning_rate",
    "make_optimizer", "make_schedule", "optimizer_step", "param_paths",
    "MetricsWriter", "peak_flops_per_device", "throughput", "train_flops_per_example",
]
