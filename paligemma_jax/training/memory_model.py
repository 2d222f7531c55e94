"""Bytes per device of one train step: params, gradients, optimizer state, activations.

    m = step_memory(get_variant("paligemma2_3b_448"), batch=4, text_len=512, fsdp=64)
    m.total / 1e9, m.as_dict()

Arithmetic on `param_shapes` / `param_logical_axes` (abstract: nothing is allocated) and the
config, checked against XLA's `memory_analysis()` of the compiled step by
benchmarks/memory_model.py. What the step (training/step.py) keeps, and so what is counted:

- params: the float32 masters, split over the fsdp axis where a tensor's "embed" / "vit_embed"
  dimension divides by it (sharding.py's rule), whole otherwise (norm scales, biases).
- gradients: float32, shaped and sharded as the trained params (frozen ones get none).
- optimizer state (`optimizer`): adam / adamw two float32 moments; sgd none, sgd_momentum one;
  adafactor a bf16 momentum plus a second moment factored into row + column sums for matrices
  (last two dims >= 32), whole otherwise.
- compute copy: the step casts the masters to bf16 before the forward (2 B per param shard).
  With fsdp > 1 one layer's weights are gathered in bf16 at a time (counted twice: in use and
  prefetched), and for the LM head the whole table in bf16 plus its full f32 gradient (each
  device's partial, before the reduce-scatter).
- activations per example (S = patches P + text - 1; the counts are the residuals that
  `jax._src.ad_checkpoint.saved_residuals` lists for the step's loss):
    full   each scanned layer's input: S·D (Gemma) or P·W (SigLIP) bf16;
    dots   that plus the matmul outputs, f32 (the einsums return f32): q, k, v, scores N·S²,
           the attention output, the out / down projections (2·S·D) and gate, up (2·S·F);
    none   Gemma: 8 f32 + 2 bf16 D-wide tensors (norm internals, residuals), q/k/v and the
           attention output bf16, 3 f32 + 1 bf16 per score N·S² (softcap, mask, softmax), and
           7 f32 + 1 bf16 per S·F (the f32 gated GELU); SigLIP: 6 f32 + 6 bf16 per P·W,
           f32 + bf16 per score, 6 bf16 per P·F;
    once   the final norms' residuals and the loss's bf16 hidden states.
  Working set: one layer's backward holds WORKING[remat] x that layer's "none" residuals, and
  the loss three f32 [T, vocab_chunk] chunks, per example.
- phases: the peak is the largest of the loss (state, saved activations, the loss chunks, the
  gathered embedding), one layer's backward (state, saved, working set, gathered layers) and
  the optimizer update (activations dead; the update's temporaries instead).

Measured on XLA:CPU (benchmarks/memory_model.py, fitted on PG2-3B widths at 2 and 4 layers) and
assumed for TPU, where nobody has checked them: UPDATE_SCRATCH (the new params and moments
exist before the non-finite guard selects them), EMBEDDING_SCRATCH (the tied table's gradient
arrives from the LM head and from the input gather), WORKING. `backend="cpu"` also counts the
scans' saved bf16 residuals as f32: XLA:CPU widens bf16 stacks.
Not counted: XLA's fusion scratch, collectives' buffers, the batch itself (a few MB).
"""

from __future__ import annotations

import dataclasses
import math

import jax
from jax.sharding import PartitionSpec

from paligemma_jax.models import PaliGemmaConfig, param_logical_axes, param_shapes

REMATS = ("none", "dots", "full")
OPTIMIZERS = ("adam", "adamw", "sgd", "sgd_momentum", "adafactor")
FSDP_AXES = ("embed", "vit_embed")
EMBEDDING = "['params']['llm']['embedding']"
BF16, F32 = 2, 4
UPDATE_SCRATCH = 6     # bytes per trained param during the optimizer update (measured)
EMBEDDING_SCRATCH = 6  # bytes per trained embedding element, backward and update (measured)
WORKING = {"none": 0.3, "dots": 0.55, "full": 0.7}  # x one layer's "none" residuals (measured)


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Bytes per device; `total` = params + opt_state + the largest phase."""

  params: int
  grads: int
  opt_state: int
  compute_copy: int       # the bf16 param shard
  gathered: int           # fsdp > 1: two layers' bf16 weights
  embedding_scratch: int  # the tied table's extra gradient buffers
  saved: int              # activations kept for the backward
  working: int            # one layer's backward
  loss: int               # the loss's vocab chunks
  gathered_table: int     # fsdp > 1: the LM head's whole bf16 table and f32 gradient
  update_scratch: int

  @property
  def activations(self) -> int:
    return self.saved + max(self.working, self.loss)

  @property
  def phases(self) -> dict[str, int]:
    held = self.grads + self.embedding_scratch
    return {"loss": held + self.compute_copy + self.saved + self.loss + self.gathered_table,
            "layer": held + self.compute_copy + self.gathered + self.saved + self.working,
            "update": held + self.update_scratch}

  @property
  def total(self) -> int:
    return self.params + self.opt_state + max(self.phases.values())

  def as_dict(self) -> dict[str, int]:
    return {**dataclasses.asdict(self), "total": self.total}


def _leaves(config: PaliGemmaConfig) -> list[tuple[str, tuple[int, ...], PartitionSpec]]:
  shapes = jax.tree_util.tree_flatten_with_path(param_shapes(config))[0]
  specs = jax.tree.leaves(param_logical_axes(config),
                          is_leaf=lambda x: isinstance(x, PartitionSpec))
  return [(jax.tree_util.keystr(path), tuple(x.shape), spec)
          for (path, x), spec in zip(shapes, specs, strict=True)]


def _shard(shape: tuple[int, ...], spec: PartitionSpec, fsdp: int) -> int:
  """Elements of one device's shard: sharding.py splits an embed dim over fsdp if it divides."""
  size = math.prod(shape)
  for dim, name in zip(shape, spec):
    if name in FSDP_AXES and fsdp > 1 and dim % fsdp == 0:
      return size // fsdp
  return size


def _opt_bytes(shape: tuple[int, ...], elements: int, optimizer: str) -> int:
  if optimizer in ("adam", "adamw"):
    return 2 * F32 * elements
  if optimizer == "sgd":
    return 0
  if optimizer == "sgd_momentum":
    return F32 * elements
  # adafactor: bf16 momentum; factored v over the last two dims (rows + columns), per shard.
  if len(shape) >= 2 and min(shape[-2:]) >= 32:
    scale = elements / math.prod(shape)
    factored = math.prod(shape[:-2]) * (shape[-2] + shape[-1]) * scale
    return int(BF16 * elements + F32 * factored)
  return (BF16 + F32) * elements


def state_bytes(config: PaliGemmaConfig, fsdp: int = 1, optimizer: str = "adam",
                frozen: tuple[str, ...] = ()) -> dict[str, int]:
  """{params, grads, opt_state, bf16_copy, largest_layer} bytes per device (largest_layer: one
  scanned layer's bf16 weights, unsharded); `frozen` as in `step_memory`."""
  if optimizer not in OPTIMIZERS:
    raise ValueError(f"optimizer {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
  out = dict(params=0, grads=0, opt_state=0, bf16_copy=0)
  layer = {"vision": 0, "llm": 0}
  for path, shape, spec in _leaves(config):
    n = _shard(shape, spec, fsdp)
    out["params"] += F32 * n
    out["bf16_copy"] += BF16 * n
    if not any(f in path for f in frozen):
      out["grads"] += F32 * n
      out["opt_state"] += _opt_bytes(shape, n, optimizer)
    if "'layers'" in path:
      tower = "vision" if "'vision'" in path else "llm"
      layer[tower] += BF16 * math.prod(shape[1:])
  out["largest_layer"] = max(layer.values())
  return out


def _llm_layer(config: PaliGemmaConfig, s: int, remat: str, st: int = BF16) -> int:
  """Bytes one example keeps for one Gemma layer's backward under `remat` (module docstring);
  `st`: bytes per saved bf16 element."""
  t = config.text
  sd, sf = s * t.width, s * t.mlp_dim
  qkv, attn = s * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim, s * t.num_heads * t.head_dim
  scores = t.num_heads * s * s
  if remat == "full":
    return st * sd
  if remat == "dots":
    return F32 * (qkv + scores + attn + 2 * sd + 2 * sf) + st * sd
  return ((8 * F32 + 2 * st) * sd + st * (qkv + attn) + (3 * F32 + st) * scores
          + (7 * F32 + st) * sf)


def _vit_layer(config: PaliGemmaConfig, remat: str, st: int = BF16) -> int:
  v = config.vision
  pw, pf = v.num_patches * v.width, v.num_patches * v.mlp_dim
  scores = v.num_heads * v.num_patches ** 2
  if remat == "full":
    return st * pw
  if remat == "dots":
    return F32 * (5 * pw + scores + pf) + st * pw
  return (6 * F32 + 6 * st) * pw + (F32 + st) * scores + 6 * st * pf


def activation_bytes(config: PaliGemmaConfig, batch: int, text_len: int, remat: str = "full",
                     vocab_chunk: int = 8192, backend: str = "tpu") -> dict[str, int]:
  """{saved, working, loss} activation bytes of a per-device `batch` (module docstring)."""
  if remat not in REMATS:
    raise ValueError(f"remat {remat!r} is not one of {', '.join(REMATS)}")
  if backend not in ("tpu", "cpu"):
    raise ValueError(f"backend {backend!r} is not one of tpu, cpu")
  v, t = config.vision, config.text
  p, b = v.num_patches, batch
  s = p + text_len - 1  # the step reads tokens[:, :-1]
  st = F32 if backend == "cpu" else BF16  # XLA:CPU keeps the scans' bf16 residuals in f32
  once = ((3 * F32 + BF16) * p * v.width + (2 * F32 + 1) * s * t.width
          + BF16 * (text_len - 1) * t.width)
  saved = b * (t.depth * _llm_layer(config, s, remat, st)
               + v.depth * _vit_layer(config, remat, st) + once)
  layer = b * max(_llm_layer(config, s, "none"), _vit_layer(config, "none"))
  return {"saved": saved, "working": int(WORKING[remat] * layer),
          "loss": 3 * F32 * b * (text_len - 1) * vocab_chunk}


def step_memory(config: PaliGemmaConfig, batch: int, text_len: int, fsdp: int = 1,
                remat: str = "full", optimizer: str = "adam", frozen: tuple[str, ...] = (),
                vocab_chunk: int = 8192, backend: str = "tpu") -> StepMemory:
  """Per-device bytes of a train step: `batch` examples per device, `fsdp` devices sharing
  the params (data parallelism beyond that changes nothing per device). `frozen`: substrings
  of parameter paths (e.g. "'embedding'") that get no gradient or optimizer state."""
  state = state_bytes(config, fsdp, optimizer, frozen)
  act = activation_bytes(config, batch, text_len, remat, vocab_chunk, backend)
  table = config.text.vocab_size * config.text.width
  embedding_trained = not any(f in EMBEDDING for f in frozen)
  return StepMemory(
      params=state["params"], grads=state["grads"], opt_state=state["opt_state"],
      compute_copy=state["bf16_copy"],
      gathered=0 if fsdp == 1 else 2 * state["largest_layer"],
      embedding_scratch=EMBEDDING_SCRATCH * table // fsdp if embedding_trained else 0,
      saved=act["saved"], working=act["working"],
      loss=act["loss"],
      gathered_table=0 if fsdp == 1 else (BF16 + F32 * embedding_trained) * table,
      update_scratch=UPDATE_SCRATCH * (state["grads"] // F32))


def compiled_step(config: PaliGemmaConfig, batch: int, text_len: int, remat: str, fsdp: int = 1
                  ) -> jax.stages.Compiled:
  """What this model is checked against: the train step (Adam, bf16 compute over float32
  masters, no final softcap) compiled on abstract state for one (data = 1, fsdp) mesh of this
  backend's first `fsdp` devices, `batch` rows per device. `.memory_analysis()` is per device."""
  import optax  # pylint: disable=import-outside-toplevel
  from paligemma_jax import sharding  # pylint: disable=import-outside-toplevel
  from paligemma_jax.training import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  from paligemma_jax.training import state as state_lib  # pylint: disable=import-outside-toplevel
  from paligemma_jax.training import step as step_lib  # pylint: disable=import-outside-toplevel
  config = config.replace(dtype="bfloat16", param_dtype="float32", remat=remat,
                          **{"text.final_logit_softcap": None})
  mesh = sharding.make_mesh(1, fsdp, 1, devices=jax.devices()[:fsdp])
  opt_config = optimizer_lib.OptimizerConfig(
      name="adam", schedule=optimizer_lib.ScheduleConfig(name="constant"))
  params = state_lib.abstract_state(config, optax.identity(), mesh).params
  tx = optimizer_lib.make_optimizer(opt_config, params, total_steps=1000)
  trainable = jax.tree.map(lambda f: not f, optimizer_lib.frozen_mask(opt_config, params))
  state = state_lib.abstract_state(config, tx, mesh)
  abstract = step_lib.abstract_batch(config, batch * fsdp, text_len, mesh)
  return step_lib.compile_on_shapes(config, tx, trainable, mesh, state, abstract)
