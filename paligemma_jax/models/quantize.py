"""Weight-only int8 / int4 quantization of the matmul weights, read back by `layers.Einsum`.

A quantized `Einsum` holds, in place of its weight `w`, the integer values and their scales
(`w_scale`, float32) under one of two names:

  w_int8   int8, w's shape; one scale per output channel (absmax over the contraction axes), so
           `w_scale` has w's shape with the contraction axes set to 1.
  w_int4   int8 bytes each packing two 4-bit values (low nibble = even index, high = odd) along
           the last contraction axis, which is halved; one scale per `group` consecutive elements
           of that axis, so `w_scale` has that axis divided by `group` (and the others as w).

Both are symmetric (values in [-127, 127] and [-7, 7], scale = absmax / 127 or / 7). The group
is `QuantizationConfig.group_size` where it divides the axis, else their gcd (SigLIP's MLP width
4304 is not a multiple of 128); the reader infers it from the shapes. Dequantizing multiplies the
integers by the scales in float32 and rounds once to the compute dtype, inside the einsum's
`jax.jit`; the embedding (lookup and tied LM head), norms, biases and the projector stay exact.

Scales are float32 rather than bf16: they cost 0.25 bit per weight at group 128 and keep the
CPU kernels' in-place layer reads (`cpu_matmul.reads_in_place`: bf16 and int8) off them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from paligemma_jax.models.config import PaliGemmaConfig, QuantizationConfig

# Weights that are quantized: (path regex over "/"-joined param paths, contraction axes `n_in`).
# The leading "layers" axis of a scanned stack is not counted.
_DECODER = (r"llm/layers/attn/(q|k|v)/w", 1), (r"llm/layers/attn/out/w", 2), \
    (r"llm/layers/mlp/(gate|up|down)/w", 1)
_VISION = (r"vision/layers/attn/(q|k|v)/w", 1), (r"vision/layers/attn/out/w", 2), \
    (r"vision/layers/mlp/(fc1|fc2)/w", 1)
_QMAX = {"int8": 127, "int4": 7}


def targets(quant: QuantizationConfig) -> tuple[tuple[str, int], ...]:
  """The (path regex, n_in) pairs of the weights `quant` quantizes."""
  return _DECODER + (_VISION if quant.vision else ())


def _n_in(path: str, quant: QuantizationConfig) -> int | None:
  for pattern, n_in in targets(quant):
    if re.fullmatch(pattern, path):
      return n_in
  return None


def _group(size: int, group_size: int) -> int:
  return group_size if size % group_size == 0 else math.gcd(size, group_size)


def quantize_weight(w: jax.Array, n_in: int, quant: QuantizationConfig, lead: int = 0
                    ) -> dict[str, jax.Array]:
  """{"w_int8" | "w_int4": values, "w_scale": float32 scales} of a weight whose axes are
  [*stack (`lead` axes), *contracted (`n_in`), *output]."""
  w = jnp.asarray(w, jnp.float32)
  first, last = lead, lead + n_in - 1
  qmax = _QMAX[quant.kind]
  if quant.kind == "int8":
    scale = jnp.max(jnp.abs(w), axis=tuple(range(first, last + 1)), keepdims=True) / qmax
    scale = jnp.where(scale == 0, 1.0, scale)
    q = jnp.clip(jnp.round(w / scale), -qmax, qmax).astype(jnp.int8)
    return {"w_int8": q, "w_scale": scale}
  size = w.shape[last]
  if size % 2:
    raise ValueError(f"int4 packs pairs along the last contraction axis; its size {size} is odd")
  g = _group(size, quant.group_size)
  grouped = w.reshape(*w.shape[:last], size // g, g, *w.shape[last + 1:])
  scale = jnp.max(jnp.abs(grouped), axis=last + 1, keepdims=True) / qmax
  scale = jnp.where(scale == 0, 1.0, scale)
  q = jnp.clip(jnp.round(grouped / scale), -qmax, qmax).astype(jnp.int8).reshape(w.shape)
  return {"w_int4": _pack(q, last), "w_scale": jnp.squeeze(scale, last + 1)}


def _pack(q: jax.Array, axis: int) -> jax.Array:
  """int8 values in [-8, 7] -> bytes holding pairs along `axis` (halved)."""
  pairs = q.reshape(*q.shape[:axis], q.shape[axis] // 2, 2, *q.shape[axis + 1:])
  low, high = jnp.take(pairs, 0, axis=axis + 1), jnp.take(pairs, 1, axis=axis + 1)
  return (low & 0x0F) | (high << 4)


def _unpack(packed: jax.Array, axis: int) -> jax.Array:
  """Inverse of `_pack`: arithmetic shifts sign-extend each nibble."""
  low = (packed << 4) >> 4
  high = packed >> 4
  both = jnp.stack([low, high], axis=axis + 1)
  return both.reshape(*packed.shape[:axis], packed.shape[axis] * 2, *packed.shape[axis + 1:])


def dequantize(q: Mapping[str, jax.Array], n_in: int, dtype: Any) -> jax.Array:
  """The weight [*contracted, *output] in `dtype` from `quantize_weight`'s dict (no stack axes)."""
  scale = q["w_scale"].astype(jnp.float32)
  if "w_int8" in q:
    return (q["w_int8"].astype(jnp.float32) * scale).astype(dtype)
  last = n_in - 1
  values = _unpack(q["w_int4"], last).astype(jnp.float32)
  size, groups = values.shape[last], scale.shape[last]
  grouped = values.reshape(*values.shape[:last], groups, size // groups, *values.shape[last + 1:])
  w = grouped * jnp.expand_dims(scale, last + 1)
  return w.reshape(values.shape).astype(dtype)


def quantized_params(module: nn.Module) -> dict[str, Any] | None:
  """{"w_int8" | "w_int4": values, "w_scale": scales} of an `Einsum` whose params are quantized,
  else None. Values may be a `cpu_matmul.LayerSlice` (decoding on CPU: one layer of a stack)."""
  name = next((n for n in ("w_int8", "w_int4") if module.has_variable("params", n)), None)
  if name is None:
    return None
  return {name: module.get_variable("params", name),
          "w_scale": module.get_variable("params", "w_scale")}


def quantized_weight(q: Mapping[str, Any], n_in: int, dtype: Any, after: jax.Array
                     ) -> jax.Array:
  """The weight in `dtype` from `quantized_params`' dict, dequantized after `after` is.

  The integers pass through an optimization barrier with the einsum's input `after`: a decode
  loop's weights are loop-invariant, and XLA would otherwise hoist the dequantization out of the
  loop, keeping a full-precision copy of every weight alive for the whole generate call. A
  layer of a stack (a `LayerSlice`: duck-typed, models/cpu_matmul.py) is sliced after the
  barrier too, so the slice fuses into the dequantization rather than being copied out first.
  """
  name = "w_int8" if "w_int8" in q else "w_int4"
  values, layer = q[name], None
  if hasattr(values, "stack"):  # a cpu_matmul.LayerSlice
    values, layer = values.stack, values.layer
  (values, scale), _ = jax.lax.optimization_barrier(((values, q["w_scale"]), after))
  if layer is not None:
    values = values[layer]
  return dequantize({name: values, "w_scale": scale}, n_in, dtype)


# -- whole param trees ----------------------------------------------------------------------------

def _map_targets(tree: dict, quant: QuantizationConfig,
                 fn: Callable[[str, Any, int, int], dict]) -> dict:
  """`tree` ({"params": ...}) with each target weight `w` (at path p) replaced, in its parent
  dict, by the entries of `fn(p, w, n_in, lead)`. Fails when nothing is a target."""
  found = []

  def walk(node: Mapping, prefix: str) -> dict:
    out = {}
    for key, value in node.items():
      path = f"{prefix}{key}"
      n_in = None if isinstance(value, Mapping) else _n_in(path, quant)
      if isinstance(value, Mapping):
        out[key] = walk(value, path + "/")
      elif n_in is None:
        out[key] = value
      else:
        found.append(path)
        out.update(fn(path, value, n_in, 1 if "/layers/" in path else 0))
    return out

  if not isinstance(tree, Mapping) or "params" not in tree:
    raise ValueError("expected {'params': ...}")
  result = {"params": walk(tree["params"], "")}
  if not found:
    raise ValueError("no weight to quantize: the params are already quantized or not PaliGemma's")
  return result


def quantize_params(params: dict, quant: QuantizationConfig) -> dict:
  """{"params": ...} with the weights `quant` targets quantized, one weight at a time (each
  under `jax.jit`, so the float32 temporaries of one weight are alive at once)."""
  one = jax.jit(quantize_weight, static_argnums=(1, 2, 3))
  return _map_targets(params, quant, lambda p, w, n_in, lead: one(w, n_in, quant, lead))


def dequantize_params(params: dict, quant: QuantizationConfig, dtype: Any) -> dict:
  """`quantize_params`' inverse up to rounding: every quantized weight back as `w` in `dtype`."""
  def walk(node: Mapping, prefix: str) -> dict:
    name = next((n for n in ("w_int8", "w_int4") if n in node), None)
    if name is None:
      return {k: walk(v, f"{prefix}{k}/") if isinstance(v, Mapping) else v
              for k, v in node.items()}
    n_in = _n_in(prefix + "w", quant)
    if n_in is None:
      raise ValueError(f"{prefix}w is quantized but not a target of {quant}")
    one = lambda q: dequantize(q, n_in, dtype)
    if "/layers/" in prefix:
      one = jax.vmap(one)
    q = {name: node[name], "w_scale": node["w_scale"]}
    out = {k: v for k, v in node.items() if k not in q}
    out["w"] = jax.jit(one)(q)
    return out
  return {"params": walk(params["params"], "")}


def quantized_shapes(shapes: dict, quant: QuantizationConfig) -> dict:
  """`quantize_params` on abstract params (ShapeDtypeStruct leaves): nothing is allocated."""
  return _map_targets(shapes, quant, lambda p, w, n_in, lead: jax.eval_shape(
      lambda a: quantize_weight(a, n_in, quant, lead), w))


def quantized_shardings(shardings: dict, shapes: dict, quant: QuantizationConfig) -> dict:
  """Shardings of the quantized params from those of the unquantized ones (`shapes` are the
  unquantized shapes): values keep their weight's sharding where it still divides, scales drop
  the contraction axes' sharding (they are size 1 or few groups)."""
  flat_shapes = {"/".join(str(k.key) for k in path): s for path, s in
                 jax.tree_util.tree_leaves_with_path(shapes["params"])}

  def fn(path, sharding, n_in, lead):
    spec = list(sharding.spec) + [None] * (len(flat_shapes[path].shape) - len(sharding.spec))
    q_shapes = jax.eval_shape(
        lambda a: quantize_weight(a, n_in, quant, lead), flat_shapes[path])
    out = {}
    for name, shape in q_shapes.items():
      s = spec if name != "w_scale" else [None if lead <= i < lead + n_in else a
                                          for i, a in enumerate(spec)]
      s = [a if a is None or dim % _axis_size(sharding.mesh, a) == 0 else None
           for a, dim in zip(s, shape.shape)]
      out[name] = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*s))
    return out
  return _map_targets(shardings, quant, fn)


def _axis_size(mesh, axes) -> int:
  names = (axes,) if isinstance(axes, str) else tuple(axes)
  return math.prod(mesh.shape[a] for a in names)


def param_bytes(tree: Any) -> int:
  """Bytes of a param tree's leaves (arrays or ShapeDtypeStructs)."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


# -- entry points -------------------------------------------------------------------------------

def as_quantization(kind: str | QuantizationConfig | None, group_size: int = 128,
                    vision: bool = False) -> QuantizationConfig | None:
  """None / "none" -> None; "int8" / "int4" -> a `QuantizationConfig`; a config as is."""
  if kind is None or isinstance(kind, QuantizationConfig):
    return kind
  if kind == "none":
    return None
  return QuantizationConfig(kind, group_size, vision)


def quantize_loaded(config: PaliGemmaConfig, params: dict,
                    quant: QuantizationConfig | None) -> tuple[PaliGemmaConfig, dict]:
  """(config, params) quantized as `quant` asks; params that are already quantized that way
  (a saved quantized checkpoint) are returned as they are, and any other request fails."""
  if quant is None or config.quantization == quant:
    return config, params
  if config.quantization is not None:
    raise ValueError(
        f"this checkpoint is already quantized ({config.quantization}); load it without "
        f"quantize, or quantize the unquantized checkpoint as {quant}")
  return config.replace(quantization=quant), quantize_params(params, quant)
