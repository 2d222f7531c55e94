"""Training: the only layer that composes models, data, sharding and checkpoints.

loss.py: big_vision's loss (vocab-chunked cross-entropy, per-example then batch mean).
optimizer.py: big_vision's optax chain (clip, optimizer, lr, multipliers, decoupled weight decay,
schedule, freezing) from typed configs.
"""

from paligemma_jax.training.loss import (ShiftedText, bv_loss, hf_loss, shift_for_loss,
                                         token_losses)
from paligemma_jax.training.optimizer import (WD_PATTERN, OptimizerConfig, ScheduleConfig,
                                              frozen_mask, learning_rate, make_optimizer,
                                              make_schedule, optimizer_step, param_paths)
from paligemma_jax.training.config import (MeshSettings, ModelSettings, TrainConfig,
                                           model_config, parse_train_config, validate)
from paligemma_jax.training.state import (TrainState, abstract_state, init_state,
                                          load_pretrained, resample_posemb, state_from_params,
                                          state_shardings)
from paligemma_jax.training.step import StepSettings, batch_loss, loss_and_grads, make_train_step
from paligemma_jax.training.predictor import Predictor
from paligemma_jax.training.trainer import NonFiniteError, initialize_distributed, train

__all__ = [
    "MeshSettings", "ModelSettings", "TrainConfig", "model_config", "parse_train_config",
    "validate", "TrainState", "abstract_state", "init_state", "load_pretrained",
    "resample_posemb", "state_from_params", "state_shardings", "StepSettings", "batch_loss",
    "loss_and_grads", "make_train_step", "Predictor", "NonFiniteError",
    "initialize_distributed", "train",
    "ShiftedText", "bv_loss", "hf_loss", "shift_for_loss", "token_losses",
    "WD_PATTERN", "OptimizerConfig", "ScheduleConfig", "frozen_mask", "learning_rate",
    "make_optimizer", "make_schedule", "optimizer_step", "param_paths",
]
