"""Reading HF safetensors checkpoint folders: one file, or shards named by an index.

Tensors are read one at a time (never the whole model at once) and returned as numpy arrays; bf16
comes back as `ml_dtypes.bfloat16`. safetensors' numpy reader cannot produce bf16, so tensors are
read through its flax reader on the host CPU device and viewed as numpy without a copy.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import jax
import numpy as np
import safetensors

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
  """A checkpoint that cannot be read as asked; the message names the file or key."""


def _weight_map(folder: str) -> dict[str, str]:
  """Tensor key -> shard file name, from the index, or from the single file's header."""
  index_path = os.path.join(folder, INDEX_FILE)
  single_path = os.path.join(folder, SINGLE_FILE)
  if os.path.exists(index_path):
    try:
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index_path} is not a safetensors index with a weight_map ({e})")
    missing = sorted({f for f in weight_map.values()
                      if not os.path.exists(os.path.join(folder, f))})
    if missing:
      raise CheckpointError(
          f"{index_path} names shard {missing[0]} which is not in {folder}"
          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return weight_map
  if os.path.exists(single_path):
    with _open(single_path) as f:
      return {key: SINGLE_FILE for key in f.keys()}
  raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {folder}")


@contextlib.contextmanager
def _open(path: str) -> Iterator[safetensors.safe_open]:
  try:
    with safetensors.safe_open(path, framework="flax") as f:
      yield f
  except safetensors.SafetensorError as e:
    raise CheckpointError(f"{path} is not a readable safetensors file ({e}); "
                          "re-download or re-export it") from None


class SafetensorsReader:
  """Random access to the tensors of a checkpoint folder, one tensor at a time."""

  def __init__(self, folder: str):
    if not os.path.isdir(folder):
      raise CheckpointError(f"checkpoint folder {folder} does not exist")
    self.folder = folder
    self.weight_map = _weight_map(folder)
    self._stack = contextlib.ExitStack()
    self._files: dict[str, safetensors.safe_open] = {}

  def __enter__(self) -> "SafetensorsReader":
    return self

  def __exit__(self, *exc) -> None:
    self._stack.close()

  def _file(self, key: str) -> safetensors.safe_open:
    name = self.weight_map[key]
    if name not in self._files:
      self._files[name] = self._stack.enter_context(_open(os.path.join(self.folder, name)))
      stored = set(self._files[name].keys())
      listed = {k for k, f in self.weight_map.items() if f == name}
      if not listed <= stored:
        absent = sorted(listed - stored)[0]
        raise CheckpointError(f"the index puts {absent} in {name} but that file does not hold it")
    return self._files[name]

  def keys(self) -> list[str]:
    return list(self.weight_map)

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self._file(key).get_slice(key).get_shape())

  def dtype(self, key: str) -> str:
    """The safetensors dtype tag: "F32", "BF16", "F16", ..."""
    return self._file(key).get_slice(key).get_dtype()

  def read(self, key: str) -> np.ndarray:
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
      try:
        return np.asarray(self._file(key).get_tensor(key))
      except safetensors.SafetensorError as e:
        raise CheckpointError(f"cannot read {key} from {self.weight_map[key]} ({e}); "
                              "the file may be truncated") from None
