"""big_vision's optimizer chain on optax, configured by two frozen dataclasses.

The chain (shared/reference/training_and_tasks.md §2), on the trained (not frozen) params:

  clip_by_global_norm → optimizer (adam / adafactor / sgd) → scale(lr) → lr_mults (regex)
  → add_decayed_weights(wd · mult) (regex) → scale_by_schedule(s) → scale(−1)

so the net update is Δθ = −s(t) · (lr · mult · opt(clip(g)) + wd · mult_wd · θ): weight decay is
decoupled and NOT multiplied by lr, but is multiplied by the schedule s(t) ∈ [0, 1]. ("adamw" is the
one exception, see OptimizerConfig.) Frozen params (regex) get zero updates through
`optax.set_to_zero` in an `optax.multi_transform`: they hold no optimizer state, and their
gradients never enter the clipping norm.

Regexes are full matches against "a/b/c" parameter paths (`param_paths`); where several patterns of
one list match a parameter, the first one wins (big_vision's `make_mask_trees`).

Parameter names. big_vision's default weight-decay pattern `.*/kernel$` selects, in its PaliGemma
tree, exactly the SigLIP tower's matrices (patch embedding, q/k/v/out, MLP) and `img/head/kernel`
(the projector): biases, LayerNorms, the position embedding and every Gemma tensor (`w`,
`gating_einsum`, `linear`, `input_embedding`, `scale`) are spared. This project calls all matrices
`w`, in the LLM as well, so the same set is `WD_PATTERN = "(vision/.*|projector)/w"`:

  big_vision                                        here
  img/embedding/kernel                              vision/patch_embed/w
  img/Transformer/encoderblock/MultiHeadDotProductAttention_0/{query,key,value,out}/kernel
                                                    vision/layers/attn/{q,k,v,out}/w
  img/Transformer/encoderblock/MlpBlock_0/Dense_{0,1}/kernel
                                                    vision/layers/mlp/{fc1,fc2}/w
  img/head/kernel                                   projector/w
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

WD_PATTERN = "(vision/.*|projector)/w"

OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor")
SCHEDULES = ("cosine", "linear", "rsqrt", "constant")
MOMENTUM_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _fail(where: str, message: str) -> None:
  raise ValueError(f"{where}: {message}")


def _check_patterns(where: str, patterns: tuple[str, ...]) -> None:
  for pattern in patterns:
    if pattern.startswith("/"):
      _fail(where, f"{pattern!r}: parameter paths never start with '/' (e.g. 'vision/.*')")
    try:
      re.compile(pattern)
    except re.error as e:
      _fail(where, f"{pattern!r} is not a regular expression ({e})")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
  """s(t) ∈ [0, 1], big_vision's `create_learning_rate_schedule` with base 1.

  With warm-up w, cool-down c and total steps N, p = clip((t − w) / (N − w), 0, 1):
    cosine:   0.5 · (1 + cos(π p))
    linear:   linear_end + (1 − linear_end) · (1 − p) ** power   (big_vision's linear/polynomial)
    rsqrt:    1 / sqrt(1 + (t + rsqrt_shift − w) / rsqrt_timescale) for t ≥ w,
              1 / sqrt(1 + rsqrt_shift / rsqrt_timescale) during warm-up
    constant: 1
  then × min(1, t / w) if w > 0 and × min(1, (N − t) / c) if c > 0. t is optax's count, which
  starts at 0, so the first update has s = 0 whenever there is a warm-up.

  warmup_percent / cooldown_percent (fractions of N, big_vision's `*_percent`) replace the step
  counts; they round to the nearest step, and to at least 1 when positive.
  """
  name: str = "cosine"
  warmup_steps: int = 0
  warmup_percent: float | None = None
  cooldown_steps: int = 0
  cooldown_percent: float | None = None
  linear_end: float = 0.0
  power: float = 1.0
  rsqrt_timescale: float = 10_000.0
  rsqrt_shift: float = 0.0

  def __post_init__(self):
    where = "ScheduleConfig"
    if self.name not in SCHEDULES:
      _fail(where, f"name {self.name!r} is not one of {', '.join(SCHEDULES)}")
    for phase in ("warmup", "cooldown"):
      steps, percent = getattr(self, f"{phase}_steps"), getattr(self, f"{phase}_percent")
      if steps < 0:
        _fail(where, f"{phase}_steps must be >= 0, got {steps}")
      if percent is not None and not 0.0 <= percent <= 1.0:
        _fail(where, f"{phase}_percent must be in [0, 1], got {percent}")
      if percent is not None and steps:
        _fail(where, f"give {phase}_steps or {phase}_percent, not both")
    if not 0.0 <= self.linear_end <= 1.0:
      _fail(where, f"linear_end must be in [0, 1], got {self.linear_end}")
    if self.power <= 0 or self.rsqrt_timescale <= 0 or self.rsqrt_shift < 0:
      _fail(where, "power and rsqrt_timescale must be > 0 and rsqrt_shift >= 0")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer, its learning rate and schedule, weight decay, multipliers and freezing.

  name:
    adam      optax.scale_by_adam(b1, b2, eps): big_vision's PaliGemma transfers.
    adamw     Adam whose weight decay is multiplied by lr (and lr_mults), as torch's and optax's
              AdamW: Δθ = −s · lr · (adam + wd · θ), so wd is the usual λ (0.01-0.1). Not a
              big_vision option; for comparisons with HF / torch training.
    sgd       big_vision.sgd (no momentum: the update is the clipped gradient); with `momentum`,
              optax.trace(momentum, nesterov).
    adafactor big_vision's scale_by_adafactor: factored second moments (matrices with both
              dims >= adafactor_min_dim_to_factor), decay min(b2, 1 − (t + 1) ** −0.8), eps
              1e-30, then a non-debiased momentum EMA (`momentum`, default 0.9) kept in bf16.
  eps: None → 1e-8 (adam, adamw), 1e-30 (adafactor).
  momentum_dtype: the sgd / adafactor momentum accumulator: None → bf16 for adafactor (big_vision),
    the params' dtype for sgd.
  grad_clip_norm: global-norm clipping of the trained params' gradients; None or 0 disables it.
  lr_mults: (regex, mult > 0) pairs; freeze with `freeze`, not a zero multiplier.
  wd_mults: (regex, mult ≥ 0) pairs; decay is wd · mult. A 0 exempts tensors that a later pattern
    would catch. Only used when wd > 0.
  freeze: regexes of params that get no update and hold no optimizer state.
  """
  name: str = "adam"
  lr: float = 1e-5
  wd: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float | None = None
  momentum: float | None = None
  nesterov: bool = False
  momentum_dtype: str | None = None
  adafactor_min_dim_to_factor: int = 32
  grad_clip_norm: float | None = 1.0
  schedule: ScheduleConfig = ScheduleConfig()
  lr_mults: tuple[tuple[str, float], ...] = ()
  wd_mults: tuple[tuple[str, float], ...] = ((WD_PATTERN, 1.0),)
  freeze: tuple[str, ...] = ()

  def __post_init__(self):
    where = "OptimizerConfig"
    if self.name not in OPTIMIZERS:
      _fail(where, f"name {self.name!r} is not one of {', '.join(OPTIMIZERS)}")
    if not self.lr > 0:
      _fail(where, f"lr must be > 0, got {self.lr} (freeze params with `freeze`)")
    if self.wd < 0:
      _fail(where, f"wd must be >= 0, got {self.wd}")
    if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
      _fail(where, f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
    if self.eps is not None and not self.eps > 0:
      _fail(where, f"eps must be > 0, got {self.eps}")
    if self.momentum is not None and not 0 <= self.momentum < 1:
      _fail(where, f"momentum must be in [0, 1), got {self.momentum}")
    if self.momentum_dtype is not None and self.momentum_dtype not in MOMENTUM_DTYPES:
      _fail(where, f"momentum_dtype {self.momentum_dtype!r} is not one of "
            f"{', '.join(MOMENTUM_DTYPES)}")
    if self.adafactor_min_dim_to_factor < 1:
      _fail(where, "adafactor_min_dim_to_factor must be >= 1")
    if self.grad_clip_norm is not None and self.grad_clip_norm < 0:
      _fail(where, f"grad_clip_norm must be > 0 (or None / 0: off), got {self.grad_clip_norm}")
    if not isinstance(self.schedule, ScheduleConfig):
      _fail(where, f"schedule must be a ScheduleConfig, got {type(self.schedule).__name__}")
    for field, low, strict in (("lr_mults", 0.0, True), ("wd_mults", 0.0, False)):
      pairs = getattr(self, field)
      for pair in pairs:
        if len(pair) != 2 or not isinstance(pair[0], str):
          _fail(where, f"{field} entries are (regex, multiplier) pairs, got {pair!r}")
        if (pair[1] <= low) if strict else (pair[1] < low):
          _fail(where, f"{field} {pair[0]!r}: multiplier must be {'>' if strict else '>='} "
                f"{low}, got {pair[1]}" + (" (use `freeze`)" if strict else ""))
      _check_patterns(f"{where}.{field}", tuple(p for p, _ in pairs))
    _check_patterns(f"{where}.freeze", self.freeze)


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def param_paths(params: Any) -> Any:
  """The pytree of params with each leaf replaced by its "a/b/c" path string.

  A tree whose root is the single Flax collection {"params": ...} is read without that key, so
  patterns read as in big_vision ("vision/.*", not "params/vision/.*").
  """
  strip = isinstance(params, Mapping) and list(params) == ["params"]

  def name(path, _):
    names = [_key_name(k) for k in path]
    return "/".join(names[1:] if strip else names)

  return jax.tree_util.tree_map_with_path(name, params)


def _first_match_masks(paths: Any, patterns: tuple[str, ...]) -> list[Any]:
  """One bool tree per pattern; a path belongs to the first pattern that fully matches it."""
  compiled = [re.compile(p) for p in patterns]

  def first(path: str) -> int:
    return next((i for i, p in enumerate(compiled) if p.fullmatch(path)), -1)

  firsts = jax.tree.map(first, paths)
  return [jax.tree.map(lambda f, i=i: f == i, firsts) for i in range(len(patterns))]


def _check_used(where: str, paths: Any, patterns: tuple[str, ...]) -> None:
  """A pattern that matches no parameter is a typo (e.g. big_vision's "img/.*"): fail loudly."""
  names = jax.tree.leaves(paths)
  for pattern in patterns:
    if not any(re.fullmatch(pattern, n) for n in names):
      _fail(where, f"{pattern!r} matches no parameter; paths look like {', '.join(names[:4])}")


def frozen_mask(cfg: OptimizerConfig, params: Any) -> Any:
  """Bool pytree: True on params that `cfg.freeze` matches (no update, no state, no clipping)."""
  return jax.tree.map(lambda p: any(re.fullmatch(f, p) for f in cfg.freeze), param_paths(params))


def _steps(steps: int, percent: float | None, total_steps: int) -> int:
  if percent is None:
    return steps
  return max(1, round(percent * total_steps)) if percent else 0


def make_schedule(cfg: ScheduleConfig, total_steps: int) -> optax.Schedule:
  """s(step) ∈ [0, 1] as an f32 scalar; formulas in ScheduleConfig's docstring."""
  warmup = _steps(cfg.warmup_steps, cfg.warmup_percent, total_steps)
  cooldown = _steps(cfg.cooldown_steps, cfg.cooldown_percent, total_steps)
  if total_steps > 1 and warmup >= total_steps:  # 0- and 1-step runs (eval, debug) are allowed.
    _fail("ScheduleConfig", f"warm-up of {warmup} steps must be shorter than the "
          f"{total_steps} total steps")
  decay_steps = float(max(total_steps - warmup, 1))

  def schedule(step: jax.Array) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if cfg.name == "cosine":
      value = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    elif cfg.name == "linear":
      value = cfg.linear_end + (1.0 - cfg.linear_end) * (1.0 - progress) ** cfg.power
    elif cfg.name == "rsqrt":
      shift, timescale = cfg.rsqrt_shift, cfg.rsqrt_timescale
      value = jnp.where(step >= warmup,
                        1.0 / jnp.sqrt(1.0 + (step + shift - warmup) / timescale),
                        1.0 / jnp.sqrt(1.0 + shift / timescale))
    else:
      value = jnp.ones_like(step)
    if warmup:
      value = value * jnp.minimum(1.0, step / warmup)
    if cooldown:
      value = value * jnp.minimum(1.0, (total_steps - step) / cooldown)
    return value.astype(jnp.float32)

  return schedule


def _base_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """The optimizer's direction, without lr: adam / adafactor scale, sgd's (momentum) identity."""
  dtype = MOMENTUM_DTYPES.get(cfg.momentum_dtype) if cfg.momentum_dtype else None
  if cfg.name in ("adam", "adamw"):
    return optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=1e-8 if cfg.eps is None else cfg.eps)
  if cfg.name == "sgd":
    if not cfg.momentum:
      return optax.identity()  # big_vision.sgd
    return optax.trace(decay=cfg.momentum, nesterov=cfg.nesterov, accumulator_dtype=dtype)
  # Adafactor as big_vision's scale_by_adafactor, with b2 as the second-moment decay cap.
  cap = cfg.b2

  def decay_rate(step: jax.Array, exponent: float) -> jax.Array:
    return jnp.minimum(cap, 1.0 - (jnp.asarray(step, jnp.float32) + 1.0) ** -exponent)

  rms = optax.scale_by_factored_rms(
      factored=True, decay_rate=0.8, step_offset=0,
      min_dim_size_to_factor=cfg.adafactor_min_dim_to_factor,
      epsilon=1e-30 if cfg.eps is None else cfg.eps, decay_rate_fn=decay_rate)
  momentum = 0.9 if cfg.momentum is None else cfg.momentum
  if not momentum:
    return rms
  return optax.chain(rms, optax.ema(momentum, debias=False,
                                    accumulator_dtype=dtype or jnp.bfloat16))


def make_optimizer(cfg: OptimizerConfig, params: Any,
                   total_steps: int) -> optax.GradientTransformation:
  """big_vision's chain for `params` (a pytree of arrays or ShapeDtypeStructs; only its paths are
  read). Patterns in lr_mults, freeze and non-default wd_mults must each match some parameter."""
  paths = param_paths(params)
  default_wd = cfg.wd_mults == OptimizerConfig.__dataclass_fields__["wd_mults"].default
  _check_used("OptimizerConfig.freeze", paths, cfg.freeze)
  _check_used("OptimizerConfig.lr_mults", paths, tuple(p for p, _ in cfg.lr_mults))
  if cfg.wd and not default_wd:
    _check_used("OptimizerConfig.wd_mults", paths, tuple(p for p, _ in cfg.wd_mults))
  schedule = make_schedule(cfg.schedule, total_steps)

  decay: list[optax.GradientTransformation] = []
  if cfg.wd:
    wd_patterns, wd_mults = zip(*cfg.wd_mults) if cfg.wd_mults else ((), ())
    decay = [optax.add_decayed_weights(cfg.wd * mult, mask)
             for mult, mask in zip(wd_mults, _first_match_masks(paths, wd_patterns)) if mult]
  lr_mults: list[optax.GradientTransformation] = []
  if cfg.lr_mults:
    lr_patterns, mults = zip(*cfg.lr_mults)
    lr_mults = [optax.masked(optax.scale(mult), mask)
                for mult, mask in zip(mults, _first_match_masks(paths, lr_patterns))]

  trained = optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      _base_optimizer(cfg),
      # AdamW decays before the lr so that lr (and lr_mults) scale the decay; big_vision after.
      *(decay if cfg.name == "adamw" else ()),
      optax.scale(cfg.lr),
      *lr_mults,
      *(decay if cfg.name != "adamw" else ()),
      optax.scale_by_schedule(schedule),
      optax.scale(-1.0))
  # multi_transform hands each branch only its own leaves (the others are MaskedNodes), so the
  # frozen branch's set_to_zero holds no state and the clipping norm never sees frozen gradients.
  labels = jax.tree.map(lambda frozen: "frozen" if frozen else "trained",
                        frozen_mask(cfg, params))
  return optax.multi_transform({"trained": trained, "frozen": optax.set_to_zero()}, labels)


def optimizer_step(opt_state: Any) -> jax.Array:
  """The schedule's step count t held in `opt_state` (int32 scalar): s(t) is the next update's."""
  found = [s.count for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
      if isinstance(s, optax.ScaleByScheduleState)]
  if len(found) != 1:
    raise ValueError(f"expected one ScaleByScheduleState in the optimizer state, found "
                     f"{len(found)}")
  return found[0]


def learning_rate(cfg: OptimizerConfig, total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """lr · s(step): the base learning rate the step applies (before lr_mults), for logging."""
  schedule = make_schedule(cfg.schedule, total_steps)
  return lambda step: cfg.lr * schedule(step)
