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

__all__ = [
    "ShiftedText", "bv_loss", "hf_loss", "shift_for_loss", "token_losses",
    "WD_PATTERN", "OptimizerConfig", "ScheduleConfig", "frozen_mask", "learning_rate",
    "make_optimizer", "make_schedule", "optimizer_step", "param_paths",
]
