"""Orbax checkpoints: model params (the project's interchange format) and trainer state.

Params checkpoint: one Orbax pytree `{"params": ...}` whose custom metadata holds the
`PaliGemmaConfig`, so loading needs no variant flag. It can be written at once (`save_params`)
or leaf by leaf (`ParamsWriter`, which is what lets the converter stream a 28B model through a
small host), and read whole onto any mesh (`load_params`), leaf by leaf (`read_leaves`), or a
few layers of a stacked leaf at a time (`open_leaf`).

Stacked leaves ([L, ...], 31 GB for PaliGemma2-28B's MLP) can be written one layer at a time
(`ParamsWriter.write_layers`), stored one layer per chunk, and a layer read alone (`open_leaf`):
a plain Orbax checkpoint all the same (how, and why that way: `paligemma_jax.checkpoint_layers`).

Trainer state: `TrainCheckpointer` keeps the last N steps of an arbitrary pytree (params,
optimizer state, step, RNG key data) plus a JSON dict (data-iterator position, anything small),
saves asynchronously, and never restores a checkpoint whose write did not finish (Orbax writes
into a temporary directory and renames it on commit).

Writes are atomic: nothing appears at the destination until the write has finished, an existing
destination is replaced only with `overwrite=True`, and a failed write leaves nothing behind.
Across processes (multi-host training's final params) all write their shards into one temporary
directory, whose name process 0 picks, and process 0 renames it once every process is done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
import warnings
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from jax.experimental import multihost_utils
from orbax.checkpoint import v1 as ocp1

from paligemma_jax import checkpoint_layers
from paligemma_jax.models import PaliGemmaConfig

CONFIG_KEY = "paligemma_config"


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or written as asked; the message names the fix."""


class CheckpointExistsError(CheckpointError, FileExistsError):
  """The destination exists and `overwrite` was not given."""


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  # Orbax's v1 API (needed for partial saves and partial loads) warns that it is experimental
  # on every call; once is enough, in this docstring.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    yield


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flat(value, name + "/"))
    else:
      out[name] = value
  return out


def _nest(flat: Mapping[str, Any]) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


# -- writing -----------------------------------------------------------------------------------

class _AtomicDestination:
  """A temporary sibling of `path` that becomes `path` on `commit()`, or vanishes on `discard()`."""

  def __init__(self, path: str | os.PathLike, overwrite: bool):
    self.path = os.path.abspath(os.fspath(path))
    if os.path.exists(self.path) and not overwrite:
      raise CheckpointExistsError(
          f"{self.path} already exists; pass overwrite=True (--overwrite) to replace it")
    parent = os.path.dirname(self.path)
    os.makedirs(parent, exist_ok=True)
    # Not a hidden name: Orbax's partial saves misplace their session next to dot-files.
    self.tmp = os.path.join(parent, f"{os.path.basename(self.path)}.incomplete-{_agreed_suffix()}")

  def commit(self) -> None:
    # Across processes every one has written its shards into the same `tmp`: process 0 renames
    # it once all are done, and none returns before the checkpoint is in place.
    _barrier(f"checkpoint written: {self.tmp}")
    if jax.process_index() == 0:
      old = None
      if os.path.exists(self.path):
        old = self.tmp + ".old"
        os.rename(self.path, old)
      os.rename(self.tmp, self.path)
      if old:
        shutil.rmtree(old, ignore_errors=True)
    _barrier(f"checkpoint committed: {self.path}")

  def discard(self) -> None:
    # Orbax's partial-save session lives in siblings named after the temporary path.
    parent, stem = os.path.split(self.tmp)
    for name in os.listdir(parent):
      if name.startswith(stem):
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _agreed_suffix() -> str:
  """A random name suffix, process 0's on every process (they must write into one directory)."""
  suffix = np.frombuffer(uuid.uuid4().bytes[:4], np.uint8)
  if jax.process_count() > 1:
    suffix = np.asarray(multihost_utils.broadcast_one_to_all(suffix), np.uint8)
  return suffix.tobytes().hex()


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def save_params(path: str | os.PathLike, config: PaliGemmaConfig, params: Mapping[str, Any], *,
                overwrite: bool = False) -> None:
  """Writes `{"params": ...}` and its config to the Orbax checkpoint directory `path`."""
  with ParamsWriter(path, config, overwrite=overwrite) as writer:
    writer.write(_flat(params))


class ParamsWriter:
  """Streams leaves into a params checkpoint; the checkpoint exists only after a clean exit.

      with ParamsWriter(path, config) as w:
        for name, array in leaves:          # name like "params/llm/embedding"
          w.write({name: array})
        w.write_layers("params/llm/layers/mlp/up/w", shape, dtype, read_layer)

  Each `write` is an Orbax partial save, so host memory holds only the leaves of one call. A
  `write_layers` leaf is pulled at exit, one layer at a time (see the module docstring).
  """

  def __init__(self, path: str | os.PathLike, config: PaliGemmaConfig | None, *,
               overwrite: bool = False):
    self._dest = _AtomicDestination(path, overwrite)
    self._config = config
    self._written: set[str] = set()
    self._layered: list[tuple[str, tuple[int, ...], np.dtype, Callable[[int], Any], int]] = []

  def __enter__(self) -> "ParamsWriter":
    return self

  def write(self, leaves: Mapping[str, Any]) -> None:
    """Adds leaves (flat "/"-joined names -> arrays); each name may be written once."""
    if leaves:
      self._claim(leaves)
      self._save({k: v if isinstance(v, jax.Array) else np.asarray(v) for k, v in leaves.items()})

  def write_layers(self, name: str, shape: tuple[int, ...], dtype: Any,
                   read_layer: Callable[[int], Any], in_flight_bytes: int = 0) -> None:
    """Adds the stacked leaf `name` of `shape` [L, ...]: `read_layer(i)` gives layer i.

    The layers are read and written at exit, in order: the next is read while one (or layers of
    up to `in_flight_bytes` together) is written. Chunks never span two layers.
    """
    shape, dtype = tuple(int(d) for d in shape), np.dtype(dtype)
    if len(shape) < 2 or "." in name:
      raise CheckpointError(f"{name}: write_layers needs a stacked [L, ...] leaf whose name has "
                            f"no '.', got shape {shape}")
    self._claim([name])
    self._layered.append((name, shape, dtype, read_layer, in_flight_bytes))

  def _claim(self, names) -> None:
    repeated = self._written.intersection(names)
    if repeated:
      raise CheckpointError(f"leaf {sorted(repeated)[0]} was already written to this checkpoint")
    self._written.update(names)

  def _save(self, arrays: Mapping[str, Any]) -> None:
    # The config rides along as custom metadata (merged across partial saves). Arrays are not
    # modified while the (synchronous) save runs, so Orbax need not copy them first.
    context = ocp1.Context()
    context.memory.deepcopy_host_arrays = False
    context.array.saving.storage_options.chunk_byte_size = checkpoint_layers.CHUNK_BYTES
    with _quiet(), context:
      ocp1.partial.save(self._dest.tmp, _nest(arrays), custom_metadata=(
          {} if self._config is None else {CONFIG_KEY: self._config.to_dict()}))

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None or not self._written:
      self._dest.discard()
      if exc_type is None:
        raise CheckpointError("no parameters were written; refusing to create an empty checkpoint")
      return
    try:
      if self._layered:  # one-element stand-ins, so that Orbax records the leaves
        self._save({name: np.zeros((1,) * len(shape), dtype)
                    for name, shape, dtype, *_ in self._layered})
      with _quiet():
        ocp1.partial.finalize(self._dest.tmp)
      for name, shape, dtype, read_layer, in_flight in self._layered:
        checkpoint_layers.write_layers(self._dest.tmp, name, shape, dtype,
                                       _checked_layers(name, shape, dtype, read_layer), in_flight)
      self._dest.commit()
    except BaseException:
      self._dest.discard()
      raise


def _checked_layers(name: str, shape: tuple[int, ...], dtype: np.dtype,
                    read_layer: Callable[[int], Any]) -> Iterator[np.ndarray]:
  for i in range(shape[0]):
    layer = np.asarray(read_layer(i))
    if layer.shape != shape[1:] or layer.dtype != dtype:
      raise CheckpointError(f"layer {i} of {name} is {layer.shape} {layer.dtype}, expected "
                            f"{shape[1:]} {dtype}")
    yield layer


# -- reading -----------------------------------------------------------------------------------

def _check_readable(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"no params checkpoint at {path}: the directory does not exist")
  with _quiet():
    # Orbax's own probe also accepts safetensors folders; its metadata file is written last.
    try:
      finished = (os.path.isfile(os.path.join(path, "_CHECKPOINT_METADATA")) and
                  ocp1.is_orbax_checkpoint(path))
    except Exception:
      finished = False
    if not finished:
      raise CheckpointError(f"{path} is not a finished Orbax checkpoint (an interrupted write, or "
                            "another format); convert it with convert_checkpoint.py")
  return path


def read_config(path: str | os.PathLike) -> PaliGemmaConfig:
  """The model config stored with a params checkpoint."""
  path = _check_readable(path)
  with _quiet():
    custom = ocp1.pytree_metadata(path).custom_metadata or {}
  if CONFIG_KEY not in custom:
    raise CheckpointError(f"{path} has no PaliGemma config in its metadata; it was not written "
                          "by paligemma_jax.checkpoints")
  return PaliGemmaConfig.from_dict(custom[CONFIG_KEY])


def leaf_specs(path: str | os.PathLike) -> dict[str, jax.ShapeDtypeStruct]:
  """Flat leaf name -> shape and dtype, read from metadata only."""
  path = _check_readable(path)
  with _quiet():
    meta = ocp1.pytree_metadata(path).metadata
  return {name: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype))
          for name, m in _flat(meta).items()}


def _partial_context() -> ocp1.Context:
  context = ocp1.Context()
  context.pytree.loading.partial_load = True
  return context


def read_leaves(path: str | os.PathLike, names: list[str], dtype: Any = None
                ) -> dict[str, np.ndarray]:
  """Reads only the named leaves into host numpy arrays (optionally cast to `dtype`)."""
  specs = leaf_specs(path)
  unknown = [n for n in names if n not in specs]
  if unknown:
    raise CheckpointError(f"{path} has no leaf {unknown[0]}")
  # Numpy targets restore to host memory without touching an accelerator. They are zero-stride
  # views of one element: only their shape and dtype are read.
  target = {n: np.broadcast_to(np.zeros((), np.dtype(dtype or specs[n].dtype)), specs[n].shape)
            for n in names}
  with _quiet(), _partial_context():
    out = ocp1.load_pytree(os.fspath(path), _nest(target))
  return {n: np.asarray(v) for n, v in _flat(out).items()}


def open_leaf(path: str | os.PathLike, name: str) -> ts.TensorStore:
  """Leaf `name` of a params checkpoint as a read-only tensorstore, to read part of it alone:
  `open_leaf(path, name)[i].read().result()` is layer i. A read decodes whole chunks
  (`.chunk_layout.read_chunk.shape`): one layer for leaves from `ParamsWriter.write_layers`,
  every layer for Orbax's default chunking."""
  path = _check_readable(path)
  try:
    return checkpoint_layers.open_leaf(path, name)
  except OSError:
    raise CheckpointError(f"{path} has no readable pytree metadata; it was not written by "
                          "paligemma_jax.checkpoints") from None
  except ValueError:  # tensorstore's NOT_FOUND
    raise CheckpointError(f"{path} has no leaf {name}") from None


def save_tree(path: str | os.PathLike, tree: Mapping[str, Any], *, overwrite: bool = False
              ) -> None:
  """Any nested dict of arrays (e.g. the segmentation VQ-VAE's params), atomically."""
  with ParamsWriter(path, None, overwrite=overwrite) as writer:
    writer.write(_flat(tree))


def load_tree(path: str | os.PathLike) -> dict:
  """The nested dict of host numpy arrays written by `save_tree` (or `save_params`)."""
  return _nest(read_leaves(path, list(leaf_specs(path))))


def load_params(path: str | os.PathLike, *, shardings: Any = None, dtype: Any = None
                ) -> tuple[PaliGemmaConfig, dict]:
  """(config, {"params": ...}) restored straight onto `shardings` (default: the first device).

  `shardings` is a pytree of `jax.sharding.Sharding` shaped like the params (see
  `paligemma_jax.sharding.param_shardings`), so a checkpoint written from 8 devices restores onto
  1 or 4 without a host copy of the full model. `dtype` casts floating leaves while restoring.
  """
  config = read_config(path)
  specs = _nest(leaf_specs(path))
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, specs)
  cast = lambda d: d if dtype is None or not jnp.issubdtype(d, jnp.floating) else jnp.dtype(dtype)
  try:
    target = jax.tree.map(
        lambda spec, sharding: jax.ShapeDtypeStruct(spec.shape, cast(spec.dtype),
                                                    sharding=sharding), specs, shardings)
  except ValueError as e:
    raise CheckpointError(f"the shardings do not match the checkpoint's tree: {e}") from None
  with _quiet():
    params = ocp1.load_pytree(os.fspath(path), target)
  if dtype is not None:
    config = config.replace(param_dtype=np.dtype(dtype).name)
  return config, params


# -- trainer state -----------------------------------------------------------------------------

class TrainCheckpointer:
  """Keeps the last `keep` training checkpoints under `directory`, one subdirectory per step.

  A checkpoint holds `state` (any pytree of arrays: params, optimizer state, step, RNG key data)
  and `extra` (a JSON-able dict, e.g. the data iterator's position). Saves are asynchronous: the
  call returns once arrays are copied off the devices and training continues while they are
  written. A step becomes visible to `latest_step`/`restore` only when its write has committed,
  so a crash mid-write leaves the previous step as the latest.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
    if keep < 1:
      raise ValueError(f"keep must be >= 1 checkpoints, got {keep}")
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "extra"))

  def save(self, step: int, state: Any, extra: Mapping[str, Any] | None = None, *,
           force: bool = False) -> bool:
    """Starts writing `step`; returns False if a checkpoint for it already exists."""
    if step in self._manager.all_steps() and not force:
      return False
    return self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(dict(extra or {}))),
        force=force)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[int, Any, dict]:
    """(step, state, extra) of `step` (default: the latest finished one).

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings (for example from
    `jax.eval_shape` of the state initialiser and `paligemma_jax.sharding`): arrays are read
    straight into that layout, whatever mesh wrote them.
    """
    self._manager.wait_until_finished()
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no finished checkpoint in {self.directory}")
    if step not in self._manager.all_steps():
      raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; "
                            f"available: {self.all_steps()}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
    return step, restored["state"], dict(restored["extra"] or {})

  def wait(self) -> None:
    """Blocks until every started save has committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "TrainCheckpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
