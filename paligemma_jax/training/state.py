"""The train state and how it comes to exist on a mesh without an unsharded copy.

    state = init_state(model_cfg, tx, mesh, seed)                       # random init
    state = state_from_params(model_cfg, tx, mesh, params, seed)        # pretrained params
    config, params = load_pretrained(path, overrides, mesh)     # Orbax / HF / npz, resampled
    base = frozen_base(model_cfg, mesh, params_or_none, seed)           # LoRA: the frozen base

The state's params are what the optimizer trains: all the params, or with `config.lora` the
adapters alone (`trained_params`); a LoRA run's base lives outside the state (`frozen_base`, in
the compute dtype or quantized), so it has no optimizer state, no gradient and no checkpoint.

Shardings: params by `sharding.param_shardings` (the one RULES table); every optimizer-state leaf
that sits under a param's path with the param's shape (Adam's mu / nu, momentum, ...) gets that
param's sharding; everything else (counts, scalars, empty states) is replicated. Initialisation
runs inside `jax.jit(..., out_shardings=...)`, so each device only ever allocates its shard.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from paligemma_jax import sharding
from paligemma_jax.models import PaliGemma, PaliGemmaConfig, lora, quantize
from paligemma_jax.models.paligemma import dummy_inputs


@flax.struct.dataclass
class TrainState:
  """step int32 []; params {"params": ...} float32 masters; opt_state; rng uint32 [2] key data."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def state_shardings(abstract: TrainState, param_shardings: Any, mesh: Mesh) -> TrainState:
  """Shardings shaped like `abstract` (a TrainState of ShapeDtypeStructs), see the docstring."""
  by_path = {_names(p): s for p, s in jax.tree_util.tree_leaves_with_path(param_shardings)}
  shapes = {_names(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(abstract.params)}
  replicated = NamedSharding(mesh, PartitionSpec())

  def opt_leaf(path, leaf):
    names = _names(path)
    for i in range(len(names)):
      tail = names[i:]
      if tail in by_path and shapes[tail] == leaf.shape:
        return by_path[tail]
    return replicated

  return TrainState(
      step=replicated, params=param_shardings,
      opt_state=jax.tree_util.tree_map_with_path(opt_leaf, abstract.opt_state),
      rng=replicated)


def _random_params(config: PaliGemmaConfig, key: jax.Array) -> dict:
  return nn.unbox(PaliGemma(config).init(key, *dummy_inputs(config)))


def trained_params(config: PaliGemmaConfig, key: jax.Array) -> dict:
  """The random init of the trained params: all of them, or the LoRA adapters alone (the
  base weights that init also makes are dropped by XLA under jit)."""
  params = _random_params(config.replace(quantization=None), key)
  return params if config.lora is None else split_lora(config, params)[1]


def split_lora(config: PaliGemmaConfig, tree: dict) -> tuple[dict, dict]:
  """(frozen base, trained) parts of a LoRA run's params-shaped tree."""
  return lora.split(tree, config.lora.train_also)


def trained_shardings(config: PaliGemmaConfig, mesh: Mesh) -> dict:
  shardings = sharding.param_shardings(config, mesh)
  return shardings if config.lora is None else split_lora(config, shardings)[1]


def frozen_base(config: PaliGemmaConfig, mesh: Mesh, params: dict | None, seed: int) -> dict:
  """A LoRA run's frozen base on its shardings: `params` (pretrained, any dtype; donated) or,
  when None, the random base `init_state(config, ..., seed)` draws next to its adapters. Stored
  in the compute dtype, or quantized as `config.quantization` says (QLoRA; scales float32)."""
  shardings = split_lora(config, sharding.param_shardings(config, mesh))[0]
  plain = config.replace(quantization=None)
  dtype = config.compute_dtype
  if params is None:
    param_key = jax.random.split(jax.random.PRNGKey(seed))[0]
    with sharding.activate(mesh):
      params = jax.jit(lambda k: split_lora(config, _random_params(plain, k))[0],
                       out_shardings=split_lora(config, sharding.param_shardings(plain, mesh))[0]
                       )(param_key)
  params = split_lora(config, params)[0]  # `train_also` params are in the state
  if config.quantization is not None:
    params = quantize.quantize_params(params, config.quantization)
  cast = lambda path, x: (x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                          and _names(path)[-1] != "w_scale" else x)
  laid_out = all(getattr(p, "sharding", None) == s for p, s in
                 zip(jax.tree.leaves(params), jax.tree.leaves(shardings)))
  with sharding.activate(mesh):
    return jax.jit(lambda p: jax.tree_util.tree_map_with_path(cast, p), out_shardings=shardings,
                   donate_argnums=0 if laid_out else ())(params)


def init_state(config: PaliGemmaConfig, tx: optax.GradientTransformation, mesh: Mesh,
               seed: int) -> TrainState:
  """A random-init state, created sharded (float32 params, the optimizer's initial state)."""
  def init(key: jax.Array) -> TrainState:
    param_key, rng = jax.random.split(key)
    params = trained_params(config, param_key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), rng)

  key = jax.random.PRNGKey(seed)
  abstract = jax.eval_shape(init, key)
  shardings = state_shardings(abstract, trained_shardings(config, mesh), mesh)
  with sharding.activate(mesh):
    return jax.jit(init, out_shardings=shardings)(key)


def state_from_params(config: PaliGemmaConfig, tx: optax.GradientTransformation, mesh: Mesh,
                      params: dict, seed: int) -> TrainState:
  """A step-0 state around `params` (the optimizer state is created sharded): all the params,
  or with `config.lora` the adapters. Params already on the state's shardings are donated: do
  not use them afterwards."""
  def init(p: dict, key: jax.Array) -> TrainState:
    p = jax.tree.map(lambda x: x.astype(jnp.float32), p)
    return TrainState(jnp.zeros((), jnp.int32), p, tx.init(p), jax.random.split(key)[1])

  key = jax.random.PRNGKey(seed)
  abstract = jax.eval_shape(init, params, key)
  shardings = state_shardings(abstract, trained_shardings(config, mesh), mesh)
  # Params already laid out as the state wants them are donated: the state reuses their buffers
  # instead of doubling the memory (XLA cannot alias buffers whose sharding changes).
  laid_out = all(getattr(p, "sharding", None) == s for p, s in
                 zip(jax.tree.leaves(params), jax.tree.leaves(shardings.params)))
  with sharding.activate(mesh):
    return jax.jit(init, out_shardings=shardings, donate_argnums=(0,) if laid_out else ())(
        params, key)


def abstract_state(config: PaliGemmaConfig, tx: optax.GradientTransformation, mesh: Mesh
                   ) -> TrainState:
  """ShapeDtypeStructs with shardings of the state: the target of a checkpoint restore."""
  def init(key: jax.Array) -> TrainState:
    params = trained_params(config, key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), key)

  abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = state_shardings(abstract, trained_shardings(config, mesh), mesh)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


# -- pretrained params -------------------------------------------------------------------------

def resample_posemb(old_MxW: jax.Array, new_patches: int) -> jax.Array:
  """big_vision's `resample_posemb`: the [g, g, W] grid zoomed to [g', g', W] by linear
  interpolation with corner-aligned samples (scipy.ndimage.zoom(order=1)), flattened back.

  Two small interpolation matrices applied with einsum, so it also runs jitted on a sharded array.
  """
  m = old_MxW.shape[0]
  g_old, g_new = int(round(np.sqrt(m))), int(round(np.sqrt(new_patches)))
  if g_old * g_old != m or g_new * g_new != new_patches:
    raise ValueError(f"position embeddings of {m} -> {new_patches} patches are not square "
                     "grids; cannot resample them")
  if g_old == g_new:
    return jnp.asarray(old_MxW)
  a = jnp.asarray(_linear_weights(g_old, g_new))
  grid = jnp.asarray(old_MxW, jnp.float32).reshape(g_old, g_old, -1)
  out = jnp.einsum("ij,jkw,lk->ilw", a, grid, a, precision=jax.lax.Precision.HIGHEST)
  return out.reshape(new_patches, -1).astype(old_MxW.dtype)


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in]: output i samples input coordinate i * (n_in - 1) / (n_out - 1) linearly."""
  coords = np.arange(n_out) * ((n_in - 1) / max(n_out - 1, 1))
  lo = np.clip(np.floor(coords).astype(int), 0, n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = coords - lo
  weights = np.zeros((n_out, n_in), np.float32)
  np.add.at(weights, (np.arange(n_out), lo), 1 - frac)
  np.add.at(weights, (np.arange(n_out), hi), frac)
  return weights


def load_pretrained(path: str, overrides: dict[str, Any], mesh: Mesh, dtype: str = "float32",
                    *, variant: str | PaliGemmaConfig | None = None
                    ) -> tuple[PaliGemmaConfig, dict]:
  """(config, params) of a checkpoint, in `dtype` (float32 masters; a LoRA base in the compute
  dtype) and sharded for `mesh`, under `overrides` (`PaliGemmaConfig.replace` fields). A
  changed `vision.image_size` resamples `pos_embed`.

  Orbax params, HF folders and big_vision npz files (`variant` completes an npz's config) are
  all read straight into their shards, never as an unsharded copy (`pretrained.read_sharded`).
  """
  from paligemma_jax.training.pretrained import read_sharded  # the converter loads when used
  stored, params = read_sharded(path, mesh, dtype, variant)
  config = stored.replace(**overrides)
  new_m = config.vision.num_patches
  pos = params["params"]["vision"]["pos_embed"]
  if pos.shape[0] != new_m:
    target = sharding.param_shardings(config, mesh)["params"]["vision"]["pos_embed"]
    resample = jax.jit(lambda p: resample_posemb(p, new_m), out_shardings=target)
    params["params"]["vision"]["pos_embed"] = resample(pos)
  return config, params
